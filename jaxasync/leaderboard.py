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
load and times of the last attempt). A rerun reuses every result whose config hash matches
(so an interrupted leaderboard resumes where it stopped) and reruns those whose config
changed; long runs also checkpoint (``run.checkpoint_every``) and resume mid-run.

Rendering reads only those files and the entry definitions: ``LEADERBOARD.md``,
``leaderboard.csv`` and ``plots/<entry>.png`` in ``benchmarks/leaderboard/``. Nothing in them
is typed by hand.

The verdict logic is pure functions of plain numbers (:func:`judge_value`,
:func:`judge_ordering`, :func:`judge_ratio`), the measurements pure functions of a run
record's members (:data:`QUANTITIES`, :func:`summarize`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import re
import shlex
import shutil
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from jaxasync import report

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"
BOARD_DIR = ROOT / "benchmarks" / "leaderboard"
ENTRIES_FILE = BOARD_DIR / "entries.yaml"
RESULTS_DIR = BOARD_DIR / "results"
ENTRY_STATUS = "entry.json"

INF = math.inf


class EntryError(ValueError):
    """A malformed entry definition (the message names the entry and the key)."""


# ============================================================================ quantities


@dataclasses.dataclass(frozen=True)
class Quantity:
    """A measurement of one member (seed) of a run record.

    ``fn(member, target)`` returns a float, or None when the member has no value (never
    reached the target, diverged); such members count as the worst value (``+inf`` when
    lower is better, ``-inf`` otherwise) in orderings and ratios.
    """

    label: str
    lower_is_better: bool
    kind: str  # how to print: count, bits, percent, float, sci
    fn: Callable[[dict, dict | None], float | None]

    @property
    def worst(self) -> float:
        return INF if self.lower_is_better else -INF


def _hit(member: dict, target: dict | None, key: str) -> float | None:
    if target is None:
        return None
    hit = report.reached(member["history"], target["metric"], target["value"], target["mode"])
    return None if hit is None or key not in hit else float(hit[key])


def _final(member: dict, key: str, scale: float = 1.0) -> float | None:
    if member.get("status", "ok") != "ok":
        return None
    v = member["history"][-1].get(key)
    if v is None or not math.isfinite(v):
        return None
    return float(v) * scale


def _fraction(member: dict, part: str, whole: Iterable[str]) -> float | None:
    last = member["history"][-1]
    total = sum(float(last.get(k, 0.0)) for k in whole)
    if part not in last or total <= 0:
        return None
    return 100.0 * float(last[part]) / total


def _hist_median(member: dict) -> float | None:
    hist = np.asarray(member.get("staleness_hist") or [], float)
    if hist.sum() <= 0:
        return None
    return float(np.searchsorted(np.cumsum(hist), hist.sum() / 2.0))


QUANTITIES: dict[str, Quantity] = {
    "rounds_to_target": Quantity("rounds to target", True, "count",
                                 lambda m, t: _hit(m, t, "uploads")),
    "bits_to_target": Quantity("uplink bits to target", True, "bits",
                               lambda m, t: _hit(m, t, "bits_up")),
    "grads_to_target": Quantity("gradients to target", True, "count",
                                lambda m, t: _hit(m, t, "grads")),
    "steps_to_target": Quantity("iterations to target", True, "count",
                                lambda m, t: _hit(m, t, "step")),
    "time_to_target": Quantity("simulated time to target", True, "float",
                               lambda m, t: _hit(m, t, "time")),
    "final_accuracy": Quantity("final test accuracy (%)", False, "percent",
                               lambda m, t: _final(m, "test_accuracy", 100.0)),
    "final_top5": Quantity("final test top-5 (%)", False, "percent",
                           lambda m, t: _final(m, "test_top5", 100.0)),
    "final_gap": Quantity("final F - F*", True, "sci", lambda m, t: _final(m, "train_gap")),
    "final_grad_norm": Quantity("final ||grad F||", True, "sci",
                                lambda m, t: _final(m, "train_grad_norm")),
    "final_loss": Quantity("final train loss", True, "sci", lambda m, t: _final(m, "train_loss")),
    "skip_fraction": Quantity("uploads skipped (%)", False, "percent",
                              lambda m, t: _fraction(m, "skips", ("skips", "uploads"))),
    "rejection_fraction": Quantity("arrivals rejected (%)", False, "percent",
                                   lambda m, t: _fraction(m, "rejections", ("arrivals",))),
    "staleness_mean": Quantity("mean delay", True, "float",
                               lambda m, t: _final(m, "staleness_mean")),
    "staleness_median": Quantity("median delay", True, "float", lambda m, t: _hist_median(m)),
    "staleness_max": Quantity("max delay", True, "count", lambda m, t: _final(m, "staleness_max")),
    "bits_up": Quantity("uplink bits", True, "bits", lambda m, t: _final(m, "bits_up")),
    "uploads": Quantity("uploads", True, "count", lambda m, t: _final(m, "uploads")),
    "grads": Quantity("gradients computed", True, "count", lambda m, t: _final(m, "grads")),
}


def quantity(name: str) -> Quantity:
    if name not in QUANTITIES:
        raise EntryError(f"quantity {name!r}: unknown; choose one of: {', '.join(QUANTITIES)}")
    return QUANTITIES[name]


@dataclasses.dataclass(frozen=True)
class Summary:
    """One quantity over a run's members: values (None = missing), and their statistics."""

    values: tuple[float | None, ...]
    worst: float

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def present(self) -> list[float]:
        return [v for v in self.values if v is not None]

    @property
    def complete(self) -> bool:
        return self.n > 0 and len(self.present) == self.n

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.present)) if self.present else None

    @property
    def sd(self) -> float | None:
        return float(np.std(self.present, ddof=1)) if len(self.present) > 1 else None

    @property
    def value(self) -> float:
        """What orderings and ratios compare: the mean if every member has a value, else
        the worst value (a run reaches a target only if all its seeds do)."""
        return self.mean if self.complete else self.worst


def summarize(record: dict, name: str, target: dict | None = None) -> Summary:
    """Quantity ``name`` over the members of ``record`` (target: the entry's, else the record's)."""
    q = quantity(name)
    t = target if target is not None else record.get("target")
    return Summary(tuple(q.fn(m, t) for m in record["members"]), q.worst)


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
    """One run's mean against a published number (``rel`` or ``abs_`` tolerance) or a range.

    Without a published value or a range the result is reported for reference (``ok=None``).
    Members without a value (target not reached, diverged) fail a judged check.
    """
    if published is not None:
        if (rel is None) == (abs_ is None):
            raise EntryError("a published value needs exactly one tolerance: rel or abs")
        tol = _fmt_tol(rel, abs_, kind)
        if not s.complete:
            return Verdict(False, f"✗ ({tol})")
        width = rel * abs(published) if rel is not None else abs_
        ok = abs(s.mean - published) <= width + 1e-12 * abs(published)
        return Verdict(ok, f"{'✓' if ok else '✗'} ({tol})")
    if lo is not None or hi is not None:
        if lo is not None and hi is not None:
            tol = f"in {fmt_number(lo, kind)}–{fmt_number(hi, kind)}"
        elif lo is not None:
            tol = f"≥ {fmt_number(lo, kind)}"
        else:
            tol = f"≤ {fmt_number(hi, kind)}"
        if not s.complete:
            return Verdict(False, f"✗ ({tol})")
        ok = (lo is None or s.mean >= lo) and (hi is None or s.mean <= hi)
        return Verdict(ok, f"{'✓' if ok else '✗'} ({tol})")
    return Verdict(None, "-")


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


# ============================================================================ entries


@dataclasses.dataclass(frozen=True)
class Run:
    label: str
    overrides: tuple[str, ...]

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "_", self.label.lower()).strip("_") or "run"


@dataclasses.dataclass(frozen=True)
class Entry:
    id: str
    title: str
    task: str
    source: str
    runs: tuple[Run, ...]
    checks: tuple[dict, ...]
    preset: str | None = None
    overrides: tuple[str, ...] = ()
    target: dict | None = None
    device: str = "any"           # "gpu": skipped on a CPU-only machine unless --allow-cpu
    minutes: dict = dataclasses.field(default_factory=dict)  # rough run time: {cpu:, gpu:}
    data: tuple[str, ...] = ()    # datasets read from --data-dir (names of jaxasync.data.download)
    derived: dict = dataclasses.field(default_factory=dict)  # label -> (num run, den run)
    plots: tuple[dict, ...] = ()
    histogram: bool = False
    notes: str = ""

    def run(self, label: str) -> Run:
        for r in self.runs:
            if r.label == label:
                return r
        raise KeyError(label)


_ENTRY_KEYS = {f.name for f in dataclasses.fields(Entry)}
_CHECK_KEYS = {"kind", "run", "quantity", "published", "rel", "abs", "min", "max", "reference",
               "chain", "approx", "much", "num", "den", "factor", "at_least"}


def parse_entries(raw: Any) -> list[Entry]:
    """Entry definitions (the parsed YAML) -> :class:`Entry` objects, checked."""
    if not isinstance(raw, dict) or not isinstance(raw.get("entries"), list):
        raise EntryError("entries file: expected a mapping with a list under 'entries'")
    out, seen = [], set()
    for i, e in enumerate(raw["entries"]):
        where = f"entries[{i}]"
        if not isinstance(e, dict) or "id" not in e:
            raise EntryError(f"{where}: must be a mapping with an 'id'")
        where = f"entry {e['id']!r}"
        if e["id"] in seen:
            raise EntryError(f"{where}: duplicate id")
        seen.add(e["id"])
        unknown = set(e) - _ENTRY_KEYS
        if unknown:
            raise EntryError(f"{where}: unknown key {sorted(unknown)[0]!r}; allowed: "
                             f"{', '.join(sorted(_ENTRY_KEYS))}")
        for key in ("title", "task", "source", "runs", "checks"):
            if key not in e:
                raise EntryError(f"{where}: missing {key!r}")
        if not isinstance(e["runs"], dict) or not e["runs"]:
            raise EntryError(f"{where}: 'runs' must map labels to lists of Hydra overrides")
        runs = tuple(Run(str(k), tuple(str(o) for o in (v or []))) for k, v in e["runs"].items())
        slugs = [r.slug for r in runs]
        if len(set(slugs)) != len(slugs):
            raise EntryError(f"{where}: two run labels share a directory name ({slugs})")
        derived = {str(k): tuple(v) for k, v in (e.get("derived") or {}).items()}
        labels = {r.label for r in runs}
        for k, v in derived.items():
            if len(v) != 2 or not set(v) <= labels:
                raise EntryError(f"{where}: derived {k!r} must name two runs of the entry")
        device = e.get("device", "any")
        if device not in ("any", "gpu"):
            raise EntryError(f"{where}: device={device!r}: choose 'any' or 'gpu'")
        minutes = e.get("minutes") or {}
        if not isinstance(minutes, dict) or not set(minutes) <= {"cpu", "gpu"} or not all(
                isinstance(v, int | float) and v > 0 for v in minutes.values()):
            raise EntryError(f"{where}: minutes must map cpu / gpu to positive numbers")
        target = e.get("target")
        if target is not None and (set(target) != {"metric", "value", "mode"}
                                   or target["mode"] not in ("max", "min")):
            raise EntryError(f"{where}: target must be {{metric, value, mode: max|min}}")
        entry = Entry(
            id=str(e["id"]), title=str(e["title"]), task=str(e["task"]), source=str(e["source"]),
            runs=runs, checks=tuple(e["checks"]), preset=e.get("preset"),
            overrides=tuple(str(o) for o in (e.get("overrides") or [])), target=target,
            device=device, minutes=dict(e.get("minutes") or {}),
            data=tuple(e.get("data") or ()), derived=derived,
            plots=tuple(e.get("plots") or ()), histogram=bool(e.get("histogram", False)),
            notes=str(e.get("notes", "")).strip())
        for j, c in enumerate(entry.checks):
            _check_check(entry, c, f"{where}, checks[{j}]", labels | set(derived))
        out.append(entry)
    return out


def _check_check(entry: Entry, c: Any, where: str, labels: set[str]) -> None:
    if not isinstance(c, dict) or c.get("kind") not in ("value", "ordering", "ratio"):
        raise EntryError(f"{where}: must be a mapping with kind value, ordering or ratio")
    unknown = set(c) - _CHECK_KEYS
    if unknown:
        raise EntryError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    try:
        quantity(c.get("quantity", ""))
    except EntryError as e:
        raise EntryError(f"{where}: {e}") from None
    if c["kind"] == "value":
        if c.get("run") not in {r.label for r in entry.runs}:
            raise EntryError(f"{where}: run {c.get('run')!r} is not a run of the entry")
        if "published" in c and ("rel" in c) == ("abs" in c):
            raise EntryError(f"{where}: a published value needs exactly one of rel, abs")
    elif c["kind"] == "ordering":
        try:
            names, _ = parse_chain(str(c.get("chain", "")))
        except EntryError as e:
            raise EntryError(f"{where}: {e}") from None
        bad = [n for n in names if n not in labels]
        if bad:
            raise EntryError(f"{where}: chain names {bad[0]!r}, not a run or derived label")
    else:
        for key in ("num", "den"):
            if c.get(key) not in labels:
                raise EntryError(f"{where}: {key}={c.get(key)!r} is not a run of the entry")
        if "at_least" not in c and ("published" not in c or ("factor" in c) == ("rel" in c)):
            raise EntryError(f"{where}: needs at_least, or published with one of factor, rel")


def load_entries(path: str | os.PathLike = ENTRIES_FILE) -> list[Entry]:
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise EntryError(f"entries file {str(path)!r} not found") from None
    except yaml.YAMLError as e:
        raise EntryError(f"entries file {str(path)!r}: not valid YAML ({e})") from None
    return parse_entries(raw)


# ============================================================================ configs


def _override_key(o: str) -> str:
    return o.lstrip("+~").split("=", 1)[0]


def command(entry: Entry, run: Run, data_dir: str | None = None) -> str:
    """The ``jaxasync`` command line that runs ``run`` alone (what the leaderboard composes)."""
    args = ([f"experiment={entry.preset}"] if entry.preset else []) + list(entry.overrides)
    args += list(run.overrides)
    if entry.data and data_dir is not None:
        args.append(f"workload.options.data_dir={data_dir}")
    return "jaxasync " + " ".join(shlex.quote(a) for a in args)


def compose_configs(entry: Entry, data_dir: str | None = None,
                    conf_dir: Path = CONF_DIR) -> dict[str, dict]:
    """Each run's resolved config (a plain dict), as ``jaxasync`` composes it.

    Raises:
      EntryError: a missing preset, a bad override, or a key the preset sweeps that the
        entry does not fix (the composed config would not be the command's).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from jaxasync.cli import _composition_message
    from jaxasync.config import register_configs

    register_configs()
    if entry.preset and not (conf_dir / "experiment" / f"{entry.preset}.yaml").is_file():
        raise EntryError(f"preset conf/experiment/{entry.preset}.yaml does not exist (yet)")
    out = {}
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3",
                               job_name="leaderboard"):
        for run in entry.runs:
            overrides = (([f"experiment={entry.preset}"] if entry.preset else [])
                         + list(entry.overrides) + list(run.overrides))
            try:
                cfg = compose("config", overrides=overrides, return_hydra_config=True)
            except Exception as e:  # Hydra's composition errors: one line naming the key
                raise EntryError(f"entry {entry.id!r}, run {run.label!r}: "
                                 f"{_composition_message(e)}") from None
            swept = cfg.hydra.sweeper.get("params") or {}
            fixed = {_override_key(o) for o in overrides}
            open_keys = [k for k in swept if k not in fixed]
            if open_keys:
                raise EntryError(f"entry {entry.id!r}, run {run.label!r}: the preset sweeps "
                                 f"{open_keys[0]} ({swept[open_keys[0]]}); fix it in the "
                                 f"entry's overrides")
            plain = OmegaConf.to_container(
                OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
            if entry.data and data_dir is not None:
                plain["workload"].setdefault("options", {})["data_dir"] = str(data_dir)
            plain["out_dir"] = None
            out[run.label] = plain
    GlobalHydra.instance().clear()
    return out


def config_digest(cfg: dict) -> str:
    from jaxasync.checkpoint import config_hash
    from jaxasync.config import to_config

    return config_hash(to_config(cfg))


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


def entry_rows(entry: Entry, records: dict[str, dict], cite: str | None = None,
               unavailable: str | None = None, status: str = "skipped") -> list[Row]:
    """The table rows of ``entry`` from its run records (label -> record).

    A check whose runs lack a record shows ``unavailable`` (why: a skip reason) with the
    verdict ``status``, or "not run".
    """
    target = entry.target
    cite = cite or entry.source
    rows = []

    def seeds_of(labels: Iterable[str]) -> str:
        ns = sorted({len(records[lab]["members"]) for lab in labels if lab in records})
        return "/".join(str(n) for n in ns) or "-"

    def agg(label: str, qname: str) -> float:
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

    def runs_of(label: str) -> list[str]:
        return list(entry.derived.get(label, (label,)))

    for c in entry.checks:
        q = quantity(c["quantity"])
        kind = c["kind"]
        if kind == "value":
            labels = [c["run"]]
            algo = c["run"]
        elif kind == "ordering":
            labels, _ = parse_chain(c["chain"])
            algo = ", ".join(labels)
        else:
            labels = [c["num"], c["den"]]
            algo = f"{c['num']} / {c['den']}"
        needed = [r for lab in labels for r in runs_of(lab)]
        missing = [r for r in needed if r not in records]
        qlabel = q.label + {"value": "", "ordering": " (ordering)", "ratio": " (ratio)"}[kind]
        row = Row(entry.id, entry.task, algo, seeds_of(needed), qlabel, "", "-", cite, "")
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
        if missing:
            if unavailable:
                row.measured = f"- ({short_reason(unavailable)})"
                row.verdict, row.reason = status, unavailable
            else:
                row.measured, row.verdict = f"not run ({', '.join(missing)})", "-"
            rows.append(row)
            continue
        if kind == "value":
            s = summarize(records[c["run"]], c["quantity"], target)
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
            values = {lab: agg(lab, c["quantity"]) for lab in labels}
            vkind = "float" if any(lab in entry.derived for lab in labels) else q.kind
            v, row.measured = judge_ordering(c["chain"], values, vkind,
                                             approx=c.get("approx", 0.15), much=c.get("much", 10.0))
        else:
            v, r = judge_ratio(agg(c["num"], c["quantity"]), agg(c["den"], c["quantity"]),
                               published=c.get("published"), factor=c.get("factor"),
                               rel=c.get("rel"), at_least=c.get("at_least"))
            row.measured = f"{r:.3g}×" if math.isfinite(r) else "- (a run has no value)"
            row.mean = r if math.isfinite(r) else None
        row.verdict, row.ok = v.text, v.ok
        rows.append(row)
    return rows


# ============================================================================ result files


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


@dataclasses.dataclass
class EntryState:
    """What the result files say about an entry."""

    entry: Entry
    records: dict[str, dict]
    status: str           # done | partial | skipped | failed | not run
    reason: str | None
    info: dict            # entry.json
    stale: list[str]      # run labels whose result is of another config


def entry_state(entry: Entry, results: Path, configs: dict[str, dict] | None = None,
                config_error: str | None = None) -> EntryState:
    """Reads ``results/<entry>/``; with ``configs`` (label -> config), results of another
    config hash are set aside as stale."""
    edir = Path(results) / entry.id
    info = read_json(edir / ENTRY_STATUS) or {}
    records, stale = {}, []
    for run in entry.runs:
        rec = read_json(edir / run.slug / "run.json")
        if rec is None:
            continue
        if configs is not None and run.label in configs:
            want = config_digest(_with_data_dir(configs[run.label], rec))
            if rec.get("config_hash") != want:
                stale.append(run.label)
                continue
        records[run.label] = rec
    complete = len(records) == len(entry.runs)
    reason = None
    if complete:
        status = "done"
    elif info.get("status") in ("skipped", "failed"):  # the last attempt: the freshest news
        status, reason = info["status"], info.get("reason")
    elif stale:
        status = "stale"
        reason = (f"result of {', '.join(stale)} is from another config; rerun "
                  f"`jaxasync-leaderboard {entry.id}`")
    elif config_error:
        status, reason = "skipped", config_error
    else:
        status = "partial" if records else "not run"
    return EntryState(entry, records, status, reason, info, stale)


def _with_data_dir(cfg: dict, record: dict) -> dict:
    """``cfg`` with the data directory the record was run with (not a config change)."""
    used = (record.get("config") or {}).get("workload", {}).get("options", {}).get("data_dir")
    if used is None or "data_dir" not in cfg["workload"].get("options", {}):
        return cfg
    return {**cfg, "workload": {**cfg["workload"],
                                "options": {**cfg["workload"]["options"], "data_dir": used}}}


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


def render_markdown(states: list[EntryState], rows: list[Row], *, plots: dict[str, str],
                    data_dir: str | None = None) -> str:
    """``LEADERBOARD.md`` from the entries' states and rows (pure: no file access)."""
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
    lines = [
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
    for s in states:
        info = s.info
        seeds = sorted({len(r["members"]) for r in s.records.values()})
        status = s.status if not s.reason else f"{s.status}: {short_reason(s.reason)}"
        runs_info = [r for lab, r in (info.get("runs") or {}).items() if lab in s.records]
        when = max((r["computed"] for r in runs_info if r.get("computed")), default=None)
        loads = [r["load"][0] for r in runs_info if r.get("load")]
        lo_hi = sorted({f"{min(loads):.1f}", f"{max(loads):.1f}"}, key=float) if loads else []
        load_text = "–".join(lo_hi) or "-"
        lines.append(
            f"| [{s.entry.id}](#{s.entry.id}) | {status.replace('|', '/')} | "
            f"{_device_of(s.records.values())} | "
            f"{len(s.records)} × {'/'.join(map(str, seeds)) or '-'} | "
            f"{_minutes(entry_seconds(s))} | "
            f"{when or '-'} | {load_text} |")
    for s in states:
        e = s.entry
        lines += ["", f"### {e.id}", "", f"**{e.title}.** {e.task}. Source: {e.source}.", ""]
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
    return "\n".join(lines) + "\n"


_AXIS = {"uploads": "communication rounds (uploads)", "bits_up": "uplink bits",
         "grads": "gradients computed", "step": "iterations (server steps)",
         "time": "simulated time", "test_accuracy": "test accuracy", "test_top5": "test top-5",
         "train_gap": "F(x) - F*", "train_loss": "train loss",
         "train_grad_norm": "||grad F(x)|| (whole training set)"}


def plot_entry(entry: Entry, records: dict[str, dict], path: Path) -> bool:
    """The entry's curves (mean over seeds, min–max band) and delay histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not records:
        return False
    hist_runs = [lab for lab, r in records.items()
                 if entry.histogram and sum(sum(m.get("staleness_hist") or [0])
                                            for m in r["members"]) > 0
                 and any(m["history"][-1].get("staleness_max", 0) > 0 for m in r["members"])]
    panels = len(entry.plots) + (1 if hist_runs else 0)
    if panels == 0:
        return False
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 3.6), squeeze=False)
    for ax, spec in zip(axes[0], entry.plots, strict=False):
        xk, yk = spec["x"], spec["y"]
        for lab, rec in records.items():
            ms = [m for m in rec["members"] if m["history"]]
            n = min(len(m["history"]) for m in ms)
            xs = np.asarray([[h.get(xk, np.nan) for h in m["history"][:n]] for m in ms], float)
            ys = np.asarray([[h.get(yk, np.nan) for h in m["history"][:n]] for m in ms], float)
            ys[~np.isfinite(ys)] = np.nan
            if spec.get("yscale") == "log":
                ys[ys <= 0] = np.nan
            x = np.nanmean(xs, axis=0)
            keep = x > 0 if spec.get("xscale") == "log" else np.isfinite(x)
            x, ys = x[keep], ys[:, keep]
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
                mean, lo, hi = (np.nanmean(ys, axis=0), np.nanmin(ys, axis=0),
                                np.nanmax(ys, axis=0))
            (line,) = ax.plot(x, mean, label=lab)
            if len(ms) > 1:
                ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_xlabel(_AXIS.get(xk, xk))
        ax.set_ylabel(_AXIS.get(yk, yk))
        if spec.get("xscale") == "log":
            ax.set_xscale("log")
        if spec.get("yscale") == "log":
            ax.set_yscale("log")
        if spec.get("ylim"):   # [lo, hi]: keeps a diverging run from flattening the others
            ax.set_ylim(*spec["ylim"])
        if entry.target and entry.target["metric"] == yk:
            ax.axhline(entry.target["value"], color="grey", linestyle=":", linewidth=1)
        ax.grid(alpha=0.3)
    if entry.plots:
        axes[0][0].legend(fontsize=7)
    if hist_runs:
        ax = axes[0][-1]
        for lab in hist_runs:
            rec = records[lab]
            h = np.sum([np.asarray(m["staleness_hist"], float) for m in rec["members"]], axis=0)
            p = h / h.sum()
            top = int(np.flatnonzero(p)[-1]) + 1
            ax.step(np.arange(top), np.where(p[:top] > 0, p[:top], np.nan), where="mid",
                    label=lab, linewidth=1)
        m_workers = records[hist_runs[0]].get("resolved", {}).get("num_workers")
        if m_workers:
            ax.axvline(m_workers, color="grey", linestyle=":", linewidth=1)
            ax.text(m_workers, 0.95, f" M={m_workers}", fontsize=7, va="top",
                    transform=ax.get_xaxis_transform())
        ax.set_yscale("log")
        ax.set_xlabel("delay τ (versions)")
        ax.set_ylabel("fraction of arrivals")
        ax.set_title("delay histogram", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{entry.id}: {entry.task}", fontsize=10)
    report.save_figure(fig, path)
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

    from jaxasync import checkpoint
    from jaxasync.config import ConfigError
    from jaxasync.experiment import run_experiment, validate

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
            return finish("failed", f"run {label!r}: {e}")
    if entry.device == "gpu" and jax.default_backend() == "cpu" and not allow_cpu:
        reasons.append("meant for a GPU, this machine has only a CPU (--allow-cpu runs it "
                       "anyway)")
    earlier = (read_json(edir / ENTRY_STATUS) or {}).get("runs") or {}
    finished = {}
    for run in entry.runs:
        old = read_json(edir / run.slug / "run.json")
        if old is not None and old.get("config_hash") == config_digest(configs[run.label]) \
                and not rerun:
            finished[run.label] = old
    backend = "cpu" if jax.default_backend() == "cpu" else "gpu"
    estimate = entry.minutes.get(backend)
    if (budget_minutes is not None and estimate is not None and estimate > budget_minutes
            and len(finished) < len(entry.runs)):
        reasons.append(f"estimated {estimate:g} min on this {backend}, more than the "
                       f"{max(0.0, budget_minutes):.0f} min left of --budget")
    if reasons:
        return finish("skipped", "; ".join(dict.fromkeys(reasons)))

    for run in entry.runs:
        cfg = configs[run.label]
        out = edir / run.slug
        digest = config_digest(cfg)
        old = read_json(out / "run.json")
        reused = run.label in finished
        if not reused and out.exists() and (rerun or old is not None):
            if progress and old is not None and not rerun:
                print(f"[leaderboard] {entry.id}/{run.slug}: config changed "
                      f"({old.get('config_hash')} -> {digest}); rerunning", flush=True)
            shutil.rmtree(out)
        if progress:
            print(f"[leaderboard] {entry.id}/{run.slug}: "
                  + ("finished result of this config found; reused" if reused
                     else command(entry, run, data_dir)), flush=True)
        if reused:
            before = earlier.get(run.label) or {}
            status["runs"][run.label] = {
                "config_hash": digest, "reused": True,
                "wall_seconds": old.get("timing", {}).get("wall_seconds"),
                "computed": before.get("computed"), "load": before.get("load")}
            continue
        load = _load()
        try:
            try:
                record = runner(cfg, out, progress=progress)
            except ConfigError as e:
                if "of a different config" not in str(e):
                    raise
                shutil.rmtree(out / checkpoint.CHECKPOINT_DIR, ignore_errors=True)
                record = runner(cfg, out, progress=progress)
        except ConfigError as e:
            if _is_data_error(str(e)):
                return finish("skipped", f"{e} (set --data-dir, or --download where online)")
            return finish("failed", f"run {run.label!r}: {e}")
        except Exception as e:  # a crash in one entry must not lose the others
            traceback.print_exc()
            return finish("failed", f"run {run.label!r}: {type(e).__name__}: {e}")
        # per-seed copies of run.json (a sweep's convenience): the leaderboard reads run.json
        shutil.rmtree(out / "members", ignore_errors=True)
        status["runs"][run.label] = {
            "config_hash": record.get("config_hash"), "reused": False,
            "wall_seconds": record.get("timing", {}).get("wall_seconds"),
            "computed": _now(), "load": load}
    return finish("done")


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


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``jaxasync-leaderboard``."""
    p = argparse.ArgumentParser(
        prog="jaxasync-leaderboard",
        description="Run the leaderboard's entries (all, or those named) and render "
                    "LEADERBOARD.md, leaderboard.csv and plots from the result files.")
    p.add_argument("entries", nargs="*", metavar="ENTRY", help="entry ids (default: all)")
    p.add_argument("--render-only", action="store_true",
                   help="run nothing; rerender from the existing result files")
    p.add_argument("--list", action="store_true", help="list entries and their commands")
    p.add_argument("--rerun", action="store_true",
                   help="discard the chosen entries' results and run them again")
    p.add_argument("--data-dir", default=os.environ.get("JAXASYNC_DATA", "data"),
                   help="where MNIST / CIFAR files are (default: $JAXASYNC_DATA or ./data)")
    p.add_argument("--download", action="store_true",
                   help="download missing datasets (checksum-verified) before running")
    p.add_argument("--allow-cpu", action="store_true", help="run GPU entries on a CPU too")
    p.add_argument("--budget", type=float, default=None, metavar="MINUTES",
                   help="skip entries whose estimated time (entries.yaml: minutes) exceeds "
                        "what is left of this many minutes")
    p.add_argument("--entries-file", type=Path, default=ENTRIES_FILE)
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="result files directory")
    p.add_argument("--out", type=Path, default=BOARD_DIR,
                   help="where LEADERBOARD.md, leaderboard.csv and plots/ go")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
