"""Reading the numbers in image files with a trained model (``harness predict``).

A model is a .keras file (loaded in Keras' safe mode), an MLflow run id or a registered model (the
model and the box expansion of its run's data; harness.evaluation.loading). Every image is
preprocessed exactly as the prepared training data was (harness.data.prepare.preprocess): the
number's box (``box``: left, top, width, height, e.g. the union of its digit boxes; the whole image
without one) grown by ``box_expand``, cropped, converted to RGB and resized to the model's image
size. The numbers are read by the logged model's own reader (harness.evaluation.reader.NumberReader):
decoded as in evaluation, with the number's probability under the model as the confidence.

A file named explicitly that cannot be read is an error naming it; inside a folder, unreadable
images are skipped, counted and listed, so one bad file does not stop a folder of thousands.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from harness import atomic
from harness.data.prepare import crop_box, preprocess
from harness.errors import DataError, HarnessError
from harness.evaluation import loading
from harness.evaluation.reader import DEFAULT_BOX_EXPAND, NumberReader, check_model

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
FOLDER_CSV = Path("predictions.csv")  # where a folder's predictions go without --csv

Box = tuple[float, float, float, float]  # left, top, width, height


@dataclasses.dataclass(frozen=True)
class Prediction:
    path: str
    number: str  # digits; "" when the model reads none; a trailing "+" for more than five digits
    confidence: float  # the decoded number's probability under the model (length and every digit)
    boxed: bool = False  # whether the number's box was given; without it the whole image is the crop
    size: tuple[int, int] = (0, 0)  # the image's width and height


@dataclasses.dataclass(frozen=True)
class Skipped:
    path: str
    problem: str


@dataclasses.dataclass(frozen=True)
class ImageFile:
    path: Path
    in_folder: bool  # found by listing a folder: skipped when unreadable, not an error


# ------------------------------------------------------------------------------------ the model

def load_target(target: str):
    """(model, box_expand of its run or None) for a .keras file, a run id or a registered model."""
    loaded = loading.load(target)
    check_model(loaded.model, target)
    return loaded.model, loaded.box_expand


# ------------------------------------------------------------------------------------ the images

def image_files(inputs: Sequence[str | os.PathLike]) -> list[ImageFile]:
    """Each input file, and every image file directly inside each input folder (in natural order)."""
    out = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                           key=_natural)
            if not found:
                raise DataError(path, f"holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            out += [ImageFile(p, True) for p in found]
        elif path.is_file():
            out.append(ImageFile(path, False))
        else:
            raise DataError(path, "no such image file or folder")
    return out


def _natural(path: Path):
    """2.png before 10.png."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def read_crop(path: Path, image_size: int, box_expand: float, box: Box | None = None) -> np.ndarray:
    """One image file as the model sees it: (image_size, image_size, 3) uint8, preprocessed exactly
    like the prepared training data. DataError names the file when it cannot be read or cropped."""
    boxes = np.zeros((0, 4)) if box is None else np.asarray([box], dtype=np.float64)
    try:
        with Image.open(path) as image:
            try:
                crop_box(boxes, image.width, image.height, box_expand)
            except ValueError:
                raise DataError(path, f"the box {box} lies outside the {image.width}x{image.height} image") from None
            return preprocess(image, boxes, image_size, box_expand)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:  # PIL's errors
        raise DataError(path, f"cannot read the image ({exc})") from None


# ------------------------------------------------------------------------------------ predicting

def predict_files(model, files: Iterable[ImageFile], *, box: Box | None = None,
                  box_expand: float = DEFAULT_BOX_EXPAND,
                  batch_size: int = 256) -> Iterator[Prediction | Skipped]:
    """A Prediction per readable image, in order, a batch at a time; a Skipped for each unreadable
    image found in a folder. An unreadable file named explicitly raises DataError."""
    reader = NumberReader(model, box_expand)  # checks that it is a number model
    batch: list[tuple[Path, np.ndarray]] = []
    for item in files:
        try:
            batch.append((item.path, read_crop(item.path, reader.image_size, box_expand, box), _size(item.path)))
        except DataError as exc:
            if not item.in_folder:
                raise
            yield Skipped(str(item.path), exc.problem)
            continue
        if len(batch) == batch_size:
            yield from _predict_batch(reader, batch, box is not None)
            batch = []
    if batch:
        yield from _predict_batch(reader, batch, box is not None)


def _predict_batch(reader: NumberReader, batch: list, boxed: bool) -> list[Prediction]:
    crops = np.stack([crop for _, crop, _ in batch])
    numbers, confidence = reader.read(crops, batch_size=len(crops))
    return [Prediction(str(path), number, float(c), boxed, size)
            for (path, _, size), number, c in zip(batch, numbers, confidence)]


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.width, image.height


def uncropped(predictions: Sequence[Prediction], image_size: int) -> list[Prediction]:
    """The predictions made without a box on an image much larger than a number crop (over three times
    the model's input on a side): likely a whole street scene, which the model was not trained to read."""
    return [p for p in predictions if not p.boxed and max(p.size) > 3 * image_size]


def write_csv(path: str | os.PathLike, predictions: Sequence[Prediction]) -> Path:
    """``path,number,confidence,box`` rows, written atomically (``box``: given or none). Read
    ``number`` back as text: "019"."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "number", "confidence", "box"])
    writer.writerows([p.path, p.number, f"{p.confidence:.6f}", "given" if p.boxed else "none"] for p in predictions)
    atomic.write_text(Path(path), buffer.getvalue())
    return Path(path)


@dataclasses.dataclass(frozen=True)
class PredictResult:
    predictions: list[Prediction]
    skipped: list[Skipped]
    csv: Path | None
    uncropped: list[Prediction]  # read without a box from images much larger than a number crop


def predict(target: str, inputs: Sequence[str], *, box: Box | None = None, csv_path: str | None = None,
            box_expand: float | None = None, batch_size: int = 256,
            echo: Callable[[Prediction], None] | None = None) -> PredictResult:
    """Read the number in every input image (files and folders) with model ``target``.

    ``echo`` sees each prediction as soon as its batch is done. The CSV is written to ``csv_path``,
    or to predictions.csv when a folder was given. ``box`` applies to a single image file only.
    """
    if batch_size < 1 or (box_expand is not None and box_expand < 0):
        raise HarnessError(f"need --batch-size >= 1 and --box-expand >= 0, got {batch_size}, {box_expand}")
    files = image_files(inputs)
    if box is not None and (len(files) != 1 or files[0].in_folder):
        raise HarnessError("--box gives the number's box in one image: name exactly one image file with it")
    model, run_expand = load_target(target)
    expand = box_expand if box_expand is not None else (run_expand if run_expand is not None else DEFAULT_BOX_EXPAND)
    predictions, skipped = [], []
    for result in predict_files(model, files, box=box, box_expand=expand, batch_size=batch_size):
        if isinstance(result, Skipped):
            skipped.append(result)
            continue
        predictions.append(result)
        if echo:
            echo(result)
    out = csv_path or (FOLDER_CSV if any(f.in_folder for f in files) else None)
    image_size = model.input_shape[1]
    return PredictResult(predictions, skipped, write_csv(out, predictions) if out else None,
                         uncropped(predictions, image_size))


def parse_box(text: str) -> Box:
    """'left,top,width,height' (pixels) -> a box; ValueError saying what is wrong."""
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4 or not all(np.isfinite(values)):
        raise ValueError(f"{text!r}: expected four numbers left,top,width,height")
    if values[2] <= 0 or values[3] <= 0:
        raise ValueError(f"{text!r}: width and height must be positive")
    return values  # type: ignore[return-value]
