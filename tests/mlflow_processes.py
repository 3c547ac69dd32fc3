"""Real MLflow processes for tests: started on 127.0.0.1 on a free port, always stopped."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without MLFLOW_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(extra)
    return env


def listening_addresses(port: int) -> set[str]:
    """Local addresses listening on ``port``, read from /proc (no traffic sent)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in open(table).read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                found.add(address)
    return found


class Process:
    """A command in its own process group, its output in ``log``; ``stop()`` ends the whole group."""

    def __init__(self, command: list[str], cwd: Path, env: dict[str, str], log: Path):
        self.command, self.cwd, self.env, self.log = command, cwd, env, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Process":
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_http(self, url: str, timeout: float = 180) -> None:
        """Until ``url`` answers 200 (the process must stay alive meanwhile)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, f"{self.command[:4]} exited:\n{self.output()[-3000:]}"
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    if answer.status == 200:
                        return
            except (OSError, urllib.error.HTTPError):
                pass
            time.sleep(0.3)
        raise AssertionError(f"{url} did not answer within {timeout} s:\n{self.output()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None and not _group_alive(self.proc.pid):
            return
        try:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        # workers of the group may outlive the leader for a moment: make sure none is left
        deadline = time.time() + 10
        while _group_alive(self.proc.pid) and time.time() < deadline:
            time.sleep(0.1)
        if _group_alive(self.proc.pid):
            os.killpg(self.proc.pid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


class TrackingServer(Process):
    """`mlflow server` with a SQLite store and an artifact folder under ``root``."""

    def __init__(self, root: Path, port: int | None = None):
        self.root, self.port = Path(root), port or free_port()
        command = [sys.executable, "-m", "mlflow", "server",
                   "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
                   "--artifacts-destination", str(self.root / "server-artifacts"),
                   "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        super().__init__(command, self.root, clean_env(TMPDIR=str(_tmp(self.root))), self.root / "server.log")

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "TrackingServer":
        super().start()
        self.wait_http(f"{self.uri}/health")
        return self


def _tmp(root: Path) -> Path:
    path = Path(root) / "tmp"
    path.mkdir(exist_ok=True)
    return path


def post_json(url: str, body: dict, timeout: float = 120) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read())
