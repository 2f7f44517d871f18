"""Arrivals per second of the event-driven simulator on the worst-case quadratic.

The setting of the optimal-time-complexity papers: d = 1,000, fixed times tau_i = sqrt(i + 1),
one arrival per server step, batch 1. Printed, for n = 10, 100, 1,000, 10,000 workers:

* gradient arrivals per second of one run of ASGD and of Rennala SGD (S = 4), and their
  compile times;
* the 21-member step-size grid (2^k, k = -10..10, vmapped: one program) in member-arrivals
  per second, against the same 21 runs one after another: ``seq/s`` counts their scans only,
  ``seq wall/s`` their whole wall time, each run traced and compiled again as a separate run
  is (JAX's persistent compilation cache on, in a temporary directory, so runs after the
  first load the program); and the ratios;
* the ratios against the KAUST simulator (github.com/k3nfalt/optimal-decentralized-optimization,
  a NumPy event heap, one process per step size): by default against the figures quoted in
  issue 20 for that machine (ASGD: 81k, 82k, 65k, 53k arrivals/s at n = 10 ... 10,000); with
  ``--kaust FILE`` against rates measured beside this run (JSON ``{"10": 47000, ...}``; the
  KAUST code is not part of this repository, so timing it is done outside it).

``--cores 1`` pins the process to one CPU core before JAX starts (its intra-op thread pool
then has one thread). The KAUST simulator is one single-threaded NumPy process per run, so this
is the like-for-like comparison; it is also faster for this model: every kernel of a d = 1,000
step lasts a microsecond or two, and handing them to a second thread costs more than it saves
(on the quiet 2-core CPU ASGD at n = 10 ran at 84k arrivals/s on both cores, 159k on one). For
models whose kernels are large (MNIST's matmuls) both cores are faster; run those unpinned.

Variants alternate within one process (``--repeat`` rounds, medians), so a shared machine's
drift hits both sides. The grid is skipped where its rings would pass ``--grid-mb`` (the ring
of ASGD under sqrt times holds its staleness bound, about 3n versions: 2.4 GB for 21 members
at n = 10,000, d = 1,000). ``--quick`` runs n = 10 and 100 with fewer steps (a smoke test)::

    python benchmarks/async_bench.py                  # all sizes (about 10 min on 2 cores)
    python benchmarks/async_bench.py --quick
    python benchmarks/async_bench.py --sizes 10 10000 --kaust kaust.json
    python benchmarks/async_bench.py --cores 1         # one core, as the KAUST process uses
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import jax.numpy as jnp

from jaxasync import compile_cache, sim
from jaxasync.experiment import prepare

#: ASGD arrivals/s of the KAUST simulator on the 2-core machine of issue 20 (for the ratios
#: when no measured rates are given; 60-69k at n = 1,000: the middle, 65k)
KAUST_ISSUE = {10: 81_000, 100: 82_000, 1000: 65_000, 10_000: 53_000}
GRID = [2.0**k for k in range(-10, 11)]


def _config(algorithm: str, n: int, steps: int, lrs: list[float]) -> dict:
    params = {"learning_rate": lrs if len(lrs) > 1 else lrs[0]}
    if algorithm == "rennala":
        params["batch"] = 4
    return {"algorithm": {"name": algorithm, "params": params},
            "workload": {"name": "worst_case_quadratic", "batch_size": 1, "partition": "shared",
                         "options": {"dim": 1000, "sigma": 0.01, "epsilon": 1e-9}},
            "delay": {"kind": "event", "compute": "constant", "times": "sqrt"},
            "network": {"bandwidth": float("inf"), "latency": 0.0},
            "run": {"num_workers": n, "steps": steps, "eval_every": steps, "seeds": [0]},
            "plot": False}


class Case:
    """One compiled program (built once), run on demand."""

    def __init__(self, algorithm: str, n: int, steps: int, lrs: list[float]):
        self.prep = prepare(_config(algorithm, n, steps, lrs))
        self.data = sim.put_data(self.prep.workload, self.prep.index, self.prep.size)
        self.steps, self.members = steps, len(self.prep.members)
        self.compile_s = None

    def run(self, hparams: dict | None = None) -> float:
        """Seconds of the scan itself (compilation excluded)."""
        hp = hparams if hparams is not None else self.prep.hparams()
        r = sim.run(self.prep.simulator, self.data, self.prep.keys(), hp)
        if self.compile_s is None:
            self.compile_s = r.compile_seconds
        return r.run_seconds


def _median_rate(case: Case, seconds: list[float], members: int = 1) -> float:
    return members * case.steps / statistics.median(seconds)


def _ring_mb(case: Case, members: int) -> float:
    return case.prep.sim_config.ring_size * 1000 * 4 * members / 2**20


def bench_size(n: int, steps: int, repeat: int, grid_mb: float) -> dict:
    """Single runs of ASGD and Rennala, the vmapped grid and the sequential grid, alternated."""
    cases = {"asgd": Case("asgd", n, steps, [0.01]), "rennala": Case("rennala", n, steps, [0.01])}
    if _ring_mb(cases["asgd"], len(GRID)) <= grid_mb:
        cases["grid"] = Case("asgd", n, steps, GRID)
    times: dict[str, list[float]] = {k: [] for k in (*cases, "sequential", "seq_wall")}
    one = cases["asgd"]
    for _ in range(repeat):
        for name, case in cases.items():
            times[name].append(case.run())
        if "grid" not in cases:
            continue
        t0, scans = time.perf_counter(), 0.0
        for lr in GRID:     # the grid one run after another: 21 runs, each compiled (cached)
            scans += one.run({"learning_rate": jnp.asarray([lr], jnp.float32)})
        times["seq_wall"].append(time.perf_counter() - t0)
        times["sequential"].append(scans)
    grid = "grid" in cases
    nan = float("nan")
    return {
        "asgd": _median_rate(one, times["asgd"]),
        "rennala": _median_rate(cases["rennala"], times["rennala"]),
        "grid": _median_rate(cases["grid"], times["grid"], len(GRID)) if grid else nan,
        "sequential": _median_rate(one, times["sequential"], len(GRID)) if grid else nan,
        "seq_wall": _median_rate(one, times["seq_wall"], len(GRID)) if grid else nan,
        "compile": {k: c.compile_s for k, c in cases.items()},
        "ring": {k: c.prep.sim_config.ring_size for k, c in cases.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000, 10_000])
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--kaust", help="JSON of measured KAUST ASGD arrivals/s per n")
    ap.add_argument("--grid-mb", type=float, default=1024,
                    help="skip the grid where its rings need more MiB than this")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cores", type=int, default=None,
                    help="pin the process to this many CPU cores before JAX starts")
    args = ap.parse_args()
    if args.cores is not None:          # before the first JAX call sizes XLA's thread pool
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[-args.cores:])
    cores = len(os.sched_getaffinity(0))
    if args.quick:
        args.sizes, args.steps, args.repeat = [10, 100], 2_000, 1
    kaust = ({int(k): float(v) for k, v in json.load(open(args.kaust)).items()} if args.kaust
             else KAUST_ISSUE)
    source = "measured beside this run" if args.kaust else "issue 20's figures"
    print(f"worst-case quadratic d=1000, tau_i = sqrt(i+1), K=1, {args.steps} steps, "
          f"medians of {args.repeat}; {cores} CPU core(s); KAUST rates: {source}")
    print(f"{'n':>6} {'D':>6} {'ASGD/s':>9} {'xKAUST':>7} {'Rennala/s':>10} {'xKAUST':>7} "
          f"{'grid/s':>10} {'xKAUST':>7} {'seq/s':>9} {'grid/seq':>8} {'seq wall/s':>10} "
          f"{'grid/wall':>9}  compile s: asgd rennala grid")
    with tempfile.TemporaryDirectory() as cache:
        compile_cache.configure(True, cache)
        for n in args.sizes:
            r = bench_size(n, args.steps, args.repeat, args.grid_mb)
            k = kaust.get(n, float("nan"))
            c = r["compile"]
            print(f"{n:>6} {r['ring']['asgd']:>6} {r['asgd']:>9.0f} {r['asgd'] / k:>7.2f} "
                  f"{r['rennala']:>10.0f} {r['rennala'] / k:>7.2f} {r['grid']:>10.0f} "
                  f"{r['grid'] / k:>7.2f} {r['sequential']:>9.0f} "
                  f"{r['grid'] / r['sequential']:>8.2f} {r['seq_wall']:>10.0f} "
                  f"{r['grid'] / r['seq_wall']:>9.2f}  {c['asgd']:.1f} {c['rennala']:.1f} "
                  f"{c.get('grid', float('nan')):.1f}", flush=True)


if __name__ == "__main__":
    main()
