"""MLflow tracking. This module is the only importer of mlflow in the harness.

Store: MLFLOW_TRACKING_URI when set (a team's `mlflow server`, e.g. one started by `harness server`),
else a local SQLite file ``mlflow.db`` in the working directory (MLflow's own default), with
artifacts under ./mlruns. `harness server` serves that same store and folder to a team.

A run that raises is ended FAILED, one interrupted by Ctrl-C is ended KILLED, never left RUNNING.

Writes survive a tracking server that goes away for a while (restarted, say). MLflow's REST client
retries each request with backoff; on top of that every write the harness makes is retried for
RETRY_SECONDS, and is idempotent: a metric's timestamp is fixed when it is produced, so a batch
sent twice (the server stored it, the answer was lost) is stored once. If the server stays away,
the write raises TrackingUnavailable (one line: what, where, for how long), training stops (its local
checkpoint untouched), and the run's final status is written to a local ledger
(``runs/.unended/<run id>.json``) and set in the store by the next harness command that reaches it.

Every run also records MLflow's system metrics (``system/...``: CPU, memory, disk, network, and GPU
where nvidia-ml-py finds one) every 10 s (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL changes it) and a
``harness.dataset_fingerprint`` tag (a hash of the prepared split files' fingerprints).

The logged model (``runs:/<run id>/model``) is an MLflow pyfunc model that reads numbers from images
(harness.evaluation.reader): ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` work without importing
the harness first; the model carries the harness code it was trained with and its .keras file.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import json
import logging
import numbers
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import pandas as pd

from harness.backend import backend_name, device_name, load_keras

# The Keras backend is imported only when needed (EpochLogger, models), so that `harness server` and
# `harness ui` start without it; importing mlflow itself does not import it.
import mlflow  # noqa: E402
import mlflow.pyfunc  # noqa: E402
import requests  # noqa: E402  (MLflow's HTTP client; its errors mean "server unreachable")
from mlflow.entities import Metric, Param, RunTag, ViewType  # noqa: E402
from mlflow.models import ModelSignature  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow.types.schema import AnyType, ColSpec, Schema  # noqa: E402

from harness.errors import HarnessError  # noqa: E402

# MLflow narrates store creation, experiment creation and system-metrics sampling at INFO; the user
# only needs problems.
for _name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent", "mlflow.system_metrics",
              "mlflow.tracking._tracking_service.client", "mlflow.models.model", "urllib3"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class _DropNotes(logging.Filter):
    """MLflow's notes to whoever writes a log_model call, not to the user: that a PythonModel object is
    pickled (ours is an empty instance of a harness class, pickled by reference) and that the input
    example is being validated."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not message.startswith(("Passing a Python object as `python_model`",
                                       "Validating input example against model signature"))


logging.getLogger("mlflow.pyfunc").addFilter(_DropNotes())

RETRY_SECONDS = 300.0  # how long a write keeps retrying while the tracking server is away
LEDGER = Path("runs") / ".unended"  # runs whose final status could not be written yet


class TrackingUnavailable(HarnessError):
    """The tracking server stayed unreachable for longer than RETRY_SECONDS."""

PACKAGES = ("keras", "tensorflow", "jax", "torch", "keras-tuner", "mlflow", "numpy", "h5py", "svhn-harness")


def local_store_uri() -> str:
    """The embedded default store: ./mlflow.db (artifacts under ./mlruns)."""
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or local_store_uri()


_OPENED: set[str] = set()  # stores this process has opened: every write calls _client()


def _client() -> MlflowClient:
    uri = tracking_uri()
    path = None if uri in _OPENED else _sqlite_file(uri)
    if path is not None and not path.exists():
        _create_sqlite_store(path)
    mlflow.set_tracking_uri(uri)
    try:
        client = MlflowClient(uri)
    except Exception as exc:  # noqa: BLE001  (SQLAlchemy's and MLflow's errors alike)
        if path is None:
            raise
        raise HarnessError(
            f"MLflow store {path}: cannot open it ({_cause(exc).splitlines()[0][:300]}). If a command was "
            f"stopped while it was being created, it holds no runs: move it away and run again (a new one "
            f"is created whole); else point MLFLOW_TRACKING_URI at a good store") from None
    _OPENED.add(uri)
    _settle(client)
    return client


def _sqlite_file(uri: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` store (relative to the working directory unless absolute)."""
    if not uri.startswith("sqlite:///"):
        return None
    name = urllib.parse.unquote(uri[len("sqlite:///"):].split("?", 1)[0])
    return Path(name) if name and name != ":memory:" else None


def _create_sqlite_store(path: Path) -> None:
    """Create a new SQLite store whole or not at all.

    MLflow builds its schema in dozens of migrations, which take seconds; a store whose creation was
    stopped half-way fails every later open ("table ... already exists"). So MLflow builds it in a
    temporary file beside ``path``, which then takes its name in one step. When another process
    created the store meanwhile, theirs is kept.
    """
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.creating").resolve()
    temporary.unlink(missing_ok=True)
    uri = f"sqlite:///{temporary}"
    try:
        try:
            MlflowClient(uri)  # MLflow's own schema and default experiment
        except Exception as exc:  # noqa: BLE001
            raise HarnessError(f"MLflow store {path}: could not create it: {_cause(exc).splitlines()[0][:300]}") from None
        finally:
            engine = SqlAlchemyStore._engine_map.pop(uri, None)  # no connection left to the temporary file
            if engine is not None:
                engine.dispose()
        try:
            os.link(temporary, path)  # fails, leaving theirs, if the store appeared meanwhile
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links
            if not path.exists():
                os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def ui_command(host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The MLflow UI on the store this module writes to."""
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri(),
            "--host", host, "--port", str(port)]


# ------------------------------------------------------------------------------ a team's server

@dataclasses.dataclass(frozen=True)
class ServerPlan:
    command: list[str]  # the `mlflow server` command line
    store: str  # backend store, as shown to people
    artifacts: str  # artifact destination
    uri: str  # what teammates export as MLFLOW_TRACKING_URI


def server_plan(backend_store_uri: str | None = None, artifacts_destination: str | None = None,
                host: str = "127.0.0.1", port: int = 5000) -> ServerPlan:
    """An MLflow tracking server for a team, by default over the local store (./mlflow.db and the
    ./mlruns artifact folder), so runs logged before it existed are visible through it too."""
    store = backend_store_uri or local_store_uri()
    artifacts = artifacts_destination or "mlruns"
    if "://" not in artifacts:  # a folder: absolute, so the server's working directory does not matter
        artifacts = str(Path(artifacts).expanduser().resolve())
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
               "--artifacts-destination", artifacts, "--host", host, "--port", str(port)]
    if host not in ("127.0.0.1", "localhost", "::1") and not os.environ.get("MLFLOW_SERVER_ALLOWED_HOSTS"):
        # MLflow accepts only localhost and private-IP Host headers by default (DNS-rebinding
        # protection); teammates will use this machine's name, so accept it too.
        try:
            from mlflow.server.security_utils import get_default_allowed_hosts
        except ImportError:  # an MLflow without the check
            get_default_allowed_hosts = None
        if get_default_allowed_hosts is not None:
            names = sorted({socket.gethostname(), socket.getfqdn()} - {""})
            command += ["--allowed-hosts",
                        ",".join(get_default_allowed_hosts() + names + [f"{n}:*" for n in names])]
    name = socket.getfqdn() if host in ("0.0.0.0", "::", "") else host
    uri = f"http://{f'[{name}]' if ':' in name else name}:{port}"
    return ServerPlan(command=command, store=_shown(store), artifacts=_shown(artifacts), uri=uri)


# ---------------------------------------------------------------------------------------- runs

@contextlib.contextmanager
def run(spec, *, run_id: str | None = None, command: str | None = None, parent_run_id: str | None = None,
        tags: Mapping[str, Any] | None = None) -> Iterator[str]:
    """Start (or, given ``run_id``, continue) the MLflow run of ``spec``; yields its run id.

    ``parent_run_id``: nest the run under that run (a sweep's trial under the sweep), which may be
    active in this process or not (a worker's trials). ``tags``: set when the run is created.
    """
    _client()
    resumed = run_id is not None
    nested = parent_run_id is not None
    try:
        if not resumed:
            experiment = mlflow.set_experiment(spec.tracking.experiment)
            _check_artifact_location(experiment)
            active = mlflow.start_run(experiment_id=experiment.experiment_id, run_name=spec.name,
                                      nested=nested, parent_run_id=parent_run_id,
                                      tags={k: str(v) for k, v in (tags or {}).items()} or None,
                                      log_system_metrics=True)
        else:
            active = mlflow.start_run(run_id=run_id, nested=nested, log_system_metrics=True)
    except Exception as exc:
        if _unreachable(exc):
            raise _unavailable(exc) from None
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
        with _without_http_retries():
            MlflowClient(tracking_uri()).set_tag(run_id, "harness.error", str(exc)[:5000])
    except Exception:  # noqa: BLE001  (the run is marked FAILED all the same)
        pass


def _log_start(spec, command: str | None) -> None:
    log_params({k: ("" if v is None else v) for k, v in spec.flat().items()})
    log_text(spec.to_yaml(), "spec.yaml")
    set_tags({
        "harness.command": command or " ".join(sys.argv),
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
            with _without_http_retries():
                mlflow.end_run(status)
        else:
            try:
                mlflow.end_run(status)  # pops the active run even when the request fails
            except Exception as exc:
                if not _unreachable(exc):
                    raise
                _retrying(f"ending run {run_id}",
                          lambda: _client().set_terminated(run_id, status, end_time=end_time))
    except BaseException as exc:  # a second Ctrl-C too: noted, then it goes on
        _ledger_add(run_id, status, end_time)
        if not isinstance(exc, Exception):
            raise
        print(f"harness: warning: MLflow run {run_id} could not be marked {status} now ({_cause(exc)}); "
              f"the next harness command that reaches {display_uri()} will", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ the ledger of unended runs

def _store_key() -> str:
    return hashlib.sha256(tracking_uri().encode()).hexdigest()[:16]  # no credentials on disk


def _ledger_add(run_id: str, status: str, end_time: int) -> Path:
    from harness import atomic

    entry = LEDGER / f"{run_id}.json"
    atomic.write_text(entry, json.dumps({"run_id": run_id, "status": status, "store": _store_key(),
                                         "end_time": end_time}))
    return entry


def _settle(client: MlflowClient) -> None:
    """Set the final status of runs in the ledger that belong to this store, where it can be done now."""
    if not LEDGER.is_dir():
        return
    for entry in sorted(LEDGER.glob("*.json")):
        try:
            data = json.loads(entry.read_text())
        except (OSError, ValueError):
            continue
        if data.get("store") != _store_key():
            continue
        try:
            with _without_http_retries():
                if client.get_run(data["run_id"]).info.status == "RUNNING":
                    client.set_terminated(data["run_id"], data["status"], end_time=data["end_time"])
        except mlflow.exceptions.MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                continue  # the store is still away: next time
        except Exception:  # noqa: BLE001  (requests' errors when unreachable: next time)
            continue
        entry.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------ retrying

@contextlib.contextmanager
def _without_http_retries() -> Iterator[None]:
    """MLflow's own per-request retries off (and a short timeout) for one quick attempt."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means the tracking server could not be reached or answered 5xx/429 (MLflow
    wraps requests' errors in MlflowException, keeping them as the context)."""
    return any(isinstance(e, (requests.exceptions.RequestException, ConnectionError, TimeoutError))
               for e in _chain(exc))


def _cause(exc: BaseException) -> str:
    text = " ".join(str(e) for e in _chain(exc))
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if found:
        return found.group(1).strip()
    if "too many" in text and "error responses" in text:
        return re.search(r"too many \d+ error responses", text).group(0)
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _unavailable(exc: BaseException) -> TrackingUnavailable:
    return TrackingUnavailable(f"cannot reach the MLflow tracking server at {display_uri()} ({_cause(exc)}); "
                               f"is it running?")


def _retrying(what: str, call: Callable[[], Any]) -> Any:
    """``call()``, retried with backoff while the tracking server is unreachable, for up to
    RETRY_SECONDS; then TrackingUnavailable. Other errors are raised at once."""
    started, delay = time.monotonic(), 1.0
    while True:
        try:
            return call()
        except Exception as exc:
            if not _unreachable(exc):
                raise
            waited = time.monotonic() - started
            if waited >= RETRY_SECONDS:
                raise TrackingUnavailable(
                    f"the MLflow tracking server at {display_uri()} did not answer for {waited:.0f} s while "
                    f"{what} ({_cause(exc)}); the run's local state is kept: run the same command again "
                    f"once the server is back") from None
            time.sleep(min(delay, RETRY_SECONDS - waited))
            delay = min(2 * delay, 30.0)


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


def _active_run_id() -> str:
    active = mlflow.active_run()
    if active is None:
        raise HarnessError("no active MLflow run: log inside `with tracking.run(spec)`")
    return active.info.run_id


def _log_batch(what: str, *, metrics=(), params=(), tags=()) -> None:
    """One idempotent write to the active run, retried (MLflow's limits: 1000 metrics, 100 params and
    100 tags per request)."""
    client, run_id = _client(), _active_run_id()
    for kind, items, size in (("metrics", list(metrics), 1000), ("params", list(params), 100),
                              ("tags", list(tags), 100)):
        for i in range(0, len(items), size):
            chunk = items[i:i + size]
            _retrying(f"logging {what} of run {run_id}", lambda c=chunk, k=kind: client.log_batch(run_id, **{k: c}))


def log_params(params: Mapping[str, Any]) -> None:
    _log_batch("params", params=[Param(str(k), str(v)) for k, v in params.items()])


def set_tags(tags: Mapping[str, Any]) -> None:
    _log_batch("tags", tags=[RunTag(str(k), str(v)) for k, v in tags.items()])


def _number(value) -> float | None:
    if isinstance(value, numbers.Real) or (isinstance(value, np.ndarray) and value.size == 1):
        return float(value)
    return None


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Numeric values of ``metrics`` at ``step`` (others are skipped). The timestamp is fixed here,
    so however often the batch is sent, the store keeps each value once."""
    now = int(time.time() * 1000)
    batch = [Metric(k, v, now, step or 0) for k, v in ((k, _number(v)) for k, v in metrics.items()) if v is not None]
    _log_batch("metrics", metrics=batch)


def log_text(text: str, name: str, *, run_id: str | None = None) -> None:
    """A text artifact of the active run (or of ``run_id``, which may be another process's run)."""
    run_id = run_id or _active_run_id()
    _retrying(f"logging {name} of run {run_id}", lambda: _client().log_text(run_id, text, name))


def log_dict(data: Mapping[str, Any], name: str) -> None:
    run_id = _active_run_id()
    _retrying(f"logging {name} of run {run_id}", lambda: _client().log_dict(run_id, dict(data), name))


def attach_file(run_id: str, path: Path, folder: str | None = None) -> None:
    """Add a file to a run's artifacts (the run may have ended)."""
    _retrying(f"uploading {Path(path).name} to run {run_id}",
              lambda: _client().log_artifact(run_id, str(path), folder))


def dataset_fingerprint(split_fingerprints: Mapping[str, str]) -> str:
    """One hash over the prepared split files' own ``fingerprint`` attributes (split -> value):
    two runs with the same value trained and were tested on the same examples."""
    digest = hashlib.sha256()
    for split in sorted(split_fingerprints):
        digest.update(f"{split}={split_fingerprints[split]}\n".encode())
    return digest.hexdigest()


def display_uri() -> str:
    """The tracking URI as shown to people: relative to the working directory, no credentials."""
    return _shown(tracking_uri())


def _shown(uri: str) -> str:
    here = f"{Path.cwd().resolve()}/"
    if uri.startswith("sqlite:///" + here):
        return "sqlite:///" + uri[len("sqlite:///" + here):]
    if uri.startswith(here):
        return "./" + uri[len(here):]
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return uri


# ------------------------------------------------------------------------------ the logged model

MODEL_NAME = "model"  # runs:/<run id>/model
KERAS_FILE = "model.keras"  # its Keras file: runs:/<run id>/model/artifacts/model.keras


class NumberModel(mlflow.pyfunc.PythonModel):
    """The pyfunc model: a DataFrame of images in, a DataFrame of numbers out (harness.evaluation.reader).

    Artifact ``keras_model`` is the trained .keras file. Model config: ``box_expand``, how much the
    digit box grows before cropping (the prepared data's), and ``keras_backend``, the backend it was
    trained on and its requirements name, used unless KERAS_BACKEND says otherwise (or Keras is
    already imported); both can be overridden at load time.
    """

    def load_context(self, context):
        config = dict(context.model_config or {})
        if config.get("keras_backend") and "keras" not in sys.modules:
            os.environ.setdefault("KERAS_BACKEND", config["keras_backend"])
        from harness.evaluation.reader import NumberReader

        self._reader = NumberReader.load(context.artifacts["keras_model"], config.get("box_expand", 0.3))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self._reader.predict(model_input)


def _model_requirements() -> list[str]:
    packages = ["mlflow", "cloudpickle", "keras", backend_name(), "numpy", "pandas", "pillow", "h5py"]
    found = []
    for package in packages:
        try:
            found.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    return found


def log_model(keras_file: str | os.PathLike, *, box_expand: float) -> None:
    """Log the saved ``keras_file`` to the active run as the pyfunc model ``model``, with the harness
    package as its code (so loading it needs no harness installed), a signature and an input example."""
    from harness.evaluation.reader import BOX, IMAGE

    image = np.full((16, 40, 3), 127, dtype=np.uint8)  # a small blank image, a box around its middle
    example = pd.DataFrame({IMAGE: [image.tolist()], "left": [4.0], "top": [2.0], "width": [32.0],
                            "height": [12.0]})
    signature = ModelSignature(
        # "any": a path, bytes or an array; boxes as ints or floats (MLflow refuses int -> double)
        inputs=Schema([ColSpec(AnyType(), IMAGE)] + [ColSpec(AnyType(), b, required=False) for b in BOX]),
        outputs=Schema([ColSpec("string", "number"), ColSpec("double", "confidence")]),
    )
    with tempfile.TemporaryDirectory(prefix="harness-model-") as tmp:
        if Path(keras_file).name != KERAS_FILE:  # the artifact keeps its file name: make it the known one
            keras_file = shutil.copy(keras_file, Path(tmp) / KERAS_FILE)
        _log_pyfunc(keras_file, box_expand, signature, example)


def _log_pyfunc(keras_file, box_expand: float, signature, example) -> None:
    saved_path = list(sys.path)  # MLflow's check of the input example puts the model's code on sys.path
    try:
        mlflow.pyfunc.log_model(
            name=MODEL_NAME, python_model=NumberModel(), artifacts={"keras_model": str(keras_file)},
            model_config={"box_expand": float(box_expand), "keras_backend": backend_name()},
            code_paths=[str(Path(__file__).resolve().parents[1])],  # the harness package, as it is now
            signature=signature, input_example=example, pip_requirements=_model_requirements(),
        )
    except Exception as exc:
        if _unreachable(exc):
            raise TrackingUnavailable(f"the MLflow tracking server at {display_uri()} did not take the "
                                      f"model ({_cause(exc)}); the trained model is kept locally") from None
        raise
    finally:
        sys.path[:] = saved_path


def load_keras_model(run_id: str):
    """The Keras model a run logged (its .keras file, loaded in Keras' safe mode)."""
    from harness.evaluation.evaluate import load_model

    _client()
    with tempfile.TemporaryDirectory(prefix="harness-model-") as dst:
        try:
            path = mlflow.artifacts.download_artifacts(
                f"runs:/{run_id}/{MODEL_NAME}/artifacts/{KERAS_FILE}", dst_path=dst, tracking_uri=tracking_uri())
        except mlflow.exceptions.MlflowException:
            path = None
        if path is not None:
            return load_model(path)
    try:  # a run logged before models were pyfunc models: MLflow's Keras flavour
        return mlflow.keras.load_model(f"runs:/{run_id}/{MODEL_NAME}")
    except mlflow.exceptions.MlflowException as exc:
        raise HarnessError(f"run '{run_id}' has no loadable logged model ({exc.message})") from None


def __getattr__(name: str):
    if name == "EpochLogger":  # a Keras callback: defined on first use, when Keras is wanted anyway
        globals()["EpochLogger"] = _epoch_logger_class()
        return globals()["EpochLogger"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _epoch_logger_class():
    keras = load_keras()

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

    EpochLogger.__module__ = __name__
    EpochLogger.__qualname__ = "EpochLogger"
    return EpochLogger


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
    return _record(client, _get(client, run_id), None)


def run_status(run_id: str) -> str | None:
    """RUNNING / FINISHED / FAILED / KILLED, or None if the store has no such run."""
    try:
        return _client().get_run(run_id).info.status
    except mlflow.exceptions.MlflowException as exc:
        if _unreachable(exc):  # not "no such run": the caller must not start afresh
            raise _unavailable(exc) from None
        return None


def download_artifact(run_id: str, path: str) -> Path:
    """A run's artifact, copied into a fresh temporary folder (removed when this process exits)."""
    _client()
    dst = tempfile.mkdtemp(prefix="harness-artifact-")
    atexit.register(shutil.rmtree, dst, ignore_errors=True)
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=dst))


def find_runs(*, experiment: str | None = None, parent_run_id: str | None = None,
              history_keys: Iterable[str] | None = None) -> list[RunRecord]:
    """Runs read back in one search, oldest first: the nested runs of ``parent_run_id`` (a sweep's
    trials), or every run of ``experiment`` except sweep parents (they have no results of their own).
    ``history`` holds the metrics in ``history_keys`` (None: all; each metric's history is one query).
    """
    from harness.errors import HarnessError

    client = _client()
    if parent_run_id is not None:
        experiment_id = _get(client, parent_run_id).info.experiment_id
        where = f"tags.mlflow.parentRunId = '{parent_run_id}'"
    else:
        try:
            found = client.get_experiment_by_name(experiment or "")
        except mlflow.exceptions.MlflowException as exc:
            if _unreachable(exc):
                raise _unavailable(exc) from None
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
    if parent_run_id is None:
        parents = {r.data.tags.get("mlflow.parentRunId") for r in runs}
        runs = [r for r in runs if r.info.run_id not in parents and r.data.tags.get("harness.kind") != "sweep"]
    runs.sort(key=lambda r: (r.info.start_time or 0, r.info.run_id))
    return [_record(client, r, history_keys) for r in runs]


def get_runs(run_ids: Iterable[str], history_keys: Iterable[str] | None = None) -> list[RunRecord]:
    """``get_run`` for several runs, with ``history`` limited to ``history_keys`` (None: all)."""
    client = _client()
    return [_record(client, _get(client, run_id), history_keys) for run_id in run_ids]


_ARTIFACT_URIS: dict[tuple[str, str], str] = {}  # (store, run id) -> artifact root: fixed for a run's life


def _record(client: MlflowClient, found, history_keys: Iterable[str] | None) -> RunRecord:
    run_id = found.info.run_id
    _ARTIFACT_URIS[(tracking_uri(), run_id)] = found.info.artifact_uri
    wanted = None if history_keys is None else set(history_keys)
    history = {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
               for key in found.data.metrics if wanted is None or key in wanted}
    return RunRecord(run_id=run_id, name=found.info.run_name, status=found.info.status,
                     start_time=found.info.start_time / 1000,
                     end_time=found.info.end_time / 1000 if found.info.end_time else None,
                     params=dict(found.data.params), metrics=dict(found.data.metrics), tags=dict(found.data.tags),
                     history=history)


def _get(client: MlflowClient, run_id: str):
    try:
        return client.get_run(run_id)
    except mlflow.exceptions.MlflowException as exc:
        if _unreachable(exc):
            raise _unavailable(exc) from None
        raise HarnessError(f"MLflow run '{run_id}' not found in {display_uri()} ({exc.error_code})"
                           f"{short_id_hint(run_id, client)}") from None


def short_id_hint(prefix: str, client: MlflowClient | None = None) -> str:
    """For a short run id (reports and the MLflow UI show the first 8 characters): the runs whose id
    starts with it, as the end of a not-found message; "" when it is not one or none does."""
    if not re.fullmatch(r"[0-9a-f]{4,31}", prefix):
        return ""
    client = client or _client()
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
    """[(step, value)] of one metric of a run."""
    return [(m.step, m.value) for m in _client().get_metric_history(run_id, key)]


def _artifacts(run_id: str):
    """The artifact repository of a run (its root is looked up once per run: a lookup reads the whole run)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    key = (tracking_uri(), run_id)
    if key not in _ARTIFACT_URIS:
        _ARTIFACT_URIS[key] = _get(_client(), run_id).info.artifact_uri
    _client()
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
    client = _client()
    experiment_id = _get(client, parent_run_id).info.experiment_id
    where = f"tags.mlflow.parentRunId = '{parent_run_id}'"
    found, token = [], None
    while True:
        page = _retrying(f"listing the nested runs of {parent_run_id}", lambda t=token: client.search_runs(
            [experiment_id], filter_string=where, max_results=1000, page_token=t))
        found.extend(page)
        token = page.token
        if not token:
            break
    records = [RunRecord(run_id=r.info.run_id, name=r.info.run_name, status=r.info.status,
                         start_time=r.info.start_time / 1000,
                         end_time=r.info.end_time / 1000 if r.info.end_time else None,
                         params=dict(r.data.params), metrics=dict(r.data.metrics), tags=dict(r.data.tags),
                         history={}) for r in found]
    return sorted(records, key=lambda r: (r.start_time, r.run_id))


def log_to(run_id: str, *, metrics: Mapping[str, float] | None = None, step: int | None = None,
           tags: Mapping[str, Any] | None = None) -> None:
    """Metrics and tags of a run that need not be this process's active run (a sweep's parent,
    updated by whichever process finished a trial). Idempotent and retried like the other writes."""
    now = int(time.time() * 1000)
    batch = [Metric(k, v, now, step or 0) for k, v in ((k, _number(v)) for k, v in (metrics or {}).items())
             if v is not None]
    tag_list = [RunTag(str(k), str(v)) for k, v in (tags or {}).items()]
    client = _client()
    _retrying(f"logging to run {run_id}", lambda: client.log_batch(run_id, metrics=batch, tags=tag_list))


def log_table(run_id: str, rows: list[Mapping[str, Any]], name: str) -> None:
    """``rows`` as the table artifact ``name`` (.json) of a run, replacing any earlier version (MLflow's
    own log_table appends). Same format and tag as MLflow's, so the UI and mlflow.load_table read it."""
    text = pd.DataFrame(list(rows)).to_json(orient="split", index=False)
    client = _client()
    _retrying(f"logging {name} of run {run_id}", lambda: client.log_text(run_id, text, name))
    logged = json.loads(_get(client, run_id).data.tags.get("mlflow.loggedArtifacts", "[]"))
    entry = {"path": name, "type": "table"}
    if entry not in logged:
        log_to(run_id, tags={"mlflow.loggedArtifacts": json.dumps(logged + [entry])})
