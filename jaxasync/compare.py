"""``jaxasync-compare DIR...``: one table and one plot over runs from separate invocations.

Each DIR is a job directory (``run.json``) or a sweep directory (jobs below it), in any mix.
Runs are labelled by the config keys that differ between them (:func:`jaxasync.tables.groups`),
and the table, ``summary.csv`` and ``comparison.png``/``.pdf`` go to ``--out``::

    jaxasync-compare runs/2026-01-01/10-00-00 runs/2026-01-02/09-30-00/0_asgd -o cmp
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _error(msg: str) -> int:
    print(f"jaxasync-compare: error: {msg}", file=sys.stderr, flush=True)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status (2: a directory without runs)."""
    from jaxasync import report
    from jaxasync.cli import write_summary

    p = argparse.ArgumentParser(
        prog="jaxasync-compare",
        description="One table and one plot over run and sweep directories, each run "
                    "labelled by the config keys that differ between them.")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="a job or sweep directory")
    p.add_argument("-o", "--out", default="comparison",
                   help="where summary.md, summary.csv and comparison.png/.pdf go "
                        "(default: ./comparison)")
    p.add_argument("--no-plot", action="store_true", help="table and CSV only")
    args = p.parse_args(argv)
    records, seen = [], set()
    for d in args.dirs:
        path = Path(d)
        if not path.is_dir():
            return _error(f"{d}: no such directory")
        found = report.load_records(path)
        if not found:
            return _error(f"{d}: no runs (no run.json in it or below it)")
        for r in found:
            key = Path(r["_source"]).resolve()
            if key not in seen:      # a sweep and one of its jobs: the job once
                seen.add(key)
                records.append(r)
    write_summary(records, Path(args.out), plot=not args.no_plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
