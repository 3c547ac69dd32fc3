"""An MLflow run's lifecycle: started with the spec's params and the code's tags, ended with its status.

A run that raises is ended FAILED, one interrupted by Ctrl-C is ended KILLED, never left RUNNING.
Every run also records MLflow's system metrics (``system/...``: CPU, memory, disk, network, and GPU
where nvidia-ml-py finds one) every 10 s (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL changes it).
"""

from __future__ import annotations

import contextlib
import platform
import subprocess
import sys
import time
import urllib.parse
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Mapping

import mlflow
import mlflow.pyfunc
from mlflow.tracking import MlflowClient

from harness.backend import backend_name, device_name
from harness.errors import HarnessError
from harness.tracking.log import log_params, log_text, set_tags
from harness.tracking.store import (
    TrackingUnavailable,
    display_uri,
    failure_cause,
    ledger_add,
    open_client,
    retrying,
    tracking_uri,
    unavailable,
    unreachable,
    without_http_retries,
)

PACKAGES = ("keras", "tensorflow", "jax", "torch", "keras-tuner", "mlflow", "numpy", "h5py", "svhn-harness")


# ---------------------------------------------------------------------------------------- runs

def run_name(spec) -> str:
    """What a run trains, as the MLflow UI lists it: "quickstart: cnn_small, paper, synthetic"
    (the spec's name, then model, augmentation policy and dataset; a seed other than 0 last)."""
    seed = f", seed {spec.train.seed}" if spec.train.seed else ""
    return f"{spec.name}: {spec.model.name}, {spec.augment.policy}, {spec.data.name}{seed}"


@contextlib.contextmanager
def run(spec, *, run_id: str | None = None, command: str | None = None, parent_run_id: str | None = None,
        tags: Mapping[str, Any] | None = None, name: str | None = None) -> Iterator[str]:
    """Start (or, given ``run_id``, continue) the MLflow run of ``spec``; yields its run id.

    ``parent_run_id``: nest the run under that run (a sweep's trial under the sweep), which may be
    active in this process or not (a worker's trials). ``tags``: set when the run is created.
    ``name``: the run's name, by default what it trains (run_name).
    """
    open_client()
    resumed = run_id is not None
    nested = parent_run_id is not None
    try:
        if not resumed:
            experiment = mlflow.set_experiment(spec.tracking.experiment)
            _check_artifact_location(experiment)
            active = mlflow.start_run(experiment_id=experiment.experiment_id, run_name=name or run_name(spec),
                                      nested=nested, parent_run_id=parent_run_id,
                                      tags={k: str(v) for k, v in (tags or {}).items()} or None,
                                      log_system_metrics=True)
        else:
            active = mlflow.start_run(run_id=run_id, nested=nested, log_system_metrics=True)
    except Exception as exc:
        if unreachable(exc):
            raise unavailable(exc) from None
        raise
    run_id = active.info.run_id
    try:
        if resumed:
            set_tags({"harness.resumed": "true"})
        else:
            _log_start(spec, command)
        yield run_id
    except KeyboardInterrupt:
        _end(run_id, "KILLED", quick=True)
        raise
    except BaseException as exc:
        if isinstance(exc, HarnessError) and not isinstance(exc, TrackingUnavailable):
            _note_error(run_id, exc)
        _end(run_id, "FAILED", quick=isinstance(exc, TrackingUnavailable))
        raise
    _end(run_id, "FINISHED", quick=False)


def _check_artifact_location(experiment) -> None:
    """Through a server, an experiment first created in a local store keeps its artifacts in a folder
    on the server's machine: another machine would write them to its own disk, out of the team's sight."""
    location = experiment.artifact_location or ""
    scheme = urllib.parse.urlparse(location).scheme
    if not tracking_uri().startswith(("http://", "https://")) or scheme not in ("", "file"):
        return
    if not Path(urllib.parse.urlparse(location).path).parent.is_dir():
        raise HarnessError(f"experiment '{experiment.name}' keeps its artifacts in {location} on the tracking "
                           f"server's machine (it was created in a local store); from this machine, log to a "
                           f"new experiment instead: --set tracking.experiment=NAME")


def _note_error(run_id: str, exc: BaseException) -> None:
    """The error that fails a run, as its tag ``harness.error``: one quick try, never in the way of
    ending the run."""
    try:
        with without_http_retries():
            MlflowClient(tracking_uri()).set_tag(run_id, "harness.error", str(exc)[:5000])
    except Exception:  # noqa: BLE001  (the run is marked FAILED all the same)
        pass


def _log_start(spec, command: str | None) -> None:
    log_params({k: ("" if v is None else v) for k, v in spec.flat().items()})
    log_text(spec.to_yaml(), "spec.yaml")
    command = command or " ".join(sys.argv)
    set_tags({
        "harness.command": command,
        "mlflow.source.name": command,  # the UI's Source column: the command, not python -m's __main__.py
        "harness.backend": backend_name(),
        "harness.device": device_name(),
        "harness.python": platform.python_version(),
        **_git_tags(),
        **{f"version.{p}": v for p, v in _versions().items()},
    })


def _end(run_id: str, status: str, *, quick: bool) -> None:
    """End the active run with ``status``. Never raises an Exception: a status the store cannot take
    now goes to the ledger, and the next harness call that reaches the store sets it (_settle)."""
    end_time = int(time.time() * 1000)
    try:
        if quick:  # failing because the server is away, or the user is waiting: one quick try
            with without_http_retries():
                mlflow.end_run(status)
        else:
            try:
                mlflow.end_run(status)  # pops the active run even when the request fails
            except Exception as exc:
                if not unreachable(exc):
                    raise
                retrying(f"ending run {run_id}",
                          lambda: open_client().set_terminated(run_id, status, end_time=end_time))
    except BaseException as exc:  # a second Ctrl-C too: noted, then it goes on
        ledger_add(run_id, status, end_time)
        if not isinstance(exc, Exception):
            raise
        print(f"harness: warning: MLflow run {run_id} could not be marked {status} now ({failure_cause(exc)}); "
              f"the next harness command that reaches {display_uri()} will", file=sys.stderr, flush=True)


def _versions() -> dict[str, str]:
    out = {}
    for package in PACKAGES:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return out


def _git_tags() -> dict[str, str]:
    here = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"mlflow.source.git.commit": commit, "harness.git_dirty": str(bool(dirty)).lower()}
