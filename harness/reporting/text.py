"""How values read in a report: percentages, gaps to the published references, durations, names.

Plain text only (no MLflow, no plotting), so the results page and the index use it without loading either.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone

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


def gap(value, reference: float) -> str:
    """Percentage points to a reference; a check mark where the reference is met."""
    if missing(value):
        return "–"
    return f"{'✅ ' if value >= reference else ''}{100 * (value - reference):+.2f} pp"


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

