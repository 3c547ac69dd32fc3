"""Fetch SVHN Format 1 (train / test / extra): download, verify and extract it safely, or register a
copy the user already has.

Layout under ``root`` (the CLI's ``--root``, default ``data``):

- ``svhn/downloads/<split>.tar.gz``: verified archives (``<split>.tar.gz.part`` while downloading)
- ``svhn/downloads/manifest.json``: size, MD5 and SHA-256 of each archive once it was verified, so a
  later reuse of the archive is checked against what was verified
- ``svhn/<split>/``: the extracted split (N.png files + digitStruct.mat)
- ``svhn/sources.json``: split folders registered with ``--from FOLDER`` (used in place, not copied)

A download resumes from its ``.part`` file with an HTTP Range request (also within one run, when the
connection drops), must reach the announced size (Content-Length) and the published MD5. Extraction
reads the whole archive once, as a stream, refusing any member that could land outside the split
folder (absolute paths, '..', links, devices), into a hidden temporary folder renamed into place at
the end: a folder with the split's name is always complete. A downloaded archive that fails any check
is removed (never reused silently); a user's own archive is only refused.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import secrets
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness import __version__, atomic
from harness.data.digitstruct import annotation_file
from harness.errors import DataError, HarnessError
from harness.progress import Progress

SPLITS = ("train", "test", "extra")
DEFAULT_SPLITS = ("train", "test")  # extra (202,353 images) is by far the largest: ask for it by name
OFFICIAL_URL = "http://ufldl.stanford.edu/housenumbers"
# MD5s of the official archives as published in public SVHN loaders (two independent ones state
# the same three values). A mirror serving other bytes needs md5= (CLI: --md5 SPLIT=HEX).
PUBLISHED_MD5 = {
    "train": "a649f4cb15c35520e8a8c342d4c0005a",
    "test": "790d9c8d42f1fcbd219b59956c853a81",
    "extra": "606f41243d71ca4d5fe66dbaf1f02bee",
}
_CHUNK = 1 << 20
_TIMEOUT = 60.0  # seconds without a byte before a connection counts as dropped
_STALLS = 3  # attempts in a row that receive nothing before a download gives up


class _Corrupt(Exception):
    """The archive itself is bad; callers add its path (and remove it when it is a download)."""


# ----------------------------------------------------------------------------------- public API


def svhn_split_folder(root: str | os.PathLike, split: str) -> Path:
    """The raw folder of an SVHN split: registered with ``--from FOLDER``, else extracted under
    ``root/svhn/``. Raises DataError telling the user how to fetch it when it is neither."""
    _check_splits([split])
    base = Path(root) / "svhn"
    registered = _read_json(base / "sources.json").get(split)
    if registered:
        folder = Path(registered)
        if not folder.is_dir():
            raise DataError(folder, f"the SVHN {split} folder registered in {base / 'sources.json'} is "
                                    f"gone; run `{_command(root, split)} --from FOLDER_OR_ARCHIVE`")
        return folder
    folder = base / split
    if folder.is_dir():
        return folder
    raise DataError(folder, f"SVHN {split} split is not here; run `{_command(root, split)}` to download "
                            "it (or add --from ARCHIVE_OR_FOLDER for a copy you already have)")


def fetch_svhn(root: str | os.PathLike, splits: Sequence[str] | str | None,
               source: str | os.PathLike | None = None, mirror: str | None = None, *,
               md5: Mapping[str, str | None] | None = None) -> dict[str, Path]:
    """Make the SVHN ``splits`` present under ``root`` and return ``{split: raw folder}``.

    ``source``: an archive to verify and extract, or an extracted folder to register in place (one
    split: given in ``splits``, else read from the name, e.g. train.tar.gz). Otherwise each missing
    split is downloaded from ``mirror`` (a base URL; default the official site). ``md5`` overrides
    the published MD5 per split; None there means unknown: the archive is then checked by its size
    and a full gzip/tar read, and its SHA-256 recorded for later reuse.
    """
    root = Path(root)
    splits = splits.split(",") if isinstance(splits, str) else splits
    expected = {**PUBLISHED_MD5, **(md5 or {})}
    if source is not None:
        split = _source_split(Path(source), splits)
        return {split: _fetch_from(root, split, Path(source), expected[split])}
    base_url = (mirror or OFFICIAL_URL).rstrip("/")
    if not base_url.startswith(("http://", "https://")):
        raise HarnessError(f"mirror {mirror!r} is not an http:// or https:// URL")
    splits = _check_splits(splits or DEFAULT_SPLITS)
    return {split: _fetch_download(root, split, base_url, expected[split]) for split in splits}


# ----------------------------------------------------------------------------------- per split


def _fetch_download(root: Path, split: str, base_url: str, md5: str | None) -> Path:
    base, target = root / "svhn", root / "svhn" / split
    if target.is_dir():
        _note(f"svhn/{split}: already extracted at {target}")
    else:
        archive, fresh = _download(base / "downloads", split, f"{base_url}/{split}.tar.gz", md5)
        _extract_owned(archive, target, split, md5, fresh)
    _unregister(base, split)  # the latest fetch decides where a split comes from
    return target


def _fetch_from(root: Path, split: str, source: Path, md5: str | None) -> Path:
    base, target = root / "svhn", root / "svhn" / split
    if source.is_dir():
        annotation_file(source)  # DataError naming the folder when it holds no annotations
        _register(base, split, source.resolve())
        _note(f"svhn/{split}: registered {source.resolve()} (used in place)")
        return source.resolve()
    if not source.is_file():
        raise DataError(source, "no such archive or folder")
    if target.is_dir():
        _note(f"svhn/{split}: already extracted at {target}; delete it to extract {source} again")
    else:
        try:
            _verify(source, md5, recorded=None)
            _extract(source, target, split)
        except _Corrupt as e:
            raise DataError(source, str(e)) from None
    _unregister(base, split)
    return target


def _extract_owned(archive: Path, target: Path, split: str, md5: str | None, fresh: bool) -> None:
    """Verify and extract a downloaded archive; record it in the manifest once fully read. A reused
    one must match its record; a fresh download replaces the record of an earlier one."""
    manifest = archive.parent / "manifest.json"
    try:
        digests = _verify(archive, md5, None if fresh else _read_json(manifest).get(archive.name))
        _extract(archive, target, split)
    except _Corrupt as e:
        archive.unlink(missing_ok=True)
        raise DataError(archive, f"{e}; removed it: run the same command again to download it "
                                 "afresh") from None
    entries = _read_json(manifest)
    entries[archive.name] = {**digests, "checked": "MD5" if md5 else "size and full gzip/tar read"}
    atomic.write_text(manifest, json.dumps(entries, indent=1, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------------- download


def _download(downloads: Path, split: str, url: str, md5: str | None) -> tuple[Path, bool]:
    """The archive in ``downloads`` and whether it is a fresh download: reused when there, else
    downloaded through a ``.part`` file."""
    archive = downloads / f"{split}.tar.gz"
    if archive.is_file():
        _note(f"svhn/{split}: reusing {archive} (checked again before use)")
        return archive, False
    downloads.mkdir(parents=True, exist_ok=True)
    part = archive.with_name(archive.name + ".part")
    _transfer(url, part)
    os.replace(part, archive)  # the .part was fsynced: a file with the final name is whole
    atomic.fsync_folder(downloads)
    return archive, True


def _transfer(url: str, part: Path) -> None:
    """Download ``url`` into ``part``, resuming from what it holds, until it is complete. Retries at
    once while attempts make progress; gives up after _STALLS attempts in a row that made none."""
    stalls = 0
    while True:
        before = _size(part)
        try:
            _attempt(url, part)
            return
        except urllib.error.HTTPError as e:
            if e.code == 416:  # the resume offset is past the end: start again
                part.unlink(missing_ok=True)
            elif e.code < 500:  # 5xx may pass; 4xx will not
                raise DataError(url, f"download failed: HTTP {e.code} {e.reason}") from None
            reason = f"HTTP {e.code} {e.reason}"
        except (urllib.error.URLError, http.client.HTTPException, OSError, _Short) as e:
            reason = str(getattr(e, "reason", None) or e)
        have = _size(part)
        stalls = 0 if have > before else stalls + 1
        if stalls >= _STALLS:
            kept = f"; {part} holds {have} bytes, the same command resumes there" if have else ""
            raise DataError(url, f"download failed ({reason}){kept}")
        _note(f"{url}: {reason}; " + (f"resuming at byte {have}" if have else "trying again"))
        time.sleep(max(0, stalls - 1))  # at once after progress or a first failure, then 1 s


class _Short(Exception):
    """The connection ended before the announced size."""


def _attempt(url: str, part: Path) -> None:
    have = _size(part)
    headers = {"User-Agent": f"svhn-harness/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:
        if have and (response.status != 206 or _range_start(response) != have):
            have = 0  # the server sends the whole file (no Range support): start again
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        with open(part, "ab" if have else "wb") as out, _progress(total, have, part) as progress:
            while chunk := response.read(_CHUNK):  # a dropped connection ends early or raises
                _write(out, chunk, part)
                progress.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
    if total is not None and _size(part) != total:
        raise _Short(f"connection ended after {_size(part)} of {total} bytes")


def _range_start(response) -> int | None:
    value = response.headers.get("Content-Range", "")  # "bytes START-END/TOTAL"
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _progress(total: int | None, have: int, part: Path) -> Progress:
    progress = Progress(total or 0, f"download {part.name.removesuffix('.part')} (bytes)")
    progress.done = have  # a resumed download counts what it already has
    return progress


def _write(out, chunk: bytes, part: Path) -> None:
    try:
        out.write(chunk)
    except OSError as e:  # disk full: not a network problem, so not retried
        raise DataError(part, f"cannot write it ({e.strerror or e})") from None


# ----------------------------------------------------------------------------------- verification


def _verify(archive: Path, md5: str | None, recorded: dict | None) -> dict:
    """Size and digests of ``archive``; raises _Corrupt when they differ from what was recorded at
    its first verification, or from the expected MD5."""
    digests = _digests(archive)
    if recorded and recorded.get("sha256") != digests["sha256"]:
        raise _Corrupt(f"SHA-256 {digests['sha256']} differs from {recorded.get('sha256')}, recorded "
                       "when it was verified: changed or damaged since")
    if md5 and digests["md5"] != md5.lower():
        raise _Corrupt(f"MD5 {digests['md5']} is not the expected {md5.lower()} ({digests['bytes']} "
                       "bytes): damaged, or another file (a mirror's own copy needs --md5 SPLIT=HEX)")
    return digests


def _digests(path: Path) -> dict:
    size = path.stat().st_size
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as fh, Progress(size, f"checksum {path.name} (bytes)") as progress:
        while chunk := fh.read(_CHUNK):
            md5.update(chunk)
            sha256.update(chunk)
            progress.update(len(chunk))
    return {"bytes": size, "md5": md5.hexdigest(), "sha256": sha256.hexdigest()}


# ----------------------------------------------------------------------------------- extraction


def _extract(archive: Path, target: Path, split: str) -> None:
    """Unpack ``archive`` into ``target`` through a hidden temporary folder renamed at the end.
    Raises _Corrupt for a bad archive, DataError when the disk refuses a write."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target)
    tmp = target.parent / f".{target.name}.extract-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        _unpack(archive, tmp)
        content = _content_folder(tmp, split)
        # One sync, not an fsync per file (~200k for extra): the files are on disk before the name
        # that says "complete" is.
        if hasattr(os, "sync"):
            os.sync()
        os.rename(content, target)
        atomic.fsync_folder(target.parent)
    except OSError as e:
        raise DataError(target, f"cannot extract {archive.name} here ({e.strerror or e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _unpack(archive: Path, tmp: Path) -> None:
    size = archive.stat().st_size
    with open(archive, "rb") as raw, Progress(size, f"extract {archive.name} (bytes)") as progress:
        gz = gzip.GzipFile(fileobj=raw, mode="rb")
        try:
            with tarfile.open(fileobj=gz, mode="r|") as tar:  # a stream: one pass, no seeks
                folders = {str(tmp)}  # made so far: one mkdir per folder, not per file
                for member in tar:
                    _unpack_member(tar, member, str(tmp), folders)
                    progress.update(raw.tell() - progress.done)
                _check_end(gz)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise _Corrupt(f"not a complete, readable tar.gz archive ({e})") from None


def _unpack_member(tar: tarfile.TarFile, member: tarfile.TarInfo, tmp: str, folders: set) -> None:
    dest = _member_path(member, tmp)
    if dest is None:
        return
    folder = dest if member.isdir() else os.path.dirname(dest)
    if folder not in folders:
        os.makedirs(folder, exist_ok=True)
        folders.add(folder)
    if member.isdir():
        return
    try:
        with open(dest, "xb") as out:  # "x": a member named twice is refused, never overwritten
            shutil.copyfileobj(tar.extractfile(member), out, _CHUNK)
    except FileExistsError:
        raise _Corrupt(f"member {member.name!r} appears twice") from None


def _member_path(member: tarfile.TarInfo, tmp: str) -> str | None:
    """Where a member goes inside ``tmp``; _Corrupt for anything that could leave it. (Links are
    refused outright, so no path inside ``tmp`` can lead out of it.)"""
    name = member.name
    if member.issym() or member.islnk():
        raise _Corrupt(f"member {name!r} is a link (to {member.linkname!r}); links are refused")
    if not (member.isreg() or member.isdir()):
        raise _Corrupt(f"member {name!r} is a device, FIFO or other special file; refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    # "\\" and ":" are separators or drives on Windows; NUL truncates names in the OS
    if name.startswith("/") or ".." in parts or any(c in name for c in "\\:\0"):
        raise _Corrupt(f"member {name!r} would be written outside the target folder; refused")
    return os.path.join(tmp, *parts) if parts else None


def _check_end(gz: gzip.GzipFile) -> None:
    """Read the gzip stream to its end (its CRC and length are checked there). tarfile stops at the
    first unreadable header as if the archive ended; anything but zero padding after it is damage."""
    while chunk := gz.read(_CHUNK):
        if chunk.strip(b"\0"):
            raise _Corrupt("data follows the end of the tar archive (a damaged member header?)")


def _content_folder(tmp: Path, split: str) -> Path:
    """The split folder inside the unpacked tree: the archive's single top folder, or the tree."""
    entries = list(tmp.iterdir())
    content = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
    if content.name in SPLITS and content.name != split:
        raise _Corrupt(f"holds the {content.name} split, not {split}")
    try:
        annotation_file(content)
    except DataError:
        raise _Corrupt("holds no digitStruct.mat, *.json or labels.csv: not an SVHN Format 1 "
                       "archive") from None
    return content


def _remove_stale_temps(target: Path) -> None:
    """Temporary folders left by extractions that were killed (their process is gone)."""
    for stale in target.parent.glob(f".{target.name}.extract-*"):
        pid = stale.name.rsplit("-", 2)[-2]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or cannot tell: leave its folder alone
    return True


# ----------------------------------------------------------------------------------- small helpers


def _check_splits(splits: Sequence[str]) -> list[str]:
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise HarnessError(f"unknown SVHN split {', '.join(map(repr, unknown))}; choose from "
                           f"{', '.join(SPLITS)}")
    return list(dict.fromkeys(splits))


def _source_split(source: Path, splits: Sequence[str] | None) -> str:
    if splits:
        splits = _check_splits(splits)
        if len(splits) > 1:
            raise HarnessError("--from takes one split at a time: give --splits SPLIT")
        return splits[0]
    stem = source.name.split(".")[0]  # train.tar.gz, train/
    if stem in SPLITS:
        return stem
    raise HarnessError(f"{source}: cannot tell which split this is from its name; give --splits "
                       f"{'|'.join(SPLITS)}")


def _command(root: str | os.PathLike, split: str) -> str:
    where = "" if Path(root) == Path("data") else f" --root {root}"
    return f"harness data fetch svhn --splits {split}{where}"


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(path, f"unreadable ({e}); delete it and fetch again") from None
    if not isinstance(value, dict):
        raise DataError(path, "is not a JSON object; delete it and fetch again")
    return value


def _register(base: Path, split: str, folder: Path) -> None:
    sources = _read_json(base / "sources.json")
    sources[split] = str(folder)
    atomic.write_text(base / "sources.json", json.dumps(sources, indent=1, sort_keys=True) + "\n")


def _unregister(base: Path, split: str) -> None:
    sources = _read_json(base / "sources.json")
    if sources.pop(split, None) is not None:
        atomic.write_text(base / "sources.json", json.dumps(sources, indent=1, sort_keys=True) + "\n")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
