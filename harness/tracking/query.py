"""Reading runs back: records, metric histories and artifacts, for reports, evaluation and resume."""

from __future__ import annotations

import atexit
import dataclasses
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import mlflow
import mlflow.pyfunc
import requests  # (MLflow's HTTP client; its errors mean "server unreachable")
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from harness.errors import HarnessError
from harness.tracking.names import from_mlflow, stored_names
from harness.tracking.store import (
    display_uri,
    open_client,
    retrying,
    tracking_uri,
    unavailable,
    unreachable,
)

# ------------------------------------------------------------------------------------ reading back

@dataclasses.dataclass(frozen=True)
class RunRecord:
    run_id: str
    name: str
    status: str
    start_time: float
    end_time: float | None
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    history: dict[str, list[tuple[int, float]]]  # metric -> [(step, value)]


def get_run(run_id: str) -> RunRecord:
    client = open_client()
    return _record(client, mlflow_run(client, run_id), None)


def run_status(run_id: str) -> str | None:
    """RUNNING / FINISHED / FAILED / KILLED, or None if the store has no such run."""
    try:
        return open_client().get_run(run_id).info.status
    except mlflow.exceptions.MlflowException as exc:
        if unreachable(exc):  # not "no such run": the caller must not start afresh
            raise unavailable(exc) from None
        return None


def download_artifact(run_id: str, path: str) -> Path:
    """A run's artifact, copied into a fresh temporary folder (removed when this process exits)."""
    open_client()
    dst = tempfile.mkdtemp(prefix="harness-artifact-")
    atexit.register(shutil.rmtree, dst, ignore_errors=True)
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=dst))


def find_runs(*, experiment: str | None = None, parent_run_id: str | None = None,
              history_keys: Iterable[str] | None = None) -> list[RunRecord]:
    """Runs read back in one search, oldest first: the nested runs of ``parent_run_id`` (a sweep's
    trials), or every run of ``experiment`` except sweep parents (they have no results of their own).
    ``history`` holds the metrics in ``history_keys`` (None: all; each metric's history is one query).
    """
    client = open_client()
    if parent_run_id is not None:
        experiment_id = mlflow_run(client, parent_run_id).info.experiment_id
        where = f"tags.mlflow.parentRunId = '{parent_run_id}'"
    else:
        try:
            found = client.get_experiment_by_name(experiment or "")
        except mlflow.exceptions.MlflowException as exc:
            if unreachable(exc):
                raise unavailable(exc) from None
            raise
        if found is None:
            raise HarnessError(f"no MLflow experiment named '{experiment}' in {display_uri()}")
        experiment_id, where = found.experiment_id, ""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=where, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    if parent_run_id is None:  # an experiment's trained models: no sweep parent, no evaluation run
        parents = {r.data.tags.get("mlflow.parentRunId") for r in runs}
        runs = [r for r in runs if r.info.run_id not in parents
                and r.data.tags.get("harness.kind") not in ("sweep", "evaluation")]
    runs.sort(key=lambda r: (r.info.start_time or 0, r.info.run_id))
    return [_record(client, r, history_keys) for r in runs]


def get_runs(run_ids: Iterable[str], history_keys: Iterable[str] | None = None) -> list[RunRecord]:
    """``get_run`` for several runs, with ``history`` limited to ``history_keys`` (None: all)."""
    client = open_client()
    return [_record(client, mlflow_run(client, run_id), history_keys) for run_id in run_ids]


_ARTIFACT_URIS: dict[tuple[str, str], str] = {}  # (store, run id) -> artifact root: fixed for a run's life


def _record(client: MlflowClient, found, history_keys: Iterable[str] | None) -> RunRecord:
    run_id = found.info.run_id
    _ARTIFACT_URIS[(tracking_uri(), run_id)] = found.info.artifact_uri
    wanted = None if history_keys is None else set(history_keys)
    history = {from_mlflow(key): [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
               for key in found.data.metrics if wanted is None or from_mlflow(key) in wanted}
    return RunRecord(run_id=run_id, name=found.info.run_name, status=found.info.status,
                     start_time=found.info.start_time / 1000,
                     end_time=found.info.end_time / 1000 if found.info.end_time else None,
                     params=dict(found.data.params), metrics=_metrics(found.data.metrics),
                     tags=dict(found.data.tags), history=history)


def _metrics(stored: dict[str, float]) -> dict[str, float]:
    """A run's latest metric values under the harness's names (tracking.names)."""
    return {from_mlflow(key): value for key, value in stored.items()}


def mlflow_run(client: MlflowClient, run_id: str):
    try:
        return client.get_run(run_id)
    except mlflow.exceptions.MlflowException as exc:
        if unreachable(exc):
            raise unavailable(exc) from None
        raise HarnessError(f"MLflow run '{run_id}' not found in {display_uri()} ({exc.error_code})"
                           f"{short_id_hint(run_id, client)}") from None


def short_id_hint(prefix: str, client: MlflowClient | None = None) -> str:
    """For a short run id (reports and the MLflow UI show the first 8 characters): the runs whose id
    starts with it, as the end of a not-found message; "" when it is not one or none does."""
    if not re.fullmatch(r"[0-9a-f]{4,31}", prefix):
        return ""
    client = client or open_client()
    try:
        experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
        found = client.search_runs(experiments, f"attributes.run_id LIKE '{prefix}%'",
                                   run_view_type=ViewType.ALL, max_results=4)
    except (mlflow.exceptions.MlflowException, requests.RequestException):  # only a hint: the error stands without it
        return ""
    named = [f"{r.info.run_id} ({r.info.run_name})" for r in found[:3]]
    if not named:
        return ""
    more = ", ..." if len(found) > 3 else ""
    return f"; a run id has 32 characters, and '{prefix}' starts {', '.join(named)}{more}: give the whole id"


def metric_history(run_id: str, key: str) -> list[tuple[int, float]]:
    """[(step, value)] of one metric of a run (``key`` as the harness names it: tracking.names)."""
    client = open_client()
    for stored in stored_names(key):
        found = [(m.step, m.value) for m in client.get_metric_history(run_id, stored)]
        if found:
            return found
    return []


def _artifacts(run_id: str):
    """The artifact repository of a run (its root is looked up once per run: a lookup reads the whole run)."""
    from mlflow.store.artifact.artifact_repository_registry import (
        get_artifact_repository,
    )

    key = (tracking_uri(), run_id)
    if key not in _ARTIFACT_URIS:
        _ARTIFACT_URIS[key] = mlflow_run(open_client(), run_id).info.artifact_uri
    open_client()
    return get_artifact_repository(_ARTIFACT_URIS[key])


def artifact_paths(run_id: str, folder: str | None = None) -> list[str]:
    """Paths of a run's artifacts directly inside ``folder`` (None: the top level)."""
    return [a.path for a in _artifacts(run_id).list_artifacts(folder)]


def read_artifact(run_id: str, path: str) -> bytes | None:
    """The bytes of one artifact file of a run, or None when the run has no such file."""
    repository = _artifacts(run_id)
    folder = path.rsplit("/", 1)[0] if "/" in path else None
    if path not in [a.path for a in repository.list_artifacts(folder)]:
        return None
    with tempfile.TemporaryDirectory(prefix="harness-artifact-") as dst:
        return Path(repository.download_artifacts(path, dst)).read_bytes()


# ------------------------------------------------------------------ sweeps: parents and trials

def child_runs(parent_run_id: str) -> list[RunRecord]:
    """The nested runs of ``parent_run_id`` (a sweep's trials), oldest first, in one search; their
    ``history`` is left empty (get_run has it)."""
    client = open_client()
    experiment_id = mlflow_run(client, parent_run_id).info.experiment_id
    where = f"tags.mlflow.parentRunId = '{parent_run_id}'"
    found, token = [], None
    while True:
        page = retrying(f"listing the nested runs of {parent_run_id}", lambda t=token: client.search_runs(
            [experiment_id], filter_string=where, max_results=1000, page_token=t))
        found.extend(page)
        token = page.token
        if not token:
            break
    records = [RunRecord(run_id=r.info.run_id, name=r.info.run_name, status=r.info.status,
                         start_time=r.info.start_time / 1000,
                         end_time=r.info.end_time / 1000 if r.info.end_time else None,
                         params=dict(r.data.params), metrics=_metrics(r.data.metrics), tags=dict(r.data.tags),
                         history={}) for r in found]
    return sorted(records, key=lambda r: (r.start_time, r.run_id))
