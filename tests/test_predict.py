"""`harness predict`: a briefly trained model reads genuine SVHN images; bad inputs are clear errors."""

import csv
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness.cli import main
from harness.errors import DataError
from harness.evaluation.predict import ImageFile, parse_box, predict_files, read_crop

SAMPLE = 50  # genuine images predicted in CI


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """cnn_tiny after a few training steps, saved as a .keras file."""
    import keras

    from harness.models.architectures import build_model
    from harness.models.heads import _sequence_loss_fn

    keras.utils.set_random_seed(0)
    model = build_model("cnn_tiny", policy="paper", seed=0)
    model.compile(optimizer="adam", loss=_sequence_loss_fn)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 64, 64, 3), dtype=np.uint8)
    y = np.concatenate([np.full((32, 1), 2), rng.integers(0, 10, (32, 2)), np.full((32, 3), 10)], axis=1)
    for _ in range(3):
        model.train_on_batch(x, y.astype(np.int32))
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def labels(shared_data):
    return pd.read_csv(shared_data / "svhn-sample" / "train" / "labels.csv")


def union_box(labels, name):
    rows = labels[labels["filename"] == name]
    left, top = rows["left"].min(), rows["top"].min()
    return left, top, (rows["left"] + rows["width"]).max() - left, (rows["top"] + rows["height"]).max() - top


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_folder_of_genuine_images_gives_a_well_formed_csv(model_file, shared_data, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(1, SAMPLE + 1):
        shutil.copy(shared_data / "svhn-sample" / "train" / f"{i}.png", folder)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("not an image, not listed")
    out = tmp_path / "out" / "predictions.csv"
    assert main(["predict", str(model_file), str(folder), "--csv", str(out)]) == 0
    printed, errors = capsys.readouterr()
    rows = read_csv(out)
    assert list(rows[0]) == ["path", "number", "confidence", "box"] and {r["box"] for r in rows} == {"none"}
    assert [r["path"] for r in rows] == [str(folder / f"{i}.png") for i in range(1, SAMPLE + 1)]  # natural order
    assert all(re.fullmatch(r"\d{0,5}\+?", r["number"]) for r in rows)
    assert all(0.0 <= float(r["confidence"]) <= 1.0 for r in rows)
    lines = printed.strip().splitlines()
    assert len(lines) == SAMPLE
    assert lines[0].split("  ")[0] == rows[0]["path"]
    assert lines[0].split("  ")[2] == f"{float(rows[0]['confidence']):.4f}"
    assert "skipped 1 unreadable image(s)" in errors and "broken.png: cannot read the image" in errors
    assert [p.name for p in out.parent.iterdir()] == ["predictions.csv"]  # written atomically: no leftovers


def test_one_image_with_its_box_is_cropped_exactly_like_preparation(model_file, shared_data, labels, tmp_path,
                                                                   capsys):
    from harness.data.prepare import prepare_split
    from harness.data.records import read_records

    folder = shared_data / "svhn-sample" / "train"
    records = read_records(folder, "labels.csv").head(8)
    prepared = prepare_split(records, tmp_path / "train.h5", image_size=64, box_expand=0.3, workers=1)
    import h5py

    with h5py.File(prepared) as f:
        expected = f["images"][:]
    for i, name in enumerate(records["name"]):
        np.testing.assert_array_equal(read_crop(folder / name, 64, 0.3, union_box(labels, name)), expected[i])
    left, top, width, height = union_box(labels, "1.png")
    box = f"{left},{top},{width},{height}"
    assert main(["predict", str(model_file), str(folder / "1.png"), "--box", box]) == 0
    out, err = capsys.readouterr()
    path, number, confidence = out.strip().split("  ")
    assert path == str(folder / "1.png") and re.fullmatch(r"-|\d{1,5}\+?", number) and 0 <= float(confidence) <= 1
    assert "warning" not in err  # the box was given


def test_a_whole_street_image_without_a_box_is_read_with_a_warning(model_file, shared_data, capsys):
    """Genuine SVHN images are whole street scenes; the model reads the number's crop."""
    image = shared_data / "svhn-sample" / "train" / "1.png"
    assert main(["predict", str(model_file), str(image)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(str(image))  # a number and a confidence are still printed
    warning = [line for line in err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "much larger than a number crop" in warning[0] and "--box" in warning[0]


def test_predictions_match_the_model_on_the_same_crops(model_file, tmp_path):
    from harness.evaluation.loading import load_model
    from harness.models.heads import decode

    rng = np.random.default_rng(5)
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (30 + i, 70, 3), dtype=np.uint8)).save(paths[-1])
    model = load_model(model_file)
    got = list(predict_files(model, [ImageFile(p, False) for p in paths], batch_size=2))
    crops = np.stack([read_crop(p, 64, 0.3) for p in paths])
    _, _, logp = decode(model.predict(crops, verbose=0))
    np.testing.assert_allclose([g.confidence for g in got], np.exp(np.asarray(logp)), rtol=1e-5)
    assert [g.path for g in got] == [str(p) for p in paths]


def test_a_run_id_predicts_with_its_model_and_box_expansion(model_file, tmp_path, monkeypatch):
    from harness.evaluation.predict import load_target
    from harness.spec import load_spec
    from harness.tracking import runs

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = load_spec(None, ["data.box_expand=0.5", "tracking.experiment=predict-test"])
    with runs.run(spec) as run_id:
        (tmp_path / "runs" / run_id).mkdir(parents=True)
        shutil.copy(model_file, tmp_path / "runs" / run_id / "model.keras")
    model, box_expand = load_target(run_id)
    assert box_expand == 0.5 and model.count_params() > 0
    with pytest.raises(Exception, match="not found"):
        load_target("0123456789abcdef0123456789abcdef")


# ---------------------------------------------------------------------------------- bad input

def one_line_error(capsys, argv, *needles):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("harness: error: "), err
    for needle in needles:
        assert needle in err, err


def test_bad_model_files_are_named(tmp_path, capsys):
    image = tmp_path / "a.png"
    Image.new("RGB", (40, 20)).save(image)
    one_line_error(capsys, ["predict", str(tmp_path / "none.keras"), str(image)], "none.keras", "no such model file")
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    one_line_error(capsys, ["predict", str(bad), str(image)], "bad.keras", "not a loadable Keras model")


def test_a_model_that_does_not_read_numbers_is_refused(tmp_path, capsys):
    import keras

    inputs = keras.Input((8, 8, 3))
    other = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    other.save(tmp_path / "other.keras")
    image = tmp_path / "a.png"
    Image.new("RGB", (40, 20)).save(image)
    one_line_error(capsys, ["predict", str(tmp_path / "other.keras"), str(image)], "other.keras",
                   "not a harness number model")


def test_bad_images_are_named(model_file, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"garbage")
    one_line_error(capsys, ["predict", str(model_file), str(broken)], "broken.png", "cannot read the image")
    one_line_error(capsys, ["predict", str(model_file), str(tmp_path / "gone.png")], "gone.png", "no such image")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(capsys, ["predict", str(model_file), str(empty)], "empty", "holds no image files")
    image = tmp_path / "a.png"
    Image.new("RGB", (40, 20)).save(image)
    one_line_error(capsys, ["predict", str(model_file), str(image), "--box", "100,100,5,5"], "a.png",
                   "outside the 40x20 image")
    one_line_error(capsys, ["predict", str(model_file), str(tmp_path), "--box", "1,1,5,5"], "--box", "one image")


def test_a_bad_box_is_a_usage_error(model_file, tmp_path, capsys):
    for text in ("1,2,3", "a,b,c,d", "1,2,0,4", "1,2,3,nan"):
        with pytest.raises(ValueError):
            parse_box(text)
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(model_file), str(tmp_path), "--box", "1,2,3"])
    assert exit_.value.code == 2 and "four numbers" in capsys.readouterr().err


def test_read_crop_names_the_file(tmp_path):
    with pytest.raises(DataError, match="x.png: cannot read the image"):
        read_crop(tmp_path / "x.png", 64, 0.3)
