"""`harness ui` and `harness server`: the MLflow commands they run, on the harness's store.

Both are checked before anything starts (the address is free and bindable, the store is there and is
an MLflow store), each problem one line, and then supervised: the MLflow process tree runs in a
process group of its own, and Ctrl-C, SIGTERM or SIGHUP to the harness stops that whole group, so no
server or worker is left behind. No MLflow import here: the checks answer at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from harness.errors import HarnessError
from harness.tracking.uris import local_store_uri, shown_uri, sqlite_file, tracking_uri


def ui_command(host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The MLflow UI on the store this module writes to."""
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri(),
            "--host", host, "--port", str(port)]


# ------------------------------------------------------------------------------ a team's server

@dataclasses.dataclass(frozen=True)
class ServerPlan:
    command: list[str]  # the `mlflow server` command line
    backend: str  # backend store URI
    store: str  # backend store, as shown to people
    artifacts: str  # artifact destination
    uri: str  # what teammates export as MLFLOW_TRACKING_URI


def server_plan(backend_store_uri: str | None = None, artifacts_destination: str | None = None,
                host: str = "127.0.0.1", port: int = 5000) -> ServerPlan:
    """An MLflow tracking server for a team, by default over the local store (./mlflow.db and the
    ./mlruns artifact folder), so runs logged before it existed are visible through it too."""
    store = backend_store_uri or local_store_uri()
    artifacts = artifacts_destination or "mlruns"
    if "://" not in artifacts:  # a folder: absolute, so the server's working directory does not matter
        artifacts = str(Path(artifacts).expanduser().resolve())
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
               "--artifacts-destination", artifacts, "--host", host, "--port", str(port)]
    if host not in ("127.0.0.1", "localhost", "::1") and not os.environ.get("MLFLOW_SERVER_ALLOWED_HOSTS"):
        # MLflow accepts only localhost and private-IP Host headers by default (DNS-rebinding
        # protection); teammates will use this machine's name, so accept it too.
        try:
            from mlflow.server.security_utils import get_default_allowed_hosts
        except ImportError:  # an MLflow without the check
            get_default_allowed_hosts = None
        if get_default_allowed_hosts is not None:
            names = sorted({socket.gethostname(), socket.getfqdn()} - {""})
            command += ["--allowed-hosts",
                        ",".join(get_default_allowed_hosts() + names + [f"{n}:*" for n in names])]
    name = socket.getfqdn() if host in ("0.0.0.0", "::", "") else host
    uri = f"http://{f'[{name}]' if ':' in name else name}:{port}"
    return ServerPlan(command=command, backend=store, store=shown_uri(store), artifacts=shown_uri(artifacts), uri=uri)


# ------------------------------------------------------------------------------ checks and running

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
GRACE_SECONDS = 10.0  # how long the server's group has to stop before it is killed


def check_port(port: int) -> int:
    if not 0 < port < 65536:
        raise HarnessError(f"--port {port}: a TCP port is a number from 1 to 65535, e.g. 5000")
    return port


def check_address(host: str, port: int) -> None:
    """That the server can listen on ``host``:``port``: a name this machine has, a port free."""
    check_port(port)
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise HarnessError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: TIME_WAIT is no obstacle
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise HarnessError(f"port {port} on {host} is in use (another server?); choose another "
                                   f"with --port") from None
            if exc.errno == errno.EACCES:
                raise HarnessError(f"port {port} on {host}: not allowed for this user (ports below 1024 "
                                   f"need privileges); choose another with --port") from None
            raise HarnessError(f"--host {host} --port {port}: cannot listen there ({exc.strerror})") from None


def check_store(uri: str, *, create: bool) -> None:
    """That ``uri`` is a tracking store the MLflow server can open. A SQLite file must be an MLflow
    store; a missing one is an error unless ``create`` (a team's new server creates it)."""
    if uri.startswith(("http://", "https://")):
        raise HarnessError(f"the tracking store is a server ({shown_uri(uri)}): open it in a browser, or unset "
                           f"MLFLOW_TRACKING_URI to see the local store")
    path = sqlite_file(uri)
    if path is None:
        if "://" not in uri and not Path(uri).is_dir():  # a folder store (MLflow's file store)
            raise HarnessError(f"tracking store {uri}: no such folder")
        return  # a database server's store: its own server checks it
    if not path.exists():
        if create:
            return
        raise HarnessError(f"no MLflow store at {shown_uri(uri)}: train something first (harness quickstart), "
                           f"or point MLFLOW_TRACKING_URI at a store")
    try:
        with open(path, "rb") as f:
            header = f.read(16)
        if header != b"SQLite format 3\x00":
            raise HarnessError(f"MLflow store {path}: not an SQLite database; move it away or point "
                               f"MLFLOW_TRACKING_URI elsewhere")
        with contextlib.closing(sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except OSError as exc:
        raise HarnessError(f"MLflow store {path}: cannot read it ({exc.strerror})") from None
    except sqlite3.Error as exc:
        raise HarnessError(f"MLflow store {path}: cannot read it ({exc})") from None
    if not {"experiments", "runs"} <= tables:
        raise HarnessError(f"{path}: an SQLite database, but not an MLflow tracking store (no experiments "
                           f"or runs table)")


def serve(command: list[str]) -> int:
    """Run ``command`` (an MLflow server) in a process group of its own until it ends or the harness
    is told to stop; a stop signal goes to the whole group, which is killed if it has not stopped
    within GRACE_SECONDS. Returns the server's exit status (0 when stopped by the user)."""
    proc = subprocess.Popen(command, start_new_session=True)
    stopped_at: list[float] = []  # when the first stop signal came

    def forward(signum, frame):
        stopped_at.append(time.monotonic())
        _signal_group(proc.pid, signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    try:
        while True:
            try:
                code = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if stopped_at and time.monotonic() - stopped_at[0] > GRACE_SECONDS:
                    _signal_group(proc.pid, signal.SIGKILL)
    finally:
        _signal_group(proc.pid, signal.SIGKILL)  # whatever of the group outlived its leader
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if stopped_at else code


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
