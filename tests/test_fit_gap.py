"""benchmarks/fit_gap.py: a model read on its source training images, its recombined ones and the held-out
test, each figure what evaluation gives on those images; a bad folder is one line and exit 1."""

import re
import sys

import numpy as np
from conftest import REPO
from test_recombine import write_folder

from harness.backend import set_random_seed
from harness.data import datasets
from harness.data.splitfile import PreparedSplit
from harness.evaluation.evaluate import evaluate_model, predict_logits
from harness.models.heads import evaluate_arrays
from harness.spec import load_spec
from harness.training.setup import build_for, compile_for

sys.path.insert(0, str(REPO / "benchmarks"))

import fit_gap  # noqa: E402

KEYS = ("sequence_accuracy", "length_accuracy", "digit_accuracy")


def test_each_group_is_read_as_evaluation_reads_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_folder(tmp_path / "mine" / "train", {f"{i}.png": str(10 + 7 * i) for i in range(1, 25)})
    write_folder(tmp_path / "mine" / "test", {f"{i}.png": str(3 * i) for i in range(1, 9)})
    spec = load_spec(None, ["data.name=folders", "data.root=data", "data.options.train=mine/train",
                            "data.options.test=mine/test", "data.val_fraction=0", "data.recombined=30",
                            "model.name=cnn_tiny"])
    data = datasets.prepare(spec.data, workers=1)
    set_random_seed(0)
    model, train = build_for(spec, data.train), PreparedSplit(data.train)
    compile_for(spec, model, steps_per_epoch=4)
    model.fit(train.images(), train.targets(), batch_size=16, epochs=8, verbose=0)  # some digits learnt
    model.save(tmp_path / "model.keras")

    assert fit_gap.main([str(tmp_path / "model.keras"), str(data.train.parent), "--limit", "20"]) == 0
    rows = {m.group(1).strip(): (int(m.group(2)), float(m.group(3)), float(m.group(4)), float(m.group(5)))
            for m in re.finditer(r"^(train, source images|train, recombined numbers|test \(held out\))\s+([\d,]+)"
                                 r"\s+([\d.]+)% \([\d.-]+\)\s+([\d.]+)%\s+([\d.]+)%$", capsys.readouterr().out, re.M)}
    recombined = np.array([n.startswith("recombined/") for n in PreparedSplit(data.train).names()])
    first = np.cumsum(recombined) <= 20
    assert rows["train, source images"][0] == (~recombined).sum() == 24
    assert rows["train, recombined numbers"][0] == 20  # the first 20 of 30
    test = evaluate_model(model, data.test)
    assert rows["test (held out)"] == (8, *(round(100 * test[k], 2) for k in KEYS))
    logits, targets = predict_logits(model, data.train), PreparedSplit(data.train).targets()
    for label, chosen in (("train, source images", ~recombined), ("train, recombined numbers", recombined & first)):
        got = evaluate_arrays(targets[chosen], logits[chosen])
        assert rows[label][1:] == tuple(round(100 * got[k], 2) for k in KEYS), label
    # groups told apart: the figures differ between them
    assert len({r[3] for r in rows.values()}) > 1


def test_a_folder_without_prepared_files_is_one_line(tmp_path, capsys):
    assert fit_gap.main([str(tmp_path / "none.keras"), str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.keras" in err[0]
