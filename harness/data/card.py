"""The data card of a preparation: what went into the prepared files, and every anomaly on the way.

Written as ``card.json`` (everything, every file named) and ``card.md`` (the same for people; long
lists cut short) beside the prepared split files, and logged to MLflow with every run that uses them
(``data_card.json``, ``data_card.md``). For each raw split (train, test, extra): image counts, the
number-length histogram, image width and height percentiles, colour modes, and each anomaly class
with what was done about it and the names of the files concerned:

- ``missing``, ``unreadable``, ``duplicate_name``, ``no_crop``: images left out (``data.bad_files:
  skip``; with ``error`` the first one stops the preparation instead, so a card never lists them)
- ``long_number``: more than 5 digits: kept as the length class ">5", or dropped (``data.long_numbers``)
- ``box_outside_image``: digit boxes reaching outside the image: they are clamped to it before the crop
- ``box_empty``: boxes of zero or negative width or height: left out of the crop's union of boxes
- ``converted``: grey, palette, alpha or 16-bit images: converted to 8-bit RGB (files by mode)

For each prepared file: its image count, size, length histogram, fingerprint and raw splits.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from harness import LENGTH_CLASSES, MAX_DIGITS, atomic
from harness.data.splitfile import PreparedSplit, length_histogram

CARD_JSON, CARD_MD = "card.json", "card.md"
PERCENTILES = (5, 25, 50, 75, 95)
_SHOWN = 20  # files listed per anomaly in card.md; card.json lists every one

ANOMALIES = {  # kind: what it is, in the order the card shows them
    "missing": "image files named in the annotations that are not there",
    "unreadable": "image files that cannot be read or decoded (not an image, truncated)",
    "duplicate_name": "image names the annotations list more than once",
    "no_crop": "images whose digit boxes leave nothing to crop (all outside the image)",
    "long_number": f"numbers longer than {MAX_DIGITS} digits",
    "box_outside_image": "images with digit boxes reaching outside the image",
    "box_empty": "images with digit boxes of zero or negative width or height",
    "converted": "images not stored as 8-bit RGB (grey, palette, alpha, 16-bit)",
}
_LEFT_OUT = ("missing", "unreadable", "duplicate_name", "no_crop")


@dataclasses.dataclass(frozen=True)
class Source:
    """One raw split as the preparation saw it.

    ``records``: its usable images (harness.data.records table, long numbers included); ``skipped``:
    (name, kind, detail) of the annotated images the records table left out; ``unprepared``:
    name -> (kind, detail) of the images preparation left out.
    """

    folder: Path
    records: pd.DataFrame
    skipped: list = dataclasses.field(default_factory=list)
    unprepared: Mapping[str, tuple[str, str]] = dataclasses.field(default_factory=dict)


def build_card(dataset: str, settings: Mapping[str, Any], sources: Mapping[str, Source],
               prepared: Mapping[str, tuple[Path, list[str]]]) -> dict:
    """The card as a JSON-able dict; ``prepared``: split -> (prepared file, raw splits it holds)."""
    files = {}
    for split, (path, origins) in prepared.items():
        entry = PreparedSplit(path).card()  # "from" goes after the size, as cards have always had it
        files[split] = {k: entry[k] for k in ("file", "images", "image_size")} | {"from": list(origins)} | entry
    return {"dataset": dataset, "settings": _plain(dict(settings)),
            "sources": {split: _source_card(source, settings) for split, source in sources.items()},
            "prepared": files}


def write_card(folder: str | os.PathLike, card: dict) -> Path:
    """card.md, then card.json (the one whose presence says the card is complete); returns card.json."""
    folder = Path(folder)
    atomic.write_text(folder / CARD_MD, render_markdown(card))
    atomic.write_text(folder / CARD_JSON, json.dumps(card, indent=1) + "\n")
    return folder / CARD_JSON


def read_card(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())


# ----------------------------------------------------------------------------------- one split


def _source_card(source: Source, settings: Mapping[str, Any]) -> dict:
    records = source.records
    left_out = {*(s[0] for s in source.skipped), *source.unprepared}
    kept = records[~records["name"].isin(left_out)]
    if settings.get("long_numbers") == "drop":
        kept = kept[kept["length"] <= MAX_DIGITS]
    return {
        "folder": str(source.folder),
        "annotated": len(records) + len(source.skipped),
        "readable": len(records),
        "prepared": len(kept),
        "length_histogram": length_histogram(np.minimum(records["length"].to_numpy(), LENGTH_CLASSES - 1)),
        "image_width": _percentiles(records["width"]),
        "image_height": _percentiles(records["height"]),
        "modes": {str(k): int(v) for k, v in records["mode"].value_counts().items()} if "mode" in records else {},
        "anomalies": _anomalies(source, settings),
    }


def _anomalies(source: Source, settings: Mapping[str, Any]) -> dict:
    records = source.records
    found: dict[str, dict] = {}
    for name, kind, detail in [*source.skipped, *((n, k, d) for n, (k, d) in source.unprepared.items())]:
        entry = found.setdefault(kind, {"files": [], "details": {}})
        if name not in entry["details"]:
            entry["files"].append(name)
            entry["details"][name] = detail
    long = records["length"] > MAX_DIGITS
    found["long_number"] = {"files": list(records["name"][long])}
    outside, empty = _box_anomalies(records)
    found["box_outside_image"] = {"files": outside}
    found["box_empty"] = {"files": empty}
    if "mode" in records:
        converted = records[records["mode"] != "RGB"]
        found["converted"] = {"files": list(converted["name"]),
                              "by_mode": {str(m): list(g["name"]) for m, g in converted.groupby("mode")}}
    actions = _actions(settings)
    return {kind: {"about": ANOMALIES[kind], "action": actions[kind], "count": len(found[kind]["files"]),
                   **found[kind]}
            for kind in ANOMALIES if found.get(kind, {}).get("files")}


def _actions(settings: Mapping[str, Any]) -> dict[str, str]:
    drop = settings.get("long_numbers") == "drop"
    return {
        **{kind: "left out (data.bad_files: skip)" for kind in _LEFT_OUT},
        "long_number": "dropped (data.long_numbers: drop)" if drop else
                       f"kept as the length class '>{MAX_DIGITS}', first {MAX_DIGITS} digits as targets "
                       "(data.long_numbers: keep)",
        "box_outside_image": "the boxes are clamped to the image before the crop is grown around them",
        "box_empty": "left out of the union of boxes that is cropped (the whole image if no box is left)",
        "converted": "converted to 8-bit RGB (palette and grey expanded, alpha dropped, 16-bit scaled)",
    }


def _box_anomalies(records: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Names of images with a box reaching outside the image, and with a box of no area."""
    outside, empty = [], []
    for name, boxes, width, height in zip(records["name"], records["boxes"], records["width"], records["height"]):
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        sized = (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
        if not sized.all():
            empty.append(name)
        b = boxes[sized]
        if ((b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 0] + b[:, 2] > width) | (b[:, 1] + b[:, 3] > height)).any():
            outside.append(name)
    return outside, empty


def _percentiles(values: pd.Series) -> dict[str, float]:
    values = values.to_numpy(dtype=np.float64)
    if len(values) == 0:
        return {}
    points = np.percentile(values, PERCENTILES)
    return {"min": float(values.min()), **{f"p{p}": round(float(v), 2) for p, v in zip(PERCENTILES, points)},
            "max": float(values.max())}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value


# ----------------------------------------------------------------------------------- markdown


def render_markdown(card: dict) -> str:
    """card.md: the card for people, every anomaly with (up to _SHOWN of) its files."""
    settings = card["settings"]
    lines = [f"# Data card: {card['dataset']}", "",
             "Settings: " + ", ".join(f"`{k}: {v}`" for k, v in settings.items() if k != "root") + ".", "",
             "## Prepared files", "",
             "| file | images | size | from | " + " | ".join(_length_columns()) + " | fingerprint |",
             "|---|---:|---:|---|" + "---:|" * LENGTH_CLASSES + "---|"]
    for info in card["prepared"].values():
        hist = " | ".join(str(info["length_histogram"].get(c, 0)) for c in _length_columns())
        lines.append(f"| {info['file']} | {info['images']:,} | {info['image_size']}x{info['image_size']} | "
                     f"{', '.join(info['from'])} | {hist} | `{info['fingerprint'][:16]}` |")
    lines.append(f"\nColumns 0..{MAX_DIGITS}, >{MAX_DIGITS}: images per number length.")
    for split, source in card["sources"].items():
        lines += ["", *_source_markdown(split, source)]
    return "\n".join(lines) + "\n"


def _source_markdown(split: str, source: dict) -> list[str]:
    lines = [f"## Raw split: {split}", "", f"Folder: `{source['folder']}`", "",
             f"{source['annotated']:,} images annotated, {source['readable']:,} readable, "
             f"{source['prepared']:,} prepared.", "",
             "| number length | " + " | ".join(_length_columns()) + " |",
             "|---|" + "---:|" * LENGTH_CLASSES,
             "| images | " + " | ".join(f"{source['length_histogram'].get(c, 0):,}" for c in _length_columns()) + " |",
             "", "| image | min | " + " | ".join(f"p{p}" for p in PERCENTILES) + " | max |",
             "|---|" + "---:|" * (len(PERCENTILES) + 2)]
    for axis in ("width", "height"):
        stats = source[f"image_{axis}"]
        if stats:
            lines.append(f"| {axis} (px) | " + " | ".join(f"{v:g}" for v in stats.values()) + " |")
    modes = ", ".join(f"{mode} {count:,}" for mode, count in source["modes"].items())
    lines += ["", f"Colour modes: {modes or 'none'}.", "", "### Anomalies", ""]
    if not source["anomalies"]:
        lines.append("None found.")
    for kind, entry in source["anomalies"].items():
        lines.append(f"- **{kind}**: {entry['count']:,} {entry['about']}; {entry['action']}.")
        for mode, names in entry.get("by_mode", {}).items():
            lines.append(f"  - mode {mode} ({len(names):,}): {_names(names)}")
        if "by_mode" not in entry:
            details = entry.get("details", {})
            lines.append("  - " + _names([f"{n} ({details[n]})" if n in details else n for n in entry["files"]]))
    return lines


def _names(names: list[str]) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN:,} more (all in card.json)" if len(names) > _SHOWN else "")


def _length_columns() -> list[str]:
    return [str(i) for i in range(MAX_DIGITS + 1)] + [f">{MAX_DIGITS}"]
