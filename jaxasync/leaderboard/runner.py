"""Leaderboard runner: runs entries (:func:`run_entry`, writing ``entry.json``) and the
command line ``jaxasync-leaderboard`` (:func:`main`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxasync import report
from jaxasync.leaderboard.entries import (
    BOARD_DIR,
    ENTRIES_FILE,
    ENTRY_STATUS,
    RESULTS_DIR,
    Entry,
    EntryError,
    Run,
    command,
    compose_configs,
    config_digest,
    load_entries,
    read_json,
    stale_reason,
)
from jaxasync.leaderboard.rendering import _minutes, markdown_table, render

#: a stored run whose run.json exceeds this is kept xz-compressed (the grids of the
#: optimal_sqrt_scaling entry write 1-5 MB of run.json each; git holds the store)
COMPACT_ABOVE_BYTES = 1_000_000

# ============================================================================ running


def _now() -> str:
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _is_data_error(msg: str) -> bool:
    return msg.startswith("workload.options.data_dir")


def _check_runnable(entry: Entry, configs: dict[str, dict], edir: Path, *,
                    data_dir: str | None, download: bool, allow_cpu: bool, rerun: bool,
                    budget_minutes: float | None) -> tuple[dict[str, dict], tuple[str, str] | None]:
    """The runs already finished for their current config (label -> record), and why the
    entry cannot run now, ``(status, reason)``, or None where it can."""
    import jax

    from jaxasync.config import ConfigError
    from jaxasync.experiment import validate

    reasons = []
    if download and entry.data and data_dir is not None:
        from jaxasync import data as data_lib

        for name in entry.data:
            try:
                data_lib.download(name, data_dir)
            except (ConnectionError, ValueError, OSError) as e:
                reasons.append(f"download of {name} failed: {e}")
    for label, cfg in configs.items():
        try:
            validate(cfg)
        except ConfigError as e:
            if _is_data_error(str(e)):
                reasons.append(f"{e} (set --data-dir, or --download where online)")
                break
            return {}, ("failed", f"run {label!r}: {e}")
    if entry.device == "gpu" and jax.default_backend() == "cpu" and not allow_cpu:
        reasons.append("meant for a GPU, this machine has only a CPU (--allow-cpu runs it "
                       "anyway)")
    finished = {}
    for run in entry.runs:
        old = read_json(edir / run.slug / "run.json")
        if old is not None and not rerun and stale_reason(old, configs[run.label]) is None:
            finished[run.label] = old
    backend = "cpu" if jax.default_backend() == "cpu" else "gpu"
    estimate = entry.minutes.get(backend)
    if (budget_minutes is not None and estimate is not None and estimate > budget_minutes
            and len(finished) < len(entry.runs)):
        reasons.append(f"estimated {estimate:g} min on this {backend}, more than the "
                       f"{max(0.0, budget_minutes):.0f} min left of --budget")
    if reasons:
        return finished, ("skipped", "; ".join(dict.fromkeys(reasons)))
    return finished, None


def _clear_run_dir(entry: Entry, run: Run, out: Path, old: dict | None, cfg: dict, *,
                   reused: bool, rerun: bool, progress: bool, data_dir: str | None) -> bool:
    """Whether the run must start afresh (its directory holds a stale result: another config,
    older code; any, with ``rerun``); says what happens to the run. Nothing is deleted here:
    the run is started with ``run.resume=false``, which checks its config first and moves the
    earlier result aside until it has written its own (:mod:`jaxasync.outputs_dir`)."""
    afresh = not reused and out.exists() and (rerun or old is not None)
    if afresh and progress and old is not None and not rerun:
        why = stale_reason(old, cfg)
        if why == "another config":
            why = f"config changed ({old.get('config_hash')} -> {config_digest(cfg)})"
        print(f"[leaderboard] {entry.id}/{run.slug}: {why}; rerunning", flush=True)
    if progress:
        print(f"[leaderboard] {entry.id}/{run.slug}: "
              + ("finished result of this config found; reused" if reused
                 else command(entry, run, data_dir)), flush=True)
    return afresh


def _afresh(cfg: dict) -> dict:
    """``cfg`` with ``run.resume=false`` (not in the config hash)."""
    return {**cfg, "run": {**(cfg.get("run") or {}), "resume": False}}


def _execute(run: Run, cfg: dict, out: Path, runner: Callable,
             progress: bool) -> dict | tuple[str, str]:
    """Runs one run (afresh where its checkpoint is of another config); returns its record,
    or ``(status, reason)`` where it could not run or crashed."""
    from jaxasync.config import ConfigError

    try:
        try:
            return runner(cfg, out, progress=progress)
        except ConfigError as e:
            if "of a different config" not in str(e):
                raise
            return runner(_afresh(cfg), out, progress=progress)
    except ConfigError as e:
        if _is_data_error(str(e)):
            return "skipped", f"{e} (set --data-dir, or --download where online)"
        return "failed", f"run {run.label!r}: {e}"
    except Exception as e:  # a crash in one entry must not lose the others
        traceback.print_exc()
        return "failed", f"run {run.label!r}: {type(e).__name__}: {e}"


def run_entry(entry: Entry, results: Path = RESULTS_DIR, *, data_dir: str | None = None,
              download: bool = False, allow_cpu: bool = False, rerun: bool = False,
              budget_minutes: float | None = None, progress: bool = True,
              runner: Callable | None = None) -> dict:
    """Runs the entry's runs not yet finished for their current config; writes ``entry.json``.

    Skips the entry (with the reason) when its data files are missing, when it is meant for
    a GPU and only a CPU is there (unless ``allow_cpu``), or when its estimated time on this
    backend (``minutes``) exceeds ``budget_minutes`` and some of its runs are not finished.

    Returns the entry status (also written): ``{"status": done|skipped|failed, "reason",
    "runs": {label: {"config_hash", "reused", "wall_seconds"}}, ...}``.
    """
    import jax

    from jaxasync.experiment import run_experiment

    runner = runner or run_experiment
    edir = Path(results) / entry.id
    started, t0 = _now(), time.perf_counter()
    status: dict[str, Any] = {"entry": entry.id, "started": started, "load_start": _load(),
                              "backend": jax.default_backend(), "runs": {}}

    def finish(state: str, reason: str | None = None) -> dict:
        status.update(status=state, reason=reason, finished=_now(), load_end=_load(),
                      wall_seconds=round(time.perf_counter() - t0, 2))
        report.atomic_write(edir / ENTRY_STATUS, json.dumps(status, indent=1))
        if progress:
            print(f"[leaderboard] {entry.id}: {state}" + (f" ({reason})" if reason else "")
                  + f" in {status['wall_seconds']:.0f} s", flush=True)
        return status

    try:
        configs = compose_configs(entry, data_dir)
    except EntryError as e:
        return finish("skipped", str(e))
    finished, blocked = _check_runnable(entry, configs, edir, data_dir=data_dir,
                                        download=download, allow_cpu=allow_cpu, rerun=rerun,
                                        budget_minutes=budget_minutes)
    if blocked:
        return finish(*blocked)
    earlier = (read_json(edir / ENTRY_STATUS) or {}).get("runs") or {}
    for run in entry.runs:
        cfg, out = configs[run.label], edir / run.slug
        digest = config_digest(cfg)
        old = read_json(out / "run.json")
        reused = run.label in finished
        if _clear_run_dir(entry, run, out, old, cfg, reused=reused, rerun=rerun,
                          progress=progress, data_dir=data_dir):
            cfg = _afresh(cfg)
        if reused:
            status["runs"][run.label] = _reused_status(digest, old, earlier.get(run.label))
            continue
        load = _load()
        record = _execute(run, cfg, out, runner, progress)
        if isinstance(record, tuple):
            return finish(*record)
        # per-seed copies of run.json (a sweep's convenience): the leaderboard reads run.json
        shutil.rmtree(out / "members", ignore_errors=True)
        report.compact_result(out, COMPACT_ABOVE_BYTES)
        status["runs"][run.label] = _computed_status(record, load)
    return finish("done")


def _reused_status(digest: str, old: dict, before: dict | None) -> dict:
    """A run's line in ``entry.json`` when its finished result is reused (when and under
    which load it was computed: from the earlier status)."""
    before = before or {}
    return {"config_hash": digest, "reused": True,
            "wall_seconds": old.get("timing", {}).get("wall_seconds"),
            "computed": before.get("computed"), "load": before.get("load")}


def _computed_status(record: dict, load) -> dict:
    """A run's line in ``entry.json`` when it has just been computed."""
    return {"config_hash": record.get("config_hash"), "reused": False,
            "wall_seconds": record.get("timing", {}).get("wall_seconds"),
            "computed": _now(), "load": load}


# ============================================================================ command line


def _select(entries: list[Entry], names: list[str]) -> list[Entry]:
    if not names:
        return entries
    by_id = {e.id: e for e in entries}
    unknown = [n for n in names if n not in by_id]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], by_id, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise EntryError(f"entry {unknown[0]!r}: unknown{hint}; choose from: {', '.join(by_id)}")
    return [by_id[n] for n in names]


def _list(entries: list[Entry], data_dir: str | None) -> str:
    lines = []
    for e in entries:
        extra = [f"device={e.device}"] if e.device != "any" else []
        extra += [f"data={','.join(e.data)}"] if e.data else []
        lines.append(f"{e.id}: {e.title}" + (f" [{'; '.join(extra)}]" if extra else ""))
        for run in e.runs:
            lines.append(f"    {run.label}: {command(e, run, data_dir if e.data else None)}")
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``jaxasync-leaderboard: error: ...``, exit status 2)."""

    def error(self, message: str):  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def _check_args(args: argparse.Namespace) -> str | None:
    """What is wrong with the parsed arguments, in one line (None: nothing)."""
    import math

    if args.budget is not None and not (math.isfinite(args.budget) and args.budget >= 0):
        return f"--budget={args.budget:g}: must be a finite number of minutes >= 0"
    for flag, path in (("--results", args.results), ("--out", args.out)):
        for p in (path, *path.parents):
            if p.exists():
                if not p.is_dir():
                    return (f"{flag}={str(path)!r}: " + ("is a file" if p == path else
                            f"lies under the file {str(p)!r}") + ", not a directory")
                break
    return None


#: where ``--data-dir`` looks by default, in order: the environment variable, ``./data``, and a
#: ``shared/data`` folder beside the working directory (a team's machines may keep datasets
#: there; nothing is copied into the repository)
DATA_SEARCH_PATH = ("$JAXASYNC_DATA", "./data", "../shared/data")


def default_data_dir() -> str:
    """The first folder of :data:`DATA_SEARCH_PATH` that exists (``./data`` if none does)."""
    for entry in DATA_SEARCH_PATH:
        path = os.path.expandvars(entry)
        if path and "$" not in path and os.path.isdir(path):
            return path
    return "data"


def _parser() -> argparse.ArgumentParser:
    """The command line of ``jaxasync-leaderboard``."""
    p = _Parser(
        prog="jaxasync-leaderboard",
        description="Run the leaderboard's entries (all, or those named) and render "
                    "LEADERBOARD.md, leaderboard.csv and plots from the result files.")
    p.add_argument("entries", nargs="*", metavar="ENTRY", help="entry ids (default: all)")
    p.add_argument("--render-only", action="store_true",
                   help="run nothing; rerender from the existing result files")
    p.add_argument("--list", action="store_true", help="list entries and their commands")
    p.add_argument("--rerun", action="store_true",
                   help="discard the chosen entries' results and run them again")
    p.add_argument("--data-dir", default=default_data_dir(),
                   help="where MNIST / CIFAR files are (default: the first of "
                        f"{', '.join(DATA_SEARCH_PATH)} that exists; now {default_data_dir()})")
    p.add_argument("--download", action="store_true",
                   help="download missing datasets (checksum-verified) before running")
    p.add_argument("--allow-cpu", action="store_true", help="run GPU entries on a CPU too")
    p.add_argument("--budget", type=float, default=None, metavar="MINUTES",
                   help="skip entries whose estimated time (entries.yaml: minutes) exceeds "
                        "what is left of this many minutes")
    p.add_argument("--entries-file", type=Path, default=ENTRIES_FILE)
    p.add_argument("--results", type=Path, default=RESULTS_DIR,
                   help=f"result files directory (default: {RESULTS_DIR}; an installed "
                        "package: ./leaderboard/results)")
    p.add_argument("--out", type=Path, default=BOARD_DIR,
                   help=f"where LEADERBOARD.md, leaderboard.csv and plots/ go (default: "
                        f"{BOARD_DIR}; an installed package: ./leaderboard)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return p


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``jaxasync-leaderboard``."""
    args = _parser().parse_args(argv)
    bad = _check_args(args)
    if bad:
        print(f"jaxasync-leaderboard: error: {bad}", file=sys.stderr)
        return 2
    try:
        entries = load_entries(args.entries_file)
        chosen = _select(entries, args.entries)
    except EntryError as e:
        print(f"jaxasync-leaderboard: error: {e}", file=sys.stderr)
        return 2
    if args.list:
        print(_list(chosen, args.data_dir))
        return 0
    failed = []
    if not args.render_only:
        t0 = time.perf_counter()
        for e in chosen:
            left = None if args.budget is None else args.budget - (time.perf_counter() - t0) / 60
            st = run_entry(e, args.results, data_dir=args.data_dir, download=args.download,
                           allow_cpu=args.allow_cpu, rerun=args.rerun, budget_minutes=left,
                           progress=not args.quiet)
            if st["status"] == "failed":
                failed.append(e.id)
        if not args.quiet:
            print(f"[leaderboard] {len(chosen)} entries in {_minutes(time.perf_counter() - t0)}",
                  flush=True)
    md, rows = render(entries, args.results, args.out, data_dir=args.data_dir,
                      plots=not args.no_plots, quiet=args.quiet)
    if not args.quiet:
        print()
        print(markdown_table(rows))
    if failed:
        print(f"jaxasync-leaderboard: {len(failed)} entries failed: {', '.join(failed)}",
              file=sys.stderr)
        return 1
    return 0
