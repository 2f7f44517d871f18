"""Run records, targets reached, tables, CSV and plots.

Everything here works from metric histories (lists of dicts), so the same code renders a
live run, a ``run.json`` read back from disk, and the leaderboard.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

#: what "reaching the target" is measured in, as the SASG authors count it
TO_TARGET = ("step", "grads", "uploads", "bits_up", "time")


def atomic_write(path: Path, text: str | bytes) -> None:
    """Writes ``text`` (or bytes) to ``path`` via a temporary file and a rename (never
    half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def reached(history: list[dict], metric: str, value: float, mode: str) -> dict | None:
    """The first evaluation at or beyond the target, with the cost to get there.

    Returns ``{"step", "grads", "uploads", "bits_up", "time"}`` of that evaluation (as
    the SASG authors count "rounds to target": the first evaluation at or above it), or
    None if never reached.
    """
    for h in history:
        v = h.get(metric)
        if v is None or not math.isfinite(v):
            continue
        if (mode == "max" and v >= value) or (mode == "min" and v <= value):
            return {k: h[k] for k in TO_TARGET if k in h}
    return None


#: metrics a ``target`` (config) may name
TARGET_METRICS = ("test_accuracy", "test_top5", "test_loss", "train_loss", "train_accuracy",
                  "train_gap", "train_grad_norm", "batch_loss")


def check_target(cfg) -> None:
    """``target`` (config): a known metric, a finite value, mode min or max; ``train_gap``
    and ``train_grad_norm`` need what reports them."""
    from jaxasync.config import ConfigError

    t = cfg.target
    if t is None:
        return
    if t.metric not in TARGET_METRICS:
        raise ConfigError(f"target.metric={t.metric!r}: unknown; choose one of: "
                          f"{', '.join(TARGET_METRICS)}")
    if t.metric == "train_grad_norm" and not cfg.run.eval_grad_norm:
        raise ConfigError("target.metric=train_grad_norm: needs run.eval_grad_norm=true")


def _target_of(workload, cfg=None) -> dict | None:
    t = getattr(cfg, "target", None) or getattr(workload, "target", None)
    if t is None:
        return None
    return {"metric": t.metric, "value": t.value, "mode": t.mode}


# ----------------------------------------------------------------------------- selection

#: ``run.select``: which member of a grid a run reports (``none``: all, pooled per value)
SELECT = ("none",) + TO_TARGET


def _group_final(ms: list[dict], target: dict) -> float:
    """The mean final target metric of a group, as a cost (lower is better; a diverged or
    non-finite member makes it inf)."""
    sign = 1.0 if target["mode"] == "min" else -1.0
    vals = []
    for m in ms:
        v = m["history"][-1].get(target["metric"])
        if m["status"] != "ok" or v is None or not math.isfinite(v):
            return math.inf
        vals.append(sign * v)
    return float(np.mean(vals))


def select_members(members: list[dict], target: dict | None, by: str) -> dict | None:
    """The grid value whose members reach the target first, measured in ``by`` (a
    :data:`TO_TARGET` quantity, mean over seeds; a value counts only if every seed reaches
    it), or, where none reaches it, the one with the best final target metric.

    Returns ``{"by", "params", "members" (indices), "value" (mean cost to target or None),
    "reached"}``; None without a target or for ``by="none"``.
    """
    if by == "none" or target is None or not members:
        return None
    groups: dict[str, list[int]] = {}
    for i, m in enumerate(members):
        groups.setdefault(json.dumps(m["params"], sort_keys=True), []).append(i)
    best = None
    for key, idx in groups.items():
        ms = [members[i] for i in idx]
        hits = [reached(m["history"], target["metric"], target["value"], target["mode"])
                for m in ms]
        done = all(h is not None and by in h for h in hits)
        cost = float(np.mean([h[by] for h in hits])) if done else math.inf
        rank = (cost, _group_final(ms, target))
        if best is None or rank < best[0]:
            best = (rank, key, idx, done)
    (cost, _), key, idx, done = best
    return {"by": by, "params": json.loads(key), "members": idx,
            "value": cost if done else None, "reached": done}


def selected_members(record: dict) -> list[dict]:
    """The members a record reports: the selected grid value's (``run.select``), or all."""
    sel = record.get("selected")
    if not sel:
        return record["members"]
    return [record["members"][i] for i in sel["members"]]


def plain_config(cfg) -> dict:
    """A :class:`jaxasync.config.Config` as plain, resolved containers (``run.json``'s
    ``config``)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def make_record(prep, result, prov: dict, wall_seconds: float) -> dict:
    """The ``run.json`` content of a finished experiment."""

    target = _target_of(prep.workload, prep.cfg)
    members = []
    for i, m in enumerate(prep.members):
        hist = result.history[i]
        final = hist[-1]
        hit = reached(hist, target["metric"], target["value"], target["mode"]) if target else None
        members.append({
            **m,
            "status": "diverged" if result.diverged[i] is not None else "ok",
            "diverged_at_step": result.diverged[i],
            "final": final,
            "best": _best(hist, target),
            "target_reached": hit,
            "staleness_hist": result.staleness_hist[i].tolist(),
            "history": hist,
        })
    comp = prep.sim_config.compressor
    selected = select_members(members, target, prep.cfg.run.select)
    return {
        "algorithm": prep.cfg.algorithm.name,
        # the table's and plots' name: the algorithm, and the compressor in front of it
        "label": prep.cfg.algorithm.name + ("" if comp is None else
                                            f"+{comp[0]}" + ("+ef" if comp[2] else "")),
        "workload": prep.workload.name,
        "config": plain_config(prep.cfg),
        "resolved": {
            "num_workers": prep.sim_config.num_workers, "arrivals": prep.rows,
            "ring_size": prep.sim_config.ring_size, "steps": prep.sim_config.steps,
            "eval_every": prep.sim_config.eval_every, "batch_size": prep.sim_config.batch_size,
            "synchronous": prep.spec.synchronous, "needs": sorted(prep.spec.needs),
            "delay": dataclasses.asdict(prep.delay) | {"trace": list(prep.delay.trace)},
            "steps_per_epoch": prep.steps_per_epoch,
            "lr_decay": ({"boundaries": list(prep.lr_boundaries),
                          "factor": prep.sim_config.lr_factor} if prep.lr_boundaries else None),
        },
        "target": target,
        **({"selected": selected} if selected is not None else {}),
        "members": members,
        "timing": {"compile_seconds": result.compile_seconds, "run_seconds": result.run_seconds,
                   "wall_seconds": wall_seconds, "members_layout": result.layout},
        **prov,
    }


def _best(history: list[dict], target: dict | None) -> dict:
    keys = ("test_accuracy", "test_loss", "train_loss", "train_gap")
    out = {}
    for k in keys:
        vals = [h[k] for h in history if k in h and h[k] is not None and math.isfinite(h[k])]
        if vals:
            out[k] = max(vals) if k == "test_accuracy" else min(vals)
    return out


# ----------------------------------------------------------------------------- files


def history_csv(record: dict) -> str:
    """All members' histories as CSV (one row per member per evaluation)."""
    rows = []
    for i, m in enumerate(record["members"]):
        for h in m["history"]:
            params = {f"param_{k}": v for k, v in m["params"].items()}
            rows.append({"member": i, "seed": m["seed"], **params, **h})
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _json_default(o: Any):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def dumps(record: dict) -> str:
    # JSON has no inf/nan; a diverged history keeps them as strings via allow_nan=True
    return json.dumps(record, indent=1, default=_json_default, allow_nan=True)


def member_label(member: dict) -> str:
    """``seed3`` or ``seed3_learning_rate=0.05``: a member's directory name."""
    parts = [f"seed{member['seed']}"] + [f"{k}={v:g}" for k, v in sorted(member["params"].items())]
    return "_".join(parts)


def split_members(record: dict) -> list[dict]:
    """One single-member record per member (a vmapped sweep's members as separate runs)."""
    return [{**record, "members": [m], "member_of": record.get("config_hash")}
            for m in record["members"]]


def write_outputs(record: dict, out_dir: Path, plot: bool = True) -> list[Path]:
    """Writes ``run.json``, ``metrics.csv`` and ``metrics.png``/``.pdf`` into ``out_dir``
    atomically; returns the paths written (``run.json`` first).

    A run of several members also gets ``members/<label>/run.json`` and ``metrics.csv``
    per member, so each seed / hyperparameter value of a vmapped sweep is a run of its own.
    """
    from jaxasync import plots

    out_dir = Path(out_dir)
    if len(record["members"]) > 1:
        for i, single in enumerate(split_members(record)):
            sub = out_dir / "members" / f"{i:03d}_{member_label(single['members'][0])}"
            atomic_write(sub / "metrics.csv", history_csv(single))
            atomic_write(sub / "run.json", dumps(single))
    atomic_write(out_dir / "metrics.csv", history_csv(record))
    figures = plots.plot_records([record], out_dir / "metrics.png") if plot else []
    atomic_write(out_dir / "run.json", dumps(record))  # last: its presence means "finished"
    return [out_dir / "run.json", out_dir / "metrics.csv", *figures]


#: the stored form of a large result (:func:`compact_result`): xz, through the standard library
COMPACT_SUFFIX = ".xz"


def compact_result(out_dir: Path, above_bytes: int) -> bool:
    """Stores a finished job's ``run.json`` and ``metrics.csv`` xz-compressed (``run.json.xz``,
    ``metrics.csv.xz``) where ``run.json`` exceeds ``above_bytes``, and drops an earlier
    compressed copy where it does not. For result stores kept in git (the leaderboard's): a
    grid of 24 members x 300 evaluations writes a 4.6 MB ``run.json``, 0.2 MB as xz (gzip:
    0.6 MB). :func:`read_record` and :func:`load_records` read both forms. Returns whether it
    compressed."""
    import lzma

    out_dir = Path(out_dir)
    plain = out_dir / "run.json"
    big = plain.exists() and plain.stat().st_size > above_bytes
    for name in ("run.json", "metrics.csv"):
        src, dst = out_dir / name, out_dir / (name + COMPACT_SUFFIX)
        if big and src.exists():
            atomic_write(dst, lzma.compress(src.read_bytes()))
            src.unlink()
        elif not big and src.exists():
            dst.unlink(missing_ok=True)
    return big


def read_record(path: Path, strict: bool = False) -> dict | None:
    """A ``run.json`` (or its compressed form, ``run.json.xz``, :func:`compact_result`);
    None where neither exists or (unless ``strict``, which raises) where it cannot be read."""
    import lzma

    path = Path(path)
    packed = path.with_name(path.name + COMPACT_SUFFIX)
    try:
        if path.exists():
            return json.loads(path.read_text())
        return json.loads(lzma.decompress(packed.read_bytes())) if packed.exists() else None
    except (OSError, ValueError, lzma.LZMAError):
        if strict:
            raise
        return None


def load_records(root: Path) -> list[dict]:
    """Every job's ``run.json`` (or ``run.json.xz``) under ``root`` (sorted by path; per-member
    copies excluded), each with ``_source``, its directory (what tells identical configs
    apart)."""
    dirs = sorted({p.parent for pattern in ("run.json", "run.json" + COMPACT_SUFFIX)
                   for p in Path(root).rglob(pattern)
                   if "members" not in p.relative_to(root).parts})
    return [{**read_record(d / "run.json", strict=True), "_source": str(d)} for d in dirs]
