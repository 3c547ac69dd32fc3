"""Faults while training: a loss that turns NaN, infinite or absurd, a disk that fills up under a checkpoint, a damaged
checkpoint; each run ends FAILED with a clear reason, and the last good checkpoint is kept."""

from __future__ import annotations

import json
import re

import h5py
import numpy as np
import pytest

from .builders import (
    BOX,
    FILE_SIZE_LIMIT,
    SIZE,
    annotation,
    child,
    data_error,
    plain_png,
    svhn_root,
)

TRAIN = ["data.name=svhn", "data.val_fraction=0", *SIZE, "model.name=cnn_tiny", "train.epochs=2",
         "train.batch_size=8", "train.checkpoint_steps=1", "tracking.log_model=false",
         "tracking.experiment=faults"]


def tiny_spec(root, *overrides):
    from harness.spec import load_spec

    return load_spec(None, [*TRAIN, f"data.root={root}", *overrides])


def all_finite(weights_file) -> bool:
    found = []
    with h5py.File(weights_file, "r") as f:
        f.visititems(lambda _, obj: found.append(np.isfinite(obj[()]).all())
                     if isinstance(obj, h5py.Dataset) and obj.dtype.kind == "f" else None)
    return len(found) > 5 and all(found)


def test_a_non_finite_loss_stops_the_run_marks_it_failed_and_says_where(workdir, capsys):
    from harness.cli import main
    from harness.tracking import query

    # numbers of one to three different digits: no constant prediction can fit them all
    numbers = [str(100 + 37 * i)[: 1 + i % 3] for i in range(1, 25)]
    root = svhn_root(workdir, {f"{i}.png": plain_png((i, 7 * i % 256, 90)) for i in range(1, 25)},
                     [annotation(f"{i}.png", n, [BOX] * len(n)) for i, n in enumerate(numbers, 1)])
    # Adam with an absurd learning rate moves every weight by about 1e30 in the first step: the next loss
    # overflows float32 (NaN, inf) or, with every unit dead, is a finite 1e30 from the head biases alone
    spec = tiny_spec(root, "train.optimizer=adam", "train.schedule=constant", "train.learning_rate=1e30")
    (workdir / "nan.yaml").write_text(spec.to_yaml())
    capsys.readouterr()
    assert main(["train", "nan.yaml"]) == 2
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("harness: error: ")]
    assert "Traceback" not in err and re.search(r"training diverged: the loss is (nan|inf|[0-9.]+e\+[0-9]+) at epoch 1, step \d+;",
                                                line), err
    step = int(line.split("step ")[1].split(";")[0])

    (run_dir,) = [p for p in (workdir / "runs").iterdir() if len(p.name) == 32]
    run = query.get_run(run_dir.name)
    assert run.status == "FAILED" and f"epoch 1, step {step};" in run.tags["harness.error"]
    assert "loss" not in run.metrics  # no epoch finished: nothing NaN was logged as a result
    state = json.loads((run_dir / "state.json").read_text())
    assert (state["epoch"], state["step"]) == (0, step - 1)  # the checkpoint of the step before
    assert all_finite(run_dir / state["weights"])
    assert not list(run_dir.glob(".*"))  # no temporary file left


_CHECKPOINT_ON_A_FULL_DISK = FILE_SIZE_LIMIT + """
import hashlib, json
from pathlib import Path
from harness.errors import HarnessError
from harness.spec import load_spec
from harness.training.checkpoint import EpochCheckpoint
from harness.training.setup import build_for, compile_for

run = Path(sys.argv[1])
spec = load_spec(None, json.loads(sys.argv[2]))
model = build_for(spec)
compile_for(spec, model, steps_per_epoch=4)
model.optimizer.build(model.trainable_variables)
checkpoint = EpochCheckpoint(run, "sequence_accuracy")
checkpoint.set_model(model)
checkpoint._save(1, 0)
model.save_weights(str(run.parent / "expected.weights.h5"))
files = lambda: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.iterdir()}
before = files()
limit_file_size(max(p.stat().st_size for p in run.iterdir()) // 4)  # the weights no longer fit
try:
    checkpoint._save(2, 0)
    error, clear = None, False
except Exception as exc:
    error, clear = str(exc), isinstance(exc, HarnessError)
print(json.dumps({"before": before, "after": files(), "error": error, "clear": clear}))
"""


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path):
    from harness.training.checkpoint import EpochCheckpoint
    from harness.training.setup import build_for, compile_for

    run = tmp_path / "run"
    result = child(_CHECKPOINT_ON_A_FULL_DISK, str(run), json.dumps(TRAIN + [f"data.root={tmp_path}"]))
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["clear"] and found["error"].startswith(str(run / "state-2.weights.h5")), found["error"]
    assert "cannot write it: it needs about" in found["error"] and "file-size limit" in found["error"]
    assert found["after"] == found["before"]  # the same files, byte for byte: state.json still names them

    spec = tiny_spec(tmp_path)
    expected, restored = build_for(spec), build_for(spec)
    expected.load_weights(str(tmp_path / "expected.weights.h5"))
    compile_for(spec, restored, steps_per_epoch=4)
    assert EpochCheckpoint(run, "sequence_accuracy").restore(restored) == (1, 0)
    for a, b in zip(expected.weights, restored.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("damage, where", [
    (lambda run: (run / "state.json").write_text('{"epoch": 1, "st'), "state.json"),
    (lambda run: (run / "state-1.weights.h5").write_bytes((run / "state-1.weights.h5").read_bytes()[:5000]),
     "state-1.weights.h5"),
    (lambda run: (run / "state-1.npz").write_bytes(b"PK\x03\x04 not a zip"), "state-1.npz"),
], ids=["state.json cut short", "weights truncated", "npz garbage"])
def test_damaged_checkpoint_is_named_not_a_traceback(tmp_path, damage, where):
    from harness.training.checkpoint import EpochCheckpoint
    from harness.training.setup import build_for, compile_for

    spec = tiny_spec(tmp_path)
    model = build_for(spec)
    compile_for(spec, model, steps_per_epoch=4)
    model.optimizer.build(model.trainable_variables)
    checkpoint = EpochCheckpoint(tmp_path / "run", "sequence_accuracy")
    checkpoint.set_model(model)
    checkpoint._save(1, 2)
    damage(tmp_path / "run")
    data_error(lambda: EpochCheckpoint(tmp_path / "run", "sequence_accuracy").restore(model),
               tmp_path / "run" / where, "damaged training state", "built by other code", f"remove {tmp_path / 'run'}")
