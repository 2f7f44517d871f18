"""Scaling benchmarks (issue 7), each printing ratios measured side by side in one run.

    python benchmarks/scaling.py workers      # 1..1024 workers: simulator vs bare vmapped gradient
    python benchmarks/scaling.py memory       # model size x ring depth: peak memory vs state size
    python benchmarks/scaling.py seeds        # 8 seeds vmapped vs the same 8 one after another
    python benchmarks/scaling.py first        # compile time and time to the first progress line
    python benchmarks/scaling.py all

Targets on the 2-core CPU: simulator >= 0.8 of the bare limit at K = M for 16 to 1024 workers
on the MNIST-1D MLP; 8 vmapped seeds >= 3x the throughput of 8 sequential runs on the default
workload; peak memory <= 1.3x the theoretical state size; first progress line within 20 s.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).parent))
from throughput import bare_chunk, simulator_chunk  # noqa: E402

from jaxasync import delays as dl  # noqa: E402
from jaxasync.algorithms import get_algorithm  # noqa: E402
from jaxasync.data import partition  # noqa: E402
from jaxasync.sim import SimConfig, Simulator, put_data  # noqa: E402
from jaxasync.transforms import num_params  # noqa: E402
from jaxasync.workloads import get_workload  # noqa: E402


def _median_time(call, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def workers(repeats: int) -> None:
    wl = get_workload("mnist1d_mlp")
    print(f"# workers: mnist1d_mlp ({num_params(wl.init(jax.random.PRNGKey(0)))} params), batch 32, "
          f"ASGD K = M, ring D = 16, median of {repeats}; {jax.devices()[0]}")
    print(f"{'M':>6} {'bare grads/s':>14} {'sim grads/s':>14} {'ratio':>7}")
    for m in (1, 4, 16, 64, 256, 1024):
        index, size = partition(wl.data.y_train, m, "iid")
        data = put_data(wl, index, size)
        steps = max(2, 4096 // m)
        bare, n_bare = bare_chunk(wl, data, m, 32, steps)
        simc, n_sim = simulator_chunk(wl, data, m, m, 32, steps, 16)
        tb, ts = [], []
        for _ in range(repeats):  # interleaved: noise hits both alike
            tb.append(_median_time(bare, 1))
            ts.append(_median_time(simc, 1))
        rb, rs = n_bare / statistics.median(tb), n_sim / statistics.median(ts)
        print(f"{m:>6} {rb:>14.0f} {rs:>14.0f} {rs / rb:>7.2f}", flush=True)


def memory() -> None:
    print("# memory: peak of the compiled chunk (XLA memory analysis: arguments + outputs - "
          "aliased + temporaries, data arrays excluded) vs the theoretical state size "
          "(ring D*P + params + per-worker and optimizer state), ASGD K = 1, M = 16")
    print(f"{'workload':<16} {'P':>8} {'D':>5} {'state MB':>9} {'peak MB':>9} {'ratio':>6}")
    for name in ("mnist1d_mlp", "mnist_subset_fc"):
        wl = get_workload(name)
        m = 16
        index, size = partition(wl.data.y_train, m, "iid")
        data = put_data(wl, index, size)
        data_bytes = sum(x.nbytes for x in jax.tree.leaves(data))
        for d in (16, 64, 256):
            cfg = SimConfig(num_workers=m, arrivals=1, batch_size=32, ring_size=d, steps=20,
                            eval_every=20, delay=dl.DelayConfig(kind="event"))
            sim = Simulator(get_algorithm("asgd"), {}, wl, cfg)
            hp = {"learning_rate": jnp.float32(0.01)}
            state = jax.jit(sim.init)(jax.random.PRNGKey(0), hp)
            state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))

            def steps(s, dd):
                return jax.lax.scan(lambda c, _: (sim.step(c, dd, hp), None), s, None, length=20)[0]

            fn = jax.jit(steps, donate_argnums=(0,))
            ma = fn.lower(state, data).compile().memory_analysis()
            peak = (ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes
                    + ma.temp_size_in_bytes - data_bytes)
            p = num_params(state.params)
            print(f"{name:<16} {p:>8} {d:>5} {state_bytes / 2**20:>9.2f} {peak / 2**20:>9.2f} "
                  f"{peak / state_bytes:>6.2f}", flush=True)


def seeds(repeats: int) -> None:
    """The default workload (MNIST-1D MLP, 16 exponential workers, ASGD): 8 seeds."""
    wl = get_workload("mnist1d_mlp")
    m, steps, n_seeds = 16, 800, 8
    index, size = partition(wl.data.y_train, m, "iid")
    data = put_data(wl, index, size)
    cfg = SimConfig(num_workers=m, arrivals=1, batch_size=32, ring_size=8 * m, steps=steps,
                    eval_every=steps, delay=dl.DelayConfig(kind="event"))
    sim = Simulator(get_algorithm("asgd"), {}, wl, cfg)

    def make(n):
        keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(n))
        hp = {"learning_rate": jnp.full((n,), 0.05, jnp.float32)}
        state = jax.jit(jax.vmap(sim.init))(keys, hp)
        fn = jax.jit(jax.vmap(lambda s, h: sim.chunk(s, data, h, steps)), donate_argnums=(0,))
        holder = {"s": fn(state, hp)[0]}
        jax.block_until_ready(holder["s"])

        def call():
            holder["s"], met = fn(holder["s"], hp)
            jax.block_until_ready(met)

        return call

    vm, one = make(n_seeds), make(1)
    t_vm, t_seq = [], []
    for _ in range(repeats):
        t_vm.append(_median_time(vm, 1))
        t = time.perf_counter()
        for _ in range(n_seeds):
            one()
        t_seq.append(time.perf_counter() - t)
    a, b = statistics.median(t_vm), statistics.median(t_seq)
    print(f"# seeds: mnist1d_mlp, M = {m}, ASGD K = 1, {steps} steps + 1 evaluation per call, "
          f"median of {repeats}")
    print(f"8 seeds vmapped:    {n_seeds * steps / a:>9.0f} steps/s ({a:.2f} s)")
    print(f"8 seeds one by one: {n_seeds * steps / b:>9.0f} steps/s ({b:.2f} s)")
    print(f"compiled loop only, speed-up: {b / a:.2f}x (target >= 3)")

    # End to end, as a user runs them: one command with 8 seeds vs 8 commands of one seed
    # (each pays its own compilation, initialisation and evaluations).
    from jaxasync.experiment import run_experiment

    def cfg(seed_list):
        return {"algorithm": {"name": "asgd", "params": {"learning_rate": 0.05}},
                "workload": {"name": "mnist1d_mlp"}, "run": {"num_workers": m, "gradients": 4000,
                                                           "seeds": seed_list}, "plot": False}

    t = time.perf_counter()
    run_experiment(cfg(list(range(n_seeds))), None, progress=False)
    e_vm = time.perf_counter() - t
    t = time.perf_counter()
    for seed in range(n_seeds):
        run_experiment(cfg([seed]), None, progress=False)
    e_seq = time.perf_counter() - t
    print(f"end to end (run_experiment, 4000 gradients each): 8 seeds vmapped {e_vm:.1f} s, "
          f"8 runs one after another {e_seq:.1f} s, speed-up {e_seq / e_vm:.2f}x")


def first() -> None:
    """Time from launching the default CLI run to its first progress line, and compile time."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "jaxasync", "algorithm=asgd", f"hydra.sweep.dir={tmp}/sweep",
               "run.compile_cache=false"]    # a cold compile (benchmarks/compile_cache.py: warm)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env)
        first_line = None
        for line in proc.stdout:
            progress_line = re.match(r"^\[[^\]]+\]\s+\d+%\s+step ", line)
            if first_line is None and progress_line:
                first_line = time.perf_counter() - t0
        proc.wait()
        total = time.perf_counter() - t0
        rec = json.loads(next(Path(tmp).rglob("run.json")).read_text())
    print("# first: the default CLI run (ASGD job alone), from process start")
    print(f"first progress line: {first_line:.1f} s (target <= 20 s)")
    print(f"compile (chunk + init + evaluation): {rec['timing']['compile_seconds']:.1f} s")
    print(f"whole job: {total:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", choices=("workers", "memory", "seeds", "first", "all"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.which in ("workers", "all"):
        workers(args.repeats)
    if args.which in ("memory", "all"):
        memory()
    if args.which in ("seeds", "all"):
        seeds(args.repeats)
    if args.which in ("first", "all"):
        first()


if __name__ == "__main__":
    main()
