"""Held-out evaluation: sequence ("global"), length and per-position digit accuracy, and coverage."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.backend import load_keras
from harness.errors import DataError, HarnessError
from harness.metrics import evaluate_arrays
from harness.models import MODELS  # noqa: F401  (importing it registers the custom layers with Keras)
from harness.pipeline import SplitBatches, read_targets

keras = load_keras()


def predict_logits(model, path: Path, batch_size: int = 256) -> np.ndarray:
    batches = SplitBatches(path, batch_size, shuffle=False)
    return np.asarray(model.predict(batches, verbose=0))


def evaluate_model(model, path: Path, batch_size: int = 256) -> dict:
    """Metrics of ``model`` on the prepared split file ``path``."""
    return evaluate_arrays(read_targets(path), predict_logits(model, path, batch_size))


def load_model(path: str | Path):
    """A saved harness model (.keras), loaded in Keras' safe mode (no arbitrary code)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such model file")
    try:
        return keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for a bad archive; the user needs the file name
        raise DataError(path, f"not a loadable Keras model ({type(exc).__name__}: {exc})") from None


def evaluate_target(target: str, split: str = "test", data: str | None = None) -> tuple[dict, str]:
    """Evaluate a run id (its model and its spec's data) or a .keras file (with ``data``).

    Returns the metrics and a description of what was evaluated.
    """
    from harness import datasets, tracking
    from harness.spec import load_spec

    if target.endswith(".keras"):
        if data is None:
            raise HarnessError("evaluating a model file needs --data PREPARED.h5 (a prepared split file)")
        return evaluate_model(load_model(target), Path(data)), f"{target} on {data}"
    run = tracking.get_run(target)
    spec = load_spec(tracking.download_artifact(target, "spec.yaml"))
    path = Path(data) if data else datasets.prepare(spec.data).splits().get(split)
    if path is None:
        raise HarnessError(f"run {target} has no '{split}' split (validation fraction is 0)")
    local = Path("runs") / target / "model.keras"  # this machine trained it: no download needed
    model = load_model(local) if local.exists() else _logged_model(target)
    return evaluate_model(model, path), f"run {run.name} ({target}) on {split}"


def _logged_model(run_id: str):
    from harness import tracking

    return tracking.load_keras_model(run_id)
