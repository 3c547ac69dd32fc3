"""Parsing a full-size SVHN digitStruct.mat: read_digitstruct against the usual h5py loop.

    python benchmarks/digitstruct_parse.py [--entries 33402] [--naive 2000] [--seed 0]

Writes a file the size of SVHN's train split (33,402 entries, number lengths distributed as in
train: 1:5137, 2:18130, 3:8691, 4:1434, 5:9, 6:1) in MATLAB's v7.3 layout with write_digitstruct,
in a temporary folder, then times:

1. read_digitstruct on the whole file;
2. the h5py snippet most SVHN code uses (for each i: f[f['digitStruct/name'][i][0]], and for each
   bbox field, dereference every element when it holds more than one). It takes minutes on the
   whole file, so it runs on --naive entries spread evenly over the file and its time is scaled
   up linearly to all entries (the output says so); it must agree with read_digitstruct on them.

The file has just been written, so reads come from the page cache. Figures only, no assertions
(see DESIGN.md, benchmarks/).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.data.digitstruct import Annotation, read_digitstruct, write_digitstruct  # noqa: E402

TRAIN_LENGTHS = {1: 5137, 2: 18130, 3: 8691, 4: 1434, 5: 9, 6: 1}  # SVHN train, 33,402 images
FIELDS = ("height", "label", "left", "top", "width")


def train_like(count: int, seed: int) -> list[Annotation]:
    """``count`` annotations with train's length mix; integer boxes of SVHN-like sizes."""
    rng = np.random.default_rng(seed)
    lengths = np.repeat(list(TRAIN_LENGTHS), list(TRAIN_LENGTHS.values()))
    rng.shuffle(lengths)
    out = []
    for i, k in enumerate(lengths[:count]):
        boxes = np.column_stack([rng.integers(-1, 400, k), rng.integers(0, 100, k),
                                 rng.integers(3, 100, k), rng.integers(10, 200, k)]).astype(float)
        out.append(Annotation(f"{i + 1}.png", rng.integers(0, 10, k), boxes))
    return out


def naive_entry(f: h5py.File, i: int) -> tuple[str, dict[str, list[float]]]:
    """The common snippet, as found in SVHN loaders."""
    name = "".join(chr(c[0]) for c in f[f["digitStruct/name"][i][0]][()])
    bbox = f[f["digitStruct/bbox"][i][0]]
    fields = {}
    for key in FIELDS:
        attr = bbox[key]
        fields[key] = ([f[attr[j][0]][()][0][0] for j in range(len(attr))] if len(attr) > 1
                       else [attr[0][0]])
    return name, fields


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=sum(TRAIN_LENGTHS.values()))
    parser.add_argument("--naive", type=int, default=2000, help="entries the naive loop reads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    annotations = train_like(args.entries, args.seed)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "digitStruct.mat"
        _, write_s = timed(write_digitstruct, path, annotations)
        digits = sum(len(a.digits) for a in annotations)
        print(f"digitStruct.mat: {len(annotations):,} entries, {digits:,} digits, "
              f"{path.stat().st_size / 1e6:.1f} MB in MATLAB's v7.3 layout; "
              f"write_digitstruct took {write_s:.2f} s")

        entries, read_s = timed(read_digitstruct, path)
        picks = np.linspace(0, len(annotations) - 1, min(args.naive, len(annotations))).astype(int)
        with h5py.File(path, "r") as f:
            naive, naive_s = timed(lambda: [naive_entry(f, int(i)) for i in picks])
        for i, (name, fields) in zip(picks, naive):
            assert name == entries[i].name and np.array_equal(
                np.asarray(fields["label"], dtype=np.int64) % 10, entries[i].digits)
        scale = len(annotations) / len(picks)

    rows = [("read_digitstruct", read_s, "measured on all entries"),
            ("naive h5py snippet", naive_s * scale,
             f"measured on {len(picks):,} entries ({naive_s:.2f} s), scaled x{scale:.1f}")]
    print(f"\n{'reader':<20} {'seconds':>9} {'entries/s':>10} {'ratio':>8}   note")
    for label, seconds, note in rows:
        print(f"{label:<20} {seconds:>9.2f} {len(annotations) / seconds:>10,.0f} "
              f"{seconds / read_s:>7.1f}x   {note}")
    print("\nratio: time / read_digitstruct's time; the naive loop agreed with read_digitstruct "
          "on every entry it read.")


if __name__ == "__main__":
    main()
