"""Import Keras (and so its backend) without the backend's start-up noise reaching the user.

TensorFlow writes CUDA/absl lines straight to file descriptor 2 while it loads, even with
TF_CPP_MIN_LOG_LEVEL set, so Python-level redirection cannot catch them: the descriptor itself is
pointed at a temporary file during the import and restored afterwards. If the import fails, what
was captured is shown, since then it is the explanation.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import sys
import tempfile
import warnings


@contextlib.contextmanager
def _stderr_captured():
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield sink
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def quiet_environment() -> None:
    """Environment settings that silence backend logging; must run before the backend is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*Protobuf gencode version.*")


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def on_glibc() -> bool:
    """Linux with glibc: where keep_freed_memory applies."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep the memory a training step frees for the next step's tensors.

    By default glibc maps every block above 32 MiB afresh and unmaps it when it is freed; a
    training step's larger activations and gradients (report2016's first block at batch 64: 36 MiB)
    are then page-faulted in, zeroed, and returned to the kernel at every step. On a 2-core CPU that
    was a quarter of the time, in the kernel (benchmarks/cpu_settings.py). With no separate mappings
    and no trimming, freed blocks stay in the heap and are reused; the process's resident size is
    its peak. Only where the C library is glibc, and not where the user set malloc's parameters
    (GLIBC_TUNABLES' glibc.malloc.*, MALLOC_*): theirs stand. True if it was applied.
    """
    if not on_glibc():
        return False
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "") or any(
            name.startswith("MALLOC_") for name in os.environ):
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def fast_cpu_kernels() -> None:
    """TensorFlow's oneDNN CPU kernels on every CPU; must run before TensorFlow is imported.

    TensorFlow turns them on by itself only on CPUs with AVX-512 VNNI or newer matrix extensions; on
    an AVX2 CPU its Eigen kernels ran report2016's training 1.2-1.3x slower (benchmarks/cpu_settings.py).
    oneDNN's results differ from Eigen's in rounding only. ``TF_ENABLE_ONEDNN_OPTS=0`` keeps Eigen's.
    """
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def load_keras():
    """Import and return ``keras`` quietly (no-op if it is already imported), with keep_freed_memory and
    fast_cpu_kernels."""
    if "keras" in sys.modules:
        return sys.modules["keras"]
    quiet_environment()
    keep_freed_memory()
    fast_cpu_kernels()
    with _stderr_captured():
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.get_logger().setLevel(logging.ERROR)
            tf.config.list_physical_devices()  # the second CUDA probe happens here; keep it inside
    return keras


class Deferred:
    """A module, or one of its attributes, imported on first use: a module that registers names (the
    model and policy registries) can then be imported, listed and checked without Keras."""

    def __init__(self, load):
        self._load = load

    def __getattr__(self, name: str):
        return getattr(self._load(), name)


def deferred_keras(attribute: str | None = None) -> Deferred:
    """``keras`` (or ``keras.<attribute>``), loaded quietly by load_keras on first use."""
    return Deferred(lambda: getattr(load_keras(), attribute) if attribute else load_keras())


def set_random_seed(seed: int) -> None:
    """keras.utils.set_random_seed (Python's, NumPy's and the backend's generators), quietly: on JAX
    and PyTorch Keras also seeds TensorFlow where it is installed, importing it, and TensorFlow's
    start-up lines would reach the user."""
    keras = load_keras()
    with _stderr_captured():
        keras.utils.set_random_seed(seed)


def backend_name() -> str:
    return load_keras().backend.backend()


def device_name() -> str:
    """A human-readable name of the accelerator in use, or the CPU."""
    keras = load_keras()
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
        elif backend == "jax":
            import jax

            dev = jax.devices()[0]
            if dev.platform != "cpu":
                return dev.device_kind
        elif backend == "torch":
            import torch

            if torch.cuda.is_available():
                return torch.cuda.get_device_name(0)
    except Exception:  # device details are informative only
        pass
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
