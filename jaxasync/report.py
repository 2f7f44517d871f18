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


def atomic_write(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` via a temporary file and a rename (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
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


def _target_of(workload) -> dict | None:
    t = getattr(workload, "target", None)
    if t is None:
        return None
    return {"metric": t.metric, "value": t.value, "mode": t.mode}


def make_record(prep, result, prov: dict, wall_seconds: float) -> dict:
    """The ``run.json`` content of a finished experiment."""
    from omegaconf import OmegaConf

    target = _target_of(prep.workload)
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
    return {
        "algorithm": prep.cfg.algorithm.name,
        # the table's and plots' name: the algorithm, and the compressor in front of it
        "label": prep.cfg.algorithm.name + ("" if comp is None else
                                            f"+{comp[0]}" + ("+ef" if comp[2] else "")),
        "workload": prep.workload.name,
        "config": OmegaConf.to_container(OmegaConf.structured(prep.cfg), resolve=True),
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


# ----------------------------------------------------------------------------- summary rows


def _mean_sd(vals: list[float]) -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return _fmt(vals[0])
    return f"{_fmt(float(np.mean(vals)))} ± {_fmt(float(np.std(vals, ddof=1)))}"


def _fmt(v: float) -> str:
    if v is None:
        return "-"
    if isinstance(v, int) or (float(v).is_integer() and abs(v) < 1e6):
        return f"{int(v)}"
    a = abs(v)
    if a != 0 and (a >= 1e5 or a < 1e-3):
        return f"{v:.3g}"
    return f"{v:.4g}" if a < 1 else f"{v:.4g}"


def summary_row(record: dict) -> dict[str, str]:
    """One table row (strings) summarising a run record over its members."""
    ms = record["members"]
    target = record.get("target")
    final = [m["final"] for m in ms if m["status"] == "ok"]
    row = {
        "algorithm": record.get("label") or record["algorithm"],
        "workload": record["workload"],
        "members": str(len(ms)),
    }
    if any(m["params"] for m in ms):
        row["params"] = ", ".join(f"{k}={v:g}" for k, v in ms[0]["params"].items())
    if any(m["status"] == "diverged" for m in ms):
        steps = [m["diverged_at_step"] for m in ms if m["status"] == "diverged"]
        row["status"] = f"diverged ({len(steps)}/{len(ms)}, step {min(steps)})"
    else:
        row["status"] = "ok"
    for key, label in (("test_accuracy", "test acc"), ("train_gap", "F - F*"),
                       ("train_loss", "train loss")):
        if final and key in final[0]:
            row[label] = _mean_sd([f[key] for f in final])
    if final:
        row["up bits"] = _mean_sd([f["bits_up"] for f in final])
        row["uploads"] = _mean_sd([f["uploads"] for f in final])
        row["staleness"] = _mean_sd([f["staleness_mean"] for f in final])
        if any(f.get("rejections") or f.get("skips") or f.get("dropped") for f in final):
            row["rejected"] = _mean_sd([f.get("rejections", 0) for f in final])
            row["skipped"] = _mean_sd([f.get("skips", 0) for f in final])
            row["wasted grads"] = _mean_sd([f.get("wasted", 0) for f in final])
        if final and "server_flops_per_decision" in final[0]:
            row["server flops/decision"] = _mean_sd([f["server_flops_per_decision"] for f in final])
        row["sim time"] = _mean_sd([f["time"] for f in final])
    if target:
        hits = [m["target_reached"] for m in ms]
        n_hit = sum(h is not None for h in hits)
        label = f"{target['metric']} {'≥' if target['mode'] == 'max' else '≤'} {target['value']:g}"
        row["target"] = label
        row["reached"] = f"{n_hit}/{len(ms)}"
        ok = [h for h in hits if h is not None]
        row["bits to target"] = _mean_sd([h["bits_up"] for h in ok]) if ok else "-"
        row["grads to target"] = _mean_sd([h["grads"] for h in ok]) if ok else "-"
    row["wall s"] = f"{record['timing']['wall_seconds']:.1f}"
    return row


def format_table(rows: list[dict[str, str]]) -> str:
    """A Markdown table of summary rows (columns: the union, in first-seen order)."""
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    widths = {c: max(len(c), *(len(r.get(c, "")) for r in rows)) for c in cols}
    line = lambda vals: "| " + " | ".join(v.ljust(widths[c]) for c, v in zip(cols, vals, strict=True)) + " |"
    out = [line(cols), "|" + "|".join("-" * (widths[c] + 2) for c in cols) + "|"]
    out += [line([r.get(c, "") for c in cols]) for r in rows]
    return "\n".join(out)


# ----------------------------------------------------------------------------- files


def history_csv(record: dict) -> str:
    """All members' histories as CSV (one row per member per evaluation)."""
    rows = []
    for i, m in enumerate(record["members"]):
        for h in m["history"]:
            rows.append({"member": i, "seed": m["seed"], **{f"param_{k}": v for k, v in m["params"].items()}, **h})
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


def write_outputs(record: dict, out_dir: Path, plot: bool = True) -> None:
    """Writes ``run.json``, ``metrics.csv`` and ``metrics.png`` into ``out_dir`` atomically.

    A run of several members also gets ``members/<label>/run.json`` and ``metrics.csv``
    per member, so each seed / hyperparameter value of a vmapped sweep is a run of its own.
    """
    out_dir = Path(out_dir)
    if len(record["members"]) > 1:
        for i, single in enumerate(split_members(record)):
            sub = out_dir / "members" / f"{i:03d}_{member_label(single['members'][0])}"
            atomic_write(sub / "metrics.csv", history_csv(single))
            atomic_write(sub / "run.json", dumps(single))
    atomic_write(out_dir / "metrics.csv", history_csv(record))
    if plot:
        plot_records([record], out_dir / "metrics.png")
    atomic_write(out_dir / "run.json", dumps(record))  # last: its presence means "finished"


def plot_records(records: list[dict], path: Path) -> None:
    """Loss/accuracy against server steps, uplink bits and simulated time (one line per run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_acc = any("test_accuracy" in r["members"][0]["history"][0] for r in records)
    has_gap = any("train_gap" in r["members"][0]["history"][0] for r in records)
    ykeys = (["test_accuracy"] if has_acc else []) + (["train_gap"] if has_gap else ["train_loss"])
    xkeys = ("step", "grads", "bits_up", "time")
    fig, axes = plt.subplots(len(ykeys), len(xkeys), figsize=(4 * len(xkeys), 3.2 * len(ykeys)),
                             squeeze=False)
    for r in records:
        label = r.get("label") or r["algorithm"]
        for i, yk in enumerate(ykeys):
            for j, xk in enumerate(xkeys):
                ax = axes[i][j]
                xs = [[h[xk] for h in m["history"]] for m in r["members"]]
                ys = [[h.get(yk, np.nan) for h in m["history"]] for m in r["members"]]
                n = min(len(x) for x in xs)
                x = np.mean([x[:n] for x in xs], axis=0)
                y = np.mean([y[:n] for y in ys], axis=0)
                ax.plot(x, y, label=label)
                ax.set_xlabel({"bits_up": "uplink bits", "time": "simulated time",
                               "grads": "gradients computed", "step": "server step"}[xk])
                ax.set_ylabel(yk.replace("_", " "))
                if yk in ("train_gap", "train_loss"):
                    ax.set_yscale("log")
                if xk == "bits_up":
                    ax.set_xscale("symlog")
    axes[0][0].legend(fontsize=8)
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    """Saves a matplotlib figure as PNG atomically (temporary file, then rename) and closes it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


def load_records(root: Path) -> list[dict]:
    """Every job's ``run.json`` under ``root`` (sorted by path; per-member copies excluded)."""
    paths = sorted(p for p in Path(root).rglob("run.json") if "members" not in p.parts)
    return [json.loads(p.read_text()) for p in paths]


def summary_rows(record: dict) -> list[dict[str, str]]:
    """Table rows of a record: one per distinct swept-parameter value (seeds pooled)."""
    groups: dict[str, list[dict]] = {}
    for m in record["members"]:
        groups.setdefault(json.dumps(m["params"], sort_keys=True), []).append(m)
    if len(groups) == 1:
        return [summary_row(record)]
    rows = []
    for key, ms in groups.items():
        row = summary_row({**record, "members": ms})
        row["params"] = ", ".join(f"{k}={v:g}" for k, v in json.loads(key).items())
        rows.append(row)
    return rows
