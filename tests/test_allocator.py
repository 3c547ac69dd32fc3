"""harness.backend.keep_freed_memory: a large block freed stays in the heap for the next one (glibc only),
the user's own malloc settings stand, and benchmarks/allocator.py compares both settings."""

import os
import platform
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the setting applies only on Linux with glibc")

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


def probe(**env: str) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}
    done = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, cwd=REPO, capture_output=True,
                          text=True, check=True)
    applied, mapped = done.stdout.split()
    return applied == "True", int(mapped)


def test_a_large_block_comes_from_the_heap_not_a_mapping_of_its_own():
    applied, mapped = probe()
    assert applied and mapped == 0


@pytest.mark.parametrize("env", [{"GLIBC_TUNABLES": "glibc.malloc.mmap_max=65536"},
                                 {"MALLOC_ARENA_MAX": "2"}])
def test_the_users_own_malloc_settings_stand(env):
    applied, mapped = probe(**env)
    assert not applied and mapped >= 64 * 2**20


def test_the_benchmark_compares_both_settings(capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import allocator

    assert allocator.main(["--model", "cnn_tiny", "--batch", "4", "--steps", "1", "--warmup", "1",
                           "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("| kept", "| glibc default"))]
    assert len(rows) == 2
    assert all(float(cell.strip().rstrip("%").replace(",", "")) >= 0 for row in rows
               for cell in row.strip("|").split("|")[1:])
    assert "kept / default: training " in out
