"""Does the embedded synthetic set look like real street numbers? Image statistics, side by side.

    python benchmarks/synthetic_realism.py [--images DIR] [--count 1000] [--seed 7] [--image-size 64]

Both sides go through the same preprocessing as training data (harness.data.prepare.preprocess: the
digits' union box grown 30%, cropped, resized to --image-size): --count genuine images from --images
(default: the 2,000 genuine SVHN train images in ../shared/data/svhn-sample/train; any folder in
SVHN Format 1 layout) and --count synthetic examples rendered now by harness.data.synthetic.render_example
(the installed generator, seed --seed). For each statistic it prints the 10th, 50th and 90th
percentile on each side and the synthetic/real ratio of the medians:

- contrast: standard deviation of luminance (0..1) over the crop;
- sharpness: mean absolute luminance step between neighbouring pixels over that standard deviation
  (edges per unit contrast: blur lowers it, noise raises it);
- saturation: mean HSV saturation;
- brightness: mean luminance;
- blue cast: mean of blue minus red (0..1);
- digit height / crop height: how much of the model's input the digits fill.

Figures only, no assertions (see DESIGN.md, benchmarks/). Used to tune harness/data/synthetic.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAMPLE = ROOT.parent / "shared" / "data" / "svhn-sample" / "train"
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
BOX_EXPAND = 0.3


def crop_statistics(crops: np.ndarray, fill: np.ndarray) -> dict[str, np.ndarray]:
    """Per-crop statistics of uint8 crops (n, s, s, 3); ``fill``: digit height / crop height."""
    a = crops.astype(np.float32) / 255
    lum = a @ LUMA
    contrast = lum.std(axis=(1, 2))
    steps = np.abs(np.diff(lum, axis=2)).mean(axis=(1, 2)) + np.abs(np.diff(lum, axis=1)).mean(axis=(1, 2))
    high, low = a.max(-1), a.min(-1)
    return {
        "contrast": contrast,
        "sharpness": steps / np.maximum(contrast, 1e-3),
        "saturation": ((high - low) / np.maximum(high, 1e-3)).mean(axis=(1, 2)),
        "brightness": lum.mean(axis=(1, 2)),
        "blue cast": (a[..., 2] - a[..., 0]).mean(axis=(1, 2)),
        "digit height / crop height": fill,
    }


def _fill(boxes: np.ndarray, width: int, height: int) -> float:
    """Share of the crop's height the tallest digit takes, as harness.data.prepare crops it."""
    from harness.data.prepare import crop_box

    box = crop_box(boxes, width, height, BOX_EXPAND)
    return float(boxes[:, 3].max() / max(box[3] - box[1], 1))


def _real(path_boxes: tuple[str, np.ndarray], image_size: int = 64) -> tuple[np.ndarray, float]:
    from PIL import Image

    from harness.data.prepare import preprocess

    path, boxes = path_boxes
    with Image.open(path) as image:
        return preprocess(image, boxes, image_size, BOX_EXPAND), _fill(boxes, image.width, image.height)


def _synthetic(task: tuple[int, int, int]) -> tuple[np.ndarray, float]:
    from harness.data.prepare import preprocess
    from harness.data.synthetic import render_example

    seed, index, image_size = task
    image, _, boxes = render_example(seed, index)
    return preprocess(image, boxes, image_size, BOX_EXPAND), _fill(boxes, image.width, image.height)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=SAMPLE, help="genuine images, SVHN Format 1 layout")
    parser.add_argument("--count", type=int, default=1000, help="images per side (default: 1000)")
    parser.add_argument("--seed", type=int, default=7, help="synthetic seed (default: 7)")
    parser.add_argument("--image-size", type=int, default=64, help="crop size (default: 64, the paper's)")
    args = parser.parse_args()
    if not args.images.is_dir():
        parser.exit(2, f"synthetic_realism: no image folder at {args.images}; give --images DIR "
                       "(SVHN Format 1 layout: images + digitStruct.mat, a .json or labels.csv)\n")
    if args.count < 10:
        parser.exit(2, "synthetic_realism: --count must be at least 10\n")

    from harness.data.prepare import usable_cores
    from harness.data.records import read_records
    from harness.data.synthetic import GENERATOR_VERSION

    records = read_records(args.images)
    chosen = np.random.default_rng(0).permutation(len(records))[:args.count]
    started = time.perf_counter()
    with Pool(usable_cores()) as pool:
        real = pool.starmap(_real, [((records.path.iloc[i], np.asarray(records.boxes.iloc[i])), args.image_size)
                                    for i in chosen])
        synthetic = pool.map(_synthetic, [(args.seed, i, args.image_size) for i in range(args.count)])
    sides = {}
    for side, rows in (("real", real), ("synthetic", synthetic)):
        crops = np.stack([crop for crop, _ in rows])
        sides[side] = crop_statistics(crops, np.array([fill for _, fill in rows]))

    print(f"Synthetic realism: {len(real)} genuine images from {args.images} vs {len(synthetic)} synthetic "
          f"(generator version {GENERATOR_VERSION}, seed {args.seed}), {args.image_size}x{args.image_size} crops "
          f"of the digit boxes grown {BOX_EXPAND:.0%}; {time.perf_counter() - started:.1f} s")
    head = f"{'statistic':<28}{'real p10 / p50 / p90':>24}{'synthetic p10 / p50 / p90':>29}{'median ratio':>14}"
    print(head)
    print("-" * len(head))
    for name in sides["real"]:
        r = np.percentile(sides["real"][name], [10, 50, 90])
        s = np.percentile(sides["synthetic"][name], [10, 50, 90])
        ratio = s[1] / r[1] if abs(r[1]) > 1e-9 else float("nan")
        print(f"{name:<28}{' / '.join(f'{v:.3f}' for v in r):>24}{' / '.join(f'{v:.3f}' for v in s):>29}"
              f"{ratio:>14.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
