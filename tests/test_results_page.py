"""docs/results.md is generated from the committed reports' report.json files, never edited by hand.

A report.json with per-run results (format 2) is rendered in tests/test_report.py, from a real report.
"""

import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness.reporting.results import RESULTS_MARK, results_page, write_results

REPO = Path(__file__).resolve().parents[1]


def test_the_committed_results_page_is_what_the_command_writes():
    committed = (REPO / "docs" / "results.md").read_text()
    assert results_page(REPO / "reports", REPO / "docs" / "results.md") == committed, (
        "docs/results.md differs from what `harness report --results docs/results.md` writes from "
        "reports/*/report.json: regenerate it with that command instead of editing it")


def test_each_committed_report_is_on_the_page_with_the_version_that_measured_it():
    page = (REPO / "docs" / "results.md").read_text()
    assert RESULTS_MARK in page
    for summary_file in sorted((REPO / "reports").glob("*/report.json")):
        name, summary = summary_file.parent.name, json.loads(summary_file.read_text())
        row = next(line for line in page.splitlines() if line.startswith(f"| [{name}](../reports/{name}/"))
        if summary.get("results"):
            assert f"## {name}" in page and (summary["results"][0].get("commit") or "no git commit")[:10] in page
        else:
            assert f"an earlier version (report generated {summary['generated'][:10]})" in row


def test_the_command_writes_the_page_and_bad_input_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports" / "one").mkdir(parents=True)
    (tmp_path / "reports" / "one" / "report.json").write_text(json.dumps(
        {"covers": "1 run", "best_run": "ab" * 16, "best_sequence_accuracy": 0.5, "file": "README.md",
         "generated": "2026-01-02T03:04:05+00:00"}))
    assert main(["report", "--results", "docs/results.md"]) == 0
    assert "Results: docs/results.md" in capsys.readouterr().out
    page = (tmp_path / "docs" / "results.md").read_text()
    # a summary that does not say what data it measured is not set against the published SVHN results
    assert "| [one](../reports/one/README.md) | 1 run | `abababab` | 50.00% | – | not comparable | an earlier " \
           "version (report generated 2026-01-02) |" in page
    (tmp_path / "reports" / "two").mkdir()
    (tmp_path / "reports" / "two" / "report.json").write_text(json.dumps(
        {"covers": "1 run", "best_run": "cd" * 16, "best_sequence_accuracy": 0.97, "best_sequence_interval": [0.96, 0.98],
         "best_comparable": True, "best_data": "svhn", "file": "README.md", "generated": "2026-01-02T03:04:05+00:00"}))
    assert main(["report", "--results", "docs/results.md"]) == 0
    page = (tmp_path / "docs" / "results.md").read_text()
    assert "| `cdcdcdcd` | 97.00% (96.0–98.0) | `svhn` | ✅ +0.97 pp |" in page  # SVHN's test set: the gap
    (tmp_path / "reports" / "two" / "report.json").unlink()
    (tmp_path / "reports" / "two").rmdir()
    assert main(["report", "--results", "docs/results.md"]) == 0
    page = (tmp_path / "docs" / "results.md").read_text()
    capsys.readouterr()

    (tmp_path / "reports" / "one" / "report.json").write_text("{not json")
    assert main(["report", "--results", "docs/results.md"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("harness: error: reports/one/report.json: not a report summary") and "\n" not in err
    assert (tmp_path / "docs" / "results.md").read_text() == page  # the previous page is kept
    with pytest.raises(HarnessError, match="give a .md file"):
        write_results(tmp_path / "results.txt")
    with pytest.raises(HarnessError, match="no such folder of reports"):
        write_results(tmp_path / "r.md", tmp_path / "nowhere")
