"""Datasets: where raw images come from, and how a spec's data section becomes prepared split files.

Registry contract: ``DATASETS.create(name, root, **options)`` makes sure the raw data is present under
``root`` (generating or fetching it) and returns ``{"train": folder, "test": folder}`` (and
``"extra": folder`` for more training images), each folder in SVHN Format 1's layout (PNG files +
annotations). Everything after that is shared: records table -> seeded train/validation split (from
train and extra, never test) -> one prepared HDF5 file per split (harness.data.prepare) -> the data card
(harness.data.card) beside them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from harness import MAX_DIGITS
from harness.data import card as datacard
from harness.data import recombine
from harness.data import synthetic as generator
from harness.data.fetch import svhn_split_folder
from harness.data.mnist import composite_splits
from harness.data.prepare import prepare_split, unpreparable
from harness.data.records import annotation_file, read_records, scan_records
from harness.data.splitfile import PreparedSplit
from harness.errors import DataError, SpecError
from harness.registry import Registry

DATASETS = Registry("dataset")

# The DataSpec fields the prepared files depend on (with the raw folders), as the data card shows them.
_PREPARATION = ("name", "options", "image_size", "box_expand", "val_fraction", "seed", "preprocessing",
                "resized_test_size", "long_numbers", "bad_files", "recombined")
PREPARED_VERSION = 3  # bump when the preparation changes, so stale prepared files are not reused


@DATASETS.register
def synthetic(root: Path, *, train: int = 12000, test: int = 2000, seed: int = 1234) -> dict[str, Path]:
    """Synthetic street numbers rendered from fonts shipped in installed packages (embedded, offline)."""
    # the generator's version is in the path: after an upgrade that changes the pixels the new split
    # is generated beside the old one, which stays as it was for the runs that used it
    base = Path(root) / "synthetic" / f"v{generator.GENERATOR_VERSION}-seed{seed}"
    # train and test draw from different seeds, so no test image is ever a training image
    return {
        "train": generator.generate_split(base / f"train-{train}", train, seed=seed),
        "test": generator.generate_split(base / f"test-{test}", test, seed=seed + 1_000_003),
    }


@DATASETS.register
def mnist_composite(root: Path, *, source: str | None = None, train: int = 20000, test: int = 4000,
                    seed: int = 1234) -> dict[str, Path]:
    """MNIST-composite (the report's synthetic set): random MNIST digits side by side on a 64x64 canvas.

    ``source``: a folder holding the four MNIST IDX files (.gz or not); by default ``<root>/mnist/``
    when it exists, else Keras' own download. Train composites use only MNIST train digits, test
    composites only MNIST test digits (harness.data.mnist).
    """
    return composite_splits(root, source=source, train=train, test=test, seed=seed)


@DATASETS.register
def svhn(root: Path, *, extra: bool = False) -> dict[str, Path]:
    """SVHN Format 1 (Netzer et al. 2011; non-commercial use): train and test, plus extra with extra=true.

    The raw folders are the ones `harness data fetch svhn` downloaded or registered under ``root``
    (harness.data.fetch); a missing one is an error saying how to fetch it. ``extra`` adds the 202,353
    extra images to training (validation is then carved from train and extra alike).
    """
    splits = ("train", "test", "extra") if extra else ("train", "test")
    return {split: svhn_split_folder(root, split) for split in splits}


@DATASETS.register
def folders(root: Path, *, train: str = "", test: str = "", extra: str = "") -> dict[str, Path]:
    """Your own images: folders in SVHN Format 1 layout given as options train, test (and extra).

    Each option is a folder of images with their annotations, as harness.data.records reads them:
    digitStruct.mat, one ``*.json`` (the widely used conversion) or labels.csv
    (``filename,label,left,top,width,height``; label 10 = digit 0). Relative paths resolve against
    the current directory; the prepared files go under ``root``. Their key hashes each folder's
    annotation file and the list of files beside it (names, sizes, modification times), so a folder
    changed in place is prepared again. ``extra`` adds training images (named ``extra/<name>``).
    """
    unset = [split for split, value in (("train", train), ("test", test)) if not value]
    if unset:
        raise SpecError(f"dataset 'folders' needs {' and '.join(f'data.options.{s}' for s in unset)}: a folder "
                        "of images with digitStruct.mat, a .json or labels.csv")
    out = {}
    for split, value in (("train", train), ("test", test), ("extra", extra)):
        if not value:
            continue
        folder = Path(os.path.abspath(os.path.expanduser(value)))
        if not folder.exists():
            raise DataError(folder, f"no such folder (data.options.{split} of dataset 'folders')")
        if not folder.is_dir():
            raise DataError(folder, f"not a folder (data.options.{split} of dataset 'folders'); give the "
                                    "folder that holds the images and their annotation file")
        try:
            annotation_file(folder)
        except DataError as exc:
            raise DataError(exc.path, f"{exc.problem} (data.options.{split} of dataset 'folders')") from None
        out[split] = folder
    return out


# Datasets whose raw folders belong to the user and may change in place: the prepared files' key
# also hashes their contents (harness-made folders are named by what they hold).
_CONTENT_KEYED = ("folders",)


@dataclasses.dataclass(frozen=True)
class PreparedData:
    train: Path
    val: Path | None
    test: Path
    test_resized: Path | None = None  # preprocessing "report": test box crops resized to the model's input
    card: Path | None = None  # the data card's card.json (card.md beside it)

    def splits(self) -> dict[str, Path]:
        """Prepared split files by name: train, val, test and test_resized where there are."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k != "card"}

    def test_sets(self) -> dict[str, Path]:
        """Held-out test sets by name; a run logs each one's metrics as ``<name>_<metric>``."""
        return {k: v for k, v in self.splits().items() if k.startswith("test")}


def validation_mask(names: pd.Series, fraction: float, seed: int) -> np.ndarray:
    """Seeded, order-independent rule: an image is in validation when hash(seed, name) < fraction."""
    def unit(name: str) -> float:
        digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    return np.array([unit(n) < fraction for n in names], dtype=bool)


def prepare(data, *, workers: int | None = None) -> PreparedData:
    """Raw data -> prepared split files and their data card for a DataSpec; reuses what an earlier
    call completed, and an interrupted preparation resumes where it stopped."""
    root = Path(data.root)
    raw = DATASETS.create(data.name, root, **dict(data.options))
    out = root / "prepared" / f"{data.name}-{_key(data, raw)}"
    targets = _targets(data, out)
    card = out / datacard.CARD_JSON
    if not (card.is_file() and all(p.exists() for p in targets.values())):
        _prepare_all(data, raw, targets, workers)  # the card comes last: its presence means done
    for path in targets.values():
        PreparedSplit(path)  # a corrupt file is an error naming it, never silently reused
    splits = {k: targets.get(k) for k in ("train", "val", "test", "test_resized")}
    return PreparedData(**splits, card=card)


def _targets(data, out: Path) -> dict[str, Path]:
    """train, val (unless val_fraction is 0), test, and test_resized (preprocessing "report")."""
    targets = {"train": out / "train.h5", "val": out / "val.h5", "test": out / "test.h5"}
    if data.val_fraction == 0:
        del targets["val"]
    if data.preprocessing == "report":
        targets["test_resized"] = out / "test_resized.h5"
    return targets


def _prepare_all(data, raw: dict[str, Path], targets: dict[str, Path], workers: int | None) -> None:
    _check_disjoint(raw)
    scanned = {split: _scan(split, Path(folder), data.bad_files) for split, folder in raw.items()}
    contents = _contents(data, {split: records for split, (records, _) in scanned.items()})
    if data.recombined:  # made from the training images only, after validation's are carved out
        raw = {**raw, "recombined": _recombine(data, contents["train"], targets["train"].parent)}
        scanned["recombined"] = _scan("recombined", raw["recombined"], "error")  # made whole: nothing skipped
        added = scanned["recombined"][0].assign(source="recombined")
        contents["train"] = pd.concat([contents["train"], added], ignore_index=True)
    for split, path in targets.items():
        if path.exists():  # finished by an earlier call; validated by the caller
            continue
        size = data.resized_test_size if split == "test_resized" else data.image_size
        prepare_split(contents[split], path, image_size=size, box_expand=data.box_expand,
                      workers=workers, desc=f"prepare {data.name}/{split}", bad_files=data.bad_files)
    unprepared = _unprepared(data, contents, targets) if data.bad_files == "skip" else {}
    sources = {split: datacard.Source(Path(raw[split]), records, skipped, unprepared.get(split, {}))
               for split, (records, skipped) in scanned.items()}
    prepared = {split: (path, list(dict.fromkeys(contents[split]["source"]))) for split, path in targets.items()}
    settings = {key: getattr(data, key) for key in _PREPARATION}
    card = datacard.build_card(data.name, {**settings, "options": dict(data.options)}, sources, prepared)
    datacard.write_card(targets["train"].parent, card)


def _recombine(data, train: pd.DataFrame, out: Path) -> Path:
    """The folder of data.recombined images made by swapping digits between ``train``'s images."""
    return recombine.generate(train, out / "recombined", data.recombined, seed=data.seed,
                              box_expand=data.box_expand)


def _check_disjoint(raw: dict[str, Path]) -> None:
    test = Path(raw["test"]).resolve()
    for split in ("train", "extra"):
        if split in raw and Path(raw[split]).resolve() == test:
            raise DataError(raw["test"], f"is also the {split} folder; test images must never be trained on")


def _scan(split: str, folder: Path, bad_files: str) -> tuple[pd.DataFrame, list]:
    """The records of a raw split, and the images left out of it (data.bad_files: skip).

    Extra (and recombined) images are named ``extra/<name>``: their file names repeat train's.
    """
    records, skipped = scan_records(folder) if bad_files == "skip" else (read_records(folder), [])
    if split in ("extra", "recombined"):
        records = records.assign(name=f"{split}/" + records["name"])
        skipped = [s._replace(name=f"{split}/{s.name}") for s in skipped]
    return records, skipped


def _contents(data, sources: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The records of each prepared file: train and val from train (+ extra), test (twice for report)."""
    def usable(split: str) -> pd.DataFrame:
        records = sources[split].assign(source=split)
        if data.long_numbers == "drop":
            records = records[records["length"] <= MAX_DIGITS]
        return records.reset_index(drop=True)

    train = pd.concat([usable(s) for s in ("train", "extra") if s in sources], ignore_index=True)
    in_val = validation_mask(train["name"], data.val_fraction, data.seed)
    test = usable("test")
    return {"train": train[~in_val].reset_index(drop=True), "val": train[in_val].reset_index(drop=True),
            "test": test, "test_resized": test}


def _unprepared(data, contents: dict[str, pd.DataFrame],
                targets: dict[str, Path]) -> dict[str, dict[str, tuple[str, str]]]:
    """Raw split -> {name: (kind, detail)} of the images that preparation left out, and why."""
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for split, path in targets.items():
        records = contents[split]
        names = set(PreparedSplit(path).names())
        missing = records[~records["name"].isin(names)]
        for row in missing.itertuples():
            found = out.setdefault(row.source, {})
            if row.name not in found:
                found[row.name] = unpreparable(row.path, row.boxes, data.image_size, data.box_expand) or \
                    ("unreadable", "left out of the prepared file")
    return out


def _key(data, raw: dict[str, Path]) -> str:
    """Prepared files depend on the raw folders and these settings, nothing else."""
    settings = {
        "version": PREPARED_VERSION,
        "raw": {k: _relative(Path(v), Path(data.root)) for k, v in sorted(raw.items())},
        "image_size": data.image_size,
        "box_expand": data.box_expand,
        "val_fraction": data.val_fraction,
        "seed": data.seed,
        "preprocessing": data.preprocessing,
        "resized_test_size": data.resized_test_size if data.preprocessing == "report" else None,
        "long_numbers": data.long_numbers,
        "bad_files": data.bad_files,
    }
    if data.recombined:  # only when set: the keys of existing prepared files stay as they were
        settings["recombined"] = data.recombined
    if data.name in _CONTENT_KEYED:
        settings["contents"] = {k: _folder_digest(Path(v)) for k, v in sorted(raw.items())}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def _folder_digest(folder: Path) -> str:
    """A hash of a raw folder's annotation file (its bytes) and of the files beside it (names, sizes,
    modification times, followed through links): cheap next to decoding the images."""
    annotations = annotation_file(folder)
    digest = hashlib.sha256()
    with open(annotations, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    listing = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(".") or entry.name == annotations.name:
                continue
            try:
                stat = entry.stat()
            except OSError:  # a dangling link: preparation names it
                listing.append((entry.name, -1, -1))
                continue
            if not entry.is_dir():
                listing.append((entry.name, stat.st_size, stat.st_mtime_ns))
    for name, size, mtime in sorted(listing):
        digest.update(f"{name}\0{size}\0{mtime}\n".encode())
    return digest.hexdigest()


def _relative(path: Path, root: Path) -> str:
    try:  # relative, so that moving the whole data folder keeps its prepared files valid
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path.resolve())
