"""benchmarks/gpu_throughput.py --quick as a user runs it (a real process, on the CPU, one Keras backend),
its table's derived columns, and the stop at a target validation accuracy (train.target_accuracy) that
benchmarks/time_to_accuracy.py relies on."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from harness.backend import load_keras
from harness.errors import SpecError
from harness.spec import load_spec
from harness.training import core, setup
from harness.training.checkpoint import EpochCheckpoint

keras = load_keras()
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_throughput  # noqa: E402


def test_quick_run_on_the_cpu_prints_sane_figures(tmp_path):
    pytest.importorskip("tensorflow")
    out = tmp_path / "figures.json"
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "KERAS_BACKEND"))}
    env["TMPDIR"] = str(temp)
    command = [sys.executable, str(REPO / "benchmarks" / "gpu_throughput.py"), "--quick", "--backends", "tensorflow",
               "--models", "report2016", "--batches", "8", "--min-seconds", "0.1", "--json", str(out)]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert any(line.startswith("| tensorflow | CPU | `report2016` | fp32 | auto (off) | 8 |")
               for line in result.stdout.splitlines()), result.stdout
    assert "CPU FIGURES" in result.stdout
    (row,) = json.loads(out.read_text())["rows"]
    for key in ("images_per_sec", "step_seconds", "flops_per_sec", "matmul_peak_flops", "peak_memory_bytes",
                "read_images_per_sec", "pipeline_images_per_sec", "pipeline_over_train"):
        assert row[key] > 0, key
    assert row["images_per_sec"] == pytest.approx(8 / row["step_seconds"])
    assert row["memory_kind"] == "RSS" and row["jit"] is False  # TensorFlow on a CPU: the harness leaves XLA off
    assert 0 < row["data_wait"] < 1 and 0 < row["peak_fraction"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures.json", "tmp"]
    assert not any(temp.iterdir())  # its prepared files and results are gone


def _config(backend, jit, rate, device="NVIDIA H100 80GB HBM3", **extra):
    row = {"batch": 32, "images_per_sec": rate, "step_seconds": 32 / rate, "flops_per_sec": 3e9 * rate,
           "peak_memory_bytes": 2**30, "memory_kind": "device", "pipeline_images_per_sec": 1.5 * rate}
    return {"backend": backend, "model": "goodfellow2014", "precision": "bf16", "jit_setting": "on", "jit": jit,
            "device": device, "matmul_peak_flops": 1e15, "rows": [row], **extra}


def test_derived_columns_reference_ratio_and_notes():
    results = {"configs": [_config("jax", True, 3000.0, flops_per_image=1e9),
                           _config(gpu_throughput.REFERENCE, True, 2000.0)],
               "skipped": {"tensorflow": "tensorflow is not installed"}}
    rows = gpu_throughput.flat_rows(results)
    harness, reference = rows
    assert harness["over_reference"] == pytest.approx(1.5) and harness["reference_images_per_sec"] == 2000.0
    assert harness["peak_fraction"] == pytest.approx(3e9 * 3000 / 1e15)
    assert harness["data_wait"] == pytest.approx(1 / 2.5) and harness["pipeline_over_train"] == pytest.approx(1.5)
    assert reference["flops_per_sec"] == pytest.approx(3e9 * 2000)  # the harness model's FLOPs per image
    notes = gpu_throughput.notes(results, rows)
    assert "skipped tensorflow: tensorflow is not installed" in notes
    assert sum("pipeline below 2x" in n for n in notes) == 2
    assert "TFLOP/s" in gpu_throughput.table(rows).splitlines()[0]


def test_best_against_best_compares_across_settings():
    """The goal compares the harness at its best with the reference at its best, whatever each setting."""
    results = {"configs": [_config("jax", True, 2500.0), _config("tensorflow", False, 2600.0),
                           _config(gpu_throughput.REFERENCE, True, 2000.0),
                           _config(gpu_throughput.REFERENCE, False, 2700.0)], "skipped": {}}
    (line,) = gpu_throughput.best_against_reference(gpu_throughput.flat_rows(results))
    assert line == ("goodfellow2014 batch 32, best against best: harness 2,600.0 images/s (tensorflow bf16 jit off) "
                    f"/ reference 2,700.0 ({gpu_throughput.REFERENCE} bf16 jit off) = 0.96x")
    assert line in gpu_throughput.notes(results, gpu_throughput.flat_rows(results))


# ---------------------------------------------------------------------------- train.target_accuracy

@pytest.mark.parametrize("overrides, message", [
    (["train.target_accuracy=1.5"], "must be in"),
    (["train.target_accuracy=0.9", "data.val_fraction=0"], "validation split"),
])
def test_target_accuracy_is_checked(overrides, message):
    with pytest.raises(SpecError, match=message):
        load_spec(None, overrides)
    assert load_spec(None, ["train.target_accuracy=0.9"]).train.target_accuracy == 0.9


def test_training_stops_at_the_target_and_the_state_remembers(tmp_path):
    spec = load_spec(None, ["model.name=cnn_tiny", "train.batch_size=8"])
    model = setup.build_for(spec)
    setup.compile_for(spec, model, steps_per_epoch=2)
    model.optimizer.build(model.trainable_variables)
    checkpoint = EpochCheckpoint(tmp_path, "val_sequence_accuracy", target=0.3)
    checkpoint.set_model(model)
    checkpoint.set_params({"steps": 2})
    for epoch, score in enumerate([0.1, 0.3]):
        checkpoint.on_epoch_begin(epoch)
        assert not model.stop_training
        checkpoint.on_epoch_end(epoch, {"val_sequence_accuracy": score})
    assert model.stop_training and checkpoint.stopped and checkpoint.reached == 2
    assert json.loads((tmp_path / "state.json").read_text())["reached"] == 2
    again = EpochCheckpoint(tmp_path, "val_sequence_accuracy", target=0.3)
    assert again.restore(model) == (2, 0) and again.stopped and again.reached == 2 and again.reached_seconds is None


def test_reaching_the_target_is_logged(tmp_path, monkeypatch):
    from harness.tracking import query, runs

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    checkpoint = EpochCheckpoint(tmp_path, "val_sequence_accuracy", target=0.5)
    checkpoint.reached, checkpoint.reached_seconds = 3, 10.0
    with runs.run(load_spec(None, ["train.target_accuracy=0.5"])) as run_id:
        core._log_target(checkpoint)
    run = query.get_run(run_id)
    assert run.tags["harness.target_reached"] == "yes"
    assert run.metrics["target_reached_epoch"] == 3 and run.metrics["target_reached_seconds"] == 10.0


def test_a_tiny_run_stops_at_its_first_epoch_on_target(tmp_path, monkeypatch, shared_data):
    from harness.tracking import query

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    target = 1e-6  # one correct validation number reaches it
    spec = load_spec(REPO / "experiments" / "smoke.yaml", [
        "data.name=mnist_composite", f"data.options.source={shared_data / 'mnist'}", "data.options.train=200",
        "data.options.test=16", "data.val_fraction=0.5", "train.batch_size=16", "train.epochs=3",
        "train.learning_rate=0.01", f"train.target_accuracy={target}", "tracking.log_model=false"])
    result = core.train(spec, verbose=0)
    run = query.get_run(result.run_id)
    curve = [value for _, value in sorted(run.history["val_sequence_accuracy"])]
    first = next((epoch for epoch, value in enumerate(curve, 1) if value >= target), None)
    assert run.status == "FINISHED" and run.params["train.target_accuracy"] == str(target)
    if first is None:  # never reached: every epoch ran
        assert len(curve) == 3 and run.tags["harness.target_reached"] == "no"
        assert "target_reached_epoch" not in run.metrics
    else:  # stopped right after the epoch that reached it
        assert len(curve) == first and run.tags["harness.target_reached"] == "yes"
        assert run.metrics["target_reached_epoch"] == first
        assert 0 < run.metrics["target_reached_seconds"] <= result.wall_seconds
