"""Gathering a report's runs from MLflow: the target, its ranking, and each run's values and artifacts.

Everything a report shows comes from here, read back from the tracking store: params (the resolved
spec), metrics and their per-epoch histories, tags, and the artifacts training logs (``spec.yaml``,
``data_card.json``, ``predictions/<test set>.csv.gz``, ``predictions/<test set>_worst.npz``).
Held-out metrics are ``<test set>_<metric>``: ``test_sequence_accuracy``, and e.g.
``test_resized_sequence_accuracy`` for a second test preprocessing.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import math
import re

import numpy as np
import pandas as pd

from harness import MAX_DIGITS
from harness.errors import HarnessError
from harness.reporting.text import comparable, missing
from harness.tracking import query

PRIMARY = "test"  # the held-out set every training run evaluates; others are extra preprocessings
TEST_DATA = ("data.name", "data.options.test")  # the params naming the data a run's held-out figures come from

_TEST_SET = re.compile(r"^(test(?:_\w+?)?)_sequence_accuracy$")


# ------------------------------------------------------------------------------ reading a run back

def metric(run: query.RunRecord, key: str) -> float:
    return float(run.metrics.get(key, float("nan")))


def epochs_done(run: query.RunRecord) -> int | None:
    """Epochs that finished (early stopping may end a run before ``train.epochs``): the last step of the
    per-epoch metrics (held-out metrics are logged once, at step 0)."""
    steps = [s for points in run.history.values() for s, _ in points if s > 0]
    return max(steps) if steps else None


def images_per_second(run: query.RunRecord) -> float:
    """Median training throughput over epochs (the first epoch includes compilation)."""
    values = [v for _, v in run.history.get("images_per_sec", [])]
    return float(np.median(values)) if values else float("nan")


def wall_seconds(run: query.RunRecord) -> float:
    for key in ("wall_seconds", "trial_seconds"):  # a training run's, a sweep trial's
        if key in run.metrics:
            return run.metrics[key]
    return (run.end_time - run.start_time) if run.end_time else float("nan")


def test_data(params: dict) -> tuple:
    """What a run's held-out figures were scored on: its dataset and test folder (None where it names none).
    Runs are compared, and ranked against each other, only where this is the same."""
    return tuple(params.get(key) for key in TEST_DATA)


def held_out_sets(runs) -> list[str]:
    """Held-out sets the runs were evaluated on (metric prefixes), ``test`` first."""
    found = {m.group(1) for run in runs for key in run.metrics if (m := _TEST_SET.match(key))}
    return sorted(found, key=lambda prefix: (prefix != PRIMARY, prefix))


# --------------------------------------------------------------------------------------- targets

@dataclasses.dataclass
class Target:
    """What a report covers: runs ranked best first by ``objective`` (``scores``: run id -> value)."""

    kind: str  # run | runs | experiment | sweep
    title: str
    runs: list
    objective: str
    scores: dict
    parent: query.RunRecord | None = None
    experiment: str | None = None
    lower: bool = False  # the objective is a loss: lower is better


def by_test_data(ranked: list) -> list:
    """``ranked`` (best first) kept in order within each test data (``test_data``), the test data apart (see
    ``apart``). A report of a recipe's steps (synthetic pretraining, then fine-tunings on genuine numbers)
    ranks and leads with the fine-tunings, not with the pretraining's figure on other data."""
    return apart(ranked, lambda r: test_data(r.params), lambda r: comparable(r.params.get("data.name"), PRIMARY),
                 lambda r: r.start_time)


def apart(ranked: list, key, on_svhn, started) -> list:
    """``ranked`` kept in order within each group of equal ``key(run)``, the groups one after another: those
    on SVHN's test split (``on_svhn(run)``) first, then the one of the most runs, then the one of the
    latest run (``started(run)``)."""
    groups: dict = {}
    for run in ranked:
        groups.setdefault(key(run), []).append(run)
    order = sorted(groups.values(), key=lambda g: max(started(r) for r in g), reverse=True)
    order = sorted(order, key=lambda g: (not on_svhn(g[0]), -len(g)))
    return [run for group in order for run in group]


def firsts(ranked: list, key) -> list:
    """The first item of each group of equal ``key(item)``, in ``ranked``'s order (the leader of each test data)."""
    return list({key(run): run for run in reversed(ranked)}.values())[::-1]


HISTORY = ("loss", "val_loss", "sequence_accuracy", "val_sequence_accuracy", "images_per_sec")
VALIDATION = ("sequence_accuracy", "length_accuracy", *[f"digit{p}_accuracy" for p in range(1, MAX_DIGITS + 1)])


def load_target(*, experiment: str | None = None, sweep: str | None = None,
                runs: list[str] | None = None) -> Target:
    """Read a report's runs from MLflow; exactly one of the three targets."""
    if sum(bool(x) for x in (experiment, sweep, runs)) != 1:
        raise HarnessError("a report needs exactly one target: --experiment NAME, --sweep PARENT_RUN_ID "
                           "or --runs RUN_ID [RUN_ID ...]")
    parent = query.get_run(sweep) if sweep else None
    # per-epoch histories cost one query per metric and run: read only those the report draws
    history = set(HISTORY) | _objective_words(parent)
    if runs:
        records = query.get_runs(list(dict.fromkeys(runs)), history)
        kind = "run" if len(records) == 1 else "runs"
    elif experiment:
        records, kind = query.find_runs(experiment=experiment, history_keys=history), "experiment"
        if not records:
            raise HarnessError(f"MLflow experiment '{experiment}' has no runs")
    else:
        records, kind = query.find_runs(parent_run_id=sweep, history_keys=history), "sweep"
        if not records:
            raise HarnessError(f"run '{sweep}' has no nested trial runs (is it the parent run of a sweep?)")
    objective, lower = _objective(parent, records)
    scores = {r.run_id: _score(r, objective, lower) for r in records}
    if not held_out_sets(records):  # validation metrics stand in; read their histories for the best epoch
        for run in records:
            for key in (f"val_{m}" for m in VALIDATION):
                if key in run.metrics and key not in run.history:
                    run.history[key] = query.metric_history(run.run_id, key)
    order = sorted(records, key=lambda r: (missing(scores[r.run_id]),
                                           (1 if lower else -1) * (0 if missing(scores[r.run_id]) else scores[r.run_id]),
                                           r.start_time))
    order = by_test_data(order)
    title = {"run": records[0].name, "runs": f"{len(records)} runs", "experiment": f"Experiment {experiment}",
             "sweep": f"Sweep {parent.name if parent else ''}"}[kind]
    return Target(kind, title, order, objective, scores, parent, experiment, lower)


def _objective_settings(parent) -> dict[str, str]:
    """A sweep parent's params and tags naming its objective (``sweep.objective``, ``harness.objective``,
    a KerasTuner ``Objective(...)`` text) and direction (``sweep.direction``)."""
    if parent is None:
        return {}
    return {k: v for k, v in sorted({**parent.params, **parent.tags}.items())
            if k.split(".")[-1].endswith(("objective", "direction"))}


def _objective_words(parent) -> set[str]:
    return {w for v in _objective_settings(parent).values() for w in re.findall(r"\w+", v)}


def _objective(parent, runs) -> tuple[str, bool]:
    """The metric ranking the runs, and whether lower is better: a sweep's objective as its parent
    names it; otherwise held-out sequence accuracy, or validation sequence accuracy for runs never
    evaluated on a held-out set.
    """
    known = {key for run in runs for key in run.metrics}
    settings = _objective_settings(parent)
    direction = next((v.lower() for k, v in settings.items() if k.endswith("direction")), "")
    for key, value in settings.items():
        named = sorted((k for k in known if re.search(rf"\b{re.escape(k)}\b", value)), key=len, reverse=True)
        if key.endswith("objective") and named:
            return named[0], (direction == "min" or "min" in value.lower() or named[0].endswith("loss"))
    if f"{PRIMARY}_sequence_accuracy" in known:
        return f"{PRIMARY}_sequence_accuracy", False
    return "val_sequence_accuracy", False


def best_step(run, key: str, lower: bool = False) -> int | None:
    """The epoch with the best value of a per-epoch metric (the first such epoch on ties)."""
    points = sorted((step, v) for step, v in run.history.get(key, []) if step > 0 and not math.isnan(v))
    if not points:
        return None
    best = (min if lower else max)(v for _, v in points)
    return next(step for step, v in points if v == best)


def _score(run, key: str, lower: bool) -> float:
    """A run's objective: the best epoch for per-epoch metrics (as KerasTuner scores a trial)."""
    values = [v for s, v in run.history.get(key, []) if s > 0 and not math.isnan(v)]
    if len(values) > 1:
        return min(values) if lower else max(values)
    return float(run.metrics.get(key, values[-1] if values else float("nan")))


def accuracies(run, test_set: str = PRIMARY, ranking: str = "val_sequence_accuracy", lower: bool = False) -> dict:
    """Accuracy name (``sequence_accuracy``, ``digit3_accuracy``, ...) -> value on a held-out set; for
    ``val``, the validation values at the run's best epoch by ``ranking`` (the weights a run keeps)."""
    names = [*VALIDATION, "digit_accuracy", "coverage_at_98", "examples"]
    if test_set != "val":
        return {name: metric(run, f"{test_set}_{name}") for name in names}
    step = best_step(run, ranking if ranking.startswith("val_") else "val_sequence_accuracy",
                     lower and ranking.startswith("val_"))
    at = {name: dict(run.history.get(f"val_{name}", [])).get(step, float("nan")) for name in names}
    return {name: float(value) for name, value in at.items()}


# ------------------------------------------------------------------------------------- artifacts

def read_predictions(run_id: str, test_set: str = PRIMARY) -> pd.DataFrame | None:
    """The per-example predictions training logged for a held-out set, or None."""
    raw = query.read_artifact(run_id, f"predictions/{test_set}.csv.gz")
    if raw is None:
        return None
    return pd.read_csv(io.BytesIO(gzip.decompress(raw)), keep_default_na=False,
                       dtype={"name": str, "true": str, "predicted": str})


def read_worst(run_id: str, test_set: str = PRIMARY) -> dict | None:
    raw = query.read_artifact(run_id, f"predictions/{test_set}_worst.npz")
    if raw is None:
        return None
    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def read_json(run_id: str, path: str) -> dict | None:
    raw = query.read_artifact(run_id, path)
    try:
        return json.loads(raw) if raw is not None else None
    except ValueError:
        return None


def by_length(predictions: pd.DataFrame) -> dict[int, tuple[int, int]]:
    """True length class (0..5, MAX_DIGITS + 1 for ">5") -> (right, total): the whole number read right,
    over the logged per-example predictions of that length."""
    counts = predictions["correct"].astype(bool).groupby(predictions["true_length"].astype(int)).agg(["sum", "count"])
    return {int(n): (int(right), int(total)) for n, (right, total) in counts.iterrows()}


def digit_confusion(predictions: pd.DataFrame) -> np.ndarray:
    """(10, 10) counts: rows the true digit, columns the digit head's argmax, over present positions."""
    matrix = np.zeros((10, 10), dtype=np.int64)
    for p in range(1, MAX_DIGITS + 1):
        true, head = predictions[f"true_d{p}"].to_numpy(), predictions[f"head_d{p}"].to_numpy()
        present = true < 10
        np.add.at(matrix, (true[present], head[present]), 1)
    return matrix
