"""Tables for the CE-ASGD presets: uplink bits to target and the loss at equal gradients.

Reads every ``run.json`` under the sweep directories given (one per job of
``jaxasync experiment=ce_logistic`` and friends) and prints, per workload and number of
workers M, one Markdown row per algorithm:

* ``reached``: seeds that reached the workload's target within the budget;
* ``bits to target`` / ``grads to target``: mean over the seeds that reached it (first
  evaluation at or past the target), and the bits relative to ASGD's;
* ``final``: the target metric (``train_gap`` or ``test_accuracy``) after the whole budget,
  i.e. at equal gradients computed for every algorithm, mean ± sd over seeds;
* ``at G/4``: the same metric at a quarter of the budget (interpolated between evaluations);
* ``up bits``: uplink bits spent in the whole budget;
* ``rejected``: share of arrivals rejected (wasted computations / gradients computed);
* ``server flops / decision``: CE-ASGD's server work per acceptance decision.

Usage::

    python benchmarks/ce_asgd_report.py runs/2026-01-01/12-00-00 [more sweep dirs]
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

ORDER = ("asgd", "staleness_aware", "delay_adaptive", "koloskova", "picky", "dc_asgd",
         "dc_asgd_adaptive", "fedbuff", "ce_asgd", "ce_asgd_lite", "sync_sgd")


def _at(history: list[dict], key: str, grads: float) -> float:
    xs = np.asarray([h["grads"] for h in history], float)
    ys = np.asarray([h.get(key, np.nan) for h in history], float)
    return float(np.interp(grads, xs, ys))


def _fmt(v: float, digits: int = 3) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-2):
        return f"{v:.{digits}g}"
    return f"{v:.{digits}g}" if abs(v) < 1 else f"{v:.{digits + 1}g}"


def _ms(vals: list[float], digits: int = 3) -> str:
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    if not vals:
        return "-"
    if len(vals) == 1:
        return _fmt(vals[0], digits)
    return f"{_fmt(float(np.mean(vals)), digits)} ± {_fmt(float(np.std(vals, ddof=1)), 2)}"


def rows_of(records: list[dict]) -> dict[tuple, list[dict]]:
    """Summary rows grouped by (workload, M, delay label)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for rec in records:
        res = rec["resolved"]
        delay = res["delay"]
        target = rec["target"]
        metric = target["metric"] if target else "train_loss"
        members = rec["members"]
        budget = min(m["history"][-1]["grads"] for m in members)
        params = members[0]["params"]
        name = rec["algorithm"]
        sweep = {k for m in members for k, v in m["params"].items() if v != params.get(k)}
        # one row per distinct numeric setting (threshold sweeps run as members)
        settings = defaultdict(list)
        for m in members:
            key = tuple(sorted((k, m["params"][k]) for k in sweep))
            settings[key].append(m)
        for key, ms in settings.items():
            hits = [m["target_reached"] for m in ms if m["status"] == "ok"]
            ok = [h for h in hits if h is not None]
            finals = [m["history"][-1] for m in ms if m["status"] == "ok"]
            label = name + ("" if not key else " " + ",".join(f"{k}={v:g}" for k, v in key))
            sort = tuple(v for _, v in key)
            groups[(rec["workload"], res["num_workers"], delay_label(delay))].append({
                "algorithm": label,
                "base": name,
                "reached": f"{len(ok)}/{len(ms)}",
                "bits": float(np.mean([h["bits_up"] for h in ok])) if ok else math.nan,
                "grads": float(np.mean([h["grads"] for h in ok])) if ok else math.nan,
                "final": [f.get(metric, math.nan) for f in finals],
                "quarter": [_at(m["history"], metric, budget / 4)
                            for m in ms if m["status"] == "ok"],
                "rejected": float(np.mean([f["wasted"] / max(1, f["grads"]) for f in finals]))
                if finals else math.nan,
                "flops": float(np.mean([f["server_flops_per_decision"] for f in finals]))
                if finals and "server_flops_per_decision" in finals[0] else math.nan,
                "bits_total": [f["bits_up"] for f in finals],
                "metric": metric, "budget": budget, "sort": sort,
                "slowdown": delay.get("straggler_slowdown", 1.0)
                if delay.get("straggler_fraction", 0) > 0 else 0.0,
                "status": ",".join(sorted({m["status"] for m in ms})),
            })
    return groups


def delay_label(delay: dict) -> str:
    """``event (exponential)``, plus the stragglers when there are some."""
    out = delay["kind"] + (f" ({delay['compute']})" if delay["kind"] == "event" else "")
    if delay.get("straggler_fraction", 0) > 0:
        out += (f", {100 * delay['straggler_fraction']:g}% stragglers "
                f"{delay['straggler_slowdown']:g}x slower")
    return out


def table(rows: list[dict]) -> str:
    order = {n: i for i, n in enumerate(ORDER)}
    rows = sorted(rows, key=lambda r: (order.get(r["base"], 99), r["base"], r["sort"]))
    asgd = next((r for r in rows if r["algorithm"] == "asgd"), None)
    metric, budget = rows[0]["metric"], rows[0]["budget"]
    head = ["algorithm", "reached", "bits to target", "vs ASGD", "grads to target",
            f"{metric} at {budget // 4} grads", f"{metric} at {budget} grads",
            f"up bits at {budget} grads", "rejected", "server flops/decision"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        rel = r["bits"] / asgd["bits"] if asgd and math.isfinite(asgd["bits"]) else math.nan
        out.append("| " + " | ".join([
            r["algorithm"] + ("" if r["status"] == "ok" else f" ({r['status']})"), r["reached"],
            _fmt(r["bits"]), _fmt(rel, 2), _fmt(r["grads"]), _ms(r["quarter"]), _ms(r["final"]),
            _fmt(float(np.mean(r["bits_total"])) if r["bits_total"] else math.nan),
            f"{100 * r['rejected']:.0f}%", _fmt(r["flops"]),
        ]) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", type=Path, help="sweep directories holding run.json files")
    args = ap.parse_args(argv)
    # one run.json per job (the per-member copies under members/ are skipped)
    records = [json.loads(p.read_text()) for d in args.dirs for p in sorted(d.rglob("run.json"))
               if "members" not in p.relative_to(d).parts]
    if not records:
        raise SystemExit(f"no run.json under {', '.join(map(str, args.dirs))}")
    groups = rows_of(records)
    def order(item):
        (workload, m, delay), rows = item
        return workload, rows[0]["slowdown"], delay, m

    for (workload, m, delay), rows in sorted(groups.items(), key=order):
        print(f"\n### {workload}, M = {m}, {delay}\n")
        print(table(rows))


if __name__ == "__main__":
    main()
