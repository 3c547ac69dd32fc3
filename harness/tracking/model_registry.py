"""The MLflow model registry: a run's logged model registered under a name, an alias moved onto it.

``models:/NAME/VERSION`` and ``models:/NAME@ALIAS`` then name the model everywhere a model is taken
(predict, evaluate, train.init_from, serving). Names and aliases are checked (harness.spec's rules) before MLflow is loaded.
"""

from __future__ import annotations

import contextlib
import io

from harness.errors import HarnessError
from harness.spec import check_model_alias, check_model_name


def register(run_id: str, name: str, alias: str = "") -> str:
    """Register the model ``run_id`` logged as a new version of ``name`` (created when new), point
    ``alias`` at it, and return ``models:/NAME/VERSION``."""
    check_model_name(name)
    check_model_alias(alias)
    # deferred: MLflow, so that a bad name is answered before it loads
    import mlflow

    from harness.tracking import query, store

    if query.run_status(run_id) is None:
        raise HarnessError(f"no MLflow run '{run_id}' in {store.display_uri()}{query.short_id_hint(run_id)}")
    # runs logged before the tag existed keep their model in the same place
    source = query.get_runs([run_id], history_keys=()).pop().tags.get("harness.model", f"runs:/{run_id}/model")
    try:
        info = mlflow.models.get_model_info(source)
    except Exception:  # noqa: BLE001  (MLflow raises several kinds for "no model there")
        raise HarnessError(f"run '{run_id}' logged no model (tracking.log_model was false, or it is a sweep trial "
                           f"that did not lead the sweep)") from None
    if getattr(info, "model_id", None):  # MLflow 3 keeps a logged model apart from the run's artifacts
        source = f"models:/{info.model_id}"
    client = store.open_client()
    with contextlib.redirect_stderr(io.StringIO()):  # MLflow narrates "Successfully registered", "Created version"
        version = store.retrying(f"registering run {run_id}'s model as {name}", lambda: mlflow.register_model(
            source, name, tags={"harness.run_id": run_id}))
    if alias:
        store.retrying(f"setting alias {alias} of {name}",
                       lambda: client.set_registered_model_alias(name, alias, version.version))
    return f"models:/{name}/{version.version}"
