"""benchmarks/conv_parts.py: a small run on JAX prints positive figures for the layers asked for, and
another backend gets a clear refusal."""

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO

pytest.importorskip("jax")
SCRIPT = REPO / "benchmarks" / "conv_parts.py"


def run(backend: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": backend}
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600)


def test_a_small_run_prints_each_layer_asked_for():
    done = run("jax", "--batch", "2", "--steps", "1", "--layers", "conv7,conv8")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if re.match(r"\| conv\d", line)]
    assert [row.split("|")[1].strip() for row in rows] == ["conv7", "conv8"]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 11 and all(float(v.replace(",", "")) > 0 for v in cells[2:]), row
    assert "backend jax" in done.stdout and "batch 2" in done.stdout and "matmul peak" in done.stdout


def test_another_backend_or_an_unknown_layer_is_refused_clearly():
    done = run("tensorflow", "--layers", "conv8")
    assert done.returncode == 2 and "KERAS_BACKEND=jax" in done.stderr and "Traceback" not in done.stderr
    done = run("jax", "--layers", "conv9")
    assert done.returncode == 2 and "conv9" in done.stderr and "Traceback" not in done.stderr
