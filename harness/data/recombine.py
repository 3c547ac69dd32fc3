"""Recombined numbers: more training images from a small real set, by swapping digits between images.

A recombined image is a training image (the base) whose digits are replaced, each with probability
REPLACE (at least one per image), by digit glyphs cut from other training images: the box of a
donor digit, resized to the base digit's box, its colours matched to the patch it covers (light ink
on dark turned dark on light, or back, when the two disagree; then each channel's mean and spread
set to the covered patch's) and blended in over a feathered edge. The base keeps its layout,
background and number length; the label becomes the new digits. Bases are drawn alike, so number
lengths come out as in the training images, or with ``length_balance`` flattened towards each length
equally often (rare lengths, such as SVHN's four-digit numbers, then get more recombined examples).
The glyphs are real, so the model sees real strokes, blur and lighting in many more digit
combinations and positions than the few real images hold; the seams are not in any test image, so a
model cannot lean on them.

Only the records given are used, bases and donors alike: datasets.prepare passes the training
images after the validation split is carved out, so no validation or test glyph reaches training.

Files: ``1.png .. {count}.png``, each the base image cut to its grown digit box (``box_expand``
around the union of its boxes, clamped to the image: preparation's crop of it is the crop of the
whole image, black padding included), ``labels.csv`` with the boxes in those images' pixels, and
``manifest.txt`` (JSON) last (count, seed, sources: a hash of the base records). The folder is built
beside its destination and renamed into place, so it is either complete or absent.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from harness import atomic
from harness.data.prepare import crop_box, to_rgb
from harness.errors import DataError
from harness.progress import Progress

REPLACE = 0.8  # chance that each digit of a base image is swapped for a donor's
MIN_GLYPH = 4  # donor and base boxes smaller than this (pixels, either side) are not used
MAX_DONORS = 5000  # images whose glyphs are cut (a seeded sample when there are more)
FEATHER = 2  # pixels over which a pasted glyph fades into the base image
VERSION = 1
MANIFEST = "manifest.txt"  # JSON; not .json: a single .json in a folder is read as its annotations


def sources_digest(records: pd.DataFrame) -> str:
    """A hash of what recombination reads from ``records``: names, paths, digits and boxes."""
    digest = hashlib.sha256()
    for row in records.itertuples():
        digest.update(f"{row.name}\0{row.path}\0{row.digits}\0".encode())
        digest.update(np.asarray(row.boxes, np.float64).tobytes())
    return digest.hexdigest()


def generate(records: pd.DataFrame, out_dir, count: int, *, seed: int, box_expand: float,
             length_balance: float = 0.0) -> Path:
    """Write ``count`` recombined images made from ``records`` (harness.data.records table) to ``out_dir``.

    ``length_balance`` (0 to 1): a base image of number length L is drawn with weight count(L) ** -it,
    count(L) the usable images of that length: 0 draws every image alike, 1 each length equally often.

    An ``out_dir`` that already holds this very folder (same count, seed, box_expand and sources) is
    returned untouched; one that holds anything else is a DataError, and nothing there is changed.
    """
    out = Path(os.path.abspath(os.fspath(out_dir)))
    expected = {"generator": "recombine", "version": VERSION, "count": int(count), "seed": int(seed),
                "box_expand": float(box_expand), "sources": sources_digest(records)}
    if length_balance:  # only when set: existing folders stay valid
        expected["length_balance"] = float(length_balance)
    if out.is_dir() and any(out.iterdir()):
        problem = _complete(out, expected)
        if problem:
            raise DataError(out, problem)
        return out
    usable = records[[_has_glyph(r) for r in records.itertuples()]].reset_index(drop=True)
    if usable.empty:
        raise DataError(out, "no training image has a digit box of at least "
                             f"{MIN_GLYPH}x{MIN_GLYPH} pixels inside it to recombine")
    weights = _base_weights(usable, length_balance)
    rng = np.random.default_rng([seed, 0x7EC0])
    with atomic.new_folder(out, MANIFEST, expected, lambda folder: _complete(folder, expected)) as tmp:
        glyphs = _glyphs(usable, rng)
        if not glyphs:
            raise DataError(out, "none of the training images could be read to recombine")
        rows = []
        with Progress(count, "recombine train") as bar:
            for i in range(1, count + 1):
                made = None
                while made is None:  # an unreadable base is drawn again (glyphs were read, so some are not)
                    base = rng.integers(len(usable)) if weights is None else rng.choice(len(usable), p=weights)
                    made = _recombined(usable.iloc[int(base)], glyphs, rng, box_expand)
                image, digits, boxes = made
                image.save(tmp / f"{i}.png", optimize=False)
                rows += [(f"{i}.png", d if d else 10, *box) for d, box in zip(digits, boxes)]
                bar.update(1)
        table = pd.DataFrame(rows, columns=["filename", "label", "left", "top", "width", "height"])
        table.to_csv(tmp / "labels.csv", index=False)
    return out


def _base_weights(records: pd.DataFrame, length_balance: float) -> np.ndarray | None:
    """Each record's chance of being drawn as a base (None: all alike, as with ``length_balance`` 0)."""
    if not length_balance:
        return None
    _, inverse, counts = np.unique(records["length"].to_numpy(), return_inverse=True, return_counts=True)
    weights = counts[inverse].astype(np.float64) ** -float(length_balance)
    return weights / weights.sum()


def _complete(folder: Path, expected: dict) -> str | None:
    try:
        found = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return f"holds no readable {MANIFEST}: not a recombined split; remove it or choose another folder"
    if found != expected:
        return "holds a recombined split of other settings or other images; remove it to make it again"
    return None


def _inside(box, width: int, height: int) -> tuple[int, int, int, int] | None:
    """A digit box rounded to whole pixels and clamped to the image, or None when too small."""
    left, top, w, h = (float(v) for v in box)
    x0, y0 = max(0, round(left)), max(0, round(top))
    x1, y1 = min(width, round(left + w)), min(height, round(top + h))
    return (x0, y0, x1, y1) if x1 - x0 >= MIN_GLYPH and y1 - y0 >= MIN_GLYPH else None


def _has_glyph(row) -> bool:
    return any(_inside(b, row.width, row.height) for b in np.asarray(row.boxes).reshape(-1, 4))


def _open(path: str) -> Image.Image | None:
    """The image as RGB, or None when it cannot be read: preparation, which follows, names it (or
    leaves it out with data.bad_files: skip)."""
    try:
        with Image.open(path) as image:
            return to_rgb(image).copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def _glyphs(records: pd.DataFrame, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
    """(digit, RGB uint8 patch) of every usable digit box of up to MAX_DONORS images."""
    chosen = np.sort(rng.permutation(len(records))[:MAX_DONORS])
    glyphs = []
    for row in records.iloc[chosen].itertuples():
        image = _open(row.path)
        if image is None:
            continue
        image = np.asarray(image)
        for digit, box in zip(row.digits, np.asarray(row.boxes).reshape(-1, 4)):
            inside = _inside(box, image.shape[1], image.shape[0])
            if inside:
                x0, y0, x1, y1 = inside
                glyphs.append((int(digit), image[y0:y1, x0:x1].copy()))
    return glyphs


def _polarity(patch: np.ndarray) -> float:
    """Centre minus border luminance: below 0 for dark ink on a light ground."""
    lum = patch.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    h, w = lum.shape
    centre = lum[h // 4: h - h // 4 or None, w // 4: w - w // 4 or None]
    ring = np.concatenate([lum[0], lum[-1], lum[:, 0], lum[:, -1]])
    return float(centre.mean() - ring.mean())


def _matched(donor: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """The donor patch (resized to the covered one) with its polarity and colour statistics."""
    h, w = covered.shape[:2]
    patch = np.asarray(Image.fromarray(donor).resize((w, h), Image.Resampling.BILINEAR), np.float32)
    if _polarity(patch) * _polarity(covered) < 0:
        patch = 255.0 - patch
    target = covered.astype(np.float32)
    mean, std = patch.mean(axis=(0, 1)), patch.std(axis=(0, 1))
    scale = target.std(axis=(0, 1)) / np.maximum(std, 1.0)
    return (patch - mean) * scale + target.mean(axis=(0, 1))


def _feather(h: int, w: int) -> np.ndarray:
    """(h, w, 1) weights: 1 inside, falling to 1/(FEATHER+1) at the patch's edge."""
    def ramp(n):
        i = np.arange(n, dtype=np.float32)
        return np.minimum(1.0, (np.minimum(i, n - 1 - i) + 1) / (FEATHER + 1))

    return np.minimum.outer(ramp(h), ramp(w))[..., None]


def _recombined(base, glyphs, rng: np.random.Generator, box_expand: float):
    """(image cut to the grown digit box, digits, boxes in its pixels) for one base record; None when
    its image cannot be read."""
    opened = _open(base.path)
    if opened is None:
        return None
    image = np.asarray(opened, np.float32).copy()
    height, width = image.shape[:2]
    boxes = np.asarray(base.boxes, np.float64).reshape(-1, 4)
    digits = [int(d) for d in base.digits]
    places = [i for i, b in enumerate(boxes) if _inside(b, width, height)]
    swap = [i for i in places if rng.random() < REPLACE] or [places[int(rng.integers(len(places)))]]
    for i in swap:
        digit, donor = glyphs[int(rng.integers(len(glyphs)))]
        x0, y0, x1, y1 = _inside(boxes[i], width, height)
        covered = image[y0:y1, x0:x1]
        alpha = _feather(y1 - y0, x1 - x0)
        image[y0:y1, x0:x1] = alpha * _matched(donor, covered) + (1 - alpha) * covered
        digits[i] = digit
    left, top, right, bottom = crop_box(boxes, width, height, box_expand)
    left, top = max(left, 0), max(top, 0)
    right, bottom = min(right, width), min(bottom, height)
    cut = Image.fromarray(np.clip(image[top:bottom, left:right] + 0.5, 0, 255).astype(np.uint8))
    shifted = [(round(float(b[0]) - left, 2), round(float(b[1]) - top, 2), round(float(b[2]), 2),
                round(float(b[3]), 2)) for b in boxes]
    return cut, digits, shifted
