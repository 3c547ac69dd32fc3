"""An MLflow tracking server that cannot be reached: nothing listening (connection refused) or a
server that accepts connections and never answers. Every command that reads runs fails with one line
saying where it tried, within MLflow's request timeout, never a traceback or a hang."""

from __future__ import annotations

import socket
import time

import pytest

from .builders import one_line_error


@pytest.fixture(params=["refused", "silent"])
def unreachable(request, workdir, monkeypatch):
    """MLFLOW_TRACKING_URI pointing at a loopback port where no server answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    if request.param == "silent":
        sock.listen(16)  # the kernel completes the handshakes; nothing ever reads or answers
    else:
        sock.close()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        sock.close()


@pytest.mark.parametrize("argv", [
    ["report", "--experiment", "svhn-harness"],
    ["report", "--runs", "0" * 32],
    ["evaluate", "0" * 32],
], ids=["report an experiment", "report runs", "evaluate a run"])
def test_unreachable_tracking_server_is_one_line_not_a_hang(unreachable, capsys, argv):
    started = time.monotonic()
    one_line_error(capsys, argv, f"cannot reach the MLflow tracking server at {unreachable}", "is it running?")
    assert time.monotonic() - started < 60


def test_a_run_cannot_start_against_an_unreachable_server(unreachable):
    from harness.spec import Spec
    from harness.tracking import runs, store

    started = time.monotonic()
    with pytest.raises(store.TrackingUnavailable, match=f"cannot reach the MLflow tracking server at {unreachable}"):
        with runs.run(Spec(name="nowhere")):
            pass
    assert time.monotonic() - started < 60
