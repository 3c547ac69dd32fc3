"""A spec's model made ready to train: device placement and data parallelism, mixed precision,
the optimizer and its schedule, XLA compilation, and fine-tuning from another model's weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Callable, Iterator

from harness import backend
from harness.backend import load_keras
from harness.errors import HarnessError
from harness.evaluation import loading
from harness.models import augment
from harness.models.architectures import build_model
from harness.models.heads import SequenceLoss, keras_metrics
from harness.tracking import query, store

keras = load_keras()


def build_for(spec, train_path: Path | None = None) -> keras.Model:
    """The spec's model, in its precision. ``train_path``: the prepared training split, whose colour statistics the
    PCA colour policies use (computed once, cached beside it); without it they use SVHN's."""
    stats = None
    if train_path is not None and augment.uses_colour_stats(spec.augment.policy):
        stats = augment.colour_pca(train_path)
    with _dtype_policy(spec.train.precision):
        return build_model(
            spec.model.name,
            image_size=spec.data.image_size,
            crop_size=spec.augment.crop_size,
            policy=spec.augment.policy,
            seed=spec.train.seed,
            options=spec.model.options,
            policy_options=spec.augment.options,
            colour_stats=stats,
        )


def compile_for(spec, model, steps_per_epoch: int) -> None:
    """Compile ``model`` with the spec's optimizer, schedule, loss, metrics and jit setting."""
    model.compile(
        optimizer=_optimizer(spec.train, steps_per_epoch),
        loss=SequenceLoss(spec.train.label_smoothing),
        metrics=keras_metrics(),
        jit_compile=_jit(spec.train.jit_compile),
    )


def _optimizer(train_spec, steps_per_epoch: int):
    lr = train_spec.learning_rate
    if train_spec.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(train_spec.epochs * steps_per_epoch, 1))
    decay = train_spec.weight_decay or None
    # The average of the weights, kept by the optimizer; training.core puts it in the model for validation and
    # at the end of training.
    ema = {"use_ema": True, "ema_momentum": train_spec.ema_momentum} if train_spec.ema_momentum else {}
    if train_spec.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=train_spec.momentum, nesterov=True, weight_decay=decay, **ema)
    return keras.optimizers.AdamW(lr, weight_decay=decay, **ema) if decay else keras.optimizers.Adam(lr, **ema)


def _jit(choice: str) -> bool:
    if choice != "auto":
        return choice == "on"
    if backend.backend_name() == "jax":
        return True  # without jit JAX runs op by op: measured 8x slower than jitted on a 2-core CPU
    # measured on a 2-core CPU with TensorFlow: XLA halves cnn_small's training throughput
    return not backend.device_name().startswith("CPU")


PRECISION_POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


@contextlib.contextmanager
def _dtype_policy(precision: str) -> Iterator[None]:
    """Layers built inside use the precision's Keras dtype policy: float32 variables, computations in
    bf16/fp16. Keras wraps the optimizer of a mixed_float16 model in a LossScaleOptimizer itself."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(PRECISION_POLICIES[precision])
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where training runs: ``scope()`` wraps building, compiling and fitting; ``multiple``: every
    batch's size must divide by it (JAX shards each batch evenly over its devices)."""

    scope: Callable[[], contextlib.AbstractContextManager]
    replicas: int = 1
    multiple: int = 1
    description: str = "one device"


def placement(choice: str, batch_size: int) -> Placement:
    """Data parallelism over all local accelerators when there are several (``choice`` "auto"), with
    the backend's own API: tf.distribute.MirroredStrategy on TensorFlow, keras.distribution.DataParallel
    on JAX. One device, "off", or the torch backend: a no-op. The global batch stays ``batch_size``."""
    name = backend.backend_name()
    if choice == "off" or name not in ("jax", "tensorflow"):
        return Placement(contextlib.nullcontext)
    if name == "jax":
        devices = keras.distribution.list_devices()
        if len(devices) < 2:
            return Placement(contextlib.nullcontext)
        if batch_size % len(devices):
            raise HarnessError(f"train.batch_size ({batch_size}) must be a multiple of the {len(devices)} devices "
                               "data parallelism splits each batch over (or set train.distribute=off)")
        distribution = keras.distribution.DataParallel(devices=devices)
        return Placement(distribution.scope, len(devices), len(devices),
                         f"keras.distribution.DataParallel over {len(devices)} {devices[0].split(':')[0]} devices")
    import tensorflow as tf

    if len(tf.config.list_logical_devices("GPU")) < 2:
        return Placement(contextlib.nullcontext)
    strategy = tf.distribute.MirroredStrategy()
    replicas = strategy.num_replicas_in_sync
    return Placement(strategy.scope, replicas, 1, f"tf.distribute.MirroredStrategy over {replicas} GPUs")


# Layers a variant puts in front of another's trunk that start as the identity (stn_report2016's spatial
# transformer): a donor without them (report2016) leaves them at their initial values, so the model starts
# by computing exactly what the donor did.
IDENTITY_AT_START = ("stn_",)


def init_weights(model, source: str) -> str | None:
    """Copy every weight of ``model`` from ``source`` (an MLflow run id, a .keras file or a registered
    model, models:/NAME@ALIAS), matched by path, for fine-tuning; the optimizer starts afresh. Every
    weight must be there with its shape, but those of layers that start as the identity
    (IDENTITY_AT_START) where the donor has none of them. Returns the run the weights were trained in
    (None for a file): an alias may move later, the run id stays."""
    loaded = loading.load(source)
    donor = loaded.model
    have = {v.path: v for v in donor.weights}
    plain_donor = not any(path.startswith(IDENTITY_AT_START) for path in have)
    for variable in model.weights:
        found = have.get(variable.path)
        if found is None and plain_donor and variable.path.startswith(IDENTITY_AT_START):
            continue
        if found is None or tuple(found.shape) != tuple(variable.shape):
            shape = "missing" if found is None else f"shape {tuple(found.shape)}"
            raise HarnessError(f"train.init_from {source}: weight '{variable.path}' {tuple(variable.shape)} is "
                               f"{shape} there; the model must be the same variant with the same options")
        variable.assign(keras.ops.convert_to_numpy(found))
    return loaded.run_id


def _check_init_from(source: str) -> None:
    """Fail before any work when the fine-tuning source is not there."""
    if source.startswith("models:/"):
        loading.load(source)  # an unknown registered model is an error naming it
    elif source and not loading.is_file(source) and not loading.local_file(source).exists():
        if query.run_status(source) is None:
            raise HarnessError(f"train.init_from: no MLflow run '{source}' in {store.display_uri()} "
                               "(nor runs/<id>/model.keras here)")
