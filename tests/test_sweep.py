"""`harness sweep` as a user runs it: real CLI processes, real KerasTuner, a real SQLite MLflow store.

One sweep is interrupted twice (Ctrl-C, then kill -9) and finished by running the same command again:
one parent run, every trial once, interrupted trials continued in their own nested runs.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

NAME = "resume_sweep"


def sweep_file(tmp_path: Path, trials: int = 3, tuner: str = "random", extra: str = "") -> Path:
    from harness.cli import experiments_dir

    path = tmp_path / f"{NAME}.yaml"
    path.write_text(textwrap.dedent(f"""\
        # Run:    harness sweep {NAME}.yaml
        # Expect: a plumbing check
        base: {experiments_dir() / 'smoke.yaml'}
        name: {NAME}
        data:
          options: {{train: 180, test: 40}}
        train:
          epochs: 2
          batch_size: 32
        sweep:
          tuner: {tuner}
          seed: 3
          {extra}
          space:
            augment.policy: [none, paper]
            train.learning_rate: {{min: 1.0e-3, max: 1.0e-2, log: true}}
        """) + (f"  max_trials: {trials}\n" if tuner != "hyperband" else ""))
    return path


def start(cwd: Path, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "KERASTUNER_"))}
    return subprocess.Popen([sys.executable, "-m", "harness", "sweep", f"{NAME}.yaml", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def client(cwd: Path):
    import mlflow

    return mlflow.tracking.MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")


def runs(cwd: Path):
    c = client(cwd)
    experiment = c.get_experiment_by_name("svhn-harness")
    if experiment is None:
        return [], []
    found = c.search_runs([experiment.experiment_id])
    parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    trials = [r for r in found if "mlflow.parentRunId" in r.data.tags]
    return parents, trials


def wait_for(proc: subprocess.Popen, ready, what: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"sweep ended (code {proc.returncode}) before {what}:\n{out[-2000:]}\n{err[-3000:]}")
        assert time.time() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.1)


def trial_state(cwd: Path, trial: str) -> Path:
    return cwd / "runs" / "sweeps" / NAME / "trials" / trial / "state.json"


def test_sweep_survives_ctrl_c_and_kill_9(tmp_path):
    sweep_file(tmp_path)
    # 1. Ctrl-C once the first trial has finished an epoch
    proc = start(tmp_path)
    try:
        wait_for(proc, lambda: trial_state(tmp_path, "0").exists(), "trial 0's first epoch")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted; run the same command again to resume" in err
    (parent,), (trial0,) = runs(tmp_path)
    assert parent.info.status == "KILLED" and trial0.info.status == "KILLED"

    # 2. kill -9 once trial 0 is finished and trial 1 has finished an epoch
    proc = start(tmp_path)
    try:
        wait_for(proc, lambda: trial_state(tmp_path, "1").exists(), "trial 1's first epoch")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    parents, trials = runs(tmp_path)
    assert [p.info.run_id for p in parents] == [parent.info.run_id]
    status = {t.data.tags["harness.trial_id"]: t.info.status for t in trials}
    assert status == {"0": "FINISHED", "1": "RUNNING"}  # killed: nothing could mark trial 1
    finished0 = next(t for t in trials if t.data.tags["harness.trial_id"] == "0")

    # 3. the same command finishes the sweep
    proc = start(tmp_path)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    parents, trials = runs(tmp_path)
    assert [p.info.run_id for p in parents] == [parent.info.run_id]  # one parent, continued
    state = json.loads((tmp_path / "runs" / "sweeps" / NAME / "sweep.json").read_text())
    assert state["parent_run_id"] == parent.info.run_id
    (parent,) = parents
    assert parent.info.status == "FINISHED" and parent.data.tags["harness.resumed"] == "true"
    assert parent.info.run_name == f"{NAME}: random search of synthetic"
    for t in trials:  # a trial's name says what it trained
        p = t.data.params
        assert t.info.run_name == f"{p['name']}: {p['model.name']}, {p['augment.policy']}, synthetic", t.info.run_name
    by_trial = {t.data.tags["harness.trial_id"]: t for t in trials}
    assert len(trials) == 3 and set(by_trial) == {"0", "1", "2"}  # every trial once
    assert all(t.info.status == "FINISHED" for t in trials)
    assert by_trial["0"].info.run_id == trial0.info.run_id  # the Ctrl-C'd trial continued its run
    assert by_trial["0"].info.end_time == finished0.info.end_time  # and was not run again in step 3
    assert by_trial["1"].data.tags.get("harness.resumed") == "true"  # the killed one continued too
    c = client(tmp_path)
    for trial in trials:
        assert trial.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert trial.data.params["model.name"] == "cnn_tiny" and trial.data.params["train.epochs"] == "2"
        values = json.loads(trial.data.tags["harness.trial_hp"])
        assert trial.data.params["augment.policy"] == values["augment.policy"]
        steps = sorted({m.step for m in c.get_metric_history(trial.info.run_id, "val/sequence_accuracy")})
        assert steps == [1, 2]
        assert 0.0 <= trial.data.metrics["best/val_sequence_accuracy"] <= 1.0
    # the parent's leaderboard and best trial, from what MLflow holds
    board = json.loads(Path(c.download_artifacts(parent.info.run_id, "leaderboard.json", str(tmp_path))).read_text())
    assert len(board["data"]) == 3 and "val_sequence_accuracy" in board["columns"]
    assert parent.data.metrics["sweep/trials_finished"] == 3
    best = max(trials, key=lambda t: t.data.metrics["best/val_sequence_accuracy"])
    assert parent.data.metrics["best/val_sequence_accuracy"] == best.data.metrics["best/val_sequence_accuracy"]
    assert parent.data.tags["harness.best_run_id"] in by_trial[parent.data.tags["harness.best_trial_id"]].info.run_id
    assert parent.data.params["sweep.tuner"] == "random" and "sweep.space.augment.policy" in parent.data.params
    # KerasTuner's own books agree: three completed trials, no checkpoints left behind
    tuner = tmp_path / "runs" / "sweeps" / NAME / "tuner"
    statuses = [json.loads(p.read_text())["status"] for p in tuner.glob("trial_*/trial.json")]
    assert statuses == ["COMPLETED"] * 3
    assert not list((tmp_path / "runs" / "sweeps" / NAME / "trials").glob("*/state.json"))
    # quiet: a line per trial run in this step, then the leaderboard
    assert [ln.split(":")[0] for ln in err.splitlines() if ln.startswith("trial ")] == ["trial 1 of 3", "trial 2 of 3"]
    for noise in ("Traceback", "Search: Running Trial", "Reloading Tuner", "absl", "UserWarning"):
        assert noise not in err + out, (err + out)[:3000]
    assert "leaderboard" in out and "best.yaml" in out
    # the sweep's report, written at the end like a training run's
    report = tmp_path / "runs" / "reports" / f"sweep-{NAME}" / "README.md"  # where `harness report --sweep` writes it
    assert f"Report: {Path('runs') / 'reports' / f'sweep-{NAME}' / 'README.md'}" in out
    text = report.read_text()
    assert parent.info.run_id in text and "## Sweep" in text
    assert all((report.parent / "figures" / name).stat().st_size > 0
               for name in ("leaderboard.png", "hyperparameters.png"))
    from harness.spec import load_spec

    assert load_spec(tmp_path / "runs" / "sweeps" / NAME / "best.yaml").name.startswith(f"{NAME}-trial")


@pytest.mark.slow
@pytest.mark.parametrize("tuner, extra, trials", [("bayesian", "", 3), ("grid", "", 4),
                                                   ("hyperband", "max_epochs: 2\n  factor: 2", 5)])
def test_other_tuners(tmp_path, tuner, extra, trials):
    path = sweep_file(tmp_path, trials=trials, tuner=tuner, extra=extra)
    if tuner == "grid":  # a grid needs a step for the learning-rate range
        path.write_text(path.read_text().replace("log: true}", "log: true, step: 10.0}"))
    proc = start(tmp_path)
    out, err = proc.communicate(timeout=1800)
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    (parent,), found = runs(tmp_path)
    assert len(found) == trials and all(t.info.status == "FINISHED" for t in found)
    assert len({t.data.tags["harness.trial_id"] for t in found}) == trials
    assert "Traceback" not in err and "UserWarning" not in err, err[:3000]


def test_reloaded_oracle_reruns_interrupted_trials_and_never_finished_ones(tmp_path):
    """KerasTuner 1.4.8's reload, plus the harness's repair of the two kill windows it misses."""
    import keras_tuner as kt

    from harness.backend import load_keras
    from harness.sweeps.search import _repair

    keras = load_keras()

    def build(hp):
        hp.Float("x", 0.0, 1.0)
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
        model.compile(loss="mse")
        return model

    def tuner():
        return kt.RandomSearch(build, objective=kt.Objective("score", "max"), max_trials=5, seed=1,
                               directory=str(tmp_path), project_name="tuner")

    first = tuner()
    oracle, books = first.oracle, tmp_path / "tuner" / "oracle.json"
    first.save()
    done = oracle.create_trial("tuner0")  # finishes, but the kill comes before oracle.json says so
    oracle.update_trial(done.trial_id, {"score": 0.5})
    trial = oracle.trials[done.trial_id]
    trial.status, trial.score = "COMPLETED", 0.5
    oracle._save_trial(trial)
    killed = oracle.create_trial("tuner1")  # killed mid-training: listed as ongoing
    before = books.read_text()
    unlisted = oracle.create_trial("tuner2")  # saved RUNNING; the kill comes before oracle.json
    books.write_text(before)

    again = tuner()
    queued = list(again.oracle._retry_queue)
    assert killed.trial_id in queued and done.trial_id in queued  # KerasTuner alone would rerun `done`
    assert unlisted.trial_id not in queued  # ... and never run `unlisted`
    _repair(again.oracle)
    assert sorted(again.oracle._retry_queue) == sorted([killed.trial_id, unlisted.trial_id])
    rerun = {again.oracle.create_trial(f"tuner{i}").trial_id for i in range(2)}
    assert rerun == {killed.trial_id, unlisted.trial_id}
    fresh = again.oracle.create_trial("tuner9")
    assert fresh.trial_id not in (done.trial_id, killed.trial_id, unlisted.trial_id)
    assert again.oracle.get_best_trials()[0].trial_id == done.trial_id  # counted once, as done
