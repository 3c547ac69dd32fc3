import atexit
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

# Keep TensorFlow quiet and single-process-friendly in tests.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# What the harness caches per device (harness.models.layers.choices_file) goes to a folder of this session,
# for it and the processes it starts, not to the user's ~/.cache.
_CACHE = tempfile.mkdtemp(prefix="harness-test-cache-")
os.environ["XDG_CACHE_HOME"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

# Tests send Ctrl-C to the processes they start. Started as a background job of a script, this
# process (and so every child) would ignore SIGINT: restore Python's own handler, which children
# do not inherit (they start with the default action, and Python turns it into KeyboardInterrupt).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parents[1]


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` (pyproject.toml): a worker per core, at most 4 (each test trains models on every
    core it is given, and several start processes of their own)."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Genuine third-party data (SVHN sample, MNIST) beside the checkout; skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is not present")
    return SHARED_DATA
