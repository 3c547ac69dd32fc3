"""Bad image files: each stops preparation with one line naming the file and the problem (or, with
data.bad_files=skip, is left out, counted and listed in the data card); odd colour formats become the
right RGB pixels; a decompression bomb is refused before it is decoded."""

from __future__ import annotations

import io
import json
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness.data.splitfile import open_prepared
from harness.errors import HarnessError

from .builders import (
    PREPARE_ARGS,
    encoded,
    finished_outputs,
    one_line_error,
    plain_png,
    png,
    prepare,
    svhn_root,
)

BAD_IMAGES = {  # name -> (bytes, words of the error)
    "truncated.png": (plain_png()[:70], "image file is truncated"),  # the header, part of the data
    "corrupt.png": (png(40, 24, idat=b"\x78\x9c" + bytes(range(7, 250, 3))), "cannot read image"),
    "text.png": (b"street number 42\n", "cannot identify image file"),
    "empty.png": (b"", "cannot identify image file"),
    "bomb.png": (png(30000, 30000, idat=zlib.compress(bytes(64))), "decompression bomb"),
    "zero-size.png": (png(0, 0), "cannot identify image file"),
}


@pytest.mark.parametrize("name", BAD_IMAGES)
def test_bad_image_stops_preparation_naming_it(tmp_path, capsys, name):
    data, words = BAD_IMAGES[name]
    root = svhn_root(tmp_path, {"good.png": plain_png(), name: data})
    bad = root / "svhn" / "train" / name
    line = one_line_error(capsys, ["data", "prepare", "svhn", "--root", str(root), *PREPARE_ARGS],
                          f"harness: error: {bad}: ", words)
    assert "Traceback" not in line and finished_outputs(root) == []  # no split file, no data card


def test_bad_images_are_skipped_counted_and_listed(tmp_path):
    train = {"good.png": plain_png(), **{name: data for name, (data, _) in BAD_IMAGES.items()}}
    root = svhn_root(tmp_path, train)
    data = prepare(root, "data.bad_files=skip")
    with open_prepared(data.train) as f:
        assert list(f["names"].asstr()[:]) == ["good.png"]
    card = json.loads(data.card.read_text())["sources"]["train"]
    unreadable = card["anomalies"]["unreadable"]
    assert sorted(unreadable["files"]) == sorted(BAD_IMAGES) and unreadable["count"] == len(BAD_IMAGES)
    assert (card["annotated"], card["prepared"]) == (len(train), 1)
    for name, (_, words) in BAD_IMAGES.items():
        assert words in unreadable["details"][name], unreadable["details"][name]
    assert all(name in data.card.with_name("card.md").read_text() for name in BAD_IMAGES)


def test_a_jpeg_named_png_is_read_by_its_content(tmp_path):
    """Pillow reads a file by its bytes, not its name: a JPEG saved as .png is a good image."""
    root = svhn_root(tmp_path, {"photo.png": encoded(Image.new("RGB", (40, 24), (200, 10, 10)), "JPEG")})
    data = prepare(root)
    with open_prepared(data.train) as f:
        crop = f["images"][0].astype(int)
    assert np.abs(crop - (200, 10, 10)).max() <= 8  # JPEG is lossy; the colour is the photo's


def _sixteen_bit(width: int, height: int, colour: int, *values: int) -> bytes:
    row = b"\0" + np.tile(np.array(values, ">u2"), width).tobytes()
    return png(width, height, depth=16, colour=colour, rows=row * height)


def _palette(transparent: bool) -> bytes:
    image = Image.new("P", (40, 24), 1)
    image.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    if transparent:
        image.info["transparency"] = 1  # a tRNS chunk: the colour is kept, its alpha dropped
    return encoded(image)


COLOUR_MODES = {  # name -> (file, the RGB pixel every crop pixel must have)
    "grey.png": (encoded(Image.new("L", (40, 24), 90)), (90, 90, 90)),
    "grey-2bit.png": (png(40, 24, depth=2, colour=0, rows=(b"\0" + bytes([0b10101010] * 10)) * 24),
                      (170, 170, 170)),
    "bilevel.png": (encoded(Image.new("1", (40, 24), 1)), (255, 255, 255)),
    "palette.png": (_palette(False), (10, 20, 30)),
    "palette-alpha.png": (_palette(True), (10, 20, 30)),
    "rgba.png": (encoded(Image.new("RGBA", (40, 24), (1, 2, 3, 128))), (1, 2, 3)),
    "grey-alpha.png": (encoded(Image.new("LA", (40, 24), (90, 10))), (90, 90, 90)),
    "grey16.png": (encoded(Image.fromarray(np.full((24, 40), 50000, np.uint16))), (194, 194, 194)),
    "rgb16.png": (_sixteen_bit(40, 24, 2, 40000, 20000, 1000), (156, 78, 3)),
    "rgba16.png": (_sixteen_bit(40, 24, 6, 40000, 20000, 1000, 65535), (156, 78, 3)),
    "grey-alpha16.png": (_sixteen_bit(40, 24, 4, 50000, 65535), (195, 195, 195)),
    "cmyk.jpg.png": (encoded(Image.new("CMYK", (40, 24), (0, 255, 255, 0)), "JPEG"), (255, 0, 0)),
}


@pytest.fixture(scope="module")
def colour_modes(tmp_path_factory):
    data = prepare(svhn_root(tmp_path_factory.mktemp("modes"), {k: v for k, (v, _) in COLOUR_MODES.items()}))
    with open_prepared(data.train) as f:
        crops = dict(zip(f["names"].asstr()[:], f["images"][:]))
    card = json.loads(data.card.read_text())["sources"]["train"]["anomalies"]
    return crops, card


@pytest.mark.parametrize("name", COLOUR_MODES)
def test_colour_formats_become_the_right_rgb_pixels(colour_modes, name):
    crops, card = colour_modes
    with Image.open(io.BytesIO(COLOUR_MODES[name][0])) as image:
        mode = image.mode
    assert (crops[name] == COLOUR_MODES[name][1]).all(), (name, mode, crops[name][0, 0])
    if mode != "RGB" or name.startswith("rgb16"):  # what is not plain 8-bit RGB is listed as converted
        assert name in card["converted"]["files"]


@pytest.mark.parametrize("name", ["bomb.png", "text.png", "truncated.png"])
def test_predict_names_a_bad_image_and_a_folder_skips_it(model_file, tmp_path, capsys, name):
    from harness.cli import main

    (tmp_path / name).write_bytes(BAD_IMAGES[name][0])
    one_line_error(capsys, ["predict", str(model_file), str(tmp_path / name)], str(tmp_path / name),
                   "cannot read the image")
    (tmp_path / "good.png").write_bytes(plain_png())
    out = tmp_path / "out.csv"
    assert main(["predict", str(model_file), str(tmp_path), "--csv", str(out)]) == 0
    assert pd.read_csv(out)["path"].tolist() == [str(tmp_path / "good.png")]  # counted, listed, skipped
    assert f"skipped 1 unreadable image(s):\n  {tmp_path / name}: cannot read the image" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["bomb.png", "text.png", "truncated.png"])
def test_the_served_model_refuses_a_bad_image_in_one_line(model_file, name):
    from harness.evaluation.reader import NumberReader

    reader = NumberReader.load(model_file)
    with pytest.raises(HarnessError, match=r"^row 7: cannot read the image \(") as info:
        reader.predict(pd.DataFrame({"image": [BAD_IMAGES[name][0]]}, index=[7]))
    assert "\n" not in str(info.value)
