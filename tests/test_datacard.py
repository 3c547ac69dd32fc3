"""Data card: every anomaly class shown by a real file, what each data.* policy does with it, and the
card of the genuine SVHN samples (the extra sample names 37 missing files)."""

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_records import write_split

from harness.data import datasets
from harness.data.digitstruct import Annotation, write_digitstruct
from harness.data.fetch import fetch_svhn
from harness.data.splitfile import open_prepared
from harness.errors import DataError
from harness.spec import load_spec

TAN = (200, 160, 120)
BOX = [4.0, 4.0, 10.0, 16.0]  # one digit box inside every 40x24 image


def png16_rgb(path: Path, width: int, height: int) -> None:
    """A 16-bit-per-channel RGB PNG (PIL cannot write one)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + np.full((width, 3), 40000, ">u2").tobytes() for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def odd_split(folder: Path) -> dict[str, str]:
    """A Format 1 split with one image per anomaly class; returns name -> the class it shows."""
    folder.mkdir(parents=True)
    entries, shows = [], {}

    def add(name, image, digits="3", boxes=(BOX,), anomaly=None):
        if image is not None:
            image.save(folder / name)
        entries.append(Annotation(name, np.array([int(d) for d in digits]), np.array(boxes, float)))
        if anomaly:
            shows[name] = anomaly

    rgb = Image.new("RGB", (40, 24), TAN)
    add("plain.png", rgb)
    add("grey.png", Image.new("L", (40, 24), 90), anomaly="converted")
    palette = Image.new("P", (40, 24), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    add("palette.png", palette, anomaly="converted")
    add("alpha.png", Image.new("RGBA", (40, 24), (1, 2, 3, 128)), anomaly="converted")
    add("grey16.png", Image.fromarray(np.full((24, 40), 50000, np.uint16)), anomaly="converted")
    png16_rgb(folder / "colour16.png", 40, 24)
    add("colour16.png", None, anomaly="converted")
    add("missing.png", None, anomaly="missing")
    rgb.save(folder / "truncated.png")
    (folder / "truncated.png").write_bytes((folder / "truncated.png").read_bytes()[:70])  # header, part of IDAT
    add("truncated.png", None, anomaly="unreadable")
    (folder / "notanimage.png").write_bytes(b"this is not a PNG file")
    add("notanimage.png", None, anomaly="unreadable")
    add("outside.png", rgb, boxes=[[30, 10, 20, 20]], anomaly="box_outside_image")  # reaches x=50 > 40
    add("nocrop.png", rgb, boxes=[[60, 40, 10, 10]], anomaly="no_crop")  # wholly outside
    add("zerobox.png", rgb, digits="12", boxes=[BOX, [0, 0, 0, 16]], anomaly="box_empty")
    add("long.png", rgb, digits="123456", boxes=[BOX] * 6, anomaly="long_number")
    add("twice.png", rgb, anomaly="duplicate_name")
    add("twice.png", None)
    write_digitstruct(folder / "digitStruct.mat", entries)
    return shows


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    base = tmp_path_factory.mktemp("odd")
    shows = odd_split(base / "train")
    write_split(base / "test", ["7", "42", "305"])
    root = base / "data"
    fetch_svhn(root, ["train"], source=base / "train")
    fetch_svhn(root, ["test"], source=base / "test")
    return root, shows


def prepare_svhn(root: Path, *overrides: str) -> datasets.PreparedData:
    spec = load_spec(None, ["data.name=svhn", f"data.root={root}", "data.val_fraction=0", *overrides])
    return datasets.prepare(spec.data, workers=1)


def anomalies(data: datasets.PreparedData, split: str = "train") -> dict:
    return json.loads(data.card.read_text())["sources"][split]["anomalies"]


def names_in(path: Path) -> list[str]:
    with open_prepared(path) as f:
        return list(f["names"].asstr()[:])


def test_every_anomaly_class_is_listed_with_its_files(odd):
    root, shows = odd
    data = prepare_svhn(root, "data.bad_files=skip")
    found = anomalies(data)
    expected: dict[str, list] = {}
    for name, kind in shows.items():
        expected.setdefault(kind, []).append(name)
    expected["box_outside_image"].append("nocrop.png")  # its box lies wholly outside
    assert {kind: sorted(entry["files"]) for kind, entry in found.items()} == \
        {kind: sorted(names) for kind, names in expected.items()}
    assert all(entry["count"] == len(entry["files"]) and entry["action"] for entry in found.values())
    assert found["converted"]["by_mode"] == {"I;16": ["grey16.png"], "L": ["grey.png"], "P": ["palette.png"],
                                             "RGB;16": ["colour16.png"], "RGBA": ["alpha.png"]}
    assert "kept as the length class '>5'" in found["long_number"]["action"]
    assert "truncated" in found["unreadable"]["details"]["truncated.png"]  # PIL's own words, at decoding
    card = json.loads(data.card.read_text())["sources"]["train"]
    assert (card["annotated"], card["readable"], card["prepared"]) == (15, 11, 9)  # 15 entries, 14 names
    markdown = data.card.with_name("card.md").read_text()
    for kind, names in expected.items():
        assert f"**{kind}**" in markdown and all(f"`{n}" in markdown for n in names)


def test_skipped_images_are_out_and_the_others_converted(odd):
    root, _ = odd
    data = prepare_svhn(root, "data.bad_files=skip")
    kept = ["plain.png", "grey.png", "palette.png", "alpha.png", "grey16.png", "colour16.png",
            "outside.png", "zerobox.png", "long.png"]
    assert names_in(data.train) == kept
    assert json.loads(data.card.read_text())["sources"]["train"]["prepared"] == len(kept)
    with open_prepared(data.train) as f:
        images, length = f["images"][:], f["length"][:]
    assert (images[kept.index("plain.png")] == TAN).all()
    assert (images[kept.index("grey.png")] == 90).all()
    assert (images[kept.index("palette.png")] == (10, 20, 30)).all()
    assert (images[kept.index("alpha.png")] == (1, 2, 3)).all()
    assert (images[kept.index("grey16.png")] == 50000 // 257).all()
    assert (images[kept.index("colour16.png")] == 40000 >> 8).all()
    assert length[kept.index("long.png")] == 6  # the class ">5"
    assert length[kept.index("zerobox.png")] == 2


def test_long_numbers_can_be_dropped_and_are_still_listed(odd):
    root, _ = odd
    data = prepare_svhn(root, "data.bad_files=skip", "data.long_numbers=drop")
    assert "long.png" not in names_in(data.train)
    entry = anomalies(data)["long_number"]
    assert entry["files"] == ["long.png"] and entry["action"].startswith("dropped")


@pytest.mark.parametrize("name, problem", [
    ("missing.png", "are missing: missing.png"),
    ("notanimage.png", "not a readable image"),
    ("truncated.png", "cannot read image"),
    ("nocrop.png", "nothing to crop"),
    ("twice.png", "names these images more than once: twice.png"),
])
def test_bad_files_error_by_default_naming_the_file(tmp_path, name, problem):
    raw = tmp_path / "raw"
    odd_split(raw)
    keep = {name, "plain.png"}
    folder = tmp_path / "train"
    folder.mkdir()
    from harness.data.digitstruct import read_digitstruct

    entries = [a for a in read_digitstruct(raw / "digitStruct.mat") if a.name in keep]
    for a in entries:
        if (raw / a.name).exists() and not (folder / a.name).exists():
            (folder / a.name).write_bytes((raw / a.name).read_bytes())
    write_digitstruct(folder / "digitStruct.mat", entries)
    write_split(tmp_path / "test", ["7"])
    root = tmp_path / "data"
    fetch_svhn(root, ["train"], source=folder)
    fetch_svhn(root, ["test"], source=tmp_path / "test")
    with pytest.raises(DataError, match=problem) as err:
        prepare_svhn(root)
    assert name in err.value.path or name in err.value.problem
    assert not list((root / "prepared").glob("*/card.json"))


# ------------------------------------------------------------------------------ genuine samples

def test_genuine_extra_sample_skips_its_37_missing_files(shared_data, tmp_path):
    sample = shared_data / "svhn-sample" / "extra"
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "digitStruct.mat").symlink_to(sample / "digitStruct_first40.mat")
    for png in sample.glob("*.png"):
        (extra / png.name).symlink_to(png)
    write_split(tmp_path / "train", [str(i) for i in range(30)])
    write_split(tmp_path / "test", ["7", "42"])
    root = tmp_path / "data"
    for split in ("train", "test", "extra"):
        fetch_svhn(root, [split], source=tmp_path / split)
    with pytest.raises(DataError, match="37 of 40 image files named in digitStruct.mat are missing"):
        prepare_svhn(root, "data.options.extra=true")
    data = prepare_svhn(root, "data.options.extra=true", "data.bad_files=skip", "data.val_fraction=0.2")
    card = json.loads(data.card.read_text())
    source = card["sources"]["extra"]
    assert (source["annotated"], source["readable"], source["prepared"]) == (40, 3, 3)
    assert source["anomalies"]["missing"]["files"] == [f"extra/{i}.png" for i in range(4, 41)]
    assert list(source["anomalies"]) == ["missing"]
    prepared = names_in(data.train) + names_in(data.val)
    assert sorted(n for n in prepared if n.startswith("extra/")) == ["extra/1.png", "extra/2.png", "extra/3.png"]
    assert card["prepared"]["train"]["from"] == ["train", "extra"]
