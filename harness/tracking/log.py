"""Logging to a run: params, metrics, tags, text, files and tables, each write retried (tracking.store)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

from harness.data.splitfile import PreparedSplit
from harness.errors import HarnessError
from harness.tracking.names import to_mlflow
from harness.tracking.query import mlflow_run
from harness.tracking.store import open_client, retrying


def _active_run_id() -> str:
    active = mlflow.active_run()
    if active is None:
        raise HarnessError("no active MLflow run: log inside `with tracking.run(spec)`")
    return active.info.run_id


def _log_batch(what: str, *, metrics=(), params=(), tags=()) -> None:
    """One idempotent write to the active run, retried (MLflow's limits: 1000 metrics, 100 params and
    100 tags per request)."""
    client, run_id = open_client(), _active_run_id()
    for kind, items, size in (("metrics", list(metrics), 1000), ("params", list(params), 100),
                              ("tags", list(tags), 100)):
        for i in range(0, len(items), size):
            chunk = items[i:i + size]
            retrying(f"logging {what} of run {run_id}", lambda c=chunk, k=kind: client.log_batch(run_id, **{k: c}))


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
    batch = [Metric(to_mlflow(k), v, now, step or 0) for k, v in ((k, _number(v)) for k, v in metrics.items())
             if v is not None]
    _log_batch("metrics", metrics=batch)


def log_text(text: str, name: str, *, run_id: str | None = None) -> None:
    """A text artifact of the active run (or of ``run_id``, which may be another process's run)."""
    run_id = run_id or _active_run_id()
    retrying(f"logging {name} of run {run_id}", lambda: open_client().log_text(run_id, text, name))


def log_dict(data: Mapping[str, Any], name: str) -> None:
    run_id = _active_run_id()
    retrying(f"logging {name} of run {run_id}", lambda: open_client().log_dict(run_id, dict(data), name))


def attach_file(run_id: str, path: Path, folder: str | None = None) -> None:
    """Add a file to a run's artifacts (the run may have ended)."""
    retrying(f"uploading {Path(path).name} to run {run_id}",
              lambda: open_client().log_artifact(run_id, str(path), folder))


def dataset_fingerprint(split_fingerprints: Mapping[str, str]) -> str:
    """One hash over the prepared split files' own ``fingerprint`` attributes (split -> value):
    two runs with the same value trained and were tested on the same examples."""
    digest = hashlib.sha256()
    for split in sorted(split_fingerprints):
        digest.update(f"{split}={split_fingerprints[split]}\n".encode())
    return digest.hexdigest()


def log_to(run_id: str, *, metrics: Mapping[str, float] | None = None, step: int | None = None,
           tags: Mapping[str, Any] | None = None) -> None:
    """Metrics and tags of a run that need not be this process's active run (a sweep's parent,
    updated by whichever process finished a trial). Idempotent and retried like the other writes."""
    now = int(time.time() * 1000)
    batch = [Metric(to_mlflow(k), v, now, step or 0) for k, v in ((k, _number(v)) for k, v in (metrics or {}).items())
             if v is not None]
    tag_list = [RunTag(str(k), str(v)) for k, v in (tags or {}).items()]
    client = open_client()
    retrying(f"logging to run {run_id}", lambda: client.log_batch(run_id, metrics=batch, tags=tag_list))


def log_table(run_id: str, rows: list[Mapping[str, Any]], name: str) -> None:
    """``rows`` as the table artifact ``name`` (.json) of a run, replacing any earlier version (MLflow's
    own log_table appends). Same format and tag as MLflow's, so the UI and mlflow.load_table read it."""
    text = pd.DataFrame(list(rows)).to_json(orient="split", index=False)
    client = open_client()
    retrying(f"logging {name} of run {run_id}", lambda: client.log_text(run_id, text, name))
    logged = json.loads(mlflow_run(client, run_id).data.tags.get("mlflow.loggedArtifacts", "[]"))
    entry = {"path": name, "type": "table"}
    if entry not in logged:
        log_to(run_id, tags={"mlflow.loggedArtifacts": json.dumps(logged + [entry])})


@dataclasses.dataclass(frozen=True)
class DataInput:
    """One split of a run's data, as MLflow's dataset input: the UI's Datasets column shows it and
    filters by it, so runs on different data never look comparable."""

    name: str  # what it is, e.g. "synthetic{train=300,test=100}/train"
    digest: str  # the split file's fingerprint
    source: str  # where it came from (the prepared file, relative to the working directory)
    profile: Mapping[str, Any]  # image and digit counts
    context: str  # training, validation or evaluation
    split: str


def split_input(name: str, path: Path, context: str, split: str, source: Path | None = None) -> DataInput:
    """The prepared split file ``path`` as a dataset input called ``name``: its fingerprint as digest,
    ``source`` (by default the file itself; relative to the working directory where it lies below it)
    as source, its image and digit counts as profile."""
    prepared = PreparedSplit(path)
    lengths = prepared.length_histogram()
    source = Path(source or path)
    try:
        source = source.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        pass
    return DataInput(name=name, digest=prepared.fingerprint[:16], source=str(source),
                     profile={"images": prepared.count, "image_size": prepared.image_size,
                              "digits": sum(int(k) * int(v) for k, v in lengths.items() if k.isdigit()),
                              "length_histogram": lengths},
                     context=context, split=split)


def log_inputs(run_id: str, inputs: Sequence[DataInput]) -> None:
    """Log ``inputs`` as the run's dataset inputs (idempotent: MLflow keeps one per name and digest)."""
    found = [DatasetInput(
        dataset=Dataset(name=i.name, digest=i.digest, source_type="local", source=json.dumps({"uri": i.source}),
                        profile=json.dumps(dict(i.profile))),
        tags=[InputTag("mlflow.data.context", i.context), InputTag("harness.split", i.split)])
        for i in inputs]
    client = open_client()
    retrying("logging the run's datasets", lambda: client.log_inputs(run_id, datasets=found))
