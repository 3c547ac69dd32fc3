"""Throughput of the data pipeline: preparing a split file, and streaming shuffled batches from it.

    python benchmarks/pipeline_throughput.py [--images 4000] [--workers N] [--cores 1]

Source: the genuine SVHN sample (../shared/data/svhn-sample/train, labels.csv; its 2,000 images
repeated up to --images) when it is there, else street-number-like PNGs + digitStruct.mat drawn here
with PIL. Reports:

1. read_records (image sizes from headers) and prepare_split: images/s with one worker and with
   --workers (default: all cores), and per core;
2. HDF5 layout: sorted fancy-index reads of random batches, contiguous against chunked copies, and
   np.memmap of the contiguous bytes (what SplitBatches reads);
3. SplitBatches with each reader (h5py, memmap, memory = ``cache=True``), shuffled, batch 32/128/512,
   against a plain numpy loop over the same arrays held in memory, timed in the same run: batches/s
   reading only, and batches/s with augmentation on (the ``paper`` policy's per-example random
   crop, harness.models.layers.Crop 64 -> 54, called on each batch as the model would in training).
   This part runs pinned to ``--cores`` cores (default 1, before the Keras backend is loaded, so
   its thread pools see only those), and gives images/s per core. "read share" is the part of a
   batch's time (with augmentation) spent reading it; "vs numpy" is the +Crop rate against the
   numpy loop's, which is noisy on a shared machine where the read share is small.

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

from harness.data.digitstruct import Annotation, write_digitstruct  # noqa: E402
from harness.data.prepare import prepare_split, usable_cores  # noqa: E402

# harness.data.batches and harness.models.augment load the Keras backend: imported once the cores are pinned
from harness.data.records import read_records  # noqa: E402
from harness.data.splitfile import PreparedSplit  # noqa: E402

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
    images = PreparedSplit(path).images()
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
                      "images/s (of the contiguous file: SplitBatches' reader)")
        name = "contiguous" if chunk is None else f"chunks of {chunk}"
        print(f"{name:>14}: {rate:8.0f} images/s")
        copy.unlink()


def _random_reads(images, rng: np.random.Generator, batch: int, batches: int) -> float:
    start = time.perf_counter()
    for _ in range(batches):
        images[np.sort(rng.choice(len(images), batch, replace=False))]
    return batches * batch / (time.perf_counter() - start)


def bench_batches(path: Path, cores: int, rounds: int, min_seconds: float = 0.5) -> None:
    from harness.backend import load_keras
    from harness.data.batches import SplitBatches

    keras = load_keras()
    augment = _augmenter(keras)
    split = PreparedSplit(path)
    images, targets = split.images(), split.targets()
    print(f"\n== batches: {keras.backend.backend()} backend, pinned to {cores} core(s), shuffled, best of "
          f"{rounds} interleaved rounds; +Crop = the batch through the paper policy's random crop ==")
    print(f"{'reader':>8} {'batch':>5} | {'read batches/s':>14} {'images/s':>9} | {'+Crop batches/s':>15} "
          f"{'images/s/core':>13} | {'read share':>10} {'vs numpy':>8}")
    for batch in BATCH_SIZES:
        sources = {"numpy": _NumpyBatches(images, targets, batch)}
        for reader, kwargs in (("h5py", {"memmap": False}), ("memmap", {}), ("memory", {"cache": True})):
            sources[reader] = SplitBatches(path, batch, shuffle=True, seed=0, **kwargs)
            assert sources[reader].reader == reader
        best = {name: [0.0, 0.0] for name in sources}
        for _ in range(rounds):  # interleaved, so that a burst of other load hits every reader alike
            for name, src in sources.items():
                for k, work in enumerate((lambda b: None, augment)):
                    best[name][k] = max(best[name][k], _rate(src, work, min_seconds))
        for name in ("h5py", "memmap", "memory", "numpy"):
            read, augmented = best[name]
            # read share: the reading's part of a batch's time with augmentation (both measured)
            print(f"{name:>8} {batch:>5} | {read:14.1f} {read * batch:9.0f} | {augmented:15.1f} "
                  f"{augmented * batch / cores:13.0f} | {100 * augmented / read:9.1f}% "
                  f"{augmented / best['numpy'][1]:7.2f}x")


def _augmenter(keras):
    """uint8 batch -> float crops, compiled by the backend as in training (a model's predict step),
    with the crop in training mode: a random 54x54 window per example."""
    from harness.models.layers import Crop

    class Augment(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.crop = Crop(54, random=True, seed=0)

        def call(self, images):
            return self.crop(keras.ops.cast(images, "float32") / 255.0, training=True)

    inputs = keras.Input((64, 64, 3), dtype="uint8")
    model = keras.Model(inputs, Augment()(inputs))
    return model.predict_on_batch  # returns numpy: waits for asynchronous backends


class _NumpyBatches:
    """The baseline: the split's arrays in memory, a seeded permutation per epoch, numpy gathers."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, batch: int):
        self.images, self.targets, self.batch, self.epoch = images, targets, batch, 0
        self._order = np.random.default_rng([0, 0]).permutation(len(images))

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch)

    def __getitem__(self, i: int):
        rows = self._order[i * self.batch:(i + 1) * self.batch]
        return self.images[rows], self.targets[rows]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._order = np.random.default_rng([0, self.epoch]).permutation(len(self.images))


def _rate(batches, work, min_seconds: float) -> float:
    """Batches/s over whole epochs (at least one, and at least ``min_seconds``), after a warm-up."""
    work(batches[0][0])  # first calls: start-up and tracing (full and partial batch) are not throughput
    work(batches[len(batches) - 1][0])
    done, start = 0, time.perf_counter()
    while True:
        for i in range(len(batches)):
            work(batches[i][0])
        batches.on_epoch_end()
        done += len(batches)
        took = time.perf_counter() - start
        if took >= min_seconds:
            return done / took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=usable_cores())
    parser.add_argument("--cores", type=int, default=1, help="cores the batch benchmark may use")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the batch benchmark")
    parser.add_argument("--batches-only", action="store_true", help="prepare quietly; report part 3 only")
    args = parser.parse_args()
    print(f"{usable_cores()} usable cores, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        records, what = source_records(args.images, folder / "raw")
        print(f"source: {what}")
        path = folder / "train.h5"
        if args.batches_only:
            prepare_split(records, path, workers=args.workers)
        else:
            bench_prepare(records, path, args.workers)
            bench_layouts(path, folder)
        cores = sorted(os.sched_getaffinity(0))[:args.cores]
        os.sched_setaffinity(0, cores)  # before the backend loads: its thread pools size to these
        bench_batches(path, len(cores), rounds=args.rounds)


if __name__ == "__main__":
    main()
