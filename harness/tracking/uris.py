"""Where the tracking store is, and how it is shown to people: no MLflow import, so that commands
can name a bad store or address before MLflow is loaded.

Store: MLFLOW_TRACKING_URI when set (a team's `mlflow server`, e.g. one started by `harness server`),
else a local SQLite file ``mlflow.db`` in the working directory (MLflow's own default), with
artifacts under ./mlruns.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path


def local_store_uri() -> str:
    """The embedded default store: ./mlflow.db (artifacts under ./mlruns)."""
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or local_store_uri()


def sqlite_file(uri: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` store (relative to the working directory unless absolute)."""
    if not uri.startswith("sqlite:///"):
        return None
    name = urllib.parse.unquote(uri[len("sqlite:///"):].split("?", 1)[0])
    return Path(name) if name and name != ":memory:" else None


def display_uri() -> str:
    """The tracking URI as shown to people: relative to the working directory, no credentials."""
    return shown_uri(tracking_uri())


def shown_uri(uri: str) -> str:
    here = f"{Path.cwd().resolve()}/"
    if uri.startswith("sqlite:///" + here):
        return "sqlite:///" + uri[len("sqlite:///" + here):]
    if uri.startswith(here):
        return "./" + uri[len(here):]
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return uri
