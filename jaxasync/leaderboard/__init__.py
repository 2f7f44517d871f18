"""The leaderboard: published results reproduced, each next to its target, from result files.

::

    jaxasync-leaderboard                        # run every entry, then render
    jaxasync-leaderboard mishchenko_quadratic   # a subset (entry ids)
    jaxasync-leaderboard --render-only          # rerender from the result files, run nothing
    jaxasync-leaderboard --list                 # entries, runs and equivalent commands
    python -m jaxasync.leaderboard ...          # the same

Exit status: 0; 1 if an entry failed (a crash, or a run config that does not validate);
2 for an unknown entry or a malformed entries file. Skipped entries (data files missing,
a GPU entry on a CPU, a preset not there) are not failures: the table says why.

The entries (``benchmarks/leaderboard/entries.yaml``) are data: a task, its runs (Hydra
overrides on top of a ``conf/experiment`` preset, so each run is exactly a ``jaxasync``
command), the target its "to target" quantities use, and its checks against the published
results. Running an entry writes one result directory per run under
``benchmarks/leaderboard/results/<entry>/<run>/`` (``run.json`` with provenance and its
config hash, ``metrics.csv``, ``metrics.png``) and ``entry.json`` (status, skip reason,
load and times of the last attempt). A rerun reuses every result whose config hash and code
match (so an interrupted leaderboard resumes where it stopped) and reruns the stale ones: of
another config, or of older code (:func:`stale_reason`: another jaxasync version, or another
source of the run's algorithm; the git tree is not compared, so a commit that does not touch
an algorithm keeps the results); long runs also checkpoint (``run.checkpoint_every``) and
resume mid-run. Rendering marks stale results as such, naming what changed.

Rendering reads only those files and the entry definitions: ``LEADERBOARD.md``,
``leaderboard.csv`` and ``plots/<entry>.png`` in ``benchmarks/leaderboard/``. Nothing in them
is typed by hand. An installed package (no checkout) reads the entries shipped in the wheel
and writes results and rendered files under ``./leaderboard`` (``--results``, ``--out``).

The verdict logic is pure functions of plain numbers (:func:`judge_value`,
:func:`judge_ordering`, :func:`judge_ratio`), the measurements pure functions of a run
record's members (:data:`QUANTITIES`, :func:`summarize`).

The package: :mod:`~jaxasync.leaderboard.entries` (entry definitions, configs, result files),
:mod:`~jaxasync.leaderboard.verdicts` (quantities, summaries, verdicts, table rows),
:mod:`~jaxasync.leaderboard.rendering` (tables, ``LEADERBOARD.md``, plots) and
:mod:`~jaxasync.leaderboard.runner` (running entries, the command line). Every public name is
importable from ``jaxasync.leaderboard`` itself.
"""

from __future__ import annotations

from jaxasync.leaderboard.entries import (
    BOARD_DIR,
    CONF_DIR,
    ENTRIES_FILE,
    ENTRY_STATUS,
    RESULTS_DIR,
    ROOT,
    Entry,
    EntryState,
    Run,
    command,
    compose_configs,
    config_digest,
    entry_state,
    load_entries,
    parse_entries,
    read_json,
    stale_reason,
)
from jaxasync.leaderboard.rendering import (
    entry_seconds,
    markdown_table,
    plot_entry,
    render,
    render_markdown,
    rows_csv,
)
from jaxasync.leaderboard.runner import (
    main,
    run_entry,
)
from jaxasync.leaderboard.verdicts import (
    INF,
    QUANTITIES,
    RELATIONS,
    EntryError,
    Quantity,
    Row,
    Summary,
    Verdict,
    entry_rows,
    fmt_number,
    fmt_summary,
    judge_ordering,
    judge_ratio,
    judge_value,
    parse_chain,
    quantity,
    relation_holds,
    short_reason,
    summarize,
)

__all__ = [
    "BOARD_DIR",
    "CONF_DIR",
    "ENTRIES_FILE",
    "ENTRY_STATUS",
    "Entry",
    "EntryError",
    "EntryState",
    "INF",
    "QUANTITIES",
    "Quantity",
    "RELATIONS",
    "RESULTS_DIR",
    "ROOT",
    "Row",
    "Run",
    "Summary",
    "Verdict",
    "command",
    "compose_configs",
    "config_digest",
    "entry_rows",
    "entry_seconds",
    "entry_state",
    "fmt_number",
    "fmt_summary",
    "judge_ordering",
    "judge_ratio",
    "judge_value",
    "load_entries",
    "main",
    "markdown_table",
    "parse_chain",
    "parse_entries",
    "plot_entry",
    "quantity",
    "read_json",
    "relation_holds",
    "render",
    "render_markdown",
    "rows_csv",
    "run_entry",
    "short_reason",
    "stale_reason",
    "summarize",
]
