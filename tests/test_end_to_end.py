"""The quickstart path end to end, as a user runs it: real CLI process, real SQLite MLflow store, in a
git repository that holds what a clone of this one holds at its top (.gitignore, the committed reports)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TINY = ["--set", "data.options.train=240", "--set", "data.options.test=60", "--set", "model.name=cnn_tiny",
        "--set", "train.epochs=2", "--set", "train.batch_size=32"]


def harness(args, cwd, timeout=600):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


REPO = Path(__file__).resolve().parents[1]


def git(args, cwd):
    return subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-c",
                           "commit.gpgsign=false", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("quickstart")
    shutil.copy(REPO / ".gitignore", work / ".gitignore")
    shutil.copytree(REPO / "reports", work / "reports")
    git(["init", "-q"], work)
    git(["add", "-A"], work)
    git(["commit", "-q", "-m", "a clone's top"], work)
    result = harness(["quickstart", *TINY], cwd=work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work, result


def _runs(work: Path):
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("svhn-harness")
    return client, client.search_runs([experiment.experiment_id])


def test_quickstart_writes_report_and_tells_the_user(quickstart_run):
    work, result = quickstart_run
    report = (work / "runs" / "reports" / "quickstart" / "README.md").read_text()
    assert "Sequence (global)" in report and "96.03%" in report and "92.40%" in report
    assert "Regenerate: `harness quickstart" in report
    assert "Report: runs/reports/quickstart/README.md" in result.stdout and "harness ui" in result.stdout
    for noise in ("cudart", "absl", "cpu_feature_guard", "Traceback"):
        assert noise not in result.stderr, result.stderr[:2000]
    # no terminal, so no progress bar: each epoch still says how far it is, from 0 to all its images
    assert "Epoch 1/2" not in result.stdout  # one display per epoch: Keras' own lines are not repeated
    for epoch in (1, 2):
        assert re.search(rf"^epoch {epoch}/2: 0/(\d+) +0\.0% .*\n(.*\n)*epoch {epoch}/2: \1/\1 100\.0% ",
                         result.stderr, re.M), result.stderr[-2000:]


def test_quickstart_leaves_a_clone_clean(quickstart_run):
    """Data, the MLflow store, checkpoints and the report go to git-ignored places; the committed example
    reports (reports/quickstart/ and the index reports/README.md) are left as they were."""
    work, _ = quickstart_run
    assert git(["status", "--porcelain", "--untracked-files=all"], work) == ""
    assert git(["check-ignore", "runs/reports/quickstart/README.md", "mlflow.db", "data"], work).split() == [
        "runs/reports/quickstart/README.md", "mlflow.db", "data"]


def test_quickstart_run_is_fully_in_mlflow(quickstart_run):
    work, _ = quickstart_run
    client, runs = _runs(work)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "cnn_tiny" and run.data.params["train.epochs"] == "2"
    assert run.info.run_name == "quickstart: cnn_tiny, paper, synthetic"  # the UI lists what was trained
    assert int(run.data.params["model.parameters"]) > 0
    for key in ("test/sequence_accuracy", "test/length_accuracy", "test/digit1_accuracy", "test/coverage_at_98"):
        assert 0.0 <= run.data.metrics[key] <= 1.0
    history = client.get_metric_history(run.info.run_id, "val/sequence_accuracy")
    assert sorted(m.step for m in history) == [1, 2]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/images_per_sec")] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"spec.yaml", "data_card.json", "report", "predictions"} <= artifacts
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "predictions")}
    assert {"predictions/test.csv.gz", "predictions/test_worst.npz"} <= logged  # what reports rebuild from
    spec_text = Path(client.download_artifacts(run.info.run_id, "spec.yaml", str(work))).read_text()
    assert "cnn_tiny" in spec_text
    assert run.data.tags["harness.backend"] in ("tensorflow", "jax", "torch")


def test_quickstart_run_reads_at_a_glance_in_the_mlflow_ui(quickstart_run):
    """What the UI shows: the data as dataset inputs, metrics in one section per split, a description
    with the headline result, and the report as a page in the artifact viewer."""
    work, _ = quickstart_run
    client, (run,) = _runs(work)
    inputs = run.inputs.dataset_inputs
    assert len(inputs) >= 2 and all(len(i.dataset.digest) == 16 for i in inputs)
    contexts = {t.value for i in inputs for t in i.tags if t.key == "mlflow.data.context"}
    assert {"training", "evaluation"} <= contexts
    prefixes = {key.split("/", 1)[0] for key in run.data.metrics}
    assert {"train", "val", "test"} <= prefixes and "" not in prefixes
    assert not [key for key in run.data.metrics if "/" not in key]  # every metric in a section
    note = run.data.tags["mlflow.note.content"]
    seq = run.data.metrics["test/sequence_accuracy"]
    assert f"{100 * seq:.2f}%" in note and "95% interval" in note and "not comparable" in note  # synthetic data
    report = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/README.md", "report/index.html"} <= report
    html = Path(client.download_artifacts(run.info.run_id, "report/index.html", str(work))).read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "data:image/png;base64," in html


def test_logged_model_loads_with_mlflow_and_reads_numbers(quickstart_run, tmp_path, monkeypatch):
    import tempfile

    import mlflow
    import numpy as np
    import pandas as pd

    work, _ = quickstart_run
    _, runs = _runs(work)
    run_id = runs[0].info.run_id
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where MLflow downloads the model
    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
    try:
        model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")  # (tests/test_serving.py: fresh process)
    finally:
        mlflow.set_tracking_uri(None)
    out = model.predict(pd.DataFrame({"image": [np.zeros((30, 80, 3), np.uint8)] * 2}))
    assert list(out.columns) == ["number", "confidence"] and len(out) == 2
    assert all(isinstance(n, str) and n.rstrip("+").isdigit() or n == "" for n in out["number"])


def test_evaluate_the_run_and_reuse_prepared_data(quickstart_run):
    work, _ = quickstart_run
    _, runs = _runs(work)
    prepared = sorted((work / "data" / "prepared").rglob("*.h5"))
    mtimes = [p.stat().st_mtime_ns for p in prepared]
    result = harness(["evaluate", runs[0].info.run_id], cwd=work)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "sequence (global) accuracy" in result.stdout
    expected = f"{100 * runs[0].data.metrics['test/sequence_accuracy']:6.2f}%"
    assert expected in result.stdout  # same model, same held-out split, same number
    assert [p.stat().st_mtime_ns for p in prepared] == mtimes  # reused, not rebuilt


def test_evaluate_from_the_model_logged_to_mlflow(quickstart_run):
    work, _ = quickstart_run
    _, runs = _runs(work)
    run_id = runs[0].info.run_id
    (work / "runs" / run_id / "model.keras").unlink()  # as on another machine: only MLflow has it
    result = harness(["evaluate", run_id], cwd=work)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{100 * runs[0].data.metrics['test/sequence_accuracy']:6.2f}%" in result.stdout


def test_evaluate_on_a_raw_labelled_folder_prepares_it_as_the_model_did(quickstart_run, monkeypatch):
    """`harness evaluate RUN --data FOLDER` on the run's own raw test folder gives exactly the run's
    test accuracy (same images, same preprocessing), prints its interval and logs an evaluation run
    with the folder as its dataset; experiment reports still see one trained run."""
    from harness.tracking.query import find_runs

    work, _ = quickstart_run
    client, runs = _runs(work)
    (trained,) = runs
    (folder,) = (work / "data" / "synthetic").glob("v*/test-60")
    result = harness(["evaluate", trained.info.run_id, "--data", str(folder)], cwd=work)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = trained.data.metrics["test/sequence_accuracy"]
    assert f"{100 * expected:6.2f}%  (95% interval " in result.stdout and "60 numbers" in result.stdout
    assert "Goodfellow" not in result.stdout  # synthetic images: no comparison with SVHN's results
    evaluation = next(r for r in _runs(work)[1] if r.data.tags.get("harness.kind") == "evaluation")
    assert evaluation.data.metrics["test/sequence_accuracy"] == expected
    assert evaluation.data.tags["harness.model_run"] == trained.info.run_id
    assert evaluation.info.run_name == f"evaluate quickstart on {folder.name}"
    assert "95% interval" in evaluation.data.tags["mlflow.note.content"]
    (dataset,) = client.get_run(evaluation.info.run_id).inputs.dataset_inputs
    assert dataset.dataset.name == f"folder {folder.name}/test" and dataset.dataset.digest
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    try:
        assert [r.run_id for r in find_runs(experiment="svhn-harness")] == [trained.info.run_id]
    finally:
        mlflow.set_tracking_uri(None)
