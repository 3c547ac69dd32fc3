"""A chief and local worker processes for a distributed sweep on one machine (one GPU each where there are GPUs)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import typing
from pathlib import Path
from typing import Mapping

from harness.data import datasets
from harness.errors import HarnessError
from harness.progress import say
from harness.sweeps.spec import load_sweep

# ------------------------------------------------------------------------------ local workers

def launch(spec_path: str | Path, overrides: typing.Sequence[str], workers: int) -> int:
    """A chief and ``workers`` worker processes on this machine, on loopback (one GPU each when there
    are GPUs). They are this process's children: Ctrl-C reaches them all, and any of them failing
    stops the others. Running the same command again continues the sweep."""
    if workers < 1:
        raise HarnessError(f"--workers {workers}: need at least one worker")
    sweep = load_sweep(spec_path, overrides)
    datasets.prepare(sweep.spec.data)  # once here, rather than by several processes at the same time
    address = f"127.0.0.1:{_free_port()}"
    gpus = _gpus()
    base = [sys.executable, "-m", "harness", "sweep", str(Path(spec_path).resolve())]
    base += [a for item in overrides for a in ("--set", item)]
    procs = {"chief": subprocess.Popen(base + ["--role", "chief", "--oracle", address])}
    for i in range(workers):
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
            if workers > len(gpus):  # GPUs shared by several workers: grow memory, do not grab it all
                env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
        procs[f"tuner{i}"] = subprocess.Popen(
            base + ["--role", "worker", "--oracle", address, "--tuner-id", f"tuner{i}"], env=env)
    say(f"sweep {sweep.name}: chief on {address} and {workers} worker process(es)"
         + (f" on GPU(s) {', '.join(gpus)}" if gpus else ""))
    try:
        while True:
            failed = [(n, p.returncode) for n, p in procs.items() if p.poll() not in (None, 0)]
            if failed:
                _stop(procs, interrupt=True, grace=30)
                raise HarnessError(f"sweep process {failed[0][0]} exited with code {failed[0][1]}; run the "
                                   f"same command again to continue the sweep")
            if procs["chief"].poll() == 0:  # the workers leave on their own once no trial is left
                _stop(procs, interrupt=False, grace=60)
                return 0
            time.sleep(0.5)
    except KeyboardInterrupt:  # a terminal's Ctrl-C has reached the children too: let them wind down
        _stop(procs, interrupt=True, grace=30, settle=15)
        raise


def _stop(procs: Mapping[str, subprocess.Popen], *, interrupt: bool, grace: float, settle: float = 0.0) -> None:
    """Wait for the children: ``settle`` seconds for them to leave on their own, then (``interrupt``)
    a Ctrl-C of their own, so that they mark their runs KILLED and keep their checkpoints; whichever is
    still there ``grace`` seconds later is killed."""
    _wait(procs, settle)
    if interrupt:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
    _wait(procs, grace)
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait(procs: Mapping[str, subprocess.Popen], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    for proc in procs.values():
        try:
            proc.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gpus() -> list[str]:
    """GPU ids for the workers: CUDA_VISIBLE_DEVICES when set, else what nvidia-smi lists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]
