"""The embedded synthetic dataset: determinism, SVHN-like statistics, tight boxes, the split folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFont

from harness.data import synthetic
from harness.data.synthetic import available_fonts, generate_split, render_example
from harness.errors import DataError

SAMPLE = 800  # renders shared by the statistics tests (~5 s)
SVHN_LENGTH_P = {1: 0.1538, 2: 0.5428, 3: 0.2602, 4: 0.0429, 5: 0.0003}


@pytest.fixture(scope="module")
def sample():
    """(image, digits, boxes, digit coverage) for SAMPLE consecutive indices of one seed."""
    return [synthetic._render(2024, i) for i in range(SAMPLE)]


# ------------------------------------------------------------------------------------------- fonts


def test_fonts_come_from_installed_packages_and_draw_every_digit():
    fonts = available_fonts()
    assert len(fonts) >= 15  # DejaVu, STIX and Computer Modern families (+ Pillow's own font)
    for name in fonts:
        for size in (16, 90):  # hinting at small sizes must not lose a digit either
            font = synthetic._load_font(name, size)
            assert synthetic.font_renders_digits(font), name
            for ch in "0123456789":
                mask, _, _, _ = synthetic._glyph(name, size, ch, 0)
                assert (np.asarray(mask) > 127).sum() >= 4, (name, size, ch)


def test_font_check_rejects_fonts_without_real_digits():
    ttf = synthetic._mpl_font_dir()
    # tofu boxes, empty digit slots, an empty subset
    for name in ("LastResortHE-Regular.ttf", "STIXSizOneSymReg.ttf", "STIXNonUni.ttf",
                 "DejaVuSansDisplay.ttf"):
        if (ttf / name).is_file():
            assert not synthetic.font_renders_digits(ImageFont.truetype(str(ttf / name), 40)), name


# ------------------------------------------------------------------------------------- determinism


def test_same_seed_and_index_give_identical_pixels_and_boxes():
    for index in (0, 7, 123):
        a_img, a_digits, a_boxes = render_example(5, index)
        b_img, b_digits, b_boxes = render_example(5, index)
        assert a_img.tobytes() == b_img.tobytes() and a_img.size == b_img.size
        assert a_digits == b_digits
        np.testing.assert_array_equal(a_boxes, b_boxes)


def test_different_seeds_and_indices_differ():
    base = render_example(5, 3)[0]
    for other in (render_example(6, 3)[0], render_example(5, 4)[0]):
        assert other.size != base.size or other.tobytes() != base.tobytes()


def test_render_example_types():
    image, digits, boxes = render_example(0, 0)
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    assert all(isinstance(d, int) and 0 <= d <= 9 for d in digits)
    assert boxes.dtype == np.float64 and boxes.shape == (len(digits), 4)


@pytest.mark.parametrize("seed, index", [(-1, 0), (0, -1), (1.5, 0), (True, 0), ("1", 0)])
def test_render_example_rejects_bad_arguments(seed, index):
    with pytest.raises(ValueError):
        render_example(seed, index)


# -------------------------------------------------------------------------------------------- boxes


def test_boxes_lie_inside_the_image_and_are_tight_around_the_ink(sample):
    for image, digits, boxes, cover in sample:
        W, H = image.size
        assert 1 <= len(digits) <= 5 and boxes.shape == (len(digits), 4)
        lum = np.asarray(image.convert("L"), np.float32)
        for l, t, w, h in boxes:
            assert l >= 0 and t >= 0 and w >= 1 and h >= 1 and l + w <= W and t + h <= H
            assert float(l).is_integer() and float(h).is_integer()  # pixel boxes, like SVHN's
            l, t, w, h = int(l), int(t), int(w), int(h)
            c = cover[t:t + h, l:l + w]
            # tight: every edge of the box touches the figure's ink
            assert min(c[0].max(), c[-1].max(), c[:, 0].max(), c[:, -1].max()) > 0.02
            # and the ink is visible in the final image: it differs from the background around it
            inside = lum[t:t + h, l:l + w]
            assert np.percentile(inside, 98) - np.percentile(inside, 2) > 20


def test_boxes_of_a_number_run_left_to_right_without_much_overlap(sample):
    for _, digits, boxes, _ in sample:
        centres = boxes[:, 0] + boxes[:, 2] / 2
        assert np.all(np.diff(centres) > 0)
        for a, b in zip(boxes[:-1], boxes[1:]):
            overlap = max(0.0, a[0] + a[2] - b[0])
            assert overlap <= 0.3 * min(a[2], b[2])
        heights = boxes[:, 3]
        assert heights.max() <= 1.8 * heights.min()  # figures of one number have one size


# --------------------------------------------------------------------------------------- statistics


def test_number_lengths_are_distributed_like_svhn(sample):
    lengths = np.array([len(d) for _, d, _, _ in sample])
    for k, p in SVHN_LENGTH_P.items():
        assert abs(np.mean(lengths == k) - p) < (0.06 if p > 0.3 else 0.045), (k, np.mean(lengths == k))
    # the rare five-digit numbers occur at about 0.1% (checked on the length draw alone: it is cheap)
    rng = np.random.default_rng(0)
    five = np.mean([len(synthetic._digits(rng)) == 5 for _ in range(30000)])
    assert 0.0003 < five < 0.003
    first = np.array([d[0] for _, d, _, _ in sample])
    assert np.mean(first == 0) < 0.06 and len(set(first)) == 10


def test_length_balance_flattens_the_mix_of_number_lengths_and_changes_nothing_else():
    assert synthetic.length_weights(0) == tuple(synthetic.LENGTH_WEIGHTS)
    assert len(set(synthetic.length_weights(1))) == 1  # each length equally often
    rng = np.random.default_rng(0)
    half = np.bincount([len(synthetic._digits(rng, synthetic.length_weights(0.5))) for _ in range(30000)],
                       minlength=6)[1:] / 30000
    expected = np.sqrt(synthetic.LENGTH_WEIGHTS) / np.sqrt(synthetic.LENGTH_WEIGHTS).sum()
    np.testing.assert_allclose(half, expected, atol=0.01)  # four digits: 11%, not 4.3%
    assert 0.10 < half[3] < 0.12
    # only the length draw differs: an example that keeps its length keeps its pixels
    same = changed = 0
    for index in range(12):
        plain, balanced = render_example(7, index), render_example(7, index, 0.5)
        if len(plain[1]) == len(balanced[1]):
            assert plain[1] == balanced[1] and plain[0].tobytes() == balanced[0].tobytes()
            same += 1
        else:
            changed += 1
    assert same and changed
    assert render_example(7, 0, 0.0)[0].tobytes() == render_example(7, 0)[0].tobytes()
    for bad in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match="length_balance"):
            render_example(7, 0, bad)


def test_image_sizes_and_fill_match_svhn_percentiles(sample):
    q = [5, 25, 50, 75, 95]
    widths = np.percentile([im.width for im, _, _, _ in sample], q)
    heights = np.percentile([im.height for im, _, _, _ in sample], q)
    np.testing.assert_allclose(widths, synthetic.WIDTH_PCT, rtol=0.3)
    np.testing.assert_allclose(heights, synthetic.HEIGHT_PCT, rtol=0.3)
    fill = [(b[:, 1] + b[:, 3]).max() / im.height - b[:, 1].min() / im.height for im, _, b, _ in sample]
    np.testing.assert_allclose(np.percentile(fill, [25, 50, 75]), synthetic.FILL_PCT[1:4], rtol=0.15)
    digit_h = np.concatenate([b[:, 3] for _, _, b, _ in sample])
    assert digit_h.min() >= synthetic.MIN_DIGIT_PX - 1
    assert 22 <= np.median(digit_h) <= 38  # SVHN's median digit box height is 29 px


def test_digit_boxes_are_as_narrow_as_svhn_and_ones_narrower(sample):
    # SVHN train (the genuine sample in ../shared/data): box width/height median 0.48, 1s 0.37, others 0.50
    ratios = np.concatenate([b[:, 2] / b[:, 3] for _, _, b, _ in sample])
    ones = np.concatenate([np.asarray(d) == 1 for _, d, _, _ in sample])
    assert 0.44 <= np.median(ratios) <= 0.54, np.median(ratios)
    assert 0.32 <= np.median(ratios[ones]) <= 0.42, np.median(ratios[ones])
    assert 0.46 <= np.median(ratios[~ones]) <= 0.56, np.median(ratios[~ones])


@pytest.mark.parametrize("font", ["DejaVuSans.ttf", "DejaVuSerif-Bold.ttf", "cmr10.ttf"])
def test_a_footless_one_keeps_its_stem_and_flag_and_loses_its_foot(font):
    with_foot, left, top, advance = synthetic._glyph(font, 80, "1", 0)
    footless, left2, top2, advance2 = synthetic._glyph(font, 80, "1", 0, True)
    assert footless.height == with_foot.height and (top2, advance2) == (top, advance)
    assert footless.width < 0.8 * with_foot.width  # the foot was the widest part
    a = np.asarray(footless) > 0
    # ink at the top, the bottom, and the leftmost column only in the upper half: the flag
    assert a[0].any() and a[-1].any() and a[:, 0].any() and not a[a.shape[0] // 2:, 0].any()
    assert left <= left2 and left2 + footless.width <= left + with_foot.width  # in place: ink removed, not moved
    for ch in "07":  # other figures are as drawn
        assert np.array_equal(np.asarray(synthetic._glyph(font, 80, ch, 0, True)[0]),
                              np.asarray(synthetic._glyph(font, 80, ch, 0)[0]))


def test_images_vary(sample):
    images = [np.asarray(im, np.float32) for im, _, _, _ in sample[:200]]
    means = np.array([a.reshape(-1, 3).mean(0) for a in images])
    assert means.std(0).min() > 20  # colours and brightness vary
    # both dark figures on a light ground and light figures on a dark ground occur
    light_on_dark = 0
    for (im, _, boxes, cover), a in zip(sample[:200], images):
        l, t, w, h = boxes[0].astype(int)
        lum = a[t:t + h, l:l + w].mean(2)
        c = cover[t:t + h, l:l + w]
        if (c > 0.6).any() and (c < 0.05).any():
            light_on_dark += lum[c > 0.6].mean() > lum[c < 0.05].mean()
    assert 0.2 < light_on_dark / 200 < 0.8


# -------------------------------------------------------------------------------------------- split


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_generate_split_writes_svhn_layout_identically_for_any_worker_count(tmp_path):
    from harness.data.digitstruct import read_digitstruct

    one = generate_split(tmp_path / "w1", 20, seed=3, workers=1, progress=False)
    two = generate_split(tmp_path / "w2", 20, seed=3, workers=2, progress=False)
    assert one == tmp_path / "w1" and two == tmp_path / "w2"
    names = {f"{i}.png" for i in range(1, 21)} | {"digitStruct.mat", "manifest.json"}
    assert set(os.listdir(one)) == names
    a, b = _files(one), _files(two)
    pngs = [{k: v for k, v in files.items() if k.endswith(".png")} for files in (a, b)]
    assert pngs[0] == pngs[1]
    manifest = json.loads((one / "manifest.json").read_text())
    assert (manifest["count"], manifest["seed"]) == (20, 3)
    assert manifest["version"] == synthetic.GENERATOR_VERSION

    for folder in (one, two):
        entries = read_digitstruct(folder / "digitStruct.mat")
        assert [e.name for e in entries] == [f"{i}.png" for i in range(1, 21)]
        for i, entry in enumerate(entries):
            image, digits, boxes = render_example(3, i)
            assert entry.digits.tolist() == digits
            np.testing.assert_array_equal(entry.boxes, boxes)
            with Image.open(folder / entry.name) as png:
                assert png.mode == "RGB" and png.tobytes() == image.tobytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_generate_split_reuses_a_complete_folder_without_rewriting(tmp_path):
    out = generate_split(tmp_path / "s", 5, seed=1, workers=1, progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert generate_split(out, 5, seed=1, workers=1, progress=False) == out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


def test_generate_split_refuses_other_folders(tmp_path):
    out = generate_split(tmp_path / "s", 5, seed=1, workers=1, progress=False)
    for count, seed in ((6, 1), (5, 2)):  # other parameters: never overwritten
        with pytest.raises(DataError, match="different synthetic split") as err:
            generate_split(out, count, seed=seed, workers=1, progress=False)
        assert str(out) in str(err.value)
    (out / "3.png").unlink()  # incomplete
    with pytest.raises(DataError, match="incomplete.*3.png"):
        generate_split(out, 5, seed=1, workers=1, progress=False)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("a user's file")
    with pytest.raises(DataError, match="no manifest.json") as err:
        generate_split(foreign, 5, seed=1, workers=1, progress=False)
    assert str(foreign) in str(err.value) and (foreign / "notes.txt").read_text() == "a user's file"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        generate_split(a_file, 5, seed=1, workers=1, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder counts as absent
    assert len(os.listdir(generate_split(empty, 2, seed=1, workers=1, progress=False))) == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_new_generator_version_generates_beside_the_old_split(tmp_path, monkeypatch):
    """Upgrading the generator never trips over (or touches) data an older version generated."""
    from harness.data import sources

    old = sources.synthetic(tmp_path, train=3, test=2, seed=5)
    assert old["train"].parent.name == f"v{synthetic.GENERATOR_VERSION}-seed5"
    stamps = {p: p.stat().st_mtime_ns for split in old.values() for p in split.iterdir()}
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    new = sources.synthetic(tmp_path, train=3, test=2, seed=5)
    assert new["train"] != old["train"] and new["train"].parent.name == f"v{synthetic.GENERATOR_VERSION}-seed5"
    assert json.loads((new["train"] / "manifest.json").read_text())["version"] == synthetic.GENERATOR_VERSION
    assert {p: p.stat().st_mtime_ns for split in old.values() for p in split.iterdir()} == stamps


def test_a_length_balanced_training_split_is_its_own_folder_and_test_is_shared(tmp_path):
    from harness.data import sources
    from harness.data.digitstruct import read_digitstruct
    from harness.errors import SpecError

    plain = sources.synthetic(tmp_path, train=12, test=2, seed=5)
    balanced = sources.synthetic(tmp_path, train=12, test=2, seed=5, length_balance=0.5)
    assert balanced["train"].name == "train-12-lb0.5" and plain["train"].name == "train-12"
    assert balanced["test"] == plain["test"]  # the test numbers keep SVHN's mix
    manifest = json.loads((balanced["train"] / "manifest.json").read_text())
    assert manifest["length_balance"] == 0.5 and "length_balance" not in json.loads(
        (plain["train"] / "manifest.json").read_text())
    lengths = [len(e.digits) for e in read_digitstruct(balanced["train"] / "digitStruct.mat")]
    assert lengths == [len(render_example(5, i, 0.5)[1]) for i in range(12)]
    with pytest.raises(DataError, match="different synthetic split"):  # a plain folder is never overwritten
        generate_split(plain["train"], 12, seed=5, length_balance=0.5, workers=1, progress=False)
    with pytest.raises(SpecError, match="length_balance must be in"):
        sources.synthetic(tmp_path, train=12, test=2, seed=5, length_balance=2.0)


def test_generate_split_leaves_nothing_when_interrupted(tmp_path, monkeypatch):
    import harness.data.digitstruct

    def fail(path, annotations):
        raise KeyboardInterrupt

    monkeypatch.setattr(harness.data.digitstruct, "write_digitstruct", fail)
    with pytest.raises(KeyboardInterrupt):
        generate_split(tmp_path / "s", 3, seed=1, workers=1, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs", [dict(count=0, seed=1), dict(count=-3, seed=1), dict(count=2.0, seed=1),
                                    dict(count=2, seed=-1), dict(count=2, seed=1, workers=0)])
def test_generate_split_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        generate_split(tmp_path / "s", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_generate_split_shows_progress(tmp_path, capsys):
    generate_split(tmp_path / "s", 3, seed=1, workers=1, progress=True)
    assert "3/3" in capsys.readouterr().err
