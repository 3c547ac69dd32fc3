"""MLflow tracking. This module is the only importer of mlflow in the harness.

Store: MLFLOW_TRACKING_URI when set (a team's `mlflow server`), else a local SQLite file
``mlflow.db`` in the working directory (MLflow's own default), with artifacts under ./mlruns.
A run that raises is ended FAILED, one interrupted by Ctrl-C is ended KILLED, never left RUNNING.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from harness.backend import backend_name, device_name, load_keras

keras = load_keras()  # before mlflow: its Keras flavour imports the backend, noisily otherwise

import mlflow  # noqa: E402
from mlflow.models import infer_signature  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

# MLflow narrates store creation and experiment creation at INFO; the user only needs problems.
for _name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent", "urllib3"):
    logging.getLogger(_name).setLevel(logging.WARNING)

PACKAGES = ("keras", "tensorflow", "jax", "torch", "keras-tuner", "mlflow", "numpy", "h5py", "svhn-harness")


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def _client() -> MlflowClient:
    mlflow.set_tracking_uri(tracking_uri())
    return MlflowClient(tracking_uri())


def ui_command(host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The MLflow UI on the store this module writes to."""
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri(),
            "--host", host, "--port", str(port)]


@contextlib.contextmanager
def run(spec, *, run_id: str | None = None, command: str | None = None) -> Iterator[str]:
    """Start (or, given ``run_id``, continue) the MLflow run of ``spec``; yields its run id."""
    _client()
    if run_id is None:
        experiment = mlflow.set_experiment(spec.tracking.experiment)
        active = mlflow.start_run(experiment_id=experiment.experiment_id, run_name=spec.name)
        _log_start(spec, command)
    else:
        active = mlflow.start_run(run_id=run_id)
        mlflow.set_tag("harness.resumed", "true")
    try:
        yield active.info.run_id
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def _log_start(spec, command: str | None) -> None:
    params = {k: ("" if v is None else v) for k, v in spec.flat().items()}
    mlflow.log_params(params)
    mlflow.log_text(spec.to_yaml(), "spec.yaml")
    mlflow.set_tags({
        "harness.command": command or " ".join(sys.argv),
        "harness.backend": backend_name(),
        "harness.device": device_name(),
        "harness.python": platform.python_version(),
        **_git_tags(),
        **{f"version.{p}": v for p, v in _versions().items()},
    })


def _versions() -> dict[str, str]:
    out = {}
    for package in PACKAGES:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return out


def _git_tags() -> dict[str, str]:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"mlflow.source.git.commit": commit, "harness.git_dirty": str(bool(dirty)).lower()}


def log_params(params: Mapping[str, Any]) -> None:
    mlflow.log_params(dict(params))


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    mlflow.log_metrics(clean, step=step)


def log_dict(data: Mapping[str, Any], name: str) -> None:
    mlflow.log_dict(dict(data), name)


def attach_file(run_id: str, path: Path, folder: str | None = None) -> None:
    """Add a file to a run's artifacts (the run may have ended)."""
    _client().log_artifact(run_id, str(path), folder)


def display_uri() -> str:
    """The tracking URI as shown to people: relative to the working directory, no credentials."""
    uri = tracking_uri()
    local = f"sqlite:///{Path.cwd().resolve()}/"
    if uri.startswith(local):
        return "sqlite:///" + uri[len(local):]
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return uri


def log_keras_model(model) -> None:
    """The trained model in MLflow's Keras flavour (loadable with mlflow.keras / mlflow.pyfunc)."""
    requirements = [f"{p}=={v}" for p, v in _versions().items() if p != "svhn-harness"]
    example = np.zeros((1, *model.input_shape[1:]), dtype="uint8")
    signature = infer_signature(example, np.asarray(model.predict(example, verbose=0)))
    mlflow.keras.log_model(model, name="model", pip_requirements=requirements, signature=signature)


def load_keras_model(run_id: str):
    """The model a run logged (the harness's custom layers must be imported first)."""
    _client()
    try:
        return mlflow.keras.load_model(f"runs:/{run_id}/model")
    except mlflow.exceptions.MlflowException as exc:
        from harness.errors import HarnessError

        raise HarnessError(f"run '{run_id}' has no loadable logged model ({exc.message})") from None


class EpochLogger(keras.callbacks.Callback):
    """Logs every epoch's training and validation metrics, and training images/s, to the active run."""

    def __init__(self, train_examples: int):
        super().__init__()
        self.train_examples = train_examples
        self._start = 0.0
        self._train_seconds = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._train_seconds = 0.0

    def on_test_begin(self, logs=None):
        if self._start and not self._train_seconds:
            self._train_seconds = time.perf_counter() - self._start

    def on_epoch_end(self, epoch, logs=None):
        seconds = self._train_seconds or (time.perf_counter() - self._start)
        values = dict(logs or {})
        values["images_per_sec"] = self.train_examples / max(seconds, 1e-9)
        values["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        log_metrics(values, step=epoch + 1)


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
    client = _client()
    try:
        found = client.get_run(run_id)
    except mlflow.exceptions.MlflowException as exc:
        from harness.errors import HarnessError

        raise HarnessError(f"MLflow run '{run_id}' not found in {tracking_uri()} ({exc.error_code})") from None
    history = {
        key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        for key in found.data.metrics
    }
    return RunRecord(
        run_id=run_id,
        name=found.info.run_name,
        status=found.info.status,
        start_time=found.info.start_time / 1000,
        end_time=found.info.end_time / 1000 if found.info.end_time else None,
        params=dict(found.data.params),
        metrics=dict(found.data.metrics),
        tags=dict(found.data.tags),
        history=history,
    )


def run_status(run_id: str) -> str | None:
    """RUNNING / FINISHED / FAILED / KILLED, or None if the store has no such run."""
    try:
        return _client().get_run(run_id).info.status
    except mlflow.exceptions.MlflowException:
        return None


def download_artifact(run_id: str, path: str) -> Path:
    """A run's artifact, copied into a fresh temporary folder."""
    _client()
    dst = tempfile.mkdtemp(prefix="harness-artifact-")
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=dst))
