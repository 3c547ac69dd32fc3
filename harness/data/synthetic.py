"""Synthetic street numbers: the embedded default dataset, rendered offline in SVHN Format 1's layout.

Each image imitates an SVHN *full* image: a house number (1-5 digits, lengths distributed like SVHN's
train split) on a wall or a plate, with the clutter, blur, noise, colour and size variation of
Street View crops, and one tight box per digit (left, top, width, height in pixels of the final
image, computed after every geometric transform). Glyphs come only from fonts that ship inside
installed packages (matplotlib's DejaVu / STIX / Computer Modern TrueType files and Pillow's
built-in font), each checked to render ten distinct digits, so nothing is downloaded.

``render_example(seed, index)`` is a pure function of its arguments: it seeds its own generator
from (seed, index), so a split's bytes do not depend on worker count or order.
``generate_split`` writes ``1.png .. N.png`` (file ``i+1.png`` is example ``index=i``) and
``digitStruct.mat``, then a ``manifest.json``; the folder appears (atomic rename) only when complete.

Numbers below marked "SVHN" are from the official train split's annotations (33,402 images).
"""

from __future__ import annotations

import colorsys
import importlib.util
import io
import json
import math
import multiprocessing
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from harness import atomic
from harness.errors import DataError
from harness.progress import Progress

GENERATOR_VERSION = 3  # bump whenever the pixels or boxes for a given (seed, index) change
MANIFEST = "manifest.json"

# SVHN: number lengths 1..5 (train counts 5137, 18130, 8691, 1434, 9). Five-digit numbers are raised
# from 9 to 33 (~0.1%) so the fifth digit head sees a few examples in a 20k split.
LENGTH_WEIGHTS = np.array([5137, 18130, 8691, 1434, 33], dtype=np.float64)
_SVHN_LENGTHS = tuple(float(w) for w in LENGTH_WEIGHTS)


def length_weights(balance: float = 0.0) -> tuple[float, ...]:
    """Relative weights of number lengths 1..5: LENGTH_WEIGHTS ** (1 - balance).

    ``balance`` 0 draws lengths as SVHN does (4.3% four-digit numbers), 1 each length equally often;
    in between flattens the mix (0.5: 11% four-digit numbers).
    """
    if isinstance(balance, bool) or not isinstance(balance, (int, float)) or not 0.0 <= balance <= 1.0:
        raise ValueError(f"length_balance must be a number in [0, 1], got {balance!r}")
    return tuple(float(w) for w in LENGTH_WEIGHTS ** (1.0 - float(balance)))
# SVHN percentiles 5/25/50/75/95 of image width, image height, and number height / image height.
_Z = np.array([-1.6449, -0.6745, 0.0, 0.6745, 1.6449])
WIDTH_PCT = (48.0, 72.0, 104.0, 158.0, 300.0)
HEIGHT_PCT = (20.0, 33.0, 47.0, 71.0, 130.0)
FILL_PCT = (0.405, 0.604, 0.709, 0.794, 0.90)
MIN_DIGIT_PX = 12  # smallest digit height drawn: still legible after the 64x64 crop (SVHN's 5th pct: 14)

# Fonts shipped in matplotlib's mpl-data/fonts/ttf, with a relative frequency (sans and bold are what
# house-number plates mostly use). Symbol-only files (cmex/cmsy/STIXSiz*/STIXNonUni*), cmmi10 (old-style
# figures), the empty *Display subsets and LastResort (boxes) are left out; font_renders_digits checks.
FONT_FILES = {
    "DejaVuSans.ttf": 3, "DejaVuSans-Bold.ttf": 5, "DejaVuSans-Oblique.ttf": 1,
    "DejaVuSans-BoldOblique.ttf": 1, "DejaVuSansMono.ttf": 1, "DejaVuSansMono-Bold.ttf": 2,
    "DejaVuSansMono-Oblique.ttf": 0.5, "DejaVuSansMono-BoldOblique.ttf": 0.5, "DejaVuSerif.ttf": 2,
    "DejaVuSerif-Bold.ttf": 2, "DejaVuSerif-Italic.ttf": 0.5, "DejaVuSerif-BoldItalic.ttf": 0.5,
    "STIXGeneral.ttf": 1.5, "STIXGeneralBol.ttf": 2, "STIXGeneralItalic.ttf": 0.5,
    "STIXGeneralBolIta.ttf": 0.5, "cmr10.ttf": 1, "cmb10.ttf": 1.5, "cmss10.ttf": 2, "cmtt10.ttf": 1,
    "cmti10.ttf": 0.5,
}
PILLOW_DEFAULT = "pillow:load_default"  # Pillow's built-in scalable font (Aileron), Pillow >= 10.1
PILLOW_DEFAULT_WEIGHT = 3
# Glyphs are rasterised at a few sizes (a factor sqrt(2) apart, so a small cache serves every image)
# and warped down to their final size; masks are drawn `ss` times larger than the image and averaged.
_RENDER_SIZES = (16, 23, 32, 45, 64, 90, 128, 181, 256)
_LETTERS = "ACEFHKMNPRTUVWXY"  # unlabelled suffix letters, none easily read as a digit
# First digit: house numbers rarely start with 0 and small leading digits are common (Benford's law,
# flattened halfway to uniform); the other positions are uniform.
_BENFORD = np.log10(1 + 1 / np.arange(1, 10))
_FIRST_DIGIT_WEIGHTS = tuple(np.r_[0.02, 0.98 * (0.5 * _BENFORD / _BENFORD.sum() + 0.5 / 9)])


# ------------------------------------------------------------------------------------------- fonts


def _mpl_font_dir() -> Path | None:
    spec = importlib.util.find_spec("matplotlib")  # no import: only the data folder is needed
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "mpl-data" / "fonts" / "ttf"


def _load_font(name: str, size: int) -> ImageFont.FreeTypeFont:
    if name == PILLOW_DEFAULT:
        font = ImageFont.load_default(size)
        if not isinstance(font, ImageFont.FreeTypeFont):
            raise OSError("Pillow's default font is a bitmap font here (needs FreeType)")
        return font
    return ImageFont.truetype(str(_mpl_font_dir() / name), size)


def _ink(font: ImageFont.FreeTypeFont, text: str) -> np.ndarray:
    l, t, r, b = font.getbbox(text, anchor="ls")
    image = Image.new("L", (max(r - l, 1) + 2, max(b - t, 1) + 2), 0)
    ImageDraw.Draw(image).text((1 - l, 1 - t), text, font=font, fill=255, anchor="ls")
    return np.asarray(image)


def _crop(a: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(a > 127)
    return a[ys.min():ys.max() + 1, xs.min():xs.max() + 1] if len(ys) else a[:0, :0]


def font_renders_digits(font: ImageFont.FreeTypeFont) -> bool:
    """True when the font draws 0-9 as ten distinct, non-empty glyphs unlike its missing-glyph box."""
    shapes = [_crop(_ink(font, ch)) for ch in "0123456789"]
    missing = _crop(_ink(font, "\ue000"))  # private-use code point: the font's .notdef glyph
    keys = {(s.shape, s.tobytes()) for s in shapes}
    return (all(s.size and (s > 127).sum() >= 10 for s in shapes) and len(keys) == 10
            and (missing.shape, missing.tobytes()) not in keys)


@lru_cache(maxsize=1)
def available_fonts() -> tuple[str, ...]:
    """Names of the fonts the renderer draws from: those present here that pass font_renders_digits."""
    names = [n for n in FONT_FILES if _mpl_font_dir() and (_mpl_font_dir() / n).is_file()]
    names.append(PILLOW_DEFAULT)
    good = []
    for name in names:
        try:
            if font_renders_digits(_load_font(name, 48)):
                good.append(name)
        except (OSError, TypeError, AttributeError):  # missing file, old Pillow without load_default(size)
            pass
    if not good:
        raise DataError(str(_mpl_font_dir()), "no usable font found (matplotlib's TrueType fonts or "
                        "Pillow's built-in font); cannot render synthetic street numbers")
    return tuple(good)


def _font_weights(fonts: tuple[str, ...]) -> np.ndarray:
    w = np.array([FONT_FILES.get(n, PILLOW_DEFAULT_WEIGHT) for n in fonts], dtype=np.float64)
    return w / w.sum()


@lru_cache(maxsize=256)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return _load_font(name, size)


@lru_cache(maxsize=8192)
def _glyph(name: str, size: int, ch: str, stroke: int, footless: bool = False):
    """Glyph mask cropped to its ink, its ink left/top relative to (pen origin, baseline), advance.
    ``footless``: a "1" without the foot serif that most of the fonts give it (many house numbers'
    1s are a bare stem and flag, and SVHN's are narrow: box width/height median 0.37)."""
    font = _font(name, size)
    l, t, r, b = font.getbbox(ch, anchor="ls", stroke_width=stroke)
    pad = 2
    image = Image.new("L", (r - l + 2 * pad, b - t + 2 * pad), 0)
    ImageDraw.Draw(image).text((pad - l, pad - t), ch, font=font, fill=255, anchor="ls",
                               stroke_width=stroke, stroke_fill=255)
    a = np.asarray(image)
    ys, xs = np.nonzero(a)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    a = a[y0:y1, x0:x1]
    if footless and ch == "1":
        a, shift = _without_foot(a)
        x0 += shift
    mask = Image.fromarray(np.ascontiguousarray(a))
    return mask, x0 + l - pad, y0 + t - pad, font.getlength(ch)


def _without_foot(a: np.ndarray) -> tuple[np.ndarray, int]:
    """A "1"'s ink mask without its foot (the bar its stem stands on), cropped again; and how many
    columns the crop took off at the left. Unchanged when the lowest rows are no wider than the stem."""
    h = a.shape[0]
    stem = np.flatnonzero(a[int(0.7 * h)] > 127)  # the stem, above any foot
    base = np.flatnonzero((a[h - max(1, h // 12):] > 127).any(0))
    if not stem.size or not base.size or base[-1] - base[0] < 1.5 * (stem[-1] - stem[0] + 1):
        return a, 0
    margin = max(1, (stem[-1] - stem[0] + 1) // 8)
    a = a.copy()
    a[int(0.7 * h):, :max(stem[0] - margin, 0)] = 0
    a[int(0.7 * h):, stem[-1] + 1 + margin:] = 0
    cols = np.flatnonzero(a.max(0))
    return a[:, cols[0]:cols[-1] + 1], int(cols[0])


@lru_cache(maxsize=512)
def _digit_height(name: str, size: int) -> float:
    """Ink height of the figures (tallest top to lowest bottom over 0-9) at this size."""
    tops, bottoms = [], []
    for ch in "0123456789":
        mask, _, top, _ = _glyph(name, size, ch, 0)
        tops.append(top)
        bottoms.append(top + mask.height)
    return float(max(bottoms) - min(tops))


# ------------------------------------------------------------------------------------------ colour


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1)), np.float32)


def _pick(rng: np.random.Generator, options, weights=None):
    """One of ``options``, uniformly or by relative ``weights`` (faster than Generator.choice here)."""
    if weights is None:
        return options[int(rng.integers(len(options)))]
    u = rng.random() * float(sum(weights))
    for option, w in zip(options, weights):
        u -= w
        if u < 0:
            return option
    return options[-1]


def _lum(c: np.ndarray) -> float:
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


def _wall_colour(rng: np.random.Generator, tone: str = "any") -> np.ndarray:
    if tone == "light":
        kind = _pick(rng, ("beige", "grey", "white", "pastel"))
    elif tone == "dark":
        kind = _pick(rng, ("brick", "wood", "dark", "grey"))
    else:
        kind = _pick(rng, ("beige", "grey", "white", "brick", "wood", "pastel", "dark"),
                     (0.26, 0.24, 0.12, 0.14, 0.08, 0.08, 0.08))
    if kind == "beige":
        return _hsv(rng.uniform(0.07, 0.15), rng.uniform(0.08, 0.35), rng.uniform(0.55, 0.95))
    if kind == "grey":
        v = rng.uniform(0.55, 0.9) if tone == "light" else rng.uniform(0.15, 0.4) if tone == "dark" \
            else rng.uniform(0.2, 0.9)
        return _hsv(rng.uniform(0, 1), rng.uniform(0, 0.08), v)
    if kind == "white":
        return _hsv(rng.uniform(0, 1), rng.uniform(0, 0.06), rng.uniform(0.8, 1.0))
    if kind == "brick":
        return _hsv(rng.uniform(-0.02, 0.06), rng.uniform(0.35, 0.7), rng.uniform(0.25, 0.55))
    if kind == "wood":
        return _hsv(rng.uniform(0.05, 0.1), rng.uniform(0.35, 0.7), rng.uniform(0.15, 0.45))
    if kind == "pastel":
        return _hsv(rng.uniform(0, 1), rng.uniform(0.06, 0.28), rng.uniform(0.6, 0.92))
    return _hsv(rng.uniform(0, 1), rng.uniform(0, 0.4), rng.uniform(0.05, 0.3))


def _dark_ink(rng: np.random.Generator) -> np.ndarray:
    kind = _pick(rng, ("black", "navy", "green", "red", "brown", "brass"), (0.45, 0.2, 0.08, 0.08, 0.09, 0.1))
    if kind == "black":
        return _hsv(rng.uniform(0, 1), rng.uniform(0, 0.2), rng.uniform(0.02, 0.25))
    if kind == "navy":
        return _hsv(rng.uniform(0.58, 0.68), rng.uniform(0.5, 0.9), rng.uniform(0.2, 0.45))
    if kind == "green":
        return _hsv(rng.uniform(0.3, 0.45), rng.uniform(0.4, 0.8), rng.uniform(0.15, 0.35))
    if kind == "red":
        return _hsv(rng.uniform(-0.02, 0.03), rng.uniform(0.6, 0.9), rng.uniform(0.3, 0.55))
    if kind == "brown":
        return _hsv(rng.uniform(0.04, 0.1), rng.uniform(0.4, 0.8), rng.uniform(0.15, 0.35))
    return _hsv(rng.uniform(0.1, 0.15), rng.uniform(0.4, 0.75), rng.uniform(0.35, 0.55))


def _light_ink(rng: np.random.Generator) -> np.ndarray:
    kind = _pick(rng, ("white", "gold", "silver", "cream"), (0.55, 0.2, 0.12, 0.13))
    if kind == "white":
        return _hsv(rng.uniform(0, 1), rng.uniform(0, 0.06), rng.uniform(0.85, 1.0))
    if kind == "gold":
        return _hsv(rng.uniform(0.1, 0.15), rng.uniform(0.35, 0.7), rng.uniform(0.7, 0.95))
    if kind == "silver":
        return _hsv(rng.uniform(0.5, 0.65), rng.uniform(0, 0.1), rng.uniform(0.65, 0.85))
    return _hsv(rng.uniform(0.1, 0.16), rng.uniform(0.1, 0.3), rng.uniform(0.8, 0.97))


def _scene_colours(rng: np.random.Generator):
    """(wall, plate or None, ink): a style seen on real façades, ink contrasting with what is behind."""
    style = _pick(rng, ("blue_plate", "light_plate", "dark_plate", "colour_plate", "dark_on_wall",
                        "light_on_wall", "random"), (0.24, 0.15, 0.09, 0.06, 0.24, 0.13, 0.09))
    wall, plate = _wall_colour(rng), None
    if style == "blue_plate":
        plate = _hsv(rng.uniform(0.55, 0.67), rng.uniform(0.45, 0.95), rng.uniform(0.25, 0.6))
        ink = _light_ink(rng)
    elif style == "light_plate":
        plate = _hsv(rng.uniform(0, 1), rng.uniform(0, 0.2), rng.uniform(0.75, 1.0))
        ink = _dark_ink(rng)
    elif style == "dark_plate":
        plate = _hsv(rng.uniform(0, 1), rng.uniform(0, 0.5), rng.uniform(0.03, 0.3))
        ink = _light_ink(rng)
    elif style == "colour_plate":
        plate = _hsv(rng.uniform(0, 1), rng.uniform(0.4, 0.9), rng.uniform(0.3, 0.75))
        ink = _light_ink(rng) if _lum(plate) < 0.45 else _dark_ink(rng)
    elif style == "dark_on_wall":
        wall, ink = _wall_colour(rng, "light"), _dark_ink(rng)
    elif style == "light_on_wall":
        wall, ink = _wall_colour(rng, "dark"), _light_ink(rng)
    else:
        wall = _hsv(rng.uniform(0, 1), rng.uniform(0, 0.6), rng.uniform(0, 1))
        ink = _hsv(rng.uniform(0, 1), rng.uniform(0, 0.7), rng.uniform(0, 1))
    behind = plate if plate is not None else wall
    need = rng.uniform(0.2, 0.5)
    for _ in range(20):  # keep the number readable: enough luminance contrast with what is behind it
        if abs(_lum(ink) - _lum(behind)) >= need:
            break
        ink = _light_ink(rng) if _lum(behind) < 0.5 else _dark_ink(rng)
        need = 0.2
    return wall, plate, ink


def _lowfreq(rng: np.random.Generator, h: int, w: int, amp: float, cells: tuple[int, int]) -> np.ndarray:
    grid = rng.standard_normal((cells[0], cells[1])).astype(np.float32)
    up = Image.fromarray(grid, "F").resize((w, h), Image.BICUBIC)
    return np.asarray(up) * amp


# ---------------------------------------------------------------------------------------- geometry


def _quantile_sample(rng: np.random.Generator, pct: tuple[float, ...], z: float) -> float:
    """SVHN-like value for a standard-normal draw z: log-linear through the 5/25/50/75/95 percentiles."""
    logs = np.log(pct)
    if z <= _Z[0]:
        slope = (logs[1] - logs[0]) / (_Z[1] - _Z[0])
        return float(np.exp(logs[0] + slope * (z - _Z[0])))
    if z >= _Z[-1]:
        slope = (logs[-1] - logs[-2]) / (_Z[-1] - _Z[-2])
        return float(np.exp(logs[-1] + slope * (z - _Z[-1])))
    return float(np.exp(np.interp(z, _Z, logs)))


def _homography(cx, cy, scale, angle, shear, persp, centre) -> np.ndarray:
    """Layout units (digit height 1) -> image pixels: about ``centre``, shear, rotate, perspective."""
    c, s = math.cos(angle), math.sin(angle)
    t0 = np.array([[1, 0, -centre[0]], [0, 1, -centre[1]], [0, 0, 1]], np.float64)
    a = np.array([[scale, scale * shear, 0], [0, scale, 0], [0, 0, 1]], np.float64)
    r = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], np.float64)
    p = np.array([[1, 0, 0], [0, 1, 0], [persp[0] / scale, persp[1] / scale, 1]], np.float64)
    t1 = np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1]], np.float64)
    return t1 @ p @ r @ a @ t0


def _apply(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Map (n, 2) points through the homography h."""
    w = pts @ h[2, :2] + h[2, 2]
    return (pts @ h[:2, :2].T + h[:2, 2]) / w[:, None]


class _Glyph:
    """One glyph placed in layout units: mask, matrix from mask pixels to layout, labelled or not."""

    __slots__ = ("mask", "local", "label", "outline")

    def __init__(self, mask, local, label, outline=None):
        self.mask, self.local, self.label, self.outline = mask, local, label, outline

    def corners(self) -> np.ndarray:
        w, h = self.mask.size
        return _apply(self.local, np.array([[0, 0], [w, 0], [0, h], [w, h]], np.float64))


def _place_text(rng, text, font, size, stroke, stretch, tracking, by_advance, x0=0.0, y_jitter=0.0,
                rot_jitter=0.0, outline=0, labels=None, footless=False):
    """Lay out ``text`` left to right from x0, baseline at y=0, figure height 1 (layout units);
    ``footless``: its 1s without a foot (_glyph)."""
    k = 1.0 / _digit_height(font, size)
    glyphs, x = [], x0
    for i, ch in enumerate(text):
        mask, left, top, advance = _glyph(font, size, ch, stroke, footless)
        ink_left = x + (left * k * stretch if by_advance else 0.0)
        dy = rng.normal(0, y_jitter) if y_jitter else 0.0
        local = np.array([[k * stretch, 0, ink_left], [0, k, top * k + dy], [0, 0, 1]], np.float64)
        if rot_jitter:
            a = rng.normal(0, rot_jitter)
            cxy = _apply(local, np.array([[mask.width / 2, mask.height / 2]]))[0]
            c, s = math.cos(a), math.sin(a)
            rot = np.array([[c, -s, cxy[0] - c * cxy[0] + s * cxy[1]],
                            [s, c, cxy[1] - s * cxy[0] - c * cxy[1]], [0, 0, 1]])
            local = rot @ local
        out = None
        if outline:  # the same glyph drawn fatter, centred on the thin one
            omask, oleft, otop, _ = _glyph(font, size, ch, stroke + outline, footless)
            olocal = local @ np.array([[1, 0, oleft - left], [0, 1, otop - top], [0, 0, 1]], np.float64)
            out = (omask, olocal)
        glyphs.append(_Glyph(mask, local, None if labels is None else labels[i], out))
        if by_advance:  # a stroke fattens the ink but not the advance: keep the figures apart
            x += (advance * tracking + 2 * stroke) * k * stretch
        else:
            x += mask.width * k * stretch + tracking
    return glyphs


def _warp(mask: Image.Image, h: np.ndarray, canvas: tuple[int, int]):
    """Warp a mask through homography h into the canvas: (x0, y0, uint8 patch) or None if outside."""
    w, hh = mask.size
    c = _apply(h, np.array([[0, 0], [w, 0], [0, hh], [w, hh]], np.float64))
    x0, y0 = max(int(math.floor(c[:, 0].min())) - 1, 0), max(int(math.floor(c[:, 1].min())) - 1, 0)
    x1 = min(int(math.ceil(c[:, 0].max())) + 1, canvas[0])
    y1 = min(int(math.ceil(c[:, 1].max())) + 1, canvas[1])
    if x1 <= x0 or y1 <= y0:
        return None
    inv = np.linalg.inv(h) @ np.array([[1, 0, x0], [0, 1, y0], [0, 0, 1]], np.float64)
    inv = inv / inv[2, 2]
    out = mask.transform((x1 - x0, y1 - y0), Image.PERSPECTIVE, tuple(inv.ravel()[:8]), Image.BILINEAR)
    return x0, y0, np.asarray(out)


def _rounded_rect(x0, y0, x1, y1, r, n=5) -> np.ndarray:
    r = min(r, (x1 - x0) / 2, (y1 - y0) / 2)
    if r <= 0:
        return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)
    pts = []
    corners = ((x1 - r, y0 + r, -90), (x1 - r, y1 - r, 0), (x0 + r, y1 - r, 90), (x0 + r, y0 + r, 180))
    for cx, cy, a0 in corners:
        for t in np.linspace(a0, a0 + 90, n):
            pts.append((cx + r * math.cos(math.radians(t)), cy + r * math.sin(math.radians(t))))
    return np.array(pts, np.float64)


def _poly_mask(pts: np.ndarray, size: tuple[int, int], ss: int) -> np.ndarray:
    """Anti-aliased polygon coverage at image resolution (drawn ss-times larger, then averaged)."""
    image = Image.new("L", (size[0] * ss, size[1] * ss), 0)
    ImageDraw.Draw(image).polygon([tuple(p) for p in pts * ss], fill=255)
    if ss > 1:
        image = image.reduce(ss)
    return np.asarray(image, dtype=np.float32) / 255.0


def _over(img: np.ndarray, alpha: np.ndarray, colour) -> None:
    """Paint ``colour`` (RGB or an image) over ``img`` with coverage ``alpha``, in place."""
    d = colour - img
    d *= alpha[..., None]
    img += d


# ------------------------------------------------------------------------------------------ render


def _digits(rng: np.random.Generator, lengths: tuple[float, ...] = _SVHN_LENGTHS) -> list[int]:
    length = _pick(rng, (1, 2, 3, 4, 5), lengths)
    first = _pick(rng, range(10), _FIRST_DIGIT_WEIGHTS)
    return [first] + [int(d) for d in rng.integers(0, 10, size=length - 1)]


class _Scene:
    """What one attempt has decided so far: sizes, pose, glyphs (see _attempt)."""

    __slots__ = ("W", "H", "digit_px", "ss", "glyphs", "lo", "hi", "layout_to_img", "num_box", "font",
                 "size", "stroke", "stretch", "angle", "outline")


def _attempt(rng: np.random.Generator, digits: list[int]):
    """One draw of everything but the digits; None when it does not fit or does not read well."""
    sc = _layout(rng, digits)
    wall, plate, ink = _scene_colours(rng)
    img = np.empty((sc.H, sc.W, 3), np.float32)
    img[:] = wall
    _background(rng, img, wall, sc.num_box, sc.digit_px, plate is not None)
    _distractors(rng, img, sc.num_box, sc.digit_px, sc.font, sc.size, sc.stroke, sc.stretch, sc.angle, wall,
                 ink, sc.ss)
    if plate is not None:
        _plate(rng, img, sc, plate, ink)
    drawn = _number(rng, img, sc, ink)
    if drawn is None:
        return None
    labels, boxes, alpha, cover = drawn
    out = _camera(rng, img, sc.digit_px)
    if not _legible(np.asarray(out), alpha, boxes):
        return None
    return out, labels, np.array(boxes, np.float64).reshape(-1, 4), cover


def _layout(rng: np.random.Generator, digits: list[int]) -> _Scene:
    """Font, typography, pose, image size and the number's place in it, like SVHN's."""
    sc = _Scene()
    fonts = available_fonts()
    sc.font = font = _pick(rng, fonts, _font_weights(fonts))

    # image height, the share of it the number fills, and width: SVHN's percentiles, correlated
    z_h = float(np.clip(rng.standard_normal(), -2.4, 2.4))
    H = _quantile_sample(rng, HEIGHT_PCT, z_h)
    # big images are wider views: the number fills less of them (keeps digit heights SVHN-like)
    z_f = -0.35 * z_h + 0.94 * rng.standard_normal()
    fill = float(np.clip(_quantile_sample(rng, FILL_PCT, z_f), 0.35, 0.93))
    z_w = float(np.clip(0.75 * z_h + 0.66 * rng.standard_normal(), -2.4, 2.4))
    W = _quantile_sample(rng, WIDTH_PCT, z_w)

    # typography, in layout units where the figure height is 1
    # condensed .. expanded: SVHN's figures are narrow (box width/height median 0.48; 1s 0.37)
    sc.stretch = stretch = float(np.clip(rng.normal(0.70, 0.13), 0.5, 1.1))
    footless = rng.random() < 0.6  # 1s as a stem and flag, without the fonts' foot
    bold = _pick(rng, (0.0, 0.02, 0.04, 0.06), (0.6, 0.2, 0.13, 0.07))
    by_advance = rng.random() < 0.5
    tracking = rng.uniform(0.9, 1.25) if by_advance else float(np.clip(rng.normal(0.12, 0.08), 0.0, 0.45))
    if rng.random() < 0.08:  # widely spaced figures, as on some plates and hand-mounted digits
        tracking = tracking * 1.35 if by_advance else rng.uniform(0.3, 0.6)
    loose = rng.random() < 0.12  # individually mounted digits: uneven baseline and angle
    sc.outline = rng.random() < 0.1

    # glyphs are rasterised at the cache size just above their drawn height on the ss-times canvas
    est_px = max(MIN_DIGIT_PX, fill * H / 1.08)  # digit height in the image, before the pose is known
    sc.ss = ss = 3 if est_px < 20 else 2 if est_px < 60 else 1
    ratio = _digit_height(font, 100) / 100
    sc.size = size = next((s for s in _RENDER_SIZES if s * ratio >= est_px * ss), _RENDER_SIZES[-1])
    sc.stroke = stroke = int(round(bold * size))
    outline_px = max(1, int(round(_pick(rng, (0.035, 0.06)) * size))) if sc.outline else 0
    text = "".join(str(d) for d in digits)
    glyphs = _place_text(rng, text, font, size, stroke, stretch, tracking, by_advance,
                         y_jitter=0.04 if loose else 0.008, rot_jitter=math.radians(4) if loose else 0.0,
                         outline=outline_px, labels=digits, footless=footless)
    if rng.random() < 0.03:  # an unlabelled letter suffix ("12A"), as SVHN leaves letters unboxed
        x_end = max(g.corners()[:, 0].max() for g in glyphs)
        glyphs += _place_text(rng, _pick(rng, _LETTERS), font, size, stroke, stretch, 1.0, False,
                              x0=x_end + rng.uniform(0.25, 0.45))
    sc.glyphs = glyphs

    # pose: rotation, shear, perspective; then scale so the posed number fills `fill` of H
    sc.angle = angle = math.radians(float(np.clip(rng.normal(0, 2.5), -7, 7)))
    shear = float(np.clip(rng.normal(0, 0.06), -0.25, 0.25))
    pts = np.concatenate([g.corners() for g in glyphs])
    sc.lo, sc.hi = lo, hi = pts.min(0), pts.max(0)
    centre = (lo + hi) / 2
    half = np.maximum((hi - lo) / 2, 1e-3)
    persp = (rng.uniform(-0.08, 0.08) / half[0], rng.uniform(-0.04, 0.04) / half[1])  # seen from aside
    tp = _apply(_homography(0, 0, 1.0, angle, shear, persp, centre), pts)
    ext = tp.max(0) - tp.min(0)  # extent of the posed number per unit of digit height
    sc.digit_px = digit_px = max(fill * H / ext[1], MIN_DIGIT_PX)
    H = max(H, digit_px * ext[1] / 0.93)
    num_w, num_h = digit_px * ext[0], digit_px * ext[1]
    margin = max(1.0, 0.06 * digit_px) + rng.uniform(0, 0.2) * digit_px
    W = max(W, num_w + 2 * margin)
    sc.W, sc.H = W, H = int(round(W)), int(round(H))
    slack_x, slack_y = W - num_w, H - num_h
    left = (rng.beta(2, 2) * (slack_x - 2 * margin) + margin) if slack_x > 2 * margin else slack_x / 2
    top = rng.uniform(0.15, 0.85) * max(slack_y, 0)
    off = tp.min(0) * digit_px  # posed number's top-left relative to its centre
    sc.layout_to_img = _homography(left - off[0], top - off[1], digit_px, angle, shear, persp, centre)
    sc.num_box = (left, top, left + num_w, top + num_h)
    return sc


def _plate(rng, img, sc: _Scene, plate, ink) -> None:
    """A plate behind the number, posed with it: often tight, so that its edges and frame fall inside
    the +30% crop beside the digits, as on SVHN's enamel plates; square, rounded or an oval."""
    pad_x, pad_y = rng.uniform(0.06, 0.6), rng.uniform(0.06, 0.4)
    shape = _pick(rng, ("square", "rounded", "oval"), (0.45, 0.4, 0.15))
    radius = rng.uniform(0.05, 0.35) if shape == "rounded" else 0.0
    if shape == "oval":  # a stadium: the radius is clipped to half the plate's height
        pad_x, pad_y, radius = pad_x + 0.3, pad_y + 0.08, 10.0
    (x0, y0), (x1, y1) = sc.lo, sc.hi

    def plate_mask(inset: float) -> np.ndarray:
        rect = _rounded_rect(x0 - pad_x + inset, y0 - pad_y + inset, x1 + pad_x - inset, y1 + pad_y - inset,
                             max(radius - inset, 0.0))
        return _poly_mask(_apply(sc.layout_to_img, rect), (sc.W, sc.H), 2)

    tex = plate + _lowfreq(rng, sc.H, sc.W, rng.uniform(0.0, 0.05), (2, 3))[..., None]
    _over(img, plate_mask(0.0), tex)
    width, inset = rng.uniform(0.04, 0.1), (rng.uniform(0.02, 0.1) if rng.random() < 0.5 else 0.0)
    if rng.random() < 0.6 and inset + width < 0.9 * min(pad_x, pad_y):
        _over(img, plate_mask(inset), ink if rng.random() < 0.7 else plate * 0.6)
        _over(img, plate_mask(inset + width), tex)


def _number(rng, img, sc: _Scene, ink):
    """Draw the figures (shadow, outline, fill); their labels, boxes, fill coverage and full coverage."""
    W, H, ss = sc.W, sc.H, sc.ss
    canvas = (W * ss, H * ss)
    to_canvas = np.diag([ss, ss, 1.0]) @ sc.layout_to_img
    alpha_c = np.zeros((canvas[1], canvas[0]), np.uint8)
    outline_c = np.zeros_like(alpha_c) if sc.outline else None
    boxes, labels = [], []
    for g in sc.glyphs:
        warped = _warp(g.mask, to_canvas @ g.local, canvas)
        if warped is None:
            return None
        x0, y0, patch = warped
        view = alpha_c[y0:y0 + patch.shape[0], x0:x0 + patch.shape[1]]
        np.maximum(view, patch, out=view)
        if g.outline is not None:
            ow = _warp(g.outline[0], to_canvas @ g.outline[1], canvas)
            if ow is not None:
                v2 = outline_c[ow[1]:ow[1] + ow[2].shape[0], ow[0]:ow[0] + ow[2].shape[1]]
                np.maximum(v2, ow[2], out=v2)
                x0, y0, patch = ow  # the outline is part of the visible figure: box around it
        if g.label is None:
            continue
        # the box: tight around the glyph's ink on the fine canvas, rounded outwards to whole pixels
        ys, xs = np.flatnonzero(patch.max(1) > 127), np.flatnonzero(patch.max(0) > 127)
        if not len(ys):
            return None
        bl, bt = math.floor((x0 + xs[0]) / ss), math.floor((y0 + ys[0]) / ss)
        br, bb = math.ceil((x0 + xs[-1] + 1) / ss), math.ceil((y0 + ys[-1] + 1) / ss)
        if bl < 0 or bt < 0 or br > W or bb > H:
            return None
        boxes.append((bl, bt, br - bl, bb - bt))
        labels.append(g.label)
    for a, b in zip(boxes[:-1], boxes[1:]):  # figures that run into each other are not legible
        if a[0] + a[2] - b[0] > 0.3 * min(a[2], b[2]):
            return None

    alpha = _down(alpha_c, ss)
    cover = alpha  # everything inside the digit boxes that belongs to the figures
    ink_img = ink
    if rng.random() < 0.5:  # uneven paint, weathering, metal sheen
        ink_img = ink + _lowfreq(rng, H, W, rng.uniform(0, 0.08), (2, 2))[..., None]
    if rng.random() < 0.25:  # raised or painted figures cast a soft shadow
        d = max(1, int(round(rng.uniform(0.03, 0.08) * sc.digit_px)))
        sh = np.zeros_like(alpha)
        sdx, sdy = (d, d) if rng.random() < 0.5 else (-d, d)
        src = alpha[max(0, -sdy):H - max(0, sdy), max(0, -sdx):W - max(0, sdx)]
        sh[max(0, sdy):max(0, sdy) + src.shape[0], max(0, sdx):max(0, sdx) + src.shape[1]] = src
        behind = img.copy()
        _over(img, sh * rng.uniform(0.3, 0.6), behind * 0.35)
    if sc.outline:
        out_col = _dark_ink(rng) if _lum(ink) > 0.5 else _light_ink(rng)
        outline_a = _down(outline_c, ss)
        _over(img, outline_a, out_col)
        cover = np.maximum(alpha, outline_a)
    _over(img, alpha, ink_img)
    return labels, boxes, alpha, cover


def _camera(rng, img, digit_px) -> Image.Image:
    """Light and colour, then blur, resolution, noise and JPEG, bounded by the digit size."""
    H, W = img.shape[:2]
    _photometric(rng, img)
    img *= 255
    img += 0.5
    np.clip(img, 0, 255, out=img)
    out = Image.fromarray(img.astype(np.uint8), "RGB")
    # camera and distance blur: every real crop is soft; bounded by the digit size so it stays legible
    sigma = 0.3 + rng.uniform(0, 1) ** 1.2 * min(2.2, 0.06 * digit_px)
    res = rng.uniform(1.2, 2.4) if rng.random() < 0.4 else 1.0
    res = min(res, digit_px / 12) if res > 1 else 1.0
    if res > 1.05:  # seen from afar: fewer pixels, upsampled
        small = out.resize((max(1, round(W / res)), max(1, round(H / res))), Image.BOX)
        out = small.resize((W, H), Image.BILINEAR if rng.random() < 0.5 else Image.BICUBIC)
        sigma *= 0.6
    out = out.filter(ImageFilter.GaussianBlur(float(sigma)))
    arr = np.asarray(out, np.float32) + _noise(rng, H, W) * np.float32(255 * rng.uniform(0.004, 0.03))
    arr += 0.5
    np.clip(arr, 0, 255, out=arr)
    out = Image.fromarray(arr.astype(np.uint8), "RGB")
    if rng.random() < 0.5:  # Street View imagery is JPEG-compressed
        buf = io.BytesIO()
        out.save(buf, "JPEG", quality=int(rng.integers(45 if digit_px > 24 else 65, 93)))
        buf.seek(0)
        out = Image.open(buf).convert("RGB")
    return out


def _down(a: np.ndarray, ss: int) -> np.ndarray:
    if ss > 1:
        a = np.asarray(Image.fromarray(a).reduce(ss))
    return a.astype(np.float32) * np.float32(1 / 255)


def _background(rng, img, wall, num_box, digit_px, has_plate) -> None:
    H, W = img.shape[:2]
    if rng.random() < 0.7:  # plaster, stucco, weathering
        amp = rng.uniform(0.01, 0.07)
        cells = (int(rng.integers(2, 6)), int(rng.integers(2, 9)))
        img += _lowfreq(rng, H, W, amp, cells)[..., None]
    if rng.random() < 0.3:  # fine grain
        img += _noise(rng, H, W)[..., :1] * np.float32(rng.uniform(0.005, 0.03))
    texture = _pick(rng, ("none", "brick", "siding", "tiles"), (0.7, 0.14, 0.1, 0.06))
    if texture != "none":
        period = max(3, int(round(digit_px * rng.uniform(0.25, 0.6))))
        mortar = max(1, int(round(period * rng.uniform(0.08, 0.2))))
        line = wall * (1.35 if _lum(wall) < 0.5 else 0.8) if rng.random() < 0.7 else wall * 0.7
        phase = int(rng.integers(0, period))
        mask = np.zeros((H, W), np.float32)
        rows = (np.arange(H) + phase) % period < mortar
        mask[rows] = 1
        if texture in ("brick", "tiles"):
            brick_w = period * (rng.uniform(2, 3) if texture == "brick" else 1)
            course = (np.arange(H) + phase) // period
            for r in np.unique(course):
                cols = ((np.arange(W) + (brick_w / 2) * (r % 2)) % brick_w) < mortar
                mask[np.ix_(course == r, cols)] = 1
            if texture == "brick":  # bricks vary in tone
                cells = (max(2, H // period), max(2, int(W // brick_w)))
                img *= 1 + _lowfreq(rng, H, W, 0.06, cells)[..., None]
        _over(img, mask * rng.uniform(0.3, 0.8), np.clip(line, 0, 1))
    l, t, r, b = num_box
    # door frames, window edges, pipes, the corner of the building: vertical bands in the margins
    for side in ("left", "right"):
        room = l if side == "left" else W - r
        if rng.random() < 0.35 and room > 3:
            limit = room - (0 if has_plate else 0.25 * digit_px)
            if limit < 2:
                continue
            width = rng.uniform(0.2, 1.0) * limit
            start = rng.uniform(0, limit - width) if rng.random() < 0.5 else 0.0
            x0, x1 = (start, start + width) if side == "left" else (W - start - width, W - start)
            col = _wall_colour(rng) if rng.random() < 0.7 else wall * rng.uniform(0.4, 0.8)
            img[:, max(0, int(x0)):int(math.ceil(x1))] = col
            if rng.random() < 0.5:  # a dark edge line along the band
                e = int(x1) if side == "left" else int(x0)
                if 0 <= e < W:
                    img[:, e] = img[:, e] * 0.45
    if rng.random() < 0.15:  # a ledge / sill line above or below
        if rng.random() < 0.5 and t > 3:
            y = rng.uniform(0, t - 1)
        else:
            y = rng.uniform(b + 1, H) if H - b > 3 else None
        if y is not None:
            th = max(1, int(round(rng.uniform(0.03, 0.12) * digit_px)))
            img[int(y):int(y) + th] = img[int(y):int(y) + th] * rng.uniform(0.4, 0.7)
    np.clip(img, 0, 1, out=img)


def _distractors(rng, img, num_box, digit_px, font, size, stroke, stretch, angle, wall, ink, ss) -> None:
    if rng.random() > 0.35:
        return
    H, W = img.shape[:2]
    l, t, r, b = num_box
    for side in ("left", "right"):
        if rng.random() < 0.4:
            continue
        f = font if rng.random() < 0.6 else available_fonts()[int(rng.integers(len(available_fonts())))]
        px = digit_px * rng.uniform(0.75, 1.25)
        text = "".join(str(d) for d in rng.integers(0, 10, size=int(rng.integers(1, 3))))
        gl = _place_text(rng, text, f, size, stroke, stretch, 0.1, False)
        pts = np.concatenate([g.corners() for g in gl])
        glo, ghi = pts.min(0), pts.max(0)
        gw = (ghi[0] - glo[0]) * px
        gap = 0.5 * digit_px
        room = (l if side == "left" else W - r) - gap
        visible = rng.uniform(0.12, 0.45) * gw  # a fragment, never a readable extra digit
        if room < visible or visible < 2:
            continue
        # the visible part touches the image edge; the rest lies outside
        x_left = visible - gw if side == "left" else W - visible
        y_top = t + rng.normal(0, 0.3) * digit_px
        h = _homography(x_left + gw / 2, y_top + (ghi[1] - glo[1]) * px / 2, px, angle, 0.0, (0, 0),
                        (glo + ghi) / 2)
        canvas = (W * ss, H * ss)
        a = np.zeros((canvas[1], canvas[0]), np.uint8)
        for g in gl:
            w = _warp(g.mask, np.diag([ss, ss, 1.0]) @ h @ g.local, canvas)
            if w is not None:
                v = a[w[1]:w[1] + w[2].shape[0], w[0]:w[0] + w[2].shape[1]]
                np.maximum(v, w[2], out=v)
        col = ink if rng.random() < 0.5 else (_dark_ink(rng) if _lum(wall) > 0.5 else _light_ink(rng))
        _over(img, _down(a, ss), col)


def _photometric(rng, img) -> None:
    """Light falling unevenly, washed-out colour, white balance, contrast and exposure, in place."""
    H, W = img.shape[:2]
    if rng.random() < 0.6:  # a shadow or sun gradient across the façade
        ang = rng.uniform(0, 2 * math.pi)
        lo = rng.uniform(0.7, 1.0)
        xx = np.linspace(0, 1, W, dtype=np.float32)[None, :] * np.float32(math.cos(ang))
        yy = np.linspace(0, 1, H, dtype=np.float32)[:, None] * np.float32(math.sin(ang))
        ramp = xx + yy
        ramp -= ramp.min()
        ramp *= np.float32((1 - lo) / max(float(ramp.max()), 1e-6))
        ramp += np.float32(lo)
        img *= ramp[..., None]
    desat = rng.uniform(0.0, 0.7)  # Street View colours are washed out
    m = (1 - desat) * np.eye(3) + desat * np.full((3, 3), 1 / 3)
    # white balance, bluish on average (SVHN's median blue-minus-red is +0.04 of full scale)
    wb = np.clip(1 + rng.normal(0, 0.05, 3) + np.array([-0.04, 0.0, 0.04]), 0.82, 1.2)
    c = rng.uniform(0.35, 1.0)  # contrast about mid-grey (SVHN's crops are flat), then exposure
    m = c * (wb[:, None] * m)
    bias = 0.5 - 0.5 * c + rng.uniform(-0.15, 0.1)
    # a 3x3 colour matrix, written out: numpy's matmul would call a multithreaded BLAS, which
    # oversubscribes the cores when every worker process does it at once
    m = m.astype(np.float32)
    r, g, b = img[..., 0].copy(), img[..., 1].copy(), img[..., 2].copy()
    for ch in range(3):
        out = img[..., ch]
        np.multiply(r, m[ch, 0], out=out)
        out += g * m[ch, 1]
        out += b * m[ch, 2]
        out += np.float32(bias)
    np.clip(img, 0, 1, out=img)


@lru_cache(maxsize=1)
def _noise_tile() -> np.ndarray:
    # One fixed tile of standard-normal noise per process, cropped at random offsets: the same
    # everywhere (fixed seed), and much faster than drawing fresh noise for every pixel.
    return np.random.default_rng(20140101).standard_normal((512, 512, 3), np.float32)


def _noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    tile = _noise_tile()
    y, x = int(rng.integers(0, 512)), int(rng.integers(0, 512))
    if y + h <= 512 and x + w <= 512:
        return tile[y:y + h, x:x + w]
    return np.take(np.take(tile, np.arange(y, y + h), axis=0, mode="wrap"), np.arange(x, x + w), axis=1,
                   mode="wrap")


def _legible(img: np.ndarray, alpha: np.ndarray, boxes) -> bool:
    """Every digit's core pixels differ from the background inside its box by a visible margin."""
    for l, t, w, h in boxes:
        a = alpha[t:t + h, l:l + w]
        box = img[t:t + h, l:l + w].astype(np.float32)
        v = 0.299 * box[..., 0] + 0.587 * box[..., 1] + 0.114 * box[..., 2]
        core, back = a > 0.6, a < 0.05
        n_core, n_back = int(core.sum()), int(back.sum())
        if n_core < 3 or n_back < 3:
            continue  # a very thin or very full box: nothing to compare
        if abs(float(v[core].mean()) - float(v[back].mean())) < 0.1 * 255:
            return False
    return True


def render_example(seed: int, index: int,
                   length_balance: float = 0.0) -> tuple[Image.Image, list[int], np.ndarray]:
    """One RGB image, its digits (0..9), boxes (k,4) float: left, top, width, height.

    A pure function of its arguments: the same ones always give the same pixels and boxes.
    ``length_balance`` flattens the mix of number lengths (length_weights); only the draw of the length
    uses it, so an example whose length it leaves unchanged is the same image.
    """
    for name, v in (("seed", seed), ("index", index)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    return _render(seed, index, length_weights(length_balance))[:3]


def _render(seed: int, index: int, lengths: tuple[float, ...] = _SVHN_LENGTHS):
    """render_example plus the digits' coverage (H, W) float in 0..1 before blur and noise (tests)."""
    rng = np.random.default_rng([int(seed), int(index), GENERATOR_VERSION])
    digits = _digits(rng, lengths)
    for _ in range(50):  # a draw that falls outside the image or reads poorly is redrawn
        result = _attempt(rng, digits)
        if result is not None:
            return result
    raise RuntimeError(f"could not render a legible example for seed={seed} index={index}")


# ------------------------------------------------------------------------------------------- split


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _manifest(count: int, seed: int, length_balance: float = 0.0) -> dict:
    manifest = {"generator": "harness.synthetic", "version": GENERATOR_VERSION, "count": count, "seed": seed,
                "images": f"1.png .. {count}.png (file i+1.png is render_example(seed, i))",
                "annotations": "digitStruct.mat"}
    if length_balance:  # only when set: folders generated before the option stay valid
        manifest["length_balance"] = float(length_balance)
        manifest["images"] = f"1.png .. {count}.png (file i+1.png is render_example(seed, i, length_balance))"
    return manifest


def _render_range(task: tuple[str, int, float, int, int]) -> list[tuple[list[int], list[list[float]]]]:
    """Worker: render examples [start, stop) into folder as PNGs; return their digits and boxes."""
    folder, seed, length_balance, start, stop = task
    out = []
    for index in range(start, stop):
        image, digits, boxes = render_example(seed, index, length_balance)
        # zlib's Z_RLE strategy (compress_type=3): the fastest here, and the smallest files too
        image.save(os.path.join(folder, f"{index + 1}.png"), format="PNG", compress_level=1, compress_type=3)
        out.append((digits, boxes.tolist()))
    return out


def _complete(folder: Path, expected: dict) -> str | None:
    """None when ``folder`` holds the complete split ``expected`` describes, else what is wrong."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return (f"holds files but no {MANIFEST}: not a synthetic split generated here (or an "
                "interrupted copy); choose another folder or remove this one")
    try:
        found = json.loads(manifest.read_text())
    except (OSError, ValueError) as e:
        return f"{MANIFEST} is unreadable ({e}); choose another folder or remove this one"
    keys = ("generator", "version", "count", "seed", "length_balance")
    if not isinstance(found, dict) or any(found.get(k) != expected.get(k) for k in keys):
        have = {k: found.get(k) for k in keys if k in found} if isinstance(found, dict) else found
        want = {k: expected[k] for k in keys if k in expected}
        return (f"holds a different synthetic split ({have}, wanted {want}); "
                "choose another folder for these parameters")
    names = set(os.listdir(folder))
    missing = [f"{i}.png" for i in range(1, expected["count"] + 1) if f"{i}.png" not in names]
    if "digitStruct.mat" not in names:
        missing.insert(0, "digitStruct.mat")
    if missing:
        return (f"is incomplete: {len(missing)} files missing ({', '.join(missing[:3])}"
                f"{', ...' if len(missing) > 3 else ''}); remove it to regenerate")
    return None


def generate_split(out_dir, count: int, *, seed: int, length_balance: float = 0.0,
                   workers: int | None = None, progress: bool = True) -> Path:
    """Write ``count`` synthetic images and their digitStruct.mat to ``out_dir``; return its path.

    Layout is SVHN Format 1's: ``1.png .. {count}.png`` (file ``i+1.png`` is
    ``render_example(seed, i)``) and ``digitStruct.mat``, plus ``manifest.json`` (generator, version,
    count, seed). The split is built in a temporary sibling folder and renamed into place when
    complete. If ``out_dir`` already holds the same complete split it is returned untouched; if it
    holds anything else (other parameters, an incomplete or foreign folder) DataError is raised
    and nothing there is changed. An empty folder is treated as absent. ``length_balance`` flattens
    the mix of number lengths (length_weights; recorded in the manifest when set). The files do not
    depend on ``workers`` (default: every core); ``progress`` reports on stderr.
    """
    count = _check_int("count", count, 1)
    seed = _check_int("seed", seed, 0)
    length_weights(length_balance)  # checks it
    if workers is not None:
        workers = _check_int("workers", workers, 1)
    out = Path(os.path.abspath(os.fspath(out_dir)))
    expected = _manifest(count, seed, length_balance)
    if out.exists():
        if not out.is_dir():
            raise DataError(out, "exists and is not a folder; choose another path for the synthetic split")
        if any(out.iterdir()):
            problem = _complete(out, expected)
            if problem:
                raise DataError(out, problem)
            return out
    available_fonts()  # fail early, in this process, if no font can be used
    # deferred: digitstruct imports h5py, which the spawned rendering workers (they import this module) never use
    from harness.data.digitstruct import write_digitstruct

    with atomic.new_folder(out, MANIFEST, expected, lambda folder: _complete(folder, expected)) as tmp:
        bar = Progress(count, f"synthetic {out.name}") if progress else None
        annotations = _annotations(tmp, count, seed, length_balance, workers or os.cpu_count() or 1, bar)
        try:  # annotations stream in as workers finish, so HDF5 writing overlaps the rendering
            write_digitstruct(tmp / "digitStruct.mat", annotations)
        finally:
            annotations.close()  # stops the workers if writing failed
            if bar:
                bar.__exit__(None, None, None)
    return out


def _annotations(folder: Path, count: int, seed: int, length_balance: float, workers: int,
                 bar: Progress | None):
    """Render every image into folder (in worker processes) and yield annotations in file order."""
    # deferred: h5py, as in generate_split
    from harness.data.digitstruct import Annotation

    chunk = max(8, min(200, count // (workers * 8) or 1))
    tasks = [(str(folder), seed, length_balance, start, min(start + chunk, count))
             for start in range(0, count, chunk)]
    if bar:
        bar.__enter__()
    if workers == 1 or len(tasks) == 1:
        results, pool = map(_render_range, tasks), None
    else:
        # spawn: safe when the caller runs threads (TensorFlow), and the same on every platform
        pool = multiprocessing.get_context("spawn").Pool(min(workers, len(tasks)))
        results = pool.imap(_render_range, tasks)
    try:
        for (_, _, _, start, _), rendered in zip(tasks, results):
            for offset, (digits, boxes) in enumerate(rendered):
                yield Annotation(f"{start + offset + 1}.png", np.asarray(digits, np.int64),
                                 np.asarray(boxes, np.float64).reshape(-1, 4))
            if bar:
                bar.update(len(rendered))
        if pool:
            pool.close()
    finally:
        if pool:
            pool.terminate()
            pool.join()
