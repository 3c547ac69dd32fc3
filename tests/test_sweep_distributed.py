"""A distributed sweep as on a team's machines: a chief and two workers (real processes speaking
KerasTuner's chief/worker protocol on loopback), all logging to a real `mlflow server` process."""

import json
import os
import sys
import time
from pathlib import Path

from mlflow_processes import Process, TrackingServer, clean_env
from test_sweep import NAME, sweep_file


def test_chief_and_two_workers_nest_every_trial_once_under_one_parent(tmp_path):
    sweep_file(tmp_path, trials=3)
    (tmp_path / "server").mkdir()
    server = TrackingServer(tmp_path / "server").start()
    sweep = Process([sys.executable, "-m", "harness", "sweep", f"{NAME}.yaml", "--workers", "2",
                     "--set", "train.epochs=1"], tmp_path, clean_env(MLFLOW_TRACKING_URI=server.uri),
                    tmp_path / "sweep.log")
    try:
        sweep.start()
        code = sweep.proc.wait(timeout=1200)
        log = sweep.output()
        assert code == 0, log[-5000:]
        # the launcher waited for its chief and workers: nothing of the sweep is left running
        # (multiprocessing's resource tracker leaves a moment after the process it served)
        assert not alive_after(sweep.proc.pid, 10), "a sweep process outlived the command"

        import mlflow

        client = mlflow.tracking.MlflowClient(server.uri)
        experiment = client.get_experiment_by_name("svhn-harness")
        found = client.search_runs([experiment.experiment_id])
        (parent,) = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
        trials = [r for r in found if "mlflow.parentRunId" in r.data.tags]
        assert parent.data.tags["harness.kind"] == "sweep" and parent.info.status == "FINISHED"
        assert sorted(t.data.tags["harness.trial_id"] for t in trials) == ["0", "1", "2"]  # each once
        for trial in trials:
            assert trial.data.tags["mlflow.parentRunId"] == parent.info.run_id
            assert trial.info.status == "FINISHED"
            assert trial.data.tags["harness.tuner_id"] in ("tuner0", "tuner1")  # run by a worker
            assert trial.data.params["train.epochs"] == "1"  # the launcher's --set reached the workers
            assert 0.0 <= trial.data.metrics["best/val_sequence_accuracy"] <= 1.0
        board = json.loads(Path(client.download_artifacts(parent.info.run_id, "leaderboard.json",
                                                          str(tmp_path))).read_text())
        assert sorted(row[board["columns"].index("trial")] for row in board["data"]) == ["0", "1", "2"]
        assert parent.data.metrics["sweep/trials_finished"] == 3
        # the chief served the oracle; workers ran the trials and said so, one line each
        assert "chief on 127.0.0.1:" in log and "leaderboard" in log
        assert sum(line.startswith("[tuner") and " trial " in line for line in log.splitlines()) == 3
        for noise in ("Traceback", "Search: Running Trial", "Reloading Tuner"):
            assert noise not in log, log[-5000:]
    finally:
        sweep.stop()
        server.stop()


def alive_after(pgid: int, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.2)
    return True
