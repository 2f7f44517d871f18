"""Leaderboard verdicts: what is measured in a run record (:data:`QUANTITIES`,
:func:`summarize`, in :mod:`jaxasync.leaderboard.quantities`), how it is printed, and how
it is judged against a published result (:func:`judge_value`, :func:`judge_ordering`,
:func:`judge_ratio`), pure functions of plain numbers; :func:`entry_rows` judges every
check of an entry into the table's rows.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from jaxasync.leaderboard.quantities import (  # noqa: F401  (re-exported)
    INF,
    QUANTITIES,
    EntryError,
    Quantity,
    Summary,
    optimal_time,
    quantity,
    summarize,
)

if TYPE_CHECKING:
    from jaxasync.leaderboard.entries import Entry


# ============================================================================ formatting


def fmt_number(v: float | None, kind: str) -> str:
    """A value as the table shows it (``kind`` from :class:`Quantity`)."""
    if v is None:
        return "-"
    if not math.isfinite(v):
        return "∞" if v > 0 else "-∞"
    if kind == "count":
        return f"{v:,.0f}" if abs(v) < 1e7 else f"{v:.3g}"
    if kind == "bits":
        return f"{v:.3g}".replace("e+0", "e").replace("e+", "e")
    if kind == "percent":
        return f"{v:.2f}"
    if kind == "sci":
        return f"{v:.3g}".replace("e-0", "e-")
    return f"{v:.3g}" if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-2) else f"{v:.4g}"


def fmt_summary(s: Summary, kind: str, missing: str = "not reached") -> str:
    """``mean ± sd (min–max)``, with how many members have no value."""
    vals = s.present
    if not vals:
        return f"{missing} (0/{s.n})" if s.n else "-"
    if len(vals) == 1:
        text = fmt_number(vals[0], kind)
    else:
        mean, sd = float(np.mean(vals)), float(np.std(vals, ddof=1))
        text = (f"{fmt_number(mean, kind)} ± {fmt_number(sd, kind)}"
                f" ({fmt_number(min(vals), kind)}–{fmt_number(max(vals), kind)})")
    if len(vals) < s.n:
        text += f"; {missing} {s.n - len(vals)}/{s.n}"
    return text


def _fmt_tol(rel: float | None, abs_: float | None, kind: str) -> str:
    if rel is not None:
        return f"±{100 * rel:g}%"
    unit = " pt" if kind == "percent" else ""
    return f"±{abs_:g}{unit}"


# ============================================================================ verdicts


@dataclasses.dataclass(frozen=True)
class Verdict:
    """``ok``: True (within tolerance / ordering holds), False, or None (not judged)."""

    ok: bool | None
    text: str


def judge_value(s: Summary, kind: str = "float", *, published: float | None = None,
                rel: float | None = None, abs_: float | None = None,
                lo: float | None = None, hi: float | None = None) -> Verdict:
    """One run's mean against a published number (``rel`` or ``abs_`` tolerance), a range
    (``lo``/``hi``), or both: then either passes (a published mean with the published min–max
    of its seeds: within the tolerance of the mean, or inside the range).

    Without a published value or a range the result is reported for reference (``ok=None``).
    Members without a value (target not reached, diverged) fail a judged check.
    """
    parts, tests = [], []
    if published is not None:
        if (rel is None) == (abs_ is None):
            raise EntryError("a published value needs exactly one tolerance: rel or abs")
        parts.append(_fmt_tol(rel, abs_, kind))
        width = rel * abs(published) if rel is not None else abs_
        tests.append(lambda m: abs(m - published) <= width + 1e-12 * abs(published))
    if lo is not None or hi is not None:
        if lo is not None and hi is not None:
            parts.append(f"in {fmt_number(lo, kind)}–{fmt_number(hi, kind)}")
        elif lo is not None:
            parts.append(f"≥ {fmt_number(lo, kind)}")
        else:
            parts.append(f"≤ {fmt_number(hi, kind)}")
        tests.append(lambda m: (lo is None or m >= lo) and (hi is None or m <= hi))
    if not tests:
        return Verdict(None, "-")
    tol = " or ".join(parts)
    if not s.complete:
        return Verdict(False, f"✗ ({tol})")
    ok = any(t(s.mean) for t in tests)
    return Verdict(ok, f"{'✓' if ok else '✗'} ({tol})")


RELATIONS = {"<<": "≪", "<=": "≤", "<": "<", "~": "≈"}
_NEGATED = {"<<": "not ≪", "<=": "≰", "<": "≮", "~": "≉"}
_CHAIN_SPLIT = re.compile(r"\s*(<<|<=|<|~)\s*")


def parse_chain(chain: str) -> tuple[list[str], list[str]]:
    """``"A < B <= C ~ D"`` -> ``(["A", "B", "C", "D"], ["<", "<=", "~"])``."""
    parts = _CHAIN_SPLIT.split(chain.strip())
    labels, rels = parts[0::2], parts[1::2]
    if len(labels) < 2 or any(not lab for lab in labels):
        raise EntryError(f"chain {chain!r}: must be LABEL REL LABEL [REL LABEL ...] with REL "
                         f"one of {', '.join(RELATIONS)}")
    return labels, rels


def relation_holds(a: float, rel: str, b: float, approx: float = 0.15,
                   much: float = 10.0) -> bool:
    """``a rel b`` on aggregated values (``inf``: never reached; ``nan``: no value)."""
    if math.isnan(a) or math.isnan(b):
        return False
    if rel == "<":
        return a < b
    if rel == "<=":
        return a <= b
    if rel == "~":
        if not (math.isfinite(a) and math.isfinite(b)):
            return False
        return abs(a - b) <= approx * max(abs(a), abs(b))
    if rel == "<<":
        return math.isfinite(a) and a * much <= b if a >= 0 else a < b
    raise EntryError(f"relation {rel!r}: unknown; choose one of {', '.join(RELATIONS)}")


def judge_ordering(chain: str, values: dict[str, float], kind: str = "float", *,
                   approx: float = 0.15, much: float = 10.0) -> tuple[Verdict, str]:
    """Whether the measured values follow ``chain``; returns the verdict and the measured
    chain (each failed relation shown negated)."""
    labels, rels = parse_chain(chain)
    missing = [lab for lab in labels if lab not in values]
    if missing:
        return Verdict(None, "-"), f"no result for {', '.join(missing)}"
    ok = True
    text = f"{labels[0]} {fmt_number(values[labels[0]], kind)}"
    for a, rel, b in zip(labels[:-1], rels, labels[1:], strict=True):
        holds = relation_holds(values[a], rel, values[b], approx, much)
        ok &= holds
        text += f" {RELATIONS[rel] if holds else _NEGATED[rel]} {b} {fmt_number(values[b], kind)}"
    tol = []
    if "~" in rels:
        tol.append(f"≈: ±{100 * approx:g}%")
    if "<<" in rels:
        tol.append(f"≪: ≥{much:g}×")
    suffix = f" ({'; '.join(tol)})" if tol else ""
    return Verdict(ok, f"ordering {'✓' if ok else '✗'}{suffix}"), text


def judge_ratio(num: float, den: float, *, published: float | None = None,
                factor: float | None = None, rel: float | None = None,
                at_least: float | None = None) -> tuple[Verdict, float]:
    """``num / den`` against a published ratio (within ``factor`` or ``rel``) or a floor."""
    r = num / den if math.isfinite(num) and math.isfinite(den) and den > 0 else math.nan
    if at_least is not None:
        ok = math.isfinite(r) and r >= at_least
        return Verdict(ok, f"ratio {'✓' if ok else '✗'} (≥ {at_least:g}×)"), r
    if published is None or (factor is None) == (rel is None):
        raise EntryError("a ratio check needs `at_least`, or `published` with one of factor, rel")
    if factor is not None:
        ok = math.isfinite(r) and published / factor <= r <= published * factor
        tol = f"×/÷ {factor:g}"
    else:
        ok = math.isfinite(r) and abs(r - published) <= rel * published
        tol = f"±{100 * rel:g}%"
    return Verdict(ok, f"ratio {'✓' if ok else '✗'} ({tol})"), r


# ============================================================================ rows


@dataclasses.dataclass
class Row:
    entry: str
    task: str
    algorithm: str
    seeds: str
    quantity: str
    measured: str
    published: str
    source: str
    verdict: str
    ok: bool | None = None
    mean: float | None = None
    sd: float | None = None
    lo: float | None = None
    hi: float | None = None
    published_value: float | None = None
    reason: str = ""        # why a row has no measurement (the entry's skip reason, in full)


def _published_text(c: dict, kind: str) -> str:
    parts = []
    if "published" in c:
        parts.append(fmt_number(float(c["published"]), kind))
    if c.get("reference"):
        parts.append(str(c["reference"]) if not parts else f"({c['reference']})")
    return " ".join(parts) or "-"


def short_reason(reason: str) -> str:
    """A few words for a table cell; the full reason goes to the entry's section."""
    parts = []
    if "data_dir" in reason or "download of" in reason:
        parts.append("data files missing")
    if "GPU" in reason:
        parts.append("needs a GPU")
    if "preset conf/experiment/" in reason and "does not exist" in reason:
        parts.append("preset missing")
    if "--budget" in reason:
        parts.append("over the time budget")
    if "another config" in reason:
        parts.append("result of an older config")
    if not parts:
        parts.append(reason if len(reason) <= 60 else reason[:57] + "...")
    return "; ".join(parts)


def _label_value(entry: Entry, records: dict[str, dict], label: str, qname: str) -> float:
    """What orderings and ratios compare for ``label``: a run's :attr:`Summary.value`, or a
    derived label's ratio of two runs' values (``inf`` where it is undefined); ``nan`` where
    a run has no record."""
    target = entry.target
    if label in entry.derived:
        a, b = entry.derived[label]
        if a not in records or b not in records:
            return math.nan
        va = summarize(records[a], qname, target).value
        vb = summarize(records[b], qname, target).value
        if not math.isfinite(va) or not math.isfinite(vb) or vb == 0:
            return INF
        return va / vb
    return summarize(records[label], qname, target).value if label in records else math.nan


def _check_labels(c: dict) -> tuple[list[str], str]:
    """The run (or derived) labels a check reads, and its "algorithm" cell."""
    kind = c["kind"]
    if kind == "value":
        return [c["run"]], c["run"]
    if kind == "ordering":
        labels, _ = parse_chain(c["chain"])
        return labels, ", ".join(labels)
    return [c["num"], c["den"]], f"{c['num']} / {c['den']}"


def _set_published(row: Row, c: dict, q: Quantity) -> None:
    """The row's published cell (and value) from the check."""
    kind = c["kind"]
    if kind == "value":
        row.published = _published_text(c, q.kind)
        if "published" in c:
            row.published_value = float(c["published"])
    elif kind == "ordering":
        row.published = c.get("reference") or c["chain"].replace("<<", "≪").replace(
            "<=", "≤").replace("~", "≈")
    else:
        pub = c.get("published")
        row.published = f"{pub:g}×" if pub is not None else f"≥ {c['at_least']:g}×"
        row.published_value = float(pub) if pub is not None else None


def _judge_check(row: Row, c: dict, q: Quantity, entry: Entry, records: dict[str, dict],
                 labels: list[str]) -> Verdict:
    """Fills the row's measured cells from the records (all there); returns the verdict."""
    kind = c["kind"]
    if kind == "value":
        s = summarize(records[c["run"]], c["quantity"], entry.target)
        diverged = any(m.get("status") == "diverged" for m in records[c["run"]]["members"])
        missing_word = ("not reached" if c["quantity"].endswith("_to_target")
                        else "diverged" if diverged else "no value")
        row.measured = fmt_summary(s, q.kind, missing_word)
        v = judge_value(s, q.kind, published=c.get("published"), rel=c.get("rel"),
                        abs_=c.get("abs"), lo=c.get("min"), hi=c.get("max"))
        row.mean, row.sd = s.mean, s.sd
        row.lo = min(s.present) if s.present else None
        row.hi = max(s.present) if s.present else None
    elif kind == "ordering":
        values = {lab: _label_value(entry, records, lab, c["quantity"]) for lab in labels}
        vkind = "float" if any(lab in entry.derived for lab in labels) else q.kind
        v, row.measured = judge_ordering(c["chain"], values, vkind,
                                         approx=c.get("approx", 0.15), much=c.get("much", 10.0))
    else:
        v, r = judge_ratio(_label_value(entry, records, c["num"], c["quantity"]),
                           _label_value(entry, records, c["den"], c["quantity"]),
                           published=c.get("published"), factor=c.get("factor"),
                           rel=c.get("rel"), at_least=c.get("at_least"))
        row.measured = f"{r:.3g}×" if math.isfinite(r) else "- (a run has no value)"
        row.mean = r if math.isfinite(r) else None
    return v


def entry_rows(entry: Entry, records: dict[str, dict], cite: str | None = None,
               unavailable: str | None = None, status: str = "skipped") -> list[Row]:
    """The table rows of ``entry`` from its run records (label -> record).

    A check whose runs lack a record shows ``unavailable`` (why: a skip reason) with the
    verdict ``status``, or "not run".
    """
    cite = cite or entry.source
    rows = []

    def seeds_of(labels: Iterable[str]) -> str:
        ns = sorted({len(records[lab]["members"]) for lab in labels if lab in records})
        return "/".join(str(n) for n in ns) or "-"

    def runs_of(label: str) -> list[str]:
        return list(entry.derived.get(label, (label,)))

    for c in entry.checks:
        q = quantity(c["quantity"])
        kind = c["kind"]
        labels, algo = _check_labels(c)
        needed = [r for lab in labels for r in runs_of(lab)]
        missing = [r for r in needed if r not in records]
        qlabel = q.label + {"value": "", "ordering": " (ordering)", "ratio": " (ratio)"}[kind]
        row = Row(entry.id, entry.task, algo, seeds_of(needed), qlabel, "", "-", cite, "")
        _set_published(row, c, q)
        if missing:
            if unavailable:
                row.measured = f"- ({short_reason(unavailable)})"
                row.verdict, row.reason = status, unavailable
            else:
                row.measured, row.verdict = f"not run ({', '.join(missing)})", "-"
            rows.append(row)
            continue
        v = _judge_check(row, c, q, entry, records, labels)
        row.verdict, row.ok = v.text, v.ok
        rows.append(row)
    return rows
