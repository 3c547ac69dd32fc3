"""The sweep's leaderboard, rebuilt from what MLflow holds, and its summary on the parent run."""

from __future__ import annotations

import json
from typing import Any

from harness import atomic
from harness.evaluation.intervals import wilson
from harness.sweeps.spec import SweepSpec
from harness.tracking import log as tracking_log
from harness.tracking import query

# ------------------------------------------------------------------------------ the leaderboard

def leaderboard(sweep: SweepSpec, parent: str) -> list[dict[str, Any]]:
    """One row per trial from what MLflow holds: finished trials best first, then the others."""
    objective = sweep.sweep.objective
    latest: dict[str, Any] = {}
    for run in query.child_runs(parent):
        trial_id = run.tags.get("harness.trial_id")
        if trial_id is not None and (trial_id not in latest or run.start_time > latest[trial_id].start_time):
            latest[trial_id] = run
    rows = []
    for trial_id, run in latest.items():
        values = json.loads(run.tags.get("harness.trial_hp", "{}"))
        score = run.metrics.get(f"best_{objective}") if run.status == "FINISHED" else None
        rows.append({"rank": None, "trial": trial_id, "status": run.status, objective: score,
                     **{p.key: values.get(p.key) for p in sweep.sweep.space},
                     "epochs": run.params.get("train.epochs"), "seconds": run.metrics.get("wall_seconds", run.metrics.get("trial_seconds")),
                     "run_id": run.run_id})
    sign = -1 if sweep.sweep.direction == "max" else 1
    rows.sort(key=lambda r: (r[objective] is None, sign * (r[objective] or 0), r["trial"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank if row[objective] is not None else None
    return rows


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
    objective = sweep.sweep.objective
    columns = ["rank", "trial", objective, *[p.key for p in sweep.sweep.space], "epochs", "seconds", "status"]
    cells = [[leaderboard_cell(row.get(c)) if c != objective or row.get(c) is None else f"{row[c]:.4f}" for c in columns]
             for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def leaderboard_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)
