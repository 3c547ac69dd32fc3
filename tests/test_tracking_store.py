"""The local SQLite store is created whole or not at all, and a store that cannot be opened is named."""

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from harness.errors import HarnessError
from harness.tracking import query
from harness.tracking import store as tracking_store

OPEN_STORE = "from harness.tracking import store; store.open_client(); print('opened')"


def _open_in(folder: Path, **kwargs) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.Popen([sys.executable, "-c", OPEN_STORE], cwd=folder, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_a_store_killed_while_being_created_leaves_nothing_that_looks_whole(tmp_path):
    """kill -9 while MLflow builds the schema (seconds of migrations): before, the half-built
    mlflow.db failed every later command with "table ... already exists"."""
    process = _open_in(tmp_path)
    deadline = time.monotonic() + 120
    while not any(tmp_path.glob("*mlflow.db*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.kill()
    process.wait()
    assert not (tmp_path / "mlflow.db").exists()

    reopened = _open_in(tmp_path)
    out, err = reopened.communicate(timeout=300)
    assert reopened.returncode == 0, err
    assert out.strip() == "opened"
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [e.name for e in client.search_experiments()] == ["Default"]
    assert not (tmp_path / f".mlflow.db.{reopened.pid}.creating").exists()


def test_a_new_store_is_the_one_mlflow_would_make(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = tracking_store.open_client()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]  # no temporary file left
    (default,) = client.search_experiments()
    assert default.artifact_location == str(tmp_path.resolve() / "mlruns" / "0")
    experiment = client.create_experiment("kept")
    assert tracking_store.open_client().get_experiment(experiment).name == "kept"  # opened again, not re-created


def test_a_store_that_cannot_be_opened_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "elsewhere" / "runs.db"
    store.parent.mkdir()
    store.write_bytes(b"not a database, but someone's file" * 100)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    with pytest.raises(HarnessError, match=r"MLflow store .*runs\.db: cannot open it .*move it away"):
        tracking_store.open_client()
    assert store.read_bytes() == b"not a database, but someone's file" * 100  # untouched


@pytest.mark.parametrize("uri, expected", [
    ("sqlite:///mlflow.db", Path("mlflow.db")),
    ("sqlite:////abs/path/my%20store.db", Path("/abs/path/my store.db")),
    ("sqlite:///:memory:", None),
    ("http://127.0.0.1:5000", None),
    ("postgresql://u@h/db", None),
])
def test_which_stores_are_local_files(uri, expected):
    assert tracking_store.sqlite_file(uri) == expected


def test_a_short_run_id_names_the_runs_it_starts(tmp_path, monkeypatch):
    """Reports and the MLflow UI show 8 characters of a run id; given those, the error names the runs."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = tracking_store.open_client()
    run = client.create_run(client.create_experiment("short ids"), run_name="the-one")
    client.set_terminated(run.info.run_id)
    full = run.info.run_id
    assert query.get_run(full).name == "the-one"
    with pytest.raises(HarnessError, match=rf"'{full[:8]}' not found in .*'{full[:8]}' starts {full} \(the-one\): "
                                           "give the whole id"):
        query.get_run(full[:8])
    with pytest.raises(HarnessError, match=rf"'{full[:8]}' not found in") as caught:
        query.get_runs([full, full[:8]])
    assert full in str(caught.value)
    other = "0" * 8 if not full.startswith("0" * 8) else "f" * 8
    with pytest.raises(HarnessError) as caught:
        query.get_run(other)
    assert "starts" not in str(caught.value)  # a prefix of no run: the plain error
    with pytest.raises(HarnessError) as caught:
        query.get_run("the-one")
    assert "starts" not in str(caught.value)  # a run name is not an id
