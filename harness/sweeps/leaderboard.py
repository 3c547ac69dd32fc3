"""The sweep's leaderboard, rebuilt from what MLflow holds, and its summary on the parent run.

Each trial's objective carries its 95% Wilson interval on the validation split's size (a ``val_examples``
metric, else the trial's data card), and trials whose interval overlaps the best trial's are marked within
noise of it (``≈``): the objective is a validation figure, and trials log per-image predictions for the
test split only, so a paired test (McNemar) is not possible on it. A loss has no interval and no mark.
"""

from __future__ import annotations

import json
from typing import Any

from harness import atomic
from harness.evaluation.intervals import wilson
from harness.reporting.noise import val_examples
from harness.sweeps.spec import SweepSpec
from harness.tracking import log as tracking_log
from harness.tracking import query

# ------------------------------------------------------------------------------ the leaderboard

def leaderboard(sweep: SweepSpec, parent: str) -> list[dict[str, Any]]:
    """One row per trial from what MLflow holds: finished trials best first, then the others."""
    objective = sweep.sweep.objective
    latest: dict[str, Any] = {}
    counts: dict[str, int | None] = {}
    for run in query.child_runs(parent):
        trial_id = run.tags.get("harness.trial_id")
        if trial_id is not None and (trial_id not in latest or run.start_time > latest[trial_id].start_time):
            latest[trial_id] = run
    rows = []
    for trial_id, run in latest.items():
        values = json.loads(run.tags.get("harness.trial_hp", "{}"))
        score = run.metrics.get(f"best_{objective}") if run.status == "FINISHED" else None
        rows.append({"rank": None, "trial": trial_id, "status": run.status, objective: score,
                     **_interval(objective, score, run, counts),
                     **{p.key: values.get(p.key) for p in sweep.sweep.space},
                     "epochs": run.params.get("train.epochs"), "seconds": run.metrics.get("wall_seconds", run.metrics.get("trial_seconds")),
                     "run_id": run.run_id})
    sign = -1 if sweep.sweep.direction == "max" else 1
    rows.sort(key=lambda r: (r[objective] is None, sign * (r[objective] or 0), r["trial"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank if row[objective] is not None else None
    best = rows[0] if rows and rows[0][objective] is not None else None
    for row in rows:
        row["within_noise"] = _within(row, best)
    return rows


NOISE_TEST = ("95% Wilson intervals on the validation images overlap the best trial's (trials log per-image "
              "predictions for test only, so no paired test)")


def _interval(objective: str, score, run, counts: dict) -> dict[str, Any]:
    """The objective's 95% Wilson interval on the validation split's size; none for a loss or no count.
    ``counts`` caches the size per dataset fingerprint (the trials of a sweep share their data)."""
    if score is None or not objective.endswith("accuracy"):
        return {"val_examples": None, "low": None, "high": None}
    key = run.tags.get("harness.dataset_fingerprint") or run.run_id
    if key not in counts:
        counts[key] = val_examples(run)
    n = counts[key]
    if not n:
        return {"val_examples": None, "low": None, "high": None}
    low, high = wilson(round(score * n), n)
    return {"val_examples": n, "low": low, "high": high}


def _within(row: dict[str, Any], best: dict[str, Any] | None) -> bool | None:
    """Whether a trial's objective is within noise of the best trial's (overlapping intervals)."""
    if best is None or row.get("low") is None or best.get("low") is None:
        return None
    return row["low"] <= best["high"] and best["low"] <= row["high"]


def publish(sweep: SweepSpec, parent: str, *, final: bool = False) -> list[dict[str, Any]]:
    """Refresh the parent run's leaderboard table, best-trial metrics and tags; returns the rows."""
    rows = leaderboard(sweep, parent)
    objective = sweep.sweep.objective
    done = [r for r in rows if r[objective] is not None]
    failed = [r for r in rows if r["status"] == "FAILED"]
    tracking_log.log_table(parent, rows, "leaderboard.json")
    metrics = {"trials_finished": len(done), "trials_failed": len(failed)}
    tags = {}
    if done:
        best = done[0]
        metrics[f"best_{objective}"] = best[objective]
        tags = {"harness.best_trial_id": best["trial"], "harness.best_run_id": best["run_id"]}
        if best["status"] == "FINISHED":  # its test split figures stand for the sweep's
            (record,) = query.get_runs([best["run_id"]], history_keys=())
            metrics.update({k: v for k, v in record.metrics.items() if k.startswith("test_")})
            tags["mlflow.note.content"] = describe(sweep, best, record, len(done), len(failed))
            if "harness.model" in record.tags:
                tags["harness.best_model"] = record.tags["harness.model"]
        if final or best["status"] == "FINISHED":
            spec_yaml = query.read_artifact(best["run_id"], "spec.yaml")
            if spec_yaml is not None:
                tracking_log.log_text(spec_yaml.decode(), "best_spec.yaml", run_id=parent)
                if final:
                    atomic.write_text(sweep.state_dir / "best.yaml", spec_yaml.decode())
    tracking_log.log_to(parent, metrics=metrics, step=len(done), tags=tags)
    if final:
        atomic.write_text(sweep.state_dir / "leaderboard.json", json.dumps(rows, indent=2))
    return rows


def describe(sweep: SweepSpec, best: dict[str, Any], record, finished: int, failed: int) -> str:
    """The parent run's description: the search, and the winning trial with its test result."""
    s = sweep.sweep
    space = ", ".join(f"`{p.key}`" for p in s.space)
    lines = [f"**Sweep {sweep.name}**: KerasTuner {s.tuner} search over {space}, objective `{s.objective}` "
             f"({s.direction}); {finished} trials finished" + (f", {failed} failed." if failed else ".")]
    values = ", ".join(f"{p.key}={leaderboard_cell(best.get(p.key))}" for p in s.space)
    line = f"Best: trial {best['trial']} ({values}), {s.objective} {best[s.objective]:.4f}"
    seq, n = record.metrics.get("test_sequence_accuracy"), int(record.metrics.get("test_examples", 0))
    if seq is not None and n:
        low, high = wilson(round(seq * n), n)
        line += f"; test sequence accuracy {100 * seq:.2f}% of {n:,} (95% interval {100 * low:.1f}-{100 * high:.1f}%)"
    lines.append(line + ".")
    return "\n\n".join(lines)


def format_leaderboard(sweep: SweepSpec, rows: list[dict[str, Any]]) -> str:
    """The leaderboard as text: each objective with its 95% interval, ``≈`` on the trials within noise of
    the best, and a last line saying which test that is."""
    objective = sweep.sweep.objective
    columns = ["rank", "trial", objective, "95% interval", "noise", *[p.key for p in sweep.sweep.space], "epochs",
               "seconds", "status"]

    def cell(row: dict[str, Any], column: str) -> str:
        if column == objective:
            return "-" if row.get(column) is None else f"{row[column]:.4f}"
        if column == "95% interval":
            return "-" if row.get("low") is None else f"{row['low']:.4f}-{row['high']:.4f}"
        if column == "noise":
            return "best" if row.get("rank") == 1 else {True: "≈", False: ""}.get(row.get("within_noise"), "-")
        return leaderboard_cell(row.get(column))

    cells = [[cell(row, c) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    sizes = sorted({r["val_examples"] for r in rows if r.get("val_examples")})
    if sizes:
        lines.append(f"≈: within noise of the best: {NOISE_TEST}; {', '.join(f'{n:,}' for n in sizes)} "
                     "validation images.")
    elif rows:
        lines.append("noise: no interval (the objective is not an accuracy, or the validation split's size is "
                     "not logged).")
    return "\n".join(lines)


def leaderboard_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)
