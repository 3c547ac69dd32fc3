"""``python -m harness.reporting --rebuild reports/NAME [...]``: rebuild reports whose MLflow runs are not
at hand from what their folders hold (harness.reporting.rebuild), then the index beside them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.errors import HarnessError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.reporting",
                                     description="Rebuild reports from their own report.json and tables, with "
                                                 "the current rules (marks, intervals, noise, no machine path).")
    parser.add_argument("--rebuild", nargs="+", metavar="DIR", required=True, help="report folders")
    args = parser.parse_args(argv)
    from harness.reporting.rebuild import rebuild_report
    from harness.reporting.report import write_index

    try:
        for folder in args.rebuild:
            print(f"Report: {rebuild_report(folder)}")
        parents = {Path(f).parent for f in args.rebuild}
        for parent in sorted(parents):
            if (index := write_index(parent)) is not None:
                print(f"Index of reports: {index}")
    except HarnessError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
