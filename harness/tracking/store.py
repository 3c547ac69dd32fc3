"""The MLflow tracking store: where it is, opening it, and writes that survive a server away for a while.

Store: MLFLOW_TRACKING_URI when set (a team's `mlflow server`, e.g. one started by `harness server`),
else a local SQLite file ``mlflow.db`` in the working directory (MLflow's own default), with
artifacts under ./mlruns. `harness server` serves that same store and folder to a team.

Writes survive a tracking server that goes away for a while (restarted, say). MLflow's REST client
retries each request with backoff; on top of that every write the harness makes is retried for
RETRY_SECONDS, and is idempotent: a metric's timestamp is fixed when it is produced, so a batch
sent twice (the server stored it, the answer was lost) is stored once. If the server stays away,
the write raises TrackingUnavailable (one line: what, where, for how long), training stops (its local
checkpoint untouched), and the run's final status is written to a local ledger
(``runs/.unended/<run id>.json``) and set in the store by the next harness command that reaches it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import mlflow
import mlflow.pyfunc
import requests  # (MLflow's HTTP client; its errors mean "server unreachable")
from mlflow.tracking import MlflowClient

from harness import RUNS, atomic
from harness.errors import HarnessError
from harness.tracking.uris import (  # noqa: F401
    display_uri,
    local_store_uri,
    shown_uri,
    sqlite_file,
    tracking_uri,
)

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
LEDGER = RUNS / ".unended"  # runs whose final status could not be written yet


class TrackingUnavailable(HarnessError):
    """The tracking server stayed unreachable for longer than RETRY_SECONDS."""


_OPENED: set[str] = set()  # stores this process has opened: every write calls open_client()


def open_client() -> MlflowClient:
    uri = tracking_uri()
    path = None if uri in _OPENED else sqlite_file(uri)
    if path is not None and not path.exists():
        _create_sqlite_store(path)
    mlflow.set_tracking_uri(uri)
    try:
        client = MlflowClient(uri)
    except Exception as exc:  # noqa: BLE001  (SQLAlchemy's and MLflow's errors alike)
        if path is None:
            raise
        raise HarnessError(
            f"MLflow store {path}: cannot open it ({failure_cause(exc).splitlines()[0][:300]}). If a command was "
            f"stopped while it was being created, it holds no runs: move it away and run again (a new one "
            f"is created whole); else point MLFLOW_TRACKING_URI at a good store") from None
    _OPENED.add(uri)
    _settle(client)
    return client


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
            raise HarnessError(f"MLflow store {path}: could not create it: {failure_cause(exc).splitlines()[0][:300]}") from None
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


# ------------------------------------------------------------------ the ledger of unended runs

def _store_key() -> str:
    return hashlib.sha256(tracking_uri().encode()).hexdigest()[:16]  # no credentials on disk


def ledger_add(run_id: str, status: str, end_time: int) -> Path:
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
            with without_http_retries():
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
def without_http_retries() -> Iterator[None]:
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


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means the tracking server could not be reached or answered 5xx/429 (MLflow
    wraps requests' errors in MlflowException, keeping them as the context)."""
    return any(isinstance(e, (requests.exceptions.RequestException, ConnectionError, TimeoutError))
               for e in _chain(exc))


def failure_cause(exc: BaseException) -> str:
    text = " ".join(str(e) for e in _chain(exc))
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if found:
        return found.group(1).strip()
    if "too many" in text and "error responses" in text:
        return re.search(r"too many \d+ error responses", text).group(0)
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def unavailable(exc: BaseException) -> TrackingUnavailable:
    return TrackingUnavailable(f"cannot reach the MLflow tracking server at {display_uri()} ({failure_cause(exc)}); "
                               f"is it running?")


def retrying(what: str, call: Callable[[], Any]) -> Any:
    """``call()``, retried with backoff while the tracking server is unreachable, for up to
    RETRY_SECONDS; then TrackingUnavailable. Other errors are raised at once."""
    started, delay = time.monotonic(), 1.0
    while True:
        try:
            return call()
        except Exception as exc:
            if not unreachable(exc):
                raise
            waited = time.monotonic() - started
            if waited >= RETRY_SECONDS:
                raise TrackingUnavailable(
                    f"the MLflow tracking server at {display_uri()} did not answer for {waited:.0f} s while "
                    f"{what} ({failure_cause(exc)}); the run's local state is kept: run the same command again "
                    f"once the server is back") from None
            time.sleep(min(delay, RETRY_SECONDS - waited))
            delay = min(2 * delay, 30.0)
