"""Real malformed files, tiny raw splits in SVHN Format 1's layout, and the checks every bad-input
test makes: a HarnessError naming the file and the problem, nothing that looks finished."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Mapping

import h5py
import numpy as np
import pytest
from PIL import Image

from harness.data.digitstruct import Annotation, write_digitstruct
from harness.errors import HarnessError

REPO = Path(__file__).resolve().parents[2]
BOX = (4.0, 4.0, 10.0, 16.0)  # the one digit box of every 40x24 test image
TAN = (200, 160, 120)
SIZE = ["data.image_size=16", "augment.crop_size=16"]  # tiny prepared crops


# ---------------------------------------------------------------------------------- image files

def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, *, depth: int = 8, colour: int = 2, idat: bytes | None = None,
        rows: bytes | None = None) -> bytes:
    """A PNG written byte by byte, for what Pillow will not write: 16-bit colour, a header that lies
    about the size, damaged compressed data. ``rows``: the raw scanlines (filter bytes included)."""
    if idat is None:
        idat = zlib.compress(rows if rows is not None else b"")
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def plain_png(colour: tuple[int, int, int] = TAN) -> bytes:
    return encoded(Image.new("RGB", (40, 24), colour))


# ---------------------------------------------------------------------------------- raw splits

def annotation(name: str, digits: str = "3", boxes=None) -> Annotation:
    boxes = [BOX] * len(digits) if boxes is None else boxes
    return Annotation(name, np.array([int(d) for d in digits]), np.array(boxes, dtype=np.float64))


def write_split(folder: Path, images: Mapping[str, bytes | None], entries: list[Annotation] | None = None,
                kind: str = "mat") -> Path:
    """Image files (None: named but not written) and their annotations (one digit "3" in BOX each
    unless ``entries``) as digitStruct.mat, JSON or labels.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        if data is not None:
            (folder / name).write_bytes(data)
    entries = [annotation(name) for name in images] if entries is None else entries
    if kind == "mat":
        try:
            write_digitstruct(folder / "digitStruct.mat", entries)
        except HarnessError:  # it refuses to write bad entries: they are what some tests need
            h5py_digitstruct(folder / "digitStruct.mat", entries)
    elif kind == "json":
        (folder / "digitStruct.json").write_text(json.dumps([
            {"filename": a.name, "boxes": [dict(zip(("label", "left", "top", "width", "height"),
                                                    (float(d or 10), *map(float, box))))
                                           for d, box in zip(a.digits.tolist(), a.boxes.tolist())]}
            for a in entries]))
    else:
        rows = ["filename,label,left,top,width,height"]
        rows += [",".join([a.name, str(d or 10), *map(str, box)])
                 for a in entries for d, box in zip(a.digits.tolist(), a.boxes.tolist())]
        (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def h5py_digitstruct(path: Path, entries: list[Annotation]) -> None:
    """MATLAB's layout written with h5py's high-level API, whatever the names and values are."""
    with h5py.File(path, "w") as f:
        refs, names, bboxes = f.create_group("#refs#"), [], []
        for i, a in enumerate(entries):
            codes = np.array([ord(c) for c in a.name], dtype=np.uint16).reshape(-1, 1)
            names.append(refs.create_dataset(f"n{i}", data=codes).ref)
            group = refs.create_group(f"b{i}")
            columns = {"label": [float(d or 10) for d in a.digits.tolist()],
                       **{k: a.boxes[:, j].tolist() for j, k in enumerate(("left", "top", "width", "height"))}}
            for key, values in columns.items():
                if len(values) == 1:
                    group.create_dataset(key, data=np.reshape(values, (1, 1)))
                else:
                    targets = [refs.create_dataset(f"s{i}{key}{j}", data=[[v]]).ref for j, v in enumerate(values)]
                    group.create_dataset(key, data=np.array(targets, h5py.ref_dtype).reshape(-1, 1))
            bboxes.append(group.ref)
        top = f.create_group("digitStruct")
        top.create_dataset("name", data=np.array(names, h5py.ref_dtype).reshape(-1, 1))
        top.create_dataset("bbox", data=np.array(bboxes, h5py.ref_dtype).reshape(-1, 1))


def svhn_root(base: Path, train: Mapping[str, bytes | None], entries: list[Annotation] | None = None,
              kind: str = "mat") -> Path:
    """A data root whose svhn/train split is ``train`` and whose svhn/test split is three good images."""
    root = base / "data"
    write_split(root / "svhn" / "train", train, entries, kind)
    write_split(root / "svhn" / "test", {f"{i}.png": plain_png((i, 90, 90)) for i in (1, 2, 3)})
    return root


def prepare(root: Path, *overrides: str):
    """harness.data.datasets.prepare for SVHN under ``root``: tiny crops, no validation split, one process."""
    from harness.data import datasets
    from harness.spec import load_spec

    spec = load_spec(None, ["data.name=svhn", f"data.root={root}", "data.val_fraction=0", *SIZE, *overrides])
    return datasets.prepare(spec.data, workers=1)


PREPARE_ARGS = ["--set", "data.val_fraction=0", "--set", SIZE[0], "--set", SIZE[1], "--workers", "1"]


# ---------------------------------------------------------------------------------- the checks

def finished_outputs(root: Path) -> list[Path]:
    """Files under ``root``/prepared that look finished: split files and data cards outside the
    hidden work folders."""
    prepared = root / "prepared"
    if not prepared.exists():
        return []
    return [p for p in prepared.rglob("*") if p.is_file() and p.suffix in (".h5", ".json", ".md")
            and not any(part.startswith(".") for part in p.relative_to(prepared).parts)]


def data_error(call, path: Path | str, *words: str) -> HarnessError:
    """``call()`` raises a HarnessError whose message starts with ``path`` and holds ``words``."""
    with pytest.raises(HarnessError) as info:
        call()
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert getattr(info.value, "path", str(path)) == str(path), message
    for word in words:
        assert word in message, message
    return info.value


def one_line_error(capsys, argv: list[str], *words: str) -> str:
    """``harness ARGV`` in this process fails with exit status 2 and one line naming ``words``."""
    from harness.cli import main

    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("harness: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def child(code: str, *args: str, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -c CODE ARGS`` in its own process (killed on timeout): for limits and signals that
    must not reach the test process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# A child's first lines: files it writes may not grow past LIMIT bytes (the kernel's RLIMIT_FSIZE;
# SIGXFSZ ignored, so a write past it fails with EFBIG as a full disk fails with ENOSPC).
FILE_SIZE_LIMIT = """
import resource, signal, sys
def limit_file_size(nbytes):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, resource.RLIM_INFINITY))
"""
