"""Small files written atomically: beside the destination under a unique name, then renamed into place."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from harness.errors import DataError, os_reason

try:
    import resource
except ImportError:  # Windows: no file-size limit to respect
    resource = None


def write_text(path: Path, text: str) -> None:
    """A reader sees the old file or the new one, never a half-written one. A failed write (disk
    full, say) raises DataError naming ``path`` and leaves the old file as it was."""
    _write(Path(path), lambda tmp: tmp.write_text(text))


def write_json(path: Path, data) -> None:
    """``data`` as indented JSON, written atomically (write_text)."""
    write_text(path, json.dumps(data, indent=2))


def write_bytes(path: Path, data: bytes) -> None:
    """``write_text`` for binary files (images, compressed tables)."""
    _write(Path(path), lambda tmp: tmp.write_bytes(data))


def _write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise DataError(path, f"cannot write it ({os_reason(exc)})") from None
    finally:
        tmp.unlink(missing_ok=True)


def check_room(path: Path, nbytes: int) -> None:
    """DataError naming ``path`` unless a file of about ``nbytes`` fits there: the disk's free space
    and the file-size limit (``ulimit -f``). HDF5 can crash the process when a write fails as it
    closes a file, so the harness checks before it writes an HDF5 file."""
    path = Path(path)
    free = shutil.disk_usage(path.parent).free
    if nbytes > free:
        raise DataError(path, f"cannot write it: it needs about {_megabytes(nbytes)} and the disk has "
                              f"{_megabytes(free)} free")
    limit = _file_size_limit()
    if limit is not None and nbytes > limit:
        raise DataError(path, f"cannot write it: it needs about {_megabytes(nbytes)}, more than the "
                              f"file-size limit of {_megabytes(limit)} (ulimit -f)")


def _file_size_limit() -> int | None:
    if resource is None:
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def _megabytes(nbytes: int) -> str:
    return f"{nbytes / 1e6:,.2f} MB"


def fsync(path: str | os.PathLike) -> None:
    """Flush a file's contents to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (folders cannot be opened for fsync on Windows)."""
    if os.name == "posix":
        fsync(folder)


@contextlib.contextmanager
def new_folder(out: Path, manifest: str, expected: dict, problem: Callable[[Path], str | None]) -> Iterator[Path]:
    """A generated folder built whole or not at all: yields a temporary sibling of ``out`` to fill; when
    the block ends, ``expected`` is written to its ``manifest`` file last (marking it complete) and the
    folder is renamed to ``out`` (publish_folder); if the block fails (Ctrl-C too) it is removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        (tmp / manifest).write_text(json.dumps(expected, indent=1) + "\n")
        publish_folder(tmp, out, problem)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_folder(tmp: Path, out: Path, problem: Callable[[Path], str | None]) -> Path:
    """Rename the finished folder ``tmp`` to ``out`` in one step. When ``out`` appeared meanwhile (a
    non-empty folder cannot be replaced), keep it if ``problem(out)`` finds none, else DataError."""
    try:
        os.rename(tmp, out)  # atomic; replaces an empty folder, fails on a non-empty one
    except OSError:
        if out.is_dir() and problem(out) is None:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
            return out
        raise DataError(out, "appeared while the split was being generated and is not this split; "
                             "choose another folder") from None
    return out
