"""Held-out evaluation: sequence ("global"), length and per-position digit accuracy, and coverage."""

from __future__ import annotations

import dataclasses
import gzip
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from harness import MAX_DIGITS, atomic
from harness.backend import load_keras
from harness.data import datasets
from harness.data.batches import SplitBatches
from harness.data.splitfile import PreparedSplit
from harness.errors import DataError, HarnessError
from harness.evaluation import loading
from harness.evaluation.intervals import wilson
from harness.evaluation.reader import number_text
from harness.models.heads import evaluate_arrays, per_example, split_logits
from harness.models.layers import Crop

keras = load_keras()


TEST_CROPS = (1, 5)  # evaluation's choices: the centre crop, or it and four more (multi-crop testing)


def predict_logits(model, path: Path, batch_size: int = 256, crops: int = 1) -> np.ndarray:
    """Logits for the prepared split file ``path``, whose images may be larger or smaller than the
    model's input (see :func:`for_image_size`).

    ``crops`` 1: the model's centre crop, as in training's evaluation. ``crops`` 5: the centre crop
    and four more, a quarter of the margin from each corner (offsets 2 and 8 of a 64x64 image's 10
    pixels), each head's log-probabilities averaged over the five (a geometric mean; the returned
    "logits" are those averages, which decode as logits do). Where the image is the crop's own size
    the five are one.
    """
    if crops not in TEST_CROPS:
        raise HarnessError(f"test crops must be one of {', '.join(map(str, TEST_CROPS))}, got {crops}")
    batches = SplitBatches(path, batch_size, shuffle=False)
    size, crop = batches.split.image_size, _crop_size(model)
    if crops == 1 or crop >= size:  # (a crop larger than the images: for_image_size names the file)
        return np.asarray(for_image_size(model, size, path).predict(batches, verbose=0))
    margin = size - crop
    near = margin // 4
    offsets = [(margin // 2, margin // 2)] + [(top, left) for top in (near, margin - near)
                                              for left in (near, margin - near)]
    at_crop = for_image_size(model, crop, path)
    total = None
    for top, left in offsets:
        logp = _log_probs(at_crop.predict(_Window(batches, top, left, crop), verbose=0))
        total = logp if total is None else total + logp
    return total / len(offsets)


def _log_probs(logits) -> np.ndarray:
    """Logits -> each head's log-probabilities, laid out as logits are (they decode alike)."""
    lengths, digits = split_logits(logits)
    return np.concatenate([np.asarray(lengths), np.asarray(digits).reshape(len(logits), -1)], axis=1)


class _Window(keras.utils.PyDataset):
    """A split's images cut to one ``size`` x ``size`` window at (top, left)."""

    def __init__(self, batches: SplitBatches, top: int, left: int, size: int):
        super().__init__()
        self.batches, self.top, self.left, self.size = batches, top, left, size

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int):
        images = self.batches[index][0]
        return (images[:, self.top:self.top + self.size, self.left:self.left + self.size],)


def _crop_size(model) -> int:
    """The side of the model's crop (its input's when it has none)."""
    return max((layer.size for layer in _layers(model) if isinstance(layer, Crop)),
               default=int(model.input_shape[1]))


def for_image_size(model, size: int, path: str | Path = "images"):
    """``model`` taking ``size`` x ``size`` images: the same layers, weights shared (nothing copied),
    behind a new input.

    At inference the model's crop takes the centre of a larger image and is the identity on an image
    of its own crop size. So one model is evaluated on the report's two test sets: "as training"
    (74x74, centre 64 crop) and "resized only" (the box crop resized straight to 64x64).
    """
    if tuple(model.input_shape[1:3]) == (size, size):
        return model
    crop = _crop_size(model)
    if crop > size:
        raise DataError(path, f"images are {size}x{size}, smaller than the model's {crop}x{crop} crop")
    inputs = keras.Input((size, size, model.input_shape[-1]), dtype=model.inputs[0].dtype, name="image")
    return keras.models.clone_model(model, input_tensors=inputs, clone_function=_share)


def _share(layer):
    # A nested Sequential (the augmentation policy) was built for the old input size and checks it;
    # a new, unbuilt container of the same layers accepts the new size. Every other layer is reused.
    if isinstance(layer, keras.Sequential):
        return keras.Sequential(layer.layers, name=layer.name)
    return layer


def _layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _layers(layer)


def evaluate_model(model, path: Path, batch_size: int = 256, crops: int = 1) -> dict:
    """Metrics of ``model`` on the prepared split file ``path`` (``crops``: see :func:`predict_logits`)."""
    return evaluate_arrays(PreparedSplit(path).targets(), predict_logits(model, path, batch_size, crops))


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Metrics of a model on a split, and its per-example predictions (``example_table``)."""

    metrics: dict
    predictions: pd.DataFrame


def evaluate_split(model, path: Path, batch_size: int = 256) -> Evaluation:
    """``evaluate_model`` and the per-example predictions behind it, from one pass over ``path``."""
    split = PreparedSplit(path)
    targets, logits = split.targets(), predict_logits(model, path, batch_size)
    return Evaluation(evaluate_arrays(targets, logits), example_table(targets, logits, split.names()))


def example_table(targets: np.ndarray, logits: np.ndarray, names=None) -> pd.DataFrame:
    """One row per example: index, name, true/predicted length class and number, confidence, correct,
    true digits ``true_d1..5`` and digit-head argmaxes ``head_d1..5`` (10 = no digit there).
    """
    targets = np.asarray(targets)
    got = per_example(targets, logits)
    n = len(targets)
    table = {
        "index": np.arange(n),
        "name": list(names) if names is not None else [""] * n,
        "true_length": targets[:, 0],
        "pred_length": got["length"],
        "true": [number_text(t[0], t[1:]) for t in targets],
        "predicted": [number_text(L, d) for L, d in zip(got["length"], got["digits"])],
        "confidence": got["confidence"],
        "correct": got["correct"],
    }
    for p in range(MAX_DIGITS):
        table[f"true_d{p + 1}"] = targets[:, 1 + p]
    for p in range(MAX_DIGITS):
        table[f"head_d{p + 1}"] = got["heads"][:, p]
    return pd.DataFrame(table)


def write_predictions(evaluation: Evaluation, split_path: Path, out_dir: Path, name: str = "test",
                      worst: int = 24) -> list[Path]:
    """``<name>.csv.gz`` (every example) and ``<name>_worst.npz`` (the ``worst`` most confident
    errors: uint8 crops from ``split_path`` with index, name, true, predicted, confidence), written
    atomically into ``out_dir``; returns both paths. Reports read these back from MLflow.
    """
    table = evaluation.predictions
    csv = Path(out_dir) / f"{name}.csv.gz"
    atomic.write_bytes(csv, gzip.compress(table.to_csv(index=False).encode(), mtime=0))
    errors = table[~table["correct"]].sort_values("confidence", ascending=False, kind="stable").head(worst)
    rows = np.sort(errors["index"].to_numpy())
    crops = PreparedSplit(split_path).images(rows)
    place = {int(r): i for i, r in enumerate(rows)}
    order = [place[int(i)] for i in errors["index"]]
    buffer = io.BytesIO()
    text = lambda column: np.asarray(errors[column].astype(str).tolist(), dtype=str)  # noqa: E731 (no pickles)
    np.savez_compressed(buffer, images=crops[order] if len(order) else crops,
                        index=errors["index"].to_numpy(np.int64), name=text("name"), true=text("true"),
                        predicted=text("predicted"), confidence=errors["confidence"].to_numpy(np.float64))
    npz = Path(out_dir) / f"{name}_worst.npz"
    atomic.write_bytes(npz, buffer.getvalue())
    return [csv, npz]


def evaluate_target(targets: str | Sequence[str], split: str = "test", data: str | None = None,
                    crops: int = 1, command: str | None = None) -> tuple[dict, str]:
    """Evaluate a model (a .keras file, a run id or a registered model: harness.evaluation.loading),
    or several as one ensemble (each head's log-probabilities averaged over the models), on the centre
    crop or on ``crops`` crops (see :func:`predict_logits`): on ``data`` (a prepared split file, or a
    raw labelled folder: :func:`evaluate_folder`) or else on the first model's spec's ``split``.

    Returns the metrics and a description of what was evaluated.
    """
    targets = [targets] if isinstance(targets, str) else list(targets)
    seen = "" if crops == 1 else f", {crops} crops"
    if data is not None and Path(data).is_dir():
        return evaluate_folder(targets, Path(data), crops=crops, command=command)
    if data is None and any(loading.is_file(t) for t in targets):
        raise HarnessError("evaluating a model file needs --data PREPARED.h5 (a prepared split file); "
                           "a folder of raw images needs a run id or a registered model, whose spec "
                           "says how to prepare them")
    members = [loading.load(t) for t in targets]
    if data is not None:
        return evaluate_members(members, Path(data), crops), f"{_described(members)} on {data}{seen}"
    spec = _one_preparation(members)
    path = datasets.prepare(spec.data).splits().get(split)
    if path is None:
        raise HarnessError(f"run {members[0].run_id} has no '{split}' split (validation fraction is 0)")
    return evaluate_members(members, path, crops), f"{_described(members)} on {split}{seen}"


def evaluate_members(members: Sequence[loading.LoadedModel], path: Path, crops: int = 1) -> dict:
    """One model's metrics on ``path`` (:func:`evaluate_model`), or an ensemble's: each member's
    per-head log-probabilities averaged (a geometric mean of their probabilities, as test crops are)."""
    if len(members) == 1:
        return evaluate_model(members[0].model, path, crops=crops)
    total = sum(_log_probs(predict_logits(m.model, path, crops=crops)) for m in members)
    return evaluate_arrays(PreparedSplit(path).targets(), total / len(members))


def _one_preparation(members: Sequence[loading.LoadedModel]):
    """The spec whose data preparation every member shares (an ensemble reads one prepared file)."""
    specs = [m.spec for m in members]
    missing = [m.reference for m, spec in zip(members, specs) if spec is None]
    if missing:
        raise HarnessError(f"{missing[0]}: its run logged no spec.yaml saying how its images were prepared; "
                           "name a prepared split file with --data")
    for member, spec in zip(members[1:], specs[1:]):
        if spec.data != specs[0].data:
            raise HarnessError(f"{member.reference} was trained on other data or preparation than "
                               f"{members[0].reference}: an ensemble's members must share data.* to be read "
                               "from one prepared file")
    return specs[0]


def evaluate_folder(targets: str | Sequence[str], folder: Path, crops: int = 1,
                    command: str | None = None) -> tuple[dict, str]:
    """`harness evaluate MODEL [MODEL ...] --data FOLDER`: a run's or registered model's accuracy (or an
    ensemble's) on a raw labelled folder (SVHN Format 1: digitStruct.mat, a .json or labels.csv),
    prepared as the model's own spec prepares its test split (datasets.prepare_folder). The result is
    an MLflow run of its own (tag ``harness.kind`` evaluation, the folder as its dataset input, metrics
    under test/, a description with the 95% interval), which experiment reports leave out."""
    targets = [targets] if isinstance(targets, str) else list(targets)
    for target in targets:
        if loading.is_file(target):
            raise HarnessError(f"{target}: a .keras file does not say how its images were prepared; evaluate "
                               "its run id or registered model on a folder, or the file on a prepared split file")
    members = [loading.load(t) for t in targets]
    path = datasets.prepare_folder(_one_preparation(members).data, folder)
    seen = "" if crops == 1 else f", {crops} crops"
    metrics = evaluate_members(members, path, crops)
    run_id = _log_evaluation(members, folder, path, metrics, crops, command)
    return metrics, f"{_described(members)} on {folder}{seen} (MLflow run {run_id})"


def _log_evaluation(members: Sequence[loading.LoadedModel], folder: Path, path: Path, metrics: dict, crops: int,
                    command: str | None) -> str:
    from harness.tracking import log, runs  # deferred: MLflow

    spec = members[0].spec
    dataset = log.split_input(f"folder {folder.name}/test", path, "evaluation", "test", source=folder)
    source = dataset.source
    references = [m.reference for m in members]
    model_runs = [m.run_id for m in members if m.run_id]
    tags = {"harness.kind": "evaluation", "harness.evaluated_model": ", ".join(references),
            **({"harness.model_run": ", ".join(model_runs)} if model_runs else {})}
    what = spec.name if len(members) == 1 else f"ensemble of {len(members)} {spec.name}"
    with runs.run(spec, command=command, tags=tags, name=f"evaluate {what} on {folder.name}") as run_id:
        log.log_params({"evaluate.model": ", ".join(references)[:6000], "evaluate.models": len(members),
                        "evaluate.data": source, "evaluate.crops": crops})
        log.log_metrics({f"test_{k}": v for k, v in metrics.items()})
        log.log_inputs(run_id, [dataset])
        n = int(metrics["examples"])
        low, high = wilson(round(metrics["sequence_accuracy"] * n), n)
        models = f"`{references[0]}`" if len(members) == 1 else f"an ensemble of {len(members)} models"
        log.set_tags({"mlflow.note.content": (
            f"**Evaluation** of {models} (trained as `{spec.name}`) on the {n:,} labelled numbers of "
            f"`{source}`{'' if crops == 1 else f', {crops} test crops'}, prepared as its spec prepares test "
            f"images: sequence accuracy **{100 * metrics['sequence_accuracy']:.2f}%** "
            f"(95% interval {100 * low:.1f}-{100 * high:.1f}%).")})
    return run_id


def _described(members: Sequence[loading.LoadedModel]) -> str:
    """'run NAME (ID)', after the registered model's URI when it is one; an ensemble of N: each."""
    if len(members) > 1:
        return f"an ensemble of {len(members)} ({'; '.join(_described([m]) for m in members)})"
    loaded = members[0]
    if loaded.run_id is None:
        return loaded.reference
    from harness.tracking import query  # deferred: MLflow

    run = f"run {query.get_run(loaded.run_id).name} ({loaded.run_id})"
    return run if loaded.reference == loaded.run_id else f"{loaded.reference}, {run}"
