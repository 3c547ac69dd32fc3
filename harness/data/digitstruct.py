"""SVHN Format 1 annotation files: read and write ``digitStruct.mat`` (MATLAB v7.3 = HDF5).

Layout of a genuine file, as MATLAB saved SVHN's ``digitStruct`` (h5py shapes, i.e. MATLAB's
dimensions reversed):

- A 512-byte userblock: ``MATLAB 7.3 MAT-file, Platform: ..., Created on: ... HDF5 schema 1.00 .``
  padded with spaces to 116 bytes, 8 zero bytes, then version ``00 02`` and endian marker ``IM``
  at offsets 124..127, zeros to 512. The HDF5 superblock (version 0) follows.
- Group ``/digitStruct``: attrs ``MATLAB_class=b"struct"`` and ``MATLAB_fields`` (name, bbox).
- Datasets ``/digitStruct/name`` and ``/digitStruct/bbox``: (N, 1) object references, one per image.
- Each name reference -> a (n, 1) uint16 dataset of UTF-16 code units in ``/#refs#``
  (attrs ``MATLAB_class=b"char"``, ``MATLAB_int_decode=2``).
- Each bbox reference -> a group in ``/#refs#`` (``MATLAB_class=b"struct"``, ``MATLAB_fields``)
  holding the datasets height, left, top, width, label. For a one-digit image each is an inline
  (1, 1) float64 (``MATLAB_class=b"double"``); for k > 1 digits each is a (k, 1) dataset of object
  references to (1, 1) float64 datasets in ``/#refs#`` (``MATLAB_class=b"double"``).
- Label 10 means the digit 0.

Why this module speaks HDF5 bytes itself: a train file holds ~575k HDF5 objects (33,402 names and
structs, 73,257 digits x 5 fields), and the HDF5 library costs 13-70 us to open and 40-60 us to
create one object (measured through h5py and through ctypes): minutes either way. MATLAB writes a
small, fixed subset of the format (superblock 0, version-1 object headers, symbol-table groups,
compact datasets), so:

- ``read_digitstruct`` opens the file with h5py for the top level, then parses the object headers
  of all names, structs, fields and scalars at once with numpy over a memory map. Any entry that
  uses something outside that subset (or is malformed) is read again through h5py's low-level API,
  which is exact and gives the error message; so the fast path changes speed, never results.
  It checks everything that locates and types the values it returns (header walk, datatype,
  dataspace, layout, group B-tree/SNOD/heap names, bounds); damage confined to metadata it does
  not use (a fill-value or attribute message, a heap's free list) goes unnoticed where HDF5
  might refuse the object.
- ``write_digitstruct`` emits that subset directly, byte for byte in MATLAB's encodings (minus
  MATLAB's ``H5PATH`` and modification-time messages); h5py/HDF5 read it as any MATLAB file.
"""

from __future__ import annotations

import functools
import json
import math
import os
import secrets
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO, NamedTuple

import h5py
import numpy as np
from h5py import h5d, h5g, h5r, h5s, h5t

from harness.errors import DataError

BOX_FIELDS = ("left", "top", "width", "height")  # column order of Annotation.boxes
STRUCT_FIELDS = ("height", "left", "top", "width", "label")  # MATLAB_fields order in genuine files
USERBLOCK_SIZE = 512
MAX_NAME_CHARS = 255  # longest file name most filesystems allow


class Annotation(NamedTuple):
    """One image: file name as stored, digits 0..9, boxes (left, top, width, height) in pixels."""

    name: str
    digits: np.ndarray  # (k,) int64 in 0..9
    boxes: np.ndarray  # (k, 4) float64


class _Bad(ValueError):
    """A problem inside one entry; read/write add the file and the entry and raise DataError."""


def check_name(name: object) -> str:
    """Return ``name`` if it is a plain file name (ValueError otherwise): no name may point outside
    the dataset folder."""
    if not isinstance(name, str) or not name:
        raise _Bad(f"image name {name!r} is not a non-empty string")
    if len(name) > MAX_NAME_CHARS:
        raise _Bad(f"image name {name[:40]!r}... is longer than {MAX_NAME_CHARS} characters")
    # ':' names a drive on Windows ("C:x.png"); control characters are never part of a real name.
    if any(c in name for c in "/\\:") or ".." in name or any(ord(c) < 32 for c in name):
        raise _Bad(f"image name {name!r} is not a plain file name (path separator, ':', '..' or "
                   "control character); names must not point outside the dataset folder")
    return name


def _check_values(labels: np.ndarray, boxes: np.ndarray) -> None:
    if not np.all((labels >= 1) & (labels <= 10) & (labels == np.round(labels))):
        raise _Bad(f"labels {labels.tolist()} are not all integers in 1..10")
    if not np.all(np.isfinite(boxes)):
        raise _Bad(f"box values {boxes.tolist()} are not all finite")


# ----------------------------------------------------- the HDF5 subset MATLAB writes (spec v2.0)
# Little-endian, 8-byte addresses and lengths. Addresses are relative to the superblock.

_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_UNDEF = 2**64 - 1
_FREE_NULL = 1  # a local heap's "no free block" marker
_LEAF_K, _INTERNAL_K = 4, 16  # HDF5's (and MATLAB's) defaults: 8 links per SNOD, 32 B-tree children
_SNOD_SIZE = 8 + 2 * _LEAF_K * 40
_TREE_SIZE = 24 + (4 * _INTERNAL_K + 1) * 8
_GCOL_SIZE, _GCOL_OBJECTS = 4096, 170  # as MATLAB: 170 objects of <= 8 bytes fill one collection
_MAX_MESSAGES = 64  # per header chunk; more means a file this module's fast path does not know
_MAX_CHUNKS = 8  # per object header (MATLAB's have 1 or 2); bounds the walk of a looping file

# Header message types.
_SPACE, _TYPE, _FILL, _LAYOUT, _ATTR, _CONT, _STAB = 0x1, 0x3, 0x5, 0x8, 0xC, 0x10, 0x11
# Messages that do not change where or what the data is: NIL, fill values, attributes, comment,
# modification times, attribute info, reference count.
_PASSIVE = (0x0, 0x4, 0x5, 0xC, 0xD, 0xE, 0x12, 0x15, 0x16)

# Datatype message bodies, byte for byte as in genuine files.
_F64 = bytes.fromhex("11203f00 08000000 00004000 340b0034 ff030000")
_REF = bytes.fromhex("17000000 08000000")  # object reference
_U16 = bytes.fromhex("10000000 02000000 00001000")
_I32 = bytes.fromhex("10080000 04000000 00002000")
_VLEN_S1 = bytes.fromhex("19000000 10000000 13000000 01000000")  # sequence of 1-char strings
_TYPES = (_F64, _REF, _U16)  # what the fast reader accepts; codes 1, 2, 3
_F64_CODE, _REF_CODE, _U16_CODE = 1, 2, 3
_ITEMSIZE = np.array([0, 8, 8, 2])


# ----------------------------------------------------------------------------------- writing


def _pad8(data: bytes) -> bytes:
    return data + bytes(-len(data) % 8)


def _msg(kind: int, body: bytes, flags: int = 0) -> bytes:
    body = _pad8(body)
    return struct.pack("<HHB3x", kind, len(body), flags) + body


def _header(*messages: bytes) -> bytes:
    """Version-1 object header: prefix (version, #messages, refcount, size), 8-aligned messages."""
    body = b"".join(messages)
    return struct.pack("<BxHII4x", 1, len(messages), 1, len(body)) + body


def _space(*dims: int) -> bytes:
    """Dataspace message v1; MATLAB stores max dims equal to dims. No dims: a scalar."""
    return struct.pack(f"<BBB5x{2 * len(dims)}Q", 1, len(dims), 1 if dims else 0, *dims, *dims)


def _str_type(size: int) -> bytes:
    return bytes.fromhex("13000000") + struct.pack("<I", size)  # fixed, null-terminated ASCII


def _attr(name: str, dtype: bytes, space: bytes, data: bytes) -> bytes:
    cname = name.encode() + b"\0"
    head = struct.pack("<BxHHH", 1, len(cname), len(dtype), len(space))
    return _msg(_ATTR, head + _pad8(cname) + _pad8(dtype) + _pad8(space) + data)


def _class_attr(matlab_class: str) -> bytes:
    return _attr("MATLAB_class", _str_type(len(matlab_class)), _space(), matlab_class.encode())


def _compact(data: bytes) -> bytes:
    return struct.pack("<BBH", 3, 0, len(data)) + data


def _dataset(dtype: bytes, shape: tuple[int, ...], layout: bytes, *attrs: bytes) -> bytes:
    # Fill value message v2: allocation early (compact) or late (contiguous), fill "if set".
    fill = bytes([2, 1 if layout[1] == 0 else 2, 2, 1, 0, 0, 0, 0])
    return _header(_msg(_SPACE, _space(*shape)), _msg(_TYPE, dtype, 1), _msg(_FILL, fill, 1),
                   _msg(_LAYOUT, layout), *attrs)


_CLASS_STRUCT = _class_attr("struct")
_CLASS_DOUBLE = _class_attr("double")
_CHAR_ATTRS = (_class_attr("char"), _attr("MATLAB_int_decode", _I32, _space(), b"\2\0\0\0"))


@functools.lru_cache(maxsize=None)
def _template(dtype: bytes, shape: tuple[int, ...], nbytes: int, *attrs: bytes
              ) -> tuple[bytes, bytes]:
    """A compact dataset's header split around its ``nbytes`` of data: the data follows the
    prefix, three messages and the layout message's 8-byte header and 4-byte prefix. Objects of
    one kind differ only there, so ~400k of them cost a concatenation each."""
    full = _dataset(dtype, shape, _compact(bytes(nbytes)), *attrs)
    at = 16 + len(_msg(_SPACE, _space(*shape))) + len(_msg(_TYPE, dtype)) + 16 + 12
    return full[:at], full[at + nbytes:]


def _compact_dataset(dtype: bytes, shape: tuple[int, ...], data: bytes, *attrs: bytes) -> bytes:
    head, tail = _template(dtype, shape, len(data), *attrs)
    return head + data + tail


def _double(value: float) -> bytes:
    return _compact_dataset(_F64, (1, 1), struct.pack("<d", value), _CLASS_DOUBLE)


class _Out:
    """Appends the HDF5 part of the file to ``fh``; addresses count from its start (the
    superblock). Bytes known only later (the superblock, global heaps) are reserved and filled."""

    def __init__(self, fh: BinaryIO):
        self.fh, self.start, self.size = fh, fh.tell(), 0

    def put(self, data: bytes) -> int:
        addr = self.size
        if len(data) % 8:
            data = _pad8(data)
        self.fh.write(data)
        self.size += len(data)
        return addr

    def fill(self, addr: int, data: bytes) -> None:
        self.fh.seek(self.start + addr)
        self.fh.write(data)
        self.fh.seek(0, os.SEEK_END)


class _GlobalHeap:
    """Holds MATLAB_fields' strings: collections of 170 objects, written when full."""

    def __init__(self, out: _Out):
        self.out, self.addr, self.objects = out, -1, []

    def add(self, text: bytes) -> tuple[int, int]:
        """Store ``text`` (<= 8 bytes, so 170 fit); return its (collection address, index)."""
        if self.addr < 0 or len(self.objects) == _GCOL_OBJECTS:
            self.flush()
            self.addr = self.out.put(bytes(_GCOL_SIZE))
        self.objects.append(text)
        return self.addr, len(self.objects)

    def flush(self) -> None:
        if self.addr < 0:
            return
        body = b"".join(struct.pack("<HH4xQ", i, 0, len(t)) + _pad8(t)
                        for i, t in enumerate(self.objects, 1))
        free = _GCOL_SIZE - 16 - len(body)
        if free:  # object 0 describes the free space, its own 16-byte header included
            body += struct.pack("<HH4xQ", 0, 0, free) + bytes(free - 16)
        self.out.fill(self.addr, b"GCOL\1\0\0\0" + struct.pack("<Q", _GCOL_SIZE) + body)
        self.addr, self.objects = -1, []


_Member = tuple[bytes, int, "tuple[int, int] | None"]  # link name, header address, (B-tree, heap)


def _btree(out: _Out, children: list[int], keys: list[int]) -> int:
    """Write a group B-tree over ``children`` (SNOD addresses, each with the heap offset of its last
    name in ``keys``), level by level; return the root's address."""
    width, level = 2 * _INTERNAL_K, 0
    while True:
        count = max(1, -(-len(children) // width))
        first = out.size
        for j in range(count):
            kids, ends = children[j * width:(j + 1) * width], keys[j * width:(j + 1) * width]
            left = first + (j - 1) * _TREE_SIZE if j else _UNDEF
            right = first + (j + 1) * _TREE_SIZE if j + 1 < count else _UNDEF
            key0 = keys[j * width - 1] if j else 0  # names in child i lie in (key i, key i+1]
            body = (b"TREE" + struct.pack("<BBHQQQ", 0, level, len(kids), left, right, key0)
                    + b"".join(struct.pack("<QQ", c, k) for c, k in zip(kids, ends)))
            out.put(body.ljust(_TREE_SIZE, b"\0"))
        if count == 1:
            return first
        children = [first + j * _TREE_SIZE for j in range(count)]
        keys = [keys[min((j + 1) * width, len(keys)) - 1] for j in range(count)]
        level += 1


def _group(out: _Out, members: Sequence[_Member], *attrs: bytes) -> tuple[int, tuple[int, int]]:
    """Write a symbol-table group (local heap of names, SNODs, B-tree, header); members must be
    sorted by name. Returns (header address, (B-tree, heap)) for the parent's cache entry."""
    offsets, names = [], bytearray(8)  # offset 0: the empty name every key range starts from
    for name, _, _ in members:
        offsets.append(len(names))
        names += _pad8(name + b"\0")
    heap = out.put(b"HEAP\0\0\0\0" + struct.pack("<QQQ", len(names), _FREE_NULL, out.size + 32)
                   + names)
    snods, last_keys = [], []
    for i in range(0, len(members), 2 * _LEAF_K):
        part = members[i:i + 2 * _LEAF_K]
        entries = b"".join(struct.pack("<QQII", off, addr, 1 if cache else 0, 0)
                           + (struct.pack("<QQ", *cache) if cache else bytes(16))
                           for off, (_, addr, cache) in zip(offsets[i:i + len(part)], part))
        snods.append(out.put((b"SNOD\1\0" + struct.pack("<H", len(part)) + entries)
                             .ljust(_SNOD_SIZE, b"\0")))
        last_keys.append(offsets[i + len(part) - 1])
    btree = _btree(out, snods, last_keys)
    return out.put(_header(_msg(_STAB, struct.pack("<QQ", btree, heap)), *attrs)), (btree, heap)


class _Writer:
    """Emits the genuine layout; every object is written before anything that points at it."""

    def __init__(self, fh: BinaryIO):
        self.out = _Out(fh)
        self.out.put(bytes(96))  # the superblock, written last
        self.heap = _GlobalHeap(self.out)
        self.refs: list[_Member] = []  # members of /#refs#, named in creation (= sorted) order

    def member(self, addr: int, cache: tuple[int, int] | None = None) -> int:
        self.refs.append((b"%07x" % len(self.refs), addr, cache))  # 7 hex digits + NUL = 8 bytes
        return addr

    def fields_attr(self, fields: Sequence[str]) -> bytes:
        ids = [self.heap.add(f.encode()) for f in fields]
        data = b"".join(struct.pack("<IQI", len(f), *ref) for f, ref in zip(fields, ids))
        return _attr("MATLAB_fields", _VLEN_S1, _space(len(fields)), data)

    def name(self, name: str) -> int:
        codes = name.encode("utf-16-le")
        return self.member(self.out.put(
            _compact_dataset(_U16, (len(codes) // 2, 1), codes, *_CHAR_ATTRS)))

    def bbox(self, columns: dict[str, list[float]]) -> int:
        fields = []
        for field in sorted(STRUCT_FIELDS):
            values = columns[field]
            if len(values) == 1:  # one digit: inline, as MATLAB stores a 1x1 double struct field
                addr = self.out.put(_double(values[0]))
            else:
                refs = [self.member(self.out.put(_double(v))) for v in values]
                addr = self.out.put(_compact_dataset(_REF, (len(refs), 1),
                                                     struct.pack(f"<{len(refs)}Q", *refs)))
            fields.append((field.encode(), addr, None))
        addr, cache = _group(self.out, fields, _CLASS_STRUCT, self.fields_attr(STRUCT_FIELDS))
        return self.member(addr, cache)

    def finish(self, names: list[int], bboxes: list[int]) -> None:
        refs = _group(self.out, self.refs)
        top = []
        for key, addrs in ((b"bbox", bboxes), (b"name", names)):
            # contiguous: a train file's 33k references exceed a compact dataset's 64 KiB
            data = self.out.put(struct.pack(f"<{len(addrs)}Q", *addrs)) if addrs else _UNDEF
            layout = struct.pack("<BBQQ", 3, 1, data, 8 * len(addrs))
            top.append((key, self.out.put(_dataset(_REF, (len(addrs), 1), layout)), None))
        digit_struct = _group(self.out, top, _CLASS_STRUCT, self.fields_attr(("name", "bbox")))
        self.heap.flush()
        members = [(b"#refs#", *refs), (b"digitStruct", *digit_struct)]
        root, (btree, heap) = _group(self.out, members)
        self.out.fill(0, _SIGNATURE + bytes([0, 0, 0, 0, 0, 8, 8, 0])
                      + struct.pack("<HHIQQQQ", _LEAF_K, _INTERNAL_K, 0, USERBLOCK_SIZE, _UNDEF,
                                    USERBLOCK_SIZE + self.out.size, _UNDEF)  # EOF is absolute
                      + struct.pack("<QQIIQQ", 0, root, 1, 0, btree, heap))


def _columns(a: Annotation) -> dict[str, list[float]]:
    """Validate one annotation and return its struct fields (label 10 for the digit 0). Python
    lists, not numpy: for k ~ 2 digits they check and pack several times faster."""
    if not isinstance(a, tuple) or len(a) != 3:
        raise _Bad(f"expected an Annotation(name, digits, boxes), got {type(a).__name__}")
    check_name(a[0])
    digits, boxes = np.asarray(a[1]), np.asarray(a[2])
    k = len(digits) if digits.ndim == 1 else -1
    if k < 1 or boxes.shape != (k, 4):
        raise _Bad(f"digits shape {digits.shape} and boxes shape {boxes.shape} are not (k,) and "
                   "(k, 4) with k >= 1")
    if digits.dtype.kind not in "iu" or not all(0 <= d <= 9 for d in digits.tolist()):
        raise _Bad(f"digits {digits.tolist()} are not all integers in 0..9")
    rows = boxes.tolist()
    if boxes.dtype.kind not in "iuf" or not all(math.isfinite(v) for row in rows for v in row):
        raise _Bad(f"box values {rows} are not all finite numbers")
    columns = dict(zip(BOX_FIELDS, map(list, zip(*rows))))
    columns["label"] = [d or 10 for d in digits.tolist()]  # SVHN stores the digit 0 as 10
    return columns


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _userblock() -> bytes:
    """MATLAB's 128-byte v7.3 header (date written locale-free), then zeros to 512 bytes."""
    t = time.localtime()
    date = (f"{_DAYS[t.tm_wday]} {_MONTHS[t.tm_mon - 1]} {t.tm_mday:02d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {t.tm_year}")
    text = f"MATLAB 7.3 MAT-file, Platform: svhn-harness, Created on: {date} HDF5 schema 1.00 ."
    return (text.encode("ascii").ljust(116) + bytes(8) + b"\0\2IM").ljust(USERBLOCK_SIZE, b"\0")


def _write(fh: BinaryIO, path: str, annotations: Iterable[Annotation]) -> None:
    fh.write(_userblock())
    writer, names, bboxes = _Writer(fh), [], []
    for i, a in enumerate(annotations):
        try:
            columns = _columns(a)
        except _Bad as e:
            raise DataError(path, f"annotation {i}: {e}") from None
        names.append(writer.name(a[0]))
        bboxes.append(writer.bbox(columns))
    writer.finish(names, bboxes)


def _create_temp(folder: str) -> tuple[int, str]:
    """A new file in ``folder``. Not mkstemp: its mode 0600 would pass to the result through
    os.replace; this one gets the usual permissions (0666 less the umask)."""
    while True:
        tmp = os.path.join(folder, f".digitStruct-{os.getpid()}-{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                           0o666), tmp
        except FileExistsError:
            continue


def write_digitstruct(path: str | os.PathLike, annotations: Iterable[Annotation]) -> None:
    """Write annotations in the genuine layout, atomically (temp file in the folder, os.replace):
    an interrupted or failed write leaves the destination as it was and no temp file behind.
    ``annotations`` may be a generator: it is consumed once, while the file is written."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise DataError(path, f"folder {folder} does not exist")
    try:
        fd, tmp = _create_temp(folder)
    except OSError as e:
        raise DataError(path, f"cannot create a file in {folder} ({e.strerror or e})") from None
    try:
        try:
            with os.fdopen(fd, "wb", buffering=1 << 20) as fh:
                _write(fh, path, annotations)
                fh.flush()
                os.fsync(fh.fileno())  # the bytes are on disk before the name points at them
            os.replace(tmp, path)
        except OSError as e:  # disk full, folder removed, ...
            raise DataError(path, f"cannot write it ({e.strerror or e})") from None
    except BaseException:  # KeyboardInterrupt too: never leave the temp file behind
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# ------------------------------------------------------------------------ reading: fast path


def _ragged_arange(starts: np.ndarray, counts: np.ndarray, step: int) -> np.ndarray:
    """Concatenation of ``starts[i] + step * arange(counts[i])`` over i."""
    first = np.cumsum(counts) - counts
    return np.repeat(starts - step * first, counts) + step * np.arange(counts.sum())


class _Image:
    """The file's bytes, memory-mapped, and vectorized parsing of the subset above. Every function
    takes absolute offsets and a mask ``ok`` of the items still valid, and clears it for items
    whose bytes are outside the file or not what the subset allows."""

    def __init__(self, path: str):
        self.b = np.memmap(path, np.uint8, mode="r")
        self.n = len(self.b)
        self.base = self._superblock()

    def _superblock(self) -> int | None:
        """Offset of a version 0/1 superblock with 8-byte addresses, or None (no fast path)."""
        at = 0
        while at + 96 <= self.n:  # HDF5 looks at 0, 512, 1024, 2048, ...
            if self.b[at:at + 8].tobytes() == _SIGNATURE:
                version = int(self.b[at + 8])
                if version not in (0, 1) or self.b[at + 13] != 8 or self.b[at + 14] != 8:
                    return None
                eof = at + 40 + 4 * version  # version 1 adds 4 bytes before the addresses
                # HDF5 refuses addresses past the stored end of file (absolute); so does this
                self.n = min(self.n, int(self.b[eof:eof + 8].view("<u8")[0]))
                return at
            at = max(512, 2 * at)
        return None

    def uint(self, offs: np.ndarray, width: int, ok: np.ndarray) -> np.ndarray:
        """Little-endian unsigned ints (int64; 2**64-1 reads as -1) at ``offs``."""
        ok &= (offs >= 0) & (offs <= self.n - width)
        raw = self.b[np.where(ok, offs, 0)[:, None] + np.arange(width)]
        return raw.view(f"<u{width}" if width < 8 else "<i8")[:, 0].astype(np.int64)

    def addr(self, offs: np.ndarray, ok: np.ndarray) -> np.ndarray:
        """An 8-byte address at ``offs``, as an absolute offset."""
        return self.base + self.uint(offs, 8, ok)

    def match(self, offs: np.ndarray, pattern: bytes, ok: np.ndarray) -> np.ndarray:
        ok &= (offs >= 0) & (offs <= self.n - len(pattern))
        raw = self.b[np.where(ok, offs, 0)[:, None] + np.arange(len(pattern))]
        return ok & np.all(raw == np.frombuffer(pattern, np.uint8), axis=1)

    def walk(self, headers: np.ndarray) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Find the dataspace, datatype, layout and symbol-table messages of the version-1 object
        headers at ``headers``, following continuation blocks: (ok, {type: message body offset})."""
        n = len(headers)
        ok = np.ones(n, bool)
        ok &= self.uint(headers, 1, ok) == 1  # version 2 ("OHDR") headers take the slow path
        found = {t: np.full(n, -1, np.int64) for t in (_SPACE, _TYPE, _LAYOUT, _STAB)}
        obj, pos = np.arange(n), headers + 16  # one row per header chunk being walked
        chunks = np.ones(n, np.int64)
        end = pos + self.uint(headers + 8, 4, ok)
        for _ in range(_MAX_MESSAGES):
            live = (pos < end) & ok[obj]
            if not live.any():
                return ok, found
            obj, pos, end = obj[live], pos[live], end[live]
            good = np.ones(len(obj), bool)
            kind, size = self.uint(pos, 2, good), self.uint(pos + 2, 2, good)
            good &= (pos + 8 + size <= end) & np.isin(kind, (*_PASSIVE, *found, _CONT))
            good &= self.uint(pos + 4, 1, good) <= 1  # "constant" at most: never shared, ...
            for t, at in found.items():
                hit = good & (kind == t)
                good &= ~(hit & (at[obj] >= 0))  # no repeated messages
                at[obj[hit & good]] = pos[hit & good] + 8
            cont = good & (kind == _CONT)
            cont_ok = np.ones(cont.sum(), bool)
            cpos, clen = self.addr(pos[cont] + 8, cont_ok), self.uint(pos[cont] + 16, 8, cont_ok)
            good[np.flatnonzero(cont)[~cont_ok]] = False
            ok[obj[~good]] = False
            np.add.at(chunks, obj[cont], 1)
            ok &= chunks <= _MAX_CHUNKS
            obj = np.concatenate([obj, obj[cont]])
            pos = np.concatenate([pos + 8 + size, cpos])
            end = np.concatenate([end, cpos + clen])
        ok[obj[pos < end]] = False  # more messages than any file of this layout has
        return ok, found

    def datasets(self, headers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(type code, 0 if unsupported; element count; offset of the raw data) per dataset."""
        ok, at = self.walk(headers)
        ok &= (at[_SPACE] >= 0) & (at[_TYPE] >= 0) & (at[_LAYOUT] >= 0) & (at[_STAB] < 0)
        code = np.zeros(len(headers), np.int64)
        for c, pattern in enumerate(_TYPES, 1):
            code[self.match(at[_TYPE], pattern, ok.copy())] = c
        ok &= code > 0
        count = self._count(at[_SPACE], ok)
        data, nbytes = self._layout(at[_LAYOUT], ok)
        ok &= nbytes == count * _ITEMSIZE[code]
        return np.where(ok, code, 0), count, data

    def _count(self, space: np.ndarray, ok: np.ndarray) -> np.ndarray:
        version, rank = self.uint(space, 1, ok), self.uint(space + 1, 1, ok)
        ok &= ((version == 1) | ((version == 2) & (self.uint(space + 3, 1, ok) != 2))) & (rank <= 2)
        dims_at = space + np.where(version == 1, 8, 4)  # version 2 drops 4 reserved bytes; 2 = null
        count = np.ones(len(space), np.int64)
        for d in range(2):
            has = rank > d
            dim = self.uint(np.where(has, dims_at + 8 * d, space), 8, ok)
            ok &= ~has | ((dim >= 0) & (dim < 2**31))
            count *= np.where(has, dim, 1)
        return count

    def _layout(self, layout: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Data offset and size of version-3 compact or contiguous layouts."""
        ok &= self.uint(layout, 1, ok) == 3
        compact = self.uint(layout + 1, 1, ok) == 0
        contiguous = (self.uint(layout + 1, 1, ok) == 1) & ok
        ok &= compact | contiguous
        cont_ok = contiguous.copy()
        data = np.where(compact, layout + 4, self.addr(layout + 2, cont_ok))
        nbytes = np.where(compact, self.uint(layout + 2, 2, ok), self.uint(layout + 10, 8, cont_ok))
        ok &= (cont_ok | compact) & (data >= 0) & (nbytes >= 0) & (data <= self.n - nbytes)
        return data, nbytes

    def struct_fields(self, headers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ok, (n, 5) header offsets of the fields in sorted order) of groups that hold exactly
        the five bbox fields in one symbol-table node."""
        ok, at = self.walk(headers)
        ok &= (at[_STAB] >= 0) & (at[_SPACE] < 0) & (at[_LAYOUT] < 0)
        tree, heap = self.addr(at[_STAB], ok), self.addr(at[_STAB] + 8, ok)
        # group node, leaf level, one child, whose names HDF5 finds in ("", key 1]
        ok &= self.match(tree, b"TREE\0\0\1\0", ok) & (self.uint(tree + 24, 8, ok) == 0)
        snod = self.addr(tree + 32, ok)
        ok &= self.uint(tree + 40, 8, ok) == self.uint(snod + 8 + 40 * 4, 8, ok)  # "width"
        ok &= self.match(snod, b"SNOD\1\0\5\0", ok)  # five links
        ok &= self.match(heap, b"HEAP", ok)
        names, heap_size = self.addr(heap + 24, ok), self.uint(heap + 8, 8, ok)
        ok &= self.match(names, b"\0", ok)  # offset 0: the empty name
        fields = np.zeros((len(headers), 5), np.int64)
        for j, field in enumerate(sorted(STRUCT_FIELDS)):  # links are sorted by name
            offset = self.uint(snod + 8 + 40 * j, 8, ok)
            ok &= (offset >= 0) & (offset + len(field) < heap_size)
            ok &= self.match(names + offset, field.encode() + b"\0", ok)
            fields[:, j] = self.addr(snod + 16 + 40 * j, ok)
        return ok, fields


def _fast_names(img: _Image, headers: np.ndarray, good: np.ndarray) -> list[str | None]:
    code, count, data = img.datasets(headers)
    good &= (code == _U16_CODE) & (count <= MAX_NAME_CHARS)
    nbytes = np.where(good, 2 * count, 0)
    raw = img.b[_ragged_arange(data, nbytes, 1)].tobytes()
    names: list[str | None] = []
    starts = (np.cumsum(nbytes) - nbytes).tolist()
    for i, (start, size) in enumerate(zip(starts, nbytes.tolist())):
        try:
            names.append(check_name(raw[start:start + size].decode("utf-16-le")) if good[i]
                         else None)
        except ValueError:  # bad UTF-16 or name: the slow path words the error
            good[i] = False
            names.append(None)
    return names


def _fast_columns(img: _Image, headers: np.ndarray, good: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(k per entry, (5, sum k) values in sorted field order); clears ``good`` where the entry
    needs the slow path."""
    ok, fields = img.struct_fields(headers)
    good &= ok
    code, count, data = (a.reshape(5, -1) for a in img.datasets(fields.T.ravel()))
    good &= np.all((code == _F64_CODE) | (code == _REF_CODE), axis=0)
    good &= np.all(count == count[0], axis=0) & (count[0] >= 1)
    k = np.where(good, count[0], 0)
    # The 8-byte slots of every field's data: the value itself (inline) or a scalar's address.
    slots = _ragged_arange(data.ravel(), np.tile(k, 5), 8)
    slot_ok = np.ones(len(slots), bool)
    bits = img.uint(slots, 8, slot_ok)
    is_ref = np.repeat(code.ravel() == _REF_CODE, np.tile(k, 5))
    s_code, s_count, s_data = img.datasets(img.base + bits[is_ref])
    s_ok = (s_code == _F64_CODE) & (s_count == 1)
    bits[is_ref] = img.uint(s_data, 8, s_ok)
    slot_ok[is_ref] &= s_ok
    entry = np.tile(np.repeat(np.arange(len(k)), k), 5)
    good[entry[~slot_ok]] = False
    return k, bits.view(np.float64).reshape(5, -1)


def _fast_read(path: str, name_addrs: np.ndarray, bbox_addrs: np.ndarray
               ) -> list[Annotation | None]:
    """Annotations of the entries the fast path can read, None for the others."""
    img = _Image(path)
    good = np.full(len(name_addrs), img.base is not None)
    if not good.any():
        return [None] * len(good)
    names = _fast_names(img, img.base + name_addrs, good)
    k, values = _fast_columns(img, img.base + bbox_addrs, good)
    order = sorted(STRUCT_FIELDS)
    labels = values[order.index("label")]
    boxes = np.stack([values[order.index(f)] for f in BOX_FIELDS], axis=1)
    entry = np.repeat(np.arange(len(k)), k)
    valid = (labels >= 1) & (labels <= 10) & (labels == np.round(labels))
    good[entry[~(valid & np.all(np.isfinite(boxes), axis=1))]] = False  # slow path words it
    digits = np.where(valid, labels, 0).astype(np.int64) % 10  # label 10 is the digit 0
    bounds = np.cumsum(k).tolist()
    return [Annotation(names[i], digits[b - c:b], boxes[b - c:b]) if good[i] else None
            for i, (b, c) in enumerate(zip(bounds, k.tolist()))]


# ------------------------------------------------------------------------ reading: slow path

# h5py's low-level calls raise these for HDF5 failures (bad address, wrong object, conversion).
_H5_ERRORS = (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError)


class _Reader:
    """Reads one entry through h5py's low-level API: any valid HDF5 encoding, exact errors."""

    def __init__(self, fid: h5py.h5f.FileID):
        self.fid = fid
        self.one = h5s.create_simple((1,))  # file/memory element counts must match: a size check

    def deref(self, ref: h5py.Reference, kind: type, what: str):
        obj = h5r.dereference(ref, self.fid) if ref else None
        if not isinstance(obj, kind):
            found = "a null reference" if not ref else f"it points to {type(obj).__name__}"
            raise _Bad(f"{what} reference is dangling or invalid ({found})")
        return obj

    def name(self, ref: h5py.Reference) -> str:
        ds = self.deref(ref, h5d.DatasetID, "name")
        if ds.get_type().get_class() != h5t.INTEGER:
            raise _Bad("name dataset does not hold character codes (uint16)")
        n = ds.get_space().get_simple_extent_npoints()
        if n > MAX_NAME_CHARS:
            raise _Bad(f"name has {n} characters (more than {MAX_NAME_CHARS})")
        codes = np.empty(n, np.uint16)
        ds.read(h5s.ALL, h5s.ALL, codes, mtype=h5t.NATIVE_UINT16)
        try:
            return check_name(codes.tobytes().decode("utf-16-le"))
        except UnicodeDecodeError as e:
            raise _Bad(f"name is not valid UTF-16 ({e})") from None

    def annotation(self, name: str, ref: h5py.Reference) -> Annotation:
        group = self.deref(ref, h5g.GroupID, "bbox")
        columns = {field: self.field(group, field) for field in STRUCT_FIELDS}
        if len({len(v) for v in columns.values()}) != 1 or len(columns["label"]) == 0:
            raise _Bad(f"box fields have different or zero lengths "
                       f"{ {f: len(v) for f, v in columns.items()} }")
        boxes = np.stack([columns[f] for f in BOX_FIELDS], axis=1)
        _check_values(columns["label"], boxes)
        return Annotation(name, columns["label"].astype(np.int64) % 10, boxes)

    def field(self, group: h5g.GroupID, field: str) -> np.ndarray:
        try:
            ds = h5d.open(group, field.encode())
        except KeyError:
            raise _Bad(f"box field {field!r} is missing") from None
        cls = ds.get_type().get_class()
        n = ds.get_space().get_simple_extent_npoints()
        if cls == h5t.REFERENCE:  # k > 1 digits: one referenced (1, 1) dataset per digit
            refs = np.empty(n, dtype=h5py.ref_dtype)
            ds.read(h5s.ALL, h5s.ALL, refs)
            return np.array([self.scalar(r, field) for r in refs], dtype=np.float64)
        if cls not in (h5t.FLOAT, h5t.INTEGER):
            raise _Bad(f"box field {field!r} is neither numbers nor references")
        values = np.empty(n, np.float64)  # k == 1: stored inline
        ds.read(h5s.ALL, h5s.ALL, values, mtype=h5t.NATIVE_DOUBLE)
        return values

    def scalar(self, ref: h5py.Reference, field: str) -> float:
        ds = self.deref(ref, h5d.DatasetID, f"box field {field!r}")
        out = np.empty(1, np.float64)
        try:  # HDF5 converts any numeric type; strings/references and size != 1 fail here
            ds.read(self.one, h5s.ALL, out, mtype=h5t.NATIVE_DOUBLE)
        except OSError as e:
            raise _Bad(f"box field {field!r} element is not a single number ({e})") from None
        return out[0]


# ------------------------------------------------------------------------------ reading: API


@contextmanager
def _open(path: str) -> Iterator[h5py.File]:
    if not os.path.exists(path):
        raise DataError(path, "file not found")
    if os.path.isdir(path):
        raise DataError(path, "is a folder, expected a digitStruct.mat file")
    try:
        with open(path, "rb") as raw:
            head = raw.read(20)
    except OSError as e:
        raise DataError(path, f"cannot read it ({e.strerror or e})") from None
    if head.startswith(b"MATLAB 5.0 MAT-file"):
        raise DataError(path, "is a MATLAB v5 MAT-file; SVHN's digitStruct.mat is v7.3 (HDF5): "
                        "re-save it with save(..., '-v7.3') or use the official file")
    if not h5py.is_hdf5(path):
        raise DataError(path, "is not an HDF5 file (MATLAB v7.3 digitStruct.mat expected)")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(path, f"cannot open as HDF5 ({e})") from None
    with f:
        yield f


def _top_refs(path: str, f: h5py.File, key: str) -> h5py.Dataset:
    ds = f["digitStruct"].get(key)
    if not isinstance(ds, h5py.Dataset):
        raise DataError(path, f"no dataset 'digitStruct/{key}'")
    if h5py.check_ref_dtype(ds.dtype) is not h5py.Reference:
        raise DataError(path, f"'digitStruct/{key}' holds {ds.dtype}, not object references")
    if ds.ndim not in (1, 2) or (ds.ndim == 2 and min(ds.shape) > 1):
        raise DataError(path, f"'digitStruct/{key}' has shape {ds.shape}, expected (N, 1)")
    return ds


def _addresses(ds: h5py.Dataset) -> np.ndarray:
    """The references' raw object addresses, read without making 33k Python objects."""
    out = np.empty(ds.size, np.int64)
    ds.id.read(h5s.ALL, h5s.ALL, out, mtype=h5t.STD_REF_OBJ)
    return out


def _slow_entry(path: str, reader: _Reader, i: int, name_ref: h5py.Reference,
                bbox_ref: h5py.Reference) -> Annotation:
    name = None
    try:
        name = reader.name(name_ref)
        return reader.annotation(name, bbox_ref)
    except _Bad as e:
        problem = str(e)
    except _H5_ERRORS as e:
        detail = e.args[0] if e.args else repr(e)
        problem = f"HDF5 cannot read it: dangling or invalid reference? ({detail})"
    raise DataError(path, f"entry {i}" + (f" ({name})" if name else "") + f": {problem}")


def _read(path: str, fast: bool = True) -> tuple[list[Annotation], list[int]]:
    """All entries, and the indices that needed the slow path (for tests and benchmarks)."""
    with _open(path) as f:
        if not isinstance(f.get("digitStruct"), h5py.Group):
            raise DataError(path, "no group 'digitStruct' (not an SVHN digitStruct.mat)")
        names, bboxes = _top_refs(path, f, "name"), _top_refs(path, f, "bbox")
        if names.size != bboxes.size:
            raise DataError(path, f"digitStruct has {names.size} names but {bboxes.size} bboxes")
        out = (_fast_read(path, _addresses(names), _addresses(bboxes)) if fast
               else [None] * names.size)
        slow = [i for i, a in enumerate(out) if a is None]
        if slow:  # in file order, so the first bad entry is the one reported
            reader, name_refs, bbox_refs = _Reader(f.id), names[()].ravel(), bboxes[()].ravel()
            for i in slow:
                out[i] = _slow_entry(path, reader, i, name_refs[i], bbox_refs[i])
    return out, slow


def read_digitstruct(path: str | os.PathLike) -> list[Annotation]:
    """Read every entry of a digitStruct.mat; raise DataError naming the file for bad input."""
    return _read(os.fspath(path))[0]


# ------------------------------------------------------------------------------ JSON conversion

JSON_BOX_KEYS = ("label", *BOX_FIELDS)


def read_json_annotations(path: str | os.PathLike) -> list[Annotation]:
    """Read the widely used JSON conversion of digitStruct.mat: a list of
    ``{"filename": "1.png", "boxes": [{"label": 1.0, "left": 246.0, "top": 77.0, "width": 81.0,
    "height": 219.0}, ...]}`` (label 10 = digit 0; other keys are ignored). Raises DataError naming
    the file, and the entry index and file name, for anything else."""
    path = os.fspath(path)
    entries = _load_json(path)
    if not isinstance(entries, list):
        raise DataError(path, f"top level is a JSON {_json_kind(entries)}, expected a list of "
                              '{"filename": ..., "boxes": [...]} entries')
    out = []
    for i, entry in enumerate(entries):
        name = entry.get("filename") if isinstance(entry, dict) else None
        try:
            out.append(_json_entry(entry))
        except _Bad as e:
            label = f" ({name})" if isinstance(name, str) else ""
            raise DataError(path, f"entry {i}{label}: {e}") from None
    return out


def _load_json(path: str) -> object:
    if not os.path.isfile(path):
        raise DataError(path, "file not found" if not os.path.exists(path) else "is not a file")
    try:
        with open(path, "rb") as fh:
            return json.loads(fh.read())  # bytes: json detects UTF-8/16/32 itself
    except OSError as e:
        raise DataError(path, f"cannot read it ({e.strerror or e})") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(path, f"not valid JSON ({e})") from None


def _json_kind(value: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean",
            type(None): "null"}.get(type(value), "number")


def _json_entry(entry: object) -> Annotation:
    if not isinstance(entry, dict):
        raise _Bad(f"is a JSON {_json_kind(entry)}, expected an object with filename and boxes")
    if "filename" not in entry or "boxes" not in entry:
        raise _Bad(f"has keys {sorted(entry)}, expected filename and boxes")
    name = check_name(entry["filename"])
    boxes = entry["boxes"]
    if not isinstance(boxes, list) or not boxes:
        raise _Bad(f"boxes is a JSON {_json_kind(boxes)}" + (" (empty)" if boxes == [] else "")
                   + ", expected a non-empty list of box objects")
    rows = [_json_box(j, box) for j, box in enumerate(boxes)]
    labels = [row[0] for row in rows]
    return Annotation(name, np.array(labels, dtype=np.int64) % 10,
                      np.array([row[1:] for row in rows], dtype=np.float64).reshape(-1, 4))


def _json_box(j: int, box: object) -> list[float]:
    """[label, left, top, width, height] of box ``j``; labels must be whole numbers in 1..10."""
    if not isinstance(box, dict):
        raise _Bad(f"box {j} is a JSON {_json_kind(box)}, expected an object")
    missing = [k for k in JSON_BOX_KEYS if k not in box]
    if missing:
        raise _Bad(f"box {j} lacks {missing}")
    values = []
    for key in JSON_BOX_KEYS:
        value = box[key]
        # bool is an int in Python, but true/false in a box is a broken file, not 1/0
        number = None if isinstance(value, bool) or not isinstance(value, (int, float)) else value
        # abs() first: math.isfinite overflows on a huge JSON integer; no pixel value is near 1e15
        if number is None or abs(number) > 1e15 or not math.isfinite(number):
            raise _Bad(f"box {j} {key} is {str(value)[:40]}, not a finite number")
        values.append(float(number))
    if not (1 <= values[0] <= 10 and values[0] == round(values[0])):
        raise _Bad(f"box {j} label {box['label']!r} is not a whole number in 1..10 "
                   "(10 means the digit 0)")
    return values


def annotation_file(folder: str | os.PathLike) -> Path:
    """The annotation file of a split folder: digitStruct.mat, else its only ``*.json``, else
    labels.csv. Raises DataError when there is none, or several JSON files and nothing to choose."""
    folder = Path(folder)
    if (folder / "digitStruct.mat").is_file():
        return folder / "digitStruct.mat"
    jsons = sorted(p for p in folder.glob("*.json") if p.is_file())
    if len(jsons) > 1:
        raise DataError(folder, f"several JSON files ({', '.join(p.name for p in jsons)}) and no "
                                "digitStruct.mat: name the annotation file to read")
    if jsons:
        return jsons[0]
    if (folder / "labels.csv").is_file():
        return folder / "labels.csv"
    raise DataError(folder, "no such annotation file: expected digitStruct.mat, one *.json or "
                            "labels.csv")
