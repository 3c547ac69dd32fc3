"""Multi-crop evaluation: `harness evaluate --crops 5` averages the heads over five windows."""

import h5py
import numpy as np
import pytest
from PIL import Image
from test_records import write_split

from harness.backend import load_keras
from harness.cli import main
from harness.data.prepare import prepare_split
from harness.data.records import read_records
from harness.errors import HarnessError
from harness.evaluation.evaluate import evaluate_model, for_image_size, predict_logits
from harness.models.architectures import build_model
from harness.models.heads import split_logits

keras = load_keras()
NUMBERS = ["12", "345", "6", "78"] * 3  # 12 images: batches of 5 leave a partial one


def noisy_split(folder, image_size: int):
    """A prepared split whose images are noise, so that every window of them differs."""
    write_split(folder, NUMBERS)
    rng = np.random.default_rng(0)
    for png in sorted(folder.glob("*.png")):
        width, height = Image.open(png).size
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(png)
    return prepare_split(read_records(folder), folder / "test.h5", image_size=image_size, box_expand=0.3,
                         workers=1)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return noisy_split(tmp_path_factory.mktemp("raw"), 64)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return build_model("cnn_tiny", policy="paper", seed=0)  # 64x64 in, 54x54 crop


def images_of(path):
    with h5py.File(path) as f:
        return f["images"][:]


def log_probs(logits):
    lengths, digits = split_logits(logits)
    return np.concatenate([np.asarray(lengths), np.asarray(digits).reshape(len(logits), -1)], axis=1)


def test_one_crop_is_the_models_own_centre_crop(model, split):
    images = images_of(split)
    got = predict_logits(model, split, batch_size=5, crops=1)
    np.testing.assert_allclose(got, model.predict(images, verbose=0), atol=1e-5)
    at_crop = for_image_size(model, 54)
    np.testing.assert_allclose(got, at_crop.predict(images[:, 5:59, 5:59], verbose=0), atol=1e-5)


def test_five_crops_average_each_heads_log_probabilities_over_the_centre_and_four_corners(model, split):
    images, at_crop = images_of(split), for_image_size(model, 54)
    windows = [(5, 5), (2, 2), (2, 8), (8, 2), (8, 8)]  # margin 10: centre, and a quarter in from each corner
    expected = np.mean([log_probs(at_crop.predict(images[:, t:t + 54, left:left + 54], verbose=0))
                        for t, left in windows], axis=0)
    got = predict_logits(model, split, batch_size=5, crops=5)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    centre = log_probs(predict_logits(model, split, crops=1))
    assert np.abs(got - centre).max() > 1e-3  # the four other windows count
    metrics = evaluate_model(model, split, crops=5)
    assert metrics["examples"] == len(NUMBERS) and 0.0 <= metrics["sequence_accuracy"] <= 1.0


def test_images_the_crops_own_size_have_one_window(model, tmp_path):
    small = noisy_split(tmp_path / "raw", 54)
    np.testing.assert_allclose(predict_logits(model, small, crops=5), predict_logits(model, small, crops=1))


def test_other_crop_counts_are_refused(model, split):
    with pytest.raises(HarnessError, match="test crops must be one of 1, 5, got 3"):
        predict_logits(model, split, crops=3)


def test_the_cli_reads_a_model_file_with_five_crops(model, split, tmp_path, capsys):
    path = tmp_path / "tiny.keras"
    model.save(path)
    assert main(["evaluate", str(path), "--data", str(split), "--crops", "5"]) == 0
    out = capsys.readouterr().out
    assert f"{path} on {split}, 5 crops" in out and "sequence (global) accuracy" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(path), "--data", str(split), "--crops", "3"])
    assert exit_info.value.code == 2


def test_an_ensemble_averages_each_heads_log_probabilities_over_its_models(model, split, tmp_path, capsys):
    """`harness evaluate A B --data FILE`: the members' per-head log-probabilities averaged; the
    same model twice reads exactly as once."""
    from harness.data.splitfile import PreparedSplit
    from harness.evaluation.evaluate import evaluate_members
    from harness.evaluation.loading import LoadedModel
    from harness.models.heads import evaluate_arrays

    keras.utils.set_random_seed(1)
    other = build_model("cnn_tiny", policy="paper", seed=1)
    members = [LoadedModel(model, "a"), LoadedModel(other, "b")]
    expected = (log_probs(predict_logits(model, split)) + log_probs(predict_logits(other, split))) / 2
    got, want = evaluate_members(members, split), evaluate_arrays(PreparedSplit(split).targets(), expected)
    assert got.keys() == want.keys()
    for key in got:  # (NaN where no number has a digit at that position)
        assert got[key] == pytest.approx(want[key], nan_ok=True), key
    same = evaluate_members([LoadedModel(model, "a")] * 2, split)
    assert same["sequence_accuracy"] == evaluate_model(model, split)["sequence_accuracy"]
    first, second = tmp_path / "a.keras", tmp_path / "b.keras"
    model.save(first)
    other.save(second)
    assert main(["evaluate", str(first), str(second), "--data", str(split)]) == 0
    assert f"an ensemble of 2 ({first}; {second}) on {split}" in capsys.readouterr().out
