"""SASG iterations per second on the MNIST FC protocol, with the time split; and the SASG table.

    python benchmarks/sasg_bench.py                          # speed, about 3 min on 2 CPU cores
    python benchmarks/sasg_bench.py --methods exact,lax      # choose the top-k variants
    python benchmarks/sasg_bench.py --table runs/<date>/<time>   # experiment=sasg_mnist_fc sweep

**Speed.** One simulated SASG run (M = 10 workers, batch 10, FC 784-512-10 = 407,050
parameters, D = 10, per-layer top-k at h = 0.01, one seed) through the real simulator step
(:class:`jaxasync.sim.Simulator`: per worker the gradient at x_k and the skip test's
distance to its gradient at the last-upload iterate on the same minibatch, top-k with error
feedback, the server sum, the ring of versions), measured after a
warm-up of 100 iterations (so workers skip as they do in a run). For each top-k variant
(``exact``: :func:`jaxasync.compress.top_k`'s fast exact selection; ``lax``: ``jax.lax.top_k``,
what a straightforward port uses; ``approx``: DGC's sampled threshold) it prints iterations
per second and the split of one iteration into

* gradients: the gradient work alone, a jitted scan of the same shapes: 10 minibatch
  gradients at x_k and the skip test's distances to the gradients at the workers' last-upload
  iterates (:func:`jaxasync.workloads.gradient_pair`: for this MLP the first-layer part of the
  distance comes from two 10 x 10 Gram matrices, so the second gradient is never formed);
* top-k: the 10 per-worker per-layer selections alone, on error-corrected steps
  ``alpha g + e`` taken from the warmed-up run (the distribution matters: ties and clusters);
* the rest: iteration minus the two (skip test, error feedback, stored messages, server sum,
  simulator bookkeeping).

The issue's target, >= 100 it/s, comes with the machine's calibration: "the gradients alone
take about 5 ms per iteration here" (a plain port: two formed gradients per worker). This
machine's speed drifts by +-25% within minutes, so the benchmark also times that plain
gradient work side by side and prints the target as a ratio that the drift cancels out of: a
SASG iteration <= 2x the plain gradient work (``TARGET_RATIO``).

With ``--formed`` (default), SASG is also timed with the skip test's distance computed from
two formed gradients (the generic path, what any model without a fast form runs), for the
ratio. With ``--dense-memory`` (default), SASG and Sparse are also timed with the error feedback
kept as a dense memory and dense stored messages (their top-k wrapped in a plain function, which
is not a :class:`jaxasync.compress.MaskCompressor`), against the default layout, the vector
each worker last compressed and its selection. Next to it, the protocol's other algorithms in
the same harness (``--family``): SGD (the gradients at x_k and the server sum), LASG (SGD +
the skip test: a second gradient per worker at its last-upload iterate, the norm of the
difference, stored dense messages), Sparse (SGD + top-k with error feedback) -- what each
ingredient of SASG costs.

Every timing is the median of ``--repeats`` calls of an already-compiled scan of ``--steps``
iterations; variants are interleaved so that load from other processes hits them alike, and
the load average is printed next to the figures (this machine is shared: expect +-30%).

**Table.** Reads the ``run.json`` files of an ``experiment=sasg_mnist_fc`` sweep (one per
algorithm) and prints, per algorithm over the seeds: rounds (uploads) and uplink bits to the
first evaluation at or above ``--target``, final test accuracy, fraction of skipped uploads
and total uplink bits, next to the paper's MNIST row (Deng et al., arXiv 2112.04088, from
the authors' run logs: github.com/xiaogdeng/SASG, log_seed/).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxasync as ja
from jaxasync import delays as dl
from jaxasync import lazy, lazy_algorithms, report
from jaxasync.data import partition
from jaxasync.sim import SimConfig, Simulator, put_data
from jaxasync.workloads import get_workload, gradient_pair

M, BATCH, HISTORY, DENSITY, ALPHA = 10, 10, 10, 0.01, 0.005

#: SASG's MNIST row (the authors' run logs, github.com/xiaogdeng/SASG, log_seed/; full
#: MNIST, target 98%)
PAPER = {
    "sgd_sum": {"label": "SGD", "rounds": 61000, "final": 98.19, "skipped": None},
    "sparse": {"label": "Sparse", "rounds": 62200, "final": 98.17, "skipped": None},
    "lasg": {"label": "LASG", "rounds": 34269, "final": 98.12, "skipped": 48.4},
    "sasg": {"label": "SASG", "rounds": 23775, "final": 98.18, "skipped": 65.1},
}
D_PARAMS, K_SASG = 407050, 4071
#: the issue's speed target, 100 it/s "where the gradients alone take about 5 ms per
#: iteration", as a ratio: a SASG iteration <= 2x the plain gradient work, timed side by side
TARGET_RATIO = 10.0 / 5.0


# ----------------------------------------------------------------------------- speed


def _setup(workload_name: str):
    wl = get_workload(workload_name)
    index, size = partition(np.asarray(wl.data.y_train), M, "iid")
    return wl, put_data(wl, index, size)


#: the protocol's algorithms and their static settings (``{method}``: the top-k variant)
FAMILY = {
    "sasg": {"topk_method": "{method}", "history": HISTORY, "density": DENSITY},
    "sparse": {"topk_method": "{method}", "density": DENSITY},
    "lasg": {"history": HISTORY},
    "sgd_sum": {},
}


@contextlib.contextmanager
def _plain_top_k():
    """While building: SASG's and Sparse's top-k as a plain function, so that their error
    feedback keeps a dense memory (and SASG dense stored messages) instead of the vector last
    compressed and its selection; the same selection, bitwise the same run."""
    made = lazy_algorithms.top_k_compressor

    def plain(*args, **kwargs):
        comp = made(*args, **kwargs)
        return lambda tree, key: comp(tree, key)

    lazy_algorithms.top_k_compressor = plain
    try:
        yield
    finally:
        lazy_algorithms.top_k_compressor = made


def sasg_run(wl, data, method: str, steps: int, warmup: int, algorithm: str = "sasg"):
    """A compiled scan of ``steps`` iterations of ``algorithm`` (SASG by default) and the
    warmed-up state."""
    cfg = SimConfig(num_workers=M, batch_size=BATCH, ring_size=HISTORY + 1, steps=steps,
                    eval_every=steps, delay=dl.DelayConfig(kind="none"))
    static = {k: (method if v == "{method}" else v) for k, v in FAMILY[algorithm].items()}
    sim = Simulator(ja.get_algorithm(algorithm), static, wl, cfg)
    hp = {"learning_rate": jnp.float32(ALPHA)}

    def body(s, _):
        return sim.step(s, data, hp), None

    run = jax.jit(lambda s, n: jax.lax.scan(body, s, None, length=n)[0], static_argnums=1,
                  donate_argnums=0)
    state = jax.jit(sim.init)(jax.random.PRNGKey(1), hp)
    state = run(state, warmup)
    jax.block_until_ready(state)
    holder = {"s": state}

    def call():
        holder["s"] = run(holder["s"], steps)
        jax.block_until_ready(holder["s"])

    call()  # compile the timed length
    return call, holder


def gradients_run(wl, data, steps: int):
    """The gradient work of an iteration alone, as the simulator does it: per worker the
    gradient at x_k and its distance to the gradient at its last-upload iterate on the same
    minibatch (:func:`jaxasync.workloads.gradient_pair`; for this MLP the second gradient is
    never formed, only its first-layer backprop signal)."""
    params = wl.init(jax.random.PRNGKey(0))
    params_m = jax.tree.map(lambda p: jnp.broadcast_to(p, (M,) + p.shape) * 1.01, params)
    reference, pair = gradient_pair(wl)
    shard = data.shard_index

    def body(acc, key):
        pos = jax.random.randint(key, (M, BATCH), 0, data.shard_size[:, None])
        idx = jnp.take_along_axis(shard, pos, axis=1)
        x, y = data.x_train[idx], data.y_train[idx]
        _, g, dist = jax.vmap(pair, (None, 0, 0, 0))(params, jax.vmap(reference)(params_m, x, y),
                                                      x, y)
        return acc + jnp.sum(dist) + sum(jnp.sum(a[:, :1]) for a in jax.tree.leaves(g)), None

    run = jax.jit(lambda key: jax.lax.scan(body, jnp.float32(0), jax.random.split(key, steps))[0])
    jax.block_until_ready(run(jax.random.PRNGKey(0)))
    return lambda: jax.block_until_ready(run(jax.random.PRNGKey(3)))


def topk_run(v_w, method: str, steps: int):
    """The 10 per-layer selections of an iteration alone, on realistic inputs ``v_w``."""
    comp = lazy_algorithms.top_k_compressor(DENSITY, method=method)
    keys = jax.random.split(jax.random.PRNGKey(0), M)

    def body(acc, t):
        # a step-dependent positive scale keeps the ranking (and the ties) and defeats hoisting
        # (it costs a pass over the vectors, which this component's time includes)
        v = jax.tree.map(lambda x: x * (1.0 + 1e-6 * t), v_w)
        msg, bits = jax.vmap(comp)(v, keys)
        return acc + bits[0] + sum(jnp.sum(m[:, :1]) for m in jax.tree.leaves(msg)), None

    ts = jnp.arange(steps, dtype=jnp.float32)
    run = jax.jit(lambda: jax.lax.scan(body, jnp.float32(0), ts)[0])
    jax.block_until_ready(run())
    return lambda: jax.block_until_ready(run())


def speed(args) -> None:
    wl, data = _setup(args.workload)
    methods = args.methods.split(",")
    runs = {}
    for method in methods:
        runs[method] = sasg_run(wl, data, method, args.steps, args.warmup)
    # realistic top-k inputs: each worker's last v = alpha g + e (= its message + its new
    # memory) in the warmed-up run: error feedback piles up entries just below the cut
    state = next(iter(runs.values()))[1]["s"]
    ls = lazy.lazy_state(state.opt_state)
    v_w = jax.tree.map(jnp.add, *ls.stored())
    calls = {f"sasg[{m}]": runs[m][0] for m in methods}
    family = [a for a in args.family.split(",") if a]
    for alg in family:
        calls[f"{alg}[exact]" if alg == "sparse" else alg] = sasg_run(
            wl, data, "exact", args.steps, args.warmup, alg)[0]
    if args.dense_memory:
        # the same algorithms with a dense error memory and dense stored messages
        with _plain_top_k():
            calls["sasg[exact] dense memory"] = sasg_run(wl, data, "exact", args.steps,
                                                        args.warmup)[0]
            if "sparse" in family:
                calls["topk_ef[exact] dense memory"] = sasg_run(
                    wl, data, "exact", args.steps, args.warmup, "sparse")[0]
    if args.formed:
        # the skip test's distance from two formed gradients (any model's generic path)
        calls["sasg[exact] formed"] = sasg_run(
            dataclasses.replace(wl, grad_pair=None), data, "exact", args.steps, args.warmup)[0]
    calls["gradients"] = gradients_run(wl, data, args.steps)
    # the plain port's gradient work (two formed gradients per worker): the issue's
    # calibration of the machine, "the gradients alone take about 5 ms per iteration"
    calls["gradients formed"] = gradients_run(dataclasses.replace(wl, grad_pair=None), data,
                                              args.steps)
    for m in methods:
        calls[f"top-k[{m}]"] = topk_run(v_w, m, args.steps)
    times: dict[str, list[float]] = {k: [] for k in calls}
    cpu: dict[str, list[float]] = {k: [] for k in calls}
    load0 = os.getloadavg()
    for _ in range(args.repeats):
        for name, call in calls.items():
            t, c = time.perf_counter(), time.process_time()
            call()
            times[name].append((time.perf_counter() - t) / args.steps)
            cpu[name].append((time.process_time() - c) / args.steps)
    load1 = os.getloadavg()
    state = next(iter(runs.values()))[1]["s"]      # the latest (earlier ones were donated)
    comm = ja.communication(state.opt_state)
    it = int(state.counts.iterations)
    print(f"# SASG on {args.workload}: M={M}, batch {BATCH}, D={HISTORY}, h={DENSITY}, "
          f"{D_PARAMS:,} params; {jax.devices()[0].platform} x {os.cpu_count()} cores; "
          f"median of {args.repeats} x {args.steps} iterations after {args.warmup}")
    print(f"# load average before/after: {load0[0]:.1f} / {load1[0]:.1f}; skipped uploads in the "
          f"warmed-up run: {int(comm['skips'])}/{M * it}")
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    cpu_med = {k: statistics.median(v) * 1e3 for k, v in cpu.items()}
    spread = {k: (min(v) * 1e3, max(v) * 1e3) for k, v in times.items()}
    if args.json:
        import json

        Path(args.json).write_text(json.dumps({
            "workload": args.workload, "device": jax.devices()[0].device_kind,
            "ms_per_iteration": med, "cpu_ms_per_iteration": cpu_med,
            "it_per_s": {k: 1e3 / v for k, v in med.items()}}, indent=1))
    print("# wall: elapsed ms per iteration (what a run takes now); cpu: this process's CPU ms")
    print("# per iteration, all threads (less sensitive to other processes; on an idle machine")
    print("# wall <= cpu, so 1000/cpu is a lower bound of the idle it/s)")
    print(f"{'variant':<14} {'it/s':>6} {'wall ms':>8} {'(min-max)':>13} {'grads':>6} "
          f"{'top-k':>6} {'rest':>6} | {'cpu ms':>7} {'grads':>6} {'top-k':>6} {'rest':>6} "
          f"{'1000/cpu':>8}")
    for m in methods:
        name = f"sasg[{m}]"
        total, g, k = med[name], med["gradients"], med[f"top-k[{m}]"]
        c_total, c_g, c_k = cpu_med[name], cpu_med["gradients"], cpu_med[f"top-k[{m}]"]
        lo, hi = spread[name]
        print(f"{name:<14} {1e3 / total:>6.1f} {total:>8.2f} {lo:>6.1f}-{hi:<6.1f} {g:>6.2f} "
              f"{k:>6.2f} {total - g - k:>6.2f} | {c_total:>7.2f} {c_g:>6.2f} {c_k:>6.2f} "
              f"{c_total - c_g - c_k:>6.2f} {1e3 / c_total:>8.1f}")
    if family:
        # The ingredients, side by side in the same run: SGD = the gradients at x_k and the
        # server sum; LASG adds the skip test (a second gradient per worker at its
        # last-upload iterate, the stored dense messages); Sparse (top-k EF) adds top-k and
        # the error memories to SGD; SASG has both.
        print("# the protocol's algorithms, same harness (top-k: exact)")
        print(f"{'algorithm':<14} {'it/s':>6} {'wall ms':>8} {'cpu ms':>7}")
        for name in [f"sasg[{m}]" for m in methods if m == "exact"] + [
                f"{a}[exact]" if a == "sparse" else a for a in family]:
            print(f"{name:<14} {1e3 / med[name]:>6.1f} {med[name]:>8.2f} {cpu_med[name]:>7.2f}")
    if args.dense_memory and "exact" in methods:
        for name in ("sasg[exact]", "topk_ef[exact]"):
            if f"{name} dense memory" in med:
                d, e = med[f"{name} dense memory"], med[name]
                stored = " and dense stored messages" if name.startswith("sasg") else ""
                print(f"# {name} with a dense error memory{stored} (--dense-memory): "
                      f"{1e3 / d:.1f} it/s, {d:.2f} ms, {d / e:.2f}x the sent-vector + "
                      f"selection layout")
    if "exact" in methods:
        # The target in a form that the machine's drift cancels out of: 100 it/s where the
        # gradients alone take about 5 ms is an iteration <= 2x that gradient work. Both are
        # timed interleaved; the ratio is the median of the per-repeat ratios.
        plain = med["gradients formed"]
        ratio = statistics.median(a / b for a, b in zip(times["sasg[exact]"],
                                                         times["gradients formed"], strict=True))
        verdict = "meets" if ratio <= TARGET_RATIO else "misses"
        print(f"# target, machine-independent form: the issue asks for >= 100 it/s where the "
              f"gradients alone take ~5 ms per iteration (an iteration <= {TARGET_RATIO:.1f}x "
              f"that work); here the plain port's gradients (two formed gradients per worker) "
              f"take {plain:.2f} ms and a SASG[exact] iteration {ratio:.2f}x that: {verdict} it "
              f"(absolute: {1e3 / med['sasg[exact]']:.1f} it/s "
              f"{'>=' if med['sasg[exact]'] <= 10.0 else '<'} 100)")
    if args.formed and "exact" in methods:
        f, e = med["sasg[exact] formed"], med["sasg[exact]"]
        print(f"# the skip test's distance from two formed gradients (--formed; the generic path "
              f"of models without a fast form): {1e3 / f:.1f} it/s, {f:.2f} ms, "
              f"{f / e:.2f}x the MLP's Gram form")


# ----------------------------------------------------------------------------- table


def _records(root: Path) -> dict[str, dict]:
    out = {}
    for rec in report.load_records(root):
        out[rec["algorithm"] + ("[" + rec["config"]["algorithm"]["params"].get("topk_method", "")
                                + "]" if rec["algorithm"] in ("sasg", "sparse") else "")] = rec
    return out


def _stats(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.4g}"
    return f"{np.mean(vals):.4g} ± {np.std(vals, ddof=1):.2g}"


def table(args) -> None:
    recs = _records(Path(args.table))
    if not recs:
        raise SystemExit(f"no run.json under {args.table}")
    print(f"# target: test accuracy >= {args.target}; 'rounds' = uploads until the first "
          f"evaluation at or above it (mean ± sd over seeds; n = seeds reaching it)")
    cols = ("algorithm", "seeds", "reached", "rounds to target", "uplink bits to target",
            "final acc %", "skipped %", "uplink bits total", "paper rounds (98%)", "paper final",
            "paper skipped %")
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    order = ("sgd_sum", "sparse", "lasg", "sasg")
    for name in sorted(recs, key=lambda n: (order.index(n.split("[")[0]) if n.split("[")[0]
                                            in order else 9, n)):
        rec = recs[name]
        ms = rec["members"]
        m = rec["resolved"]["num_workers"]
        hits = [report.reached(x["history"], "test_accuracy", args.target, "max") for x in ms]
        ok = [h for h in hits if h is not None]
        finals = [x["final"] for x in ms]
        skipped = [100 * f["skips"] / (m * f["step"]) for f in finals]
        paper = PAPER.get(name.split("[")[0], {})
        row = (name, str(len(ms)), f"{len(ok)}/{len(ms)}",
               _stats([h["uploads"] for h in ok]), _stats([h["bits_up"] for h in ok]),
               _stats([100 * f["test_accuracy"] for f in finals]), _stats(skipped),
               _stats([f["bits_up"] for f in finals]),
               str(paper.get("rounds", "-")), str(paper.get("final", "-")),
               str(paper.get("skipped") or "-"))
        print("| " + " | ".join(row) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="mnist_subset_fc")
    ap.add_argument("--methods", default="exact,lax,approx", help="top-k variants, comma-separated")
    ap.add_argument("--family", default="sgd_sum,lasg,topk_ef",
                    help="other algorithms of the protocol to time side by side ('' for none)")
    ap.add_argument("--dense-memory", action=argparse.BooleanOptionalAction, default=True,
                    help="also time SASG and Sparse with a dense error memory (the old layout)")
    ap.add_argument("--formed", action=argparse.BooleanOptionalAction, default=True,
                    help="also time SASG with the distance from two formed gradients")
    ap.add_argument("--steps", type=int, default=50, help="iterations per timed call")
    ap.add_argument("--warmup", type=int, default=100, help="iterations before timing")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--table", default=None,
                    help="a sasg_mnist_fc sweep directory: print the table")
    ap.add_argument("--target", type=float, default=0.92, help="test accuracy target of the table")
    ap.add_argument("--json", default=None, help="speed: also write the timings to this file")
    args = ap.parse_args()
    if args.table:
        table(args)
    else:
        speed(args)


if __name__ == "__main__":
    main()
