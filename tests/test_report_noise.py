"""Honest figures: like for like, intervals, paired tests, seeds, the sweep leaderboard's noise marks,
rebuilt reports and no machine path, on a real MLflow store (SQLite in tmp_path) built in the test.

Per-example predictions are written by harness.evaluation.evaluate from real logits, so McNemar's counts
below are those of the images each run reads right; the expected values are worked out by hand.
"""

import json
import re
import statistics
from pathlib import Path

import mlflow  # noqa: E402  (after harness: it imports the Keras backend quietly first)
import numpy as np
import pytest
from mlflow.entities import Metric, Param

from harness import LENGTH_CLASSES, MAX_DIGITS
from harness.cli import main as harness_main
from harness.errors import HarnessError
from harness.evaluation.evaluate import Evaluation, example_table
from harness.evaluation.intervals import mcnemar, wilson
from harness.reporting import report
from harness.reporting.rebuild import interval_check, rebuild_report
from harness.reporting.text import comparable, not_comparable, scrub_paths
from harness.sweeps.leaderboard import format_leaderboard, leaderboard, publish
from harness.sweeps.spec import load_sweep

REPO = Path(__file__).resolve().parents[1]
LOGITS = LENGTH_CLASSES + MAX_DIGITS * 10  # the heads' outputs: length classes, then 10 per digit
N = 200
MACHINE = ("/home/", "/tmp/", "/work/", "/root/", "C:\\")


def ci(right: int, total: int) -> str:
    low, high = wilson(right, total)
    return f"({100 * low:.1f}–{100 * high:.1f})"


def targets() -> np.ndarray:
    """N two-digit numbers."""
    rng = np.random.default_rng(0)
    out = np.full((N, 6), 10, dtype=np.int32)
    out[:, 0] = 2
    out[:, 1:3] = rng.integers(0, 10, (N, 2))
    return out


def predictions_file(folder: Path, wrong: set[int], names=None) -> Path:
    """predictions/test.csv.gz as training writes it, for a model that misreads the first digit of ``wrong``."""
    t = targets()
    logits = np.zeros((N, LOGITS), dtype=np.float32)
    for i, row in enumerate(t):
        logits[i, 2] = 12.0
        logits[i, 7 + (row[1] + (1 if i in wrong else 0)) % 10] = 8.0
        logits[i, 17 + row[2]] = 8.0
    table = example_table(t, logits, names or [f"{i}.png" for i in range(N)])
    folder.mkdir(parents=True, exist_ok=True)
    import gzip

    path = folder / "test.csv.gz"
    path.write_bytes(gzip.compress(Evaluation({}, table).predictions.to_csv(index=False).encode(), mtime=0))
    return path


def log_run(client, experiment, name, params, accuracy, *, predictions=None, parent=None, tags=None, val=None):
    run = client.create_run(experiment, run_name=name, tags={
        "harness.command": "harness train /work/someone/experiments/x.yaml --set data.root=/home/me/data",
        **({"mlflow.parentRunId": parent} if parent else {}), **(tags or {})})
    run_id = run.info.run_id
    metrics = [Metric("test_sequence_accuracy", accuracy, 0, 0), Metric("test_length_accuracy", 1.0, 0, 0),
               Metric("test_examples", N, 0, 0)]
    metrics += [Metric(f"test_digit{p}_accuracy", v, 0, 0) for p, v in ((1, accuracy), (2, 1.0))]
    metrics += [Metric(f"test_digit{p}_examples", N, 0, 0) for p in (1, 2)]
    metrics += [Metric(f"test_digit{p}_examples", 0, 0, 0) for p in (3, 4, 5)]
    for step, v in enumerate(val or [], 1):
        metrics.append(Metric("val_sequence_accuracy", v, step, step))
    if val:
        metrics.append(Metric("best_val_sequence_accuracy", max(val), 0, 0))
    client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
    client.log_dict(run_id, {"prepared": {"val": {"images": 400, "length_histogram": {"2": 400}}}}, "data_card.json")
    if predictions is not None:
        client.log_artifact(run_id, str(predictions), "predictions")
    client.set_terminated(run_id, "FINISHED")
    return run_id


BASE = {"model.name": "cnn_tiny", "augment.policy": "paper", "data.name": "synthetic", "train.epochs": "2",
        "data.root": "/work/someone/data", "data.options.source": "/home/me/mnist", "train.seed": "0"}


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


# ------------------------------------------------------------------------------------------ units

def test_only_svhn_test_splits_are_comparable_with_the_published_results():
    assert comparable("svhn", "test") and comparable("svhn", "test_resized")
    assert not comparable("svhn", "val") and not comparable("synthetic", "test")
    assert not comparable("mnist_composite", "test") and not comparable("folders", "test")
    assert not_comparable("synthetic", "test") == "`synthetic` data: not comparable with results on SVHN's test set"
    assert "validation split" in not_comparable("svhn", "val")


def test_machine_paths_become_relative_or_their_last_components(tmp_path):
    root = tmp_path / "project"
    assert scrub_paths(f"--spec {root}/experiments/a.yaml", root) == "--spec experiments/a.yaml"
    assert scrub_paths("mnist_composite (source=/work/shared/data/mnist, train=4)", root) == \
        "mnist_composite (source=…/data/mnist, train=4)"
    assert scrub_paths("in `sqlite:////tmp/x/mlflow.db`", root) == "in `sqlite:///…/x/mlflow.db`"
    assert scrub_paths(r"C:\Users\me\data\svhn", root) == "…/data/svhn"
    for kept in ("sqlite:///mlflow.db", "figures/a.png", "images/s", "tensorflow / CPU", "http://10.0.0.2:5000/x",
                 "[a](../reports/a/README.md)", "models:/name/1"):
        assert scrub_paths(kept, root) == kept


# --------------------------------------------------------------------------- comparisons and seeds

def test_runs_on_the_same_images_are_compared_by_mcnemar_and_seeds_are_grouped(store, tmp_path):
    exp = store.create_experiment("noise")
    # a: 10 wrong; b: 14 wrong, 4 of them shared with a (so a alone reads 10, b alone 6 right): p = 0.45
    wrong_a, wrong_b = set(range(10)), set(range(6, 20))
    ids = {
        "a": log_run(store, exp, "a", BASE, 1 - 10 / N, predictions=predictions_file(tmp_path / "pa", wrong_a)),
        "b": log_run(store, exp, "b", {**BASE, "train.seed": "1"}, 1 - 14 / N,
                     predictions=predictions_file(tmp_path / "pb", wrong_b)),
        "c": log_run(store, exp, "c", {**BASE, "train.seed": "2"}, 1 - 60 / N,
                     predictions=predictions_file(tmp_path / "pc", set(range(100, 160)))),
        # other images (different names): intervals only
        "d": log_run(store, exp, "d", {**BASE, "model.name": "cnn_small"}, 1 - 13 / N,
                     predictions=predictions_file(tmp_path / "pd", set(range(13)), [f"x{i}.png" for i in range(N)])),
    }
    path = report.generate_report(experiment="noise", out="out/noise", log=False)
    text = path.read_text()
    meta = json.loads((tmp_path / "out/noise/report.json").read_text())

    # ranked a 95.0%, d 93.5%, b 93.0%, c 70.0%; each row against the run above and against the best
    rows = {r[1].split()[0]: r for r in _table(text, "## Runs compared")}
    p_ab = mcnemar(6, 10)  # b alone reads images 0-5 right, a alone 10-19
    assert p_ab == pytest.approx(0.4545, abs=1e-4)
    assert rows["b"][4] == f"-2.00 pp, McNemar p = {p_ab:.2g} on 200 images (6 vs 10 read right by one only): " \
                           "**within noise**"
    assert rows["d"][3].endswith("95% intervals overlap: **within noise**")  # other images: no pairing
    assert rows["b"][3].endswith("95% intervals overlap: **within noise**")  # against d, likewise
    assert "McNemar" in rows["c"][4] and rows["c"][4].endswith("a real difference")
    found = {(c["a"], c["b"]): c for c in meta["comparisons"]}
    pair = found[(ids["b"], ids["a"])]
    assert (pair["method"], pair["only_a"], pair["only_b"], pair["within_noise"]) == ("mcnemar", 6, 10, True)
    assert pair["p_value"] == pytest.approx(p_ab)
    assert found[(ids["c"], ids["a"])]["p_value"] == pytest.approx(mcnemar(10, 60))
    assert found[(ids["d"], ids["a"])]["method"] == "wilson_overlap"

    # a, b and c differ only in train.seed: one group, mean and standard deviation over the seeds
    (group,) = meta["seed_groups"]
    values = [1 - 10 / N, 1 - 14 / N, 1 - 60 / N]
    assert sorted(group["seeds"]) == ["0", "1", "2"] and group["mean"] == pytest.approx(statistics.fmean(values))
    assert group["std"] == pytest.approx(statistics.stdev(values))
    seeds = _table(text, "### Runs that differ only in seed")[0]
    assert seeds[4:7] == ["3", pct(statistics.fmean(values)), f"{100 * statistics.stdev(values):.2f} pp"]
    assert f"seed 0: 95.00% {ci(190, 200)}" in seeds[7] and f"seed 2: 70.00% {ci(140, 200)}" in seeds[7]

    # every accuracy has its interval; no benchmark mark on synthetic data; no machine path anywhere
    assert not interval_check(meta)
    first = meta["results"][0]["accuracy"]["test"]
    assert first["digit1_accuracy"]["interval"] == pytest.approx(list(wilson(190, 200)))
    assert "✅ +" not in text and "✅ meets" not in text and meta["best_comparable"] is False
    blob = text + json.dumps(meta)
    assert not [m for m in MACHINE if m in blob], [m for m in MACHINE if m in blob]
    assert "…/someone/data" in text and "…/me/mnist" in text  # data.root and a source folder, by name only


def test_runs_held_out_on_each_fold_are_pooled_per_seed(store, tmp_path):
    exp = store.create_experiment("folds")
    mine = {**BASE, "data.name": "folders", "data.options.train": "/home/me/train"}
    wrong = {0: 20, 1: 30, 2: 25, 3: 35}  # of N images each: 110 of 800 over the four folds
    ids = [log_run(store, exp, f"fold{k}", {**mine, "data.heldout_fold": str(k)}, 1 - w / N) for k, w in wrong.items()]
    log_run(store, exp, "seed1", {**mine, "data.heldout_fold": "2", "train.seed": "1"}, 1 - 10 / N)
    log_run(store, exp, "own-test", {**mine, "data.options.test": "/home/me/test"}, 0.99)  # not a fold
    log_run(store, exp, "alone", {**mine, "model.name": "cnn_small", "data.heldout_fold": "1"}, 0.5)  # one fold only
    text = report.generate_report(experiment="folds", out="out/folds", log=False).read_text()
    meta = json.loads((tmp_path / "out/folds/report.json").read_text())
    (four, one) = meta["fold_groups"]
    assert (four["seed"], four["folds"], four["right"], four["total"]) == ("0", ["0", "1", "2", "3"], 690, 800)
    assert four["runs"] == ids and four["interval"] == pytest.approx(list(wilson(690, 800)))
    assert (one["seed"], one["folds"], one["right"], one["total"]) == ("1", ["2"], 190, 200)
    rows = _table(text, "### Folds held out in turn")
    assert rows[0][4:7] == ["0", "0, 1, 2, 3 of 4", f"86.25% {ci(690, 800)}, 690 of 800"]
    assert rows[0][7] == "fold 0: 90.00%; fold 1: 85.00%; fold 2: 87.50%; fold 3: 82.50%"
    assert "heldout_fold" not in rows[0][3] and len(rows) == 2
    # seeds of one setting are runs on the same fold: fold 2's two seeds
    assert [sorted(g["seeds"]) for g in meta["seed_groups"]] == [["0", "1"]]
    assert set(meta["seed_groups"][0]["runs"]) == {ids[2], one["runs"][0]}


def test_svhn_results_on_the_test_split_carry_the_benchmark_mark(store, tmp_path):
    exp = store.create_experiment("svhn")
    log_run(store, exp, "real", {**BASE, "data.name": "svhn"}, 0.97)
    log_run(store, exp, "fake", BASE, 0.99)
    text = report.generate_report(experiment="svhn", out="out/svhn", log=False).read_text()
    rows = {r[0].split()[0]: r for r in _table(text, "## Held-out accuracy")}
    assert rows["real"][-2:] == ["✅ +0.97 pp", "✅ +4.60 pp"]
    assert rows["fake"][-2:] == ["–", "–"]  # better than the references, but on synthetic data
    # the runs on SVHN's test split lead; the synthetic run, though higher, is not ranked against them
    head = text.split("## Held-out")[0]
    assert f"Best held-out sequence accuracy: **97.00%** {ci(194, N)}, `real (" in head
    assert "✅ meets Goodfellow 2014 (96.03%)" in head.split("On other test data")[0]
    other = head.split("On other test data (`synthetic`): best held-out sequence accuracy: ")[1]
    assert other.startswith(f"**99.00%** {ci(198, N)}, `fake (") and "✅" not in other
    assert "`synthetic` data: not comparable with results on SVHN's test set." in other
    # genuine numbers against synthetic ones, or another test folder: not like for like, so each is ranked
    # within its own test data and compared only there
    log_run(store, exp, "other-folder", {**BASE, "data.name": "folders", "data.options.test": "/home/me/x"}, 0.5)
    log_run(store, exp, "fake-2", {**BASE, "train.seed": "1"}, 0.95)
    text = report.generate_report(experiment="svhn", out="out/svhn", log=False).read_text()
    ranked = [r[:5] for r in _table(text, "## Runs compared")]
    assert [(r[0], r[1].split()[0]) for r in ranked] == [("1", "real"), ("1", "fake"), ("2", "fake-2"),
                                                         ("1", "other-folder")]
    assert [r[3:5] for r in ranked] == [["", ""], ["", ""], ["-4.00 pp, 95% intervals overlap: **within noise**",
                                                             "(the run above)"], ["", ""]]
    assert "each is ranked within its own test data (Rank)" in text
    meta = json.loads((tmp_path / "out/svhn/report.json").read_text())
    assert [(c["a"], c["b"]) for c in meta["comparisons"]] == [(meta["results"][2]["run_id"],
                                                               meta["results"][1]["run_id"])]
    assert meta["best_run"] == meta["results"][0]["run_id"] and meta["best_sequence_accuracy"] == 0.97
    index = (tmp_path / "out/README.md").read_text()
    assert "✅" in index.split("|---|")[-1]  # the report's best: the run on SVHN's test split


# ------------------------------------------------------------------------------ the sweep leaderboard

SWEEP = """\
name: noisy
data:
  options: {train: 100, test: 20}
train:
  epochs: 2
sweep:
  tuner: random
  max_trials: 4
  space:
    train.learning_rate: {min: 1.0e-4, max: 1.0e-2, log: true}
"""


def test_the_leaderboard_marks_trials_within_noise_of_the_best(store, tmp_path, capsys):
    (tmp_path / "noisy.yaml").write_text(SWEEP)
    sweep = load_sweep(tmp_path / "noisy.yaml")
    exp = store.create_experiment("sweeps")
    parent = store.create_run(exp, run_name="noisy").info.run_id
    # 400 validation images (the data card): 0.80 is (75.8-83.7); 0.78 overlaps it, 0.70 does not
    for trial, val in (("0", [0.5, 0.80]), ("1", [0.78]), ("2", [0.70]), ("3", [0.6, 0.65])):
        log_run(store, exp, f"noisy-trial{trial}", BASE, 0.5, parent=parent, val=val,
                tags={"harness.trial_id": trial, "harness.trial_hp": json.dumps({"train.learning_rate": 0.001})})
    rows = leaderboard(sweep, parent)
    assert [(r["trial"], r["within_noise"]) for r in rows] == [("0", True), ("1", True), ("2", False), ("3", False)]
    assert rows[0]["val_examples"] == 400
    assert (rows[0]["low"], rows[0]["high"]) == pytest.approx(wilson(320, 400))
    text = format_leaderboard(sweep, rows)
    lines = text.splitlines()
    assert lines[0].split()[:5] == ["rank", "trial", "val_sequence_accuracy", "95%", "interval"]
    low, high = wilson(312, 400)
    assert re.search(rf"^2\s+1\s+0\.7800\s+{low:.4f}-{high:.4f}\s+≈\s", lines[2])
    assert re.search(r"^1\s+0\s+0\.8000\s+\S+\s+best\s", lines[1]) and "≈" not in lines[3] + lines[4]
    assert lines[-1].startswith("≈: within noise of the best: 95% Wilson intervals on the validation images "
                                "overlap the best trial's") and lines[-1].endswith("400 validation images.")

    # the rows published to the parent carry the same marks
    publish(sweep, parent)
    board = json.loads(Path(store.download_artifacts(parent, "leaderboard.json", str(tmp_path))).read_text())
    column = board["columns"].index("within_noise")
    assert [row[column] for row in board["data"]] == [True, True, False, False]


# ----------------------------------------------------------------------------------- rebuilt reports

def test_a_report_rebuilt_from_its_own_record_keeps_its_figures_with_intervals(store, tmp_path, capsys):
    exp = store.create_experiment("rebuild")
    for name, acc, seed in (("one", 0.9, "0"), ("two", 0.885, "1")):
        log_run(store, exp, name, {**BASE, "data.name": "mnist_composite", "train.seed": seed}, acc)
    path = report.generate_report(experiment="rebuild", out="reports/legacy", log=False)
    fresh = json.loads((path.parent / "report.json").read_text())
    # the report.json of an earlier version: no per-run results, the figures only in its tables
    summary = {k: fresh[k] for k in ("title", "kind", "covers", "runs", "best_run", "best_sequence_accuracy",
                                     "command", "name", "file", "generated")}
    (path.parent / "report.json").write_text(json.dumps(summary))
    text = path.read_text().replace("(source=…/me/mnist", "(source=/home/me/mnist")  # as an old report held it
    path.write_text(text)

    assert harness_main(["report", "--rebuild", "reports/legacy"]) == 0
    assert "Report: reports/legacy/README.md" in capsys.readouterr().out
    meta = json.loads((path.parent / "report.json").read_text())
    rebuilt = path.read_text()
    assert meta["format"] == 3 and not interval_check(meta)
    for old, new in zip(fresh["results"], meta["results"]):
        for key in ("sequence_accuracy", "length_accuracy"):
            assert new["accuracy"]["test"][key]["interval"] == pytest.approx(old["accuracy"]["test"][key]["interval"])
    assert rebuilt.startswith("# Experiment rebuild\n\nRebuilt by `harness report --rebuild reports/legacy`")
    assert f"**90.00%** {ci(180, 200)}" in rebuilt and "within noise" in rebuilt
    assert "`mnist_composite` data: not comparable with results on SVHN's test set" in rebuilt
    assert not [m for m in MACHINE if m in rebuilt + json.dumps(meta)]
    assert "## Reproducibility" in rebuilt  # carried over as generated
    # a second rebuild changes nothing but the date
    before = rebuilt
    assert harness_main(["report", "--rebuild", "reports/legacy"]) == 0
    assert path.read_text() == before

    assert harness_main(["report", "--rebuild", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("harness: error: ") and "missing" in err and "\n" not in err
    with pytest.raises(HarnessError, match="not a report summary"):
        (path.parent / "report.json").write_text("[1]")
        rebuild_report(path.parent)


# ------------------------------------------------------------------------------ committed reports

def test_no_committed_report_carries_a_machine_path_or_an_unfair_mark_and_each_accuracy_has_an_interval():
    files = [p for p in (REPO / "reports").rglob("*") if p.is_file() and p.suffix in (".md", ".json", ".html")]
    files.append(REPO / "docs" / "results.md")
    assert files
    for path in files:
        text = path.read_text()
        found = [m for m in MACHINE if m in text]
        assert not found, f"{path.relative_to(REPO)} carries a machine path ({found})"
    for summary_file in sorted((REPO / "reports").glob("*/report.json")):
        summary = json.loads(summary_file.read_text())
        assert summary.get("format", 1) >= 3 and summary.get("results"), summary_file
        assert not interval_check(summary), (summary_file, interval_check(summary))
        data = {run["run_id"]: run.get("data_name") for run in summary["results"]}
        for c in summary.get("comparisons") or []:  # like for like only
            assert c["method"] == "different_data" or data.get(c["a"]) == data.get(c["b"]), (summary_file, c)
        for run in summary["results"]:
            for test_set, values in run["accuracy"].items():
                assert run["comparable"][test_set] == comparable(run.get("data_name"), test_set)
                seq = values.get("sequence_accuracy")
                assert seq is None or seq["interval"], (summary_file, run["name"], test_set)
        readme = (summary_file.parent / (summary.get("file") or "README.md")).read_text()
        if not any(r["comparable"].get(t) for r in summary["results"] for t in r["comparable"]):
            assert "✅ +" not in readme and "✅ meets" not in readme, summary_file  # no SVHN test result: no mark


def _table(text: str, heading: str) -> list[list[str]]:
    lines = text[text.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("| "):
            break
        rows.append(line[2:-2].split(" | "))
    return rows


def pct(value: float) -> str:
    return f"{100 * value:.2f}%"
