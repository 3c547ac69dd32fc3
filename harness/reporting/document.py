"""The contents of a report: which sections, in which order, from the runs gathered from MLflow.

``build_document`` returns the document (see ``render``) and the summary that ``report.json`` holds:
held-out accuracy against the published references, the run or the comparison of runs, learning
curves, per-position accuracy, errors (from the logged per-example predictions) and reproducibility.
"""

from __future__ import annotations

from datetime import datetime, timezone

from harness import HELDOUT_FOLDS, MAX_DIGITS, __version__
from harness.reporting.figures import (
    fig_confusion,
    fig_coverage,
    fig_gallery,
    fig_hyperparameters,
    fig_leaderboard,
    fig_learning_curves,
    fig_per_position,
    png,
)
from harness.reporting.gather import (
    PRIMARY,
    Target,
    by_length,
    firsts,
    held_out_sets,
    images_per_second,
    read_json,
    read_predictions,
    read_worst,
    test_data,
    wall_seconds,
)
from harness.reporting.noise import (
    FOLD,
    compare,
    fold_groups,
    measure,
    measures,
    same_test_data,
    seed_groups,
    spread,
    totals,
    val_examples,
    verdict,
)
from harness.reporting.render import Doc
from harness.reporting.tables import (
    ACCURACY_COLUMNS,
    RUN_COLUMNS,
    data_text,
    epochs_text,
    headline_rows,
    history_table,
    varying_params,
)
from harness.reporting.text import (
    REFERENCES,
    comparable,
    duration,
    missing,
    not_comparable,
    pct,
    pct_ci,
    plural,
    run_label,
    when,
)
from harness.tracking import query, store

SUMMARY_FORMAT = 3  # report.json's layout: 2 added the per-run results and the versions that measured them;
# 3: each accuracy as {value, right, total, interval} (95% Wilson), whether it is comparable with the
# published SVHN results, the comparisons of runs (McNemar or interval overlap) and the seed groups; also,
# without a new format, the fold groups (runs held out on different folds of their train folder, pooled)

INTERVAL_LEGEND = ("In brackets: the 95% Wilson score interval of each accuracy (from its right and total "
                   "images, or digits for a position).")


class Measured:
    """Each run's accuracies with their intervals, per held-out set (or ``val``), and its logged per-example
    predictions, read from MLflow once for the whole report."""

    def __init__(self, target: Target, sets: list[str]):
        self.target, self.sets = target, sets or ["val"]
        self._tables: dict = {}
        self.by_set = {test_set: {run.run_id: measures(run, test_set, target.objective, target.lower,
                                                       self.predictions(run, test_set))
                                  for run in target.runs} for test_set in self.sets}

    def predictions(self, run, test_set: str = PRIMARY):
        if test_set == "val":
            return None
        key = (run.run_id, test_set)
        if key not in self._tables:
            self._tables[key] = read_predictions(run.run_id, test_set)
        return self._tables[key]

    def score(self, run) -> dict:
        """The run's objective as a measure (its interval where the objective is an accuracy)."""
        objective, value = self.target.objective, self.target.scores[run.run_id]
        if "accuracy" not in objective:
            return measure(value, None)
        name = objective.split("_", 1)[1] if objective.startswith("val_") else None
        if objective.startswith("val_"):
            total = val_examples(run) if name in ("sequence_accuracy", "length_accuracy") else None
        else:
            test_set = next((t for t in sorted(self.sets, key=len, reverse=True) if objective.startswith(t + "_")),
                            None)
            total = totals(run, test_set, self.predictions(run, test_set)).get(
                objective[len(test_set) + 1:]) if test_set else None
        return measure(value, total)

    def compare(self, a, b) -> dict:
        """Run A against run B on the objective: McNemar on the held-out images where both logged theirs
        and the objective is that set's sequence accuracy, else interval overlap."""
        objective = self.target.objective
        test_set = objective[:-len("_sequence_accuracy")] if objective.endswith("_sequence_accuracy") else None
        if test_set is not None and test_set != "val" and test_set in self.sets:
            return self.compare_on(a, b, test_set)
        return compare(self.score(a), self.score(b), same_data=same_test_data(a.params, b.params))

    def compare_on(self, a, b, test_set: str) -> dict:
        """Run A against run B on a held-out set's sequence accuracy: McNemar where both were read on the
        same images (same data, logged predictions naming the same images), else interval overlap."""
        same = same_test_data(a.params, b.params)
        seq_a, seq_b = (self.by_set[test_set][r.run_id]["sequence_accuracy"] for r in (a, b))
        return compare(seq_a, seq_b, self.predictions(a, test_set), self.predictions(b, test_set), same_data=same)


def build_document(target: Target, rebuild: str, origin_command: str | None = None) -> tuple[Doc, dict]:
    """The report of ``target``, and its summary for the index."""
    doc, runs = Doc(), target.runs
    best, sets = runs[0], held_out_sets(runs)
    doc.h(1, target.title)
    if origin_command and origin_command != rebuild:
        doc.p(f"Regenerate: `{origin_command}` (runs it again). Rebuild this page from MLflow: `{rebuild}`")
    else:
        doc.p(f"Regenerate: `{rebuild}`")
    covered = {"run": f"MLflow run `{best.run_id}` ({best.status}, started {when(best.start_time)})",
               "runs": f"{len(runs)} MLflow runs",
               "experiment": f"{plural(len(runs), 'run')} of MLflow experiment `{target.experiment}`",
               "sweep": f"{plural(len(runs), 'trial')} of sweep run `{target.parent.run_id if target.parent else ''}`"}
    doc.p(f"Generated {when(datetime.now(timezone.utc).timestamp())} from {covered[target.kind]} "
          f"in `{store.display_uri()}`.")
    unfinished = [r for r in runs if r.status != "FINISHED"]
    if unfinished and target.kind != "run":
        doc.p(f"Not finished: {', '.join(f'`{run_label(r)}` ({r.status})' for r in unfinished)}.")

    measured = Measured(target, sets)
    primary = measured.by_set.get(PRIMARY, {})
    held = [r for r in runs if primary.get(r.run_id, {}).get("sequence_accuracy", {}).get("value") is not None
            and same_test_data(r.params, best.params)]
    top = max(held, key=lambda r: primary[r.run_id]["sequence_accuracy"]["value"]) if held else None
    if target.kind != "run":
        leaders = _test_data_leaders(runs)
        doc.p(_best_line(best, measured, target))
        for leader in leaders[1:]:
            doc.p(f"On other test data ({_test_data_text(leader)}): {_best_line(leader, measured, target, continued=True)}")
    _accuracy_section(doc, target, sets, measured)
    comparisons, groups, folds = [], [], []
    if target.kind == "run":
        _run_section(doc, best)
    else:
        comparisons, groups = _comparison_section(doc, target, measured)
        folds = _fold_section(doc, target, measured)
    _curves_section(doc, target, sets)
    _errors_section(doc, target, sets)
    _reproducibility_section(doc, target)
    covers = {"run": "1 run", "runs": f"{len(runs)} runs",
              "experiment": f"{plural(len(runs), 'run')} of `{target.experiment}`",
              "sweep": f"{plural(len(runs), 'sweep trial')}"}[target.kind]
    top_measure = primary[top.run_id]["sequence_accuracy"] if top else None
    summary = {"title": target.title, "kind": target.kind, "covers": covers, "runs": len(runs),
               "best_run": best.run_id, "best_sequence_accuracy": top_measure["value"] if top else None,
               "best_sequence_interval": top_measure["interval"] if top else None,
               "best_comparable": bool(top and comparable(top.params.get("data.name"), PRIMARY)),
               "best_data": top.params.get("data.name") if top else None,
               "command": rebuild, "format": SUMMARY_FORMAT, "harness_version": __version__,
               "objective": target.objective, "interval": "95% Wilson score",
               "results": [_run_summary(run, target, measured) for run in runs],
               "comparisons": comparisons, "seed_groups": groups, "fold_groups": folds}
    return doc, summary


def _run_summary(run, target: Target, measured: Measured) -> dict:
    """One run in ``report.json``: what it is, what it measured (each accuracy with its interval, and
    whether it is comparable with the published SVHN results), and the code and data that measured it
    (what the results page shows, so that each figure there names the version it belongs to)."""
    p, t = run.params, run.tags
    return {"run_id": run.run_id, "name": run.name, "status": run.status,
            "started": datetime.fromtimestamp(run.start_time, tz=timezone.utc).isoformat(timespec="seconds"),
            "model": p.get("model.name"), "policy": p.get("augment.policy"), "data": data_text(p),
            "epochs": epochs_text(run), "wall_seconds": _finite(wall_seconds(run)),
            "images_per_second": _finite(images_per_second(run)), "score": _finite(target.scores[run.run_id]),
            "score_interval": measured.score(run)["interval"], "data_name": p.get("data.name"),
            "seed": p.get("train.seed"),
            "accuracy": {test_set: by_run[run.run_id] for test_set, by_run in measured.by_set.items()},
            "comparable": {test_set: comparable(p.get("data.name"), test_set) for test_set in measured.by_set},
            "commit": t.get("mlflow.source.git.commit"), "dirty": t.get("harness.git_dirty") == "true",
            "harness_version": t.get("version.svhn-harness"), "backend": t.get("harness.backend"),
            "device": t.get("harness.device"), "dataset_fingerprint": t.get("harness.dataset_fingerprint")}


def _finite(value) -> float | None:
    """A number as JSON holds it: None for a value never logged (JSON has no NaN)."""
    return None if missing(value) else float(value)


def _test_data_leaders(runs: list) -> list:
    """The first run of each test data, in the report's order (runs are ranked within their test data:
    ``gather.by_test_data``)."""
    return firsts(runs, lambda r: test_data(r.params))


def _test_data_text(run) -> str:
    p = run.params
    test = p.get("data.options.test")
    return f"`{p.get('data.name') or 'unknown'}`" + (f", test folder `{test}`" if test else "")


def _best_line(best, measured: Measured, target: Target, continued: bool = False) -> str:
    seq = measured.by_set.get(PRIMARY, {}).get(best.run_id, {}).get("sequence_accuracy") or measure(None, None)
    lead = "best" if continued else "Best"  # continued: after "On other test data (...): "
    if seq["value"] is None:
        value = target.scores[best.run_id]
        score = measured.score(best)
        shown = pct_ci(value, score["interval"]) if "accuracy" in target.objective else f"{value:.4g}"
        return f"{lead} by `{target.objective}`: `{run_label(best)}`" + ("." if missing(value) else f", {shown}.")
    data = best.params.get("data.name")
    line = f"{lead} held-out sequence accuracy: {pct_ci(seq['value'], seq['interval'], bold=True)}, `{run_label(best)}`"
    if not comparable(data, PRIMARY):
        return f"{line}; {not_comparable(data, PRIMARY)}."
    value = seq["value"]
    gaps = ", ".join(f"{'✅ meets' if value >= ref else f'{100 * (ref - value):.2f} pp below'} {name} ({pct(ref)})"
                     for name, ref in REFERENCES)
    return f"{line}: {gaps}."


def _accuracy_section(doc: Doc, target: Target, sets: list[str], measured: Measured) -> None:
    doc.h(2, "Held-out accuracy" if sets else "Validation accuracy")
    if not sets:
        ranking = target.objective if target.objective.startswith("val_") else "val_sequence_accuracy"
        doc.p(f"No run was evaluated on a held-out test set (no `test_` metrics): validation accuracy at "
              f"each run's best epoch by `{ranking}`, the weights the run keeps.")
    for test_set in sets or ["val"]:
        if len(sets) > 1:
            doc.h(3, f"Test set `{test_set}`")
        doc.table([RUN_COLUMNS + ACCURACY_COLUMNS, *headline_rows(target.runs, test_set, measured.by_set[test_set])])
        examples = sorted({m["examples"] for m in measured.by_set[test_set].values() if m["examples"]})
        if examples:
            doc.p(f"{'Held-out' if test_set != 'val' else 'Validation'} examples: "
                  f"{', '.join(f'{n:,}' for n in examples)}.")
    doc.p("Sequence (global) accuracy: the whole number right. Digit p: accuracy of the p-th digit over "
          "examples that have one. Coverage at 98%: the fraction kept, rejecting the least confident, at "
          "98% sequence accuracy (a fraction kept, not of right answers: no interval). " + INTERVAL_LEGEND)
    reasons = sorted({not_comparable(r.params.get("data.name"), t) for t in sets or ["val"] for r in target.runs
                      if not comparable(r.params.get("data.name"), t)})
    doc.p("The reference rows are published results on SVHN's test set; ✅ marks a result on SVHN's test set "
          "at or above one. " + (" ".join(f"{reason[0].upper()}{reason[1:]}." for reason in reasons)
                                 + " No mark and no gap there. " if reasons else "")
          + "Epochs: finished (of planned). Images/s: median training throughput over epochs.")


def _run_section(doc: Doc, run) -> None:
    p = run.params
    parameters = p.get("model.parameters")
    doc.h(2, "Run")
    doc.table([["", ""],
               ["Model", f"`{p.get('model.name')}`" + (f" ({int(float(parameters)):,} parameters)" if parameters else "")],
               ["Augmentation policy", f"`{p.get('augment.policy')}` (crop {p.get('augment.crop_size')})"],
               ["Data", f"`{data_text(p)}`"],
               ["Optimizer", f"{p.get('train.optimizer')}, lr {p.get('train.learning_rate')}, "
                             f"{p.get('train.schedule')} schedule, batch {p.get('train.batch_size')}, "
                             f"{epochs_text(run)} epochs"],
               ["Wall time", duration(wall_seconds(run))]])


def _comparison_section(doc: Doc, target: Target, measured: Measured) -> tuple[list, list]:
    """The ranking with each score's interval and which differences are within noise; runs that differ
    only in seed, grouped. Returns the comparisons and the seed groups for report.json."""
    runs, keys = target.runs, varying_params(target.runs)
    doc.h(2, "Sweep" if target.kind == "sweep" else "Runs compared")
    best_epoch = target.objective.startswith("val_")
    doc.p(f"Ranked by `{target.objective}`" + (" (the best epoch)" if best_epoch else "")
          + (f"; what differs between runs: {', '.join(f'`{k}`' for k in keys[:12])}." if keys else "."))
    intervals = {run.run_id: measured.score(run)["interval"] for run in runs}
    doc.figure("leaderboard.png", png(fig_leaderboard(runs, target.scores, target.objective, intervals)),
               f"Leaderboard: runs by {target.objective}, with 95% intervals")
    if target.kind == "sweep":
        doc.figure("hyperparameters.png", png(fig_hyperparameters(runs, target.scores, target.objective, keys)),
                   f"{target.objective} against each hyperparameter")
    shown = keys[:12]
    accuracy = "accuracy" in target.objective
    rows = [["Rank", "Run", target.objective, "vs the run above", "vs the best", *shown]]
    comparisons = []
    ranked = [r for r in runs if not missing(target.scores[r.run_id])]
    apart = len(_test_data_leaders(runs)) > 1
    for run in runs:
        score = measured.score(run)
        peers = [r for r in runs if same_test_data(r.params, run.params)]
        rank = peers.index(run) + 1
        peers = [r for r in ranked if r in peers]  # those with a score, ranked within the run's test data
        cells = ["", ""]
        if accuracy and run in peers and (i := peers.index(run)) > 0:
            for column, other in enumerate((peers[i - 1], peers[0])):
                if column == 1 and i == 1:
                    cells[1] = "(the run above)"
                    continue
                result = measured.compare(run, other)
                comparisons.append({"a": run.run_id, "b": other.run_id, "metric": target.objective, **result})
                cells[column] = verdict(result)
        value = score["value"]
        rows.append([str(rank), f"{run.name} `{run.run_id[:8]}`",
                     "–" if value is None else (pct_ci(value, score["interval"]) if accuracy else f"{value:.4g}"),
                     *cells, *[run.params.get(k, "–") for k in shown]])
    doc.table(rows)
    if accuracy:
        doc.p("Each difference is tested between the two runs named: where both were read on the same test "
              "images (their logged per-image predictions), by the exact McNemar test on the images exactly one "
              "of them reads right (p >= 0.05: within noise); otherwise by whether their 95% Wilson intervals "
              "overlap (overlapping: within noise), on the number of images each was scored on"
              + (" (validation: its split's size; trials log per-image predictions for test only)"
                 if best_epoch else "") + ". Differences are this run's minus the other's. A ranking within noise "
              "is not a ranking. Runs scored on different test data (another `data.name` or `data.options.test`) are "
              "not compared" + (": each is ranked within its own test data (Rank), SVHN's test split first, "
                                "then the test data most runs were scored on." if apart else "."))
    if target.objective != f"{PRIMARY}_sequence_accuracy" and PRIMARY in measured.by_set and len(ranked) > 1:
        _held_out_differences(doc, target, measured, ranked, comparisons)
    groups = _seed_section(doc, target, measured)
    return comparisons, groups


def _held_out_differences(doc: Doc, target: Target, measured: Measured, ranked: list, comparisons: list) -> None:
    """The runs' held-out sequence accuracy against the best run's (by the objective), paired where they
    were read on the same test images."""
    best = ranked[0]
    rows = [["Run", f"`{PRIMARY}` sequence accuracy", f"vs `{run_label(best)}` on `{PRIMARY}`"]]
    for run in ranked:
        seq = measured.by_set[PRIMARY][run.run_id]["sequence_accuracy"]
        cell = "(the best by the objective)"
        if run is not best and seq["value"] is not None:
            result = measured.compare_on(run, best, PRIMARY)
            comparisons.append({"a": run.run_id, "b": best.run_id, "metric": f"{PRIMARY}_sequence_accuracy", **result})
            cell = verdict(result)
        rows.append([f"{run.name} `{run.run_id[:8]}`", pct_ci(seq["value"], seq["interval"]), cell])
    doc.p(f"On the held-out `{PRIMARY}` set, against the best run by `{target.objective}`:")
    doc.table(rows)


def _seed_section(doc: Doc, target: Target, measured: Measured) -> list[dict]:
    groups = seed_groups(target.runs, target.scores)
    if not groups:
        return []
    accuracy = "accuracy" in target.objective
    doc.h(3, "Runs that differ only in seed")
    rows = [["Runs", "Model", "Policy", "Data", "Seeds", f"Mean {target.objective}", "Standard deviation",
             "Each seed"]]
    out = []
    for group in groups:
        values = [target.scores[r.run_id] for r in group]
        mean, std = spread(values)
        show = (lambda v: pct(v)) if accuracy else (lambda v: f"{v:.4g}")  # noqa: E731
        each = "; ".join(f"seed {r.params.get('train.seed', '?')}: "
                         + (pct_ci(v, measured.score(r)["interval"]) if accuracy else f"{v:.4g}")
                         for r, v in zip(group, values))
        p = group[0].params
        rows.append([", ".join(f"`{r.run_id[:8]}`" for r in group), p.get("model.name", "–"),
                     p.get("augment.policy", "–"), data_text(p), str(len(group)), show(mean),
                     "–" if missing(std) else (f"{100 * std:.2f} pp" if accuracy else f"{std:.4g}"), each])
        out.append({"runs": [r.run_id for r in group], "seeds": [r.params.get("train.seed") for r in group],
                    "metric": target.objective, "values": values, "mean": mean,
                    "std": None if missing(std) else std})
    doc.table(rows)
    doc.p("Same params but `train.seed`: the mean and sample standard deviation over seeds (n - 1) are the "
          "setting's figure; a single seed's is one draw of it.")
    return out


def _fold_section(doc: Doc, target: Target, measured: Measured) -> list[dict]:
    """Runs of one setting held out on different folds of their train folder: their test images pooled."""
    held_out = {run_id: m["sequence_accuracy"] for run_id, m in measured.by_set.get(PRIMARY, {}).items()}
    groups = fold_groups(target.runs, held_out)
    if not groups:
        return []
    doc.h(3, "Folds held out in turn")
    runs = {r.run_id: r for r in target.runs}
    rows = [["Runs", "Model", "Policy", "Data", "Seed", "Folds", f"`{PRIMARY}` sequence accuracy, pooled",
             "Each fold"]]
    for group in groups:
        p = runs[group["runs"][0]].params
        rows.append([", ".join(f"`{r[:8]}`" for r in group["runs"]), p.get("model.name", "–"),
                     p.get("augment.policy", "–"), data_text(p),
                     group["seed"], f"{', '.join(group['folds'])} of {HELDOUT_FOLDS}",
                     f"{pct_ci(group['value'], group['interval'])}, {group['right']:,} of {group['total']:,}",
                     "; ".join(f"fold {f}: {pct(v)}" for f, v in zip(group["folds"], group["values"]))])
    doc.table(rows)
    doc.p(f"Same params but `{FOLD}` (the quarter of the train folder held out as test) and `train.seed`: "
          "each seed's folds pooled, their right and total images summed. With every fold each image of the "
          "folder is read once, by a model that never trained on it, so the interval is that of the whole "
          "folder, narrower than one fold's.")
    return [{"metric": f"{PRIMARY}_sequence_accuracy", **g} for g in groups]


def _curves_section(doc: Doc, target: Target, sets: list[str]) -> None:
    doc.h(2, "Learning curves")
    if not doc.figure("learning_curves.png", png(fig_learning_curves(target.runs)),
                      "Learning curves: loss and sequence accuracy per epoch"):
        doc.p("No per-epoch metrics were logged.")
    if target.kind == "run" and (rows := history_table(target.runs[0])):
        doc.table(rows)
    doc.h(2, "Per-position accuracy")
    if not doc.figure("per_position.png", png(fig_per_position(target.runs, sets, target.objective, target.lower)),
                      "Per-position digit accuracy" + (" on the held-out set" if sets else ", validation")):
        doc.p("No per-position held-out metrics were logged.")


def _errors_section(doc: Doc, target: Target, sets: list[str]) -> None:
    doc.h(2, "Errors")
    curves, best_predictions, best = [], None, None
    for run in target.runs[:5]:
        for test_set in (sets if target.kind == "run" else [PRIMARY]):
            table = read_predictions(run.run_id, test_set)
            if table is None:
                continue
            curves.append((run_label(run) if target.kind != "run" else test_set, table))
            if best is None and test_set == PRIMARY:
                best_predictions, best = table, run
    if best is None:
        doc.p("No per-example predictions were logged (`predictions/test.csv.gz`; runs trained before the "
              "harness logged them have none), so there is no confusion matrix, coverage curve or error "
              "gallery.")
        return
    which = f"`{run_label(best)}` on `{PRIMARY}`"
    doc.p(f"From the per-example predictions logged with {which}"
          + (" (the best run)." if target.kind != "run" else "."))
    doc.figure("confusion.png", png(fig_confusion(best_predictions, f"{best.name}, {PRIMARY}")),
               "Digit confusion matrix (rows: true digit; colour: fraction of the row; numbers: counts)")
    doc.figure("coverage.png", png(fig_coverage(curves)),
               "Accuracy against coverage, rejecting the least confident first")
    _length_table(doc, curves, "Run" if target.kind != "run" else "Test set")
    worst = read_worst(best.run_id, PRIMARY)
    doc.h(3, "Worst errors")
    if worst is None or not len(worst["images"]):
        wrong = best_predictions[~best_predictions["correct"].astype(bool)]
        doc.p("No errors." if not len(wrong) else "No image crops of the errors were logged.")
        return
    doc.figure("errors.png", png(fig_gallery(worst, f"The {len(worst['images'])} most confident errors, {best.name}")),
               "The most confident errors: true number, number read, confidence")
    rows = [["#", "Image", "True", "Read", "Confidence"]]
    for i in range(len(worst["images"])):
        rows.append([str(i + 1), f"`{worst['name'][i]}`", _number(worst["true"][i]), _number(worst["predicted"][i]),
                     f"{100 * float(worst['confidence'][i]):.1f}%"])
    doc.table(rows)


def _length_table(doc: Doc, tables: list, first: str) -> None:
    """Sequence accuracy by the true number's length, each with its 95% interval and count."""
    counts = [(label, by_length(table)) for label, table in tables]
    lengths = sorted({n for _, found in counts for n in found})
    doc.h(3, "By number length")
    doc.p("Sequence accuracy of the numbers of each true length, from the same per-example predictions: which "
          "numbers the errors are in. In brackets: the 95% Wilson score interval; after it, right of total.")
    name = lambda n: f">{MAX_DIGITS} digits" if n > MAX_DIGITS else f"{n} digit{'s' if n != 1 else ''}"  # noqa: E731
    rows = [[first, *(name(n) for n in lengths)]]
    for label, found in counts:
        cells = []
        for n in lengths:
            right, total = found.get(n, (0, 0))
            shown = measure(right / total, total) if total else None
            cells.append(f"{pct_ci(shown['value'], shown['interval'])}, {right}/{total}" if shown else "–")
        rows.append([f"`{label}`", *cells])
    doc.table(rows)


def _number(text: str) -> str:
    return f"`{text}`" if text else "(no digits)"


def _reproducibility_section(doc: Doc, target: Target) -> None:
    doc.h(2, "Reproducibility")
    best = target.runs[0]
    if target.kind != "run":
        if target.parent is not None:
            doc.p(f"Sweep command: `{target.parent.tags.get('harness.command', '–')}`")
        rows = [["Run", "Status", "Command", "Git commit", "Dataset fingerprint", "Backend / device"]]
        for run in target.runs:
            t = run.tags
            rows.append([f"{run.name} `{run.run_id[:8]}`", run.status, f"`{t.get('harness.command', '–')}`",
                         _commit(t, short=True), _fingerprint(run, short=True),
                         f"{t.get('harness.backend', '–')} / {t.get('harness.device', '–')}"])
        doc.table(rows)
        doc.h(3, f"Best run: {run_label(best)}")
    t = best.tags
    versions = ", ".join(f"{k[len('version.'):]} {v}" for k, v in sorted(t.items()) if k.startswith("version."))
    doc.table([["", ""],
               ["Command", f"`{t.get('harness.command', '–')}`"],
               ["Git commit", _commit(t)],
               ["Dataset fingerprint", _fingerprint(best)],
               ["Backend / device", f"{t.get('harness.backend', '–')} / {t.get('harness.device', '–')}"],
               ["Python", t.get("harness.python", "–")],
               ["Packages", versions or "–"],
               ["MLflow run", f"`{best.run_id}`"]])
    card = read_json(best.run_id, "data_card.json")
    if card:
        _data_card(doc, card)
    spec = query.read_artifact(best.run_id, "spec.yaml")
    doc.p("Resolved spec (`spec.yaml`):" if spec is not None else "Resolved spec (from the run's params):")
    doc.code(spec.decode() if spec is not None else
             "\n".join(f"{k}: {v}" for k, v in sorted(best.params.items())), "yaml")


def _data_card(doc: Doc, card: dict) -> None:
    """The data card's summary: the prepared files, and what preparation found in the raw splits."""
    prepared = card.get("prepared") if isinstance(card.get("prepared"), dict) else \
        {k: v for k, v in card.items() if isinstance(v, dict) and "fingerprint" in v}  # the card's first layout
    doc.p(f"Data card (`data_card.json`{', `data_card.md` in full' if 'sources' in card else ''}):")
    rows = [["Prepared split", "Images", "Image size", "From", "Lengths", "Fingerprint (sha256)"]]
    for split, info in prepared.items():
        lengths = " ".join(f"{k}:{v}" for k, v in (info.get("length_histogram") or {}).items() if v)
        rows.append([split, str(info.get("images", info.get("count", "–"))), str(info.get("image_size", "–")),
                     ", ".join(info.get("from", [])) or "–", lengths or "–", f"`{info.get('fingerprint', '–')}`"])
    doc.table(rows)
    sources = card.get("sources") or {}
    if sources:
        rows = [["Raw split", "Annotated", "Readable", "Prepared", "Anomalies (what was done)"]]
        for split, info in sources.items():
            anomalies = "; ".join(f"{kind} {a.get('count', 0)} ({a.get('action', '')})"
                                  for kind, a in (info.get("anomalies") or {}).items()) or "none"
            rows.append([split, str(info.get("annotated", "–")), str(info.get("readable", "–")),
                         str(info.get("prepared", "–")), anomalies])
        doc.table(rows)


def _commit(tags: dict, short: bool = False) -> str:
    commit = tags.get("mlflow.source.git.commit")
    if not commit:
        return "–"
    return f"`{commit[:10] if short else commit}`" + (" (dirty)" if tags.get("harness.git_dirty") == "true" else "")


def _fingerprint(run, short: bool = False) -> str:
    """The run's dataset fingerprint tag: one hash over its prepared split files' fingerprints."""
    value = run.tags.get("harness.dataset_fingerprint")
    return "–" if not value else f"`{value[:12] if short else value}`"

