"""Reading numbers from images with a trained model: what the logged MLflow model and `harness predict` run.

Input: a pandas DataFrame, one row per image. Column ``image`` holds an image file path, the bytes
of an encoded image file (PNG, JPEG, ...) or a uint8 H x W x 3 array (nested lists too, as JSON
brings them; H x W grey and H x W x 4 work as well). Optional columns ``left``, ``top``, ``width``,
``height`` give the box around the number's digits in pixels, as SVHN's digit boxes do; a row
without one (missing column or NaN) uses the whole image.

Each image goes through the same preprocessing as the training data (harness.data.prepare.preprocess:
the box grown by ``box_expand``, cropped, converted to RGB, resized to the model's input size), so
a crop of a raw image with its union digit box is byte-identical to the prepared split file's.

Output: a DataFrame with ``number`` (a string of digits; "" when the model reads no digit; a number
longer than five digits reads as its first five followed by "+") and ``confidence`` (the model's
probability of that reading, the score that coverage rejects by).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from harness import MAX_DIGITS
from harness.backend import load_keras
from harness.data.prepare import preprocess
from harness.errors import HarnessError
from harness.evaluation import loading

IMAGE = "image"
BOX = ("left", "top", "width", "height")
DEFAULT_BOX_EXPAND = 0.3  # the paper's (and the spec's default); a run brings its own


def number_text(length_class: int, digits) -> str:
    """A number as read: its digits, '' for no digits, a trailing '+' for the length class ">5"."""
    shown = "".join(str(int(d)) for d in list(digits)[:min(int(length_class), MAX_DIGITS)])
    return shown + ("+" if length_class > MAX_DIGITS else "")


def check_model(model, source: str) -> int:
    """The model's image size; an error unless it maps (S, S, 3) images to the 57 number logits."""
    # deferred: Keras, which the pyfunc model imports only once its backend is chosen (serving)
    from harness import LOGITS

    shape, out = tuple(model.input_shape), tuple(model.output_shape)
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3 or out[-1] != LOGITS:
        raise HarnessError(f"{source}: not a harness number model (input {shape}, output {out}; "
                           f"expected (batch, S, S, 3) images -> (batch, {LOGITS}) logits)")
    return int(shape[1])


class NumberReader:
    """A harness Keras model with the preprocessing and decoding around it; ``source`` names the
    model in the error raised when it is not a number model."""

    def __init__(self, model, box_expand: float = DEFAULT_BOX_EXPAND, source: str = "model"):
        self.model = model
        self.box_expand = float(box_expand)
        self.image_size = check_model(model, source)

    @classmethod
    def load(cls, reference: str | os.PathLike, box_expand: float | None = None) -> "NumberReader":
        """From a .keras file (loaded in Keras' safe mode), a run id or a registered model
        (harness.evaluation.loading). ``box_expand`` None: the run's, else DEFAULT_BOX_EXPAND."""
        loaded = loading.load(str(reference))
        if box_expand is None:
            box_expand = loaded.box_expand if loaded.box_expand is not None else DEFAULT_BOX_EXPAND
        return cls(loaded.model, box_expand, source=str(reference))

    def crops(self, frame: pd.DataFrame) -> np.ndarray:
        """(N, S, S, 3) uint8: every row preprocessed like the prepared training data."""
        if not isinstance(frame, pd.DataFrame) or IMAGE not in frame.columns:
            raise HarnessError(f"expected a DataFrame with an '{IMAGE}' column (file path, encoded bytes "
                               f"or uint8 H x W x 3 array), optionally {', '.join(BOX)}")
        out = np.empty((len(frame), self.image_size, self.image_size, 3), dtype=np.uint8)
        for i, (index, row) in enumerate(frame.iterrows()):
            try:
                image = _open(row[IMAGE])
            except (OSError, SyntaxError, ValueError, TypeError,
                    Image.DecompressionBombError) as exc:  # PIL's errors for bad files too
                raise HarnessError(f"row {index}: cannot read the image ({exc})") from None
            try:
                out[i] = preprocess(image, _box(row), self.image_size, self.box_expand)
            except (ValueError, TypeError) as exc:
                raise HarnessError(f"row {index}: {exc}") from None
        return out

    def read(self, crops: np.ndarray, batch_size: int = 256) -> tuple[list[str], np.ndarray]:
        """The numbers in preprocessed ``crops`` (see :meth:`crops`) and the model's probability of
        each reading (float64), decoded as in evaluation (harness.models.heads.decode)."""
        # deferred: Keras, which the pyfunc model imports only once its backend is chosen (serving)
        from harness.models.heads import decode

        logits = np.asarray(self.model.predict(crops, batch_size=batch_size, verbose=0))
        ops = load_keras().ops  # loaded already: the model is a Keras model
        length, digits, logp = (np.asarray(ops.convert_to_numpy(t)) for t in decode(logits))
        return [number_text(int(n), d) for n, d in zip(length, digits)], np.exp(logp.astype(np.float64))

    def predict(self, frame: pd.DataFrame, batch_size: int = 256) -> pd.DataFrame:
        crops = self.crops(frame)
        if not len(crops):
            return pd.DataFrame({"number": pd.Series([], dtype=str), "confidence": pd.Series([], dtype=float)})
        numbers, confidence = self.read(crops, batch_size)
        return pd.DataFrame({"number": numbers, "confidence": confidence}, index=frame.index)


def _open(value) -> Image.Image:
    if isinstance(value, (str, os.PathLike)):
        with Image.open(Path(value)) as image:
            image.load()
            return image
    if isinstance(value, (bytes, bytearray, memoryview)):
        image = Image.open(io.BytesIO(bytes(value)))
        image.load()
        return image
    array = np.asarray(value)
    if array.dtype != np.uint8:
        if array.dtype.kind not in "iuf" or array.size == 0 or array.min() < 0 or array.max() > 255 \
                or not np.array_equal(array, np.round(array)):
            raise ValueError(f"an image array must hold uint8 values, got {array.dtype} {array.shape}")
        array = array.astype(np.uint8)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ValueError(f"an image array must be H x W, H x W x 3 or H x W x 4, got shape {array.shape}")
    return Image.fromarray(array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array)


def _box(row: pd.Series) -> np.ndarray:
    """The row's digit box as a (1, 4) array, or (0, 4) for the whole image."""
    values = [row.get(name) for name in BOX]
    missing = [v is None or bool(pd.isna(v)) for v in values]
    if all(missing):
        return np.zeros((0, 4))
    if any(missing):
        raise ValueError(f"a box needs all of {', '.join(BOX)}")
    return np.asarray([values], dtype=np.float64)
