"""Result reports, generated from what MLflow holds (never from memory or local ``runs/`` folders).

A report covers one or more runs, an experiment (its runs, less sweep parents) or a sweep (the nested
trial runs of a parent run). ``generate_report`` writes ``reports/<name>/README.md`` (or a
self-contained ``index.html`` with the figures embedded as data URIs), ``figures/*.png`` and
``report.json`` (what the index reads), logs the report to each run it covers (a sweep: to its
parent), and rewrites ``reports/README.md``, the index of every report in that folder.

Everything comes from MLflow: params (the resolved spec), metrics and their per-epoch histories, tags
(command, git commit, backend, device, versions) and artifacts (``spec.yaml``, ``data_card.json``,
``predictions/<test set>.csv.gz`` and ``predictions/<test set>_worst.npz`` written by training).
Held-out metrics are ``<test set>_<metric>``: ``test_sequence_accuracy``, and e.g.
``test_resized_sequence_accuracy`` for a second test preprocessing; each test set gets its table.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import html
import io
import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from harness import MAX_DIGITS, atomic
from harness.errors import HarnessError
from harness.tracking import log, query, store

# Published whole-number (sequence) accuracies on SVHN this harness measures against.
GOODFELLOW_2014 = 0.9603
GOODFELLOW_2014_DIGIT = 0.9784
REPORT_CONV_ONLY = 0.924
REFERENCES = (("Goodfellow 2014", GOODFELLOW_2014), ("the report's conv-only variant", REPORT_CONV_ONLY))

PRIMARY = "test"  # the held-out set every training run evaluates; others are extra preprocessings
TOP = 8  # runs drawn individually in the per-run figures; the rest are grey
INDEX_MARK = "<!-- index of harness reports: rewritten whenever a report is written -->"
_TEST_SET = re.compile(r"^(test(?:_\w+?)?)_sequence_accuracy$")
_NOT_HYPERPARAMETERS = {"name", "description", "model.parameters"}


# ------------------------------------------------------------------------------------- formatting

def _nan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _pct(value) -> str:
    return "–" if _nan(value) else f"{100 * value:.2f}%"


def _gap(value, reference: float) -> str:
    """Percentage points to a reference; a check mark where the reference is met."""
    if _nan(value):
        return "–"
    return f"{'✅ ' if value >= reference else ''}{100 * (value - reference):+.2f} pp"


def _duration(seconds) -> str:
    if _nan(seconds):
        return "–"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 90 * 60 else f"{seconds / 3600:.1f} h"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _label(run: query.RunRecord) -> str:
    return f"{run.name} ({run.run_id[:8]})"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-.") or "report"


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


def held_out_sets(runs) -> list[str]:
    """Held-out sets the runs were evaluated on (metric prefixes), ``test`` first."""
    found = {m.group(1) for run in runs for key in run.metrics if (m := _TEST_SET.match(key))}
    return sorted(found, key=lambda prefix: (prefix != PRIMARY, prefix))


def _data_text(params: dict) -> str:
    options = [f"{k[len('data.options.'):]}={v}" for k, v in sorted(params.items())
               if k.startswith("data.options.")]
    text = params.get("data.name", "?") + (f" ({', '.join(options)})" if options else "")
    if "data.preprocessing" in params:  # the paper's 64x64 crops, or the report's 74x74
        size = params.get("data.image_size", "?")
        text += f", {params['data.preprocessing']} preprocessing {size}x{size}"
    return text


def _epochs_text(run: query.RunRecord) -> str:
    done, planned = epochs_done(run), run.params.get("train.epochs")
    if done is None:
        return planned or "–"
    return str(done) if planned in (None, str(done)) else f"{done} of {planned}"


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
    order = sorted(records, key=lambda r: (_nan(scores[r.run_id]),
                                           (1 if lower else -1) * (0 if _nan(scores[r.run_id]) else scores[r.run_id]),
                                           r.start_time))
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


def default_name(target: Target) -> str:
    if target.kind == "run":
        return _slug(target.runs[0].name)
    if target.kind == "experiment":
        return "experiment-" + _slug(target.experiment)
    if target.kind == "sweep":
        name = _slug(target.parent.name or target.parent.run_id[:8])
        return name if name.startswith("sweep") else f"sweep-{name}"
    ids = sorted(r.run_id[:8] for r in target.runs)
    return "runs-" + ("-".join(ids) if len(ids) <= 3 else f"{ids[0]}-and-{len(ids) - 1}-more")


def report_command(target: Target, out_dir: Path, fmt: str) -> str:
    """The `harness report` command that rebuilds this report from MLflow."""
    what = {"experiment": f"--experiment {target.experiment}",
            "sweep": f"--sweep {target.parent.run_id if target.parent else ''}"}.get(
        target.kind, "--runs " + " ".join(sorted(r.run_id for r in target.runs)))
    return f"harness report {what} --out {out_dir}" + (" --format html" if fmt == "html" else "")


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


def _read_json(run_id: str, path: str) -> dict | None:
    raw = query.read_artifact(run_id, path)
    try:
        return json.loads(raw) if raw is not None else None
    except ValueError:
        return None


def digit_confusion(predictions: pd.DataFrame) -> np.ndarray:
    """(10, 10) counts: rows the true digit, columns the digit head's argmax, over present positions."""
    matrix = np.zeros((10, 10), dtype=np.int64)
    for p in range(1, MAX_DIGITS + 1):
        true, head = predictions[f"true_d{p}"].to_numpy(), predictions[f"head_d{p}"].to_numpy()
        present = true < 10
        np.add.at(matrix, (true[present], head[present]), 1)
    return matrix


# ------------------------------------------------------------------------------------- the tables

RUN_COLUMNS = ["Run", "Model", "Policy", "Data", "Epochs", "Wall time", "Images/s"]
ACCURACY_COLUMNS = (["Sequence (global)", "Length"] + [f"Digit {p}" for p in range(1, MAX_DIGITS + 1)]
                    + ["All digits", "Coverage at 98%", "vs Goodfellow 2014 (96.03%)", "vs report (92.4%)"])


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


def headline_rows(runs, test_set: str = PRIMARY, ranking: str = "val_sequence_accuracy",
                  lower: bool = False) -> list[list[str]]:
    """One row per run (RUN_COLUMNS + ACCURACY_COLUMNS), then the two published reference rows."""
    rows = []
    for run in runs:
        p, v = run.params, accuracies(run, test_set, ranking, lower)
        seq, ips = v["sequence_accuracy"], images_per_second(run)
        rows.append([
            f"{run.name} `{run.run_id[:8]}`", p.get("model.name", "–"), p.get("augment.policy", "–"),
            _data_text(p), _epochs_text(run), _duration(wall_seconds(run)), "–" if _nan(ips) else f"{ips:,.0f}",
            "–" if _nan(seq) else f"**{_pct(seq)}**", _pct(v["length_accuracy"]),
            *[_pct(v[f"digit{d}_accuracy"]) for d in range(1, MAX_DIGITS + 1)],
            _pct(v["digit_accuracy"]), _pct(v["coverage_at_98"]),
            _gap(seq, GOODFELLOW_2014), _gap(seq, REPORT_CONV_ONLY),
        ])
    blank = [""] * (len(RUN_COLUMNS) - 1)
    dashes = ["–"] * MAX_DIGITS
    rows.append(["Goodfellow et al. 2014 (SVHN)", *blank, _pct(GOODFELLOW_2014), "–", *dashes,
                 _pct(GOODFELLOW_2014_DIGIT), "–", "", ""])
    rows.append(["Report, conv-only variant (SVHN)", *blank, _pct(REPORT_CONV_ONLY), "–", *dashes, "–", "–", "", ""])
    return rows


def headline_table(run: query.RunRecord) -> str:
    """The held-out table of one run, in markdown."""
    return _markdown_table(RUN_COLUMNS + ACCURACY_COLUMNS, headline_rows([run]))


def varying_params(runs) -> list[str]:
    """Params whose value differs between the runs (hyperparameters of a sweep), spec keys first."""
    keys = {k for run in runs for k in run.params if k not in _NOT_HYPERPARAMETERS
            and not k.startswith("tracking.")}
    varying = [k for k in keys if len({run.params.get(k) for run in runs}) > 1]
    return sorted(varying, key=lambda k: ("." not in k, k))


def _history_table(run: query.RunRecord) -> list[list[str]] | None:
    keys = [k for k in ("loss", "sequence_accuracy", "val_loss", "val_sequence_accuracy", "images_per_sec")
            if k in run.history]
    if not keys:
        return None
    lookup = {k: dict(run.history[k]) for k in keys}
    rows = [["epoch", *keys]]
    for step in sorted({s for k in keys for s in lookup[k]}):
        cells = [lookup[k].get(step) for k in keys]
        rows.append([str(step)] + ["–" if v is None else (f"{v:.1f}" if k == "images_per_sec" else f"{v:.4f}")
                                   for k, v in zip(keys, cells)])
    return rows


# ------------------------------------------------------------------------------------ the figures

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never a window, works without a display
    import matplotlib.pyplot as plt
    import seaborn as sns

    return plt, sns


def _png(fig) -> bytes:
    plt, _ = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)  # laid out when made: one draw, not two
    plt.close(fig)
    return buffer.getvalue()


def fig_learning_curves(runs):
    pairs = [("loss", "val_loss", "loss"), ("sequence_accuracy", "val_sequence_accuracy", "sequence accuracy")]
    if not any(k in run.history for run in runs for pair in pairs for k in pair[:2]):
        return None
    plt, sns = _pyplot()
    shown = min(len(runs), TOP if len(runs) <= TOP else 5)
    colours = sns.color_palette("tab10", max(shown, 1))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), layout="constrained")
    for rank, run in enumerate(runs):
        highlight = rank < shown
        for ax, (train_key, val_key, _) in zip(axes, pairs):
            for key, style in ((train_key, "--"), (val_key, "-")):
                points = sorted((s, v) for s, v in run.history.get(key, []) if s > 0)
                if not points:
                    continue
                steps, values = zip(*points)
                ax.plot(steps, values, style, marker="o" if len(points) < 30 and highlight else None, ms=3,
                        color=colours[rank] if highlight else "0.78", lw=1.8 if highlight else 0.8,
                        zorder=3 + len(runs) - rank,  # the best on top
                        label=_label(run) if highlight and key == val_key else None)
    for ax, (_, _, title) in zip(axes, pairs):
        ax.set_xlabel("epoch")
        ax.set_title(f"{title} (dashed: train, solid: validation)", fontsize=10)
    axes[1].axhline(GOODFELLOW_2014, ls=":", color="k", lw=1, label="Goodfellow 2014 (96.03%)")
    if len(runs) > shown:
        axes[1].plot([], [], color="0.78", lw=0.8, label=f"{len(runs) - shown} other runs")
    axes[1].set_ylim(0, 1)
    axes[1].legend(fontsize=8, loc="lower right")
    return fig


def fig_per_position(runs, test_sets: list[str], ranking: str = "val_sequence_accuracy", lower: bool = False):
    single = len(runs) == 1 and len(test_sets) > 1
    rows = []
    for run in runs[:TOP]:
        for test_set in (test_sets if single else test_sets[:1] or ["val"]):
            values = accuracies(run, test_set, ranking, lower)
            for p in range(1, MAX_DIGITS + 1):
                value = values[f"digit{p}_accuracy"]
                if not _nan(value):
                    rows.append({"position": f"digit {p}", "accuracy": value,
                                 "series": test_set if single else _label(run)})
    if not rows:
        return None
    plt, sns = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.2), layout="constrained")
    sns.barplot(data=pd.DataFrame(rows), x="position", y="accuracy", hue="series", ax=ax,
                order=[f"digit {p}" for p in range(1, MAX_DIGITS + 1)])
    ax.axhline(GOODFELLOW_2014_DIGIT, ls=":", color="k", lw=1, label="Goodfellow 2014, all digits (97.84%)")
    ax.set_ylim(0, 1)
    ax.set_xlabel("position in the number (over examples that have it)")
    ax.legend(fontsize=8, loc="lower left")
    return fig


def fig_confusion(predictions: pd.DataFrame, title: str):
    matrix = digit_confusion(predictions)
    if not matrix.sum():
        return None
    plt, sns = _pyplot()
    rate = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7.5, 6.3), layout="constrained")
    sns.heatmap(rate, annot=matrix, fmt="d", cmap="Blues", vmin=0, vmax=1, ax=ax, annot_kws={"fontsize": 7},
                cbar_kws={"label": "fraction of the true digit"})
    ax.set_xlabel("predicted digit (digit head)")
    ax.set_ylabel("true digit")
    ax.set_title(f"{title}: {int(matrix.sum())} digits, {100 * np.trace(matrix) / matrix.sum():.2f}% right",
                 fontsize=10)
    return fig


def fig_coverage(curves: list[tuple[str, pd.DataFrame]]):
    from harness.models.heads import coverage_at, coverage_curve

    curves = [(label, df) for label, df in curves if len(df)]
    if not curves:
        return None
    plt, sns = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.6), layout="constrained")
    colours = sns.color_palette("tab10", len(curves))
    for colour, (label, df) in zip(colours, curves):
        correct, confidence = df["correct"].to_numpy(bool), df["confidence"].to_numpy(float)
        coverage, accuracy = coverage_curve(correct, confidence)
        at98 = coverage_at(correct, confidence, 0.98)
        ax.plot(coverage, accuracy, color=colour, lw=1.6, label=f"{label}: {100 * at98:.1f}% coverage at 98%")
        if at98 > 0:
            ax.plot([at98], [accuracy[int(round(at98 * len(df))) - 1]], "o", color=colour)
    ax.axhline(0.98, ls=":", color="k", lw=1, label="98% accuracy (Goodfellow 2014's operating point)")
    ax.set_xlabel("coverage (fraction kept, most confident first)")
    ax.set_ylabel("sequence accuracy of the kept")
    ax.set_xlim(0, 1)
    ax.set_ylim(max(0.0, min(ax.get_ylim()[0], 0.9)), 1.005)
    ax.legend(fontsize=8, loc="lower left")
    return fig


def fig_gallery(worst: dict, title: str):
    """The crops tiled into one image (one axes: far quicker to draw than one axes per crop)."""
    images = worst["images"]
    if not len(images):
        return None
    plt, _ = _pyplot()
    columns = min(6, len(images))
    lines = math.ceil(len(images) / columns)
    size, pad = images.shape[1], max(images.shape[1] // 8, 4)
    caption = max(round(size * 0.4), 24)  # two lines of 8-point text at the scale below
    cell_w, cell_h = size + pad, size + pad + caption
    mosaic = np.full((lines * cell_h, columns * cell_w, 3), 255, dtype=np.uint8)
    scale = 2.2 / 100  # inches per mosaic pixel at 100 dpi: a 64-pixel crop is drawn 141 pixels wide
    fig, ax = plt.subplots(figsize=(mosaic.shape[1] * scale, mosaic.shape[0] * scale + 0.35), layout="constrained")
    for i, crop in enumerate(images):
        top, left = (i // columns) * cell_h + caption, (i % columns) * cell_w + pad // 2
        mosaic[top:top + size, left:left + size] = crop
        ax.text(left + size / 2, top - 3, f"true {worst['true'][i] or '∅'}\nread {worst['predicted'][i] or '∅'} "
                f"({100 * float(worst['confidence'][i]):.0f}%)", ha="center", va="bottom", fontsize=8)
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    return fig


def fig_leaderboard(runs, scores: dict, objective: str):
    """The runs (in their ranked order, the first 40) by their objective."""
    shown = [r for r in runs if not _nan(scores[r.run_id])][:40]
    if len(shown) < 2:
        return None
    plt, sns = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.26 * len(shown)), layout="constrained")
    values = [scores[r.run_id] for r in shown]
    ax.barh(range(len(shown)), values, color=sns.color_palette("viridis", len(shown)))
    ax.set_yticks(range(len(shown)), [_label(r) for r in shown], fontsize=8)
    ax.invert_yaxis()
    for y, value in enumerate(values):
        ax.text(value, y, f" {100 * value:.2f}%" if "accuracy" in objective else f" {value:.4g}",
                va="center", fontsize=7)
    if "accuracy" in objective:
        for (name, reference), style in zip(REFERENCES, (":", "--")):
            ax.axvline(reference, ls=style, color="k", lw=1, label=f"{name} ({100 * reference:.2f}%)")
        ax.legend(fontsize=8, loc="lower right")
        ax.set_xlim(0, 1.08)
    ax.set_xlabel(objective)
    ax.set_title(f"{len(shown)} best of {len(runs)} runs by {objective}", fontsize=10)
    return fig


def fig_hyperparameters(runs, scores: dict, objective: str, keys: list[str]):
    keys = keys[:12]
    if not keys or all(_nan(scores[run.run_id]) for run in runs):
        return None
    plt, sns = _pyplot()
    columns = min(3, len(keys))
    lines = math.ceil(len(keys) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.3 * lines), squeeze=False, layout="constrained")
    for ax, key in zip(axes.flat, keys):
        points = [(run.params.get(key, ""), scores[run.run_id]) for run in runs if not _nan(scores[run.run_id])]
        numbers = _numeric([v for v, _ in points])
        if numbers is not None:
            ax.scatter(numbers, [s for _, s in points], s=18, alpha=0.8)
            positive = [x for x in numbers if x > 0]
            if len(positive) == len(numbers) and max(numbers) / min(numbers) >= 20:
                ax.set_xscale("log")
        else:
            frame = pd.DataFrame({"value": [v for v, _ in points], "score": [s for _, s in points]})
            sns.stripplot(data=frame, x="value", y="score", ax=ax, size=4, alpha=0.8,
                          order=sorted(set(frame["value"])))
            ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.set_xlabel(key)
        ax.set_ylabel(objective, fontsize=8)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    return fig


def _numeric(values) -> list[float] | None:
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    return numbers if all(math.isfinite(x) for x in numbers) else None


# ---------------------------------------------------------------------------- the document model

class _Doc:
    """Blocks (heading, paragraph, table, figure, code) rendered to markdown or to one HTML file."""

    def __init__(self):
        self.blocks: list[tuple] = []
        self.figures: dict[str, bytes] = {}

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def table(self, rows: list[list[str]]):
        self.blocks.append(("table", rows))

    def code(self, text: str, language: str = ""):
        self.blocks.append(("code", text, language))

    def figure(self, name: str, fig, caption: str) -> bool:
        if fig is None:
            return False
        self.figures[name] = _png(fig)
        self.blocks.append(("figure", name, caption))
        return True

    def markdown(self) -> str:
        out = []
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                out.append("#" * block[1] + " " + block[2])
            elif kind == "p":
                out.append(block[1])
            elif kind == "table":
                out.append(_markdown_table(block[1][0], block[1][1:]))
            elif kind == "code":
                out.append(f"```{block[2]}\n{block[1].rstrip()}\n```")
            else:
                out.append(f"![{block[2]}](figures/{block[1]})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        body = []
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                body.append(f"<h{block[1]}>{_inline(block[2])}</h{block[1]}>")
            elif kind == "p":
                body.append(f"<p>{_inline(block[1])}</p>")
            elif kind == "table":
                head = "".join(f"<th>{_inline(c)}</th>" for c in block[1][0])
                rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>"
                               for row in block[1][1:])
                body.append(f"<div class=scroll><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>")
            elif kind == "code":
                body.append(f"<pre><code>{html.escape(block[1].rstrip())}</code></pre>")
            else:
                data = base64.b64encode(self.figures[block[1]]).decode()
                alt = html.escape(block[2], quote=True)
                body.append(f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{_inline(block[2])}</figcaption></figure>")
        return (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
                f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}"
        "th{background:#f3f3f3}.scroll{overflow-x:auto}code{background:#f5f5f5;padding:0 3px}"
        "pre{background:#f5f5f5;padding:.8em;overflow-x:auto}img{max-width:100%}figcaption{color:#555;font-size:13px}")


def _inline(text: str) -> str:
    """Markdown's inline `code`, **bold** and [links](url) as HTML; everything else escaped."""
    parts = re.split(r"(`[^`]+`)", text)
    out = []
    for part in parts:
        if len(part) > 1 and part.startswith("`") and part.endswith("`"):
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        escaped = html.escape(part, quote=False)
        escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
        escaped = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', escaped)
        out.append(escaped)
    return "".join(out)


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(cell(c) for c in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- the contents

def build_document(target: Target, rebuild: str, origin_command: str | None = None) -> tuple[_Doc, dict]:
    """The report of ``target``, and its summary for the index."""
    doc, runs = _Doc(), target.runs
    best, sets = runs[0], held_out_sets(runs)
    doc.h(1, target.title)
    if origin_command and origin_command != rebuild:
        doc.p(f"Regenerate: `{origin_command}` (runs it again). Rebuild this page from MLflow: `{rebuild}`")
    else:
        doc.p(f"Regenerate: `{rebuild}`")
    covered = {"run": f"MLflow run `{best.run_id}` ({best.status}, started {_when(best.start_time)})",
               "runs": f"{len(runs)} MLflow runs",
               "experiment": f"{_count(len(runs), 'run')} of MLflow experiment `{target.experiment}`",
               "sweep": f"{_count(len(runs), 'trial')} of sweep run `{target.parent.run_id if target.parent else ''}`"}
    doc.p(f"Generated {_when(datetime.now(timezone.utc).timestamp())} from {covered[target.kind]} "
          f"in `{store.display_uri()}`.")
    unfinished = [r for r in runs if r.status != "FINISHED"]
    if unfinished and target.kind != "run":
        doc.p(f"Not finished: {', '.join(f'`{_label(r)}` ({r.status})' for r in unfinished)}.")

    best_seq = metric(best, f"{PRIMARY}_sequence_accuracy")
    if target.kind != "run":
        doc.p(_best_line(best, best_seq, target))
    _accuracy_section(doc, target, sets)
    if target.kind == "run":
        _run_section(doc, best)
    else:
        _comparison_section(doc, target)
    _curves_section(doc, target, sets)
    _errors_section(doc, target, sets)
    _reproducibility_section(doc, target)
    held_out = [v for r in runs if not _nan(v := metric(r, f"{PRIMARY}_sequence_accuracy"))]
    covers = {"run": "1 run", "runs": f"{len(runs)} runs",
              "experiment": f"{_count(len(runs), 'run')} of `{target.experiment}`",
              "sweep": f"{_count(len(runs), 'sweep trial')}"}[target.kind]
    summary = {"title": target.title, "kind": target.kind, "covers": covers, "runs": len(runs),
               "best_run": best.run_id, "best_sequence_accuracy": max(held_out) if held_out else None,
               "command": rebuild}
    return doc, summary


def _best_line(best, seq: float, target: Target) -> str:
    if _nan(seq):
        value = target.scores[best.run_id]
        shown = _pct(value) if "accuracy" in target.objective else f"{value:.4g}"
        return f"Best by `{target.objective}`: `{_label(best)}`" + ("." if _nan(value) else f", {shown}.")
    gaps = ", ".join(f"{'✅ meets' if seq >= ref else f'{100 * (ref - seq):.2f} pp below'} {name} ({_pct(ref)})"
                     for name, ref in REFERENCES)
    return f"Best held-out sequence accuracy: **{_pct(seq)}**, `{_label(best)}`: {gaps}."


def _accuracy_section(doc: _Doc, target: Target, sets: list[str]) -> None:
    doc.h(2, "Held-out accuracy" if sets else "Validation accuracy")
    if not sets:
        ranking = target.objective if target.objective.startswith("val_") else "val_sequence_accuracy"
        doc.p(f"No run was evaluated on a held-out test set (no `test_` metrics): validation accuracy at "
              f"each run's best epoch by `{ranking}`, the weights the run keeps.")
    for test_set in sets or ["val"]:
        if len(sets) > 1:
            doc.h(3, f"Test set `{test_set}`")
        doc.table([RUN_COLUMNS + ACCURACY_COLUMNS, *headline_rows(target.runs, test_set, target.objective,
                                                                  target.lower)])
        examples = {int(metric(r, f"{test_set}_examples")) for r in target.runs
                    if not _nan(metric(r, f"{test_set}_examples"))}
        if examples:
            doc.p(f"Held-out examples: {', '.join(str(n) for n in sorted(examples))}.")
    doc.p("Sequence (global) accuracy: the whole number right. Digit p: accuracy of the p-th digit over "
          "examples that have one. Coverage at 98%: the fraction kept, rejecting the least confident, at "
          "98% sequence accuracy.")
    datasets = sorted({r.params.get("data.name", "?") for r in target.runs})
    note = ("✅ marks a result at or above the reference. The reference rows are published results on real "
            "SVHN")
    if datasets != ["svhn"]:
        note += (f"; this data is {', '.join(f'`{d}`' for d in datasets)}, so they are a yardstick, not a "
                 "like-for-like comparison")
    doc.p(note + ". Epochs: finished (of planned). Images/s: median training throughput over epochs.")


def _run_section(doc: _Doc, run) -> None:
    p = run.params
    parameters = p.get("model.parameters")
    doc.h(2, "Run")
    doc.table([["", ""],
               ["Model", f"`{p.get('model.name')}`" + (f" ({int(float(parameters)):,} parameters)" if parameters else "")],
               ["Augmentation policy", f"`{p.get('augment.policy')}` (crop {p.get('augment.crop_size')})"],
               ["Data", f"`{_data_text(p)}`"],
               ["Optimizer", f"{p.get('train.optimizer')}, lr {p.get('train.learning_rate')}, "
                             f"{p.get('train.schedule')} schedule, batch {p.get('train.batch_size')}, "
                             f"{_epochs_text(run)} epochs"],
               ["Wall time", _duration(wall_seconds(run))]])


def _comparison_section(doc: _Doc, target: Target) -> None:
    runs, keys = target.runs, varying_params(target.runs)
    doc.h(2, "Sweep" if target.kind == "sweep" else "Runs compared")
    best_epoch = target.objective.startswith("val_")
    doc.p(f"Ranked by `{target.objective}`" + (" (the best epoch)" if best_epoch else "")
          + (f"; what differs between runs: {', '.join(f'`{k}`' for k in keys[:12])}." if keys else "."))
    doc.figure("leaderboard.png", fig_leaderboard(runs, target.scores, target.objective),
               f"Leaderboard: runs by {target.objective}")
    if target.kind == "sweep":
        doc.figure("hyperparameters.png", fig_hyperparameters(runs, target.scores, target.objective, keys),
                   f"{target.objective} against each hyperparameter")
    shown = keys[:12]
    rows = [["Rank", "Run", target.objective, *shown]]
    for rank, run in enumerate(runs, 1):
        value = target.scores[run.run_id]
        rows.append([str(rank), f"{run.name} `{run.run_id[:8]}`",
                     "–" if _nan(value) else (_pct(value) if "accuracy" in target.objective else f"{value:.4g}"),
                     *[run.params.get(k, "–") for k in shown]])
    doc.table(rows)


def _curves_section(doc: _Doc, target: Target, sets: list[str]) -> None:
    doc.h(2, "Learning curves")
    if not doc.figure("learning_curves.png", fig_learning_curves(target.runs),
                      "Learning curves: loss and sequence accuracy per epoch"):
        doc.p("No per-epoch metrics were logged.")
    if target.kind == "run" and (rows := _history_table(target.runs[0])):
        doc.table(rows)
    doc.h(2, "Per-position accuracy")
    if not doc.figure("per_position.png", fig_per_position(target.runs, sets, target.objective, target.lower),
                      "Per-position digit accuracy" + (" on the held-out set" if sets else ", validation")):
        doc.p("No per-position held-out metrics were logged.")


def _errors_section(doc: _Doc, target: Target, sets: list[str]) -> None:
    doc.h(2, "Errors")
    curves, best_predictions, best = [], None, None
    for run in target.runs[:5]:
        for test_set in (sets if target.kind == "run" else [PRIMARY]):
            table = read_predictions(run.run_id, test_set)
            if table is None:
                continue
            curves.append((_label(run) if target.kind != "run" else test_set, table))
            if best is None and test_set == PRIMARY:
                best_predictions, best = table, run
    if best is None:
        doc.p("No per-example predictions were logged (`predictions/test.csv.gz`; runs trained before the "
              "harness logged them have none), so there is no confusion matrix, coverage curve or error "
              "gallery.")
        return
    which = f"`{_label(best)}` on `{PRIMARY}`"
    doc.p(f"From the per-example predictions logged with {which}"
          + (" (the best run)." if target.kind != "run" else "."))
    doc.figure("confusion.png", fig_confusion(best_predictions, f"{best.name}, {PRIMARY}"),
               "Digit confusion matrix (rows: true digit; colour: fraction of the row; numbers: counts)")
    doc.figure("coverage.png", fig_coverage(curves),
               "Accuracy against coverage, rejecting the least confident first")
    worst = read_worst(best.run_id, PRIMARY)
    doc.h(3, "Worst errors")
    if worst is None or not len(worst["images"]):
        wrong = best_predictions[~best_predictions["correct"].astype(bool)]
        doc.p("No errors." if not len(wrong) else "No image crops of the errors were logged.")
        return
    doc.figure("errors.png", fig_gallery(worst, f"The {len(worst['images'])} most confident errors, {best.name}"),
               "The most confident errors: true number, number read, confidence")
    rows = [["#", "Image", "True", "Read", "Confidence"]]
    for i in range(len(worst["images"])):
        rows.append([str(i + 1), f"`{worst['name'][i]}`", _number(worst["true"][i]), _number(worst["predicted"][i]),
                     f"{100 * float(worst['confidence'][i]):.1f}%"])
    doc.table(rows)


def _number(text: str) -> str:
    return f"`{text}`" if text else "(no digits)"


def _reproducibility_section(doc: _Doc, target: Target) -> None:
    doc.h(2, "Reproducibility")
    best = target.runs[0]
    if target.kind != "run":
        if target.parent is not None:
            doc.p(f"Sweep command: `{target.parent.tags.get('harness.command', '–')}`")
        rows = [["Run", "Status", "Command", "Git commit", "Dataset fingerprint", "Backend / device"]]
        for run in target.runs:
            t = run.tags
            rows.append([f"{run.name} `{run.run_id[:8]}`", run.status, f"`{t.get('harness.command', '–')}`",
                         _commit(t, short=True), _fingerprint(run, short=True),
                         f"{t.get('harness.backend', '–')} / {t.get('harness.device', '–')}"])
        doc.table(rows)
        doc.h(3, f"Best run: {_label(best)}")
    t = best.tags
    versions = ", ".join(f"{k[len('version.'):]} {v}" for k, v in sorted(t.items()) if k.startswith("version."))
    doc.table([["", ""],
               ["Command", f"`{t.get('harness.command', '–')}`"],
               ["Git commit", _commit(t)],
               ["Dataset fingerprint", _fingerprint(best)],
               ["Backend / device", f"{t.get('harness.backend', '–')} / {t.get('harness.device', '–')}"],
               ["Python", t.get("harness.python", "–")],
               ["Packages", versions or "–"],
               ["MLflow run", f"`{best.run_id}`"]])
    card = _read_json(best.run_id, "data_card.json")
    if card:
        _data_card(doc, card)
    spec = query.read_artifact(best.run_id, "spec.yaml")
    doc.p("Resolved spec (`spec.yaml`):" if spec is not None else "Resolved spec (from the run's params):")
    doc.code(spec.decode() if spec is not None else
             "\n".join(f"{k}: {v}" for k, v in sorted(best.params.items())), "yaml")


def _data_card(doc: _Doc, card: dict) -> None:
    """The data card's summary: the prepared files, and what preparation found in the raw splits."""
    prepared = card.get("prepared") if isinstance(card.get("prepared"), dict) else \
        {k: v for k, v in card.items() if isinstance(v, dict) and "fingerprint" in v}  # the card's first layout
    doc.p(f"Data card (`data_card.json`{', `data_card.md` in full' if 'sources' in card else ''}):")
    rows = [["Prepared split", "Images", "Image size", "From", "Lengths", "Fingerprint (sha256)"]]
    for split, info in prepared.items():
        lengths = " ".join(f"{k}:{v}" for k, v in (info.get("length_histogram") or {}).items() if v)
        rows.append([split, str(info.get("images", info.get("count", "–"))), str(info.get("image_size", "–")),
                     ", ".join(info.get("from", [])) or "–", lengths or "–", f"`{info.get('fingerprint', '–')}`"])
    doc.table(rows)
    sources = card.get("sources") or {}
    if sources:
        rows = [["Raw split", "Annotated", "Readable", "Prepared", "Anomalies (what was done)"]]
        for split, info in sources.items():
            anomalies = "; ".join(f"{kind} {a.get('count', 0)} ({a.get('action', '')})"
                                  for kind, a in (info.get("anomalies") or {}).items()) or "none"
            rows.append([split, str(info.get("annotated", "–")), str(info.get("readable", "–")),
                         str(info.get("prepared", "–")), anomalies])
        doc.table(rows)


def _commit(tags: dict, short: bool = False) -> str:
    commit = tags.get("mlflow.source.git.commit")
    if not commit:
        return "–"
    return f"`{commit[:10] if short else commit}`" + (" (dirty)" if tags.get("harness.git_dirty") == "true" else "")


def _fingerprint(run, short: bool = False) -> str:
    """The run's dataset fingerprint tag: one hash over its prepared split files' fingerprints."""
    value = run.tags.get("harness.dataset_fingerprint")
    return "–" if not value else f"`{value[:12] if short else value}`"


# ------------------------------------------------------------------------------------- writing

def generate_report(*, experiment: str | None = None, sweep: str | None = None, runs: list[str] | None = None,
                    out: str | Path | None = None, fmt: str = "markdown", origin_command: str | None = None,
                    log: bool = True) -> Path:
    """Write the report of one target (see ``load_target``) and the index beside it; returns its file.

    ``out``: the report folder (default ``reports/<name derived from the target>``). ``fmt``: markdown
    (README.md) or html (index.html, self-contained). ``origin_command``: the command that made the
    runs (``harness train ...``), shown beside the one that rebuilds the page. ``log``: attach the report
    to the runs it covers (a sweep: to its parent).
    """
    if fmt not in ("markdown", "html"):
        raise HarnessError(f"unknown report format '{fmt}' (markdown or html)")
    target = load_target(experiment=experiment, sweep=sweep, runs=runs)
    out_dir = Path(out) if out else Path("reports") / default_name(target)
    if out_dir.exists() and not out_dir.is_dir():
        raise HarnessError(f"{out_dir}: exists and is not a folder")
    doc, summary = build_document(target, report_command(target, out_dir, fmt), origin_command)
    figures = out_dir / "figures"
    for name, png in doc.figures.items():
        atomic.write_bytes(figures / name, png)
    for stale in figures.glob("*.png") if figures.is_dir() else []:
        if stale.name not in doc.figures:
            stale.unlink()
    main = out_dir / ("index.html" if fmt == "html" else "README.md")
    atomic.write_text(main, doc.html(target.title) if fmt == "html" else doc.markdown())
    summary.update(name=out_dir.name, file=main.name, generated=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    atomic.write_text(out_dir / "report.json", json.dumps(summary, indent=1) + "\n")
    if log:
        _log(target, main, [figures / name for name in doc.figures], out_dir.name)
    write_index(out_dir.parent)
    return main


def _log(target: Target, main: Path, figures: list[Path], name: str) -> None:
    if target.kind == "sweep":
        owners, folder = [target.parent.run_id], "report"
    elif target.kind == "run":
        owners, folder = [target.runs[0].run_id], "report"
    else:  # a run's own report stays at report/; group reports sit beside it under their name
        owners, folder = [r.run_id for r in target.runs], f"report/{name}"
    for run_id in owners:
        log.attach_file(run_id, main, folder)
        for path in figures:
            log.attach_file(run_id, path, f"{folder}/figures")


def write_index(root: str | Path) -> Path | None:
    """``root``/README.md: every report under ``root`` (name, date, runs, best sequence accuracy, link).

    A README.md there that is not such an index (no INDEX_MARK) is left alone; returns None then.
    """
    root = Path(root)
    path = root / "README.md"
    if path.exists() and INDEX_MARK not in path.read_text(errors="replace")[:4000]:
        return None
    rows = [["Report", "Covers", "Generated", "Best held-out sequence accuracy", "vs Goodfellow 2014 (96.03%)",
             "Rebuild"]]
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        try:
            meta = json.loads((folder / "report.json").read_text())
        except (OSError, ValueError):
            meta = {}
        main = meta.get("file") or next((f for f in ("README.md", "index.html") if (folder / f).exists()), None)
        if main is None:
            continue
        best = meta.get("best_sequence_accuracy")
        covers = meta.get("covers", "–")
        rows.append([f"[{folder.name}]({folder.name}/{main})", covers, (meta.get("generated") or "–")[:10],
                     _pct(best), _gap(best, GOODFELLOW_2014),
                     f"`{meta['command']}`" if meta.get("command") else "–"])
    text = (f"# Reports\n\n{INDEX_MARK}\n\nGenerated from MLflow by `harness report` (and by `harness train` "
            "for its run); each report opens with the command that rebuilds it.\n\n"
            + _markdown_table(rows[0], rows[1:]) + "\n")
    atomic.write_text(path, text)
    return path


def write_run_report(run_id: str, out_dir: str | Path, command: str) -> Path:
    """reports/<name>/README.md for one run (what `harness train` writes), logged to the run."""
    return generate_report(runs=[run_id], out=out_dir, origin_command=command)


def render_run_report(run: query.RunRecord, command: str) -> str:
    """The markdown of one run's report (figures are not written)."""
    target = Target("run", run.name, [run], f"{PRIMARY}_sequence_accuracy",
                    {run.run_id: metric(run, f"{PRIMARY}_sequence_accuracy")})
    return build_document(target, report_command(target, Path("reports") / _slug(run.name), "markdown"),
                          command)[0].markdown()
