"""`harness ui` serves the MLflow UI on 127.0.0.1 over the store the runs were written to."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from mlflow_processes import free_port, listening_addresses


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
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
