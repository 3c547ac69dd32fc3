"""harness.backend's process settings: glibc keeps a large freed block in the heap for the next one
(keep_freed_memory), TensorFlow runs its oneDNN kernels (fast_cpu_kernels), the user's own settings
stand, and benchmarks/cpu_settings.py compares them with each one off."""

import os
import subprocess
import sys

import pytest
from conftest import REPO

from harness.backend import on_glibc

glibc_only = pytest.mark.skipif(not on_glibc(), reason="the malloc setting applies only on Linux with glibc")

# Prints whether the setting was applied and the bytes glibc maps separately for a 64 MiB array (the
# growth of mallinfo2's hblkhd while it is alive): with the setting none, with glibc's default the array.
PROBE = """
import ctypes
import numpy as np
from harness.backend import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2
applied = keep_freed_memory()
before = mallinfo2().hblkhd
block = np.ones(64 * 2**20, dtype=np.uint8)
print(applied, mallinfo2().hblkhd - before)
"""


# Prints whether TensorFlow's oneDNN kernels are on once the harness has imported Keras.
ONEDNN = """
from harness.backend import load_keras
load_keras()
from tensorflow.python.util import _pywrap_util_port
print(_pywrap_util_port.IsMklEnabled())
"""


def run(script: str, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("GLIBC_TUNABLES", "TF_ENABLE_ONEDNN_OPTS") and not k.startswith("MALLOC_")}
    done = subprocess.run([sys.executable, "-c", script], env={**clean, **env}, cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


def probe(**env: str) -> tuple[bool, int]:
    applied, mapped = run(PROBE, **env)
    return applied == "True", int(mapped)


@glibc_only
def test_a_large_block_comes_from_the_heap_not_a_mapping_of_its_own():
    applied, mapped = probe()
    assert applied and mapped == 0


@glibc_only
@pytest.mark.parametrize("env", [{"GLIBC_TUNABLES": "glibc.malloc.mmap_max=65536"},
                                 {"MALLOC_ARENA_MAX": "2"}])
def test_the_users_own_malloc_settings_stand(env):
    applied, mapped = probe(**env)
    assert not applied and mapped >= 64 * 2**20


@pytest.mark.parametrize("env, on", [({}, "True"), ({"TF_ENABLE_ONEDNN_OPTS": "0"}, "False")])
def test_tensorflows_onednn_kernels_are_on_unless_the_user_says_otherwise(env, on):
    pytest.importorskip("tensorflow")
    assert run(ONEDNN, KERAS_BACKEND="tensorflow", **env) == [on]


def test_the_benchmark_compares_the_settings(capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import cpu_settings

    assert cpu_settings.main(["--model", "cnn_tiny", "--batch", "4", "--steps", "1", "--warmup", "1",
                             "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(tuple(f"| {s}" for s in cpu_settings.SETTINGS))]
    assert len(rows) == (4 if cpu_settings.GLIBC else 2)
    assert all(float(cell.strip().rstrip("%x").replace(",", "")) > 0 for row in rows
               for cell in row.strip("|").split("|")[1:3])
    assert rows[0].split("|")[3].strip() == "1.00x"  # the harness against itself
