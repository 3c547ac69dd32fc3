"""The genuine-street-number recipe (experiments/real2000_*.yaml) as a user runs it, at a tiny size: the
pretraining registers its model, the fine-tuning starts from that registered model, trains on a folder
of genuine SVHN images and scores the labelled folder given as data.options.test, and `harness evaluate
MODEL --data FOLDER` reads the same folder to the same figure. Real CLI processes, a real SQLite store."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

TINY = ["--set", "model.name=cnn_tiny", "--set", "train.epochs=1", "--set", "train.batch_size=16"]


def labelled_folder(source: Path, folder: Path, names: list[str]) -> Path:
    """A Format 1 folder of ``names`` from ``source``: links to the images and their labels.csv rows."""
    folder.mkdir()
    labels = pd.read_csv(source / "labels.csv", dtype={"filename": str})
    labels[labels["filename"].isin(names)].to_csv(folder / "labels.csv", index=False)
    for name in names:
        (folder / name).symlink_to(source / name)
    return folder


def harness(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    result = subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def test_pretrain_then_finetune_on_genuine_images_then_score_any_folder(shared_data, tmp_path):
    import mlflow

    genuine = shared_data / "svhn-sample" / "train"
    train = labelled_folder(genuine, tmp_path / "mine", [f"{i}.png" for i in range(1, 61)])
    test = labelled_folder(genuine, tmp_path / "theirs", [f"{i}.png" for i in range(1001, 1025)])

    harness(tmp_path, "train", "real2000_pretrain", *TINY, "--set", "data.options.train=200",
            "--set", "data.options.test=40")
    tuned = harness(tmp_path, "train", "real2000_finetune", *TINY, "--set", f"data.options.train={train}",
                    "--set", f"data.options.test={test}", "--set", "data.recombined=40")
    run_id = re.search(r"held-out results \(MLflow run ([0-9a-f]{32})\)", tuned.stdout).group(1)

    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(run_id)
    pretrained = client.get_model_version_by_alias("real2000-synthetic", "pretrained")
    assert run.data.params["train.init_from"] == "models:/real2000-synthetic@pretrained"
    assert run.data.tags["harness.init_from_run"] == pretrained.run_id  # started from the registered model
    assert run.data.metrics["test/examples"] == 24  # scored on the given folder's numbers
    assert "harness.test_heldout" not in run.data.tags
    assert client.get_model_version_by_alias("real2000", "champion").run_id == run_id

    scored = harness(tmp_path, "evaluate", "models:/real2000@champion", "--data", str(test))
    accuracy = run.data.metrics["test/sequence_accuracy"]
    assert f"{100 * accuracy:6.2f}%  (95% interval " in scored.stdout and "24 numbers" in scored.stdout
