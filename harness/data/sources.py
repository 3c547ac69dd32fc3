"""Where a dataset's raw images come from: the registry of datasets (`harness list datasets`).

Contract: ``DATASETS.create(name, root, **options)`` makes sure the raw data is present under ``root``
(generating or fetching it) and returns ``{"train": folder, "test": folder}`` (and ``"extra": folder``
for more training images), each folder in SVHN Format 1's layout (PNG files + annotations); a
source without a test folder (``folders`` without ``test``) leaves ``"test"`` out, and preparation
holds a fixed part of train out instead. harness.data.datasets turns them into prepared split files. This module imports no pandas, so that a
spec naming an unknown dataset is answered before any heavy import (harness.spec).
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.data import synthetic as generator
from harness.data.digitstruct import annotation_file
from harness.data.fetch import svhn_split_folder
from harness.data.mnist import composite_splits
from harness.errors import DataError, SpecError
from harness.registry import Registry

DATASETS = Registry("dataset")


@DATASETS.register
def synthetic(root: Path, *, train: int = 12000, test: int = 2000, seed: int = 1234,
              length_balance: float = 0.0) -> dict[str, Path]:
    """Synthetic street numbers rendered from fonts shipped in installed packages (embedded, offline).

    ``length_balance`` (0 to 1) flattens the training numbers' lengths from SVHN's mix (0; 4.3% have
    four digits) towards each of 1-5 digits equally often (1); the test numbers keep SVHN's mix, so
    scores stay comparable across settings.
    """
    if isinstance(length_balance, bool) or not 0.0 <= length_balance <= 1.0:
        raise SpecError(f"dataset 'synthetic': data.options.length_balance must be in [0, 1] (0 = SVHN's number "
                        f"lengths, 1 = each length equally often), got {length_balance!r}")
    # the generator's version is in the path: after an upgrade that changes the pixels the new split
    # is generated beside the old one, which stays as it was for the runs that used it
    base = Path(root) / "synthetic" / f"v{generator.GENERATOR_VERSION}-seed{seed}"
    train_dir = base / (f"train-{train}-lb{length_balance:g}" if length_balance else f"train-{train}")
    # train and test draw from different seeds, so no test image is ever a training image
    return {
        "train": generator.generate_split(train_dir, train, seed=seed, length_balance=length_balance),
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
    Without ``test``, the test split is a fixed quarter of ``train``'s images, held out by a hash of
    their file names (harness.data.datasets.HELDOUT_FRACTION), and the run says so.
    """
    if not train:
        raise SpecError("dataset 'folders' needs data.options.train: a folder of images with digitStruct.mat, "
                        "a .json or labels.csv")
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
