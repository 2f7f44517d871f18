"""Every registered compressor's speed on SASG's shape, against exact top-k and a gradient.

Run::

    python benchmarks/compress_bench.py            # about 5-10 minutes on a 2-core CPU
    python benchmarks/compress_bench.py --reps 5 --only top_k,powersgd   # a quick look

For each compressor of :data:`jaxasync.compress.COMPRESSORS` (its build arguments from the
table below: SASG's density 1% for the sparsifiers), one call on the SASG shape: 10 workers x
the FC net 784-512-10 (401,408 + 512 + 5,120 + 10 = 407,050 entries per worker, per layer),
vmapped over the workers and jitted, as :func:`jaxasync.transforms.compress_rows` runs it (a
stateful compressor with its states: ``prepare`` and ``step``, from the states one call left:
a steady call; the threshold compressor re-estimates its threshold on its first call and then
once every ``period`` = 100 calls, an exact top-k that costs what ``top_k`` does, so its first
call is not what it costs per call). Timed side by side in one run,
interleaved (each round times every function once, so background load hits them alike):

* exact top-k at density 1% (``top_k``), the target's exception;
* one gradient of the same model per worker: ``vmap(value_and_grad(loss))`` over the 10
  workers, each at its own parameters with a batch of 10 MNIST images (the simulator's
  gradient phase of one SASG round);

and prints each compressor's median time and its ratios to both. Target: every compressor
except exact top-k under 1x one gradient's time.

Then the fast Walsh-Hadamard transform (FO-SGD's) at d = 2^20 against a dense matmul of the
same size, two 1024 x 1024 matrices (2^20 entries each: the cost of one dense layer's
gradient for a batch of 1024), and the butterfly form of the transform for reference.

All figures are wall-clock medians; on a shared machine they move with the load, the ratios
much less (measured side by side).
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topk_bench import FC_SHAPES, gradient_like, time_many  # noqa: E402

C = importlib.import_module("jaxasync.compress")
H = importlib.import_module("jaxasync.compress.hadamard")

#: build arguments per registered compressor (the SASG protocol's settings where it has them)
BUILD = {
    "identity": {}, "top_k": {"density": 0.01}, "random_k": {"density": 0.01},
    "rand_k_unbiased": {"density": 0.01}, "perm_k": {"num_workers": 10},
    "threshold": {"density": 0.01, "period": 100}, "dgc": {"density": 0.01},
    "qsgd": {"levels": 16}, "sign": {}, "signum": {"momentum": 0.9}, "onebit": {},
    "terngrad": {}, "natural": {}, "fp16": {}, "powersgd": {"rank": 2}, "fo_sgd": {},
}


def _as_fc_tree(tree: dict) -> dict:
    return {name: tree[name] for name in FC_SHAPES}


def compressor_call(name: str, workers: int, tree_w=None, keys=None):
    """A jitted ``(tree_w, keys) -> messages, bits`` of the compressor over ``workers`` rows
    (a stateful one, prepare included, from the states its call on ``tree_w`` left, or from
    its initial states where no tree is given)."""
    comp = C.make_compressor(name, **BUILD[name])
    if not C.is_stateful(comp):
        return jax.jit(jax.vmap(comp))
    params = {n: jnp.zeros(s, jnp.float32) for n, s in FC_SHAPES.items()}

    def call(tree_w, keys, states, keep_states=False):
        v, st = comp.prepare_rows(tree_w, states)
        msg, st, bits = comp.step_rows(v, st, keys)
        # the new states are returned to advance them, not in the call timed: as before,
        # the time is the message's (a state written back is the simulator's bookkeeping)
        return (msg, bits, st) if keep_states else (msg, bits)

    states = comp.init_rows(params, workers)
    if tree_w is not None:
        states = jax.jit(call, static_argnums=3)(tree_w, keys, states, True)[2]
    step = jax.jit(call)
    return lambda tree_w, keys: step(tree_w, keys, states)


def gradient_call(workers: int, batch: int):
    """jit(vmap(value_and_grad(loss))) of the FC net over ``workers`` rows of MNIST-shaped
    images, each row at its own parameters (as asynchronous rows at stale versions)."""
    from jaxasync import models
    from jaxasync.workloads import _mean_cross_entropy

    module = models.MLP((512,), 10)
    params = module.init(jax.random.key(0), jnp.zeros((1, 784)))
    params_w = jax.tree.map(lambda p: jnp.broadcast_to(p, (workers, *p.shape)).copy(), params)
    x = jax.random.uniform(jax.random.key(1), (workers, batch, 784))
    y = jax.random.randint(jax.random.key(2), (workers, batch), 0, 10)

    def loss(p, xb, yb):
        return _mean_cross_entropy(module.apply(p, xb), yb)

    fn = jax.jit(jax.vmap(jax.value_and_grad(loss)))
    return fn, (params_w, x, y)


def butterfly(x: jax.Array) -> jax.Array:
    """The Walsh-Hadamard transform as log2(n) butterfly passes (reference form)."""
    n, h, y = x.shape[-1], 1, x
    while h < n:
        y = y.reshape(-1, 2, h)
        y = jnp.stack([y[:, 0] + y[:, 1], y[:, 0] - y[:, 1]], axis=1).reshape(n)
        h *= 2
    return y


def bench_compressors(names: list[str], workers: int, reps: int) -> list[tuple]:
    tree = _as_fc_tree(gradient_like(workers))
    keys = jax.random.split(jax.random.key(0), workers)
    grad_fn, grad_args = gradient_call(workers, 10)
    top_k = compressor_call("top_k", workers)
    rows = []
    for name in names:
        fn = compressor_call(name, workers, tree, keys)
        fns = {"comp": lambda f=fn: f(tree, keys), "top_k": lambda: top_k(tree, keys),
               "grad": lambda: grad_fn(*grad_args)}
        stats = time_many(fns, (), reps)
        bits = float(np.mean(np.asarray(fn(tree, keys)[1])))
        t, tk, tg = (stats[k]["median"] for k in ("comp", "top_k", "grad"))
        rows.append((name, t, t / tk, t / tg, bits, tk, tg))
        print(f"  {name:<16} {t:8.2f} ms  {t / tk:6.2f}x top-k  {t / tg:6.2f}x gradient  "
              f"{bits:12.4g} bits/worker", flush=True)
    return rows


def bench_fwht(reps: int) -> dict:
    n = 1 << 20
    x = jax.random.normal(jax.random.key(0), (n,))
    a = jax.random.normal(jax.random.key(1), (1024, 1024))
    b = jax.random.normal(jax.random.key(2), (1024, 1024))
    fns = {"fwht (kronecker)": jax.jit(H.fwht), "fwht (butterfly)": jax.jit(butterfly),
           "matmul 1024^3": jax.jit(lambda a, b: a @ b)}
    calls = {"fwht (kronecker)": lambda: fns["fwht (kronecker)"](x),
             "fwht (butterfly)": lambda: fns["fwht (butterfly)"](x),
             "matmul 1024^3": lambda: fns["matmul 1024^3"](a, b)}
    err = float(jnp.max(jnp.abs(calls["fwht (kronecker)"]() - calls["fwht (butterfly)"]())))
    stats = time_many(calls, (), reps)
    base = stats["matmul 1024^3"]["median"]
    blocks = -(-20 // H._BLOCK_BITS)
    print(f"\nWalsh-Hadamard at d = 2^20 ({H.fwht_flops(n):.3g} multiply-adds as {blocks} "
          f"blocks of up to 2^{H._BLOCK_BITS}; max |kronecker - butterfly| = {err:.2g}) vs a "
          f"dense matmul of two "
          f"1024 x 1024 matrices ({1024 ** 3:.3g} multiply-adds)")
    for name, s in stats.items():
        print(f"  {name:<18} {s['median']:8.2f} ms  {s['median'] / base:6.2f}x the matmul")
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--only", default="", help="comma-separated compressor names")
    args = parser.parse_args()
    names = [n for n in (args.only.split(",") if args.only else sorted(C.COMPRESSORS))
             if n != "top_k"] + ["top_k"]
    unknown = sorted(set(names) - set(BUILD))
    if unknown:
        raise SystemExit(f"--only: unknown or unbenchmarked compressors {unknown}")
    d = sum(math.prod(s) for s in FC_SHAPES.values())
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, jax "
          f"{jax.__version__}, {jax.default_backend()}; {args.workers} workers x {d:,} params, "
          f"{args.reps} interleaved rounds (medians)")
    rows = bench_compressors(names, args.workers, args.reps)
    print(f"\n{'compressor':<16}{'ms':>9}{'vs top-k':>10}{'vs grad':>9}{'bits/worker':>14}")
    for name, t, rk, rg, bits, _, _ in rows:
        flag = "" if rg < 1.0 or name == "top_k" else "   <- above 1x one gradient"
        print(f"{name:<16}{t:9.2f}{rk:9.2f}x{rg:8.2f}x{bits:14.4g}{flag}")
    tk = np.median([r[5] for r in rows])
    tg = np.median([r[6] for r in rows])
    print(f"(exact top-k {tk:.2f} ms, 10 gradients {tg:.2f} ms: medians over the rounds)")
    bench_fwht(args.reps)


if __name__ == "__main__":
    main()
