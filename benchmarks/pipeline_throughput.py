"""Throughput of the data pipeline: preparing a split file, and streaming shuffled batches from it.

    python benchmarks/pipeline_throughput.py [--images 4000] [--workers N]

Source: the genuine SVHN sample (../shared/data/svhn-sample/train, labels.csv; its 2,000 images
repeated up to --images) when it is there, else street-number-like PNGs + digitStruct.mat drawn here
with PIL. Reports:

1. read_records (image sizes from headers) and prepare_split: images/s with one worker and with
   --workers (default: all cores), and per core;
2. HDF5 layout: sorted fancy-index reads of random batches, contiguous against chunked copies, and
   np.memmap of the contiguous bytes for comparison;
3. SplitBatches, shuffled, batch 32/128/512 (and 512 unshuffled, as evaluation reads): batches/s and
   images/s against a loop over the same arrays held in memory, timed in the same run
   (ratio = streamed time / in-memory time).

The split file has just been written, so reads come from the page cache: this is the pipeline's own
cost, not the disk's. Figures only, no assertions (see DESIGN.md, benchmarks/).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.digitstruct import Annotation, write_digitstruct  # noqa: E402
from harness.pipeline import SplitBatches  # noqa: E402
from harness.prepare import open_prepared, prepare_split, usable_cores  # noqa: E402
from harness.records import read_records  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "svhn-sample" / "train"
BATCH_SIZES = (32, 128, 512)


def source_records(count: int, folder: Path) -> tuple[pd.DataFrame, str]:
    genuine = (SAMPLE / "labels.csv").is_file()
    if not genuine:
        draw_split(folder, count, np.random.default_rng(0))
    start = time.perf_counter()
    records = read_records(SAMPLE, "labels.csv") if genuine else read_records(folder)
    took = time.perf_counter() - start
    print(f"read_records: {len(records)} images in {took:.2f} s ({len(records) / took:.0f} images/s, "
          "image sizes from file headers)")
    if not genuine:
        return records, f"{count} PNGs drawn with PIL + digitStruct.mat"
    what = f"genuine SVHN sample ({SAMPLE}), {len(records)} images repeated to {count}"
    return pd.concat([records] * -(-count // len(records)), ignore_index=True).iloc[:count], what


def draw_split(folder: Path, count: int, rng: np.random.Generator) -> None:
    """Numbers of 1-4 digits on plain backgrounds, at SVHN-like sizes (tens to hundreds of pixels)."""
    folder.mkdir(parents=True, exist_ok=True)
    annotations = []
    for i in range(count):
        number = str(rng.integers(1, 10 ** rng.integers(1, 5)))
        font = ImageFont.load_default(size=int(rng.integers(16, 80)))
        width = int(font.getlength(number) * rng.uniform(1.3, 2.5)) + 8
        height = int(font.size * rng.uniform(1.4, 2.5)) + 8
        image = Image.new("RGB", (width, height), tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(image)
        x, y = 4, int(rng.integers(2, max(3, height - font.size - 4)))
        boxes = []
        for digit in number:
            left, top, right, bottom = draw.textbbox((x, y), digit, font=font)
            draw.text((x, y), digit, font=font, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
            boxes.append([left, top, right - left, bottom - top])
            x += font.getlength(digit)
        annotations.append(Annotation(f"{i + 1}.png", np.array([int(d) for d in number]),
                                      np.array(boxes, dtype=np.float64)))
        image.save(folder / f"{i + 1}.png")
    write_digitstruct(folder / "digitStruct.mat", annotations)


def bench_prepare(records: pd.DataFrame, out: Path, workers: int) -> None:
    print(f"\n== prepare_split: {len(records)} images -> 64x64 crops ==")
    for w in sorted({1, workers}):
        start = time.perf_counter()
        prepare_split(records, out, workers=w, desc=f"prepare ({w} workers)")
        rate = len(records) / (time.perf_counter() - start)
        print(f"workers={w}: {rate:8.0f} images/s  ({rate / w:6.0f} per core)")


def bench_layouts(path: Path, folder: Path, batch: int = 128, batches: int = 40) -> None:
    print(f"\n== HDF5 layout: sorted fancy-index reads of random batches of {batch} ==")
    with open_prepared(path) as f:
        images = f["images"][:]
    rng = np.random.default_rng(0)
    for chunk in (None, 1, 8, 64):
        copy = folder / f"layout-{chunk}.h5"
        with h5py.File(copy, "w") as f:
            f.create_dataset("images", data=images, chunks=None if chunk is None else
                             (chunk, *images.shape[1:]))
        with h5py.File(copy, "r") as f:
            rate = _random_reads(f["images"], rng, batch, batches)
            if chunk is None:  # the same bytes through the OS page cache, bypassing HDF5's reader
                mapped = np.memmap(copy, np.uint8, "r", offset=f["images"].id.get_offset(),
                                   shape=images.shape)
                print(f"{'np.memmap':>14}: {_random_reads(mapped, rng, batch, batches):8.0f} "
                      "images/s (of the contiguous file; for comparison, not used)")
        name = "contiguous" if chunk is None else f"chunks of {chunk}"
        print(f"{name:>14}: {rate:8.0f} images/s")
        copy.unlink()


def _random_reads(images, rng: np.random.Generator, batch: int, batches: int) -> float:
    start = time.perf_counter()
    for _ in range(batches):
        images[np.sort(rng.choice(len(images), batch, replace=False))]
    return batches * batch / (time.perf_counter() - start)


def bench_batches(path: Path, epochs: int = 2) -> None:
    print("\n== SplitBatches against the same arrays in memory (shuffled unless noted) ==")
    with open_prepared(path) as f:
        images = f["images"][:]
        targets = np.concatenate([f["length"][:][:, None], f["digits"][:]], axis=1).astype(np.int32)
    for batch, shuffle in [(b, True) for b in BATCH_SIZES] + [(BATCH_SIZES[-1], False)]:
        stream = SplitBatches(path, batch, shuffle=shuffle, seed=0)
        start = time.perf_counter()
        for _ in range(epochs):
            for i in range(len(stream)):
                stream[i]
            stream.on_epoch_end()
        streamed = time.perf_counter() - start
        start = time.perf_counter()
        for epoch in range(epochs):
            order = (np.random.default_rng([0, epoch]).permutation(len(images)) if shuffle
                     else np.arange(len(images)))
            for i in range(0, len(order), batch):
                rows = order[i:i + batch]
                images[rows], targets[rows]
        in_memory = time.perf_counter() - start
        n_batches, n_images = epochs * len(stream), epochs * len(images)
        label = f"batch {batch}" + ("" if shuffle else " unshuffled")
        print(f"{label:>20}: SplitBatches {n_batches / streamed:6.1f} batches/s "
              f"{n_images / streamed:7.0f} images/s | in memory {n_batches / in_memory:7.1f} "
              f"batches/s {n_images / in_memory:7.0f} images/s | ratio {streamed / in_memory:4.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=usable_cores())
    args = parser.parse_args()
    print(f"{usable_cores()} usable cores, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        records, what = source_records(args.images, folder / "raw")
        print(f"source: {what}")
        path = folder / "train.h5"
        bench_prepare(records, path, args.workers)
        bench_layouts(path, folder)
        bench_batches(path)


if __name__ == "__main__":
    main()
