"""The Hydra command line: ``jaxasync [group=option ...] [key=value ...]``.

Every job writes ``run.json``, ``metrics.csv`` and ``metrics.png`` into its Hydra output
directory and prints a summary table; a multirun (``-m``, or the default comparison)
ends with a table over all its jobs, ``summary.md``, ``summary.csv`` and
``comparison.png`` in the sweep directory.

A bad config value exits with status 2 and a one-line message naming the key; set
``traceback=true`` or ``HYDRA_FULL_ERROR=1`` for the traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from jaxasync.config import ConfigError, register_configs

#: the Hydra config directory (the repository's ``conf/``)
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def _fail(msg: str, debug: bool) -> None:
    if debug or os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise
    print(f"jaxasync: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def _job(cfg: Any) -> None:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from jaxasync import report
    from jaxasync.experiment import run_experiment

    out_dir = cfg.get("out_dir") or HydraConfig.get().runtime.output_dir
    plain = OmegaConf.to_container(cfg, resolve=True)
    try:
        record = run_experiment(plain, out_dir)
    except ConfigError as e:
        _fail(str(e), bool(cfg.get("traceback")))
        return
    print()
    print(report.format_table([report.summary_row(record)]))
    print(f"\nwrote {Path(out_dir) / 'run.json'}, metrics.csv, metrics.png", flush=True)


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra < 1.1
    Callback = object  # type: ignore[misc,assignment]


class SummaryCallback(Callback):
    """At the end of a multirun: one table over all jobs, and a comparison plot."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        from jaxasync import report

        sweep = Path(config.hydra.sweep.dir)
        records = report.load_records(sweep)
        if not records:
            return
        table = report.format_table([report.summary_row(r) for r in records])
        print("\n" + table, flush=True)
        report.atomic_write(sweep / "summary.md", table + "\n")
        report.atomic_write(sweep / "summary.csv", _rows_csv([report.summary_row(r) for r in records]))
        if any(r["config"].get("plot", True) for r in records):
            report.plot_records(records, sweep / "comparison.png")
        print(f"\nwrote {sweep}/summary.md, summary.csv, comparison.png", flush=True)


def _rows_csv(rows: list[dict]) -> str:
    import csv
    import io

    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> None:
    """Console entry point ``jaxasync``."""
    import hydra

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    register_configs()
    app = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(_job)
    app()


if __name__ == "__main__":
    main()
