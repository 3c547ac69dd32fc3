"""Experiment specs: YAML files loaded into typed, frozen objects.

A spec file may start with ``base: other.yaml`` (a path relative to the file); it then overrides only
what differs from its base, section by section. ``--set section.key=value`` overrides are parsed as
YAML scalars and type-checked like file values. Unknown keys are errors that name the key and the
file (or the override). Registry names (dataset, model, augmentation policy) and their ``options``
are checked against the registries when the spec is loaded, so a typo fails before any work starts.

The defaults below are the quickstart: the embedded synthetic dataset and a CPU-sized model.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

from harness import HELDOUT_FOLDS
from harness.errors import HarnessError, SpecError


class _Section:
    """Sections are frozen, and so are their ``options`` mappings."""

    def __post_init__(self):
        if hasattr(self, "options"):
            object.__setattr__(self, "options", types.MappingProxyType(dict(self.options)))


@dataclasses.dataclass(frozen=True)
class DataSpec(_Section):
    name: str = "synthetic"  # a registered dataset (`harness list datasets`)
    root: str = "data"  # raw and prepared files live under this folder
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # the dataset's own options
    image_size: int = 64  # prepared crops are image_size x image_size (the paper: 64)
    box_expand: float = 0.3  # the union of digit boxes grows by this fraction (the paper: 30%)
    val_fraction: float = 0.1  # carved from train by a seeded rule on file names
    seed: int = 0
    # paper: one test set, prepared like training (the model crops its centre); report: also the
    # "resized only" test set (test_resized): the box crop resized straight to resized_test_size
    preprocessing: str = "paper"
    resized_test_size: int = 64  # report only; must be the model's input size (augment.crop_size)
    long_numbers: str = "keep"  # more than 5 digits: keep (length class ">5") | drop; listed in the data card
    bad_files: str = "error"  # missing, unreadable or doubly named images: error | skip (listed in the data card)
    # training images added by swapping digits between training images (harness.data.recombine); 0 = off
    recombined: int = 0
    # which training images recombination starts from: 0 = any, alike (number lengths as in the training
    # images); 1 = each number length equally often; between: an image of length L weighs count(L) ** -this
    recombined_length_balance: float = 0.0
    # no test folder (dataset folders without data.options.test): which of the HELDOUT_FOLDS quarters of train
    # is held out as test, 0 to 3 (k-fold: the four folds hold out each image once)
    heldout_fold: int = 0
    cache: bool = False  # true: load each prepared split into memory once; false: stream it from the file


@dataclasses.dataclass(frozen=True)
class ModelSpec(_Section):
    name: str = "cnn_small"  # a registered model variant (`harness list models`)
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class AugmentSpec(_Section):
    policy: str = "paper"  # a registered augmentation policy (`harness list policies`)
    crop_size: int = 54  # model input size; training crops at random, inference at the centre
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    epochs: int = 7
    batch_size: int = 64
    optimizer: str = "adam"  # adam | sgd (with Nesterov momentum)
    learning_rate: float = 2e-3
    schedule: str = "cosine"  # constant | cosine (decays to 0 over all epochs)
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0  # decoupled (AdamW-style) decay
    label_smoothing: float = 0.0  # each head's target: 1 - this on the true class, this spread over all; 0 = off
    ema_momentum: float = 0.0  # evaluate and keep an exponential moving average of the weights (Keras use_ema); 0 = off
    jit_compile: str = "auto"  # auto | on | off; auto = XLA on accelerators and on JAX, off on TF/torch CPUs
    early_stopping_patience: int = 0  # epochs without a better validation sequence accuracy; 0 = off
    target_accuracy: float = 0.0  # stop once validation sequence accuracy reaches this (time to accuracy); 0 = off
    seed: int = 0
    precision: str = "fp32"  # fp32 | bf16 | fp16: mixed precision (weights, logits, loss stay float32; fp16 scales the loss)
    distribute: str = "auto"  # auto | off; auto = data-parallel over all local accelerators when there are several
    init_from: str = ""  # start from these weights (fine-tuning): an MLflow run id or a .keras file; "" = fresh
    checkpoint_seconds: float = 120.0  # full training state saved mid-epoch at most this often; 0 = epoch ends only
    checkpoint_steps: int = 0  # ... and every this many training steps; 0 = off


@dataclasses.dataclass(frozen=True)
class TrackingSpec:
    experiment: str = "svhn-harness"  # MLflow experiment name
    log_model: bool = True
    register: str = ""  # register the logged model under this name (a sweep: its best trial's model)
    alias: str = ""  # and point this alias of the registered model (e.g. champion) at the new version


@dataclasses.dataclass(frozen=True)
class Spec:
    name: str = "unnamed"
    description: str = ""
    data: DataSpec = DataSpec()
    model: ModelSpec = ModelSpec()
    augment: AugmentSpec = AugmentSpec()
    train: TrainSpec = TrainSpec()
    tracking: TrackingSpec = TrackingSpec()

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """``section.key`` -> value, for MLflow params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict) and value:
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = value

        walk("", self.to_dict())
        return out


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` as a string; learning rates are written that way, so read it as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


_CHOICES = {
    "data.preprocessing": ("paper", "report"),
    "data.long_numbers": ("keep", "drop"),
    "data.bad_files": ("error", "skip"),
    "train.optimizer": ("adam", "sgd"),
    "train.schedule": ("constant", "cosine"),
    "train.jit_compile": ("auto", "on", "off"),
    "train.precision": ("fp32", "bf16", "fp16"),
    "train.distribute": ("auto", "off"),
}


def load_spec(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Spec:
    """Load a spec file (with its ``base`` chain) and apply ``key=value`` overrides.

    ``path=None`` starts from the defaults.
    """
    raw: dict[str, Any] = _load_chain(Path(path), ()) if path is not None else {}
    for item in overrides:
        _apply_override(raw, item)
    spec = _build(Spec, raw, source=str(path) if path else "defaults")
    _validate(spec, source=str(path) if path else "defaults")
    return spec


def load_spec_with(path: str | Path, overrides: typing.Sequence[str] = (), *, section: str) -> tuple[Spec, Any]:
    """Load a spec file that also has a top-level ``section`` beside the spec's own (``sweep``).

    Returns the spec (checked as by :func:`load_spec`) and the section as merged along the ``base``
    chain, unchecked (None when absent): the module that owns the section checks it.
    """
    raw = _load_chain(Path(path), (), extra=(section,))
    extra = raw.pop(section, None)
    for item in overrides:
        _apply_override(raw, item)
    spec = _build(Spec, raw, source=str(path))
    _validate(spec, source=str(path))
    return spec, extra


def with_values(spec: Spec, values: Mapping[str, Any], source: str) -> Spec:
    """``spec`` with dotted keys set to typed values (``{"train.learning_rate": 1e-3}``), checked like
    values from a file; errors name ``source``."""
    raw = spec.to_dict()
    for key, value in values.items():
        *parents, last = key.split(".")
        node = raw
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise SpecError(f"{source}: unknown key '{key}'")
            node = node[part]
        node[last] = value
    out = _build(Spec, raw, source=source)
    _validate(out, source=source)
    return out


# Top-level sections that belong to other commands, and the command that runs a file having one.
_OTHER_SECTIONS = {"sweep": "harness sweep"}


def _load_chain(path: Path, seen: tuple[Path, ...], extra: tuple[str, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise SpecError(f"{path}: 'base' chain loops back to itself")
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read spec ({exc.strerror or exc})") from None
    try:
        doc = _yaml(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML ({exc})") from None
    if doc is None:  # an empty file, or only comments: almost surely not what was meant to be trained
        raise SpecError(f"{path}: the spec is empty; give at least a name, e.g. `name: my-run` (every other "
                        f"setting has a default: harness list experiments shows examples)")
    if not isinstance(doc, dict):
        raise SpecError(f"{path}: a spec must be a mapping of sections, got {type(doc).__name__}")
    for key, command in _OTHER_SECTIONS.items():
        if key in doc and key not in extra:
            raise SpecError(f"{path}: has a '{key}' section; run it with `{command} {path}`")
    _check_keys(Spec, {k: v for k, v in doc.items() if k not in extra}, source=str(path), allow_base=True)
    base = doc.pop("base", None)
    if base is None:
        return doc
    if not isinstance(base, str):
        raise SpecError(f"{path}: 'base' must be a file path")
    return _merge(_load_chain(path.parent / base, seen + (path,), extra), doc)


def _check_keys(cls: type, doc: Mapping[str, Any], source: str, prefix: str = "", allow_base=False) -> None:
    """Unknown keys anywhere in one file are errors naming that file."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in doc.items():
        if allow_base and key == "base":
            continue
        if key not in fields:
            raise SpecError(
                f"{source}: unknown key '{prefix}{key}' (allowed here: {', '.join(fields)})"
            )
        ftype = _hints(cls)[key]
        if dataclasses.is_dataclass(ftype) and isinstance(value, Mapping):
            _check_keys(ftype, value, source, prefix=f"{prefix}{key}.")


def _merge(base: dict[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _apply_override(raw: dict[str, Any], item: str) -> None:
    source = f"--set {item}"
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise SpecError(f"{source}: expected KEY=VALUE, e.g. train.epochs=3")
    parts = key.strip().split(".")
    cls: Any = Spec
    for i, part in enumerate(parts):
        hints = _hints(cls) if dataclasses.is_dataclass(cls) else None
        if hints is None:
            if _is_mapping(cls):  # options.<name> of a registry entry: checked at build time
                break
            raise SpecError(f"{source}: '{'.'.join(parts[:i])}' has no sub-keys")
        if part not in hints:
            raise SpecError(f"{source}: unknown key '{'.'.join(parts[: i + 1])}' (allowed: {', '.join(hints)})")
        cls = hints[part]
    if dataclasses.is_dataclass(cls):
        raise SpecError(f"{source}: '{key}' is a section; set one of its keys")
    try:
        value = _yaml(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    if cls is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = text.strip()  # a name or run id that YAML would read as a number
    if not _is_mapping(cls):
        _coerce(cls, value, source, key.strip())  # type errors name the override, not the file
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        node[part] = dict(child) if isinstance(child, Mapping) else {}
        node = node[part]
    node[parts[-1]] = value


def _build(cls: type, doc: Mapping[str, Any], source: str, prefix: str = "") -> Any:
    kwargs = {}
    hints = _hints(cls)
    for key, value in doc.items():
        if key not in hints:
            raise SpecError(f"{source}: unknown key '{prefix}{key}' (allowed here: {', '.join(hints)})")
        kwargs[key] = _coerce(hints[key], value, source, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(ftype: Any, value: Any, source: str, key: str) -> Any:
    if dataclasses.is_dataclass(ftype):
        if not isinstance(value, Mapping):
            raise SpecError(f"{source}: '{key}' must be a mapping, got {value!r}")
        return _build(ftype, value, source, prefix=f"{key}.")
    if _is_mapping(ftype):
        if not isinstance(value, Mapping):
            raise SpecError(f"{source}: '{key}' must be a mapping, got {value!r}")
        return dict(value)  # made read-only by the section
    if ftype is str and isinstance(value, bool) and {"on", "off"} & set(_CHOICES.get(key, ())):
        value = "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(ftype)
    if ok is None:
        raise SpecError(f"{source}: '{key}' has an unsupported type {ftype}")  # a bug in the schema
    if not ok:
        raise SpecError(f"{source}: '{key}' must be {ftype.__name__}, got {value!r}")
    if ftype is float and not math.isfinite(value):  # YAML's .nan and .inf pass every later `<= 0` check
        raise SpecError(f"{source}: '{key}' must be a finite number, got {value!r}")
    return float(value) if ftype is float else value


def _validate(spec: Spec, source: str) -> None:
    # deferred: the registries' modules are imported only when a spec is checked (all three without
    # Keras, MLflow or pandas, so that a mistake here is answered before any heavy import)
    from harness.data import sources
    from harness.models import architectures as models
    from harness.models import augment

    flat = spec.flat()
    for key, allowed in _CHOICES.items():
        if flat[key] not in allowed:
            raise SpecError(f"{source}: '{key}' must be one of {', '.join(allowed)}, got {flat[key]!r}")
    positive = ["data.image_size", "data.resized_test_size", "augment.crop_size", "train.epochs", "train.batch_size"]
    for key in positive:
        if flat[key] <= 0:
            raise SpecError(f"{source}: '{key}' must be positive, got {flat[key]}")
    if not 0.0 <= spec.data.val_fraction < 1.0:
        raise SpecError(f"{source}: 'data.val_fraction' must be in [0, 1), got {spec.data.val_fraction}")
    if spec.augment.crop_size > spec.data.image_size:
        raise SpecError(
            f"{source}: 'augment.crop_size' ({spec.augment.crop_size}) is larger than "
            f"'data.image_size' ({spec.data.image_size})"
        )
    if spec.data.preprocessing == "report" and spec.data.resized_test_size != spec.augment.crop_size:
        raise SpecError(
            f"{source}: 'data.resized_test_size' ({spec.data.resized_test_size}) must equal 'augment.crop_size' "
            f"({spec.augment.crop_size}) with data.preprocessing 'report': the resized test set is the model's "
            "input, uncropped (the report: data.image_size 74, augment.crop_size 64, data.resized_test_size 64)"
        )
    if spec.train.learning_rate <= 0:
        raise SpecError(f"{source}: 'train.learning_rate' must be positive")
    if not 0.0 <= spec.train.label_smoothing < 1.0:
        raise SpecError(f"{source}: 'train.label_smoothing' must be in [0, 1) (0 = off), got {spec.train.label_smoothing}")
    if not 0.0 <= spec.train.ema_momentum < 1.0:
        raise SpecError(f"{source}: 'train.ema_momentum' must be in [0, 1) (0 = off; 0.998 weighs about the "
                        f"last 500 steps), got {spec.train.ema_momentum}")
    if not 0.0 <= spec.data.recombined_length_balance <= 1.0:
        raise SpecError(f"{source}: 'data.recombined_length_balance' must be in [0, 1] (0 = lengths as in the "
                        f"training images, 1 = each length equally often), got {spec.data.recombined_length_balance}")
    if not 0 <= spec.data.heldout_fold < HELDOUT_FOLDS:
        raise SpecError(f"{source}: 'data.heldout_fold' must be 0 to {HELDOUT_FOLDS - 1}, got {spec.data.heldout_fold}")
    target = spec.train.target_accuracy
    if not 0.0 <= target <= 1.0:
        raise SpecError(f"{source}: 'train.target_accuracy' must be in [0, 1] (0 = off), got {target}")
    if target and spec.data.val_fraction == 0:
        raise SpecError(f"{source}: 'train.target_accuracy' is checked on the validation split; "
                        "set data.val_fraction above 0")
    for key in ("train.checkpoint_seconds", "train.checkpoint_steps", "data.recombined"):
        if flat[key] < 0:
            raise SpecError(f"{source}: '{key}' must be 0 (off) or positive, got {flat[key]}")
    _validate_init_from(spec.train.init_from, source)
    try:
        if spec.tracking.register:
            check_model_name(spec.tracking.register)
        check_model_alias(spec.tracking.alias)
    except HarnessError as exc:
        raise SpecError(f"{source}: 'tracking.register' / 'tracking.alias': {exc}") from None
    if spec.tracking.alias and not spec.tracking.register:
        raise SpecError(f"{source}: 'tracking.alias' names an alias of the model 'tracking.register' names; set both")
    if spec.tracking.register and not spec.tracking.log_model:
        raise SpecError(f"{source}: 'tracking.register' registers the logged model; it needs tracking.log_model true")
    _check_registered(source, "model", models.MODELS, spec.model.name, spec.model.options)
    _check_registered(source, "augment", augment.POLICIES, spec.augment.policy, spec.augment.options)
    _check_registered(source, "data", sources.DATASETS, spec.data.name, spec.data.options)


def _check_registered(source: str, section: str, registry, name: str, options: Mapping[str, Any]) -> None:
    try:
        registry.check_options(name, dict(options))
        registry.check_option_types(name, dict(options))
    except HarnessError as exc:
        raise SpecError(f"{source}: {section}: {exc}") from None


def _validate_init_from(value: str, source: str) -> None:
    """A .keras file that exists, an MLflow run id or a registered model's URI (whether the run or
    model exists is checked when training starts, against the tracking store)."""
    if not value:
        return
    if value.endswith(".keras"):
        if not Path(value).is_file():
            raise SpecError(f"{source}: 'train.init_from' {value}: no such model file")
    elif value.startswith("models:/"):
        name, sep, which = value[len("models:/"):].replace("@", "/@", 1).partition("/")
        try:
            check_model_name(name)
            if not sep or not (which.isdigit() or (which.startswith("@") and check_model_alias(which[1:]))):
                raise HarnessError("")
        except HarnessError:
            raise SpecError(f"{source}: 'train.init_from' {value}: a registered model is models:/NAME/VERSION or "
                            f"models:/NAME@ALIAS, e.g. models:/svhn-reader@champion") from None
    elif not re.fullmatch(r"[0-9a-f]{32}", value):
        raise SpecError(f"{source}: 'train.init_from' must be an MLflow run id (32 hex digits), a .keras "
                        f"file or models:/NAME@ALIAS, got {value!r}")


MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
MODEL_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,254}$")


def check_model_name(name: str) -> str:
    """A name for the MLflow model registry (tracking.register, `harness register --name`)."""
    if not MODEL_NAME.match(name):
        raise HarnessError(f"model name {name!r}: letters, digits, '_', '.' and '-', starting with a letter or "
                           f"digit, e.g. svhn-reader")
    return name


def check_model_alias(alias: str) -> str:
    """An alias of a registered model ("" for none); MLflow keeps 'latest' and v<number> for itself."""
    if alias and (not MODEL_ALIAS.match(alias) or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias)):
        raise HarnessError(f"alias {alias!r}: letters, digits, '_' and '-', starting with a letter, and neither "
                           f"'latest' nor v<number> (MLflow keeps those), e.g. champion")
    return alias


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_mapping(ftype: Any) -> bool:
    return typing.get_origin(ftype) in (collections.abc.Mapping, dict) or ftype in (dict, Mapping)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
