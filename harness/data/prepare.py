"""Records table -> one prepared split file (HDF5): fixed-size uint8 crops and encoded labels.

This module writes the file; harness.data.splitfile reads it (PreparedSplit).

Preprocessing (Goodfellow et al. 2014): the union of an image's digit boxes (clamped to the image),
grown by ``box_expand`` of its width and height (centred) and rounded outwards to whole pixels, is
cropped, converted to RGB and resized (bilinear, antialiased) to ``image_size`` squared. Where the
grown box reaches past the image's edge, the crop is padded with black instead of being clamped:
the number then always fills the same share of the crop, so the training crops (54 of 64) cut into
it no deeper at an image's edge than anywhere else. Clamping did: a number near the edge was
stretched to fill the crop and its end digits cut, on MNIST-composite's 64x64 canvases the centre
crop alone cut 3 (two digits) to 7.5 pixels (four digits) off them. Boxes of zero or negative width
or height are left out of the union (they mark no pixels).

Layout (FORMAT_VERSION 1):

- ``images`` (N, S, S, 3) uint8, contiguous: random-access batch reads (sorted fancy indexing) measured
  ~17k images/s contiguous against ~1k/s for chunked layouts (1, 8 or 64 images per chunk; h5py walks
  the chunk index per selected row), so no chunking and no compression
- ``length`` (N,) uint8 length class, ``digits`` (N, 5) uint8 with NO_DIGIT beyond the length
- ``names`` (N,) UTF-8 strings: the source image names
- attrs: ``format_version``, ``image_size``, ``box_expand``, ``count`` and ``fingerprint``
  (sha256 of labels, names and image bytes: two files with the same fingerprint hold the same
  examples in the same order)

Writing is resumable and uses bounded memory. A pool of processes decodes and crops the images in
chunks of CHUNK; the crops are gathered in order into segments of SEGMENT images, each saved
atomically as its own file in a hidden work folder beside the destination (``.<name>.parts/``). A
segment's file name carries a key of everything its crops depend on (image paths, file sizes and
modification times, boxes, crop settings), so a preparation killed at any moment and started again
reuses the segments it finished, and never one made from different inputs. Only when every segment
is on disk is the HDF5 file written (HDF5 itself is not safe against a crash in mid-write): inside
the work folder, sequentially, then fsynced and renamed to its final name, after which the work
folder is removed. A file with the final name is therefore always complete. Memory in use is one
segment plus two chunks per worker, whatever the size of the split.

Bad images (cannot be opened or decoded, or digit boxes that leave nothing to crop):
``bad_files="error"`` raises DataError naming the first one in order; ``"skip"`` leaves them out of
the file, and :func:`unpreparable` says why for any one of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import multiprocessing
import os
import secrets
import shutil
import struct
import sys
import threading
import time
import zipfile
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import h5py
import numpy as np
import pandas as pd
from PIL import Image

from harness import MAX_DIGITS, atomic
from harness.data.records import encode_labels
from harness.data.splitfile import FORMAT_VERSION
from harness.errors import DataError, os_reason
from harness.progress import Progress

CHUNK = 64  # images per task: large enough to amortise inter-process transfer, small for memory
SEGMENT = 16 * CHUNK  # images per segment file, the unit of resumption: 12 MB of 64x64 crops
BAD_FILES = ("error", "skip")
_CROP_VERSION = 2  # part of every segment key: bump whenever the crops of the same inputs change
_SIXTEEN_BIT = ("I", "I;16", "I;16B", "I;16L", "I;16N")

Box = tuple[int, int, int, int]
Problem = tuple[str, str]  # (kind, detail): kind "unreadable" or "no_crop"


def crop_box(boxes: np.ndarray, width: int, height: int, box_expand: float) -> Box:
    """(left, upper, right, lower) pixel box to crop: the union of ``boxes`` clamped to the image, then
    expanded; the expanded box may reach past the image's edges (preprocess pads there).

    Boxes of zero or negative size are ignored; an image without other boxes is used whole.
    Raises ValueError when no part of the union lies in the image.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    boxes = boxes[(boxes[:, 2] > 0) & (boxes[:, 3] > 0)]
    if len(boxes) == 0:
        return 0, 0, width, height
    with np.errstate(over="ignore", invalid="ignore"):  # huge values overflow: refused just below
        union = [boxes[:, 0].min(), boxes[:, 1].min(), (boxes[:, 0] + boxes[:, 2]).max(),
                 (boxes[:, 1] + boxes[:, 3]).max()]
    if not np.isfinite(union).all():
        raise ValueError(f"digit boxes {boxes.tolist()} are not finite numbers of pixels")
    left, top = max(0.0, union[0]), max(0.0, union[1])
    right, bottom = min(float(width), union[2]), min(float(height), union[3])
    if right <= left or bottom <= top:
        raise ValueError(f"digit boxes {boxes.tolist()} lie outside the {width}x{height} image")
    grow_x, grow_y = (right - left) * box_expand / 2, (bottom - top) * box_expand / 2
    return (math.floor(left - grow_x), math.floor(top - grow_y),
            math.ceil(right + grow_x), math.ceil(bottom + grow_y))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: grey and palette expand, alpha is dropped, 16-bit grey is scaled."""
    if image.mode in _SIXTEEN_BIT:  # PIL's own conversion clips 16-bit values to 255
        grey = (np.asarray(image, dtype=np.uint32) // 257).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(grey)  # 2-D uint8: mode L
    return image if image.mode == "RGB" else image.convert("RGB")


def preprocess(image: Image.Image, boxes: np.ndarray, image_size: int, box_expand: float) -> np.ndarray:
    """One image -> (image_size, image_size, 3) uint8 crop around its digits, black past the image."""
    left, top, right, bottom = crop_box(boxes, image.width, image.height, box_expand)
    inside = (max(left, 0), max(top, 0), min(right, image.width), min(bottom, image.height))
    crop = to_rgb(image.crop(inside))  # cropped first: a palette's index 0 is not always black
    if inside != (left, top, right, bottom):
        padded = Image.new("RGB", (right - left, bottom - top))
        padded.paste(crop, (inside[0] - left, inside[1] - top))
        crop = padded
    return np.asarray(crop.resize((image_size, image_size), Image.Resampling.BILINEAR))


def crop_one(path: str, boxes: np.ndarray, image_size: int, box_expand: float) -> np.ndarray | Problem:
    """The crop of the image file ``path``, or (kind, detail) saying why there is none."""
    try:
        with Image.open(path) as image:
            try:  # checked on its own: boxes outside the image are not a damaged file
                crop_box(boxes, image.width, image.height, box_expand)
            except ValueError as exc:
                return "no_crop", f"nothing to crop: {exc}"
            return preprocess(image, boxes, image_size, box_expand)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:  # PIL's errors for broken files
        return "unreadable", f"cannot read image ({exc})"


def unpreparable(path: str, boxes: np.ndarray, image_size: int = 64, box_expand: float = 0.3) -> Problem | None:
    """Why ``path`` cannot be prepared ((kind, detail)), or None when it can."""
    result = crop_one(path, boxes, image_size, box_expand)
    return result if isinstance(result, tuple) else None


def usable_cores() -> int:
    """Cores this process may run on (the default number of workers)."""
    if hasattr(os, "sched_getaffinity"):  # respects CPU pinning and container limits
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def work_folder(out_path: str | os.PathLike) -> Path:
    """The hidden folder where the segments of ``out_path`` are kept until it is complete."""
    out = Path(out_path)
    return out.parent / f".{out.name}.parts"


def prepare_split(records: pd.DataFrame, out_path: str | os.PathLike, *, image_size: int = 64,
                  box_expand: float = 0.3, workers: int | None = None, desc: str = "prepare",
                  bad_files: str = "error") -> Path:
    """Write the prepared split file for ``records`` (harness.data.records table) to ``out_path``.

    ``workers``: processes decoding images (default: every usable core; 1 works in this process).
    ``bad_files``: "error" raises DataError naming the first bad image (``out_path`` is then left
    as it was, and the finished segments are kept for the next attempt); "skip" leaves bad images out.
    Started again after an interruption, it reuses the finished segments of the same inputs.
    """
    if image_size < 1 or box_expand < 0:
        raise ValueError(f"need image_size >= 1 and box_expand >= 0, got {image_size}, {box_expand}")
    if bad_files not in BAD_FILES:
        raise ValueError(f"bad_files must be one of {BAD_FILES}, got {bad_files!r}")
    out = Path(out_path)
    work = work_folder(out)
    work.mkdir(parents=True, exist_ok=True)
    records = records.reset_index(drop=True)
    segments = _plan(records, work, image_size, box_expand)
    try:
        _fill(records, segments, image_size, box_expand, workers or usable_cores(), bad_files, desc)
    except BaseException as exc:
        _remove_if_empty(work)  # nothing finished: nothing to resume from
        if isinstance(exc, OSError):  # saving a segment failed: disk full, say
            raise _unwritable(out, exc) from None
        raise
    # A unique name, so that two preparations of the same file never write into one another.
    tmp = work / f"assembling-{os.getpid()}-{secrets.token_hex(4)}.h5"
    try:
        atomic.check_room(out, _size_bound(records, image_size))  # the same disk as tmp
        _assemble(tmp, records, segments, image_size, box_expand, bad_files, desc)
        atomic.fsync(tmp)
        os.replace(tmp, out)
    except BaseException as exc:  # KeyboardInterrupt too; the finished segments stay for a resumed run
        tmp.unlink(missing_ok=True)
        if isinstance(exc, (OSError, RuntimeError)):  # HDF5 reports some failed writes as RuntimeError
            raise _unwritable(out, exc) from None
        raise
    atomic.fsync_folder(out.parent)
    shutil.rmtree(work, ignore_errors=True)
    return out


def _size_bound(records: pd.DataFrame, image_size: int) -> int:
    """More than the prepared file of ``records`` takes: crops, labels, names and HDF5's structures."""
    names = sum(len(str(name).encode()) for name in records["name"])
    return len(records) * (image_size * image_size * 3 + 1 + MAX_DIGITS + 32) + names + 64 * 1024


def _unwritable(out: Path, exc: BaseException) -> DataError:
    return DataError(out, f"cannot write it ({os_reason(exc)}); run the same command again when there is "
                          "room: the finished parts are reused")


# ----------------------------------------------------------------------------------- segments


@dataclass(frozen=True)
class _Segment:
    start: int
    stop: int
    path: Path

    def __len__(self) -> int:
        return self.stop - self.start


def _plan(records: pd.DataFrame, work: Path, image_size: int, box_expand: float) -> list[_Segment]:
    """The segments of ``records``, each named by the key of its inputs."""
    paths, boxes = list(records["path"]), list(records["boxes"])
    settings = f"{_CROP_VERSION}:{FORMAT_VERSION}:{image_size}:{float(box_expand)!r}".encode()
    segments = []
    for index, start in enumerate(range(0, len(records), SEGMENT)):
        stop = min(start + SEGMENT, len(records))
        key = hashlib.sha256(settings)
        for path, box in zip(paths[start:stop], boxes[start:stop]):
            key.update(str(path).encode() + b"\0")
            key.update(struct.pack("<2q", *_stamp(path)))
            key.update(np.asarray(box, dtype=np.float64).reshape(-1, 4).tobytes() + b"\0")
        segments.append(_Segment(start, stop, work / f"{index:06d}-{key.hexdigest()[:20]}.npz"))
    return segments


def _remove_if_empty(work: Path) -> None:
    if not any(work.glob("*.npz")):
        shutil.rmtree(work, ignore_errors=True)


def _stamp(path: str) -> tuple[int, int]:
    """Size and modification time: a replaced image file changes the key of its segment."""
    try:
        stat = os.stat(path)
    except OSError:
        return -1, -1
    return stat.st_size, stat.st_mtime_ns


def _fill(records: pd.DataFrame, segments: list[_Segment], image_size: int, box_expand: float,
          workers: int, bad_files: str, desc: str) -> None:
    """Make every segment whose file is not there yet, in order."""
    todo = [s for s in segments if not s.path.is_file()]
    done = sum(len(s) for s in segments) - sum(len(s) for s in todo)
    if done:
        print(f"{desc}: resuming; {len(segments) - len(todo)} of {len(segments)} segments "
              f"({done} of {len(records)} images) already prepared", file=sys.stderr, flush=True)
    paths, boxes = list(records["path"]), list(records["boxes"])
    tasks = [(paths[i:min(i + CHUNK, s.stop)], boxes[i:min(i + CHUNK, s.stop)], image_size, box_expand)
             for s in todo for i in range(s.start, s.stop, CHUNK)]
    if workers == 1 or len(tasks) <= 1:  # a pool's start-up would cost more than it saves
        results: Iterator = (_crop_chunk(*task) for task in tasks)
    else:
        results = _in_pool(_crop_chunk, tasks, workers)
    shape = (image_size, image_size, 3)
    with contextlib.closing(results), Progress(len(records) - done, desc) as progress:
        for segment in todo:
            images = np.empty((len(segment), *shape), dtype=np.uint8)
            kinds = np.full(len(segment), "", dtype=object)
            details = np.full(len(segment), "", dtype=object)
            for at in range(0, len(segment), CHUNK):
                crops, chunk_kinds, chunk_details = next(results)
                rows = slice(at, at + len(crops))
                images[rows], kinds[rows], details[rows] = crops, chunk_kinds, chunk_details
                if bad_files == "error" and any(chunk_kinds):
                    bad = next(i for i, kind in enumerate(chunk_kinds) if kind)
                    raise DataError(paths[segment.start + at + bad], chunk_details[bad])
                progress.update(len(crops))
            _save_segment(segment.path, images, kinds, details)


def _crop_chunk(paths: list[str], boxes: list[np.ndarray], image_size: int,
                box_expand: float) -> tuple[np.ndarray, list[str], list[str]]:
    """Crops of one chunk, and per image the kind and detail of its problem ("" when none).

    Plain strings, not DataError, cross the process boundary, and a bad image does not stop the
    chunk: whether it is an error is the caller's decision.
    """
    out = np.zeros((len(paths), image_size, image_size, 3), dtype=np.uint8)
    kinds, details = [""] * len(paths), [""] * len(paths)
    for i, (path, box) in enumerate(zip(paths, boxes)):
        result = crop_one(path, box, image_size, box_expand)
        if isinstance(result, tuple):
            kinds[i], details[i] = result
        else:
            out[i] = result
    return out, kinds, details


def _in_pool(fn: Callable, tasks: Sequence[tuple], workers: int) -> Iterator:
    """fn(*task) for each task, in order, with at most 2 * workers tasks submitted ahead.

    The bound keeps memory flat when writing falls behind decoding. Workers are forked on Linux:
    spawned ones re-import the caller's main module, which for the CLI means the Keras backend
    (measured: 14 s against 1.3 s for 2,000 images on 2 cores). Forking a process that runs backend
    threads is safe here because the workers only call PIL and numpy, never the backend.
    """
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_watch_parent,
                             initargs=(os.getpid(),)) as pool:
        pending: deque[Future] = deque()
        try:
            for task in tasks:
                pending.append(pool.submit(fn, *task))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # on an error or interruption, drop queued work instead of finishing it
            for future in pending:
                future.cancel()


def _watch_parent(parent: int) -> None:
    """In a worker: exit when the parent process is gone. A parent killed with SIGKILL cannot stop
    its pool, whose workers would otherwise wait for work forever."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="watch-parent").start()


def _save_segment(path: Path, images: np.ndarray, kinds: np.ndarray, details: np.ndarray) -> None:
    """Written under a unique name, fsynced and renamed: a segment file is whole or absent."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, images=images, kinds=kinds.astype(str), details=details.astype(str))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _load_segment(segment: _Segment, image_size: int, part: str) -> np.ndarray:
    """One array of a segment file; a damaged file is removed, so that running again redoes it."""
    expected = (len(segment), image_size, image_size, 3) if part == "images" else (len(segment),)
    try:
        with np.load(segment.path, allow_pickle=False) as npz:
            array = npz[part]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        array, problem = None, f"damaged ({exc})"
    else:
        problem = None if array.shape == expected else f"holds {array.shape}, expected {expected}"
    if problem:
        segment.path.unlink(missing_ok=True)
        raise DataError(segment.path, f"work file {problem}; removed it: run the same command again")
    return array


# ----------------------------------------------------------------------------------- assembling


def _assemble(tmp: Path, records: pd.DataFrame, segments: list[_Segment], image_size: int,
              box_expand: float, bad_files: str, desc: str) -> None:
    """The HDF5 file from the finished segments, in order, without the bad images."""
    kinds = np.concatenate([_load_segment(s, image_size, "kinds") for s in segments]) if segments \
        else np.zeros(0, dtype=str)
    bad = kinds != ""
    if bad.any() and bad_files == "error":
        first = int(np.flatnonzero(bad)[0])
        segment = next(s for s in segments if s.start <= first < s.stop)
        details = _load_segment(segment, image_size, "details")
        raise DataError(records["path"].iloc[first], str(details[first - segment.start]))
    kept = records[~bad]
    n, shape = len(kept), (image_size, image_size, 3)
    length, digits = encode_labels(list(kept["digits"]))
    names = [str(name) for name in kept["name"]]
    fingerprint = hashlib.sha256()
    for part in (length.tobytes(), digits.tobytes(), "\0".join(names).encode()):
        fingerprint.update(part)
    quiet = io.StringIO() if len(segments) <= 8 else None  # a second or so: no progress lines
    with h5py.File(tmp, "w") as f, Progress(n, f"{desc}: writing", stream=quiet) as progress:
        images = f.create_dataset("images", (n, *shape), dtype=np.uint8)  # contiguous: see docstring
        f.create_dataset("length", data=length)
        f.create_dataset("digits", data=digits)
        f.create_dataset("names", data=names, dtype=h5py.string_dtype("utf-8"))
        at = 0
        for segment in segments:
            crops = _load_segment(segment, image_size, "images")[~bad[segment.start:segment.stop]]
            images[at:at + len(crops)] = crops
            fingerprint.update(crops.tobytes())
            at += len(crops)
            progress.update(len(crops))
        f.attrs.update(format_version=FORMAT_VERSION, image_size=image_size, box_expand=box_expand,
                       count=n, fingerprint=fingerprint.hexdigest())

