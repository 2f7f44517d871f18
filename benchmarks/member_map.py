"""Members (seeds) vmapped or run one after another: time per member-step, side by side.

    python benchmarks/member_map.py                       # the default cases, ~5 min on 2 cores
    python benchmarks/member_map.py --cases mnist_subset_fc:sasg --members 3
    python benchmarks/member_map.py --json out.json       # also the figures as JSON

The runner (:mod:`jaxasync.running`) runs the members of a run either ``jax.vmap``-ed
(``run.members=vmap``) or with ``jax.lax.map``, one member after another in the same program
(``run.members=map``); ``run.members=auto`` picks one by a rule
(:func:`jaxasync.running.member_layout`). For each case (``workload:algorithm``) this script
builds the run's step program in both layouts (:func:`jaxasync.running.programs`), times
``--steps`` server steps of ``--members`` members, and prints milliseconds per member-step,
the ratio vmap / map (above 1: map is faster), the layout the rule picks, and how far the two
layouts' parameters are apart after the same steps (different programs: float32 rounding).
Each timing is the median of ``--repeats`` interleaved calls of the compiled program.

Settings per workload: ``mnist_subset_fc``, SASG's MNIST protocol (M = 10, batch 10, no
delays; ``benchmarks/sasg_bench.py``); any other, the default job's (M = 16, batch 32,
event-driven exponential compute times).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxasync.experiment import prepare
from jaxasync.running import member_layout, programs
from jaxasync.sim import put_data

CASES = ("mnist1d_mlp:asgd,mnist1d_mlp:sync_sgd,mnist1d_mlp:sasg,mnist_subset_fc:asgd,"
         "mnist_subset_fc:sgd_sum,mnist_subset_fc:sasg")


def config(workload: str, algorithm: str, members: int, steps: int) -> dict:
    run = {"steps": steps, "eval_every": steps, "seeds": list(range(members))}
    if workload == "mnist_subset_fc":
        return {"algorithm": {"name": algorithm}, "workload": {"name": workload, "batch_size": 10},
                "delay": {"kind": "none"}, "run": {**run, "num_workers": 10}}
    return {"algorithm": {"name": algorithm}, "workload": {"name": workload, "batch_size": 32},
            "delay": {"kind": "event", "compute": "exponential", "mean": 1.0},
            "run": {**run, "num_workers": 16}}


def case(workload: str, algorithm: str, members: int, steps: int, repeats: int) -> dict:
    prep = prepare(config(workload, algorithm, members, steps))
    sim, keys, hp = prep.simulator, prep.keys(), prep.hparams()
    data = put_data(prep.workload, prep.index, prep.size)
    start = jax.jit(programs(sim, "vmap").init)(keys, hp)
    n = jnp.int32(steps)
    fns, states = {}, {}
    for layout in ("vmap", "map"):
        fns[layout] = jax.jit(programs(sim, layout).steps, donate_argnums=(0,))
        first = jax.tree.map(jnp.copy, start)
        states[layout] = jax.block_until_ready(fns[layout](first, data, hp, n))  # compile + warm
    leaves = [jax.tree.leaves(states[k].params) for k in ("vmap", "map")]
    # per leaf: the largest difference over the leaf's largest magnitude
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b)))
               for a, b in zip(*leaves, strict=True))
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            states[k] = jax.block_until_ready(f(states[k], data, hp, n))
            times[k].append((time.perf_counter() - t) / steps / members * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"workload": workload, "algorithm": algorithm, "members": members,
            "vmap_ms": med["vmap"], "map_ms": med["map"], "vmap_over_map": med["vmap"] / med["map"],
            "auto": member_layout(sim, members), "max_rel_diff": diff,
            "synchronous": sim.spec.synchronous}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=CASES, help="comma-separated workload:algorithm")
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    print(f"# {args.members} members, ms per member-step (median of {args.repeats} x "
          f"{args.steps} steps), {jax.devices()[0].device_kind}, load {os.getloadavg()[0]:.1f}")
    print(f"{'workload':<16} {'algorithm':<10} {'vmap':>8} {'map':>8} {'vmap/map':>9} "
          f"{'auto':>5} {'right':>6} {'rel diff':>9}")
    rows = []
    for item in args.cases.split(","):
        wl, alg = item.split(":")
        r = case(wl, alg, args.members, args.steps, args.repeats)
        faster = "map" if r["vmap_over_map"] > 1 else "vmap"
        rows.append({**r, "faster": faster})
        print(f"{wl:<16} {alg:<10} {r['vmap_ms']:>8.3f} {r['map_ms']:>8.3f} "
              f"{r['vmap_over_map']:>9.2f} {r['auto']:>5} "
              f"{'yes' if faster == r['auto'] else 'no':>6} "
              f"{r['max_rel_diff']:>9.1e}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
