"""How sure a report's figures are: each accuracy's 95% Wilson interval, the exact McNemar test of two
runs read on the same test images, and runs that differ only in their seed, grouped.

Counts come from MLflow: a held-out set's ``<set>_examples`` (and ``<set>_digit<p>_examples`` for the
per-position accuracies, else the logged per-example predictions); validation's from the run's data card
(``prepared.val.images``, and per position from its length histogram), or a ``val_examples`` metric
where training logs one. Two runs are read on the
same test images when their logged predictions name the same images with the same true numbers; their
difference is then tested pairwise (McNemar, on the images exactly one of them reads right). Otherwise,
or without predictions, two figures are within noise when their 95% Wilson intervals overlap. Runs scored on
different test data (another ``data.name``, or another ``data.options.test`` folder: synthetic numbers
against genuine ones, say) are not compared at all: their accuracies measure different things.
"""

from __future__ import annotations

import functools
import math
import statistics

from harness import MAX_DIGITS
from harness.evaluation.intervals import mcnemar, wilson, within_noise
from harness.reporting.gather import (
    PRIMARY,
    accuracies,
    metric,
    read_json,
    read_predictions,
    test_data,
)
from harness.reporting.text import missing

ACCURACIES = ("sequence_accuracy", "length_accuracy", *[f"digit{p}_accuracy" for p in range(1, MAX_DIGITS + 1)],
              "digit_accuracy")
_NOT_SETTINGS = {"name", "description", "model.parameters", "train.seed"}


# ------------------------------------------------------------------------------------- intervals

def measure(value, total) -> dict:
    """An accuracy as report.json holds it: value, right of total, and its 95% Wilson interval
    (``interval`` None where the count is not known)."""
    if missing(value):
        return {"value": None, "right": None, "total": None, "interval": None}
    if total is None or missing(total) or total <= 0:
        return {"value": float(value), "right": None, "total": None, "interval": None}
    total = int(total)
    right = int(round(float(value) * total))
    low, high = wilson(right, total)
    return {"value": float(value), "right": right, "total": total, "interval": [low, high]}


@functools.lru_cache(maxsize=256)
def _card_splits(run_id: str) -> dict:
    """The prepared splits of a run's data card (split -> images, length histogram), read once."""
    card = read_json(run_id, "data_card.json") or {}
    prepared = card.get("prepared") if isinstance(card.get("prepared"), dict) else card
    return {k: v for k, v in prepared.items() if isinstance(v, dict)} if isinstance(prepared, dict) else {}


def _card_count(run, split: str) -> int | None:
    info = _card_splits(run.run_id).get(split) or {}
    count = info.get("images", info.get("count"))
    return int(count) if isinstance(count, (int, float)) and count > 0 else None


def _card_digits(run, split: str) -> list[int] | None:
    """Examples with a digit at positions 1..5 of a split, from its card's length histogram."""
    lengths = (_card_splits(run.run_id).get(split) or {}).get("length_histogram")
    if not isinstance(lengths, dict):
        return None
    def at_least(p: int) -> int:
        return sum(int(n) for k, n in lengths.items() if k == ">5" or (str(k).isdigit() and int(k) >= p))
    return [at_least(p) for p in range(1, MAX_DIGITS + 1)]


def val_examples(run) -> int | None:
    """Images in the run's validation split: a ``val_examples`` metric, else its data card's count."""
    if not missing(value := metric(run, "val_examples")):
        return int(value)
    return _card_count(run, "val")


def totals(run, test_set: str, predictions=None) -> dict:
    """Accuracy name -> the number of examples it is a fraction of, on a held-out set (or ``val``): the
    logged counts, else the per-example predictions, else the data card."""
    if test_set == "val":
        n = val_examples(run)
    else:
        n = metric(run, f"{test_set}_examples")
        if missing(n):
            n = len(predictions) if predictions is not None else _card_count(run, test_set)
    n = None if n is None or missing(n) else int(n)
    out = {"sequence_accuracy": n, "length_accuracy": n}
    from_card = None
    digits = []
    for p in range(1, MAX_DIGITS + 1):
        count = metric(run, f"{test_set}_digit{p}_examples")
        if missing(count) and predictions is not None:
            count = int((predictions[f"true_d{p}"] < 10).sum())
        if missing(count):
            from_card = from_card or _card_digits(run, test_set) or [None] * MAX_DIGITS
            count = from_card[p - 1]
        out[f"digit{p}_accuracy"] = None if count is None or missing(count) else int(count)
        digits.append(out[f"digit{p}_accuracy"])
    out["digit_accuracy"] = sum(digits) if all(d is not None for d in digits) else None
    return out


def measures(run, test_set: str = PRIMARY, ranking: str = "val_sequence_accuracy", lower: bool = False,
             predictions=None) -> dict:
    """Every accuracy of a run on a held-out set (or ``val``) with its interval; coverage at 98% as a
    plain value (a fraction kept at an accuracy, not a proportion of right answers), and the examples."""
    values = accuracies(run, test_set, ranking, lower)
    counts = totals(run, test_set, predictions)
    out = {name: measure(values[name], counts.get(name)) for name in ACCURACIES}
    coverage = values.get("coverage_at_98")
    out["coverage_at_98"] = None if missing(coverage) else float(coverage)
    out["examples"] = counts.get("sequence_accuracy")
    return out


def overlap(a, b) -> bool | None:
    """Whether two intervals overlap (None where either is unknown)."""
    if not a or not b:
        return None
    return a[0] <= b[1] and b[0] <= a[1]


# ----------------------------------------------------------------------------------- comparisons

def paired(table_a, table_b):
    """The two runs' right/wrong per image, aligned by image name, where they were read on the same test
    images (same names, each once, same true numbers); else None."""
    if table_a is None or table_b is None or len(table_a) != len(table_b) or not len(table_a):
        return None
    a, b = table_a.set_index("name"), table_b.set_index("name")
    if not (a.index.is_unique and b.index.is_unique) or set(a.index) != set(b.index):
        return None
    b = b.loc[a.index]
    if not (a["true"].astype(str).to_numpy() == b["true"].astype(str).to_numpy()).all():
        return None
    return a["correct"].astype(bool).to_numpy(), b["correct"].astype(bool).to_numpy()


def same_test_data(params_a: dict, params_b: dict) -> bool:
    """Whether two runs' held-out figures come from the same test data: the same ``data.name`` and the same
    ``data.options.test`` folder (or neither names one)."""
    return test_data(params_a) == test_data(params_b)


def compare(a: dict, b: dict, table_a=None, table_b=None, same_data: bool = True) -> dict:
    """Whether run A's sequence accuracy differs from B's beyond noise. ``a``/``b``: their measures of
    sequence accuracy (``measure``). Exact McNemar where both were read on the same images (per-image
    predictions), else whether their 95% Wilson intervals overlap; not compared (``within_noise`` None) where
    ``same_data`` is false, as runs scored on different test data are not like for like."""
    out = {"difference": None if a["value"] is None or b["value"] is None else a["value"] - b["value"]}
    if not same_data:
        return {**out, "method": "different_data", "within_noise": None}
    pair = paired(table_a, table_b)
    if pair is not None:
        right_a, right_b = pair
        only_a, only_b = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
        p = mcnemar(only_a, only_b)
        return {**out, "method": "mcnemar", "images": int(len(right_a)), "only_a": only_a, "only_b": only_b,
                "p_value": p, "within_noise": within_noise(p)}
    both = overlap(a.get("interval"), b.get("interval"))
    return {**out, "method": "wilson_overlap", "within_noise": both}


def verdict(result: dict) -> str:
    """A comparison in words: the difference, the test and whether it is within noise."""
    if result.get("method") == "different_data":
        return "not compared: scored on different test data"
    if result.get("within_noise") is None:
        return "no interval (counts not logged)"
    diff = result.get("difference")
    shown = "" if diff is None else f"{100 * diff:+.2f} pp, "
    if result["method"] == "mcnemar":
        test = (f"McNemar p = {result['p_value']:.2g} on {result['images']:,} images "
                f"({result['only_a']} vs {result['only_b']} read right by one only)")
    else:
        test = "95% intervals " + ("overlap" if result["within_noise"] else "do not overlap")
    return f"{shown}{test}: " + ("**within noise**" if result["within_noise"] else "a real difference")


# ----------------------------------------------------------------------------------- seed groups

def setting(run) -> tuple:
    """The run's params less its seed and what only names it: runs with equal settings differ in seed only."""
    return tuple(sorted((k, v) for k, v in run.params.items()
                        if k not in _NOT_SETTINGS and not k.startswith("tracking.")))


def seed_groups(runs, scores: dict) -> list[list]:
    """Runs that differ only in ``train.seed`` (two seeds or more, each with a score), best group first."""
    groups: dict[tuple, list] = {}
    for run in runs:
        if not missing(scores.get(run.run_id)):
            groups.setdefault(setting(run), []).append(run)
    found = [g for g in groups.values() if len({r.params.get("train.seed") for r in g}) > 1]
    return sorted(found, key=lambda g: -statistics.fmean(scores[r.run_id] for r in g))


FOLD = "data.heldout_fold"


def fold_groups(runs, held_out: dict) -> list[dict]:
    """Runs of one setting whose test split is a different fold of their train folder (``data.heldout_fold``,
    no ``data.options.test``), per seed: the folds' test images pooled, right and total summed (with every
    fold, each image of the folder is read once), with its 95% Wilson interval. ``held_out``: run id -> its
    held-out sequence accuracy (``measure``, with counts). Most folds first, then the best pooled figure."""
    groups: dict[tuple, dict] = {}
    for run in runs:
        seq = held_out.get(run.run_id)
        if not seq or seq.get("right") is None or run.params.get("data.options.test"):
            continue
        key = tuple(item for item in setting(run) if item[0] != FOLD)
        by_fold = groups.setdefault(key, {}).setdefault(str(run.params.get("train.seed", "0")), {})
        by_fold.setdefault(str(run.params.get(FOLD, "0")), (run, seq))  # runs come best first
    out = []
    for by_seed in groups.values():
        if len({fold for by_fold in by_seed.values() for fold in by_fold}) < 2:
            continue
        for seed, by_fold in by_seed.items():
            folds = sorted(by_fold, key=int)
            right = sum(by_fold[f][1]["right"] for f in folds)
            total = sum(by_fold[f][1]["total"] for f in folds)
            out.append({"runs": [by_fold[f][0].run_id for f in folds], "seed": seed, "folds": folds,
                        "values": [by_fold[f][1]["value"] for f in folds], "right": right, "total": total,
                        "value": right / total, "interval": list(wilson(right, total))})
    return sorted(out, key=lambda g: (-len(g["folds"]), -g["value"]))


def spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1) of the seeds' values."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else math.nan)


def predictions_of(run, test_set: str = PRIMARY):
    """The run's logged per-example predictions on a held-out set, or None (validation has none)."""
    return None if test_set == "val" else read_predictions(run.run_id, test_set)
