"""The one model loader: a .keras file, a run id (this machine's copy, else the run's logged model) and
a registered model version (models:/NAME/VERSION, models:/NAME@ALIAS), each with the box expansion
of its run's data; and the number reader behind `harness predict` and the pyfunc model built on it.
Real MLflow stores (SQLite files in the test's folder), no mocks."""

import re
import shutil

import numpy as np
import pytest

from harness.errors import DataError, HarnessError
from harness.evaluation import loading
from harness.evaluation.reader import NumberReader


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from harness.models.architectures import build_model

    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    build_model("cnn_tiny", policy="paper", seed=3).save(path)
    return path


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh local store (./mlflow.db) in the test's own working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # MLflow's downloads stay in the test's folder
    return tmp_path


def same_weights(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a.weights, b.weights, strict=True))


def logged_run(model_file, box_expand: float) -> str:
    """A run whose spec says ``box_expand`` and which logged ``model_file`` as its pyfunc model."""
    from harness.evaluation import serving
    from harness.spec import load_spec
    from harness.tracking import runs

    spec = load_spec(None, [f"data.box_expand={box_expand}", "tracking.experiment=loading-test"])
    with runs.run(spec) as run_id:
        serving.log_model(model_file, box_expand=box_expand)
    return run_id


def test_a_keras_file(model_file):
    loaded = loading.load(str(model_file))
    assert loaded.run_id is None and loaded.spec is None and loaded.box_expand is None
    assert loaded.model.count_params() > 0
    assert loading.is_file(str(model_file)) and loading.is_file("elsewhere/model") and loading.is_file("m.keras")
    assert not loading.is_file("0" * 32) and not loading.is_file("models:/digits/1")


def test_a_missing_or_bad_keras_file_is_named(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'gone.keras'}: no such model file")):
        loading.load(str(tmp_path / "gone.keras"))
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip archive")
    with pytest.raises(DataError, match="bad.keras: not a loadable Keras model"):
        loading.load(str(bad))


def test_a_run_and_a_registered_model_load_the_logged_model_with_its_box_expansion(model_file, store):
    import mlflow

    from harness.tracking.store import open_client

    run_id = logged_run(model_file, 0.45)
    assert not loading.local_file(run_id).exists()  # not trained here: the logged model is downloaded
    donor = loading.load_model(model_file)
    by_run = loading.load(run_id)
    assert by_run.run_id == run_id and by_run.box_expand == 0.45 and same_weights(by_run.model, donor)

    client = open_client()
    version = mlflow.register_model(f"runs:/{run_id}/model", "house-numbers").version
    client.set_registered_model_alias("house-numbers", "champion", version)
    for uri in (f"models:/house-numbers/{version}", "models:/house-numbers@champion"):
        loaded = loading.load(uri)
        assert loaded.run_id == run_id and loaded.box_expand == 0.45, uri
        assert same_weights(loaded.model, donor), uri
    reader = NumberReader.load("models:/house-numbers@champion")
    assert reader.box_expand == 0.45 and reader.image_size == 64

    for uri, problem in (("models:/house-numbers/9", "not found"), ("models:/nothing@champion", "not found"),
                         ("models:/house-numbers", "models:/NAME/VERSION or models:/NAME@ALIAS")):
        with pytest.raises(HarnessError) as error:
            loading.load(uri)
        assert str(error.value).startswith(uri) and problem in str(error.value), str(error.value)
        assert "\n" not in str(error.value)


def test_a_run_trained_here_loads_its_own_copy(model_file, store):
    from harness.spec import load_spec
    from harness.tracking import runs

    with runs.run(load_spec(None, ["tracking.experiment=loading-test"])) as run_id:
        pass
    local = loading.local_file(run_id)
    local.parent.mkdir(parents=True)
    shutil.copy(model_file, local)
    loaded = loading.load(run_id)
    assert loaded.box_expand == 0.3 and same_weights(loaded.model, loading.load_model(model_file))
    with pytest.raises(HarnessError, match="has no loadable logged model"):
        loading.run_model("0" * 32)  # neither here nor in the store


def test_predict_reads_through_the_number_reader(model_file, tmp_path):
    """`harness predict`'s reading of image files is the pyfunc model's reading of the same crops."""
    from PIL import Image

    from harness.evaluation.predict import ImageFile, predict_files, read_crop

    rng = np.random.default_rng(1)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (28 + i, 60, 3), dtype=np.uint8)).save(paths[-1])
    reader = NumberReader.load(model_file)
    numbers, confidence = reader.read(np.stack([read_crop(p, reader.image_size, 0.3) for p in paths]))
    got = list(predict_files(reader.model, [ImageFile(p, False) for p in paths]))
    assert [g.number for g in got] == numbers
    np.testing.assert_allclose([g.confidence for g in got], confidence, rtol=1e-6)
