"""The records table: one row per image of a raw split folder (SVHN Format 1 layout).

A split folder holds image files and an annotation file naming them: ``digitStruct.mat`` (MATLAB
v7.3, read by harness.digitstruct) or a ``.csv`` with one row per digit box
(``filename,label,left,top,width,height``, label 10 meaning the digit 0, as in digitStruct.mat).
Columns of the table:

- ``name``: the file name as the annotations store it; ``path``: its absolute path
- ``digits``: the whole number as a string of digits (may be longer than MAX_DIGITS); ``length``
- ``boxes``: (k, 4) float64 digit boxes, left, top, width, height in pixels
- ``width``, ``height``: the image size, read from the file header (no pixels are decoded)
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from harness import LENGTH_CLASSES, MAX_DIGITS, NO_DIGIT
from harness.digitstruct import Annotation, read_digitstruct
from harness.errors import DataError

COLUMNS = ["name", "path", "digits", "length", "boxes", "width", "height"]
CSV_COLUMNS = ["filename", "label", "left", "top", "width", "height"]
_LISTED = 5  # how many offending file names an error message lists before counting the rest
_HEADERS_PER_TASK = 128


def read_records(split_dir: str | os.PathLike, annotations: str = "digitStruct.mat") -> pd.DataFrame:
    """The records table of ``split_dir``; ``annotations`` is a file name inside it (or a path).

    Raises DataError for a bad annotation file, names that leave the folder, missing image files
    and unreadable image headers.
    """
    folder = Path(os.path.abspath(split_dir))
    if not folder.is_dir():
        raise DataError(folder, "no such split folder")
    source = folder / annotations
    entries = _read_annotations(source)
    if not entries:
        raise DataError(source, "names no images")
    _check_names(source, [a.name for a in entries])
    paths = [str(folder / os.path.normpath(a.name)) for a in entries]
    _check_present(folder, source, entries, paths)
    sizes = _image_sizes(paths)
    digits = ["".join(str(int(d)) for d in a.digits) for a in entries]
    return pd.DataFrame({
        "name": [a.name for a in entries],
        "path": paths,
        "digits": digits,
        "length": np.array([len(d) for d in digits], dtype=np.int64),
        "boxes": pd.Series([np.asarray(a.boxes, dtype=np.float64).reshape(-1, 4) for a in entries],
                           dtype=object),
        "width": np.array([w for w, _ in sizes], dtype=np.int64),
        "height": np.array([h for _, h in sizes], dtype=np.int64),
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
    bad = numbers.isna().any(axis=1) | ~numbers["label"].isin(range(0, 11)) | table["filename"].isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(source, f"{int(bad.sum())} bad rows, first at data row {row + 1} "
                                f"(labels must be 0..10, box fields numbers)")
    labels = numbers["label"].to_numpy(dtype=np.int64) % 10  # SVHN stores the digit 0 as 10
    boxes = numbers[CSV_COLUMNS[2:]].to_numpy(dtype=np.float64)
    groups = table.groupby("filename", sort=False).indices
    return [Annotation(name, labels[rows], boxes[rows]) for name, rows in groups.items()]


def _check_names(source: Path, names: list[str]) -> None:
    """Annotations may only name files inside their folder, once each."""
    escaping = [n for n in names if _escapes(n)]
    if escaping:
        raise DataError(source, f"names files outside its folder: {_listing(escaping)}")
    repeated = [n for n, count in Counter(names).items() if count > 1]
    if repeated:
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


def _image_sizes(paths: list[str]) -> list[tuple[int, int]]:
    # Opening an image reads only its header; threads overlap the file-system latency. Chunks of
    # files per task: one future per file costs more in locking than the header read itself.
    chunks = [paths[i:i + _HEADERS_PER_TASK] for i in range(0, len(paths), _HEADERS_PER_TASK)]
    with ThreadPoolExecutor(max_workers=min(16, 4 * (os.cpu_count() or 1))) as pool:
        return [size for sizes in pool.map(_chunk_sizes, chunks) for size in sizes]


def _chunk_sizes(paths: list[str]) -> list[tuple[int, int]]:
    return [_image_size(path) for path in paths]


def _image_size(path: str) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(path, f"not a readable image ({exc})") from None


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" (and {len(names) - _LISTED} more)" if len(names) > _LISTED else "")
