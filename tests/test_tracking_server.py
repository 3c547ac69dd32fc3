"""Tracking a team can rely on: `harness server`, and runs logged to a real `mlflow server` process that
goes away and comes back (SQLite store and artifacts in a temporary folder, 127.0.0.1, free ports)."""

import json
import re
import signal
import sys
import tempfile
import threading
import time

import pytest
from mlflow_processes import (
    Process,
    TrackingServer,
    clean_env,
    free_port,
    listening_addresses,
)

from harness.tracking import log, query, runs, store
from harness.tracking import server as tracking_server


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """harness.tracking.runs working in ``tmp_path`` (its local store, ledger and runs/ live there)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # MLflow's downloads and lock files

    yield
    import mlflow

    while mlflow.active_run():  # a failed test must not leave the next one inside its run
        mlflow.end_run("FAILED")
    mlflow.set_tracking_uri(None)


def spec(name: str, experiment: str):
    from harness.spec import Spec, TrackingSpec

    return Spec(name=name, tracking=TrackingSpec(experiment=experiment))


def test_harness_server_serves_the_local_store_on_loopback(tmp_path, tracking, monkeypatch):
    # a run logged locally before the server exists ...
    with runs.run(spec("local-run", "svhn-harness")) as local_id:
        log.log_metrics({"test_sequence_accuracy": 0.5}, step=1)
    port = free_port()
    server = Process([sys.executable, "-m", "harness", "server", "--port", str(port)], tmp_path,
                     clean_env(TMPDIR=str(tmp_path)), tmp_path / "harness-server.log").start()
    try:
        server.wait_http(f"http://127.0.0.1:{port}/health")
        assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{port}" in server.output()
        assert "sqlite:///mlflow.db" in server.output()
        if sys.platform == "linux":
            assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1 only (little-endian hex)

        # ... is visible through it, and a teammate's run logs through it, artifacts included
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        assert query.get_run(local_id).metrics["test_sequence_accuracy"] == 0.5
        with runs.run(spec("team-run", "team")) as run_id:
            log.log_params({"model.parameters": 1234})
            log.log_metrics({"loss": 2.0}, step=1)
            log.log_metrics({"loss": 1.0}, step=2)
            log.log_dict({"split": "test"}, "data_card.json")
        run = query.get_run(run_id)
        assert run.status == "FINISHED" and run.params["model.parameters"] == "1234"
        assert run.params["model.name"] == "cnn_small"  # the spec's flattened params
        assert run.history["loss"] == [(1, 2.0), (2, 1.0)]
        assert json.loads(query.download_artifact(run_id, "data_card.json").read_text()) == {"split": "test"}
        # artifacts went through the server into ./mlruns, beside the local runs' artifacts
        assert list((tmp_path / "mlruns").rglob(f"{run_id}/artifacts/data_card.json"))
    finally:
        server.stop()


def test_server_command_defaults():

    plan = tracking_server.server_plan()
    command = plan.command
    assert command[command.index("--host") + 1] == "127.0.0.1" and plan.uri == "http://127.0.0.1:5000"
    assert plan.store == "sqlite:///mlflow.db" and "--allowed-hosts" not in command
    open_plan = tracking_server.server_plan(host="0.0.0.0", port=5001)
    assert open_plan.uri.endswith(":5001") and "--allowed-hosts" in open_plan.command


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One `mlflow server` for the tests below (each uses its own experiment); they stop and restart it."""
    server = TrackingServer(tmp_path_factory.mktemp("server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def server(shared_server, tracking, monkeypatch):
    """The shared server, running, as this test's tracking URI; MLflow's own per-request retries are
    off, so the harness's retrying alone must bridge an outage."""
    if shared_server.proc.poll() is not None:  # a failed test left it stopped
        shared_server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_server.uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return shared_server


def test_metrics_and_params_survive_a_server_restart(tmp_path, tracking, server):
    restarted = threading.Event()

    def restart():
        time.sleep(2)  # the server stays away for a while (plus its start-up time)
        server.start()
        restarted.set()

    steps = range(1, 21)
    with runs.run(spec("restart", "restart")) as run_id:
        for step in steps:
            if step == 8:
                server.stop()
                threading.Thread(target=restart, daemon=True).start()
            started = time.monotonic()
            log.log_metrics({"loss": 1.0 / step, "images_per_sec": 100.0 + step}, step=step)
            log.log_params({f"p{step}": step})
            if step == 8:
                assert time.monotonic() - started > 2  # it really waited for the server
    assert restarted.wait(120)
    run = query.get_run(run_id)
    assert run.status == "FINISHED"
    for key in ("loss", "images_per_sec"):
        assert sorted(s for s, _ in run.history[key]) == list(steps), key  # every step exactly once
    assert {f"p{s}": str(s) for s in steps}.items() <= run.params.items()
    assert not list((tmp_path / "runs" / ".unended").glob("*.json"))


def test_server_that_stays_away_fails_the_run_clearly_and_it_is_settled_later(tmp_path, tracking, server,
                                                                                monkeypatch, capsys):
    monkeypatch.setattr(store, "RETRY_SECONDS", 3.0)
    with pytest.raises(store.TrackingUnavailable) as failure:
        with runs.run(spec("away", "away")) as run_id:
            log.log_metrics({"loss": 1.0}, step=1)
            server.stop(signal.SIGKILL)
            log.log_metrics({"loss": 0.5}, step=2)
    message = str(failure.value)
    assert "\n" not in message and server.uri in message and "did not answer for 3 s" in message
    assert "Connection refused" in message and "run the same command again" in message
    assert "could not be marked FAILED" in capsys.readouterr().err
    ledger = tmp_path / "runs" / ".unended" / f"{run_id}.json"
    assert json.loads(ledger.read_text())["status"] == "FAILED"

    server.start()  # back: the next harness call that reaches it sets the status
    assert query.run_status(run_id) == "FAILED"
    assert not ledger.exists()
    run = query.get_run(run_id)
    assert run.history["loss"] == [(1, 1.0)] and run.end_time is not None


def test_training_stopped_by_an_absent_server_resumes_when_it_is_back(tmp_path, tracking, server, monkeypatch):
    from conftest import REPO

    from harness.spec import load_spec
    from harness.training.core import train

    monkeypatch.setattr(store, "RETRY_SECONDS", 3.0)
    spec = load_spec(REPO / "experiments" / "smoke.yaml",
                     ["data.options.train=160", "data.options.test=40", "train.epochs=3",
                      "tracking.experiment=outage", "tracking.log_model=false"])

    def stop_after_first_epoch():
        deadline = time.time() + 600
        while not list(tmp_path.glob("runs/*/state.json")) and time.time() < deadline:
            time.sleep(0.05)
        server.stop(signal.SIGKILL)

    watcher = threading.Thread(target=stop_after_first_epoch, daemon=True)
    watcher.start()
    with pytest.raises(store.TrackingUnavailable):
        train(spec, verbose=0)
    watcher.join()
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if not p.name.startswith((".", "pending"))]
    state = json.loads((run_dir / "state.json").read_text())
    assert state["epoch"] < 3 and (run_dir / state["weights"]).exists()  # the local state is intact
    assert list((tmp_path / "runs" / "pending").glob("*.json"))

    server.start()
    assert query.run_status(run_dir.name) == "FAILED"  # settled from the ledger
    result = train(spec, verbose=0)  # the same command again
    assert result.run_id == run_dir.name
    run = query.get_run(run_dir.name)
    assert run.status == "FINISHED" and run.tags["harness.resumed"] == "true"
    assert sorted(s for s, _ in run.history["val_sequence_accuracy"]) == [1, 2, 3]  # each epoch once


def test_unreachable_server_at_start_is_one_clear_line(tracking, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(store.TrackingUnavailable, match=r"cannot reach the MLflow tracking server at "
                                                           r"http://127\.0\.0\.1:\d+ \(Connection refused\)"):
        with runs.run(spec("nowhere", "nowhere")):
            pass


def test_metrics_are_idempotent_and_numpy_numbers_are_kept(tracking):
    import mlflow
    import numpy as np

    with runs.run(spec("numbers", "numbers")) as run_id:
        log.log_metrics({"a": np.float32(0.25), "b": np.int64(3), "c": 1, "skip": "text"}, step=1)
        # a batch sent twice (the answer to the first was lost) is stored once
        batch = [mlflow.entities.Metric("d", 1.0, 1234, 1)]
        client = mlflow.tracking.MlflowClient(store.tracking_uri())
        client.log_batch(run_id, metrics=batch)
        client.log_batch(run_id, metrics=batch)
    run = query.get_run(run_id)
    assert run.metrics["a"] == 0.25 and run.metrics["b"] == 3 and run.metrics["c"] == 1
    assert "skip" not in run.metrics and run.history["d"] == [(1, 1.0)]


def test_failed_status_is_kept_until_the_store_takes_it(tmp_path, tracking):
    """The ledger entry of a run the store could not end is applied by the next call, once."""
    with runs.run(spec("ledger", "ledger")) as run_id:
        pass
    client = __import__("mlflow").tracking.MlflowClient(store.tracking_uri())
    client.update_run(run_id, "RUNNING")  # as if the end had never reached the store
    entry = store.ledger_add(run_id, "KILLED", 1_700_000_000_000)
    assert query.run_status(run_id) == "KILLED" and not entry.exists()
    assert query.get_run(run_id).end_time == 1_700_000_000  # when it ended, not when it was settled
    other = tmp_path / "runs" / ".unended" / "other.json"
    other.write_text(json.dumps({"run_id": "x" * 32, "status": "FAILED", "store": "elsewhere", "end_time": 0}))
    query.run_status(run_id)
    assert other.exists()  # another store's entry is left for that store


def test_dataset_fingerprint_is_order_free_and_split_aware():
    from harness.tracking.log import dataset_fingerprint

    a = dataset_fingerprint({"train": "1", "test": "2"})
    assert a == dataset_fingerprint({"test": "2", "train": "1"}) and re.fullmatch(r"[0-9a-f]{64}", a)
    assert a != dataset_fingerprint({"train": "2", "test": "1"})
