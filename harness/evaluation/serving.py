"""The logged model: an MLflow pyfunc model that reads numbers from images (evaluation.reader).

``mlflow.pyfunc.load_model`` and ``mlflow models serve`` work without importing the harness first:
the model carries the harness code it was trained with and its .keras file.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import AnyType, ColSpec, Schema

from harness.backend import backend_name
from harness.evaluation.loading import KERAS_FILE, MODEL_NAME
from harness.evaluation.reader import BOX, DEFAULT_BOX_EXPAND, IMAGE, NumberReader
from harness.tracking.store import (
    TrackingUnavailable,
    display_uri,
    failure_cause,
    unreachable,
)

# ------------------------------------------------------------------------------ the logged model


class NumberModel(mlflow.pyfunc.PythonModel):
    """The pyfunc model: a DataFrame of images in, a DataFrame of numbers out (harness.evaluation.reader).

    Artifact ``keras_model`` is the trained .keras file. Model config: ``box_expand``, how much the
    digit box grows before cropping (the prepared data's), and ``keras_backend``, the backend it was
    trained on and its requirements name, used unless KERAS_BACKEND says otherwise (or Keras is
    already imported); both can be overridden at load time.
    """

    def load_context(self, context):
        config = dict(context.model_config or {})
        if config.get("keras_backend") and "keras" not in sys.modules:  # before Keras is imported
            os.environ.setdefault("KERAS_BACKEND", config["keras_backend"])
        self._reader = NumberReader.load(context.artifacts["keras_model"], config.get("box_expand", DEFAULT_BOX_EXPAND))

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
        if unreachable(exc):
            raise TrackingUnavailable(f"the MLflow tracking server at {display_uri()} did not take the "
                                      f"model ({failure_cause(exc)}); the trained model is kept locally") from None
        raise
    finally:
        sys.path[:] = saved_path
