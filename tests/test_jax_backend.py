"""`harness train` on the JAX backend where TensorFlow cannot be imported, in bf16, and data-parallel
over two (virtual) CPU devices with keras.distribution."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jax")

# No validation split, 129 training images in batches of 16: 8 full ones and one of 1, which two
# devices cannot share (EpochBatches drops it). One batch shape, so few compilations.
TINY = ["train", "smoke", "--set", "data.options.train=129", "--set", "data.options.test=20",
        "--set", "data.val_fraction=0",
        "--set", "train.epochs=1", "--set", "train.batch_size=16", "--set", "tracking.log_model=false"]

NO_TENSORFLOW = '''
import sys


class NoTensorFlow:
    """Makes `import tensorflow` (and its submodules) fail, as where it is not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError(f"No module named {name!r} (blocked by the test)")
        return None


sys.meta_path.insert(0, NoTensorFlow())
'''


def jax_harness(tmp_path, *args, devices=1):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(NO_TENSORFLOW)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "XLA_FLAGS"))}
    env.update(KERAS_BACKEND="jax", PYTHONPATH=os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")])))
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run([sys.executable, "-m", "harness", *TINY, *args], cwd=work, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("svhn-harness").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["harness.backend"] == "jax"
    return run, result


def test_the_blocker_blocks(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(NO_TENSORFLOW)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    probe = subprocess.run([sys.executable, "-c", "import tensorflow"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "blocked by the test" in probe.stderr


def test_seeding_on_jax_keeps_tensorflow_beside_it_quiet():
    """Where TensorFlow is installed, Keras seeds it on JAX too, importing it: harness.backend's
    set_random_seed (what training and sweeps call) keeps TensorFlow's start-up lines from the user."""
    pytest.importorskip("tensorflow")
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user's shell has it
    code = ("import sys; from harness.backend import set_random_seed; set_random_seed(3); "
            "assert 'tensorflow' in sys.modules; print('seeded')")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "seeded", result.stderr[-2000:]
    assert result.stderr == "", result.stderr[:2000]


def test_trains_on_jax_without_tensorflow_in_bf16_on_two_devices(tmp_path):
    # one run for three claims, as each JAX run spends most of its minute compiling
    run, result = jax_harness(tmp_path, "--set", "train.precision=bf16", devices=2)
    assert run.data.params["train.precision"] == "bf16"
    assert run.data.tags["harness.distribute"] == "keras.distribution.DataParallel over 2 cpu devices"
    assert "DataParallel over 2 cpu devices" in result.stderr
    assert 0.0 <= run.data.metrics["test/sequence_accuracy"] <= 1.0
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_one_jax_device_is_not_distributed(tmp_path):
    run, _ = jax_harness(tmp_path)
    assert "harness.distribute" not in run.data.tags


def test_the_layers_xla_formulations_equal_keras_own_layers(tmp_path):
    """On JAX the harness's layers take their XLA formulations (harness.models.layers._xla): the equivalence
    tests of tests/test_models.py, run again on that backend, TensorFlow blocked."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(NO_TENSORFLOW)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "XLA_FLAGS"))}
    env.update(KERAS_BACKEND="jax", PYTHONPATH=os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")])))
    tests = Path(__file__).resolve().parent / "test_models.py"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests), "-k",
         # (not goodfellow2014's full train step: 35 s of XLA compilation that the layers' own
         # equivalence and gradient tests already cover; its build, parameter count and round trip stay)
         "patch_conv2d or max_pooling_2x2 or maxout or subtractive or round_trip or "
         "(goodfellow2014 and not one_train_step)"],
        env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-500:]
