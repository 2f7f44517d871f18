"""Top-k compression speed for SASG's workload: 10 workers x the FC net 784-512-10, density 1%.

Run::

    python benchmarks/topk_bench.py                 # about 1-2 minutes on a 2-core CPU
    python benchmarks/topk_bench.py --all           # also sort / partition baselines (slow)

Prints, side by side in one run, the time per call of the whole per-layer top-k compressor
(10 workers vmapped, every layer of the FC net: 401,408 + 512 + 5,120 + 10 entries) for

* ``lax.top_k``: ``jax.lax.top_k`` per layer + scatter into zeros, the baseline;
* ``exact``: :func:`jaxasync.compress.top_k` ``method="exact"`` (sample-bracket radix select);
* ``approx``: ``method="approx"`` (Deep Gradient Compression's sampled threshold), with its
  recall (fraction of the exact top-k set it keeps) and its kept count over k;

then the same three as one error-feedback step inside a jitted ``lax.scan`` (as the simulator
runs them: buffers reused, the message fused into ``e = v - m``), per step; and the
784x512 layer alone, where ``jax.lax.approx_max_k`` is timed too (and,
with ``--all``, ``jnp.argpartition`` and a full ``jnp.sort``). Each timing is warm-up + N
interleaved repetitions (methods take turns, so background load hits them alike) with
``block_until_ready``; the table shows the median wall time, the minimum, and the median
process CPU time (both cores), and the ratio of median wall times to the baseline.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

C = importlib.import_module("jaxasync.compress")

FC_SHAPES = {
    "dense_0/kernel": (784, 512),
    "dense_0/bias": (512,),
    "dense_1/kernel": (512, 10),
    "dense_1/bias": (10,),
}


def gradient_like(workers: int, seed: int = 0) -> dict[str, jax.Array]:
    """Per-worker FC-net tensors shaped like SASG's error-feedback vectors.

    An MLP gradient on MNIST has exact zeros in the rows of always-black pixels and a
    heavy-tailed rest; v = e + alpha g adds a dense residual. Mimic both: Student-t(3) values,
    20% of the kernel rows zero in the gradient part, plus a small dense Gaussian residual.
    """
    rng = np.random.default_rng(seed)
    tree = {}
    for name, shape in FC_SHAPES.items():
        g = rng.standard_t(3, size=(workers, *shape)).astype(np.float32)
        if name == "dense_0/kernel":
            g[:, rng.random(shape[0]) < 0.2, :] = 0.0
        e = 0.1 * rng.standard_normal((workers, *shape)).astype(np.float32)
        tree[name] = jnp.asarray(0.005 * g + 0.005 * e)
    return tree


def lax_top_k_leaf(x: jax.Array, k: int) -> jax.Array:
    flat = x.reshape(-1)
    _, idx = jax.lax.top_k(jnp.abs(flat), k)
    return jnp.zeros_like(flat).at[idx].set(flat[idx]).reshape(x.shape)


def lax_compressor(density: float):
    def comp(tree, key):
        del key
        out = {n: lax_top_k_leaf(v, C.top_k_count(density, v.size)) for n, v in tree.items()}
        bits = 64.0 * sum(C.top_k_count(density, v.size) for v in tree.values())
        return out, jnp.float32(bits)

    return comp


def time_many(fns: dict, args: tuple, reps: int, warmup: int = 3) -> dict[str, dict[str, float]]:
    for fn in fns.values():
        for _ in range(warmup):
            jax.block_until_ready(fn(*args))
    wall = {n: [] for n in fns}
    cpu = {n: [] for n in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            jax.block_until_ready(fn(*args))
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {n: {"median": 1e3 * float(np.median(wall[n])), "min": 1e3 * float(np.min(wall[n])),
                "cpu": 1e3 * float(np.median(cpu[n]))} for n in fns}


def print_table(title: str, stats: dict, baseline: str, notes: dict[str, str]) -> None:
    print(f"\n{title}")
    print(f"{'method':<24}{'median ms':>11}{'min ms':>9}{'cpu ms':>9}{'vs lax':>9}  notes")
    base = stats[baseline]["median"]
    for name, s in stats.items():
        ratio = base / s["median"]
        print(f"{name:<24}{s['median']:>11.2f}{s['min']:>9.2f}{s['cpu']:>9.2f}"
              f"{ratio:>8.1f}x  {notes.get(name, '')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--density", type=float, default=0.01)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--all", action="store_true", help="also time sort and argpartition")
    args = parser.parse_args()

    workers, h = args.workers, args.density
    tree = gradient_like(workers)
    keys = jax.random.split(jax.random.key(0), workers)
    d_total = sum(math.prod(s) for s in FC_SHAPES.values())
    k_total = sum(C.top_k_count(h, math.prod(s)) for s in FC_SHAPES.values())
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}; load average {os.getloadavg()[0]:.1f}")
    print(f"{workers} workers x FC 784-512-10 ({d_total:,} params), density {h}: "
          f"k = {k_total:,} per worker ({C.top_k_count(h, 784 * 512):,} in the 784x512 layer)")

    # ---------------------------------------------------------------- whole compressor
    fns = {
        "lax.top_k": jax.jit(jax.vmap(lax_compressor(h))),
        "exact (compress.top_k)": jax.jit(jax.vmap(C.top_k(h))),
        "approx (DGC sample)": jax.jit(jax.vmap(C.top_k(h, method="approx"))),
    }
    outs = {n: f(tree, keys) for n, f in fns.items()}
    base_out, exact_out, approx_out = (outs[n][0] for n in fns)
    same = all(bool(jnp.array_equal(base_out[n], exact_out[n])) for n in tree)
    kept_exact = sum(jnp.count_nonzero(exact_out[n].reshape(workers, -1), axis=1) for n in tree)
    kept_approx = sum(jnp.count_nonzero(approx_out[n].reshape(workers, -1), axis=1) for n in tree)
    both = sum(jnp.count_nonzero((exact_out[n] != 0) & (approx_out[n] != 0),
                                 axis=tuple(range(1, exact_out[n].ndim))) for n in tree)
    recall = np.asarray(both / kept_exact)
    ratio = np.asarray(kept_approx / k_total)
    stats = time_many(fns, (tree, keys), args.reps)
    title = f"whole per-layer compressor, all 4 layers, {workers} workers vmapped"
    print_table(title, stats, "lax.top_k", {
        "lax.top_k": "jax.lax.top_k + scatter per layer",
        "exact (compress.top_k)": f"identical to lax.top_k: {same}; kept = k: "
                                  f"{bool(np.all(np.asarray(kept_exact) == k_total))}",
        "approx (DGC sample)": f"recall {recall.mean():.3f} (min {recall.min():.3f}); "
                               f"kept/k {ratio.mean():.3f} ({ratio.min():.2f}-{ratio.max():.2f})",
    })

    # ---------------------------------------------------------------- inside a scan, with EF
    # The simulator runs the compressor inside a jitted lax.scan, where XLA reuses buffers
    # across steps and can fuse the message into the error-feedback arithmetic around it.
    steps = 10

    def ef_scan(comp):
        def run(grads, keys):
            rows = keys.shape[0]
            send = jnp.ones((rows,), bool)

            def body(memory, i):
                g = jax.tree.map(lambda a: a * (1.0 + 0.01 * i), grads)
                _, memory, bits = C.error_feedback(comp, g, memory, jax.vmap(
                    lambda k: jax.random.fold_in(k, i.astype(jnp.int32)))(keys), send)
                return memory, bits
            memory0 = C.init_memory(comp, jax.tree.map(lambda a: a[0], grads), rows)
            return jax.lax.scan(body, memory0, jnp.arange(steps, dtype=jnp.float32))

        return jax.jit(run)

    fns = {
        "lax.top_k": ef_scan(lax_compressor(h)),
        "exact (compress.top_k)": ef_scan(C.top_k(h)),
        "approx (DGC sample)": ef_scan(C.top_k(h, method="approx")),
    }
    stats = time_many(fns, (tree, keys), max(3, args.reps // 4))
    for st in stats.values():
        for key_ in st:
            st[key_] /= steps
    print_table(f"per step of a {steps}-step lax.scan: v = e + g, m = C(v), e = v - m "
                f"({workers} workers)", stats, "lax.top_k", {})

    # ---------------------------------------------------------------- the big layer alone
    big = tree["dense_0/kernel"].reshape(workers, -1)
    k = C.top_k_count(h, big.shape[1])
    fns = {
        "lax.top_k": jax.jit(jax.vmap(lambda v: lax_top_k_leaf(v, k))),
        "exact (top_k_select)": jax.jit(jax.vmap(lambda v: C.top_k_select(v, k))),
        "approx (DGC sample)": jax.jit(jax.vmap(lambda v, key: C.top_k(h, method="approx")(
            {"v": v}, key)[0]["v"])),
        "lax.approx_max_k": jax.jit(jax.vmap(lambda v: (lambda i: jnp.zeros_like(v).at[i].set(
            v[i]))(jax.lax.approx_max_k(jnp.abs(v), k)[1]))),
        "output pass only": jax.jit(jax.vmap(lambda v: jnp.where(jnp.abs(v) > 0.01, v, 0.0))),
    }
    if args.all:
        fns["jnp.argpartition"] = jax.jit(jax.vmap(lambda v: (lambda i: jnp.zeros_like(v).at[
            i].set(v[i]))(jnp.argpartition(-jnp.abs(v), k)[:k])))
        fns["jnp.sort threshold"] = jax.jit(jax.vmap(
            lambda v: jnp.where(jnp.abs(v) >= jnp.sort(jnp.abs(v))[-k], v, 0.0)))
    # One signature for all, so they can take turns in one interleaved loop.
    uniform = {n: (f if "DGC" in n else (lambda v, key, f=f: f(v))) for n, f in fns.items()}
    slow = {n: uniform.pop(n) for n in list(uniform) if n.startswith("jnp.")}
    stats = time_many(uniform, (big, keys), args.reps)
    if slow:   # a full sort is far slower: a few repetitions only
        stats.update(time_many(slow, (big, keys), max(3, args.reps // 5), warmup=1))
    amk = fns["lax.approx_max_k"](big)
    ref = fns["lax.top_k"](big)
    amk_recall = float(jnp.mean(jnp.count_nonzero((amk != 0) & (ref != 0), axis=1) / k))
    print_table(f"784x512 layer alone (k = {k:,}), {workers} workers vmapped", stats, "lax.top_k", {
        "lax.approx_max_k": f"recall {amk_recall:.3f} (on CPU it lowers to the same exact TopK)",
        "output pass only": "one where(|x| > t, x, 0) pass: the floor of any dense output",
    })


if __name__ == "__main__":
    main()
