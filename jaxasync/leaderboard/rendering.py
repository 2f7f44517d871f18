"""Leaderboard rendering: the results table (Markdown, CSV), ``LEADERBOARD.md`` and the
entries' plots, from the result files (:func:`render`).
"""

from __future__ import annotations

import dataclasses
import re
import textwrap
from collections.abc import Iterable
from pathlib import Path

from jaxasync import report
from jaxasync.leaderboard.entries import (
    BOARD_DIR,
    RESULTS_DIR,
    Entry,
    EntryError,
    EntryState,
    command,
    compose_configs,
    entry_state,
)
from jaxasync.leaderboard.verdicts import Row, entry_rows, short_reason

# ============================================================================ rendering


def _cite(source: str) -> str:
    """A short citation for table rows: the source up to its first ';' or '('."""
    return re.split(r"[;(]", source, maxsplit=1)[0].strip()


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def entry_seconds(state: EntryState) -> float:
    return sum(r.get("timing", {}).get("wall_seconds", 0.0) for r in state.records.values())


def _device_of(records: Iterable[dict]) -> str:
    kinds = []
    for r in records:
        d = r.get("device") or {}
        text = f"{d.get('platform', '?')} ({d.get('kind', '?')}, {d.get('processor', '?')})"
        if text not in kinds:
            kinds.append(text)
    return "; ".join(kinds) or "-"


_COLUMNS = (("task", "task"), ("algorithm", "algorithm"), ("seeds", "seeds"),
            ("quantity", "quantity"), ("measured", "ours: mean ± sd (min–max)"),
            ("published", "published"), ("source", "source"), ("verdict", "verdict"))


def markdown_table(rows: list[Row]) -> str:
    def cell(v: str) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(h for _, h in _COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in _COLUMNS) + "|"
    body = ["| " + " | ".join(cell(getattr(r, k)) for k, _ in _COLUMNS) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def rows_csv(rows: list[Row]) -> str:
    import csv
    import io

    buf = io.StringIO()
    fields = [f.name for f in dataclasses.fields(Row)]
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in rows:
        w.writerow(dataclasses.asdict(r))
    return buf.getvalue()


def _summary_lines(states: list[EntryState], rows: list[Row]) -> list[str]:
    """The head of ``LEADERBOARD.md``: device, compute time, verdict counts, code revision."""
    all_records = [r for s in states for r in s.records.values()]
    total = sum(entry_seconds(s) for s in states)
    judged = [r for r in rows if r.ok is not None]
    n_ok = sum(r.ok is True for r in judged)
    n_bad = sum(r.ok is False for r in judged)
    n_ref = sum(r.ok is None and r.verdict == "-" for r in rows)
    skipped = [s for s in states if s.status != "done"]
    revs = sorted({((r.get("git") or {}).get("revision") or "?")[:12]
                   + (" (with local changes)" if (r.get("git") or {}).get("dirty") else "")
                   for r in all_records})
    return [
        "# jaxasync leaderboard",
        "",
        "Published results next to our reproductions, computed by `jaxasync-leaderboard` from "
        "the result files in `results/` (never typed by hand). Rerender without rerunning: "
        "`jaxasync-leaderboard --render-only`; rerun one entry: `jaxasync-leaderboard ENTRY` "
        "(finished runs of an unchanged config are reused).",
        "",
        f"- **Device:** {_device_of(all_records)}",
        f"- **Compute time:** {_minutes(total)} in all (sum of the runs' wall times; per entry "
        f"below)",
        f"- **Verdicts:** {n_ok} ✓, {n_bad} ✗, {n_ref} reported for reference (no published "
        f"number); {len(skipped)} of {len(states)} entries not run here"
        + (f" ({', '.join(s.entry.id for s in skipped)})" if skipped else ""),
        f"- **Code:** git {', '.join(revs) or '-'}",
        "",
        "Load: the machine's 1-minute load average when each run started (2 cores: above 2, "
        "other jobs shared them, and wall times are longer than on an idle machine).",
        "",
        "Verdicts: ✓ within the stated tolerance, ✗ outside it; \"ordering ✓\" / \"ratio ✓\" "
        "where only an ordering or a ratio is published; `-` measured for reference only. "
        "\"Rounds\" are uploads until the first evaluation at or above the target, as the SASG "
        "authors count; a run reaches a target only if all its seeds do.",
    ]


def _entries_table_row(s: EntryState) -> str:
    """One entry's line of the "Entries" table: status, device, runs, time, when, load."""
    info = s.info
    seeds = sorted({len(r["members"]) for r in s.records.values()})
    status = s.status if not s.reason else f"{s.status}: {short_reason(s.reason)}"
    runs_info = [r for lab, r in (info.get("runs") or {}).items() if lab in s.records]
    when = max((r["computed"] for r in runs_info if r.get("computed")), default=None)
    loads = [r["load"][0] for r in runs_info if r.get("load")]
    lo_hi = sorted({f"{min(loads):.1f}", f"{max(loads):.1f}"}, key=float) if loads else []
    load_text = "–".join(lo_hi) or "-"
    return (f"| [{s.entry.id}](#{s.entry.id}) | {status.replace('|', '/')} | "
            f"{_device_of(s.records.values())} | "
            f"{len(s.records)} × {'/'.join(map(str, seeds)) or '-'} | "
            f"{_minutes(entry_seconds(s))} | "
            f"{when or '-'} | {load_text} |")


def _entry_section(s: EntryState, plots: dict[str, str], data_dir: str | None) -> list[str]:
    """One entry's section: title, notes, target, status, its runs' commands, its plot."""
    e = s.entry
    lines = ["", f"### {e.id}", "", f"**{e.title}.** {e.task}. Source: {e.source}.", ""]
    if e.notes:
        lines += [e.notes, ""]
    tgt = e.target or next((r.get("target") for r in s.records.values() if r.get("target")),
                           None)
    if tgt:
        sign = "≥" if tgt["mode"] == "max" else "≤"
        lines += [f"Target: {tgt['metric']} {sign} {tgt['value']:g}.", ""]
    if s.status != "done":
        lines += [f"**Status: {s.status}**" + (f" — {s.reason}" if s.reason else ""), ""]
    lines.append("Runs (each one vmapped program over its seeds):")
    lines.append("")
    for run in e.runs:
        rec = s.records.get(run.label)
        t = f", {_minutes(rec['timing']['wall_seconds'])}" if rec else ""
        lines.append(f"- {run.label}{t}: `{command(e, run, data_dir)}`")
    if e.id in plots:
        lines += ["", f"![{e.id}]({plots[e.id]})"]
    return lines


def render_markdown(states: list[EntryState], rows: list[Row], *, plots: dict[str, str],
                    data_dir: str | None = None) -> str:
    """``LEADERBOARD.md`` from the entries' states and rows (pure: no file access)."""
    lines = [
        *_summary_lines(states, rows),
        "",
        "## Results",
        "",
        markdown_table(rows),
        "",
        "## Entries",
        "",
        "| entry | status | device | runs × seeds | compute time | computed | load (1 min) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [_entries_table_row(s) for s in states]
    for s in states:
        lines += _entry_section(s, plots, data_dir)
    return "\n".join(lines) + "\n"


def plot_entry(entry: Entry, records: dict[str, dict], path: Path) -> bool:
    """The entry's panels (``plots:`` specs; :func:`jaxasync.plots.draw_panel`: mean over
    seeds, min–max band, the target line) and its delay histogram, as PNG and PDF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxasync import plots

    curves = [plots.Curve(lab, report.selected_members(r)) for lab, r in records.items()]
    curves = [c for c in curves if c.members]
    if not curves:
        return False
    stale = entry.histogram and any(
        sum((m.get("staleness_hist") or [0])[1:]) > 0 for c in curves for m in c.members)
    panels = len(entry.plots) + (1 if stale else 0)
    if panels == 0:
        return False
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 4.2), squeeze=False,
                             layout="constrained")
    for ax, spec in zip(axes[0], entry.plots, strict=False):
        plots.draw_panel(ax, curves, spec["x"], spec["y"],
                         xscale=spec.get("xscale", "linear"), yscale=spec.get("yscale", "linear"),
                         ylim=spec.get("ylim"), target=entry.target)
    if stale:
        ms = {(r.get("resolved") or {}).get("num_workers") for r in records.values()}
        plots.delay_histogram(axes[0][-1], curves, next(iter(ms)) if len(ms) == 1 else None)
    plots.figure_legend(fig, axes[0][:len(entry.plots)] if entry.plots else axes[0], curves)
    # wrapped to the figure's width (about 11 characters per inch at 10 pt): a one-panel
    # figure would otherwise clip a long task description at both sides
    fig.suptitle(textwrap.fill(f"{entry.id}: {entry.task}", width=int(11 * 4.6 * panels)),
                 fontsize=10)
    plots.save_figure(fig, path)
    return True


def render(entries: list[Entry], results: Path = RESULTS_DIR, out: Path = BOARD_DIR, *,
           data_dir: str | None = None, plots: bool = True, check_configs: bool = True,
           quiet: bool = False) -> tuple[str, list[Row]]:
    """Writes ``LEADERBOARD.md``, ``leaderboard.csv`` and ``plots/`` from the result files."""
    states, rows, plot_paths = [], [], {}
    for e in entries:
        configs, err = None, None
        if check_configs:
            try:
                configs = compose_configs(e, data_dir)
            except EntryError as ex:
                err = str(ex)
        s = entry_state(e, results, configs, err)
        states.append(s)
        unavailable = s.reason if s.status in ("skipped", "failed", "stale") else None
        rows += entry_rows(e, s.records, cite=_cite(e.source), unavailable=unavailable,
                           status=s.status)
        if plots and s.records:
            rel = Path("plots") / f"{e.id}.png"
            if plot_entry(e, s.records, Path(out) / rel):
                plot_paths[e.id] = rel.as_posix()
    md = render_markdown(states, rows, plots=plot_paths, data_dir=data_dir)
    report.atomic_write(Path(out) / "LEADERBOARD.md", md)
    report.atomic_write(Path(out) / "leaderboard.csv", rows_csv(rows))
    if not quiet:
        print(f"wrote {Path(out) / 'LEADERBOARD.md'}, leaderboard.csv"
              + (f", {len(plot_paths)} plots" if plot_paths else ""), flush=True)
    return md, rows
