"""Scaling benchmarks (issue 7), each printing ratios measured side by side in one run.

    python benchmarks/scaling.py workers      # 1..1024 workers: simulator vs bare vmapped gradient
    python benchmarks/scaling.py memory       # model size x ring depth: peak memory vs state size
    python benchmarks/scaling.py seeds        # 8 seeds vmapped vs the same 8 one after another
    python benchmarks/scaling.py first        # compile time and time to the first progress line
    python benchmarks/scaling.py all
    python benchmarks/scaling.py chart        # docs/scaling.png (about 15 min on 2 cores)
    python benchmarks/scaling.py chart --sizes small --out /tmp/s.png --json /tmp/s.json

``chart``: one figure, log axes, three columns (workers 1 ... 10,000; members 1 ... 64; model
size), three rows: gradients per second, memory, compile seconds. Every point is a fresh
process running the real runner (:func:`jaxasync.running.run`, ASGD, event-driven exponential
workers, MNIST-1D, batch 32): gradients per second over two chunks after the first, compile
seconds as the run reports them, memory measured (GPU: the device's peak bytes in use; CPU:
the process's peak resident memory minus its resident memory before the run, which counts
the compiler's own memory, about 250 MB, and beside it XLA's buffers of the step program:
its outputs, the state updated in place, and its temporaries), next to what the state should
need: its bytes (ring of D versions +
per-worker state + optimizer state, times the members), and that plus one step's gradient rows
(the stale parameters and gradients of the K arrivals, 2 K P floats).

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
import numpy as np

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


# ----------------------------------------------------------------------------- the chart

#: the three sweeps: (column title, x label, values) per size
SWEEPS = {
    "full": {"workers": (1, 10, 100, 1000, 10000), "members": (1, 2, 4, 8, 16, 32, 64),
             "width": (32, 100, 316, 1000, 2000)},
    "medium": {"workers": (1, 100, 10000), "members": (1, 8, 64), "width": (100, 1000, 2000)},
    "small": {"workers": (1, 16), "members": (1, 2), "width": (32, 100)},
}


def _mlp_workload(width: int):
    """MNIST-1D with an MLP 40-w-w-10 (mnist1d_mlp is w = 100)."""
    from jaxasync import models
    from jaxasync.data import load_mnist1d
    from jaxasync.workloads import Target, _classification_workload

    return _classification_workload(f"mnist1d_mlp{width}", load_mnist1d(),
                                    models.MLP((width, width), 10), 10,
                                    Target("test_accuracy", 0.6, "max"),
                                    f"MLP 40-{width}-{width}-10")


def _rss() -> tuple[int, int]:
    """(current, peak) resident bytes of this process."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
                  if ":" in line)
    kb = lambda k: int(fields[k].split()[0]) * 1024  # noqa: E731
    return kb("VmRSS"), kb("VmHWM")


def point(kind: str, value: int) -> dict:
    """One point of the chart, measured in this (fresh) process."""
    from jaxasync.running import run

    m, members, width, arrivals = 16, 1, 100, 1
    if kind == "workers":
        m, arrivals = value, value           # every worker arrives each step: K = M rows
    elif kind == "members":
        members = value
    else:
        width = value
    wl = _mlp_workload(width)
    # more workers than examples (10,000 > 4,000): each example goes to several workers
    labels = np.asarray(wl.data.y_train)
    reps = -(-m // labels.shape[0])
    index, size = partition(np.tile(labels, reps), m, "iid")
    index = index % labels.shape[0]
    ring = 16 if kind != "members" else 8 * m   # members: the default job's ring
    # 3 chunks (the first one warms up) of ~4096 gradients of the 15,210-parameter MLP, or as
    # much work on a larger one
    p = num_params(jax.eval_shape(wl.init, jax.random.PRNGKey(0)))
    grads = max(8, 4096 * 15210 // p)
    steps = max(1, grads // (arrivals * members)) if kind != "members" else 256
    cfg = SimConfig(num_workers=m, arrivals=arrivals, batch_size=32,   # (with replacement)
                    ring_size=ring, steps=3 * steps, eval_every=steps,
                    delay=dl.DelayConfig(kind="event"), eval_train_size=1000)
    sim = Simulator(get_algorithm("asgd"), {}, wl, cfg)
    data = put_data(wl, index, size)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(members))
    hp = {"learning_rate": jnp.full((members,), 0.01, jnp.float32)}
    jax.block_until_ready(jax.jit(lambda x: x + 1)(jnp.zeros(3)))   # the backend, started
    rss0, _ = _rss()
    stamps = []

    result = run(sim, data, keys, hp, progress=lambda *a: stamps.append(time.perf_counter()))
    _, peak = _rss()
    dev = jax.devices()[0].memory_stats() or {}
    # XLA's buffers of the step program: its outputs (the state, updated in place: donated)
    # and its temporaries; what it allocates, without the runtime's and the compiler's memory
    from jaxasync.running import member_layout, programs

    steps_fn = jax.jit(programs(sim, member_layout(sim, members)).steps, donate_argnums=(0,))
    shapes = jax.eval_shape(jax.vmap(sim.init), keys, hp)
    if members == 1:
        shapes = jax.eval_shape(programs(sim, "single").init, keys, hp)
    ma = steps_fn.lower(shapes, data, hp, jnp.int32(steps)).compile().memory_analysis()
    xla = ma.output_size_in_bytes + ma.temp_size_in_bytes if ma is not None else None
    state = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))
    rows = arrivals * members
    return {"kind": kind, "value": value, "params": p, "workers": m, "members": members,
            "ring": ring, "grads_per_s": 2 * steps * rows / (stamps[2] - stamps[0]),
            "compile_s": result.compile_seconds, "layout": result.layout,
            "memory": dev.get("peak_bytes_in_use", peak - rss0),
            "memory_kind": "device peak" if dev else "peak RSS growth", "xla_buffers": xla,
            "state": state, "state_and_rows": state + 2 * rows * p * 4}


def chart(sizes: str, out: Path, json_out: Path | None) -> list[dict]:
    """Every point in its own process; the figure; the figures as JSON."""
    import json

    points = []
    for kind, values in SWEEPS[sizes].items():
        for v in values:
            proc = subprocess.run([sys.executable, __file__, "point", "--kind", kind,
                                   "--value", str(v)], capture_output=True, text=True)
            if proc.returncode != 0 or "POINT" not in proc.stdout:
                print(f"# {kind}={v}: failed: {(proc.stderr or proc.stdout)[-400:]}", flush=True)
                continue
            pt = json.loads(proc.stdout.split("POINT", 1)[1].splitlines()[0])
            points.append(pt)
            print(f"{kind:>8}={v:<6} P={pt['params']:>9} {pt['grads_per_s']:>10.0f} grads/s  "
                  f"memory {pt['memory'] / 2**20:>8.1f} MB ({pt['memory_kind']}; XLA buffers "
                  f"{(pt['xla_buffers'] or 0) / 2**20:.2f} MB, state "
                  f"{pt['state'] / 2**20:.2f} MB, + rows {pt['state_and_rows'] / 2**20:.2f} MB)  "
                  f"compile {pt['compile_s']:.1f} s", flush=True)
            if json_out is not None:   # after every point: an interrupted sweep can be plotted
                json_out.write_text(json.dumps(points, indent=1))
    _plot(points, out)
    return points


def _short(v: float, _pos=None) -> str:
    """A tick label: 3, 20, 1.5k, 10k, 2M."""
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if abs(v) >= size:
            return f"{v / size:g}{unit}"
    return f"{v:g}"


def _log_axes(ax) -> None:
    """Log x and y with plain tick labels: at 10^n over wide ranges, at 1, 2, 3, 5 x 10^n
    over narrow ones (two decades or less)."""
    import math

    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for axis, which in ((ax.xaxis, "x"), (ax.yaxis, "y")):
        getattr(ax, f"set_{which}scale")("log")
        low, high = sorted(getattr(ax, f"get_{which}lim")())
        wide = low > 0 and math.log10(high / low) > 2.2
        axis.set_major_locator(LogLocator(base=10, subs=(1.0,) if wide else (1.0, 2.0, 3.0,
                                                                             5.0)))
        axis.set_major_formatter(FuncFormatter(_short))
        axis.set_minor_formatter(NullFormatter())
    ax.tick_params(labelsize=8)
    ax.grid(True, which="major", alpha=0.3)


def _plot(points: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = (("workers", "workers M (K = M arrivals)", "workers"),
            ("members", "members S (default job)", "members"),
            ("width", "parameters P (MLP 40-w-w-10)", "params"))
    fig, axes = plt.subplots(3, 3, figsize=(10, 8), squeeze=False)
    for j, (kind, label, xkey) in enumerate(cols):
        pts = sorted((p for p in points if p["kind"] == kind), key=lambda p: p[xkey])
        x = [p[xkey] for p in pts]
        measured = ("measured: device peak" if pts and pts[0]["memory_kind"] == "device peak"
                    else "measured: peak RSS growth (the compiler's ~250 MiB included)")
        series = (("grads_per_s", "gradients / s", {}),
                  ("memory", "memory (MiB)", {"xla_buffers": "XLA buffers of the steps",
                                                "state": "state (ring + per-worker + members)",
                                                "state_and_rows": "state + one step's rows"}),
                  ("compile_s", "compile (s)", {}))
        for i, (key, ylabel, extra) in enumerate(series):
            ax = axes[i][j]
            if pts:
                scale = 2.0**-20 if key == "memory" else 1.0
                ax.plot(x, [p[key] * scale for p in pts], "o-",
                        label=measured if key == "memory" else "measured")
                for k, lab in extra.items():
                    if all(p.get(k) is not None for p in pts):
                        ax.plot(x, [p[k] * scale for p in pts],
                                ":" if k == "xla_buffers" else "--", label=lab)
            _log_axes(ax)
            if j == 0:
                ax.set_ylabel(ylabel)
            if i == 2:
                ax.set_xlabel(label)
            if i == 1 and j == 1:
                fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=2,
                           fontsize=8, frameon=False)
    kind = points[0]["memory_kind"] if points else ""
    fig.suptitle(f"jaxasync scaling: ASGD, MNIST-1D MLP, event-driven workers; memory = {kind}; "
                 f"{jax.devices()[0].device_kind}", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=72)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", choices=("workers", "memory", "seeds", "first", "all", "chart",
                                      "point"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", choices=tuple(SWEEPS), default="full", help="chart: the sweeps")
    ap.add_argument("--out", default=str(Path(__file__).parent.parent / "docs" / "scaling.png"))
    ap.add_argument("--json", default=None, help="chart: also the points as JSON")
    ap.add_argument("--points", default=None, help="chart: plot these points (a --json file) "
                    "instead of measuring")
    ap.add_argument("--kind", choices=tuple(SWEEPS["full"]), help=argparse.SUPPRESS)
    ap.add_argument("--value", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.which == "point":
        import json

        print("POINT" + json.dumps(point(args.kind, args.value)), flush=True)
        return
    if args.which == "chart" and args.points:
        import json

        _plot(json.loads(Path(args.points).read_text()), Path(args.out))
        return
    if args.which == "chart":
        chart(args.sizes, Path(args.out), Path(args.json) if args.json else None)
        return
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
