"""The records table: one row per image of a raw split folder (SVHN Format 1 layout).

A split folder holds image files and an annotation file naming them: ``digitStruct.mat`` (MATLAB
v7.3, read by harness.data.digitstruct), its widely used JSON conversion (a list of
``{"filename", "boxes": [{"label", "left", "top", "width", "height"}, ...]}``), or a ``.csv`` with
one row per digit box (``filename,label,left,top,width,height``); label 10 means the digit 0 in all
three. Without an explicit file, the first found of digitStruct.mat, a single ``*.json`` and
labels.csv is read.
Columns of the table:

- ``name``: the file name as the annotations store it; ``path``: its absolute path
- ``digits``: the whole number as a string of digits (may be longer than MAX_DIGITS); ``length``
- ``boxes``: (k, 4) float64 digit boxes, left, top, width, height in pixels
- ``width``, ``height``: the image size, read from the file header (no pixels are decoded)
- ``mode``: the PIL mode from the header (RGB, L, P, RGBA, I;16, ...); "RGB;16" for 16-bit colour,
  which PIL reads as 8-bit RGB

``read_records`` stops at the first bad image file; ``scan_records`` leaves such images out and lists
them (``Skipped``), for preparations that skip bad files and say which in their data card.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from harness import LENGTH_CLASSES, MAX_DIGITS, NO_DIGIT
from harness.data.digitstruct import (
    Annotation,
    annotation_file,
    read_digitstruct,
    read_json_annotations,
)
from harness.errors import DataError

COLUMNS = ["name", "path", "digits", "length", "boxes", "width", "height", "mode"]
CSV_COLUMNS = ["filename", "label", "left", "top", "width", "height"]
_LISTED = 5  # how many offending file names an error message lists before counting the rest
_HEADERS_PER_TASK = 128


class Skipped(NamedTuple):
    """An annotated image that scan_records left out of the table, and why."""

    name: str
    kind: str  # "missing", "unreadable" or "duplicate_name"
    detail: str


def read_records(split_dir: str | os.PathLike, annotations: str | None = None) -> pd.DataFrame:
    """The records table of ``split_dir``; ``annotations`` is a file name inside it (or a path),
    by default the one annotation_file finds.

    Raises DataError for a bad annotation file, names that leave the folder, missing image files
    and unreadable image headers.
    """
    return _read(split_dir, annotations, None)


def scan_records(split_dir: str | os.PathLike,
                 annotations: str | None = None) -> tuple[pd.DataFrame, list[Skipped]]:
    """``read_records``, except that images whose file is missing or has no readable header, and
    names the annotations list more than once (every entry of such a name), are left out of the table
    and listed in annotation order instead of raising. A bad annotation file is still an error.
    """
    skipped: list[Skipped] = []
    return _read(split_dir, annotations, skipped), skipped


def _read(split_dir: str | os.PathLike, annotations: str | None,
          skipped: list[Skipped] | None) -> pd.DataFrame:
    """The records table; bad images raise DataError, or go to ``skipped`` when it is a list."""
    folder = Path(os.path.abspath(split_dir))
    if not folder.is_dir():
        raise DataError(folder, "no such split folder")
    source = folder / annotations if annotations else annotation_file(folder)
    entries = _read_annotations(source)
    if not entries:
        raise DataError(source, "names no images")
    _check_names(source, [a.name for a in entries], repeats=skipped is not None)
    paths = [str(folder / os.path.normpath(a.name)) for a in entries]
    if skipped is None:
        _check_present(folder, source, entries, paths)
        headers = _image_headers(paths)
    else:
        entries, paths, headers = _drop_bad(entries, paths, skipped)
    digits = ["".join(str(int(d)) for d in a.digits) for a in entries]
    return pd.DataFrame({
        "name": [a.name for a in entries],
        "path": paths,
        "digits": digits,
        "length": np.array([len(d) for d in digits], dtype=np.int64),
        "boxes": pd.Series([np.asarray(a.boxes, dtype=np.float64).reshape(-1, 4) for a in entries],
                           dtype=object),
        "width": np.array([h[0] for h in headers], dtype=np.int64),
        "height": np.array([h[1] for h in headers], dtype=np.int64),
        "mode": [h[2] for h in headers],
    }, columns=COLUMNS)


def encode_labels(digits: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Numbers as digit strings -> length class (N,) uint8 and digits (N, MAX_DIGITS) uint8.

    The length class is the number of digits, or LENGTH_CLASSES - 1 (">5") for longer numbers, whose
    first MAX_DIGITS digits are kept; positions beyond a number's length hold NO_DIGIT.
    """
    length = np.empty(len(digits), dtype=np.uint8)
    out = np.full((len(digits), MAX_DIGITS), NO_DIGIT, dtype=np.uint8)
    for i, number in enumerate(digits):
        if number and not (number.isascii() and number.isdigit()):
            raise ValueError(f"not a string of digits: {number!r}")
        length[i] = min(len(number), LENGTH_CLASSES - 1)
        head = number[:MAX_DIGITS]
        out[i, : len(head)] = np.frombuffer(head.encode(), dtype=np.uint8) - ord("0")
    return length, out


def _read_annotations(source: Path) -> list[Annotation]:
    if not source.is_file():
        raise DataError(source, "no such annotation file")
    if source.suffix.lower() == ".csv":
        return _read_csv(source)
    if source.suffix.lower() == ".json":
        return read_json_annotations(source)
    return read_digitstruct(source)


def _read_csv(source: Path) -> list[Annotation]:
    """One Annotation per file name, in order of first appearance; boxes in the file's order."""
    try:
        table = pd.read_csv(source, dtype={"filename": str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(source, f"not a readable CSV file ({exc})") from None
    missing = [c for c in CSV_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(source, f"missing columns {missing}; expected {CSV_COLUMNS}")
    numbers = table[CSV_COLUMNS[1:]].apply(pd.to_numeric, errors="coerce")
    finite = np.isfinite(numbers.to_numpy(dtype=np.float64)).all(axis=1)  # NaN, inf and "" alike
    bad = ~finite | ~numbers["label"].isin(range(0, 11)) | table["filename"].isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(source, f"{int(bad.sum())} bad rows, first at data row {row + 1} "
                                f"(labels must be 0..10, box fields finite numbers)")
    labels = numbers["label"].to_numpy(dtype=np.int64) % 10  # SVHN stores the digit 0 as 10
    boxes = numbers[CSV_COLUMNS[2:]].to_numpy(dtype=np.float64)
    groups = table.groupby("filename", sort=False).indices
    return [Annotation(name, labels[rows], boxes[rows]) for name, rows in groups.items()]


def _check_names(source: Path, names: list[str], repeats: bool = False) -> None:
    """Annotations may only name files inside their folder, once each (unless ``repeats``)."""
    escaping = [n for n in names if _escapes(n)]
    if escaping:
        raise DataError(source, f"names files outside its folder: {_listing(escaping)}")
    repeated = [n for n, count in Counter(names).items() if count > 1]
    if repeated and not repeats:
        raise DataError(source, f"names these images more than once: {_listing(repeated)}")


def _escapes(name: str) -> bool:
    # Lexical check, so that a folder of symlinks into a shared store still works.
    normal = os.path.normpath(name)
    return not name or os.path.isabs(name) or normal == ".." or normal.startswith(".." + os.sep)


def _check_present(folder: Path, source: Path, entries: list[Annotation], paths: list[str]) -> None:
    missing = [a.name for a, p in zip(entries, paths) if not os.path.isfile(p)]
    if missing:
        raise DataError(folder, f"{len(missing)} of {len(entries)} image files named in {source.name} "
                                f"are missing: {_listing(missing)}")


def _drop_bad(entries: list[Annotation], paths: list[str],
              skipped: list[Skipped]) -> tuple[list[Annotation], list[str], list[tuple[int, int, str]]]:
    """The entries whose image is there, readable and named once, with their headers; the others
    are appended to ``skipped``."""
    counts = Counter(a.name for a in entries)
    present = [counts[a.name] == 1 and os.path.isfile(p) for a, p in zip(entries, paths)]
    found = iter(_image_headers([p for p, ok in zip(paths, present) if ok], strict=False))
    kept: tuple[list, list, list] = ([], [], [])
    for a, path, ok in zip(entries, paths, present):
        header = next(found) if ok else None
        if counts[a.name] > 1:
            skipped.append(Skipped(a.name, "duplicate_name", f"named {counts[a.name]} times in the annotations"))
        elif header is None:
            skipped.append(Skipped(a.name, "missing", "no such image file"))
        elif isinstance(header, str):
            skipped.append(Skipped(a.name, "unreadable", header))
        else:
            for column, value in zip(kept, (a, path, header)):
                column.append(value)
    return kept


def _image_headers(paths: list[str], strict: bool = True) -> list:
    # Opening an image reads only its header; threads overlap the file-system latency. Chunks of
    # files per task: one future per file costs more in locking than the header read itself.
    chunks = [paths[i:i + _HEADERS_PER_TASK] for i in range(0, len(paths), _HEADERS_PER_TASK)]
    with ThreadPoolExecutor(max_workers=min(16, 4 * (os.cpu_count() or 1))) as pool:
        return [h for headers in pool.map(partial(_chunk_headers, strict=strict), chunks) for h in headers]


def _chunk_headers(paths: list[str], strict: bool) -> list:
    return [_image_header(path, strict) for path in paths]


def _image_header(path: str, strict: bool = True) -> tuple[int, int, str] | str:
    """(width, height, mode) of an image file; its problem as a string when not ``strict``."""
    try:
        with Image.open(path) as image:
            mode, raw = image.mode, image.tile[0][3] if image.tile else None
            if isinstance(raw, str) and ";16" in raw and "16" not in mode:
                mode += ";16"  # 16-bit colour: PIL decodes it as 8-bit RGB, keeping the high bytes
            return image.width, image.height, mode
    except (OSError, SyntaxError, ValueError, IndexError, Image.DecompressionBombError) as exc:
        if strict:
            raise DataError(path, f"not a readable image ({exc})") from None
        return f"not a readable image ({exc})"


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" (and {len(names) - _LISTED} more)" if len(names) > _LISTED else "")
