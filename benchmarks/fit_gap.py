"""How far a model reads its own training images against the ones held out: fit or generalisation?

    python benchmarks/fit_gap.py MODEL PREPARED_DIR [--limit 2000]

MODEL: a .keras file, an MLflow run id or a registered model (``models:/real2000@champion``), as
``harness evaluate`` takes it. PREPARED_DIR: the prepared data folder the model trained on
(``data/prepared/<dataset>-<key>``, named in the run's data card), holding ``train.h5`` and ``test.h5``.

Training images are read as the held-out ones are (the centre crop, no augmentation), in two groups: the
source images (the genuine ones of a folder) and, where the run recombined digits
(``data.recombined``), the recombined numbers (``recombined/...``; at most ``--limit`` of them, the first).
For each group and the test split it prints the sequence accuracy with its 95% Wilson interval, the length
accuracy and the accuracy over all digits. A model that reads its genuine training images far better than the held-out ones is limited by
what it learns from them (variance), not by fitting them: more or more varied data and regularisation are
the levers, not longer training.

Figures only, no assertions (see DESIGN.md, benchmarks/).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.backend import load_keras  # noqa: E402

load_keras()

from harness.data.splitfile import PreparedSplit  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from harness.evaluation import loading  # noqa: E402
from harness.evaluation.evaluate import for_image_size  # noqa: E402
from harness.evaluation.intervals import wilson  # noqa: E402
from harness.models.heads import evaluate_arrays  # noqa: E402

RECOMBINED = "recombined/"  # harness.data.recombine's names


def read(model, split: PreparedSplit, rows: np.ndarray) -> dict:
    """Metrics of ``model`` on ``rows`` of ``split``, read at the centre crop as evaluation does."""
    at_size = for_image_size(model, split.image_size, split.path)
    logits = np.concatenate([np.asarray(at_size.predict(split.images(rows[i:i + 256]), verbose=0))
                             for i in range(0, len(rows), 256)])
    return evaluate_arrays(split.targets()[rows], logits)


def line(label: str, metrics: dict) -> str:
    n = int(metrics["examples"])
    low, high = wilson(round(metrics["sequence_accuracy"] * n), n)
    return (f"{label:<34} {n:>6,}  {100 * metrics['sequence_accuracy']:6.2f}% ({100 * low:.1f}-{100 * high:.1f})"
            f"  {100 * metrics['length_accuracy']:6.2f}%  {100 * metrics['digit_accuracy']:6.2f}%")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("prepared", type=Path)
    parser.add_argument("--limit", type=int, default=2000, help="recombined training numbers read at most")
    args = parser.parse_args(argv)
    try:
        model = loading.load(args.model).model
        train, test = PreparedSplit(args.prepared / "train.h5"), PreparedSplit(args.prepared / "test.h5")
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    names = np.array(train.names())
    recombined = np.char.startswith(names.astype(str), RECOMBINED)
    groups = [("train, source images", np.flatnonzero(~recombined)),
              ("train, recombined numbers", np.flatnonzero(recombined)[:args.limit])]
    print(f"{args.model} on {args.prepared}")
    print(f"{'images':<34} {'count':>6}  {'sequence (95% interval)':<23}  length   digits")
    start = time.perf_counter()
    for label, rows in groups:
        if len(rows):
            print(line(label, read(model, train, rows)), flush=True)
    print(line("test (held out)", read(model, test, np.arange(len(test)))))
    print(f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
