"""The logged model reads numbers from images with MLflow's own tools: `mlflow.pyfunc.load_model` in a
process that never imports the harness, and a real `mlflow models serve` process answering HTTP."""

import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow_processes import Process, clean_env, free_port, post_json

ARGS = ["train", "smoke", "--set", "data.options.train=200", "--set", "data.options.test=40",
        "--set", "train.epochs=2", "--set", "train.batch_size=32"]
N = 12  # test images predicted


@dataclasses.dataclass
class Trained:
    work: Path
    run_id: str
    env: dict

    @property
    def store(self) -> str:
        return f"sqlite:///{self.work / 'mlflow.db'}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Trained:
    """cnn_tiny trained briefly on a small synthetic set by the real CLI, system metrics every second."""
    work = tmp_path_factory.mktemp("serving")
    (work / "tmp").mkdir()  # MLflow's downloads go to TMPDIR: keep them inside the test's folder
    env = clean_env(TMPDIR=str(work / "tmp"), MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1")
    result = subprocess.run([sys.executable, "-m", "harness", *ARGS], cwd=work, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_id = re.search(r"MLflow run ([0-9a-f]{32})", result.stdout).group(1)
    return Trained(work, run_id, dict(env, MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}"))


@pytest.fixture(scope="module")
def examples(trained):
    """The first N held-out images as raw files with their union digit box, the prepared crops of the
    same images, and what the trained Keras model reads from those crops."""
    import h5py

    from harness.data.records import read_records
    from harness.evaluation.loading import load_model
    from harness.evaluation.reader import number_text
    from harness.models.heads import decode

    (prepared,) = trained.work.glob("data/prepared/*/test.h5")
    with h5py.File(prepared, "r") as f:
        names, crops = list(f["names"].asstr()[:N]), f["images"][:N]
    (raw,) = trained.work.glob("data/synthetic/*/test-*")
    records = read_records(raw).set_index("name").loc[names]
    boxes = [np.asarray(b).reshape(-1, 4) for b in records["boxes"]]
    frame = pd.DataFrame({
        "image": list(records["path"]),
        "left": [b[:, 0].min() for b in boxes],
        "top": [b[:, 1].min() for b in boxes],
        "width": [(b[:, 0] + b[:, 2]).max() - b[:, 0].min() for b in boxes],
        "height": [(b[:, 1] + b[:, 3]).max() - b[:, 1].min() for b in boxes],
    })
    model = load_model(trained.work / "runs" / trained.run_id / "model.keras")
    length, digits, logp = (np.asarray(t) for t in decode(model.predict(crops, verbose=0)))
    expected = pd.DataFrame({"number": [number_text(n, d) for n, d in zip(length, digits)],
                             "confidence": np.exp(logp.astype(np.float64))})
    return frame, crops, expected, model


def assert_same_reading(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(got.columns) == ["number", "confidence"]
    assert list(got["number"]) == list(expected["number"])
    np.testing.assert_allclose(got["confidence"].to_numpy(float), expected["confidence"], rtol=1e-4)


def test_run_has_fingerprint_system_metrics_and_a_described_model(trained, tmp_path, monkeypatch):
    import h5py
    import mlflow

    from harness.tracking.log import dataset_fingerprint

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # MLflow's lock files and model downloads
    client = mlflow.tracking.MlflowClient(trained.store)
    run = client.get_run(trained.run_id)
    splits = {}
    for path in trained.work.glob("data/prepared/*/*.h5"):
        with h5py.File(path, "r") as f:
            splits[path.stem] = f.attrs["fingerprint"]
    assert set(splits) == {"train", "val", "test"}
    assert run.data.tags["harness.dataset_fingerprint"] == dataset_fingerprint(splits)
    assert int(run.data.params["model.parameters"]) == 86_449
    for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
        assert len(client.get_metric_history(trained.run_id, key)) >= 2, key

    mlflow.set_tracking_uri(trained.store)
    try:
        info = mlflow.models.get_model_info(f"runs:/{trained.run_id}/model")
    finally:
        mlflow.set_tracking_uri(None)
    config = info.flavors["python_function"]["config"]
    assert config == {"box_expand": 0.3, "keras_backend": run.data.tags["harness.backend"]}
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["image", "left", "top", "width", "height"]
    assert [c["name"] for c in info.signature.outputs.to_dict()] == ["number", "confidence"]
    assert info.saved_input_example_info["type"] == "dataframe"


def test_crops_are_the_prepared_crops(examples):
    from harness.evaluation.reader import NumberReader

    frame, crops, expected, model = examples
    reader = NumberReader(model, box_expand=0.3)
    np.testing.assert_array_equal(reader.crops(frame), crops)  # byte for byte: same preprocessing
    assert_same_reading(reader.predict(frame), expected)


PYFUNC = textwrap.dedent("""
    import json, sys
    import mlflow, pandas as pd
    frame = pd.DataFrame(json.loads(sys.stdin.read()))
    # every third image as the bytes of its file, the others as paths
    frame["image"] = [open(p, "rb").read() if i % 3 == 0 else p for i, p in enumerate(frame["image"])]
    assert "harness" not in sys.modules
    model = mlflow.pyfunc.load_model(sys.argv[1])
    out = model.predict(frame)
    print(json.dumps({"harness": sys.modules["harness"].__file__, "out": out.to_dict("list")}))
""")


def test_pyfunc_model_loads_in_a_fresh_process_without_the_harness(trained, examples):
    frame, _, expected, _ = examples
    result = subprocess.run([sys.executable, "-c", PYFUNC, f"runs:/{trained.run_id}/model"],
                            input=json.dumps(frame.to_dict("list")), cwd=trained.work / "tmp", env=trained.env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert "/code/harness/" in answer["harness"]  # the harness code the model carries, not an installed one
    assert_same_reading(pd.DataFrame(answer["out"]), expected)


def test_mlflow_models_serve_answers_invocations(trained, examples):
    frame, _, expected, _ = examples
    port = free_port()
    # it starts `uvicorn` by name: this interpreter's scripts must be on PATH, as in an activated venv
    env = dict(trained.env, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    server = Process([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"runs:/{trained.run_id}/model",
                      "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                     trained.work / "tmp", env, trained.work / "serve.log").start()
    try:
        server.wait_http(f"http://127.0.0.1:{port}/ping", timeout=300)
        url = f"http://127.0.0.1:{port}/invocations"
        # image arrays (as JSON nested lists) with boxes
        from PIL import Image

        arrays = [np.asarray(Image.open(p).convert("RGB")).tolist() for p in frame["image"]]
        split = {"columns": list(frame.columns),
                 "data": [[a, *row[1:]] for a, row in zip(arrays, frame.itertuples(index=False))]}
        got = pd.DataFrame(post_json(url, {"dataframe_split": split})["predictions"])
        assert_same_reading(got, expected)
        # file paths, as records
        got = pd.DataFrame(post_json(url, {"dataframe_records": frame.to_dict("records")})["predictions"])
        assert_same_reading(got, expected)
    finally:
        server.stop()
    assert "Traceback" not in server.output()


# ------------------------------------------------------------------ the reader's inputs (no MLflow)

@pytest.fixture(scope="module")
def reader():
    from harness.evaluation.reader import NumberReader
    from harness.models.architectures import build_model

    return NumberReader(build_model("cnn_tiny", policy="paper", seed=0), box_expand=0.3)


def test_every_input_form_reads_the_same(reader, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 70, 3), dtype=np.uint8)
    path = tmp_path / "n.png"
    Image.fromarray(image).save(path)
    box = {"left": [10, 10, 10, 10, 10.0], "top": [5, 5, 5, 5, 5.0], "width": [40, 40, 40, 40, 40.0],
           "height": [18, 18, 18, 18, 18.0]}
    frame = pd.DataFrame({"image": [image, image.tolist(), str(path), path.read_bytes(), path], **box})
    out = reader.predict(frame)
    assert out["number"].nunique() == 1 and np.ptp(out["confidence"]) < 1e-6
    assert ((out["confidence"] > 0) & (out["confidence"] <= 1)).all()
    whole = reader.predict(pd.DataFrame({"image": [image]}))  # no box: the whole image
    with_nan = reader.predict(pd.DataFrame({"image": [image], "left": [np.nan], "top": [np.nan],
                                            "width": [np.nan], "height": [np.nan]}))
    assert_same_reading(with_nan, whole)
    grey = reader.predict(pd.DataFrame({"image": [image[:, :, 0]]}))
    assert len(grey) == 1
    empty = reader.predict(pd.DataFrame({"image": []}))
    assert list(empty.columns) == ["number", "confidence"] and len(empty) == 0


@pytest.mark.parametrize("frame, message", [
    (pd.DataFrame({"picture": ["x.png"]}), "expected a DataFrame with an 'image' column"),
    (pd.DataFrame({"image": ["/no/such/file.png"]}), "row 0: cannot read the image"),
    (pd.DataFrame({"image": [b"not an image"]}), "row 0: cannot read the image"),
    (pd.DataFrame({"image": [np.full((4, 4, 3), 300)]}), "row 0: cannot read the image (an image array must hold uint8"),
    (pd.DataFrame({"image": [np.zeros((4, 4, 2), np.uint8)]}), "must be H x W, H x W x 3 or H x W x 4"),
    (pd.DataFrame({"image": [np.zeros((8, 8, 3), np.uint8)], "left": [1]}), "a box needs all of"),
    (pd.DataFrame({"image": [np.zeros((8, 8, 3), np.uint8)], "left": [50], "top": [50], "width": [5],
                   "height": [5]}), "row 0: digit boxes [[50.0, 50.0, 5.0, 5.0]] lie outside the 8x8 image"),
])
def test_bad_input_is_one_clear_error(reader, frame, message):
    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match=re.escape(message)) as error:
        reader.predict(frame)
    assert "\n" not in str(error.value)
