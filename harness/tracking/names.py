"""Metric names in MLflow: grouped by prefix, so that the UI's chart view has one section per split
and the same quantity lines up across them.

Inside the harness a metric keeps the name Keras gives it (``loss``, ``val_sequence_accuracy``,
``test_length_accuracy``, ``best_val_sequence_accuracy``, ``wall_seconds``); tracking.log writes it
to MLflow as :func:`to_mlflow` says and tracking.query reads it back with :func:`from_mlflow`:

    loss, sequence_accuracy, images_per_sec, learning_rate   -> train/loss, train/sequence_accuracy, ...
    val_loss, val_sequence_accuracy                          -> val/loss, val/sequence_accuracy
    test_sequence_accuracy, test_resized_sequence_accuracy   -> test/sequence_accuracy, test_resized/...
    best_val_sequence_accuracy, best_epoch                   -> best/val_sequence_accuracy, best/epoch
    wall_seconds, target_reached_epoch                       -> run/wall_seconds, run/target_reached_epoch
    trials_finished, trials_failed (a sweep's parent)        -> sweep/trials_finished, sweep/trials_failed

MLflow's own ``system/...`` metrics, and any name with a ``/``, pass unchanged. A store written
before the prefixes holds the inside names themselves, which read back unchanged: old and new runs
are read alike (nothing is migrated).
"""

from __future__ import annotations

SPLITS = ("test_resized", "test", "val")  # longest first: test_resized_x is not test/resized_x
RUN = frozenset({"wall_seconds", "trial_seconds", "target_reached_epoch", "target_reached_seconds"})
SWEEP = frozenset({"trials_finished", "trials_failed"})


def to_mlflow(name: str) -> str:
    if "/" in name:
        return name
    for split in SPLITS:
        if name.startswith(f"{split}_"):
            return f"{split}/{name[len(split) + 1:]}"
    if name.startswith("best_"):
        return f"best/{name[len('best_'):]}"
    if name in RUN:
        return f"run/{name}"
    if name in SWEEP:
        return f"sweep/{name}"
    return f"train/{name}"


def from_mlflow(name: str) -> str:
    prefix, sep, rest = name.partition("/")
    if not sep or prefix == "system":
        return name
    if prefix in SPLITS or prefix == "best":
        return f"{prefix}_{rest}"
    if prefix in ("train", "run", "sweep"):
        return rest
    return name


def stored_names(name: str) -> tuple[str, ...]:
    """The names an inside metric may have in a store: the prefixed one, then (older stores) itself."""
    new = to_mlflow(name)
    return (new, name) if new != name else (name,)
