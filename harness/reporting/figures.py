"""The figures of a report, drawn with seaborn and matplotlib and saved as PNG bytes.

Each ``fig_*`` returns a matplotlib figure, or None when the runs hold nothing to draw; ``png`` turns
it into the bytes a report writes. matplotlib and seaborn are imported on the first figure drawn, not
with this module: they take seconds to load, and the index and the results page draw none.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd

from harness import MAX_DIGITS
from harness.models.heads import coverage_at, coverage_curve
from harness.reporting.gather import accuracies, digit_confusion
from harness.reporting.text import (
    GOODFELLOW_2014,
    GOODFELLOW_2014_DIGIT,
    REFERENCES,
    missing,
    run_label,
)

TOP = 8  # runs drawn individually in the per-run figures; the rest are grey


def _svhn(runs) -> bool:
    """Whether the published SVHN results belong in a figure of these runs: only beside SVHN data."""
    return any(run.params.get("data.name") == "svhn" for run in runs)


def _pyplot():
    import matplotlib  # deferred: matplotlib and seaborn load in seconds, and only figures need them

    matplotlib.use("Agg")  # files only: never a window, works without a display
    import matplotlib.pyplot as plt
    import seaborn as sns

    return plt, sns


def png(fig) -> bytes | None:
    """The figure as PNG bytes (closed afterwards); None for no figure."""
    if fig is None:
        return None
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
                        label=run_label(run) if highlight and key == val_key else None)
    for ax, (_, _, title) in zip(axes, pairs):
        ax.set_xlabel("epoch")
        ax.set_title(f"{title} (dashed: train, solid: validation)", fontsize=10)
    if _svhn(runs):
        axes[1].axhline(GOODFELLOW_2014, ls=":", color="k", lw=1, label="Goodfellow 2014 (96.03%, SVHN test)")
    if len(runs) > shown:
        axes[1].plot([], [], color="0.78", lw=0.8, label=f"{len(runs) - shown} other runs")
    axes[1].set_ylim(0, 1)
    if axes[1].get_legend_handles_labels()[1]:  # runs without validation curves label nothing
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
                if not missing(value):
                    rows.append({"position": f"digit {p}", "accuracy": value,
                                 "series": test_set if single else run_label(run)})
    if not rows:
        return None
    plt, sns = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.2), layout="constrained")
    sns.barplot(data=pd.DataFrame(rows), x="position", y="accuracy", hue="series", ax=ax,
                order=[f"digit {p}" for p in range(1, MAX_DIGITS + 1)])
    if _svhn(runs):
        ax.axhline(GOODFELLOW_2014_DIGIT, ls=":", color="k", lw=1, label="Goodfellow 2014, all digits (97.84%, SVHN test)")
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


def fig_leaderboard(runs, scores: dict, objective: str, intervals: dict | None = None):
    """The runs (in their ranked order, the first 40) by their objective, with each one's 95% interval
    (``intervals``: run id -> (low, high)) as an error bar where known."""
    shown = [r for r in runs if not missing(scores[r.run_id])][:40]
    if len(shown) < 2:
        return None
    plt, sns = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.26 * len(shown)), layout="constrained")
    values = [scores[r.run_id] for r in shown]
    ax.barh(range(len(shown)), values, color=sns.color_palette("viridis", len(shown)))
    bars = [(y, v, (intervals or {}).get(r.run_id)) for y, (r, v) in enumerate(zip(shown, values))]
    bars = [(y, v, i) for y, v, i in bars if i]
    if bars:
        ax.errorbar([v for _, v, _ in bars], [y for y, _, _ in bars], fmt="none", ecolor="k", elinewidth=1, capsize=2,
                    xerr=[[v - i[0] for _, v, i in bars], [i[1] - v for _, v, i in bars]], label="95% interval")
    ax.set_yticks(range(len(shown)), [run_label(r) for r in shown], fontsize=8)
    ax.invert_yaxis()
    for y, value in enumerate(values):
        ax.text(value, y, f" {100 * value:.2f}%" if "accuracy" in objective else f" {value:.4g}",
                va="center", fontsize=7)
    if "accuracy" in objective:
        if _svhn(shown):
            for (name, reference), style in zip(REFERENCES, (":", "--")):
                ax.axvline(reference, ls=style, color="k", lw=1, label=f"{name} ({100 * reference:.2f}%, SVHN test)")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_xlim(0, 1.08)
    ax.set_xlabel(objective)
    ax.set_title(f"{len(shown)} best of {len(runs)} runs by {objective}", fontsize=10)
    return fig


def fig_hyperparameters(runs, scores: dict, objective: str, keys: list[str]):
    keys = keys[:12]
    if not keys or all(missing(scores[run.run_id]) for run in runs):
        return None
    plt, sns = _pyplot()
    columns = min(3, len(keys))
    lines = math.ceil(len(keys) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.3 * lines), squeeze=False, layout="constrained")
    for ax, key in zip(axes.flat, keys):
        points = [(run.params.get(key, ""), scores[run.run_id]) for run in runs if not missing(scores[run.run_id])]
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

