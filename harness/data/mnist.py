"""MNIST-composite: random MNIST digits side by side on a 64x64 canvas, written in SVHN Format 1's layout.

The report's synthetic set. Each composite is one number: its length drawn like SVHN's (lengths 1-5),
its digits drawn uniformly from the MNIST pool of its split (train composites use only MNIST train
digits, test composites only MNIST test digits), placed left to right with random size, spacing and
vertical offset, white on black. Each digit's box is tight around its ink (pixels >= INK after
resizing; the fainter anti-aliased rim outside it is dropped), so boxes are exact whole pixels.

Sources of the MNIST digits, in order: a folder holding the four IDX files (the dataset option
``source``), else ``<root>/mnist/``, else Keras' own copy (``keras.datasets.mnist.load_data()``,
which downloads once and caches an npz under ~/.keras/datasets).

``render_composite(images, labels, seed, index)`` is a pure function of the pool and (seed, index),
so a split's bytes do not depend on worker count or order. ``generate_split`` writes ``1.png ..
N.png`` (file ``i+1.png`` is example ``index=i``), ``digitStruct.mat`` and ``manifest.json`` into a
temporary folder that is renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import math
import multiprocessing
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from harness import atomic
from harness.backend import load_keras
from harness.data import digitstruct
from harness.errors import DataError
from harness.progress import Progress

GENERATOR_VERSION = 1  # bump whenever the pixels or boxes for a given (pool, seed, index) change
MANIFEST = "manifest.json"
CANVAS = 64  # composites are CANVAS x CANVAS, as in the report
INK = 64  # a pixel at least this bright is ink: boxes are tight around these pixels
# SVHN train split, number lengths 1..5: /work/shared/data/svhn-train-stats.json "length_histogram"
# (official train annotations, 33,402 images); its one 6-digit number is left out, the rest renormalised.
SVHN_LENGTH_COUNTS = (5137, 18130, 8691, 1434, 9)
LENGTH_P = np.array(SVHN_LENGTH_COUNTS, np.float64) / sum(SVHN_LENGTH_COUNTS)
_CUMULATIVE = np.cumsum(LENGTH_P)
HEIGHT_RANGE = (16.0, 48.0)  # digit height drawn before a long number is shrunk to fit the canvas
SIZE_JITTER, ASPECT_JITTER = 0.15, 0.1  # per digit: height x U(1 -/+ s), width/height x U(1 -/+ a)
GAP_RANGE = (-0.05, 0.25)  # space between neighbours, in digit heights (slight overlaps happen)
RISE = 0.1  # per-digit vertical offset, +/- this many digit heights
MARGIN = 1  # pixels kept free at the canvas edges

# IDX (LeCun's format): 0, 0, a type code, the number of dimensions, then big-endian uint32 sizes.
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# The four files, as published (train-images-idx3-ubyte.gz) or as some mirrors name them (.idx3-ubyte).
_FILES = {("train", "images"): 3, ("train", "labels"): 1, ("test", "images"): 3, ("test", "labels"): 1}
_PREFIX = {"train": "train", "test": "t10k"}


# --------------------------------------------------------------------------------------- reading


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array in an IDX file (gzip-compressed or not), in native byte order.

    Raises DataError naming the file for a missing file, damaged gzip data, a wrong magic number,
    a truncated header or data, or bytes left over after the array its header describes.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such IDX file")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # the gzip magic
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(path, f"damaged or truncated gzip data ({exc})") from None
    if len(raw) < 4:
        raise DataError(path, f"too short for an IDX file ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if raw[:2] != b"\0\0" or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise DataError(path, f"not an IDX file: magic number 0x{magic:08x} (MNIST images have "
                              "0x00000803, labels 0x00000801)")
    ndim, start = raw[3], 4 + 4 * raw[3]
    if len(raw) < start:
        raise DataError(path, f"truncated: the header needs {start} bytes, the file has {len(raw)}")
    dims = struct.unpack(f">{ndim}I", raw[4:start])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    need, have = math.prod(dims) * dtype.itemsize, len(raw) - start
    if have != need:
        problem = "truncated" if have < need else "has extra bytes"
        raise DataError(path, f"{problem}: its header describes a {'x'.join(map(str, dims))} array "
                              f"of {dtype.name} ({need} bytes of data), the file holds {have}")
    return np.frombuffer(raw, dtype, offset=start).reshape(dims).astype(dtype.newbyteorder("="))


def _idx_file(folder: Path, split: str, kind: str) -> Path | None:
    ndim = _FILES[split, kind]
    for sep in ("-", "."):
        for ext in (".gz", ""):
            path = folder / f"{_PREFIX[split]}-{kind}{sep}idx{ndim}-ubyte{ext}"
            if path.is_file():
                return path
    return None


def has_idx_files(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds all four MNIST IDX files (gzip-compressed or not)."""
    return all(_idx_file(Path(folder), s, k) for s, k in _FILES)


def read_mnist_folder(folder: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": (images, labels), "test": ...} from the four IDX files in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "no such folder (expected the four MNIST IDX files in it)")
    out = {}
    for split in ("train", "test"):
        paths = {kind: _idx_file(folder, split, kind) for kind in ("images", "labels")}
        missing = [f"{_PREFIX[split]}-{k}-idx{_FILES[split, k]}-ubyte[.gz]"
                   for k, p in paths.items() if p is None]
        if missing:
            raise DataError(folder, f"missing MNIST file(s) {', '.join(missing)}")
        images, labels = read_idx(paths["images"]), read_idx(paths["labels"])
        out[split] = _checked(images, labels, paths["images"], paths["labels"])
    return out


def _checked(images: np.ndarray, labels: np.ndarray, images_at, labels_at) -> tuple[np.ndarray, np.ndarray]:
    """The pair, after checking it is a pool of digits: (N, H, W) uint8 images, N labels in 0..9."""
    if images.ndim != 3 or images.dtype != np.uint8 or min(images.shape[1:], default=0) < 8:
        raise DataError(images_at, f"holds a {images.dtype} array of shape {images.shape}, "
                                   "expected (N, 28, 28) uint8 digit images")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(labels_at, f"holds a {labels.dtype} array of shape {labels.shape}, "
                                   "expected (N,) integer labels")
    if len(labels) != len(images):
        raise DataError(labels_at, f"holds {len(labels)} labels but {images_at} holds {len(images)} images")
    if len(labels) == 0 or labels.min() < 0 or labels.max() > 9:
        raise DataError(labels_at, "labels must be digits 0..9 (and there must be some)")
    return images, labels.astype(np.int64)


def load_mnist(source: str | os.PathLike | None = None,
               root: str | os.PathLike | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MNIST as {"train": (images, labels), "test": ...}: from ``source`` (a folder of the four IDX
    files), else ``<root>/mnist/`` when that folder exists, else Keras' download (cached)."""
    if source is not None:
        if not isinstance(source, (str, os.PathLike)):
            raise DataError(str(source), "the MNIST source must be a folder path")
        return read_mnist_folder(Path(source).expanduser())
    if root is not None and (Path(root) / "mnist").is_dir():
        return read_mnist_folder(Path(root) / "mnist")
    return _keras_mnist(Path(root or ".") / "mnist")


def _keras_mnist(suggested: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    try:  # downloads once, then reads the cached npz
        (x_train, y_train), (x_test, y_test) = load_keras().datasets.mnist.load_data()
    except Exception as exc:  # network or cache failures come as many types; the user needs a way out
        raise DataError(suggested, f"no MNIST files here and Keras could not fetch MNIST "
                                   f"({type(exc).__name__}: {exc}); put the four IDX files in this "
                                   "folder or set the dataset option 'source'") from None
    where = "keras.datasets.mnist"
    return {"train": _checked(x_train, y_train, where, where), "test": _checked(x_test, y_test, where, where)}


def pool_fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of a pool's labels and pixels: which digits a composite split was built from."""
    digest = hashlib.sha256(np.ascontiguousarray(labels, np.int64).tobytes())
    digest.update(np.ascontiguousarray(images).tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------- rendering


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), GENERATOR_VERSION, stream])


def choose_digits(seed: int, index: int, pool_size: int) -> np.ndarray:
    """Indices into the pool of the digits of composite ``index``: 1-5 of them, lengths as in SVHN."""
    rng = _rng(seed, index, 0)
    length = min(1 + int(np.searchsorted(_CUMULATIVE, rng.random(), side="right")), len(LENGTH_P))
    return rng.integers(0, pool_size, size=length)


def _tight(a: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of the pixels >= INK, or None when there are none."""
    rows, cols = np.flatnonzero((a >= INK).any(1)), np.flatnonzero((a >= INK).any(0))
    if len(rows) == 0:
        return None
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def _ink_crop(a: np.ndarray) -> np.ndarray:
    box = _tight(a)
    return a if box is None else a[box[0]:box[1], box[2]:box[3]]  # a blank digit stays whole


def compose(digits: list[np.ndarray], seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(CANVAS x CANVAS uint8 canvas, (k, 4) float64 boxes: left, top, width, height) of ``digits``
    (grey images, ink bright) placed left to right with random size, spacing and offset."""
    rng = _rng(seed, index, 1)
    crops = [_ink_crop(np.asarray(d, np.uint8)) for d in digits]
    k, height = len(crops), rng.uniform(*HEIGHT_RANGE)
    h = height * rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER, k)
    aspect = np.array([c.shape[1] / c.shape[0] for c in crops])
    w = h * aspect * rng.uniform(1 - ASPECT_JITTER, 1 + ASPECT_JITTER, k)
    gaps = height * rng.uniform(*GAP_RANGE, max(k - 1, 0))
    rise = height * rng.uniform(-RISE, RISE, k)
    x = np.concatenate([[0.0], np.cumsum(w[:-1] + gaps)])
    span_x, top, bottom = x[-1] + w[-1], rise.min(), (rise + h).max()
    room = CANVAS - 2 * MARGIN
    fit = min(1.0, room / span_x, room / (bottom - top))  # a long number is shrunk to fit
    x0 = MARGIN + rng.uniform(0, max(room - fit * span_x, 0.0))  # max: rounding may leave -1e-15
    y0 = MARGIN + rng.uniform(0, max(room - fit * (bottom - top), 0.0)) - fit * top
    canvas = np.zeros((CANVAS, CANVAS), np.uint8)
    boxes = np.zeros((k, 4), np.float64)
    for i, crop in enumerate(crops):
        left, up = int(round(x0 + fit * x[i])), int(round(y0 + fit * rise[i]))
        size = (max(1, int(round(fit * w[i]))), max(1, int(round(fit * h[i]))))
        size = (min(size[0], CANVAS - left), min(size[1], CANVAS - up))  # rounding may overshoot by 1
        patch = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.BILINEAR))
        t, b, l, r = _tight(patch) or (0, patch.shape[0], 0, patch.shape[1])
        patch = patch[t:b, l:r]  # the faint rim below INK goes: the box is exactly the ink
        region = canvas[up + t:up + b, left + l:left + r]
        np.maximum(region, patch, out=region)  # neighbours that touch keep both strokes
        boxes[i] = left + l, up + t, r - l, b - t
    return canvas, boxes


def render_composite(images: np.ndarray, labels: np.ndarray, seed: int, index: int
                     ) -> tuple[Image.Image, list[int], np.ndarray, np.ndarray]:
    """Composite ``index`` of ``seed`` from the pool (images, labels): a grey CANVAS x CANVAS image,
    its digits, their boxes (k, 4) (left, top, width, height) and the pool indices used.

    A pure function of its arguments: the same pool, seed and index always give the same bytes.
    """
    for name, v in (("seed", seed), ("index", index)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    sources = choose_digits(seed, index, len(images))
    canvas, boxes = compose([images[j] for j in sources], seed, index)
    return Image.fromarray(canvas), [int(labels[j]) for j in sources], boxes, sources


# ----------------------------------------------------------------------------------------- split


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _manifest(count: int, seed: int, pool: str) -> dict:
    return {"generator": "harness.mnist", "version": GENERATOR_VERSION, "count": count, "seed": seed,
            "pool": pool, "canvas": CANVAS,
            "images": f"1.png .. {count}.png (file i+1.png is render_composite(pool, seed, i))",
            "annotations": "digitStruct.mat"}


def _render_chunk(task: tuple[str, int, int, list[np.ndarray]]) -> list[list[list[float]]]:
    """Worker: compose and save the composites of one chunk (their digits travel with the task)."""
    folder, seed, start, digits = task
    out = []
    for offset, pixels in enumerate(digits):
        canvas, boxes = compose(list(pixels), seed, start + offset)
        Image.fromarray(canvas).save(os.path.join(folder, f"{start + offset + 1}.png"), compress_level=1)
        out.append(boxes.tolist())
    return out


def _problem(folder: Path, expected: dict) -> str | None:
    """None when ``folder`` holds the complete split ``expected`` describes, else what is wrong."""
    try:
        found = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return (f"holds files but no {MANIFEST}: not an MNIST-composite split made here; "
                "choose another folder or remove this one")
    except (OSError, ValueError) as exc:
        return f"{MANIFEST} is unreadable ({exc}); choose another folder or remove this one"
    keys = ("generator", "version", "count", "seed", "pool", "canvas")
    if not isinstance(found, dict) or any(found.get(k) != expected[k] for k in keys):
        differ = [k for k in keys if not isinstance(found, dict) or found.get(k) != expected[k]]
        return (f"holds a different split (its {MANIFEST} differs in {', '.join(differ)}); "
                "choose another folder for these parameters")
    names = set(os.listdir(folder))
    missing = [n for n in ["digitStruct.mat"] + [f"{i}.png" for i in range(1, expected["count"] + 1)]
               if n not in names]
    if missing:
        return (f"is incomplete: {len(missing)} files missing ({', '.join(missing[:3])}"
                f"{', ...' if len(missing) > 3 else ''}); remove it to generate it again")
    return None


def generate_split(out_dir, images: np.ndarray, labels: np.ndarray, count: int, *, seed: int,
                   workers: int | None = None, progress: bool = True) -> Path:
    """Write ``count`` composites of the pool (images, labels) and their digitStruct.mat to ``out_dir``.

    Layout is SVHN Format 1's: ``1.png .. {count}.png`` (file ``i+1.png`` is
    ``render_composite(images, labels, seed, i)``), ``digitStruct.mat`` and ``manifest.json``. The
    split is built in a temporary sibling folder and renamed into place when complete. A folder
    already holding this complete split is returned untouched; anything else there (other
    parameters or digits, an incomplete or foreign folder) is a DataError and is left as it was.
    The files do not depend on ``workers`` (default: every core).
    """
    count, seed = _check_int("count", count, 1), _check_int("seed", seed, 0)
    workers = _check_int("workers", workers, 1) if workers is not None else (os.cpu_count() or 1)
    images, labels = _checked(np.asarray(images), np.asarray(labels), "images", "labels")
    out = Path(os.path.abspath(os.fspath(out_dir)))
    expected = _manifest(count, seed, pool_fingerprint(images, labels))
    if out.exists():
        if not out.is_dir():
            raise DataError(out, "exists and is not a folder; choose another path for the split")
        if any(out.iterdir()):
            problem = _problem(out, expected)
            if problem:
                raise DataError(out, problem)
            return out
    with atomic.new_folder(out, MANIFEST, expected, lambda folder: _problem(folder, expected)) as tmp:
        bar = Progress(count, f"mnist_composite {out.name}") if progress else None
        _write_split(tmp, images, labels, count, seed, workers, bar)
    return out


def _write_split(folder: Path, images, labels, count: int, seed: int, workers: int,
                 bar: Progress | None) -> None:
    chosen = [choose_digits(seed, i, len(images)) for i in range(count)]  # cheap: the parent draws them
    chunk = max(16, min(500, count // (workers * 4) or 1))
    tasks = [(str(folder), seed, start, [images[c] for c in chosen[start:start + chunk]])
             for start in range(0, count, chunk)]

    def annotations(results):
        for (_, _, start, _), boxes in zip(tasks, results):
            for offset, b in enumerate(boxes):
                sources = chosen[start + offset]
                yield digitstruct.Annotation(f"{start + offset + 1}.png", labels[sources].astype(np.int64),
                                             np.asarray(b, np.float64).reshape(-1, 4))
            if bar:
                bar.update(len(boxes))

    with bar or contextlib.nullcontext():
        if workers == 1 or len(tasks) == 1:
            digitstruct.write_digitstruct(folder / "digitStruct.mat", annotations(map(_render_chunk, tasks)))
            return
        # Forked on Linux (no re-import of the caller's main module, which may load a Keras backend);
        # the workers only use numpy and PIL, so a parent's backend threads are never touched.
        context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        with context.Pool(min(workers, len(tasks))) as pool:  # leaving the block terminates it
            # digitStruct.mat is written as chunks arrive, while the workers go on rendering
            digitstruct.write_digitstruct(folder / "digitStruct.mat", annotations(pool.imap(_render_chunk, tasks)))


def composite_splits(root: str | os.PathLike, *, source=None, train: int, test: int, seed: int,
                     workers: int | None = None) -> dict[str, Path]:
    """The dataset factory's work: MNIST loaded (see load_mnist), then a train split built from
    MNIST train digits and a test split from MNIST test digits, under ``<root>/mnist_composite/``.

    Folder names carry the digits' fingerprint, so another copy of the digits (or another
    IDX dataset given as ``source``) never reuses composites built from different ones.
    """
    mnist = load_mnist(source, root)
    base = Path(root) / "mnist_composite" / f"seed{seed}"
    out = {}
    # different seeds for the two splits too, so their layouts never repeat each other
    for split, count, split_seed in (("train", train, seed), ("test", test, seed + 1_000_003)):
        images, labels = mnist[split]
        name = f"{split}-{count}-{pool_fingerprint(images, labels)[:10]}"
        out[split] = generate_split(base / name, images, labels, count, seed=split_seed, workers=workers)
    return out
