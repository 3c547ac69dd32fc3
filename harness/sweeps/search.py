"""Running a sweep: KerasTuner searches, the training core fits each trial, MLflow holds it all.

How a sweep runs
- KerasTuner drives it through :class:`~harness.sweeps.hypermodel.SweepHyperModel`: ``build(hp)``
  turns the trial's values into a trial spec and builds and compiles the model as `harness train`
  does; ``fit`` hands it to the training core (harness.training.core.fit), which trains it on the
  data prepared once for the whole sweep, evaluates it on the test split and returns the objective
  (the best epoch's value). A trial is therefore a run like any other.
- MLflow: the sweep is one parent run (the base spec and the sweep section as params, the leaderboard
  as a table artifact ``leaderboard.json`` and the best trial as metrics and tags, refreshed after
  every trial); each trial is a nested run (tag ``mlflow.parentRunId``) with its resolved spec as
  params, per-epoch metrics, and its trial id and values as tags.
- Local state lives in ``runs/sweeps/<name>/``: ``sweep.json`` (the parent run and the sweep's key),
  KerasTuner's project folder ``tuner/`` (reloaded, never overwritten) and per-trial epoch
  checkpoints in ``trials/<id>/``. Running the same command again after Ctrl-C or kill -9 continues
  the same parent run: finished trials are not rerun, an interrupted one continues its own nested run
  from its last finished epoch.
- Distributed (KerasTuner's chief/worker protocol): the chief serves the oracle, workers run trials.
  The chief passes the parent run id to every worker inside the search space (a fixed
  hyperparameter), so all trials nest under the one parent whichever host runs them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import warnings
from typing import Any

from harness import atomic
from harness.data import datasets
from harness.errors import HarnessError
from harness.progress import say
from harness.sweeps.hypermodel import SweepHyperModel, _kt
from harness.sweeps.leaderboard import format_leaderboard, publish
from harness.sweeps.spec import SweepSpec
from harness.tracking import log as tracking_log
from harness.tracking import model_registry, query, store
from harness.tracking import runs as tracking_runs

# ------------------------------------------------------------------------------ running a sweep

def run_sweep(sweep: SweepSpec, *, role: str = "local", oracle: str | None = None,
              tuner_id: str | None = None, command: str | None = None) -> list[dict[str, Any]] | None:
    """Run (or continue) a sweep in this process. ``role``: ``local`` (the tuner and its oracle here),
    ``chief`` (serve the oracle at ``oracle`` HOST:PORT for workers; owns the parent run) or ``worker``
    (run trials for the chief at ``oracle``). Returns the final leaderboard (None on a worker)."""
    if role not in ("local", "chief", "worker"):
        raise HarnessError(f"unknown sweep role '{role}' (local, chief or worker)")
    if role == "local":
        for name in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
            os.environ.pop(name, None)
    else:
        host, port = split_address(oracle)
        tuner_id = "chief" if role == "chief" else (tuner_id or default_tuner_id())
        if role == "worker" and "chief" in tuner_id:
            raise HarnessError(f"--tuner-id {tuner_id}: a worker's id must not contain 'chief'")
        os.environ.update(KERASTUNER_TUNER_ID=tuner_id, KERASTUNER_ORACLE_IP=host, KERASTUNER_ORACLE_PORT=str(port))
    tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "tuner0")
    prefix = f"[{tuner_id}] " if role == "worker" else ""
    data = datasets.prepare(sweep.spec.data)
    if role == "worker":
        hypermodel = SweepHyperModel(sweep, data, tuner_id=tuner_id, command=command, prefix=prefix)
        tuner = _tuner(sweep, hypermodel, tuner_id)
        say(f"{prefix}worker of the chief at {oracle}: running trials")
        _search(tuner)
        say(f"{prefix}no trials left; done")
        return None
    with _parent_run(sweep, command) as parent:
        hypermodel = SweepHyperModel(sweep, data, parent_run_id=parent, tuner_id=tuner_id, command=command)
        tuner = _tuner(sweep, hypermodel, tuner_id)
        _repair(tuner.oracle)
        say(f"sweep {sweep.name}: {sweep.sweep.tuner} search"
             + (f", {sweep.sweep.max_trials} trials" if sweep.sweep.tuner != "hyperband" else "")
             + f", MLflow parent run {parent} ({store.display_uri()})"
             + (f"; oracle on {oracle}, waiting for workers" if role == "chief" else ""))
        _search(tuner)
        tuner.save()  # a chief's oracle last saved its books before the last trial left them
        rows = publish(sweep, parent, final=True)
        _register_best(sweep, rows)
    print(f"\n{sweep.name}: leaderboard ({sweep.sweep.objective}, MLflow parent run {parent})")
    print(format_leaderboard(sweep, rows))
    if rows and rows[0]["rank"] == 1:
        print(f"\nBest: trial {rows[0]['trial']}; train it in full with "
              f"`harness train {sweep.state_dir / 'best.yaml'}`")
    # deferred: matplotlib, needed only at the end
    from harness.reporting.report import generate_report

    report = generate_report(sweep=parent, origin_command=command)
    print(f"Report: {report} (rebuild it with `harness report --sweep {parent}`)    MLflow UI: harness ui")
    return rows


def _search(tuner) -> None:
    try:
        tuner.search(verbose=0)
    except RuntimeError as exc:
        if "consecutive failures" in str(exc):
            last = (str(exc).strip().splitlines() or [""])[-1]
            raise HarnessError(f"the sweep stopped: {str(exc).splitlines()[0]} (last error: {last})") from None
        raise


@contextlib.contextmanager
def _parent_run(sweep: SweepSpec, command: str | None):
    """Create, or continue, the sweep's parent run; local state follows it."""
    state_file = sweep.state_dir / "sweep.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else None
    if state and state.get("key") != sweep.key():
        raise HarnessError(f"{sweep.state_dir}: holds a different sweep named '{sweep.name}' (from "
                           f"{state.get('spec')}); delete that folder to start afresh, or rename this sweep")
    parent = state.get("parent_run_id") if state else None
    if parent and query.run_status(parent) is None:
        parent = None  # the store no longer has it
    if parent is None:  # a fresh sweep: nothing local may leak into it
        for stale in ("tuner", "trials", "best.yaml", "leaderboard.json"):
            path = sweep.state_dir / stale
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    tags = {"harness.kind": "sweep", "harness.sweep": sweep.name, "harness.sweep_key": sweep.key(),
            "harness.tuner": sweep.sweep.tuner, "harness.objective": sweep.sweep.objective}
    name = f"{sweep.name}: {sweep.sweep.tuner} search of {sweep.spec.data.name}"
    with tracking_runs.run(sweep.spec, run_id=parent, command=command, tags=tags, name=name) as run_id:
        if parent is None:
            atomic.write_text(state_file, json.dumps({"parent_run_id": run_id, "key": sweep.key(),
                                                      "spec": sweep.source}, indent=2))
            tracking_log.log_params(sweep.params())
            tracking_log.log_text(sweep.to_yaml(), "sweep.yaml")
        else:
            tracking_log.set_tags({"harness.max_trials": sweep.sweep.max_trials})
        yield run_id


def _tuner(sweep: SweepSpec, hypermodel: SweepHyperModel, tuner_id: str):
    kt = _kt()
    s = sweep.sweep
    project = sweep.state_dir / "tuner"
    if tuner_id == "chief" or "KERASTUNER_ORACLE_IP" not in os.environ:
        # KerasTuner reloads its oracle only when this tuner id has a state file; a sweep started
        # alone and continued as a chief (or back) must still reload the oracle, never start over.
        if (project / "oracle.json").exists() and not (project / f"{tuner_id}.json").exists():
            atomic.write_text(project / f"{tuner_id}.json", "{}")
    common = dict(hypermodel=hypermodel, objective=kt.Objective(s.objective, s.direction),
                  seed=s.seed + 1,  # KerasTuner takes seed 0 as "no seed"
                  max_retries_per_trial=s.retries, directory=str(sweep.state_dir), project_name="tuner",
                  overwrite=False)
    # Hyperband continues a model from an earlier trial's weights file before it is compiled: Keras
    # warns that the optimizer state in that file is not loaded, which is what is meant.
    warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
    with contextlib.redirect_stdout(io.StringIO()):  # "Reloading Tuner from ..." and the like
        if s.tuner == "random":
            return kt.RandomSearch(max_trials=s.max_trials, **common)
        if s.tuner == "grid":
            return kt.GridSearch(max_trials=s.max_trials, **common)
        if s.tuner == "bayesian":
            return kt.BayesianOptimization(max_trials=s.max_trials, **common)
        return kt.Hyperband(max_epochs=s.max_epochs or sweep.spec.train.epochs, factor=s.factor, **common)


def _repair(oracle) -> None:
    """Make a reloaded oracle's books match its trial files (KerasTuner 1.4.8).

    On reload KerasTuner queues every trial that oracle.json lists as ongoing for a retry: right for a
    trial killed mid-training. But oracle.json is written after trial.json, so a kill in between can
    leave (a) a trial saved COMPLETED (or FAILED) still listed as ongoing, which would run again, and
    (b) a trial saved RUNNING that oracle.json never lists, which would neither run nor finish.
    """
    from keras_tuner.engine.trial import TrialStatus

    for trial_id in list(oracle._retry_queue):
        trial = oracle.trials.get(trial_id)
        if trial is not None and trial.status in (TrialStatus.COMPLETED, TrialStatus.FAILED):
            oracle._retry_queue.remove(trial_id)
            if trial_id not in oracle.end_order:
                oracle.end_order.append(trial_id)
    for trial_id, trial in oracle.trials.items():
        if trial.status == TrialStatus.RUNNING and trial_id not in oracle._retry_queue:
            oracle._retry_queue.append(trial_id)
    oracle.save()


def split_address(address: str | None) -> tuple[str, int]:
    host, sep, port = (address or "").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise HarnessError(f"--oracle {address}: expected HOST:PORT, e.g. 10.0.0.5:8000")
    return host.strip("[]"), int(port)


def default_tuner_id() -> str:
    """Stable across restarts on one host (a restarted worker takes back its unfinished trial); one
    per GPU when CUDA_VISIBLE_DEVICES names one. Several CPU workers on one host need --tuner-id."""
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return f"tuner-{socket.gethostname()}" + (f"-gpu{gpu.replace(',', '_')}" if gpu else "")


def _register_best(sweep: SweepSpec, rows: list[dict[str, Any]]) -> None:
    """The best trial's model registered as the sweep's tracking.register says (nothing when unset)."""
    name, alias = sweep.spec.tracking.register, sweep.spec.tracking.alias
    if not name or not rows or rows[0]["rank"] != 1:
        return
    uri = model_registry.register(rows[0]["run_id"], name, alias)
    say(f"registered the best trial's model: {uri}" + (f" (alias {alias})" if alias else ""))
