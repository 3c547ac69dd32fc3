"""Preparation throughput and memory on genuine SVHN images: images/s, per core, and peak memory.

    python benchmarks/prepare_throughput.py [--images 4000] [--workers N] [--memory 2000,20000]

Source: the 2,000 genuine SVHN train images in ../shared/data/svhn-sample/train (labels.csv),
repeated up to --images (the sample is all there is beside the checkout; repeats are decoded again,
so the figures are real decoding work). Reports:

1. scan_records: image headers read per second (sizes and colour modes, no pixels decoded);
2. prepare_split at 64x64 (the paper) and 74x74 (the report): images/s with one worker and with
   --workers (default: every usable core), and per core;
3. peak resident memory of a preparing process (the main process, and its largest worker) for each
   split size in --memory, each in a fresh process: preparation keeps one segment and a few chunks in
   memory, so the figure should not grow with the split.

Figures only, no assertions (see DESIGN.md, benchmarks/). The machine may be shared: the load average
is printed first.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.data.prepare import prepare_split, usable_cores  # noqa: E402
from harness.data.records import scan_records  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "svhn-sample" / "train"

_MEMORY_CHILD = """
import resource, sys
import pandas as pd
from harness.data.prepare import prepare_split
from harness.data.records import read_records
records = read_records(sys.argv[1], "labels.csv")
count = int(sys.argv[2])
records = pd.concat([records] * -(-count // len(records)), ignore_index=True).iloc[:count]
prepare_split(records, sys.argv[3], workers=int(sys.argv[4]), desc="prepare")
main = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(f"{main:.0f} {workers:.0f}")
"""


def repeated(records: pd.DataFrame, count: int) -> pd.DataFrame:
    return pd.concat([records] * -(-count // len(records)), ignore_index=True).iloc[:count]


def bench_scan() -> pd.DataFrame:
    start = time.perf_counter()
    records, skipped = scan_records(SAMPLE, "labels.csv")
    took = time.perf_counter() - start
    print(f"scan_records: {len(records)} images in {took:.2f} s ({len(records) / took:,.0f} headers/s), "
          f"{len(skipped)} skipped")
    return records


def bench_prepare(records: pd.DataFrame, folder: Path, workers: int) -> None:
    for size in (64, 74):
        print(f"\n== prepare_split: {len(records)} genuine images -> {size}x{size} ==")
        for w in sorted({1, workers}):
            out = folder / f"prepared-{size}-{w}.h5"
            start = time.perf_counter()
            prepare_split(records, out, image_size=size, workers=w, desc=f"prepare ({w} workers)")
            rate = len(records) / (time.perf_counter() - start)
            print(f"workers={w}: {rate:8,.0f} images/s  ({rate / w:6,.0f} per core)")
            out.unlink()


def bench_memory(counts: list[int], folder: Path, workers: int) -> None:
    print(f"\n== peak resident memory while preparing 64x64, {workers} workers ==")
    for count in counts:
        out = folder / f"memory-{count}.h5"
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(SAMPLE), str(count), str(out),
                               str(workers)], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                              text=True, check=True)
        took = time.perf_counter() - start
        main, worker = done.stdout.split()
        size = out.stat().st_size / 2**20
        print(f"{count:>7,} images ({size:6.0f} MB file): main process {main:>5} MB, largest worker "
              f"{worker:>4} MB  [{took:5.1f} s, {count / took:,.0f} images/s including start-up]")
        out.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=usable_cores())
    parser.add_argument("--memory", default="2000,20000", help="split sizes for the memory figures ('' = none)")
    args = parser.parse_args()
    if not (SAMPLE / "labels.csv").is_file():
        sys.exit(f"the genuine SVHN sample is not at {SAMPLE}")
    print(f"{usable_cores()} usable cores, load average {os.getloadavg()[0]:.2f}")
    records = bench_scan()
    with tempfile.TemporaryDirectory() as tmp:
        bench_prepare(repeated(records, args.images), Path(tmp), args.workers)
        counts = [int(c) for c in args.memory.split(",") if c.strip()]
        if counts:
            bench_memory(counts, Path(tmp), args.workers)


if __name__ == "__main__":
    main()
