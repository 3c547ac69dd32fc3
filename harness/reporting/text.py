"""How values read in a report: percentages, gaps to the published references, durations, names.

Plain text only (no MLflow, no plotting), so the results page and the index use it without loading either.
"""

from __future__ import annotations

import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath, PureWindowsPath

from harness import GOODFELLOW_2014, GOODFELLOW_2014_DIGIT, REPORT_CONV_ONLY

REFERENCES = (("Goodfellow 2014", GOODFELLOW_2014), ("the report's conv-only variant", REPORT_CONV_ONLY))
# The results page's yardsticks: (what, sequence accuracy, all-digit accuracy or None).
PUBLISHED = (("Goodfellow et al. 2014, SVHN", GOODFELLOW_2014, GOODFELLOW_2014_DIGIT),
             ("the report's conv-only variant, SVHN", REPORT_CONV_ONLY, None),
             ("spatial transformer networks (Jaderberg et al. 2015), SVHN", 0.964, None))


def missing(value) -> bool:
    """No value: None, or NaN (a metric a run never logged)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def pct(value) -> str:
    return "–" if missing(value) else f"{100 * value:.2f}%"


def gap(value, reference: float, comparable: bool = True) -> str:
    """Percentage points to a published reference, a check mark where it is met; "–" for a figure that
    is not comparable with it (the references are results on SVHN's test set: see ``not_comparable``)."""
    if missing(value) or not comparable:
        return "–"
    return f"{'✅ ' if value >= reference else ''}{100 * (value - reference):+.2f} pp"


# ------------------------------------------------------------------------------- like for like

SVHN_TEST = "SVHN's test set"


def comparable(data_name: str | None, test_set: str) -> bool:
    """Whether a figure can be set against the published references: SVHN's test split (either test
    preprocessing, whole or a stated subset), never validation or other data."""
    return data_name == "svhn" and test_set.startswith("test")


def not_comparable(data_name: str | None, test_set: str) -> str:
    """The one line saying why a figure carries no benchmark mark."""
    if data_name == "svhn":
        return (f"`svhn` data, {'validation split' if test_set == 'val' else f'set `{test_set}`'}: "
                f"not {SVHN_TEST}, so not comparable with results on it")
    return f"`{data_name or 'unknown'}` data: not comparable with results on {SVHN_TEST}"


# ------------------------------------------------------------------------------------ intervals

def ci(low, high) -> str:
    """A 95% interval in percent, one decimal: ``(88.7–91.4)``."""
    if missing(low) or missing(high):
        return ""
    return f"({100 * low:.1f}–{100 * high:.1f})"


def pct_ci(value, interval=None, bold: bool = False) -> str:
    """An accuracy and its 95% interval: ``90.10% (88.7–91.4)``; the accuracy alone where no interval."""
    if missing(value):
        return "–"
    text = f"**{pct(value)}**" if bold else pct(value)
    shown = ci(*interval) if interval else ""
    return f"{text} {shown}" if shown else text


# ---------------------------------------------------------------------------------------- paths

# An absolute path of two components or more (POSIX or Windows), not inside a word, a relative path or a
# URI's slashes: what a report must never carry (it names a machine's folders, not the data).
_ABSOLUTE = re.compile(r"(?<![\w/.:~…\\-])(?:[A-Za-z]:\\[^\s`'\"|,;()<>\[\]]+"
                       r"|/(?:[^\s/`'\"|,;()<>\[\]]+/)+[^\s/`'\"|,;()<>\[\]]+)")
_URI_PATH = re.compile(r"\b(sqlite:////|file:///)([^\s`'\"|,;()<>\[\]]+)")  # a URI of an absolute path


def shorten_path(path: str, root: str | os.PathLike | None = None) -> str:
    """A path as a report shows it: relative to ``root`` (default: the working folder, the project)
    where it lies under it, else its last two components after ``…/`` (the folder's own name and its
    parent's, never the machine's)."""
    windows = bool(re.match(r"[A-Za-z]:\\", path))
    pure = PureWindowsPath(path) if windows else PurePosixPath(path)
    base = Path(root if root is not None else os.getcwd())
    try:
        return PurePosixPath(*pure.relative_to(str(base)).parts).as_posix() or "."
    except ValueError:
        pass
    parts = [p for p in pure.parts[1:] if p not in ("", "/", "\\")]
    return "…/" + "/".join(parts[-2:])


def scrub_paths(text: str, root: str | os.PathLike | None = None) -> str:
    """``text`` with every absolute path (and a ``sqlite:``/``file:`` URI's) made relative or shortened
    (see ``shorten_path``)."""
    text = _URI_PATH.sub(lambda m: m.group(1)[:-1] + shorten_path("/" + m.group(2), root), text)
    return _ABSOLUTE.sub(lambda m: shorten_path(m.group(0), root), text)


def scrub_json(value, root: str | os.PathLike | None = None):
    """A JSON value with ``scrub_paths`` applied to every string in it."""
    if isinstance(value, str):
        return scrub_paths(value, root)
    if isinstance(value, list):
        return [scrub_json(v, root) for v in value]
    if isinstance(value, dict):
        return {k: scrub_json(v, root) for k, v in value.items()}
    return value


def duration(seconds) -> str:
    if missing(seconds):
        return "–"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 90 * 60 else f"{seconds / 3600:.1f} h"


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def run_label(run) -> str:
    """A run as reports name it: its name and the first 8 characters of its id."""
    return f"{run.name} ({run.run_id[:8]})"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-.") or "report"

