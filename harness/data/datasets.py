"""How a spec's data section becomes prepared split files.

The raw folders come from the dataset registry (harness.data.sources). Everything after that is
shared: records table -> seeded train/validation split (from train and extra, never test) -> one
prepared HDF5 file per split (harness.data.prepare) -> the data card (harness.data.card) beside them.
prepare_folder prepares one labelled folder alone, as a model's spec prepares test images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from harness import HELDOUT_FOLDS, MAX_DIGITS
from harness.data import card as datacard
from harness.data import recombine
from harness.data.digitstruct import annotation_file
from harness.data.prepare import prepare_split, unpreparable
from harness.data.records import read_records, scan_records
from harness.data.sources import DATASETS
from harness.data.splitfile import PreparedSplit
from harness.errors import DataError

# The DataSpec fields the prepared files depend on (with the raw folders), as the data card shows them.
_PREPARATION = ("name", "options", "image_size", "box_expand", "val_fraction", "seed", "preprocessing",
                "resized_test_size", "long_numbers", "bad_files", "recombined")
PREPARED_VERSION = 3  # bump when the preparation changes, so stale prepared files are not reused
# A source with no test folder (dataset 'folders' without data.options.test): its test split is this
# fraction of the train folder's images, chosen by a fixed hash of their file names (HELDOUT_SEED, not
# data.seed, so every seed and every run holds out the same images), never trained on or validated with.
# data.heldout_fold k holds out the k-th such fraction of the hash instead (k-fold: the folds 0 to
# harness.HELDOUT_FOLDS - 1 are disjoint and together hold out every image once); fold 0 is the default.
HELDOUT_FRACTION = 1 / HELDOUT_FOLDS
HELDOUT_SEED = "heldout"


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
    heldout: str | None = None  # how test was held out of train when the source has no test folder

    def splits(self) -> dict[str, Path]:
        """Prepared split files by name: train, val, test and test_resized where there are."""
        found = {k: getattr(self, k) for k in ("train", "val", "test", "test_resized")}
        return {k: v for k, v in found.items() if v is not None}

    def test_sets(self) -> dict[str, Path]:
        """Held-out test sets by name; a run logs each one's metrics as ``<name>_<metric>``."""
        return {k: v for k, v in self.splits().items() if k.startswith("test")}


def validation_mask(names: pd.Series, fraction: float, seed: int | str, start: float = 0.0) -> np.ndarray:
    """Seeded, order-independent rule: an image is in validation when start <= hash(seed, name) < start +
    fraction, the hash read as a number in [0, 1)."""
    def unit(name: str) -> float:
        digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    return np.array([start <= unit(n) < start + fraction for n in names], dtype=bool)


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
    return PreparedData(**splits, card=card, heldout=None if "test" in raw else heldout_rule(data.heldout_fold))


def prepare_folder(data, folder: Path, *, workers: int | None = None) -> Path:
    """One labelled Format 1 folder (digitStruct.mat, a .json or labels.csv) -> a prepared test file,
    made as ``data`` (a model's DataSpec) prepares its test split: same image size, box expansion and
    bad-file rule, so a model is scored on any folder with its own preprocessing. Keyed by the folder's
    contents and those settings under ``data.root``/prepared/evaluate-KEY/; reused when unchanged."""
    folder = Path(os.path.abspath(os.path.expanduser(folder)))
    if not folder.is_dir():
        raise DataError(folder, "no such folder of labelled images" if not folder.exists() else
                        "not a folder; give the folder that holds the images and their annotation file")
    annotation_file(folder)  # DataError naming the folder when it holds no annotations
    settings = {"version": PREPARED_VERSION, "image_size": data.image_size, "box_expand": data.box_expand,
                "long_numbers": data.long_numbers, "bad_files": data.bad_files,
                "contents": _folder_digest(folder)}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(data.root) / "prepared" / f"evaluate-{key}" / "test.h5"
    if not path.exists():
        records = _usable(data, _scan("test", folder, data.bad_files)[0].assign(source="test"))
        prepare_split(records, path, image_size=data.image_size,
                      box_expand=data.box_expand, workers=workers, desc=f"prepare {folder.name}",
                      bad_files=data.bad_files)
    PreparedSplit(path)  # a corrupt file is an error naming it, never silently reused
    return path


def heldout_rule(fold: int = 0) -> str:
    """What the run says when its test split was held out of train (HELDOUT_FRACTION, data.heldout_fold)."""
    return (f"no test folder given: test is a fixed {HELDOUT_FRACTION:.0%} of the train folder's images "
            f"(fold {fold} of {HELDOUT_FOLDS} by a hash of each file name, the same whatever the seed), "
            "never trained on")


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
    if data.recombined_length_balance:
        settings["recombined_length_balance"] = data.recombined_length_balance
    if "test" not in raw:
        settings["heldout"] = heldout_rule(data.heldout_fold)
    card = datacard.build_card(data.name, {**settings, "options": dict(data.options)}, sources, prepared)
    datacard.write_card(targets["train"].parent, card)


def _recombine(data, train: pd.DataFrame, out: Path) -> Path:
    """The folder of data.recombined images made by swapping digits between ``train``'s images."""
    return recombine.generate(train, out / "recombined", data.recombined, seed=data.seed,
                              box_expand=data.box_expand, length_balance=data.recombined_length_balance)


def _check_disjoint(raw: dict[str, Path]) -> None:
    if "test" not in raw:
        return
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
        return _usable(data, sources[split].assign(source=split))

    train = pd.concat([usable(s) for s in ("train", "extra") if s in sources], ignore_index=True)
    if "test" in sources:
        test = usable("test")
    else:  # held out of train by a fixed rule (HELDOUT_FRACTION), before validation is carved
        held = validation_mask(train["name"], HELDOUT_FRACTION, HELDOUT_SEED, start=data.heldout_fold * HELDOUT_FRACTION)
        held &= (train["source"] == "train").to_numpy()
        test, train = train[held].reset_index(drop=True), train[~held].reset_index(drop=True)
    in_val = validation_mask(train["name"], data.val_fraction, data.seed)
    return {"train": train[~in_val].reset_index(drop=True), "val": train[in_val].reset_index(drop=True),
            "test": test, "test_resized": test}


def _usable(data, records: pd.DataFrame) -> pd.DataFrame:
    """``records`` less the numbers longer than 5 digits where data.long_numbers says drop."""
    if data.long_numbers == "drop":
        records = records[records["length"] <= MAX_DIGITS]
    return records.reset_index(drop=True)


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
        if data.recombined_length_balance:
            settings["recombined_length_balance"] = data.recombined_length_balance
    if "test" not in raw:  # the fold only when not the first: the keys of existing prepared files stay
        settings["heldout"] = [HELDOUT_FRACTION, HELDOUT_SEED] + ([data.heldout_fold] if data.heldout_fold else [])
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
