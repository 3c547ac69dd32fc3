"""Hyperparameter sweeps: an experiment spec plus a ``sweep:`` section, tuned by KerasTuner, tracked in MLflow.

A sweep file is an experiment spec (``base:`` inheritance, sections data/model/augment/train/tracking)
with one more top-level section::

    sweep:
      tuner: random                 # random | bayesian | hyperband | grid: KerasTuner's own tuners
      objective: val_sequence_accuracy  # a validation metric; maximised (minimised for val_loss)
      max_trials: 6                 # raise it and rerun to extend a sweep (grid: all points by default)
      seed: 0
      space:                        # dotted spec keys (model.*, augment.*, train.*; never data.*)
        model.name: [cnn_tiny, cnn_small]          # a list is a choice (registry names are checked)
        augment.policy: [none, paper]
        train.learning_rate: {min: 3.0e-4, max: 3.0e-3, log: true}  # a range: int or float, as the key
        model.options.dropout: {min: 0.0, max: 0.5, step: 0.1}       # options of every model choice

Hyperband takes ``max_epochs`` (default: train.epochs) and ``factor`` (default 3) instead of
``max_trials``. Grid tries every point once (ranges need a ``step``). ``retries`` re-runs a trial that raised (default 0: it is marked failed).

The whole space is checked when the file is loaded: unknown keys, bad ranges, unknown registry names
and options a model choice does not take are errors naming the file and the key.

How a sweep runs
- KerasTuner drives it through :class:`SweepHyperModel`: ``build(hp)`` turns the trial's values into a
  trial spec and builds and compiles the model with the harness's own functions; ``fit`` trains it on
  the data prepared once for the whole sweep and returns the objective (the best epoch's value).
- MLflow: the sweep is one parent run (the base spec and the sweep section as params, the leaderboard
  as a table artifact ``leaderboard.json`` and the best trial as metrics and tags, refreshed after
  every trial); each trial is a nested run (tag ``mlflow.parentRunId``) with its resolved spec as
  params, per-epoch metrics, and its trial id and values as tags.
- Local state lives in ``runs/sweeps/<name>/``: ``sweep.json`` (the parent run and the sweep's key),
  KerasTuner's project folder ``tuner/`` (reloaded, never overwritten) and per-trial epoch
  checkpoints in ``trials/<id>/``. Running the same command again after Ctrl-C or kill -9 continues
  the same parent run: finished trials are not rerun, an interrupted one continues its own nested run
  from its last finished epoch.
- Distributed (KerasTuner's chief/worker protocol): the chief serves the oracle, workers run trials.
  The chief passes the parent run id to every worker inside the search space (a fixed
  hyperparameter), so all trials nest under the one parent whichever host runs them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import itertools
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
import typing
import warnings
from pathlib import Path
from typing import Any, Mapping

import yaml

from harness import RUNS, atomic
from harness.backend import load_keras, set_random_seed
from harness.data import datasets
from harness.errors import HarnessError, SpecError
from harness.spec import Spec, load_spec_with, with_values
from harness.tracking import log as tracking_log
from harness.tracking import query, store
from harness.tracking import runs as tracking_runs
from harness.training import callbacks as training_callbacks

keras = load_keras()

SWEEPS = RUNS / "sweeps"
TUNERS = ("random", "bayesian", "hyperband", "grid")
OBJECTIVES = tuple(f"val_{m}" for m in ("sequence_accuracy", "length_accuracy", "loss",
                                         *(f"digit{p}_accuracy" for p in range(1, 6))))
PARENT = "harness/parent_run_id"  # fixed hyperparameters: how the chief tells workers the parent run,
KEY = "harness/sweep_key"  # and which sweep it is (a worker started from another spec must not join)
_REGISTRY_KEYS = {"model.name": "model", "augment.policy": "augment"}


# ------------------------------------------------------------------------------------ the spec

@dataclasses.dataclass(frozen=True)
class Param:
    """One dimension of the search space: a choice, or an int/float range (``log``: log-uniform)."""

    key: str
    kind: str  # choice | int | float
    values: tuple = ()
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None

    def declare(self, hp) -> Any:
        """Register this dimension with KerasTuner's ``hp`` (idempotent); returns the trial's value."""
        if self.kind == "choice":
            return hp.Choice(self.key, list(self.values))
        sampling = "log" if self.log else "linear"
        if self.kind == "int":
            return hp.Int(self.key, self.low, self.high, step=self.step, sampling=sampling)
        return hp.Float(self.key, self.low, self.high, step=self.step, sampling=sampling)

    def points(self) -> int:
        """How many values a grid takes along this dimension."""
        if self.kind == "choice":
            return len(self.values)
        if self.log:  # KerasTuner's log grid multiplies by step
            return int(math.log(self.high / self.low, self.step) + 1e-9) + 1
        return int((self.high - self.low) / (self.step or 1) + 1e-9) + 1

    def corners(self) -> tuple:
        return self.values if self.kind == "choice" else (self.low, self.high)

    def to_plain(self) -> Any:
        if self.kind == "choice":
            return list(self.values)
        out = {"min": self.low, "max": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


@dataclasses.dataclass(frozen=True)
class SweepSection:
    tuner: str = "random"  # random | bayesian | hyperband | grid
    objective: str = "val_sequence_accuracy"  # a validation metric (OBJECTIVES)
    direction: str = "max"  # max | min; default: min for val_loss, else max
    max_trials: int = 10  # random and bayesian; grid: the number of points by default
    seed: int = 0
    max_epochs: int = 0  # hyperband: the most epochs one model trains; 0 = train.epochs
    factor: int = 3  # hyperband: reduction factor between rounds
    retries: int = 0  # extra runs of a trial that raised, before it is marked failed
    space: tuple[Param, ...] = ()


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    spec: Spec  # the base spec every trial starts from
    sweep: SweepSection
    source: str  # the file it was loaded from

    @property
    def name(self) -> str:
        return self.spec.name

    def to_dict(self) -> dict[str, Any]:
        section = {f.name: getattr(self.sweep, f.name) for f in dataclasses.fields(SweepSection)}
        section["space"] = {p.key: p.to_plain() for p in self.sweep.space}
        return {**self.spec.to_dict(), "sweep": section}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def params(self) -> dict[str, str]:
        """The sweep section, flattened for MLflow params (``sweep.space.<key>``: its range)."""
        out = {f"sweep.{k}": v for k, v in self.to_dict()["sweep"].items() if k != "space"}
        out.update({f"sweep.space.{p.key}": json.dumps(p.to_plain()) for p in self.sweep.space})
        return out

    def key(self) -> str:
        """Identifies the sweep across restarts; max_trials and the description may change (extend a
        sweep by raising max_trials), anything else makes it a different sweep."""
        plain = self.to_dict()
        plain.pop("description", None)
        plain["sweep"].pop("max_trials")
        return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def state_dir(self) -> Path:
        return SWEEPS / self.name


def load_sweep(path: str | Path, overrides: typing.Sequence[str] = ()) -> SweepSpec:
    """Load a sweep file: its spec (with its ``base`` chain) and its ``sweep`` section, checked in full.

    Overrides ``sweep.<key>=value`` set the sweep section (``sweep.max_trials=2``,
    ``sweep.space.model.name=[cnn_tiny]``); the others go to the spec as in ``harness train``.
    """
    source = str(path)
    mine = [o for o in overrides if o.strip().startswith("sweep.")]
    spec, raw = load_spec_with(path, [o for o in overrides if o not in mine], section="sweep")
    if raw is None:
        raise SpecError(f"{source}: no 'sweep' section (`harness train {source}` runs a plain spec)")
    if not isinstance(raw, Mapping):
        raise SpecError(f"{source}: 'sweep' must be a mapping, got {raw!r}")
    raw = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in raw.items()}
    for item in mine:
        _override(raw, item)
    section = _section(raw, spec, source)
    _check_corners(spec, section.space, source)
    return SweepSpec(spec=spec, sweep=section, source=source)


def _override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.strip().partition("=")
    if not sep:
        raise SpecError(f"--set {item}: expected KEY=VALUE, e.g. sweep.max_trials=2")
    from harness.spec import _yaml  # the spec's own YAML reading (1e-4 is a float)

    value = _yaml(text) if text.strip() else ""
    field = key[len("sweep."):]
    if field.startswith("space."):
        space = raw.get("space")
        raw["space"] = space = dict(space) if isinstance(space, Mapping) else {}
        space[field[len("space."):]] = value
    else:
        raw[field] = value


_FIELD_TYPES = {"tuner": str, "objective": str, "direction": str, "max_trials": int, "seed": int,
                "max_epochs": int, "factor": int, "retries": int}


def _section(raw: Mapping[str, Any], spec: Spec, source: str) -> SweepSection:
    allowed = [f.name for f in dataclasses.fields(SweepSection)]
    for key in raw:
        if key not in allowed:
            raise SpecError(f"{source}: unknown key 'sweep.{key}' (allowed here: {', '.join(allowed)})")
    values: dict[str, Any] = {}
    for key, ftype in _FIELD_TYPES.items():
        if key not in raw:
            continue
        value = raw[key]
        if not isinstance(value, ftype) or isinstance(value, bool):
            raise SpecError(f"{source}: 'sweep.{key}' must be {ftype.__name__}, got {value!r}")
        values[key] = value
    tuner = values.get("tuner", "random")
    if tuner not in TUNERS:
        raise SpecError(f"{source}: 'sweep.tuner' must be one of {', '.join(TUNERS)}, got {tuner!r}")
    objective = values.get("objective", "val_sequence_accuracy")
    if objective not in OBJECTIVES:
        raise SpecError(f"{source}: 'sweep.objective' must be a validation metric, one of "
                        f"{', '.join(OBJECTIVES)}; got {objective!r}")
    if spec.data.val_fraction == 0:
        raise SpecError(f"{source}: 'sweep.objective' {objective} needs a validation split, but "
                        f"'data.val_fraction' is 0")
    values.setdefault("direction", "min" if objective.endswith("loss") else "max")
    if values["direction"] not in ("max", "min"):
        raise SpecError(f"{source}: 'sweep.direction' must be max or min, got {values['direction']!r}")
    hyperband_only, others_only = ("max_epochs", "factor"), ("max_trials",)
    for key in others_only if tuner == "hyperband" else hyperband_only:
        if key in raw:
            raise SpecError(f"{source}: 'sweep.{key}' does not apply to the {tuner} tuner "
                            + ("(hyperband's brackets follow from max_epochs and factor)" if tuner == "hyperband"
                               else "(it is a hyperband setting)"))
    for key, low in (("max_trials", 1), ("max_epochs", 0), ("factor", 2), ("retries", 0), ("seed", 0)):
        if key in values and values[key] < low:
            raise SpecError(f"{source}: 'sweep.{key}' must be at least {low}, got {values[key]}")
    values["space"] = _space(raw.get("space"), spec, source)
    if tuner == "hyperband" and "train.epochs" in {p.key for p in values["space"]}:
        raise SpecError(f"{source}: 'sweep.space.train.epochs' cannot be swept by hyperband (it sets the "
                        f"epochs of each trial itself, up to sweep.max_epochs)")
    if tuner == "grid":
        for param in values["space"]:
            if param.kind != "choice" and param.step is None and (param.kind == "float" or param.log):
                raise SpecError(f"{source}: 'sweep.space.{param.key}': a grid needs a step for this range")
        values.setdefault("max_trials", math.prod(p.points() for p in values["space"]))
    return SweepSection(**values)


def _space(raw: Any, spec: Spec, source: str) -> tuple[Param, ...]:
    if not isinstance(raw, Mapping) or not any(v is not None for v in raw.values()):
        raise SpecError(f"{source}: 'sweep.space' must map spec keys to choices (a list) or ranges "
                        f"({{min, max}}), e.g. train.learning_rate: {{min: 1.0e-4, max: 1.0e-2, log: true}}")
    names = {"model": [spec.model.name], "augment": [spec.augment.policy]}
    for key, section in _REGISTRY_KEYS.items():
        if isinstance(raw.get(key), list):
            names[section] = raw[key]
    params = []
    for key, value in raw.items():
        if value is None:  # a file can drop a dimension its base declared
            continue
        where = f"{source}: 'sweep.space.{key}'"
        params.append(_param(str(key), value, _key_type(str(key), names, where), where))
    return tuple(params)


def _key_type(key: str, names: Mapping[str, list], where: str) -> type | None:
    """The type a swept key takes: the spec field's, or the registry option's default's."""
    from harness.models import architectures as models
    from harness.models import augment

    parts = key.split(".")
    if parts[0] == "data":
        raise SpecError(f"{where}: data settings cannot be swept (the data is prepared once per sweep); "
                        f"run one sweep per data setting")
    sections = {"model": models.MODELS, "augment": augment.POLICIES, "train": None}
    if parts[0] not in sections:
        raise SpecError(f"{where}: not a hyperparameter (a sweep varies model.*, augment.* or train.* keys)")
    fields = typing.get_type_hints(typing.get_type_hints(Spec)[parts[0]])
    if len(parts) == 2 and parts[1] in fields and parts[1] != "options":
        return fields[parts[1]]
    registry = sections[parts[0]]
    if len(parts) == 3 and parts[1] == "options" and registry is not None:
        types = set()
        for name in names[parts[0]]:
            if not isinstance(name, str) or name not in registry:
                continue  # an unknown name is reported by the corner checks, with close matches
            options = registry.options(name)
            if parts[2] not in options:
                raise SpecError(f"{where}: {registry.kind} '{name}' has no option '{parts[2]}' "
                                f"(its options: {', '.join(sorted(options)) or 'none'})")
            if options[parts[2]] is not None:
                types.add(type(options[parts[2]]))
        if len(types) > 1:
            raise SpecError(f"{where}: the {registry.kind} choices disagree on this option's type")
        return types.pop() if types else None
    allowed = [f"{parts[0]}.{f}" for f in fields if f != "options"]
    if registry is not None:
        allowed.append(f"{parts[0]}.options.<option>")
    raise SpecError(f"{where}: unknown key (allowed: {', '.join(allowed)})")


def _typed(value: Any, ftype: type | None, where: str) -> Any:
    if ftype is None:
        if not isinstance(value, (bool, int, float, str)):
            raise SpecError(f"{where}: values must be numbers, strings or booleans, got {value!r}")
        return value
    ok = isinstance(value, ftype) and (ftype is bool or not isinstance(value, bool))
    if ftype is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise SpecError(f"{where}: values must be {ftype.__name__}, got {value!r}")
    return value


def _param(key: str, value: Any, ftype: type | None, where: str) -> Param:
    if isinstance(value, list):
        if not value:
            raise SpecError(f"{where}: an empty choice")
        values = tuple(_typed(v, ftype, where) for v in value)
        if len(set(values)) != len(values):
            raise SpecError(f"{where}: a choice lists a value twice: {list(values)}")
        if len({type(v) for v in values}) > 1:
            raise SpecError(f"{where}: the values of a choice must share one type, got {list(values)}")
        return Param(key, "choice", values=values)
    if not isinstance(value, Mapping):
        raise SpecError(f"{where}: must be a list of choices or a {{min, max}} range, got {value!r} "
                        f"(a fixed value belongs in the spec's own sections)")
    unknown = sorted(set(value) - {"min", "max", "log", "step"})
    if unknown:
        raise SpecError(f"{where}: unknown range key '{unknown[0]}' (allowed: min, max, log, step)")
    if "min" not in value or "max" not in value:
        raise SpecError(f"{where}: a range needs both min and max")
    if ftype is None:
        ftype = float if any(isinstance(value[k], float) for k in ("min", "max")) else int
    if ftype not in (int, float):
        raise SpecError(f"{where}: a range needs a numeric key ({ftype.__name__} here): give a list of choices")
    low, high = _typed(value["min"], ftype, where), _typed(value["max"], ftype, where)
    if not low < high:
        raise SpecError(f"{where}: min ({low}) must be below max ({high})")
    log = value.get("log", False)
    if not isinstance(log, bool):
        raise SpecError(f"{where}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise SpecError(f"{where}: a log range needs min > 0, got {low}")
    step = value.get("step")
    if step is not None:
        step = _typed(step, ftype, where)
        if step <= 0 or step > high - low:
            raise SpecError(f"{where}: step must be positive and at most max - min, got {step}")
    return Param(key, ftype.__name__, low=low, high=high, log=log, step=step)


def _check_corners(spec: Spec, space: tuple[Param, ...], source: str) -> None:
    """Every registry-name combination, with each other dimension at each of its choices or ends,
    must make a valid spec (registry names, their options, value constraints such as crop <= image)."""
    names = [p for p in space if p.key in _REGISTRY_KEYS]
    others = [p for p in space if p.key not in _REGISTRY_KEYS]
    for combo in itertools.product(*[[(p.key, v) for v in p.values] for p in names]):
        probes = [{}] + [{p.key: v} for p in others for v in p.corners()]
        for probe in probes:
            values = {**dict(combo), **probe}
            what = ", ".join(f"{k}={v!r}" for k, v in values.items())
            with_values(spec, values, source=f"{source}: sweep.space ({what})")


# ------------------------------------------------------------------------------ the hypermodel

def _kt():
    import keras_tuner  # after Keras: its import would otherwise bring the backend's start-up noise
    from keras_tuner.src import config

    # KerasTuner 1.4.8 prints the traceback of every failed trial (DEBUG is on by default); the
    # harness prints one line instead, and the trial's run keeps the traceback (error.txt).
    config.DEBUG = False
    return keras_tuner


class SweepHyperModel(_kt().HyperModel):
    """Trial values -> trial spec -> the harness's model, trained on the sweep's prepared data."""

    def __init__(self, sweep: SweepSpec, data: datasets.PreparedData, *, parent_run_id: str = "",
                 tuner_id: str = "tuner0", command: str | None = None, prefix: str = ""):
        super().__init__(name=sweep.name)
        from harness.data.batches import SplitBatches

        self.sweep, self.data = sweep, data
        self.parent_run_id = parent_run_id  # "" on workers: the chief's value comes with each trial
        self.tuner_id, self.command, self.prefix = tuner_id, command, prefix
        self.train_count = SplitBatches(data.train, 1, shuffle=False).num_examples

    def declare_hyperparameters(self, hp) -> None:
        hp.Fixed(PARENT, self.parent_run_id)
        hp.Fixed(KEY, self.sweep.key())
        for param in self.sweep.sweep.space:
            param.declare(hp)

    def trial_spec(self, hp, trial_id: str | None = None) -> Spec:
        values: dict[str, Any] = {p.key: p.declare(hp) for p in self.sweep.sweep.space}
        if "tuner/epochs" in hp.values:  # hyperband sets each trial's epochs
            values["train.epochs"] = hp.values["tuner/epochs"]
        if trial_id is not None:
            values["name"] = f"{self.sweep.name}-trial{trial_id}"
        return with_values(self.sweep.spec, values, source=f"{self.sweep.source}: trial {trial_id or ''}".rstrip())

    def build(self, hp):
        from harness.training.core import build_for, compile_for

        spec = self.trial_spec(hp)
        set_random_seed(spec.train.seed)  # every trial starts from the same initialisation
        model = build_for(spec, self.data.train)
        compile_for(spec, model, math.ceil(self.train_count / spec.train.batch_size))
        return model

    def fit(self, hp, model, *args, callbacks=(), epochs=None, initial_epoch=0, **kwargs):
        trial = _trial_of(callbacks)
        if hp.values.get(KEY, self.sweep.key()) != self.sweep.key():
            raise SweepMismatch(f"{self.sweep.source}: this spec differs from the one the sweep's chief runs "
                                f"(sweep key {self.sweep.key()}, the chief's {hp.values[KEY]}); start every "
                                f"worker from the same file and --set options as the chief")
        spec = self.trial_spec(hp, trial.trial_id)
        parent = hp.values.get(PARENT) or self.parent_run_id
        if not parent:
            raise HarnessError("the sweep's chief sent no parent run id; is it a harness sweep chief?")
        objective = self.sweep.sweep.objective
        previous = _trial_run(parent, trial.trial_id)
        if previous is not None and previous.status == "FINISHED":
            # finished in MLflow but not yet in the oracle (killed in between): report it, never rerun
            score = previous.metrics.get(f"best_{objective}")
            if score is not None:
                return {objective: score}
        try:
            return self._train(hp, model, spec, trial, parent, previous, callbacks, epochs, initial_epoch)
        except Exception as exc:
            _say(f"{self.prefix}trial {trial.trial_id} failed: {exc}")
            raise

    def _train(self, hp, model, spec, trial, parent, previous, callbacks, epochs, initial_epoch):
        from harness.data.batches import SplitBatches
        from harness.training.core import (
            EpochCheckpoint,
            StopOnDivergence,
            StopOnInterrupt,
        )

        started = time.perf_counter()
        objective, direction = self.sweep.sweep.objective, self.sweep.sweep.direction
        trial_dir = self.sweep.state_dir / "trials" / trial.trial_id
        if previous is None:  # any local state is from an earlier, abandoned sweep of this name
            shutil.rmtree(trial_dir, ignore_errors=True)
        values = {k: v for k, v in hp.values.items() if k not in (PARENT, KEY)}
        tags = {"harness.kind": "trial", "harness.sweep": self.sweep.name, "harness.trial_id": trial.trial_id,
                "harness.tuner_id": self.tuner_id, "harness.host": socket.gethostname(),
                "harness.trial_hp": json.dumps(values, sort_keys=True)}
        cache = spec.data.cache
        train_batches = SplitBatches(self.data.train, spec.train.batch_size, shuffle=True, seed=spec.train.seed,
                                     cache=cache)
        val_batches = SplitBatches(self.data.val, spec.train.batch_size, shuffle=False, cache=cache)
        with tracking_runs.run(spec, run_id=previous.run_id if previous else None, command=self.command,
                          parent_run_id=parent, tags=tags) as run_id:
            if previous is None:
                tracking_log.log_params({"model.parameters": model.count_params()})
            else:
                tracking_log.set_tags({"harness.tuner_id": self.tuner_id, "harness.host": socket.gethostname()})
            # Epoch-end checkpoints (a trial is short; resuming mid-epoch is for long `harness train`
            # runs). The checkpoint keeps the best weights by a score to maximise: for a loss, accuracy.
            checkpoint = EpochCheckpoint(trial_dir, objective if direction == "max" else "val_sequence_accuracy",
                                         patience=spec.train.early_stopping_patience)
            position = checkpoint.restore(model)
            start = max(initial_epoch, position[0] if position else 0)
            if not checkpoint.stopped and start < (epochs or spec.train.epochs):
                train_batches.epoch = start  # the data order continues where it stopped
                try:
                    model.fit(train_batches, validation_data=val_batches, epochs=epochs or spec.train.epochs,
                              initial_epoch=start, verbose=0, shuffle=False,  # the order is SplitBatches'
                              callbacks=[StopOnInterrupt(), StopOnDivergence(),  # a diverged trial fails, unlogged
                                         training_callbacks.EpochLogger(train_batches.num_examples), checkpoint, *callbacks])
                except Exception:
                    tracking_log.log_text(traceback.format_exc(), "error.txt")
                    raise
            score, step = _best(query.get_run(run_id).history.get(objective, []), direction)
            if score is None:
                raise HarnessError(f"trial {trial.trial_id} logged no {objective}")
            seconds = time.perf_counter() - started
            tracking_log.log_metrics({f"best_{objective}": score, "best_epoch": step, "trial_seconds": seconds})
        shutil.rmtree(trial_dir, ignore_errors=True)  # only needed to resume this trial; MLflow has the rest
        board = publish(self.sweep, parent)
        best = board[0] if board and board[0]["status"] == "FINISHED" else None
        shown = " ".join(f"{k}={_short(v)}" for k, v in values.items() if not k.startswith("tuner/"))
        _say(f"{self.prefix}trial {trial.trial_id}{self._of()}: {objective} {score:.4f} in {seconds:.0f} s"
             + (f" (best so far {best[objective]:.4f}, trial {best['trial']})" if best else "")
             + f" | {shown}")
        return {objective: score}

    def _of(self) -> str:
        return f" of {self.sweep.sweep.max_trials}" if self.sweep.sweep.tuner != "hyperband" else ""


class SweepMismatch(HarnessError, _kt().errors.FatalError):
    """A worker's sweep is not its chief's: fatal to the search (not one failed trial)."""


def _trial_of(callbacks):
    """KerasTuner hands HyperModel.fit its TunerCallback(tuner, trial): that is where the trial id is."""
    for callback in callbacks:
        trial = getattr(callback, "trial", None)
        if trial is not None and hasattr(trial, "trial_id"):
            return trial
    raise HarnessError("HyperModel.fit was called without KerasTuner's trial callback")


def _trial_run(parent: str, trial_id: str):
    """The newest nested run of ``parent`` for ``trial_id``, or None."""
    runs = [r for r in query.child_runs(parent) if r.tags.get("harness.trial_id") == trial_id]
    return max(runs, key=lambda r: r.start_time) if runs else None


def _best(history, direction: str) -> tuple[float | None, int]:
    by_step = dict(history)  # a repeated step (an epoch redone after a kill): its latest value
    if not by_step:
        return None, 0
    pick = max if direction == "max" else min
    step = pick(by_step, key=lambda s: (by_step[s], -s) if direction == "max" else (by_step[s], s))
    return by_step[step], step


# ------------------------------------------------------------------------------ the leaderboard

def leaderboard(sweep: SweepSpec, parent: str) -> list[dict[str, Any]]:
    """One row per trial from what MLflow holds: finished trials best first, then the others."""
    objective = sweep.sweep.objective
    latest: dict[str, Any] = {}
    for run in query.child_runs(parent):
        trial_id = run.tags.get("harness.trial_id")
        if trial_id is not None and (trial_id not in latest or run.start_time > latest[trial_id].start_time):
            latest[trial_id] = run
    rows = []
    for trial_id, run in latest.items():
        values = json.loads(run.tags.get("harness.trial_hp", "{}"))
        score = run.metrics.get(f"best_{objective}") if run.status == "FINISHED" else None
        rows.append({"rank": None, "trial": trial_id, "status": run.status, objective: score,
                     **{p.key: values.get(p.key) for p in sweep.sweep.space},
                     "epochs": run.params.get("train.epochs"), "seconds": run.metrics.get("trial_seconds"),
                     "run_id": run.run_id})
    sign = -1 if sweep.sweep.direction == "max" else 1
    rows.sort(key=lambda r: (r[objective] is None, sign * (r[objective] or 0), r["trial"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank if row[objective] is not None else None
    return rows


def publish(sweep: SweepSpec, parent: str, *, final: bool = False) -> list[dict[str, Any]]:
    """Refresh the parent run's leaderboard table, best-trial metrics and tags; returns the rows."""
    rows = leaderboard(sweep, parent)
    objective = sweep.sweep.objective
    done = [r for r in rows if r[objective] is not None]
    failed = [r for r in rows if r["status"] == "FAILED"]
    tracking_log.log_table(parent, rows, "leaderboard.json")
    metrics = {"trials_finished": len(done), "trials_failed": len(failed)}
    tags = {}
    if done:
        best = done[0]
        metrics[f"best_{objective}"] = best[objective]
        tags = {"harness.best_trial_id": best["trial"], "harness.best_run_id": best["run_id"]}
        if final or best["status"] == "FINISHED":
            spec_yaml = query.read_artifact(best["run_id"], "spec.yaml")
            if spec_yaml is not None:
                tracking_log.log_text(spec_yaml.decode(), "best_spec.yaml", run_id=parent)
                if final:
                    atomic.write_text(sweep.state_dir / "best.yaml", spec_yaml.decode())
    tracking_log.log_to(parent, metrics=metrics, step=len(done), tags=tags)
    if final:
        atomic.write_text(sweep.state_dir / "leaderboard.json", json.dumps(rows, indent=2))
    return rows


def format_leaderboard(sweep: SweepSpec, rows: list[dict[str, Any]]) -> str:
    objective = sweep.sweep.objective
    columns = ["rank", "trial", objective, *[p.key for p in sweep.sweep.space], "epochs", "seconds", "status"]
    cells = [[_short(row.get(c)) if c != objective or row.get(c) is None else f"{row[c]:.4f}" for c in columns]
             for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def _short(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


# ------------------------------------------------------------------------------ running a sweep

def run_sweep(sweep: SweepSpec, *, role: str = "local", oracle: str | None = None,
              tuner_id: str | None = None, command: str | None = None) -> list[dict[str, Any]] | None:
    """Run (or continue) a sweep in this process. ``role``: ``local`` (the tuner and its oracle here),
    ``chief`` (serve the oracle at ``oracle`` HOST:PORT for workers; owns the parent run) or ``worker``
    (run trials for the chief at ``oracle``). Returns the final leaderboard (None on a worker)."""
    if role not in ("local", "chief", "worker"):
        raise HarnessError(f"unknown sweep role '{role}' (local, chief or worker)")
    if role == "local":
        for name in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
            os.environ.pop(name, None)
    else:
        host, port = split_address(oracle)
        tuner_id = "chief" if role == "chief" else (tuner_id or default_tuner_id())
        if role == "worker" and "chief" in tuner_id:
            raise HarnessError(f"--tuner-id {tuner_id}: a worker's id must not contain 'chief'")
        os.environ.update(KERASTUNER_TUNER_ID=tuner_id, KERASTUNER_ORACLE_IP=host, KERASTUNER_ORACLE_PORT=str(port))
    tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "tuner0")
    prefix = f"[{tuner_id}] " if role == "worker" else ""
    data = datasets.prepare(sweep.spec.data)
    if role == "worker":
        hypermodel = SweepHyperModel(sweep, data, tuner_id=tuner_id, command=command, prefix=prefix)
        tuner = _tuner(sweep, hypermodel, tuner_id)
        _say(f"{prefix}worker of the chief at {oracle}: running trials")
        _search(tuner)
        _say(f"{prefix}no trials left; done")
        return None
    with _parent_run(sweep, command) as parent:
        hypermodel = SweepHyperModel(sweep, data, parent_run_id=parent, tuner_id=tuner_id, command=command)
        tuner = _tuner(sweep, hypermodel, tuner_id)
        _repair(tuner.oracle)
        _say(f"sweep {sweep.name}: {sweep.sweep.tuner} search"
             + (f", {sweep.sweep.max_trials} trials" if sweep.sweep.tuner != "hyperband" else "")
             + f", MLflow parent run {parent} ({store.display_uri()})"
             + (f"; oracle on {oracle}, waiting for workers" if role == "chief" else ""))
        _search(tuner)
        tuner.save()  # a chief's oracle last saved its books before the last trial left them
        rows = publish(sweep, parent, final=True)
    print(f"\n{sweep.name}: leaderboard ({sweep.sweep.objective}, MLflow parent run {parent})")
    print(format_leaderboard(sweep, rows))
    if rows and rows[0]["rank"] == 1:
        print(f"\nBest: trial {rows[0]['trial']}; train it in full with "
              f"`harness train {sweep.state_dir / 'best.yaml'}`")
    from harness.reporting.report import generate_report

    report = generate_report(sweep=parent, origin_command=command)
    print(f"Report: {report} (rebuild it with `harness report --sweep {parent}`)    MLflow UI: harness ui")
    return rows


def _search(tuner) -> None:
    try:
        tuner.search(verbose=0)
    except RuntimeError as exc:
        if "consecutive failures" in str(exc):
            last = (str(exc).strip().splitlines() or [""])[-1]
            raise HarnessError(f"the sweep stopped: {str(exc).splitlines()[0]} (last error: {last})") from None
        raise


@contextlib.contextmanager
def _parent_run(sweep: SweepSpec, command: str | None):
    """Create, or continue, the sweep's parent run; local state follows it."""
    state_file = sweep.state_dir / "sweep.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else None
    if state and state.get("key") != sweep.key():
        raise HarnessError(f"{sweep.state_dir}: holds a different sweep named '{sweep.name}' (from "
                           f"{state.get('spec')}); delete that folder to start afresh, or rename this sweep")
    parent = state.get("parent_run_id") if state else None
    if parent and query.run_status(parent) is None:
        parent = None  # the store no longer has it
    if parent is None:  # a fresh sweep: nothing local may leak into it
        for stale in ("tuner", "trials", "best.yaml", "leaderboard.json"):
            path = sweep.state_dir / stale
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    tags = {"harness.kind": "sweep", "harness.sweep": sweep.name, "harness.sweep_key": sweep.key(),
            "harness.tuner": sweep.sweep.tuner, "harness.objective": sweep.sweep.objective}
    with tracking_runs.run(sweep.spec, run_id=parent, command=command, tags=tags) as run_id:
        if parent is None:
            atomic.write_text(state_file, json.dumps({"parent_run_id": run_id, "key": sweep.key(),
                                                      "spec": sweep.source}, indent=2))
            tracking_log.log_params(sweep.params())
            tracking_log.log_text(sweep.to_yaml(), "sweep.yaml")
        else:
            tracking_log.set_tags({"harness.max_trials": sweep.sweep.max_trials})
        yield run_id


def _tuner(sweep: SweepSpec, hypermodel: SweepHyperModel, tuner_id: str):
    kt = _kt()
    s = sweep.sweep
    project = sweep.state_dir / "tuner"
    if tuner_id == "chief" or "KERASTUNER_ORACLE_IP" not in os.environ:
        # KerasTuner reloads its oracle only when this tuner id has a state file; a sweep started
        # alone and continued as a chief (or back) must still reload the oracle, never start over.
        if (project / "oracle.json").exists() and not (project / f"{tuner_id}.json").exists():
            atomic.write_text(project / f"{tuner_id}.json", "{}")
    common = dict(hypermodel=hypermodel, objective=kt.Objective(s.objective, s.direction),
                  seed=s.seed + 1,  # KerasTuner takes seed 0 as "no seed"
                  max_retries_per_trial=s.retries, directory=str(sweep.state_dir), project_name="tuner",
                  overwrite=False)
    # Hyperband continues a model from an earlier trial's weights file before it is compiled: Keras
    # warns that the optimizer state in that file is not loaded, which is what is meant.
    warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
    with contextlib.redirect_stdout(io.StringIO()):  # "Reloading Tuner from ..." and the like
        if s.tuner == "random":
            return kt.RandomSearch(max_trials=s.max_trials, **common)
        if s.tuner == "grid":
            return kt.GridSearch(max_trials=s.max_trials, **common)
        if s.tuner == "bayesian":
            return kt.BayesianOptimization(max_trials=s.max_trials, **common)
        return kt.Hyperband(max_epochs=s.max_epochs or sweep.spec.train.epochs, factor=s.factor, **common)


def _repair(oracle) -> None:
    """Make a reloaded oracle's books match its trial files (KerasTuner 1.4.8).

    On reload KerasTuner queues every trial that oracle.json lists as ongoing for a retry: right for a
    trial killed mid-training. But oracle.json is written after trial.json, so a kill in between can
    leave (a) a trial saved COMPLETED (or FAILED) still listed as ongoing, which would run again, and
    (b) a trial saved RUNNING that oracle.json never lists, which would neither run nor finish.
    """
    from keras_tuner.engine.trial import TrialStatus

    for trial_id in list(oracle._retry_queue):
        trial = oracle.trials.get(trial_id)
        if trial is not None and trial.status in (TrialStatus.COMPLETED, TrialStatus.FAILED):
            oracle._retry_queue.remove(trial_id)
            if trial_id not in oracle.end_order:
                oracle.end_order.append(trial_id)
    for trial_id, trial in oracle.trials.items():
        if trial.status == TrialStatus.RUNNING and trial_id not in oracle._retry_queue:
            oracle._retry_queue.append(trial_id)
    oracle.save()


def split_address(address: str | None) -> tuple[str, int]:
    host, sep, port = (address or "").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise HarnessError(f"--oracle {address}: expected HOST:PORT, e.g. 10.0.0.5:8000")
    return host.strip("[]"), int(port)


def default_tuner_id() -> str:
    """Stable across restarts on one host (a restarted worker takes back its unfinished trial); one
    per GPU when CUDA_VISIBLE_DEVICES names one. Several CPU workers on one host need --tuner-id."""
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return f"tuner-{socket.gethostname()}" + (f"-gpu{gpu.replace(',', '_')}" if gpu else "")


# ------------------------------------------------------------------------------ local workers

def launch(spec_path: str | Path, overrides: typing.Sequence[str], workers: int) -> int:
    """A chief and ``workers`` worker processes on this machine, on loopback (one GPU each when there
    are GPUs). They are this process's children: Ctrl-C reaches them all, and any of them failing
    stops the others. Running the same command again continues the sweep."""
    if workers < 1:
        raise HarnessError(f"--workers {workers}: need at least one worker")
    sweep = load_sweep(spec_path, overrides)
    datasets.prepare(sweep.spec.data)  # once here, rather than by several processes at the same time
    address = f"127.0.0.1:{_free_port()}"
    gpus = _gpus()
    base = [sys.executable, "-m", "harness", "sweep", str(Path(spec_path).resolve())]
    base += [a for item in overrides for a in ("--set", item)]
    procs = {"chief": subprocess.Popen(base + ["--role", "chief", "--oracle", address])}
    for i in range(workers):
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
            if workers > len(gpus):  # GPUs shared by several workers: grow memory, do not grab it all
                env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
        procs[f"tuner{i}"] = subprocess.Popen(
            base + ["--role", "worker", "--oracle", address, "--tuner-id", f"tuner{i}"], env=env)
    _say(f"sweep {sweep.name}: chief on {address} and {workers} worker process(es)"
         + (f" on GPU(s) {', '.join(gpus)}" if gpus else ""))
    try:
        while True:
            failed = [(n, p.returncode) for n, p in procs.items() if p.poll() not in (None, 0)]
            if failed:
                _stop(procs, interrupt=True, grace=30)
                raise HarnessError(f"sweep process {failed[0][0]} exited with code {failed[0][1]}; run the "
                                   f"same command again to continue the sweep")
            if procs["chief"].poll() == 0:  # the workers leave on their own once no trial is left
                _stop(procs, interrupt=False, grace=60)
                return 0
            time.sleep(0.5)
    except KeyboardInterrupt:  # a terminal's Ctrl-C has reached the children too: let them wind down
        _stop(procs, interrupt=True, grace=30, settle=15)
        raise


def _stop(procs: Mapping[str, subprocess.Popen], *, interrupt: bool, grace: float, settle: float = 0.0) -> None:
    """Wait for the children: ``settle`` seconds for them to leave on their own, then (``interrupt``)
    a Ctrl-C of their own, so that they mark their runs KILLED and keep their checkpoints; whichever is
    still there ``grace`` seconds later is killed."""
    _wait(procs, settle)
    if interrupt:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
    _wait(procs, grace)
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait(procs: Mapping[str, subprocess.Popen], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    for proc in procs.values():
        try:
            proc.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gpus() -> list[str]:
    """GPU ids for the workers: CUDA_VISIBLE_DEVICES when set, else what nvidia-smi lists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
