"""Rebuilding a report whose MLflow runs are not at hand, from what its folder holds.

``rebuild_report(folder)`` rewrites ``<folder>/README.md`` and ``report.json`` with the current rules
(benchmark marks only on SVHN's test set, a 95% Wilson interval on every accuracy, which differences are
within noise, no machine path) from the report's own record: its ``report.json`` and the tables of the
``README.md`` that ``harness report`` generated from MLflow. Held-out figures and their counts are
recomputed into intervals and comparisons; every other section (the run, learning curves, per-position
accuracy, errors, reproducibility) is carried over as generated, its paths shortened.

Counts, from the report's own tables: a run whose dataset fingerprint is the best run's has its data card's
counts (each test split's images and, from its length histogram, the digits at each position). Otherwise the
report lists its test sets' sizes ("Held-out examples: ...") but not which run had which; a run's count is
then the smallest listed size its sequence and length accuracies are whole fractions of (at the 0.01-point
precision shown), so its interval is never narrower than the true one; accuracies whose count the record does
not hold (a position's digits) are left out, and the report says so.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

from harness import GOODFELLOW_2014, MAX_DIGITS, REPORT_CONV_ONLY, atomic
from harness.errors import HarnessError
from harness.reporting.gather import apart, firsts
from harness.reporting.noise import ACCURACIES, compare, measure, verdict
from harness.reporting.render import markdown_table
from harness.reporting.text import (
    REFERENCES,
    comparable,
    gap,
    not_comparable,
    pct,
    pct_ci,
    scrub_json,
    scrub_paths,
)

REBUILT_FORMAT = 3
_SHOWN = {"Sequence (global)": "sequence_accuracy", "Length": "length_accuracy",
          **{f"Digit {p}": f"digit{p}_accuracy" for p in range(1, MAX_DIGITS + 1)}, "All digits": "digit_accuracy"}
_REPLACED = ("Held-out accuracy", "Validation accuracy", "Runs compared", "Sweep")


def rebuild_command(folder: Path) -> str:
    return f"harness report --rebuild {folder.as_posix()}"


# ---------------------------------------------------------------------------- reading the record

def _sections(text: str) -> list[tuple[str, str]]:
    """(heading, body) of each ``## `` section, in order; the text before the first under ''."""
    parts = re.split(r"(?m)^## (.+)$", text)
    out = [("", parts[0])]
    out += [(parts[i].strip(), parts[i + 1]) for i in range(1, len(parts), 2)]
    return out


def _tables(body: str) -> list[list[list[str]]]:
    """Every markdown table in ``body``: rows of cells, the header first (the rule dropped)."""
    tables, current = [], []
    for line in body.splitlines() + [""]:
        if line.startswith("| ") or line.startswith("|---"):
            if not line.startswith("|---"):
                cells = re.split(r"(?<!\\) \| ", line[2:-2] if line.endswith(" |") else line[2:])
                current.append([c.replace("\\|", "|") for c in cells])
        elif current:
            tables.append(current)
            current = []
    return tables


def _value(cell: str) -> float | None:
    """A percentage cell (``**98.10%**``, ``98.10% (97.7–98.5)``) as a fraction; None for ``–``."""
    m = re.search(r"(-?\d+(?:\.\d+)?)%", cell or "")
    return float(m.group(1)) / 100 if m else None


def _whole(value: float | None, n: int) -> bool:
    """Whether ``value``, shown to 0.01 points, can be k/n for a whole k."""
    if value is None:
        return True
    k = value * n
    return abs(k - round(k)) <= 0.00005 * n + 1e-9


def _held_out_tables(sections) -> dict[str, tuple[list[list[str]], list[int]]]:
    """Test set -> (table rows with header, the listed example counts) of the old held-out section."""
    found = {}
    for heading, body in sections:
        if heading not in ("Held-out accuracy", "Validation accuracy"):
            continue
        blocks = re.split(r"(?m)^### Test set `([^`]+)`\s*$", body)
        named = [("test" if heading == "Held-out accuracy" else "val", blocks[0])] if len(blocks) == 1 else \
            [(blocks[i], blocks[i + 1]) for i in range(1, len(blocks), 2)]
        for test_set, text in named:
            tables = _tables(text)
            if not tables:
                continue
            m = re.search(r"(?:Held-out|Validation) examples: ([\d, ]+)\.", text)
            counts = [int(x.replace(",", "")) for x in re.split(r",\s+", m.group(1))] if m else []
            found[test_set] = (tables[0], counts)
    return found


def _reproducibility(sections) -> tuple[dict[str, dict], dict, dict]:
    """Per run (id prefix) its status, command, commit, fingerprint and backend; the best run's details;
    its data card's prepared splits (split -> images, length histogram)."""
    body = dict(sections).get("Reproducibility", "")
    runs, best, card = {}, {}, {}
    for table in _tables(body):
        header = table[0]
        if header[:2] == ["Run", "Status"]:
            for row in table[1:]:
                m = re.search(r"`([0-9a-f]{8})`", row[0])
                if m:
                    runs[m.group(1)] = dict(zip(header, row))
        elif header == ["", ""]:
            best = {row[0]: row[1] for row in table[1:] if len(row) == 2}
        elif header[:2] == ["Prepared split", "Images"]:
            for row in table[1:]:
                info = dict(zip(header, row))
                lengths = dict(item.split(":", 1) for item in info.get("Lengths", "").split() if ":" in item)
                card[info["Prepared split"]] = {"images": int(info["Images"]) if info["Images"].isdigit() else None,
                                                "lengths": {k: int(v) for k, v in lengths.items()}}
    return runs, best, card


def _digit_totals(lengths: dict[str, int]) -> dict[str, int]:
    """Digits at each position (and in all) of a split with this length histogram."""
    def at_least(p: int) -> int:
        return sum(n for k, n in lengths.items() if (k == ">5") or (k.isdigit() and int(k) >= p))

    out = {f"digit{p}_accuracy": at_least(p) for p in range(1, MAX_DIGITS + 1)}
    out["digit_accuracy"] = sum(out.values())
    return out


def _full_id(prefix: str, summary: dict) -> str:
    ids = re.findall(r"\b[0-9a-f]{32}\b", summary.get("command") or "") + [summary.get("best_run") or ""]
    return next((i for i in ids if i.startswith(prefix)), prefix)


def _legacy_results(summary: dict, sections) -> tuple[list[dict], list[str]]:
    """Per-run results (report.json format 3's layout) from an old report's tables, and notes on counts."""
    held = _held_out_tables(sections)
    if not held:
        raise HarnessError("no held-out or validation table to rebuild from (is this a harness report?)")
    repro, best, card = _reproducibility(sections)
    best_fp = (best.get("Dataset fingerprint") or "").strip("`")
    assumed: dict[str, dict] = {}  # run -> {"name", "sets": {test set: (count, sizes that fit)}, "digits": bool}
    results = {}
    for test_set, (table, counts) in held.items():
        header = table[0]
        for row in table[1:]:
            cells = dict(zip(header, row))
            m = re.search(r"^(.*) `([0-9a-f]{8})`$", cells.get("Run", ""))
            if not m:
                continue  # the published reference rows
            name, prefix = m.groups()
            run = results.setdefault(prefix, _legacy_run(name, _full_id(prefix, summary), cells, repro.get(prefix, {}),
                                                         best if prefix == (summary.get("best_run") or "")[:8] else {}))
            values = {key: _value(cells.get(column, "")) for column, key in _SHOWN.items()}
            fp = (repro.get(prefix, {}).get("Dataset fingerprint") or best.get("Dataset fingerprint") or "").strip("`")
            split = card.get(test_set) if best_fp and (fp and best_fp.startswith(fp[:12])) else None
            if split and split.get("images"):
                total = {"sequence_accuracy": split["images"], "length_accuracy": split["images"],
                         **_digit_totals(split["lengths"])}
            else:
                fits = [n for n in sorted(counts) if _whole(values["sequence_accuracy"], n)
                        and _whole(values["length_accuracy"], n)]
                n = fits[0] if fits else None
                total = {"sequence_accuracy": n, "length_accuracy": n}
                note = assumed.setdefault(prefix, {"name": name, "sets": {}, "digits": False})
                if n is not None and len(fits) > 1:
                    note["sets"][test_set] = (n, fits)
            accuracy = {k: measure(v, total.get(k)) for k, v in values.items() if v is not None and total.get(k)}
            if any(v is not None and not total.get(k) for k, v in values.items()):
                assumed.setdefault(prefix, {"name": name, "sets": {}, "digits": False})["digits"] = True
            run["accuracy"][test_set] = {**accuracy, "coverage_at_98": _value(cells.get("Coverage at 98%", "")),
                                         "examples": total.get("sequence_accuracy")}
            run["comparable"][test_set] = comparable(run["data_name"], test_set)
    notes = []
    for prefix, note in assumed.items():
        parts = [f"{n:,} images on `{t}` (the smallest of {', '.join(f'{c:,}' for c in fits)} its figures fit)"
                 for t, (n, fits) in sorted(note["sets"].items())]
        if note["digits"]:
            parts.append("no per-position count, so its per-position accuracies are left out "
                         "(figures/per_position.png shows them)")
        if parts:
            notes.append(f"`{note['name']}` (`{prefix}`): " + "; ".join(parts))
    return list(results.values()), notes


def _legacy_run(name: str, run_id: str, cells: dict, repro: dict, best: dict) -> dict:
    data = scrub_paths(cells.get("Data", ""))
    commit = (best.get("Git commit") or repro.get("Git commit") or "").replace("`", "")
    dirty = "(dirty)" in commit
    commit = commit.replace("(dirty)", "").strip() or None
    ips = cells.get("Images/s", "–").replace(",", "")
    return {"run_id": run_id, "name": name, "status": repro.get("Status") or ("FINISHED" if best else None),
            "started": None, "model": cells.get("Model"), "policy": cells.get("Policy"), "data": data,
            "data_name": (re.match(r"[\w-]+", data) or [None])[0], "epochs": cells.get("Epochs"),
            "wall_time": cells.get("Wall time"), "images_per_second": float(ips) if _number(ips) else None,
            "commit": commit, "dirty": dirty, "harness_version": None,
            "command": scrub_paths((best.get("Command") or repro.get("Command") or "").strip("`")) or None,
            "dataset_fingerprint": (best.get("Dataset fingerprint") or repro.get("Dataset fingerprint") or
                                    "").strip("`") or None,
            "accuracy": {}, "comparable": {}}


def _number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _upgrade(run: dict) -> dict:
    """A format 2 run (accuracies as plain values) in format 3's layout (intervals from the counts held)."""
    run = dict(run)
    name = run.get("data_name") or (re.match(r"[\w-]+", run.get("data") or "") or [None])[0]
    run["data_name"] = name
    accuracy = {}
    for test_set, values in (run.get("accuracy") or {}).items():
        n = values.get("examples")
        kept = {k: measure(values.get(k), n) for k in ("sequence_accuracy", "length_accuracy")
                if values.get(k) is not None}
        accuracy[test_set] = {**kept, "coverage_at_98": values.get("coverage_at_98"), "examples": n}
    run["accuracy"] = accuracy
    run["comparable"] = {t: comparable(name, t) for t in accuracy}
    return run


# ------------------------------------------------------------------------------------ the rebuild

def rebuild_report(folder: str | Path) -> Path:
    """Rewrite ``folder``'s README.md and report.json from what the folder holds (see the module's
    docstring); returns the README. Figures are kept, less the leaderboard (drawn without intervals)."""
    folder = Path(folder)
    try:
        summary = json.loads((folder / "report.json").read_text())
        old = (folder / "README.md").read_text()
    except FileNotFoundError as exc:
        raise HarnessError(f"{exc.filename}: missing (a report folder holds README.md and report.json)") from None
    except ValueError as exc:
        raise HarnessError(f"{folder / 'report.json'}: not a report summary ({exc})") from None
    if not isinstance(summary, dict):
        raise HarnessError(f"{folder / 'report.json'}: not a report summary (a JSON object is expected)")
    sections = _sections(old)
    notes: list[str] = []
    if summary.get("format", 1) >= 3 and summary.get("results"):
        results, notes = summary["results"], list((summary.get("rebuilt") or {}).get("counts") or [])
    elif summary.get("results"):
        results = [_upgrade(r) for r in summary["results"]]
    else:
        results, notes = _legacy_results(summary, sections)
    results = scrub_json(results)
    objective = summary.get("objective") or ("test_sequence_accuracy" if any("test" in r["accuracy"] for r in results)
                                             else "val_sequence_accuracy")
    test_set = objective[:-len("_sequence_accuracy")] if objective.endswith("_sequence_accuracy") else "test"
    ranked = apart(sorted(results, key=lambda r: -_sequence(r, test_set)), lambda r: r.get("data_name"),
                   lambda r: bool(r["comparable"].get(test_set)), lambda r: r.get("started") or "")
    command = rebuild_command(folder)
    text, comparisons = _document(summary, sections, ranked, test_set, command, notes)
    atomic.write_text(folder / "README.md", scrub_paths(text))
    stale = folder / "figures" / "leaderboard.png"
    if stale.exists() and "figures/leaderboard.png" not in text:
        stale.unlink()
    best = ranked[0]
    best_seq = (best["accuracy"].get(test_set) or {}).get("sequence_accuracy") or {}
    mine = ("format", "command", "objective", "interval", "best_run", "best_sequence_accuracy", "best_sequence_interval",
            "best_comparable", "best_data", "results", "comparisons", "seed_groups", "rebuilt", "generated")
    out = {**{k: v for k, v in summary.items() if k not in mine},
           "format": REBUILT_FORMAT, "command": command, "objective": objective, "interval": "95% Wilson score",
           "best_run": best["run_id"], "best_sequence_accuracy": best_seq.get("value"),
           "best_sequence_interval": best_seq.get("interval"),
           "best_comparable": bool(best["comparable"].get(test_set)), "best_data": best.get("data_name"),
           "results": ranked, "comparisons": comparisons, "seed_groups": summary.get("seed_groups") or [],
           "rebuilt": {"from": (summary.get("rebuilt") or {}).get("from") or (
                           "report.json and the README.md tables generated from MLflow"
                           if summary.get("format", 1) < 3 else "report.json"),
                       "generated_from_mlflow": (summary.get("rebuilt") or {}).get("generated_from_mlflow")
                       or summary.get("generated"), "mlflow_command": (summary.get("rebuilt") or {}).get(
                           "mlflow_command") or summary.get("command"), "counts": notes},
           "generated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic.write_text(folder / "report.json", json.dumps(scrub_json(out), indent=1) + "\n")
    return folder / "README.md"


def _sequence(run: dict, test_set: str) -> float:
    value = ((run["accuracy"].get(test_set) or {}).get("sequence_accuracy") or {}).get("value")
    return -1.0 if value is None else value


def _document(summary: dict, sections, ranked: list[dict], test_set: str, command: str,
              notes: list[str]) -> tuple[str, list[dict]]:
    origin = (summary.get("rebuilt") or {}).get("mlflow_command") or summary.get("command")
    generated = ((summary.get("rebuilt") or {}).get("generated_from_mlflow") or summary.get("generated") or "")[:10]
    head = [f"# {summary.get('title') or summary.get('name') or 'Report'}",
            f"Rebuilt by `{command}` from this folder's record: its report.json and the tables `harness report` "
            f"generated from MLflow on {generated or 'an earlier date'} (`{origin}`), whose runs are in a store "
            "not held here; that command rebuilds it in full where they are. Held-out figures are as MLflow held "
            "them, each with its 95% interval and which differences are within noise; the other sections are "
            "carried over as generated."]
    out = ["\n\n".join(head)]
    leaders = firsts(ranked, lambda r: r.get("data_name"))
    for best in leaders if len(ranked) > 1 else []:
        seq = (best["accuracy"].get(test_set) or {}).get("sequence_accuracy")
        if not seq:
            continue
        line = f"held-out sequence accuracy: {pct_ci(seq['value'], seq['interval'], bold=True)}, " \
               f"`{best['name']} ({best['run_id'][:8]})`"
        if best["comparable"].get(test_set):
            value = seq["value"]
            line += ": " + ", ".join(f"{'✅ meets' if value >= ref else f'{100 * (ref - value):.2f} pp below'} "
                                     f"{name} ({pct(ref)})" for name, ref in REFERENCES) + "."
        else:
            line += f"; {not_comparable(best['data_name'], test_set)}."
        out.append(f"Best {line}" if best is ranked[0] else
                   f"On other test data (`{best.get('data_name') or 'unknown'}`): best {line}")
    out.append(_accuracy_text(ranked, notes))
    comparisons: list[dict] = []
    carried = [(h, b) for h, b in sections[1:] if h not in _REPLACED]
    old_ranking = next((_tables(b)[0] for h, b in sections if h in ("Runs compared", "Sweep") and _tables(b)), None)
    if len(ranked) > 1:
        text, comparisons = _comparison_text(ranked, test_set, old_ranking)
        out.append(text)
    for heading, body in carried:
        if ranked and f"({ranked[0]['run_id'][:8]})" not in body:  # generated when another run led the ranking
            body = body.replace(" (the best run).", ".").replace("\n### Best run: ", "\n### Run: ")
        out.append(f"## {heading}\n\n{body.strip()}")
    return "\n\n".join(out) + "\n", comparisons


def _accuracy_text(ranked: list[dict], notes: list[str]) -> str:
    sets = sorted({t for r in ranked for t in r["accuracy"]}, key=lambda t: (t != "test", t))
    out = ["## Held-out accuracy" if sets != ["val"] else "## Validation accuracy"]
    shown = [c for c, key in _SHOWN.items() if any((r["accuracy"].get(t) or {}).get(key) for r in ranked for t in sets)]
    header = ["Run", "Model", "Policy", "Data", "Epochs", "Wall time", "Images/s", *shown, "Coverage at 98%",
              "vs Goodfellow 2014 (96.03%)", "vs report (92.4%)"]
    for test_set in sets:
        if len(sets) > 1:
            out.append(f"### Test set `{test_set}`")
        rows = []
        for r in ranked:
            m = r["accuracy"].get(test_set) or {}
            seq = (m.get("sequence_accuracy") or {}).get("value")
            like = bool(r["comparable"].get(test_set))
            rows.append([f"{r['name']} `{r['run_id'][:8]}`", r.get("model") or "–", r.get("policy") or "–",
                         r.get("data") or "–", r.get("epochs") or "–", r.get("wall_time") or "–",
                         "–" if r.get("images_per_second") is None else f"{r['images_per_second']:,.0f}",
                         *[pct_ci((m.get(_SHOWN[c]) or {}).get("value"), (m.get(_SHOWN[c]) or {}).get("interval"),
                                  bold=c == "Sequence (global)") for c in shown],
                         pct(m.get("coverage_at_98")), gap(seq, GOODFELLOW_2014, like),
                         gap(seq, REPORT_CONV_ONLY, like)])
        out.append(markdown_table(header, rows))
        counts = sorted({(r["accuracy"].get(test_set) or {}).get("examples") for r in ranked} - {None})
        if counts:
            out.append(f"Held-out examples: {', '.join(f'{n:,}' for n in counts)}.")
    reasons = sorted({not_comparable(r["data_name"], t) for r in ranked for t in r["accuracy"]
                      if not r["comparable"].get(t)})
    out.append("Sequence (global) accuracy: the whole number right. Digit p: accuracy of the p-th digit over "
               "examples that have one. Coverage at 98%: the fraction kept, rejecting the least confident, at 98% "
               "sequence accuracy (a fraction kept, not of right answers: no interval). In brackets: the 95% "
               "Wilson score interval of each accuracy (its right of total images or digits).")
    out.append("Published results are on SVHN's test set (Goodfellow et al. 2014 96.03%, the report's conv-only "
               "variant 92.40%); ✅ marks a result on SVHN's test set at or above one. "
               + (" ".join(f"{x[0].upper()}{x[1:]}." for x in reasons) + " No mark and no gap there." if reasons
                  else ""))
    if notes:
        out.append("Counts: a run's are its data card's where it used the best run's data (the card is in "
                   "Reproducibility); the others' are not recorded per run, so each takes the smallest of the report's "
                   "test set sizes its sequence and length accuracies are whole fractions of, and its interval is "
                   "never narrower than the true one. " + ". ".join(notes) + ".")
    return "\n\n".join(out)


def _comparison_text(ranked: list[dict], test_set: str, old_ranking) -> tuple[str, list[dict]]:
    params = {}
    computed = ("vs the run above", "vs the best")  # columns of an earlier rebuild, not params
    if old_ranking:
        header = old_ranking[0]
        for row in old_ranking[1:]:
            m = re.search(r"`([0-9a-f]{8})`", row[1] if len(row) > 1 else "")
            if m:
                params[m.group(1)] = dict(zip(header[3:], row[3:]))
    keys = [k for k in old_ranking[0][3:] if k not in computed] if old_ranking else []
    rows, comparisons = [], []
    seq = [((r["accuracy"].get(test_set) or {}).get("sequence_accuracy") or measure(None, None)) for r in ranked]
    for i, r in enumerate(ranked):
        cells = ["", ""]
        peers = [j for j, o in enumerate(ranked) if o.get("data_name") == r.get("data_name")]  # ranked apart
        k = peers.index(i)
        if k > 0 and seq[i]["value"] is not None:
            for column, j in enumerate((peers[k - 1], peers[0])):
                if column == 1 and k == 1:
                    cells[1] = "(the run above)"
                    continue
                # this run's minus the other's
                result = compare(seq[i], seq[j])
                comparisons.append({"a": r["run_id"], "b": ranked[j]["run_id"], "metric": f"{test_set}_sequence_accuracy",
                                    **result})
                cells[column] = verdict(result)
        rows.append([str(k + 1), f"{r['name']} `{r['run_id'][:8]}`", pct_ci(seq[i]["value"], seq[i]["interval"]),
                     *cells, *[scrub_paths(params.get(r["run_id"][:8], {}).get(k, "–")) for k in keys]])
    text = "\n\n".join([
        "## Runs compared",
        f"Ranked by `{test_set}_sequence_accuracy`" + (f"; what differs between runs: "
                                                       f"{', '.join(f'`{k}`' for k in keys)}." if keys else "."),
        markdown_table(["Rank", "Run", f"{test_set}_sequence_accuracy", "vs the run above", "vs the best", *keys], rows),
        "No per-image predictions are held here, so each difference is judged by whether the two runs' 95% Wilson "
        "intervals overlap (overlapping: within noise; runs on different test images can be compared no other "
        "way); runs scored on different data are not compared" + (
            ": each is ranked within its own data (Rank), SVHN's test split first, then the data most runs were "
            "scored on" if len({r.get("data_name") for r in ranked}) > 1 else "")
        + ". Differences are this run's minus the other's. A ranking within noise is not a ranking."])
    return text, comparisons


def interval_check(summary: dict) -> list[str]:
    """Accuracies in a report.json without an interval (what a committed report must not hold)."""
    missing = []
    for run in summary.get("results") or []:
        for test_set, values in (run.get("accuracy") or {}).items():
            for key in ACCURACIES:
                m = values.get(key)
                if isinstance(m, dict) and m.get("value") is not None and not m.get("interval"):
                    missing.append(f"{run.get('name')} {test_set} {key}")
                elif isinstance(m, (int, float)):
                    missing.append(f"{run.get('name')} {test_set} {key} (no interval)")
    return missing


__all__ = ["rebuild_report", "rebuild_command", "interval_check"]
