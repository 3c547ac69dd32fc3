"""kill -9 in the middle of training, run the same command again: one MLflow run, no lost epoch."""

import os
import signal
import subprocess
import sys
import time

import pytest

ARGS = ["train", "smoke", "--set", "data.options.train=160", "--set", "data.options.test=40",
        "--set", "train.epochs=4", "--set", "train.batch_size=32"]


def start(cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.Popen([sys.executable, "-m", "harness", *ARGS], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_killed_training_resumes_the_same_run(tmp_path):
    proc = start(tmp_path)
    deadline = time.time() + 300
    try:  # wait until at least one epoch is backed up, then kill without warning
        while not list(tmp_path.glob("runs/*/state.json")):
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() < deadline, "no epoch finished in time"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.name != "pending"]

    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(run_dir.name).info.status == "RUNNING"  # killed: nothing could mark it

    again = start(tmp_path)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out[-3000:]
    experiment = client.get_experiment_by_name("svhn-harness")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [run_dir.name]  # the same run, continued
    assert runs[0].info.status == "FINISHED" and runs[0].data.tags.get("harness.resumed") == "true"
    steps = sorted({m.step for m in client.get_metric_history(run_dir.name, "val_sequence_accuracy")})
    assert steps == [1, 2, 3, 4]  # no epoch lost
    assert not list((tmp_path / "runs" / "pending").glob("*.json"))
