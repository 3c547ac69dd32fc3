"""The contents of a report: which sections, in which order, from the runs gathered from MLflow.

``build_document`` returns the document (see ``render``) and the summary that ``report.json`` holds:
held-out accuracy against the published references, the run or the comparison of runs, learning
curves, per-position accuracy, errors (from the logged per-example predictions) and reproducibility.
"""

from __future__ import annotations

from datetime import datetime, timezone

from harness import __version__
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
    accuracies,
    held_out_sets,
    images_per_second,
    metric,
    read_json,
    read_predictions,
    read_worst,
    wall_seconds,
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
    duration,
    missing,
    pct,
    plural,
    run_label,
    when,
)
from harness.tracking import query, store

SUMMARY_FORMAT = 2  # report.json's layout: 2 added the per-run results and the versions that measured them


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

    best_seq = metric(best, f"{PRIMARY}_sequence_accuracy")
    if target.kind != "run":
        doc.p(_best_line(best, best_seq, target))
    _accuracy_section(doc, target, sets)
    if target.kind == "run":
        _run_section(doc, best)
    else:
        _comparison_section(doc, target)
    _curves_section(doc, target, sets)
    _errors_section(doc, target, sets)
    _reproducibility_section(doc, target)
    held_out = [v for r in runs if not missing(v := metric(r, f"{PRIMARY}_sequence_accuracy"))]
    covers = {"run": "1 run", "runs": f"{len(runs)} runs",
              "experiment": f"{plural(len(runs), 'run')} of `{target.experiment}`",
              "sweep": f"{plural(len(runs), 'sweep trial')}"}[target.kind]
    summary = {"title": target.title, "kind": target.kind, "covers": covers, "runs": len(runs),
               "best_run": best.run_id, "best_sequence_accuracy": max(held_out) if held_out else None,
               "command": rebuild, "format": SUMMARY_FORMAT, "harness_version": __version__,
               "objective": target.objective, "results": [_run_summary(run, sets, target) for run in runs]}
    return doc, summary


def _run_summary(run, sets: list[str], target: Target) -> dict:
    """One run in ``report.json``: what it is, what it measured, and the code and data that measured it
    (what the results page shows, so that each figure there names the version it belongs to)."""
    p, t = run.params, run.tags
    measured = ({test_set: accuracies(run, test_set) for test_set in sets}
                or {"val": accuracies(run, "val", target.objective, target.lower)})
    return {"run_id": run.run_id, "name": run.name, "status": run.status,
            "started": datetime.fromtimestamp(run.start_time, tz=timezone.utc).isoformat(timespec="seconds"),
            "model": p.get("model.name"), "policy": p.get("augment.policy"), "data": data_text(p),
            "epochs": epochs_text(run), "wall_seconds": _finite(wall_seconds(run)),
            "images_per_second": _finite(images_per_second(run)), "score": _finite(target.scores[run.run_id]),
            "accuracy": {name: {k: _finite(v) for k, v in values.items()} for name, values in measured.items()},
            "commit": t.get("mlflow.source.git.commit"), "dirty": t.get("harness.git_dirty") == "true",
            "harness_version": t.get("version.svhn-harness"), "backend": t.get("harness.backend"),
            "device": t.get("harness.device"), "dataset_fingerprint": t.get("harness.dataset_fingerprint")}


def _finite(value) -> float | None:
    """A number as JSON holds it: None for a value never logged (JSON has no NaN)."""
    return None if missing(value) else float(value)


def _best_line(best, seq: float, target: Target) -> str:
    if missing(seq):
        value = target.scores[best.run_id]
        shown = pct(value) if "accuracy" in target.objective else f"{value:.4g}"
        return f"Best by `{target.objective}`: `{run_label(best)}`" + ("." if missing(value) else f", {shown}.")
    gaps = ", ".join(f"{'✅ meets' if seq >= ref else f'{100 * (ref - seq):.2f} pp below'} {name} ({pct(ref)})"
                     for name, ref in REFERENCES)
    return f"Best held-out sequence accuracy: **{pct(seq)}**, `{run_label(best)}`: {gaps}."


def _accuracy_section(doc: Doc, target: Target, sets: list[str]) -> None:
    doc.h(2, "Held-out accuracy" if sets else "Validation accuracy")
    if not sets:
        ranking = target.objective if target.objective.startswith("val_") else "val_sequence_accuracy"
        doc.p(f"No run was evaluated on a held-out test set (no `test_` metrics): validation accuracy at "
              f"each run's best epoch by `{ranking}`, the weights the run keeps.")
    for test_set in sets or ["val"]:
        if len(sets) > 1:
            doc.h(3, f"Test set `{test_set}`")
        doc.table([RUN_COLUMNS + ACCURACY_COLUMNS, *headline_rows(target.runs, test_set, target.objective,
                                                                  target.lower)])
        examples = {int(metric(r, f"{test_set}_examples")) for r in target.runs
                    if not missing(metric(r, f"{test_set}_examples"))}
        if examples:
            doc.p(f"Held-out examples: {', '.join(str(n) for n in sorted(examples))}.")
    doc.p("Sequence (global) accuracy: the whole number right. Digit p: accuracy of the p-th digit over "
          "examples that have one. Coverage at 98%: the fraction kept, rejecting the least confident, at "
          "98% sequence accuracy.")
    datasets = sorted({r.params.get("data.name", "?") for r in target.runs})
    note = ("✅ marks a result at or above the reference. The reference rows are published results on real "
            "SVHN")
    if datasets != ["svhn"]:
        note += (f"; this data is {', '.join(f'`{d}`' for d in datasets)}, so they are a yardstick, not a "
                 "like-for-like comparison")
    doc.p(note + ". Epochs: finished (of planned). Images/s: median training throughput over epochs.")


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


def _comparison_section(doc: Doc, target: Target) -> None:
    runs, keys = target.runs, varying_params(target.runs)
    doc.h(2, "Sweep" if target.kind == "sweep" else "Runs compared")
    best_epoch = target.objective.startswith("val_")
    doc.p(f"Ranked by `{target.objective}`" + (" (the best epoch)" if best_epoch else "")
          + (f"; what differs between runs: {', '.join(f'`{k}`' for k in keys[:12])}." if keys else "."))
    doc.figure("leaderboard.png", png(fig_leaderboard(runs, target.scores, target.objective)),
               f"Leaderboard: runs by {target.objective}")
    if target.kind == "sweep":
        doc.figure("hyperparameters.png", png(fig_hyperparameters(runs, target.scores, target.objective, keys)),
                   f"{target.objective} against each hyperparameter")
    shown = keys[:12]
    rows = [["Rank", "Run", target.objective, *shown]]
    for rank, run in enumerate(runs, 1):
        value = target.scores[run.run_id]
        rows.append([str(rank), f"{run.name} `{run.run_id[:8]}`",
                     "–" if missing(value) else (pct(value) if "accuracy" in target.objective else f"{value:.4g}"),
                     *[run.params.get(k, "–") for k in shown]])
    doc.table(rows)


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

