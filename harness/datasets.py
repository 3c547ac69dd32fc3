"""Datasets: where raw images come from, and how a spec's data section becomes prepared split files.

Registry contract: ``DATASETS.create(name, root, **options)`` makes sure the raw data is present under
``root`` (generating or fetching it) and returns ``{"train": folder, "test": folder}``, each folder in
SVHN Format 1's layout (PNG files + digitStruct.mat). Everything after that is shared: records table
-> seeded train/validation split -> one prepared HDF5 file per split (harness.prepare).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from harness.registry import Registry

DATASETS = Registry("dataset")

PREPARED_VERSION = 1  # bump when the preparation changes, so stale prepared files are not reused


@DATASETS.register
def synthetic(root: Path, *, train: int = 12000, test: int = 2000, seed: int = 1234) -> dict[str, Path]:
    """Synthetic street numbers rendered from fonts shipped in installed packages (embedded, offline)."""
    from harness.synthetic import generate_split

    base = Path(root) / "synthetic" / f"seed{seed}"
    # train and test draw from different seeds, so no test image is ever a training image
    return {
        "train": generate_split(base / f"train-{train}", train, seed=seed),
        "test": generate_split(base / f"test-{test}", test, seed=seed + 1_000_003),
    }


@dataclasses.dataclass(frozen=True)
class PreparedData:
    train: Path
    val: Path | None
    test: Path

    def splits(self) -> dict[str, Path]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def validation_mask(names: pd.Series, fraction: float, seed: int) -> np.ndarray:
    """Seeded, order-independent rule: an image is in validation when hash(seed, name) < fraction."""
    def unit(name: str) -> float:
        digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    return np.array([unit(n) < fraction for n in names], dtype=bool)


def prepare(data, *, workers: int | None = None) -> PreparedData:
    """Raw data -> prepared split files for a DataSpec; reuses files an earlier call completed."""
    from harness.prepare import open_prepared, prepare_split
    from harness.records import read_records

    root = Path(data.root)
    raw = DATASETS.create(data.name, root, **dict(data.options))
    out = root / "prepared" / f"{data.name}-{_key(data, raw)}"
    targets = {"train": out / "train.h5", "val": out / "val.h5", "test": out / "test.h5"}
    if data.val_fraction == 0:
        targets["val"] = None

    def make(split: str, records: pd.DataFrame) -> None:
        path = targets[split]
        if path is None or path.exists():  # existing files are validated below, with the new ones
            return
        prepare_split(records, path, image_size=data.image_size, box_expand=data.box_expand,
                      workers=workers, desc=f"prepare {data.name}/{split}")

    if not all(p is None or p.exists() for p in targets.values()):
        train = read_records(raw["train"])
        in_val = validation_mask(train["name"], data.val_fraction, data.seed)
        make("train", train[~in_val].reset_index(drop=True))
        make("val", train[in_val].reset_index(drop=True))
        make("test", read_records(raw["test"]))
    for path in targets.values():
        if path is not None:
            open_prepared(path).close()  # a corrupt file is an error naming it, never silently reused
    return PreparedData(**targets)


def _key(data, raw: dict[str, Path]) -> str:
    """Prepared files depend on the raw folders and these settings, nothing else."""
    settings = {
        "version": PREPARED_VERSION,
        "raw": {k: _relative(Path(v), Path(data.root)) for k, v in sorted(raw.items())},
        "image_size": data.image_size,
        "box_expand": data.box_expand,
        "val_fraction": data.val_fraction,
        "seed": data.seed,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def _relative(path: Path, root: Path) -> str:
    try:  # relative, so that moving the whole data folder keeps its prepared files valid
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path.resolve())
