"""Tables over runs, and the labels that tell runs apart (shared with the plots).

A *group* is one line of a table and one curve of a plot: the members (seeds) of one run that
share their swept numeric parameters. Runs are labelled by what differs between them: the
config keys whose values differ (the keys of a Hydra ``-m`` sweep, or whatever differs
between the directories given to ``jaxasync-compare``) and the vmapped hyperparameter
values. A key that differs only because the algorithm (or the workload) differs, such as
``learning_rate`` between ``asgd`` and ``sync_sgd``'s defaults, labels nothing: the algorithm
already does.

The printed table is compact: the columns a kind of run is judged by (communication columns
where an algorithm decides what it sends, F − F* or ‖∇F‖ on convex workloads, rounds and
iterations to the target for the lazy family); ``summary.csv`` has every column.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

#: config keys that never tell runs apart (where outputs go, how they are shown)
NOT_LABELS = ("out_dir", "plot", "traceback", "logger", "run.checkpoint_every", "run.resume",
              "run.seeds",  # what a row averages over: its n column, and summary.csv
              "run.quiet", "run.compile_cache", "run.compile_cache_dir")
#: key prefixes whose keys differ with their group's name: kept as labels only where two runs
#: with the same name differ in them
NAMED = {"algorithm.": "algorithm.name", "workload.": "workload.name"}
#: (prefix, shown as) for column names
SHORT = (("algorithm.params.", ""), ("workload.options.", ""), ("run.", ""),
         ("algorithm.compressor.", "compressor."))


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"run": {"seeds": [0]}}`` -> ``{"run.seeds": [0]}`` (lists and empty dicts are leaves)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def short(key: str) -> str:
    """A column name for a config key: ``algorithm.params.learning_rate`` -> ``learning_rate``."""
    if key == "workload.name":
        return "workload"
    for prefix, shown in SHORT:
        if key.startswith(prefix):
            return shown + key[len(prefix):]
    return key


def text(v: Any) -> str:
    """A config value or a number as a table cell (``0.05``, ``[0, 1]``, ``true``)."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float | int | np.number):
        return f"{float(v):g}"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(text(x) for x in v) + "]"
    return "-" if v is None else str(v)


def _ignored(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in NOT_LABELS)


def varying_keys(records: Sequence[dict], explained: bool = False) -> list[str]:
    """The config keys (dotted) whose values differ between ``records``.

    Without ``explained``, a key under ``algorithm.``/``workload.`` is kept only if two runs
    of the same algorithm/workload differ in it, and the names themselves are left out
    (they have columns of their own).
    """
    flats = [flatten(r.get("config") or {}) for r in records]
    keys: list[str] = []
    for f in flats:
        keys += [k for k in f if k not in keys]
    same = lambda fs, k: len({json.dumps(f.get(k), sort_keys=True, default=str)  # noqa: E731
                              for f in fs}) <= 1
    out = []
    for k in keys:
        if _ignored(k) or same(flats, k):
            continue
        name_key = next((n for p, n in NAMED.items() if k.startswith(p)), None)
        if not explained and name_key is not None:
            if k == name_key:
                continue
            by_name: dict[str, list[dict]] = {}
            for f in flats:
                by_name.setdefault(str(f.get(name_key)), []).append(f)
            if all(same(fs, k) for fs in by_name.values()):
                continue
        out.append(k)
    return out


@dataclasses.dataclass
class Group:
    """One table row and one plot curve: members of ``record`` with the same swept values.

    ``keys`` (column -> value text) are the varying config keys and swept parameters."""

    record: dict
    members: list[dict]
    keys: dict[str, str]
    label: str = ""


def groups(records: Sequence[dict], explained: bool = False) -> list[Group]:
    """The groups of ``records``, labelled by what differs between them (see the module)."""
    vary = varying_keys(records, explained)
    out: list[Group] = []
    swept: set[str] = set()
    for r in records:
        flat = flatten(r.get("config") or {})
        by_params: dict[str, list[dict]] = {}
        for m in r["members"]:
            by_params.setdefault(json.dumps(m.get("params") or {}, sort_keys=True), []).append(m)
        if len(by_params) > 1:
            swept |= {k for m in r["members"] for k in (m.get("params") or {})}
        for p, ms in by_params.items():
            keys = {short(k): text(flat.get(k)) for k in vary}
            keys.update({short(f"algorithm.params.{k}"): text(v) for k, v in json.loads(p).items()
                         if f"algorithm.params.{k}" in vary or k in swept or len(by_params) > 1})
            out.append(Group(r, ms, keys))
    columns = _union([g.keys for g in out])
    for g in out:   # a swept parameter another run has as one number: that number
        flat = flatten(g.record.get("config") or {})
        fill = {short(f"algorithm.params.{k}"): text(flat[f"algorithm.params.{k}"])
                for k in swept if f"algorithm.params.{k}" in flat}
        g.keys = {c: g.keys.get(c, fill.get(c, "-")) for c in columns}
        parts = ", ".join(f"{k}={v}" for k, v in g.keys.items())
        name = g.record.get("label") or g.record["algorithm"]
        g.label = f"{name} {parts}" if parts else name
    seen: dict[str, int] = {}
    for g in out:   # identical configs from different directories: name the directory
        seen[g.label] = seen.get(g.label, 0) + 1
    for g in out:
        if seen[g.label] > 1 and g.record.get("_source"):
            g.label += f" [{g.record['_source']}]"
    return out


def _union(dicts: Sequence[dict]) -> list[str]:
    cols: list[str] = []
    for d in dicts:
        cols += [k for k in d if k not in cols]
    return cols


# ----------------------------------------------------------------------------- what a run is


def _spec(record: dict):
    from jaxasync.algorithms import ALGORITHMS

    return ALGORITHMS.get(record.get("algorithm"))


def kinds(g: Group) -> set[str]:
    """``async`` (stale gradients), ``comm`` (the algorithm or a compressor decides what is
    sent), ``lazy`` (synchronous and skipping uploads: LAG, LASG, SASG)."""
    spec = _spec(g.record)
    own = bool(spec and spec.own_messages)
    sync = bool((g.record.get("resolved") or {}).get("synchronous"))
    out = set()
    if not sync:
        out.add("async")
    if own or "+" in (g.record.get("label") or ""):
        out.add("comm")
    if sync and own:
        out.add("lazy")
    return out


def describe_delay(d: dict, m: int | None) -> str:
    """A record's ``resolved.delay`` in words."""
    kind = d.get("kind")
    if kind == "none":
        return "no delays"
    if kind == "constant":
        return f"constant delay τ={d['tau']}"
    if kind == "uniform":
        return f"uniform delay τ∈[{d['low']}, {d['high']}]"
    if kind == "geometric":
        return f"geometric delay p={d['p']:g}"
    if kind == "pareto":
        return f"Pareto delay α={d['alpha']:g} scale={d['scale']:g}"
    if kind == "trace":
        return "delays from a trace"
    out = f"{d.get('compute')} compute times (mean {d.get('mean', 1):g} s)"
    if d.get("speeds"):
        out += ", fixed speeds"
    elif d.get("heterogeneity"):
        out += f", speeds lognormal σ={d['heterogeneity']:g}"
    f, s = d.get("straggler_fraction") or 0, d.get("straggler_slowdown") or 1
    if f > 0 and s != 1 and m:
        out += f", {math.ceil(f * m)} of {m} workers {s:g}× slower"
    return out


def title(records: Sequence[dict]) -> str:
    """What the runs share: workload, M and delay model (what differs is in the labels)."""
    if not records:
        return ""
    parts = []
    names = {r["workload"] for r in records}
    if len(names) == 1:
        parts.append(next(iter(names)))
    ms = {(r.get("resolved") or {}).get("num_workers") for r in records}
    m = next(iter(ms)) if len(ms) == 1 else None
    if m:
        parts.append(f"M={m}")
    delays = {json.dumps((r.get("resolved") or {}).get("delay"), sort_keys=True) for r in records}
    if len(delays) == 1 and (records[0].get("resolved") or {}).get("delay"):
        parts.append(describe_delay(records[0]["resolved"]["delay"], m))
    return " · ".join(parts)


# ----------------------------------------------------------------------------- columns


@dataclasses.dataclass(frozen=True)
class Column:
    """A number per member; ``show(kinds, finals)`` says whether the compact table has it."""

    header: str        # with its unit
    csv: str
    value: Callable[[dict, dict | None], float | None]
    show: Callable[[set, list], bool] = lambda kinds, finals: False
    fmt: str = "g"     # g: 3 significant digits; i: integer; p: percent (1 decimal)


def _final(key: str, scale: float = 1.0):
    return lambda m, t: (None if m["final"].get(key) is None else scale * float(m["final"][key]))


def _hit(key: str):
    def get(m, t):
        h = m.get("target_reached")
        return None if h is None or h.get(key) is None else float(h[key])
    return get


def _has(key: str):
    return lambda kinds, finals: any(key in f for f in finals)


def _nonzero(key: str, kind: str):
    return lambda kinds, finals: kind in kinds and any(f.get(key) for f in finals)


_TARGET = lambda need=None, never=None: (   # noqa: E731
    lambda kinds, finals: bool(finals) and (need is None or need in kinds)
    and (never is None or never not in kinds))

def _convex(finals: list) -> bool:
    return any("train_gap" in x or "train_grad_norm" in x for x in finals)


COLUMNS = (
    Column("test acc (%)", "test_accuracy_pct", _final("test_accuracy", 100),
           lambda k, f: _has("test_accuracy")(k, f) and not _convex(f), "p"),
    Column("top-5 (%)", "test_top5_pct", _final("test_top5", 100), _has("test_top5"), "p"),
    Column("F − F*", "train_gap", _final("train_gap"),
           lambda k, f: _has("train_gap")(k, f) and not _has("train_grad_norm")(k, f)),
    Column("‖∇F‖", "train_grad_norm", _final("train_grad_norm"), _has("train_grad_norm")),
    Column("train loss", "train_loss", _final("train_loss"), lambda k, f: not _convex(f)),
    Column("test loss", "test_loss", _final("test_loss")),
    Column("sim s to target", "time_to_target_s", _hit("time"), _TARGET(never="lazy")),
    Column("grads to target", "grads_to_target", _hit("grads"), _TARGET(never="lazy"), "i"),
    Column("iters to target", "steps_to_target", _hit("step"), _TARGET(need="lazy"), "i"),
    Column("rounds to target", "uploads_to_target", _hit("uploads"), _TARGET(need="lazy"), "i"),
    Column("bits to target", "bits_to_target", _hit("bits_up"), _TARGET(need="comm")),
    Column("uplink bits", "bits_up", _final("bits_up"), lambda k, f: "comm" in k),
    Column("uploads", "uploads", _final("uploads"), lambda k, f: "comm" in k, "i"),
    Column("skipped", "skips", _final("skips"), _nonzero("skips", "comm"), "i"),
    Column("rejected", "rejections", _final("rejections"), _nonzero("rejections", "comm"), "i"),
    Column("mean τ", "staleness_mean", _final("staleness_mean"), lambda k, f: "async" in k),
    Column("max τ", "staleness_max", _final("staleness_max"), fmt="i"),
    Column("wasted grads", "wasted", _final("wasted"), _nonzero("wasted", "async"), "i"),
    Column("dropped", "dropped", _final("dropped"), fmt="i"),
    Column("sim time (s)", "time_s", _final("time"), lambda k, f: "lazy" not in k),
    Column("grads", "grads", _final("grads"), fmt="i"),
    Column("server steps", "steps", _final("step"), fmt="i"),
)


def number(v: float | None, fmt: str = "g") -> str:
    """3 significant digits (``0.0123``, ``4.57e+09``); whole numbers from 1000 to 1e6
    (``1003``, not ``1e+03``)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if not math.isfinite(v):
        return str(v)
    if fmt == "p":
        return f"{v:.1f}"
    if fmt == "i" or (float(v).is_integer() and abs(v) < 1e6) or 1e3 <= abs(v) < 1e6:
        return f"{v:.0f}" if abs(v) < 1e6 else f"{v:.3g}"
    return f"{v:.3g}"


def _sd(v: float, fmt: str) -> str:
    """A standard deviation: two significant digits (one decimal for percentages)."""
    if fmt == "p":
        return f"{v:.1f}"
    return f"{v:.0f}" if 100 <= abs(v) < 1e6 else f"{v:.2g}"


def mean_sd(vals: Sequence[float | None], fmt: str = "g") -> tuple[str, float | None, float | None]:
    """``"m ± sd"`` over the values present (sd: sample sd, ddof=1), and the two numbers."""
    vs = [v for v in vals if v is not None and math.isfinite(v)]
    if not vs:
        return "-", None, None
    m = float(np.mean(vs))
    if len(vs) == 1:
        return number(m, fmt), m, None
    sd = float(np.std(vs, ddof=1))
    return f"{number(m, fmt)} ± {_sd(sd, fmt)}", m, sd


@dataclasses.dataclass
class Table:
    """A table over groups: ``rows`` (compact, strings) for the terminal and ``summary.md``,
    ``full`` (every column, numbers) for ``summary.csv``, ``notes`` printed under it."""

    title: str
    rows: list[dict[str, str]]
    full: list[dict[str, Any]]
    notes: list[str]

    def markdown(self) -> str:
        return markdown(self.rows)

    def text(self) -> str:
        """Title, table, and the lines that say what ± and "to target" are."""
        head = [self.title, ""] if self.title else []
        return "\n".join([*head, self.markdown(), *self.notes])

    def csv(self) -> str:
        cols = _union(self.full)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        w.writerows(self.full)
        return buf.getvalue()


def _status(ms: list[dict]) -> str:
    bad = [m["diverged_at_step"] for m in ms if m["status"] == "diverged"]
    return f"diverged {len(bad)}/{len(ms)} (step {min(bad)})" if bad else "ok"


def _target_text(t: dict) -> str:
    return f"{t['metric']} {'≥' if t['mode'] == 'max' else '≤'} {t['value']:.3g}"


def build(records: Sequence[dict]) -> Table:
    """The table of ``records`` (run records, as in ``run.json``)."""
    gs = groups(records)
    all_kinds = set().union(*(kinds(g) for g in gs)) if gs else set()
    finals = [m["final"] for g in gs for m in g.members if m["status"] == "ok"]
    shown = [c for c in COLUMNS if c.show(all_kinds, finals)]
    diverged = any(m["status"] != "ok" for g in gs for m in g.members)
    targets = {_target_text(g.record["target"]) for g in gs if g.record.get("target")}
    explained = [k for k in varying_keys(records, explained=True)
                 if short(k) not in _union([g.keys for g in gs]) and k not in NAMED.values()]
    rows, full = [], []
    for g in gs:
        ok = [m for m in g.members if m["status"] == "ok"]
        target = g.record.get("target")
        row = {"algorithm": g.record.get("label") or g.record["algorithm"], **g.keys,
               "n": str(len(g.members))}
        flat = flatten(g.record.get("config") or {})
        res = g.record.get("resolved") or {}
        line: dict[str, Any] = {
            "algorithm": row["algorithm"], "workload": g.record["workload"],
            "num_workers": res.get("num_workers"), **g.keys,
            **{short(k): text(flat.get(k)) for k in explained},
            "n": len(g.members), "seeds": " ".join(str(m["seed"]) for m in g.members),
            "status": _status(g.members)}
        if diverged:
            row["status"] = line["status"]
        if target:
            hit = sum(m.get("target_reached") is not None for m in g.members)
            line["target"] = _target_text(target)
            line["reached"] = row["reached"] = f"{hit}/{len(g.members)}"
        for c in COLUMNS:
            use = g.members if "target" in c.csv else ok
            cell, m, sd = mean_sd([c.value(x, target) for x in use], c.fmt)
            line[c.csv], line[c.csv + "_sd"] = m, sd
            if c in shown:
                row[c.header] = cell
        timing = g.record.get("timing") or {}
        line.update({"wall_s": timing.get("wall_seconds"),
                     "compile_s": timing.get("compile_seconds"),
                     "run_s": timing.get("run_seconds"),
                     "config_hash": g.record.get("config_hash"),
                     "source": g.record.get("_source")})
        rows.append(row)
        full.append(line)
    ns = sorted({len(g.members) for g in gs})
    notes = [("± = sample sd over a row's n seeds; " if ns != [1] else "one seed per row; ")
             + "values at the last evaluation"]
    if targets and any(c.csv.endswith("to_target") for c in shown):
        notes[0] += (f"; “to target”: to the first evaluation with {' / '.join(sorted(targets))}"
                     f" (mean over the seeds that reached it)")
    notes[0] += "."
    return Table(title(records), rows, full, notes)


def markdown(rows: Sequence[dict[str, str]]) -> str:
    """A Markdown table (columns: the union, in first-seen order; numbers right-aligned)."""
    cols = _union(rows)
    widths = {c: max(len(c), *(len(r.get(c, "")) for r in rows)) for c in cols}
    numeric = {c: all(_numeric(r.get(c, "")) for r in rows) for c in cols}
    pad = lambda c, v: v.rjust(widths[c]) if numeric[c] else v.ljust(widths[c])  # noqa: E731
    line = lambda vals: "| " + " | ".join(pad(c, v) for c, v in zip(cols, vals, strict=True)) \
        + " |"  # noqa: E731
    rule = "|" + "|".join("-" * (widths[c] + 1) + (":" if numeric[c] else "-") for c in cols) + "|"
    return "\n".join([line(cols), rule, *(line([r.get(c, "") for c in cols]) for r in rows)])


def _numeric(v: str) -> bool:
    head = v.split(" ± ")[0].split("/")[0]
    try:
        float(head)
    except ValueError:
        return head == "-"
    return True
