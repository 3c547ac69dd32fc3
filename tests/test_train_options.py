"""Training options: mixed precision, the batches of a resumed epoch (EpochBatches), fine-tuning from
another model's weights (train.init_from), and their spec checks."""

import io
import json
import time

import numpy as np
import pytest
from conftest import REPO
from test_records import write_split

from harness.backend import load_keras
from harness.data.batches import SplitBatches
from harness.data.prepare import prepare_split
from harness.data.records import read_records
from harness.errors import HarnessError, SpecError
from harness.spec import load_spec
from harness.training import callbacks, core, setup
from harness.training.checkpoint import EpochCheckpoint, _seed_states

keras = load_keras()
N = 103  # the last batch is partial for every batch size below


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    """Image i is uniformly coloured (i % 256, i // 256, 7)."""
    folder = tmp_path_factory.mktemp("raw")
    write_split(folder, [str(i) for i in range(N)])
    return prepare_split(read_records(folder), folder / "split.h5", image_size=8, workers=1)


def ids(batches) -> np.ndarray:
    images = np.concatenate([batches[i][0] for i in range(len(batches))])
    centre = images[:, 4, 4]  # the corners of the long numbers' crops are black past the image
    return centre[:, 0].astype(int) + 256 * centre[:, 1].astype(int)


def tiny(*overrides):
    return load_spec(None, ["model.name=cnn_tiny", "train.batch_size=8", *overrides])


# ---------------------------------------------------------------------------- EpochBatches

def test_the_rest_of_an_epoch_is_the_tail_of_that_epoch(path):
    batches = SplitBatches(path, 10, shuffle=True, seed=3)
    batches.epoch = 2
    whole = ids(batches)
    rest = core.EpochBatches(batches, start=4)
    assert len(rest) == len(batches) - 4 and rest.num_examples == N - 40
    np.testing.assert_array_equal(ids(rest), whole[40:])
    rest.on_epoch_end()  # passes through: the next epoch has the next order
    assert batches.epoch == 3 and not np.array_equal(ids(batches), whole)
    with pytest.raises(ValueError, match="no batches from 11 on"):
        core.EpochBatches(batches, start=11)


@pytest.mark.parametrize("batch_size, multiple, kept", [(12, 4, 100), (12, 3, 102), (20, 4, 100), (8, 1, N)])
def test_batches_cut_to_a_multiple_of_the_devices(path, batch_size, multiple, kept):
    batches = core.EpochBatches(SplitBatches(path, batch_size, shuffle=True), multiple=multiple)
    sizes = [len(batches[i][0]) for i in range(len(batches))]
    assert all(size % multiple == 0 and size > 0 for size in sizes)
    assert sum(sizes) == batches.num_examples == kept
    assert len(set(ids(batches))) == kept  # nothing repeated


def test_epoch_progress_counts_the_images_of_each_epoch():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    stream = io.StringIO()  # not a terminal: a line at each epoch's start and end, and every 10 s at most between
    shown = callbacks.EpochProgress(N, 10, stream=stream)
    model.fit(np.zeros((N, 3)), np.zeros(N), batch_size=10, epochs=2, verbose=0, callbacks=[shown])
    lines = stream.getvalue().splitlines()
    assert [line.split(" [")[0] for line in lines] == [
        f"epoch 1/2: 0/{N}   0.0%", f"epoch 1/2: {N}/{N} 100.0%", "epoch 1/2: loss 0.0000",
        f"epoch 2/2: 0/{N}   0.0%", f"epoch 2/2: {N}/{N} 100.0%", "epoch 2/2: loss 0.0000"]


def test_epoch_progress_shows_the_runs_schedule_for_the_rest_of_a_resumed_epoch():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    stream = io.StringIO()  # a resumed run fits the rest of its epoch 2 alone: Keras' params say 2 epochs
    shown = callbacks.EpochProgress(N, 10, stream=stream, epochs=10)
    model.fit(np.zeros((N, 3)), np.zeros(N), batch_size=10, epochs=2, initial_epoch=1, verbose=0, callbacks=[shown])
    assert [line.split(":")[0] for line in stream.getvalue().splitlines()] == ["epoch 2/10"] * 3


def test_one_device_needs_no_distribution():
    where = setup.placement("auto", 30)
    if where.replicas > 1:
        pytest.skip("more than one accelerator here")
    assert where.multiple == 1 and where.description == "one device"
    assert setup.placement("off", 30).replicas == 1


# ---------------------------------------------------------------------------- EpochCheckpoint

def test_checkpoint_state_early_stopping_and_generations(tmp_path):
    spec = tiny()
    model = setup.build_for(spec)
    setup.compile_for(spec, model, steps_per_epoch=5)
    model.optimizer.build(model.trainable_variables)
    checkpoint = EpochCheckpoint(tmp_path, "val_sequence_accuracy", steps=2, patience=2,
                                 started=time.perf_counter() - 100)  # the attempt began 100 s ago
    checkpoint.set_model(model)
    checkpoint.set_params({"steps": 5})
    for epoch, score in enumerate([0.5, 0.4]):
        checkpoint.on_epoch_begin(epoch)
        for batch in range(5):
            checkpoint.on_train_batch_end(batch)
        checkpoint.on_epoch_end(epoch, {"val_sequence_accuracy": score})
    assert not model.stop_training and checkpoint.wait == 1
    checkpoint.on_epoch_begin(2)
    for batch in range(3):  # saved after steps 2 (and 4 would be next): the middle of epoch 3
        checkpoint.on_train_batch_end(batch)
    state = json.loads((tmp_path / "state.json").read_text())
    assert (state["epoch"], state["step"], state["best"], state["wait"]) == (2, 2, 0.5, 1)
    assert sorted(p.name for p in tmp_path.glob("state-*")) == [state["extra"], state["weights"]]
    seeds = [np.array(v) for v in _seed_states(model)]
    assert seeds, "the augmentation and dropout layers have seed generators"

    (tmp_path / "state-99.weights.h5").write_bytes(b"half written")  # a kill before state.json moved on
    fresh = setup.build_for(tiny("train.seed=3"))
    setup.compile_for(spec, fresh, steps_per_epoch=5)
    again = EpochCheckpoint(tmp_path, "val_sequence_accuracy", patience=2, started=time.perf_counter() - 5)
    assert again.restore(fresh) == (2, 2) and (again.best, again.wait) == (0.5, 1)
    # The resumed run's seconds: the first attempt's up to its last save, and this one's 5 s.
    assert state["seconds"] >= 100 and state["seconds"] + 5 <= again.spent() < state["seconds"] + 60
    assert not (tmp_path / "state-99.weights.h5").exists()
    for a, b in zip(model.weights + model.optimizer.variables, fresh.weights + fresh.optimizer.variables):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    for a, b in zip(seeds, _seed_states(fresh)):
        np.testing.assert_array_equal(a, np.array(b))

    checkpoint.on_epoch_end(2, {"val_sequence_accuracy": 0.3})  # a second epoch without progress
    assert model.stop_training and checkpoint.stopped
    assert EpochCheckpoint(tmp_path, "val_sequence_accuracy").restore(fresh) == (3, 0)
    assert json.loads((tmp_path / "state.json").read_text())["stopped"] is True


def test_an_epoch_mlflow_already_has_is_not_logged_again(tmp_path, monkeypatch):
    from harness.tracking import query, runs

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = tiny()
    model = setup.build_for(spec)
    setup.compile_for(spec, model, steps_per_epoch=5)
    with runs.run(spec) as run_id:
        logger = callbacks.EpochLogger(100, logged={1})  # epoch 1 logged before a kill
        logger.set_model(model)
        for epoch, loss in enumerate([5.0, 4.0]):
            logger.on_epoch_begin(epoch)
            logger.on_epoch_end(epoch, {"loss": loss})
        assert callbacks.logged_epochs(run_id) == {2}
        assert query.metric_history(run_id, "loss") == [(2, 4.0)]


# ---------------------------------------------------------------------------- mixed precision

@pytest.mark.parametrize("precision, compute, optimizer", [
    ("bf16", "bfloat16", "Adam"),
    ("fp16", "float16", "LossScaleOptimizer"),  # Keras wraps it for mixed_float16: loss scaling
])
def test_mixed_precision_trains_a_step(precision, compute, optimizer):
    spec = tiny(f"train.precision={precision}")
    keras.utils.set_random_seed(0)
    model = setup.build_for(spec)
    setup.compile_for(spec, model, steps_per_epoch=1)
    assert keras.config.dtype_policy().name == "float32"  # the policy applied to this model only
    assert compute in {layer.compute_dtype for layer in model._flatten_layers()}
    assert model.get_layer("heads").compute_dtype == "float32"  # logits, and so the loss, in float32
    assert {w.dtype for w in model.weights} == {"float32"}  # the weights themselves stay float32
    assert type(model.optimizer).__name__ == optimizer
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    targets = np.concatenate([np.full((8, 1), 2), rng.integers(0, 10, (8, 2)), np.full((8, 3), 10)], 1)
    before = [np.array(w) for w in model.trainable_weights]
    history = model.fit(images, targets.astype("int32"), batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert model(images[:2]).dtype == "float32"
    assert any(not np.array_equal(b, np.array(w)) for b, w in zip(before, model.trainable_weights))


def test_label_smoothing_reaches_the_compiled_loss():
    for smoothing in (0.0, 0.1):
        spec = tiny(f"train.label_smoothing={smoothing}")
        model = setup.build_for(spec)
        setup.compile_for(spec, model, steps_per_epoch=1)
        assert type(model.loss).__name__ == "SequenceLoss" and model.loss.label_smoothing == smoothing


def test_fp32_model_is_unchanged():
    model = setup.build_for(tiny())
    assert {layer.compute_dtype for layer in model._flatten_layers()} == {"float32"}


# ---------------------------------------------------------------------------- init_from

def test_init_from_a_keras_file_copies_every_weight(tmp_path):
    keras.utils.set_random_seed(7)
    donor = setup.build_for(tiny("train.seed=7"))
    donor.save(tmp_path / "donor.keras")
    spec = tiny(f"train.init_from={tmp_path / 'donor.keras'}", "train.precision=bf16")
    model = setup.build_for(spec)
    assert not all(np.array_equal(a, b) for a, b in zip(donor.get_weights(), model.get_weights()))
    setup.init_weights(model, spec.train.init_from)
    for a, b in zip(donor.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_init_from_another_variant_is_one_clear_error(tmp_path):
    setup.build_for(tiny()).save(tmp_path / "tiny.keras")
    model = setup.build_for(load_spec(None, ["model.name=cnn_small"]))
    with pytest.raises(HarnessError, match=r"train.init_from .*tiny.keras: weight '.*' .* the same variant"):
        setup.init_weights(model, str(tmp_path / "tiny.keras"))


def test_a_spatial_transformer_starts_from_the_plain_trunk_it_is_put_in_front_of(tmp_path):
    plain = setup.build_for(load_spec(REPO / "experiments/real2000_pretrain.yaml", ["train.seed=3"]))
    plain.save(tmp_path / "plain.keras")
    spec = load_spec(REPO / "experiments/real2000_pretrain.yaml", ["model.name=stn_report2016"])
    model = setup.build_for(spec)
    setup.init_weights(model, str(tmp_path / "plain.keras"))
    images = np.random.default_rng(8).integers(0, 256, (4, 74, 74, 3), dtype=np.uint8)
    np.testing.assert_allclose(model.predict(images, verbose=0), plain.predict(images, verbose=0), atol=1e-4)
    assert not np.allclose(model.get_layer("stn_report2016").get_layer("stn_conv1").kernel, 0)  # its own start


def test_init_from_in_the_spec_is_checked_early(tmp_path, monkeypatch):
    with pytest.raises(SpecError, match="'train.init_from' must be an MLflow run id"):
        tiny("train.init_from=latest")
    with pytest.raises(SpecError, match="no such model file"):
        tiny(f"train.init_from={tmp_path / 'gone.keras'}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(HarnessError, match="train.init_from: no MLflow run '0{32}'"):
        core.train(tiny("train.init_from=" + "0" * 32))


def test_fine_tuning_starts_from_the_run_s_weights(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    base = [f"data.root={tmp_path / 'data'}", "data.options.train=64", "data.options.test=16",
            "train.epochs=1", "tracking.log_model=false", "train.batch_size=16"]
    first = core.train(load_spec(REPO / "experiments" / "smoke.yaml", base), verbose=0)
    # a different seed (a different fresh start) and a learning rate too small to move the weights
    tuned = core.train(load_spec(REPO / "experiments" / "smoke.yaml", [
        *base, "train.seed=5", "train.learning_rate=1e-12", f"train.init_from={first.run_id}"]), verbose=0)
    donor = keras.saving.load_model(first.model_path, compile=False)
    model = keras.saving.load_model(tuned.model_path, compile=False)
    for a, b in zip(donor.trainable_weights, model.trainable_weights):
        np.testing.assert_allclose(np.array(b), np.array(a), atol=1e-6)


def test_a_run_with_ema_validates_and_keeps_the_average_of_its_weights(tmp_path, monkeypatch):
    import mlflow

    from harness.data import datasets

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = load_spec(REPO / "experiments" / "smoke.yaml", [
        f"data.root={tmp_path / 'data'}", "data.options.train=96", "data.options.test=16", "train.epochs=1",
        "tracking.log_model=false", "train.batch_size=16", "train.ema_momentum=0.9"])
    result = core.train(spec, verbose=0)
    kept = keras.saving.load_model(result.model_path, compile=False)

    data = datasets.prepare(spec.data)
    _, val = core.batches_for(spec, data)
    model = core.make_model(spec, data.train, 1, setup.placement("off", 16))
    assert model.optimizer.use_ema and model.optimizer.ema_momentum == 0.9
    EpochCheckpoint(tmp_path / "runs" / result.run_id, "val_sequence_accuracy").restore(model)  # epoch 1's state
    raw = [np.array(w) for w in model.trainable_weights]
    model.optimizer.finalize_variable_values(model.trainable_weights)
    for trained, average, final in zip(raw, model.trainable_weights, kept.trainable_weights):
        np.testing.assert_allclose(np.array(final), np.array(average), atol=1e-6)
    assert any(not np.allclose(t, np.array(f), atol=1e-4) for t, f in zip(raw, kept.trainable_weights))
    # The epoch's validation figures are the average's, not the last step's weights'.
    logged = mlflow.tracking.MlflowClient().get_run(result.run_id).data.metrics["val/loss"]
    assert model.evaluate(val, verbose=0, return_dict=True)["loss"] == pytest.approx(logged, rel=1e-4)


# ---------------------------------------------------------------------------- spec

@pytest.mark.parametrize("override, message", [
    ("train.precision=fp8", "'train.precision' must be one of fp32, bf16, fp16"),
    ("train.distribute=on", "'train.distribute' must be one of auto, off, got 'on'"),
    ("train.checkpoint_seconds=-1", "'train.checkpoint_seconds' must be 0 (off) or positive"),
    ("train.checkpoint_steps=-5", "'train.checkpoint_steps' must be 0 (off) or positive"),
    ("train.ema_momentum=1", "'train.ema_momentum' must be in .0, 1) (0 = off"),
])
def test_bad_training_options(override, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tiny(override)


def test_on_and_off_read_as_words():
    assert tiny("train.jit_compile=on").train.jit_compile == "on"
    assert tiny("train.distribute=off").train.distribute == "off"
