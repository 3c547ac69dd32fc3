"""The tables of a report: a row per run against the published references, what varies, per epoch."""

from __future__ import annotations

from harness import MAX_DIGITS
from harness.reporting.gather import (
    PRIMARY,
    epochs_done,
    images_per_second,
    wall_seconds,
)
from harness.reporting.noise import measures
from harness.reporting.render import markdown_table
from harness.reporting.text import (
    GOODFELLOW_2014,
    GOODFELLOW_2014_DIGIT,
    REPORT_CONV_ONLY,
    comparable,
    duration,
    gap,
    missing,
    pct,
    pct_ci,
)
from harness.tracking import query

_NOT_HYPERPARAMETERS = {"name", "description", "model.parameters"}


def data_text(params: dict) -> str:
    options = [f"{k[len('data.options.'):]}={v}" for k, v in sorted(params.items())
               if k.startswith("data.options.")]
    text = params.get("data.name", "?") + (f" ({', '.join(options)})" if options else "")
    if "data.preprocessing" in params:  # the paper's 64x64 crops, or the report's 74x74
        size = params.get("data.image_size", "?")
        text += f", {params['data.preprocessing']} preprocessing {size}x{size}"
    return text


def epochs_text(run: query.RunRecord) -> str:
    done, planned = epochs_done(run), run.params.get("train.epochs")
    if done is None:
        return planned or "–"
    return str(done) if planned in (None, str(done)) else f"{done} of {planned}"


RUN_COLUMNS = ["Run", "Model", "Policy", "Data", "Epochs", "Wall time", "Images/s"]
ACCURACY_COLUMNS = (["Sequence (global)", "Length"] + [f"Digit {p}" for p in range(1, MAX_DIGITS + 1)]
                    + ["All digits", "Coverage at 98%", "vs Goodfellow 2014 (96.03%)", "vs report (92.4%)"])


def headline_rows(runs, test_set: str, measured: dict) -> list[list[str]]:
    """One row per run (RUN_COLUMNS + ACCURACY_COLUMNS; each accuracy with its 95% interval, the gaps to
    the published references only for SVHN's test set), then the two published reference rows.
    ``measured``: run id -> ``noise.measures`` of the run on ``test_set``."""
    rows = []
    for run in runs:
        p, m = run.params, measured[run.run_id]
        seq, ips = m["sequence_accuracy"], images_per_second(run)
        like = comparable(p.get("data.name"), test_set)
        rows.append([
            f"{run.name} `{run.run_id[:8]}`", p.get("model.name", "–"), p.get("augment.policy", "–"),
            data_text(p), epochs_text(run), duration(wall_seconds(run)), "–" if missing(ips) else f"{ips:,.0f}",
            pct_ci(seq["value"], seq["interval"], bold=True),
            *[pct_ci(m[name]["value"], m[name]["interval"])
              for name in ("length_accuracy", *[f"digit{d}_accuracy" for d in range(1, MAX_DIGITS + 1)],
                           "digit_accuracy")],
            pct(m["coverage_at_98"]),
            gap(seq["value"], GOODFELLOW_2014, like), gap(seq["value"], REPORT_CONV_ONLY, like),
        ])
    blank = [""] * (len(RUN_COLUMNS) - 1)
    dashes = ["–"] * MAX_DIGITS
    rows.append(["Goodfellow et al. 2014 (SVHN)", *blank, pct(GOODFELLOW_2014), "–", *dashes,
                 pct(GOODFELLOW_2014_DIGIT), "–", "", ""])
    rows.append(["Report, conv-only variant (SVHN)", *blank, pct(REPORT_CONV_ONLY), "–", *dashes, "–", "–", "", ""])
    return rows


def headline_table(run: query.RunRecord) -> str:
    """The held-out table of one run, in markdown."""
    return markdown_table(RUN_COLUMNS + ACCURACY_COLUMNS, headline_rows([run], PRIMARY,
                                                                        {run.run_id: measures(run, PRIMARY)}))


def varying_params(runs) -> list[str]:
    """Params whose value differs between the runs (hyperparameters of a sweep), spec keys first."""
    keys = {k for run in runs for k in run.params if k not in _NOT_HYPERPARAMETERS
            and not k.startswith("tracking.")}
    varying = [k for k in keys if len({run.params.get(k) for run in runs}) > 1]
    return sorted(varying, key=lambda k: ("." not in k, k))


def history_table(run: query.RunRecord) -> list[list[str]] | None:
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

