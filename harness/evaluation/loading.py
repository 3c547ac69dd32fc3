"""Loading a trained model: the one place where a model reference becomes a Keras model.

A reference is one of

- a ``.keras`` file (any path ending in .keras, naming a file, or holding a path separator);
- an MLflow run id: this machine's ``runs/<id>/model.keras`` when it trained the run (no download),
  else the .keras file of the run's logged model (``runs:/<id>/model/artifacts/model.keras``), else,
  for a run logged before models were pyfunc models, MLflow's Keras flavour;
- a registered model, ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``: the .keras file of that
  model version; its run (the version's source run) says how its data was prepared.

Keras files are loaded in Keras' safe mode (no arbitrary code); a file that cannot be loaded is a
DataError naming it. Besides the model, inference needs the box expansion its training data was
prepared with (``box_expand``): a run's spec (its spec.yaml artifact) says it; a file does not.
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from harness import RUNS
from harness.backend import load_keras
from harness.errors import DataError, HarnessError
from harness.spec import Spec, load_spec

MODEL_NAME = "model"  # the logged model's artifact path: runs:/<run id>/model
KERAS_FILE = "model.keras"  # its Keras file, and a run's local copy: runs/<run id>/model.keras
REGISTERED = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/@]+))")


def load_model(path: str | os.PathLike):
    """A saved harness model (.keras), loaded in Keras' safe mode (no arbitrary code)."""
    # deferred: imports Keras, and registers the harness's layers (models.layers) for safe-mode loading
    from harness.models import layers  # noqa: F401

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such model file")
    try:
        return load_keras().saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for a bad archive; the user needs the file name
        raise DataError(path, f"not a loadable Keras model ({type(exc).__name__}: {exc})") from None


def is_file(reference: str) -> bool:
    """Whether ``reference`` names a .keras file rather than a run or a registered model."""
    if reference.startswith("models:/"):
        return False
    return reference.endswith(".keras") or Path(reference).is_file() or os.sep in reference or "/" in reference


def local_file(run_id: str) -> Path:
    """Where a run trained on this machine keeps its model."""
    return RUNS / run_id / KERAS_FILE


class LoadedModel:
    """A loaded model, where it came from, and what inference needs to know of its data.

    ``model``: the Keras model; ``reference``: as given; ``run_id``: the MLflow run it was trained
    in (None for a file).
    """

    def __init__(self, model, reference: str, run_id: str | None = None):
        self.model, self.reference, self.run_id = model, reference, run_id

    @functools.cached_property
    def spec(self) -> Spec | None:
        """The run's spec; None for a file, or a run without one (logged by other tools)."""
        return None if self.run_id is None else run_spec(self.run_id)

    @property
    def box_expand(self) -> float | None:
        """How much the digit box grew before cropping in the model's data; None when unknown."""
        return None if self.spec is None else self.spec.data.box_expand


def load(reference: str) -> LoadedModel:
    """The model ``reference`` names (see the module's docstring); an unknown run or registered model
    is an error naming it and the tracking store."""
    if is_file(reference):
        return LoadedModel(load_model(reference), reference)
    if reference.startswith("models:/"):
        run_id, model = _registered(reference)
        return LoadedModel(model, reference, run_id)
    # deferred: MLflow; a .keras file needs none
    from harness.tracking import query

    query.get_run(reference)  # an unknown id is an error naming it and the store
    return LoadedModel(run_model(reference), reference, reference)


def run_model(run_id: str):
    """The Keras model of MLflow run ``run_id``: this machine's copy if it trained it, else the logged one."""
    local = local_file(run_id)  # no download needed
    return load_model(local) if local.exists() else logged_model(run_id)


def logged_model(run_id: str):
    """The Keras model a run logged (its .keras file, loaded in Keras' safe mode)."""
    # deferred: MLflow; a .keras file needs none
    import mlflow

    model = _download(f"runs:/{run_id}/{MODEL_NAME}/artifacts/{KERAS_FILE}")
    if model is not None:
        return model
    try:  # a run logged before models were pyfunc models: MLflow's Keras flavour
        return mlflow.keras.load_model(f"runs:/{run_id}/{MODEL_NAME}")
    except mlflow.exceptions.MlflowException as exc:
        raise HarnessError(f"run '{run_id}' has no loadable logged model ({exc.message})") from None


def run_spec(run_id: str) -> Spec | None:
    """The spec a run logged (spec.yaml), or None when it has none."""
    # deferred: MLflow; a .keras file needs none
    from harness.tracking import query, store

    try:
        path = query.download_artifact(run_id, "spec.yaml")
    except Exception as exc:  # a run logged by other tools: MLflow's errors for an absent artifact vary by store
        if store.unreachable(exc):
            raise store.unavailable(exc) from None
        return None
    return load_spec(path)


def _registered(uri: str) -> tuple[str | None, Any]:
    """(run id, Keras model) of a registered model version."""
    # deferred: MLflow; a .keras file needs none
    import mlflow

    from harness.tracking.store import display_uri, open_client

    found = REGISTERED.fullmatch(uri)
    if found is None:
        raise HarnessError(f"{uri}: a registered model is models:/NAME/VERSION or models:/NAME@ALIAS")
    client = open_client()
    try:
        if found["alias"]:
            version = client.get_model_version_by_alias(found["name"], found["alias"])
        else:
            version = client.get_model_version(found["name"], found["version"])
    except mlflow.exceptions.MlflowException as exc:
        raise HarnessError(f"{uri}: {exc.message} in {display_uri()}") from None
    model = _download(f"{uri}/artifacts/{KERAS_FILE}")
    if model is None:
        raise HarnessError(f"{uri}: the model version has no {KERAS_FILE} (not a harness model)")
    return version.run_id or None, model


def _download(uri: str):
    """The Keras model of the .keras artifact at ``uri``, or None when there is none."""
    import mlflow  # deferred: MLflow; a .keras file needs none

    from harness.tracking.store import open_client, tracking_uri

    open_client()
    with tempfile.TemporaryDirectory(prefix="harness-model-") as dst:
        try:
            path = mlflow.artifacts.download_artifacts(uri, dst_path=dst, tracking_uri=tracking_uri())
        except mlflow.exceptions.MlflowException:
            return None
        return load_model(path)
