"""`harness report`: reports rebuilt from a real MLflow store (SQLite + artifacts) built in the test.

Runs are logged with known params, per-epoch histories, held-out metrics, tags and artifacts (the spec,
the data card, per-example predictions written by harness.evaluation.evaluate from a real prepared split file);
the expected table cells below are written out by hand from those inputs.
"""

import base64
import gzip
import io
import json
import re
from pathlib import Path

import h5py
import mlflow  # noqa: E402  (after harness: it imports the Keras backend quietly first)
import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param  # noqa: E402
from PIL import Image

from harness import LENGTH_CLASSES, MAX_DIGITS
from harness.cli import main
from harness.errors import HarnessError
from harness.evaluation.evaluate import Evaluation, example_table, write_predictions
from harness.evaluation.intervals import wilson
from harness.reporting import report

LOGITS = LENGTH_CLASSES + MAX_DIGITS * 10  # the heads' outputs: length classes, then 10 per digit
N = 40


def ci(right: int, total: int) -> str:
    """The interval a report shows beside an accuracy of right / total."""
    from harness.evaluation.intervals import wilson

    low, high = wilson(right, total)
    return f"({100 * low:.1f}–{100 * high:.1f})"
WRONG = {3: 9.0, 7: 4.0, 11: 12.0, 20: 6.0, 33: 2.5}  # example -> logit margin of the wrong first digit


# ----------------------------------------------------------------------------------- a test split

def split_targets() -> np.ndarray:
    rng = np.random.default_rng(7)
    targets = np.full((N, 6), 10, dtype=np.int32)
    for i in range(N):
        length = 1 + i % 4 if i != 5 else 0  # lengths 1..4, and one number-less image
        targets[i, 0] = length
        targets[i, 1:1 + length] = rng.integers(0, 10, length)
    return targets


def split_logits(targets: np.ndarray) -> np.ndarray:
    """Correct everywhere except the first digit of the WRONG examples (read as true + 1)."""
    logits = np.zeros((N, LOGITS), dtype=np.float32)
    for i, row in enumerate(targets):
        logits[i, row[0]] = 12.0
        for p in range(5):
            digit = row[1 + p] if p < row[0] else 0
            if p == 0 and i in WRONG:
                logits[i, 7 + p * 10 + (digit + 1) % 10] = WRONG[i]
            else:
                logits[i, 7 + p * 10 + digit] = 8.0
    return logits


def write_split(path: Path, targets: np.ndarray) -> Path:
    """A prepared split file in harness.data.prepare's layout; image i is filled with the value i."""
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=np.repeat(np.arange(N, dtype=np.uint8), 64 * 64 * 3).reshape(N, 64, 64, 3))
        f.create_dataset("length", data=targets[:, 0].astype(np.uint8))
        f.create_dataset("digits", data=targets[:, 1:].astype(np.uint8))
        f.create_dataset("names", data=[f"{i}.png" for i in range(N)], dtype=h5py.string_dtype("utf-8"))
        f.attrs.update(format_version=1, image_size=64, box_expand=0.3, count=N, fingerprint="f" * 64)
    return path


# -------------------------------------------------------------------------------------- the store

PARAMS = {"model.name": "cnn_tiny", "augment.policy": "paper", "augment.crop_size": "54", "data.name": "synthetic",
          "data.options.train": "240", "data.options.test": "60", "train.epochs": "3",
          "train.learning_rate": "0.002", "model.parameters": "86449", "tracking.experiment": "golden"}
TAGS = {"harness.command": "harness train experiments/smoke.yaml", "harness.backend": "tensorflow",
        "harness.device": "CPU (x86_64, 2 cores)", "harness.python": "3.11.9",
        "mlflow.source.git.commit": "0123456789abcdef0123456789abcdef01234567", "harness.git_dirty": "true",
        "version.keras": "3.15.1", "version.mlflow": "3.17.2", "harness.dataset_fingerprint": "cd" * 32}
CARD = {"dataset": "synthetic", "settings": {"long_numbers": "drop"},
        "sources": {"test": {"annotated": 42, "readable": 41, "prepared": 40, "anomalies": {
            "unreadable": {"count": 1, "action": "left out (data.bad_files: skip)", "files": ["9.png"]},
            "long_number": {"count": 1, "action": "dropped (data.long_numbers: drop)", "files": ["3.png"]}}}},
        "prepared": {"val": {"file": "val.h5", "images": 50, "image_size": 64, "from": ["train"],
                             "length_histogram": {"1": 20, "2": 20, "3": 10}, "fingerprint": "ef" * 32},
                     "test": {"file": "test.h5", "images": 40, "image_size": 64, "from": ["test"],
                              "length_histogram": {"0": 1, "1": 10, "2": 10, "3": 10, "4": 9, "5": 0, ">5": 0},
                              "fingerprint": "ab" * 32}}}


def held_out(prefix: str, values: list[float]) -> dict:
    """Held-out metrics as training logs them: ``<prefix>_sequence_accuracy`` and the rest."""
    keys = ["sequence_accuracy", "length_accuracy", *[f"digit{p}_accuracy" for p in range(1, 6)],
            "digit_accuracy", "coverage_at_98", "examples"]
    return {f"{prefix}_{k}": v for k, v in zip(keys, values)}


def log_run(client, experiment_id, name, *, params, history, metrics, tags=TAGS, status="FINISHED",
            parent=None, predictions=None, card=True):
    run_tags = {**tags, **({"mlflow.parentRunId": parent} if parent else {})}
    run = client.create_run(experiment_id, run_name=name, tags=run_tags)
    run_id = run.info.run_id
    rows = [Metric(k, float(v), 1_700_000_000_000 + step, step) for k, values in history.items()
            for step, v in enumerate(values, 1)]
    rows += [Metric(k, float(v), 1_700_000_100_000, 0) for k, v in metrics.items()]
    client.log_batch(run_id, metrics=rows, params=[Param(k, v) for k, v in params.items()])
    client.log_text(run_id, f"name: {name}\nmodel:\n  name: {params.get('model.name')}\n", "spec.yaml")
    if card:
        client.log_dict(run_id, CARD, "data_card.json")
    for path in predictions or []:
        client.log_artifact(run_id, str(path), "predictions")
    client.set_terminated(run_id, status)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An experiment `golden` of three runs and a sweep (parent + four trials) in experiment `sweeps`."""
    work = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
        client = mlflow.tracking.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
        targets = split_targets()
        split = write_split(work / "test.h5", targets)
        evaluation = Evaluation({}, example_table(targets, split_logits(targets), [f"{i}.png" for i in range(N)]))
        predictions = write_predictions(evaluation, split, work / "predictions", "test", worst=4)

        golden = client.create_experiment("golden")
        ids = {}
        ids["alpha"] = log_run(
            client, golden, "alpha", params={**PARAMS, "data.name": "svhn"},
            history={"loss": [3.0, 2.0, 1.5], "val_loss": [2.5, 1.8, 1.4], "sequence_accuracy": [0.2, 0.5, 0.7],
                     "val_sequence_accuracy": [0.3, 0.6, 0.8], "images_per_sec": [100, 250, 260]},
            metrics={**held_out("test", [0.965, 0.98, 0.99, 0.975, 0.96, 0.5, float("nan"), 0.97, 0.9, 60]),
                     "wall_seconds": 468}, predictions=predictions)
        ids["beta"] = log_run(
            client, golden, "beta", params={**PARAMS, "train.epochs": "5", "augment.policy": "none"},
            history={"loss": [2.0, 1.0], "val_loss": [1.5, 1.2], "val_sequence_accuracy": [0.7, 0.75],
                     "images_per_sec": [1000, 1300]},
            metrics={**held_out("test", [0.9, 0.95, 0.96, 0.91, 0.8, 0.7, 0.6, 0.92, 0.55, 60]),
                     **held_out("test_resized", [0.88, 0.94, 0.95, 0.9, 0.79, 0.69, 0.59, 0.91, 0.5, 60]),
                     "wall_seconds": 45}, predictions=predictions)
        ids["gamma"] = log_run(client, golden, "gamma", params=PARAMS, history={"val_sequence_accuracy": [0.1]},
                               metrics={}, status="FAILED", card=False)

        # a sweep as harness.sweeps.sweep logs one: the parent names the objective; trials have validation
        # metrics per epoch (no held-out evaluation) and their best epoch's score
        sweeps = client.create_experiment("sweeps")
        parent = client.create_run(sweeps, run_name="lr-sweep", tags={
            "harness.command": "harness sweep experiments/lr.yaml", "harness.kind": "sweep",
            "harness.objective": "val_sequence_accuracy"})
        client.log_batch(parent.info.run_id, params=[Param("sweep.objective", "val_sequence_accuracy"),
                                                     Param("sweep.direction", "max")])
        client.set_terminated(parent.info.run_id)
        trials = {"t0": (0.001, "paper", [0.5, 0.8, 0.7]), "t1": (0.003, "none", [0.6, 0.9]),
                  "t2": (0.01, "paper", [0.4, 0.45]), "t3": (0.0003, "none", [0.3, 0.5, 0.85])}
        for name, (lr, policy, val) in trials.items():
            ids[name] = log_run(
                client, sweeps, name, params={**PARAMS, "train.learning_rate": str(lr), "augment.policy": policy},
                history={"val_sequence_accuracy": val, "val_length_accuracy": [v + 0.05 for v in val],
                         "val_digit1_accuracy": [v + 0.1 for v in val], "loss": [1.0] * len(val)},
                metrics={"best_val_sequence_accuracy": max(val), "trial_seconds": 30 * len(val)},
                tags={**TAGS, "harness.kind": "trial"}, parent=parent.info.run_id)
        ids["sweep"] = parent.info.run_id
        yield work, client, ids, targets


def table_after(text: str, heading: str) -> list[list[str]]:
    """The first markdown table after ``heading``: rows of cells (header and rule dropped)."""
    lines = text[text.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("| "):
            break
        rows.append(line[2:-2].split(" | "))
    return rows


def opens(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.load()
        return image.size


# ------------------------------------------------------------------------------------------ tests

def test_golden_experiment_report(store):
    work, client, ids, _ = store
    path = report.generate_report(experiment="golden")
    assert path == Path("runs/reports/experiment-golden/README.md")
    text = (work / path).read_text()
    assert text.startswith("# Experiment golden\n\nRegenerate: `harness report --experiment golden "
                           "--out runs/reports/experiment-golden`")

    a, b, g = ids["alpha"][:8], ids["beta"][:8], ids["gamma"][:8]
    info = client.get_run(ids["gamma"]).info  # no wall_seconds metric: the run's own start and end
    gamma_wall = f"{(info.end_time - info.start_time) / 1000:.0f} s"
    # every accuracy with its 95% Wilson interval (right of total: 60 images, the digits present in the logged
    # predictions); the gaps to the published results only for SVHN's test split (alpha), none for synthetic data
    assert table_after(text, "### Test set `test`") == [
        [f"alpha `{a}`", "cnn_tiny", "paper", "svhn (test=60, train=240)", "3", "7.8 min", "250",
         f"**96.50%** {ci(58, 60)}", f"98.00% {ci(59, 60)}", f"99.00% {ci(39, 39)}", f"97.50% {ci(28, 29)}",
         f"96.00% {ci(19, 20)}", f"50.00% {ci(5, 10)}", "–", f"97.00% {ci(95, 98)}", "90.00%",
         "✅ +0.47 pp", "✅ +4.10 pp"],
        [f"beta `{b}`", "cnn_tiny", "none", "synthetic (test=60, train=240)", "2 of 5", "45 s", "1,150",
         f"**90.00%** {ci(54, 60)}", f"95.00% {ci(57, 60)}", f"96.00% {ci(37, 39)}", f"91.00% {ci(26, 29)}",
         f"80.00% {ci(16, 20)}", f"70.00% {ci(7, 10)}", "60.00%", f"92.00% {ci(90, 98)}", "55.00%", "–", "–"],
        [f"gamma `{g}`", "cnn_tiny", "paper", "synthetic (test=60, train=240)", "1 of 3", gamma_wall, "–",
         "–", "–", "–", "–", "–", "–", "–", "–", "–", "–", "–"],
        ["Goodfellow et al. 2014 (SVHN)", "", "", "", "", "", "", "96.03%", "–", "–", "–", "–", "–", "–",
         "97.84%", "–", "", ""],
        ["Report, conv-only variant (SVHN)", "", "", "", "", "", "", "92.40%", "–", "–", "–", "–", "–", "–",
         "–", "–", "", ""],
    ]
    resized = table_after(text, "### Test set `test_resized`")
    # no predictions and no per-position counts logged for test_resized: its digits carry no interval
    assert resized[1][7:] == [f"**88.00%** {ci(53, 60)}", f"94.00% {ci(56, 60)}", "95.00%", "90.00%", "79.00%",
                              "69.00%", "59.00%", "91.00%", "50.00%", "–", "–"]
    assert resized[0][7] == "–"  # alpha was not evaluated on this test set
    assert ("Best held-out sequence accuracy: **96.50%** " + ci(58, 60) + ", `alpha (") in text
    assert "✅ meets Goodfellow 2014" in text
    assert "`synthetic` data: not comparable with results on SVHN's test set" in text
    assert "95% Wilson score interval" in text
    assert f"`gamma ({g})` (FAILED)" in text

    figures = work / "runs/reports/experiment-golden/figures"
    expected = {"leaderboard.png", "learning_curves.png", "per_position.png", "confusion.png", "coverage.png",
                "errors.png"}
    assert {p.name for p in figures.iterdir()} == expected
    for name in expected:
        width, height = opens(figures / name)
        assert width > 200 and height > 150
        assert f"](figures/{name})" in text

    # reproducibility: command, commit (dirty), fingerprint, versions, the resolved spec
    assert "`harness train experiments/smoke.yaml`" in text
    assert "`0123456789abcdef0123456789abcdef01234567` (dirty)" in text and "`0123456789` (dirty)" in text
    assert f"| `{'cd' * 6}` |" in text and f"| Dataset fingerprint | `{'cd' * 32}` |" in text
    assert f"| test | 40 | 64 | test | 0:1 1:10 2:10 3:10 4:9 | `{'ab' * 32}` |" in text
    assert ("| test | 42 | 41 | 40 | unreadable 1 (left out (data.bad_files: skip)); long_number 1 (dropped "
            "(data.long_numbers: drop)) |") in text
    assert "keras 3.15.1, mlflow 3.17.2" in text
    assert "```yaml\nname: alpha\nmodel:\n  name: cnn_tiny\n```" in text

    # logged to every run it covers, beside each run's own report folder
    for run in ("alpha", "beta", "gamma"):
        logged = {a.path for a in client.list_artifacts(ids[run], "report/experiment-golden")}
        assert "report/experiment-golden/README.md" in logged
    index = (work / "runs/reports/README.md").read_text()
    assert report.INDEX_MARK in index
    row = next(line for line in index.splitlines() if "[experiment-golden]" in line)
    assert "(experiment-golden/README.md)" in row and "96.50% " + ci(58, 60) in row and "✅ +0.47 pp" in row
    meta = json.loads((work / "runs/reports/experiment-golden/report.json").read_text())
    assert meta["best_run"] == ids["alpha"] and meta["best_sequence_accuracy"] == pytest.approx(0.965)


def test_worst_errors_gallery_and_confusion_come_from_the_logged_predictions(store):
    work, _, ids, targets = store
    text = (work / report.generate_report(runs=[ids["alpha"]], out="reports/alpha")).read_text()
    # the four most confident errors, most confident first: margins 12, 9, 6, 4
    gallery = table_after(text, "### Worst errors")
    assert [row[1] for row in gallery] == ["`11.png`", "`3.png`", "`20.png`", "`7.png`"]
    for row, i in zip(gallery, (11, 3, 20, 7)):
        true = "".join(str(d) for d in targets[i, 1:1 + targets[i, 0]])
        read = str((targets[i, 1] + 1) % 10) + true[1:]
        assert row[2:4] == [f"`{true}`", f"`{read}`"]

    # by length: lengths 1..4 cycle over the 40 images (image 5 has none); the errors are images 3, 7 and
    # 11 (4 digits), 20 (1 digit) and 33 (2 digits)
    header = text[text.index("### By number length"):].split("\n| ", 1)[1].split("\n", 1)[0]
    assert header == "Test set | 0 digits | 1 digit | 2 digits | 3 digits | 4 digits |"
    by_length = table_after(text, "### By number length")
    assert by_length == [["`test`", *(f"{100 * r / n:.2f}% {ci(r, n)}, {r}/{n}"
                                      for r, n in ((1, 1), (9, 10), (8, 9), (10, 10), (7, 10)))]]

    table = report.read_predictions(ids["alpha"])
    expected = np.zeros((10, 10), dtype=int)
    for i, row in enumerate(targets):
        for p in range(row[0]):
            expected[row[1 + p], (row[1 + p] + 1) % 10 if (p == 0 and i in WRONG) else row[1 + p]] += 1
    assert (report.digit_confusion(table) == expected).all()
    assert set(np.nonzero(~table["correct"].to_numpy(bool))[0]) == set(WRONG)
    assert table.loc[5, "true"] == "" and table.loc[5, "predicted"] == ""  # the number-less image

    # a single run's report: its own run table and per-epoch table, logged at report/
    assert "## Run" in text and "| 3 | 1.5000 | 0.7000 | 1.4000 | 0.8000 | 260.0 |" in text
    assert opens(work / "reports/alpha/figures/errors.png")[0] > 300


def test_worst_npz_holds_the_crops_of_the_most_confident_errors(tmp_path):
    targets = split_targets()
    split = write_split(tmp_path / "test.h5", targets)
    table = example_table(targets, split_logits(targets), [f"{i}.png" for i in range(N)])
    csv, npz = write_predictions(Evaluation({}, table), split, tmp_path / "out", "test_resized", worst=3)
    assert (csv.name, npz.name) == ("test_resized.csv.gz", "test_resized_worst.npz")
    back = pd.read_csv(io.BytesIO(gzip.decompress(csv.read_bytes())), keep_default_na=False, dtype={"true": str})
    assert len(back) == N and list(back["true"]) == list(table["true"])
    with np.load(npz, allow_pickle=False) as worst:
        assert list(worst["index"]) == [11, 3, 20]
        assert worst["images"].dtype == np.uint8 and worst["images"].shape == (3, 64, 64, 3)
        assert [int(img[0, 0, 0]) for img in worst["images"]] == [11, 3, 20]  # the rows of those examples
        assert list(worst["confidence"]) == sorted(worst["confidence"], reverse=True)


def test_example_table_agrees_with_the_logged_metrics():
    """Per-example predictions are what the aggregate metrics are computed from (random logits)."""
    from harness.models.heads import evaluate_arrays

    rng = np.random.default_rng(3)
    targets = split_targets()
    logits = (split_logits(targets) + rng.normal(0, 6, (N, LOGITS))).astype(np.float32)
    table, metrics = example_table(targets, logits), evaluate_arrays(targets, logits)
    assert table["correct"].mean() == pytest.approx(metrics["sequence_accuracy"])
    assert (table["pred_length"] == table["true_length"]).mean() == pytest.approx(metrics["length_accuracy"])
    for p in range(1, 6):
        present = table[f"true_d{p}"] < 10
        if present.any():
            hits = (table[f"head_d{p}"] == table[f"true_d{p}"])[present].mean()
            assert hits == pytest.approx(metrics[f"digit{p}_accuracy"])
    # a number is right exactly when the text read equals the text written
    assert ((table["true"] == table["predicted"]) == table["correct"]).all()


def test_sweep_report_ranks_trials_by_the_parents_objective(store):
    work, client, ids, _ = store
    path = report.generate_report(sweep=ids["sweep"])
    assert path == Path("runs/reports/sweep-lr-sweep/README.md")
    text = (work / path).read_text()
    assert text.startswith(f"# Sweep lr-sweep\n\nRegenerate: `harness report --sweep {ids['sweep']} "
                           "--out runs/reports/sweep-lr-sweep`")
    # the best epoch of val_sequence_accuracy: t1 0.9 (epoch 2), t3 0.85 (3), t0 0.8 (2), t2 0.45 (2)
    ranking = table_after(text, "## Sweep")
    assert [(r[0], r[1].split()[0], r[2].split()[0]) for r in ranking] == [
        ("1", "t1", "90.00%"), ("2", "t3", "85.00%"), ("3", "t0", "80.00%"), ("4", "t2", "45.00%")]
    assert "what differs between runs: `augment.policy`, `train.learning_rate`" in text
    assert [r[5:] for r in ranking] == [["none", "0.003"], ["none", "0.0003"], ["paper", "0.001"], ["paper", "0.01"]]
    # each score's interval on the 50 validation images of the data card; within noise of the best where the
    # intervals overlap (trials log per-image predictions for test only)
    assert [r[2].split(" ", 1)[1] for r in ranking] == [ci(45, 50), ci(42, 50), ci(40, 50), ci(22, 50)]
    assert "95% intervals overlap: **within noise**" in ranking[1][3] and ranking[1][4] == "(the run above)"
    assert "within noise" in ranking[2][4] and "do not overlap: a real difference" in ranking[3][4]
    # no held-out evaluation in a sweep: validation accuracy at each trial's best epoch instead
    validation = table_after(text, "## Validation accuracy")
    assert [row[4:11] for row in validation[:2]] == [  # counts from the data card's validation split
        ["2 of 3", "60 s", "–", f"**90.00%** {ci(45, 50)}", f"95.00% {ci(48, 50)}", f"100.00% {ci(50, 50)}", "–"],
        ["3", "1.5 min", "–", f"**85.00%** {ci(42, 50)}", f"90.00% {ci(45, 50)}", f"95.00% {ci(48, 50)}", "–"]]
    assert "`svhn` data" not in text and "`synthetic` data, validation split" not in text
    assert "`synthetic` data: not comparable with results on SVHN's test set" in text
    assert validation[0][-2:] == ["–", "–"]  # validation on synthetic data: no gap to the SVHN results
    assert "Best by `val_sequence_accuracy`: `t1 (" in text
    for name in ("leaderboard.png", "hyperparameters.png", "learning_curves.png", "per_position.png"):
        opens(work / "runs/reports/sweep-lr-sweep/figures" / name)
    assert "Sweep command: `harness sweep experiments/lr.yaml`" in text
    assert "report/README.md" in {a.path for a in client.list_artifacts(ids["sweep"], "report")}
    assert not client.list_artifacts(ids["t1"], "report")  # trials are covered by the parent's report
    # an experiment report leaves the sweep's parent out (it has no results of its own)
    assert [r.name for r in report.load_target(experiment="sweeps").runs] == ["t1", "t3", "t0", "t2"]


def test_html_report_is_one_self_contained_file(store, capsys):
    work, _, ids, _ = store
    assert main(["report", "--runs", ids["beta"], ids["alpha"], "--format", "html", "--out", "reports/pair"]) == 0
    assert "reports/pair/index.html" in capsys.readouterr().out
    page = (work / "reports/pair/index.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "</html>" in page
    sources = re.findall(r'\bsrc="([^"]*)"', page)
    assert len(sources) == 6 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"<link|<script|url\(|@import|href=\"http", page)
    for source in sources:
        with Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))) as image:
            image.load()
    assert f"<td><strong>96.50%</strong> {ci(58, 60)}</td>" in page and "✅ +0.47 pp" in page
    assert f"--runs {' '.join(sorted([ids['alpha'], ids['beta']]))} --out reports/pair --format html" in page
    assert "[pair](pair/index.html)" in (work / "reports/README.md").read_text()


def test_errors_are_one_clear_line(store, capsys):
    assert main(["report", "--experiment", "no-such-experiment"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    with pytest.raises(HarnessError, match="not found"):
        report.generate_report(runs=["0" * 32])
    with pytest.raises(HarnessError, match="no nested trial runs"):
        report.generate_report(sweep=store[2]["alpha"])


def test_index_never_overwrites_a_readme_that_is_not_an_index(tmp_path):
    (tmp_path / "README.md").write_text("# My project\n")
    (tmp_path / "some").mkdir()
    (tmp_path / "some" / "README.md").write_text("# some\n")
    assert report.write_index(tmp_path) is None
    assert (tmp_path / "README.md").read_text() == "# My project\n"
    index = report.write_index(tmp_path / "fresh")
    assert index.read_text().startswith("# Reports")


def test_report_json_holds_each_run_and_the_code_that_measured_it_for_the_results_page(store):
    from harness.reporting.results import results_page

    work, _, ids, _ = store
    report.generate_report(experiment="golden", out="published/golden", log=False)
    meta = json.loads((work / "published/golden/report.json").read_text())
    assert meta["format"] == 3 and meta["objective"] == "test_sequence_accuracy"
    assert meta["interval"] == "95% Wilson score"
    alpha, beta, gamma = meta["results"]  # ranked best first
    assert (alpha["run_id"], alpha["model"], alpha["policy"], alpha["epochs"]) == (
        ids["alpha"], "cnn_tiny", "paper", "3")
    seq = alpha["accuracy"]["test"]["sequence_accuracy"]  # each accuracy with its count and 95% interval
    assert (seq["value"], seq["right"], seq["total"]) == (pytest.approx(0.965), 58, 60)
    assert seq["interval"] == pytest.approx(list(wilson(58, 60)))
    assert alpha["accuracy"]["test"]["digit5_accuracy"]["value"] is None  # NaN in MLflow, null in JSON
    length = beta["accuracy"]["test_resized"]["length_accuracy"]
    assert length["value"] == pytest.approx(0.94) and length["interval"] == pytest.approx(list(wilson(56, 60)))
    assert alpha["commit"] == TAGS["mlflow.source.git.commit"] and alpha["dirty"] is True
    assert gamma["status"] == "FAILED" and gamma["accuracy"]["test"]["sequence_accuracy"]["value"] is None
    # like for like: only alpha (SVHN's test split) may be set against the published results
    assert alpha["comparable"] == {"test": True, "test_resized": True} and beta["comparable"]["test"] is False
    assert meta["best_comparable"] is True and meta["best_sequence_interval"] == pytest.approx(list(wilson(58, 60)))
    for run in meta["results"]:  # every accuracy logged has an interval
        for values in run["accuracy"].values():
            for name, m in values.items():
                if isinstance(m, dict) and m["value"] is not None and name in ("sequence_accuracy", "length_accuracy"):
                    assert m["interval"], (run["name"], name)

    page = results_page(work / "published", work / "docs" / "results.md")
    assert "[golden](../published/golden/README.md)" in page
    assert "From [published/golden/report.json](../published/golden/report.json)" in page
    rows = table_after(page, "## golden")
    assert [row[7:10] for row in rows[:3]] == [["test", f"96.50% {ci(58, 60)}", f"98.00% {ci(59, 60)}"],
                                                ["test", f"90.00% {ci(54, 60)}", f"95.00% {ci(57, 60)}"],
                                                ["test_resized", f"88.00% {ci(53, 60)}", f"94.00% {ci(56, 60)}"]]
    assert rows[0][0] == f"alpha `{ids['alpha'][:8]}`" and rows[0][-2] == "✅ +0.47 pp"
    assert rows[1][-2] == "not comparable"  # beta: synthetic data
    assert re.fullmatch(r"`0123456789` \(dirty\), run \d{4}-\d\d-\d\d", rows[0][-1])
    assert "predate" not in page  # every report here holds its runs


def test_learning_curves_of_runs_without_validation_warn_of_nothing():
    """A run trained with data.val_fraction 0 has training curves only: drawn without an empty legend."""
    import warnings
    from types import SimpleNamespace

    from harness.reporting.figures import fig_learning_curves, png

    run = SimpleNamespace(name="real2000_finetune", run_id="0" * 32, params={"data.name": "folders"},
                          history={"loss": [(1, 2.0), (2, 1.5)], "sequence_accuracy": [(1, 0.4), (2, 0.6)]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert png(fig_learning_curves([run])).startswith(b"\x89PNG")
