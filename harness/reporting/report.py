"""Result reports, generated from what MLflow holds (never from memory or local ``runs/`` folders).

A report covers one or more runs, an experiment (its runs, less sweep parents) or a sweep (the nested
trial runs of a parent run). ``generate_report`` writes ``<folder>/README.md`` (or a self-contained
``index.html`` with the figures embedded as data URIs), ``figures/*.png`` and ``report.json`` (what the
index and the results page read), logs the report to each run it covers (a sweep: to its parent), and
rewrites ``README.md`` beside the folder, the index of every report there.

Reports go to ``runs/reports/<name>/`` unless told otherwise: generated output, which git ignores, so
a command never changes the checkout. The example reports committed under ``reports/`` change only
when asked for by name (``harness report ... --out reports/<name>``).

The work is split by concern: ``gather`` reads the runs back from MLflow, ``tables`` and ``figures``
show them, ``document`` lays out the sections and ``render`` writes markdown or HTML. This module
holds the entry points the CLI and sweeps call.
"""

from __future__ import annotations

import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from harness import GOODFELLOW_2014, RUNS, atomic
from harness.errors import HarnessError
from harness.reporting.document import build_document
from harness.reporting.gather import (
    PRIMARY,
    Target,
    digit_confusion,
    load_target,
    metric,
    read_predictions,
    read_worst,
)
from harness.reporting.render import markdown_table
from harness.reporting.tables import headline_table
from harness.reporting.text import gap, pct_ci, scrub_json, scrub_paths, slug
from harness.tracking import log, query

__all__ = ["INDEX_MARK", "REPORTS", "report_dir", "generate_report", "write_run_report", "render_run_report",
           "write_index", "load_target", "read_predictions", "read_worst", "digit_confusion", "headline_table",
           "default_name", "report_command"]

INDEX_MARK = "<!-- index of harness reports: rewritten whenever a report is written -->"
REPORTS = RUNS / "reports"  # where reports go by default: generated output, ignored by git


def report_dir(name: str) -> Path:
    """The default folder of the report called ``name``: ``runs/reports/<name>``."""
    return REPORTS / slug(name)


def spec_name(run: query.RunRecord) -> str:
    """The name of the spec (or sweep) a run ran: its reports' folder name. The run's own name says
    more (what it trained); runs logged by other tools have only that."""
    return run.params.get("name") or run.name


def default_name(target: Target) -> str:
    if target.kind == "run":
        return slug(spec_name(target.runs[0]))
    if target.kind == "experiment":
        return "experiment-" + slug(target.experiment)
    if target.kind == "sweep":
        name = slug(spec_name(target.parent) or target.parent.run_id[:8])
        return name if name.startswith("sweep") else f"sweep-{name}"
    ids = sorted(r.run_id[:8] for r in target.runs)
    return "runs-" + ("-".join(ids) if len(ids) <= 3 else f"{ids[0]}-and-{len(ids) - 1}-more")


def report_command(target: Target, out_dir: Path, fmt: str) -> str:
    """The `harness report` command that rebuilds this report from MLflow."""
    what = {"experiment": f"--experiment {target.experiment}",
            "sweep": f"--sweep {target.parent.run_id if target.parent else ''}"}.get(
        target.kind, "--runs " + " ".join(sorted(r.run_id for r in target.runs)))
    return f"harness report {what} --out {out_dir}" + (" --format html" if fmt == "html" else "")


def generate_report(*, experiment: str | None = None, sweep: str | None = None, runs: list[str] | None = None,
                    out: str | Path | None = None, fmt: str = "markdown", origin_command: str | None = None,
                    log: bool = True) -> Path:
    """Write the report of one target (see ``load_target``) and the index beside it; returns its file.

    ``out``: the report folder (default ``runs/reports/<name derived from the target>``). ``fmt``: markdown
    (README.md) or html (index.html, self-contained). ``origin_command``: the command that made the
    runs (``harness train ...``), shown beside the one that rebuilds the page. ``log``: attach the report
    to the runs it covers (a sweep: to its parent).
    """
    if fmt not in ("markdown", "html"):
        raise HarnessError(f"unknown report format '{fmt}' (markdown or html)")
    target = load_target(experiment=experiment, sweep=sweep, runs=runs)
    out_dir = Path(out) if out else REPORTS / default_name(target)
    if out_dir.exists() and not out_dir.is_dir():
        raise HarnessError(f"{out_dir}: exists and is not a folder")
    doc, summary = build_document(target, report_command(target, out_dir, fmt), origin_command)
    figures = out_dir / "figures"
    for name, png in doc.figures.items():
        atomic.write_bytes(figures / name, png)
    for stale in figures.glob("*.png") if figures.is_dir() else []:
        if stale.name not in doc.figures:
            stale.unlink()
    main = out_dir / ("index.html" if fmt == "html" else "README.md")
    doc.map_text(scrub_paths)  # no machine path in a report: relative to the project, else the folder's own name
    atomic.write_text(main, doc.html(target.title) if fmt == "html" else doc.markdown())
    summary.update(name=out_dir.name, file=main.name, generated=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    atomic.write_text(out_dir / "report.json", json.dumps(scrub_json(summary), indent=1) + "\n")
    if log:
        html = doc.html(target.title) if fmt != "html" else None
        _log(target, main, [figures / name for name in doc.figures], out_dir.name, html)
    write_index(out_dir.parent)
    return main


def _log(target: Target, main: Path, figures: list[Path], name: str, html: str | None) -> None:
    """The report into the runs it covers: its main file and figures, and (beside a markdown one) the
    same report as one self-contained index.html, which MLflow's artifact viewer shows as a page."""
    if target.kind == "sweep":
        owners, folder = [target.parent.run_id], "report"
    elif target.kind == "run":
        owners, folder = [target.runs[0].run_id], "report"
    else:  # a run's own report stays at report/; group reports sit beside it under their name
        owners, folder = [r.run_id for r in target.runs], f"report/{name}"
    with tempfile.TemporaryDirectory(prefix="harness-report-") as tmp:
        page = Path(tmp) / "index.html"
        if html is not None:
            page.write_text(html)
        for run_id in owners:
            log.attach_file(run_id, main, folder)
            if html is not None:
                log.attach_file(run_id, page, folder)
            for path in figures:
                log.attach_file(run_id, path, f"{folder}/figures")


def write_index(root: str | Path) -> Path | None:
    """``root``/README.md: every report under ``root`` (name, date, runs, best sequence accuracy, link).

    A README.md there that is not such an index (no INDEX_MARK) is left alone; returns None then.
    """
    root = Path(root)
    path = root / "README.md"
    if path.exists() and INDEX_MARK not in path.read_text(errors="replace")[:4000]:
        return None
    rows = [["Report", "Covers", "Generated", "Best held-out sequence accuracy (95% interval)", "Data",
             "vs Goodfellow 2014 (96.03%, SVHN's test set)", "Rebuild"]]
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        try:
            meta = json.loads((folder / "report.json").read_text())
        except (OSError, ValueError):
            meta = {}
        main = meta.get("file") or next((f for f in ("README.md", "index.html") if (folder / f).exists()), None)
        if main is None:
            continue
        best = meta.get("best_sequence_accuracy")
        covers = meta.get("covers", "–")
        like = bool(meta.get("best_comparable"))  # only a result on SVHN's test set is set against the references
        rows.append([f"[{folder.name}]({folder.name}/{main})", covers, (meta.get("generated") or "–")[:10],
                     pct_ci(best, meta.get("best_sequence_interval")), f"`{meta['best_data']}`" if meta.get(
                         "best_data") else "–", gap(best, GOODFELLOW_2014, like) if like else "not comparable" if
                     best is not None else "–", f"`{meta['command']}`" if meta.get("command") else "–"])
    text = (f"# Reports\n\n{INDEX_MARK}\n\nGenerated from MLflow by `harness report` (and by `harness train` "
            "for its run); each report opens with the command that rebuilds it. In brackets: the 95% Wilson "
            "interval. The published results (Goodfellow et al. 2014 and the report's conv-only variant) are on "
            "SVHN's test set: a report on other data is not comparable with them and carries no mark.\n\n"
            + markdown_table(rows[0], rows[1:]) + "\n")
    atomic.write_text(path, text)
    return path


def write_run_report(run_id: str, out_dir: str | Path | None, command: str) -> Path:
    """``out_dir``/README.md for one run (what `harness train` writes; default ``runs/reports/<spec name>``),
    logged to the run."""
    return generate_report(runs=[run_id], out=out_dir, origin_command=command)


def render_run_report(run: query.RunRecord, command: str) -> str:
    """The markdown of one run's report (figures are not written)."""
    target = Target("run", run.name, [run], f"{PRIMARY}_sequence_accuracy",
                    {run.run_id: metric(run, f"{PRIMARY}_sequence_accuracy")})
    folder = report_dir(spec_name(run))  # as `harness train` writes it
    doc = build_document(target, report_command(target, folder, "markdown"), command)[0]
    doc.map_text(scrub_paths)
    return doc.markdown()
