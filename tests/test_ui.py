"""`harness ui` serves the MLflow UI on 127.0.0.1 over the store the runs were written to, and
`harness ui` / `harness server` behave like MLflow's own commands: a bad address or store is one line
and a non-zero exit with nothing created, and a stop signal leaves no process behind."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO
from mlflow_processes import free_port, listening_addresses

sys.path.insert(0, str(REPO / "benchmarks"))
from ui_screenshots import alive, descendants  # noqa: E402  (the screenshot script stops its UI the same way)


def test_ui_serves_the_store_runs_were_written_to(tmp_path):
    import mlflow

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)
    experiment = mlflow.set_experiment("svhn-harness")
    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name="visible-run"):
        mlflow.log_metric("test_sequence_accuracy", 0.5)
    mlflow.set_tracking_uri(None)

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.Popen([sys.executable, "-m", "harness", "ui", "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        body = None
        while time.time() < deadline and body is None:
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search", method="POST",
                    data=json.dumps({"experiment_ids": [experiment.experiment_id]}).encode(),
                    headers={"Content-Type": "application/json"})
                body = json.loads(urllib.request.urlopen(request, timeout=5).read())
            except OSError:
                time.sleep(0.5)
        assert body is not None, "the UI did not answer within 120 s"
        names = [r["info"]["run_name"] for r in body["runs"]]
        assert names == ["visible-run"]
        # bound to loopback only (127.0.0.1 is 0100007F in /proc's little-endian hex)
        if os.path.exists("/proc/net/tcp"):
            assert listening_addresses(port) == {"0100007F"}
        server = descendants(proc.pid)
        assert server, "the UI runs in a child process"
        proc.send_signal(signal.SIGTERM)  # to the harness process alone, as `kill PID` does
        assert proc.wait(timeout=30) == 0
        deadline = time.time() + 20
        while alive(server) and time.time() < deadline:
            time.sleep(0.2)
        assert not alive(server), f"left behind: {sorted(alive(server))}"
    finally:
        for pid in [proc.pid, *descendants(proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()


def harness(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = env or {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "harness", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def problem(result: subprocess.CompletedProcess) -> str:
    """The one line a failed command prints (its stderr less Python's import timings)."""
    lines = [ln for ln in result.stderr.splitlines() if not ln.startswith("import time:")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    imported = {ln.rsplit("|", 1)[1].strip() for ln in result.stderr.splitlines() if ln.startswith("import time:")}
    assert not imported & {"mlflow", "tensorflow", "keras", "pandas", "matplotlib"}, "checked after a heavy import"
    return lines[0]


def sqlite_store(folder: Path) -> None:
    import mlflow

    folder.mkdir(exist_ok=True)
    mlflow.tracking.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()


@pytest.mark.parametrize("command", ["ui", "server"])
def test_an_invalid_port_is_one_line_and_creates_nothing(tmp_path, command):
    line = problem(harness(tmp_path, command, "--port", "99999"))
    assert line == "harness: error: --port 99999: a TCP port is a number from 1 to 65535, e.g. 5000"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["ui", "server"])
def test_a_port_in_use_is_one_line(tmp_path, command):
    sqlite_store(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = problem(harness(tmp_path, command, "--port", str(port)))
    assert line == f"harness: error: port {port} on 127.0.0.1 is in use (another server?); choose another with --port"


def test_the_ui_names_a_store_that_is_missing_or_not_a_store(tmp_path):
    assert "no MLflow store at sqlite:///mlflow.db" in problem(harness(tmp_path, "ui", "--port", str(free_port())))
    assert list(tmp_path.iterdir()) == []  # and did not create one
    (tmp_path / "mlflow.db").write_bytes(b"someone's notes, not a database" * 10)
    assert "not an SQLite database" in problem(harness(tmp_path, "ui", "--port", str(free_port())))
    (tmp_path / "mlflow.db").unlink()
    import sqlite3

    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    assert "not an MLflow tracking store" in problem(harness(tmp_path, "ui", "--port", str(free_port())))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = str(tmp_path / "no-such-folder")
    assert "no such folder" in problem(harness(tmp_path, "ui", "--port", str(free_port()), env=env))
