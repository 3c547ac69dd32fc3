"""The svhn dataset on the genuine sample: exact labels, a card like the full train split's, the
report's two test sets evaluated and logged by a real training run, and the `harness data prepare`
command."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_records import write_split

from harness.data import datasets
from harness.data.fetch import fetch_svhn
from harness.data.splitfile import open_prepared
from harness.errors import DataError, SpecError
from harness.spec import load_spec

REPORT = ["data.preprocessing=report", "data.image_size=74", "augment.crop_size=64"]


def svhn_spec(root: Path, *overrides: str):
    return load_spec(None, ["data.name=svhn", f"data.root={root}", *overrides])


@pytest.fixture(scope="module")
def genuine(shared_data, tmp_path_factory):
    """The 2,000 genuine train images registered as SVHN train, prepared the report's way."""
    base = tmp_path_factory.mktemp("svhn")
    write_split(base / "test", [str(i * 7) for i in range(40)])
    root = base / "data"
    fetch_svhn(root, ["train"], source=shared_data / "svhn-sample" / "train")
    fetch_svhn(root, ["test"], source=base / "test")
    spec = svhn_spec(root, *REPORT)
    return root, spec, datasets.prepare(spec.data)


def _labels(path: Path) -> pd.DataFrame:
    with open_prepared(path) as f:
        return pd.DataFrame({"name": f["names"].asstr()[:], "length": f["length"][:],
                             "digits": list(f["digits"][:])})


def test_genuine_train_images_keep_their_labels_exactly(genuine, shared_data):
    _, _, data = genuine
    csv = pd.read_csv(shared_data / "svhn-sample" / "train" / "labels.csv")
    expected = {name: [int(label) % 10 for label in rows["label"]] for name, rows in csv.groupby("filename", sort=False)}
    prepared = pd.concat([_labels(data.train), _labels(data.val)], ignore_index=True)
    assert len(prepared) == 2000 and set(prepared["name"]) == set(expected)
    assert 150 < len(_labels(data.val)) < 250  # ~10%, by the seeded hash of the names
    for row in prepared.itertuples():
        digits = expected[row.name]
        assert row.length == len(digits)
        assert list(row.digits[:len(digits)]) == digits and (row.digits[len(digits):] == 10).all()


def test_report_preprocessing_has_two_test_sets(genuine):
    _, spec, data = genuine
    assert set(data.test_sets()) == {"test", "test_resized"}
    with open_prepared(data.train) as f:
        assert f["images"].shape[1:] == (74, 74, 3)
    with open_prepared(data.test) as a, open_prepared(data.test_resized) as b:
        assert a["images"].shape[1:] == (74, 74, 3) and b["images"].shape[1:] == (64, 64, 3)
        assert list(a["names"].asstr()[:]) == list(b["names"].asstr()[:])
    paper = datasets.prepare(load_spec(None, ["data.name=svhn", f"data.root={spec.data.root}"]).data)
    assert paper.test_resized is None and set(paper.test_sets()) == {"test"}


def test_genuine_card_looks_like_the_full_train_split(genuine, shared_data):
    _, _, data = genuine
    card = json.loads(data.card.read_text())["sources"]["train"]
    stats = json.loads((shared_data / "svhn-train-stats.json").read_text())
    assert card["annotated"] == card["prepared"] == 2000
    full = stats["length_histogram"]
    for length in ("1", "2", "3", "4"):  # the first 2,000 images, against all 33,402
        assert card["length_histogram"][length] / 2000 == pytest.approx(full[length] / stats["images"], abs=0.025)
    for axis in ("width", "height"):
        ours = [card[f"image_{axis}"][f"p{p}"] for p in (5, 25, 50, 75, 95)]
        assert ours == pytest.approx(stats[f"image_{axis}_percentiles_5_25_50_75_95"], rel=0.1)
    assert card["modes"] == {"RGB": 2000}
    # Real SVHN boxes reach outside their images now and then; the card names those images.
    assert 0 < card["anomalies"]["box_outside_image"]["count"] < 40
    assert "127.png" in card["anomalies"]["box_outside_image"]["files"]


def test_one_model_evaluates_both_test_sets(genuine):
    from harness.evaluation.evaluate import evaluate_model, for_image_size
    from harness.models.architectures import build_model

    _, _, data = genuine
    model = build_model("cnn_tiny", image_size=74, crop_size=64, policy="paper", seed=0)
    x = np.random.default_rng(0).integers(0, 256, (3, 74, 74, 3), dtype=np.uint8)
    resized = for_image_size(model, 64)
    assert resized.input_shape == (None, 64, 64, 3) and for_image_size(model, 74) is model
    assert all(a is b for a, b in zip(resized.weights, model.weights))  # shared, not copied
    # At inference the model sees the centre 64 crop of a 74 image; on a 64 image its crop is the identity.
    np.testing.assert_array_equal(resized.predict(x[:, 5:69, 5:69], verbose=0), model.predict(x, verbose=0))
    for path in (data.test, data.test_resized):
        metrics = evaluate_model(model, path)
        assert 0 <= metrics["sequence_accuracy"] <= 1 and metrics["digit1_examples"] == 40
    with pytest.raises(DataError, match="smaller than the model's 64x64 crop"):
        for_image_size(model, 54, "small.h5")


@pytest.mark.slow
def test_training_logs_both_test_sets_and_the_data_card(genuine, tmp_path, monkeypatch):
    from harness.tracking import query
    from harness.training.core import train

    root, _, data = genuine
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = svhn_spec(root, *REPORT, "model.name=cnn_tiny", "train.epochs=1", "train.batch_size=64",
                     "tracking.log_model=false", "tracking.experiment=svhn-report")
    result = train(spec, verbose=0)
    run = query.get_run(result.run_id)
    for prefix in ("test_", "test_resized_"):
        assert 0 <= run.metrics[f"{prefix}sequence_accuracy"] <= 1
    assert {"data_card.json", "data_card.md"} <= set(query.artifact_paths(result.run_id))
    logged = json.loads(query.read_artifact(result.run_id, "data_card.json"))
    assert logged == json.loads(data.card.read_text())
    markdown = query.read_artifact(result.run_id, "data_card.md").decode()
    assert markdown == data.card.with_name("card.md").read_text()


def test_cli_prepares_and_says_where(genuine, capsys):
    from harness.cli import main

    root, _, data = genuine
    assert main(["data", "prepare", "svhn", "--root", str(root), *[a for o in REPORT for a in ("--set", o)]]) == 0
    out = capsys.readouterr().out
    assert f"{data.train}" in out and f"{data.test_resized}" in out
    assert "images 74x74" in out and "40 images 64x64" in out
    assert str(data.card.with_name("card.md")) in out


def test_svhn_not_fetched_says_how(tmp_path, capsys):
    from harness.cli import main

    with pytest.raises(DataError, match="harness data fetch svhn"):
        datasets.prepare(svhn_spec(tmp_path).data)
    assert main(["data", "prepare", "svhn", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "harness data fetch svhn" in err


def test_test_folder_must_not_be_a_training_folder(genuine, tmp_path, shared_data):
    root = tmp_path / "data"
    for split in ("train", "test"):
        fetch_svhn(root, [split], source=shared_data / "svhn-sample" / "train")
    with pytest.raises(DataError, match="is also the train folder"):
        datasets.prepare(svhn_spec(root).data)


@pytest.mark.parametrize("override, message", [
    (["data.preprocessing=reports"], "'data.preprocessing' must be one of paper, report"),
    (["data.long_numbers=trim"], "'data.long_numbers' must be one of keep, drop"),
    (["data.bad_files=ignore"], "'data.bad_files' must be one of error, skip"),
    (["data.preprocessing=report"], "'data.resized_test_size' \\(64\\) must equal 'augment.crop_size' \\(54\\)"),
    (["data.options.extra=1"], "option 'extra' must be bool"),
])
def test_spec_values_are_checked_at_load(override, message):
    with pytest.raises(SpecError, match=message):
        load_spec(None, ["data.name=svhn", *override])
