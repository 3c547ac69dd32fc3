"""Markdown result reports, generated from what MLflow holds (never from memory)."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

from harness import MAX_DIGITS, atomic, tracking

# Published whole-number (sequence) accuracies on SVHN this harness measures against.
GOODFELLOW_2014 = 0.9603
GOODFELLOW_2014_DIGIT = 0.9784
REPORT_CONV_ONLY = 0.924


def _pct(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.2f}%"


def _gap(value: float, reference: float) -> str:
    return f"{100 * (value - reference):+.2f} pp"


def headline_table(run: tracking.RunRecord) -> str:
    m = run.metrics
    digits = [m.get(f"test_digit{p}_accuracy") for p in range(1, MAX_DIGITS + 1)]
    seq = m.get("test_sequence_accuracy", float("nan"))
    met = "✅ meets 96.03%" if seq >= GOODFELLOW_2014 else "below 96.03%"
    header = ("| | Sequence (global) | Length | " + " | ".join(f"Digit {p}" for p in range(1, MAX_DIGITS + 1))
              + " | All digits | vs Goodfellow 2014 | vs report (conv-only) |")
    rule = "|" + "---|" * (MAX_DIGITS + 6)
    ours = (f"| **{run.name}** | **{_pct(seq)}** | {_pct(m.get('test_length_accuracy'))} | "
            + " | ".join(_pct(d) for d in digits)
            + f" | {_pct(m.get('test_digit_accuracy'))} | {_gap(seq, GOODFELLOW_2014)} ({met})"
            + f" | {_gap(seq, REPORT_CONV_ONLY)} |")
    blank = " | ".join("–" for _ in range(MAX_DIGITS))
    paper = (f"| Goodfellow et al. 2014 (SVHN) | {_pct(GOODFELLOW_2014)} | – | {blank} | "
             f"{_pct(GOODFELLOW_2014_DIGIT)} | | |")
    report = f"| Report, conv-only variant (SVHN) | {_pct(REPORT_CONV_ONLY)} | – | {blank} | – | | |"
    return "\n".join([header, rule, ours, paper, report])


def _history_table(run: tracking.RunRecord) -> str:
    keys = ["loss", "sequence_accuracy", "val_loss", "val_sequence_accuracy", "images_per_sec"]
    keys = [k for k in keys if k in run.history]
    if not keys:
        return "_No per-epoch metrics were logged._"
    steps = sorted({s for k in keys for s, _ in run.history[k]})
    lookup = {k: dict(run.history[k]) for k in keys}
    rows = ["| epoch | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for step in steps:
        cells = []
        for k in keys:
            v = lookup[k].get(step)
            cells.append("–" if v is None else (f"{v:.1f}" if k == "images_per_sec" else f"{v:.4f}"))
        rows.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def render_run_report(run: tracking.RunRecord, command: str) -> str:
    p, m, t = run.params, run.metrics, run.tags
    wall = m.get("wall_seconds")
    coverage = m.get("test_coverage_at_98")
    when = datetime.fromtimestamp(run.start_time, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# {run.name}",
        "",
        f"Regenerate: `{command}`",
        "",
        f"MLflow run `{run.run_id}` ({run.status}, started {when}) in `{tracking.display_uri()}`.",
        "",
        "## Held-out accuracy",
        "",
        headline_table(run),
        "",
        f"Held-out examples: {int(m.get('test_examples', 0))}. "
        f"Coverage at 98% accuracy (rejecting the least confident): {_pct(coverage)}.",
        "",
        "The reference rows are published results on real SVHN."
        + ("" if p.get("data.name") == "svhn" else
           f" This run's data is `{p.get('data.name', '?')}`, so they are a yardstick, not a like-for-like comparison."),
        "",
        "## Run",
        "",
        "| | |",
        "|---|---|",
        f"| Model | `{p.get('model.name')}` ({int(float(p.get('model.parameters', 0))):,} parameters) |",
        f"| Augmentation policy | `{p.get('augment.policy')}` (crop {p.get('augment.crop_size')}) |",
        f"| Data | `{p.get('data.name')}` {_options(p, 'data.options.')} |",
        f"| Optimizer | {p.get('train.optimizer')}, lr {p.get('train.learning_rate')}, "
        f"{p.get('train.schedule')} schedule, batch {p.get('train.batch_size')}, {p.get('train.epochs')} epochs |",
        f"| Wall time | {wall / 60:.1f} min |" if wall else "| Wall time | – |",
        f"| Backend / device | {t.get('harness.backend')} / {t.get('harness.device')} |",
        f"| Git commit | `{t.get('mlflow.source.git.commit', 'unknown')}`"
        f"{' (dirty)' if t.get('harness.git_dirty') == 'true' else ''} |",
        f"| Command | `{t.get('harness.command', '')}` |",
        "",
        "## Per epoch",
        "",
        _history_table(run),
        "",
    ]
    return "\n".join(lines)


def _options(params: dict, prefix: str) -> str:
    items = [f"{k[len(prefix):]}={v}" for k, v in sorted(params.items()) if k.startswith(prefix)]
    return f"({', '.join(items)})" if items else ""


def write_run_report(run_id: str, out_dir: str | Path, command: str) -> Path:
    """reports/<name>/README.md for one run, written atomically and logged to the run."""
    run = tracking.get_run(run_id)
    path = Path(out_dir) / "README.md"
    atomic.write_text(path, render_run_report(run, command))
    tracking.attach_file(run_id, path, "report")
    return path
