"""The prepared split file (HDF5), read: :class:`PreparedSplit` is the one reader of its layout.

harness.data.prepare writes the file; every other part of the harness reads it through this
module and never by raw key. Layout (FORMAT_VERSION 1):

- ``images`` (N, S, S, 3) uint8, contiguous and uncompressed (harness.data.prepare says why)
- ``length`` (N,) uint8 length class, ``digits`` (N, 5) uint8 with NO_DIGIT beyond the length
- ``names`` (N,) UTF-8 strings: the source image names
- attrs: ``format_version``, ``image_size``, ``box_expand``, ``count`` and ``fingerprint``
  (sha256 of labels, names and image bytes: two files with the same fingerprint hold the same
  examples in the same order)

A file that is absent, not HDF5, from another format version or missing a dataset is a DataError
naming it, raised when it is opened.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from harness import LENGTH_CLASSES, MAX_DIGITS
from harness.errors import DataError

FORMAT_VERSION = 1

Rows = slice | np.ndarray | list | None  # which images: all (None), a slice, or row numbers


def open_prepared(path: str | os.PathLike) -> h5py.File:
    """The file's HDF5 handle, read-only, after checking its layout; DataError names a bad file.

    For :class:`PreparedSplit` and for tests of the layout itself; everything else reads through
    PreparedSplit.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such prepared split file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(path, f"not a readable HDF5 file; truncated or corrupt? ({exc})") from None
    try:
        _check_layout(path, f)
    except BaseException:
        f.close()
        raise
    return f


class PreparedSplit:
    """One prepared split file. Made from a path, it checks the file and reads its attributes (a
    DataError names a bad file); labels, names and images are read from the file when asked for.

    It holds no open handle, so it pickles and crosses process forks; :meth:`open` gives a handle
    for reading images batch by batch.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        with open_prepared(self.path) as f:
            self.attrs: dict[str, Any] = {key: _plain(value) for key, value in f.attrs.items()}
            images = f["images"]
            self.image_shape: tuple[int, ...] = tuple(images.shape)
            plain = images.chunks is None and images.compression is None and not images.external
            # get_offset() is None when no storage is allocated (an empty split among others)
            self.image_offset: int | None = images.id.get_offset() if plain and images.size else None

    def __repr__(self) -> str:
        return f"PreparedSplit({str(self.path)!r}: {self.count} images {self.image_size}x{self.image_size})"

    def __len__(self) -> int:
        return self.count

    @property
    def count(self) -> int:
        return int(self.attrs["count"])

    @property
    def image_size(self) -> int:
        return int(self.attrs["image_size"])

    @property
    def box_expand(self) -> float:
        """How much the digit boxes' union grew before cropping (harness.data.prepare.crop_box)."""
        return float(self.attrs["box_expand"])

    @property
    def fingerprint(self) -> str:
        return str(self.attrs["fingerprint"])

    # ------------------------------------------------------------------------------- labels

    def targets(self) -> np.ndarray:
        """(N, 6) int32: the length class, then the five digits (NO_DIGIT beyond the length)."""
        with open_prepared(self.path) as f:
            return np.concatenate([f["length"][:][:, None], f["digits"][:]], axis=1).astype(np.int32)

    def lengths(self) -> np.ndarray:
        """(N,) uint8 length classes (0..5, and 6 for ">5")."""
        with open_prepared(self.path) as f:
            return f["length"][:]

    def names(self) -> list[str]:
        """Source image names, in file order."""
        with open_prepared(self.path) as f:
            return list(f["names"].asstr()[:])

    def length_histogram(self) -> dict[str, int]:
        """Images per length class: "0".."5" and ">5"."""
        return length_histogram(self.lengths())

    def card(self) -> dict:
        """What the data card says of this file: name, images, size, length histogram, fingerprint."""
        return {"file": self.path.name, "images": self.count, "image_size": self.image_size,
                "length_histogram": self.length_histogram(), "fingerprint": self.fingerprint}

    # ------------------------------------------------------------------------------- images

    def images(self, rows: Rows = None) -> np.ndarray:
        """uint8 (n, S, S, 3): every image (``rows`` None), a slice, or the given rows in their order."""
        with self.open() as reader:
            return reader.read(rows)

    def open(self) -> "SplitReader":
        """A handle reading images from the file until closed (a context manager)."""
        return SplitReader(self.path)

    def map_images(self) -> np.ndarray | None:
        """The images as a read-only (N, S, S, 3) array over the file's own bytes (np.memmap: pages
        come from the OS page cache as rows are read), or None when they are not stored as plain
        bytes. Gathers from it return new arrays."""
        if self.image_offset is None:
            return None
        need = self.image_offset + math.prod(self.image_shape)
        try:
            size = os.path.getsize(self.path)
            if size >= need:
                # .view(ndarray): fancy indexing a np.memmap would give memmap-typed batches
                return np.memmap(self.path, np.uint8, "r", offset=self.image_offset,
                                 shape=self.image_shape).view(np.ndarray)
        except FileNotFoundError:
            raise DataError(self.path, "no such prepared split file (removed while in use?)") from None
        except OSError as exc:
            raise DataError(self.path, f"cannot map the images ({exc.strerror or exc})") from None
        raise DataError(self.path, f"truncated: its images end at byte {need}, the file has {size}; "
                                   "prepare the split again")


class SplitReader:
    """An open prepared split file, reading images by rows. An h5py handle belongs to the process
    that opened it: a forked process opens its own."""

    def __init__(self, path: Path):
        self.path = path
        self._file = open_prepared(path)
        self._images = self._file["images"]

    def __len__(self) -> int:
        return len(self._images)

    def read(self, rows: Rows = None) -> np.ndarray:
        """Images of ``rows`` (see :meth:`PreparedSplit.images`), in the order asked for.

        HDF5 reads row lists in increasing order only: they are read sorted (a contiguous run as
        one slice) and put back in the order asked for.
        """
        if rows is None:
            return self._images[:]
        if isinstance(rows, slice):
            return self._images[rows]
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) == 0:
            return np.zeros((0, *self._images.shape[1:]), np.uint8)
        ordered, inverse = np.unique(rows, return_inverse=True)
        if ordered[-1] - ordered[0] + 1 == len(ordered):  # a contiguous run: one slice
            block = self._images[ordered[0]:ordered[-1] + 1]
        else:
            block = self._images[ordered]
        return block if np.array_equal(ordered, rows) else block[inverse]

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "SplitReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def length_histogram(length_classes: np.ndarray) -> dict[str, int]:
    """Counts of length classes as "0".."5" and ">5"."""
    counts = np.bincount(np.asarray(length_classes, dtype=np.int64), minlength=LENGTH_CLASSES)
    return {(str(i) if i <= MAX_DIGITS else f">{MAX_DIGITS}"): int(c) for i, c in enumerate(counts)}


def _plain(value: Any) -> Any:
    """An HDF5 attribute as a plain Python value."""
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if hasattr(value, "item") else value


def _check_layout(path: Path, f: h5py.File) -> None:
    try:
        version = f.attrs.get("format_version")
        if version is None:
            raise DataError(path, "not a prepared split file (no format_version attribute)")
        if int(version) != FORMAT_VERSION:
            raise DataError(path, f"prepared with format version {int(version)}, this harness reads "
                                  f"version {FORMAT_VERSION}; prepare the split again")
        size, count = int(f.attrs["image_size"]), int(f.attrs["count"])
        expected = {"images": ((count, size, size, 3), "u1"), "length": ((count,), "u1"),
                    "digits": ((count, MAX_DIGITS), "u1"), "names": ((count,), "O")}
        for name, (shape, kind) in expected.items():
            ds = f.get(name)
            if not isinstance(ds, h5py.Dataset):
                raise DataError(path, f"no dataset {name!r} (not a complete prepared split file)")
            found = "O" if h5py.check_string_dtype(ds.dtype) else ds.dtype.str[1:]
            if ds.shape != shape or found != kind:
                raise DataError(path, f"dataset {name!r} is {ds.shape} {ds.dtype}, expected {shape} "
                                      f"{'utf-8 strings' if kind == 'O' else 'uint8'}")
    except (OSError, KeyError, ValueError, TypeError) as exc:  # h5py's errors for damaged metadata
        raise DataError(path, f"damaged prepared split file ({exc})") from None
