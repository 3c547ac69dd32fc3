import tempfile

import pytest


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """The harness working in ``tmp_path``: its local MLflow store (a real SQLite file), runs/ and
    MLflow's temporary files live there; no run is left active afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    yield tmp_path
    import mlflow

    while mlflow.active_run():
        mlflow.end_run("FAILED")
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="session")
def model_file(tmp_path_factory):
    """An untrained cnn_tiny number model for 16x16 images, saved as a .keras file."""
    from harness.models.architectures import build_model

    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    build_model("cnn_tiny", image_size=16, crop_size=16, seed=0).save(path)
    return path
