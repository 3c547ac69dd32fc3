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
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

from harness import RUNS
from harness.errors import SpecError
from harness.spec import Spec, _yaml, load_spec_with, with_values

SWEEPS = RUNS / "sweeps"
TUNERS = ("random", "bayesian", "hyperband", "grid")
OBJECTIVES = tuple(f"val_{m}" for m in ("sequence_accuracy", "length_accuracy", "loss",
                                         *(f"digit{p}_accuracy" for p in range(1, 6))))
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
    # deferred: the model registries import Keras, which a spec's first check does not need
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
