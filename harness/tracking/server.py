"""`harness ui` and `harness server`: the MLflow commands they run, on the harness's store."""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from pathlib import Path

from harness.tracking.store import local_store_uri, shown_uri, tracking_uri


def ui_command(host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The MLflow UI on the store this module writes to."""
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri(),
            "--host", host, "--port", str(port)]


# ------------------------------------------------------------------------------ a team's server

@dataclasses.dataclass(frozen=True)
class ServerPlan:
    command: list[str]  # the `mlflow server` command line
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
    return ServerPlan(command=command, store=shown_uri(store), artifacts=shown_uri(artifacts), uri=uri)
