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
import re
import types
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

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
    jit_compile: str = "auto"  # auto | on | off; auto = XLA on accelerators, off on CPUs (slower there)
    early_stopping_patience: int = 0  # epochs without a better validation sequence accuracy; 0 = off
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class TrackingSpec:
    experiment: str = "svhn-harness"  # MLflow experiment name
    log_model: bool = True


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
    "train.optimizer": ("adam", "sgd"),
    "train.schedule": ("constant", "cosine"),
    "train.jit_compile": ("auto", "on", "off"),
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


def _load_chain(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
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
    doc = {} if doc is None else doc
    if not isinstance(doc, dict):
        raise SpecError(f"{path}: a spec must be a mapping of sections, got {type(doc).__name__}")
    _check_keys(Spec, doc, source=str(path), allow_base=True)
    base = doc.pop("base", None)
    if base is None:
        return doc
    if not isinstance(base, str):
        raise SpecError(f"{path}: 'base' must be a file path")
    return _merge(_load_chain(path.parent / base, seen + (path,)), doc)


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
    return float(value) if ftype is float else value


def _validate(spec: Spec, source: str) -> None:
    from harness import augment, datasets, models  # registries (imports are light until used)

    flat = spec.flat()
    for key, allowed in _CHOICES.items():
        if flat[key] not in allowed:
            raise SpecError(f"{source}: '{key}' must be one of {', '.join(allowed)}, got {flat[key]!r}")
    positive = ["data.image_size", "augment.crop_size", "train.epochs", "train.batch_size"]
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
    if spec.train.learning_rate <= 0:
        raise SpecError(f"{source}: 'train.learning_rate' must be positive")
    for section, registry, name in (
        ("data", datasets.DATASETS, spec.data.name),
        ("model", models.MODELS, spec.model.name),
        ("augment", augment.POLICIES, spec.augment.policy),
    ):
        options = getattr(spec, section).options
        try:
            registry.check_options(name, dict(options))
            registry.check_option_types(name, dict(options))
        except HarnessError as exc:
            raise SpecError(f"{source}: {section}: {exc}") from None


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
