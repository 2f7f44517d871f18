"""Simulator throughput vs the bare vmapped-gradient limit, side by side in one run.

    python benchmarks/throughput.py                       # MNIST FC 784-512-10, M = 16, B = 32
    python benchmarks/throughput.py --workload mnist1d_mlp --workers 64

Measures worker-gradients per second of

* the simulator running ASGD with K = 1 and K = M arrivals per server step (each arrival's
  stale parameters gathered from the ring buffer, event-driven exponential workers), and
* the limit: a bare jitted ``lax.scan`` of ``vmap(grad)`` of the same model and batch size at M
  distinct parameter sets, with minibatches gathered from the same training array,

and prints their ratio. Target (issue 2): ratio >= 0.7 for K = M on the MNIST FC model. The
simulator is timed twice: a ``lax.scan`` of its step, and the runner's own program
(:meth:`jaxasync.sim.Simulator.steps`, a loop over a traced step count, what
:func:`jaxasync.running.run` compiles once for every chunk length).
Each timing is the median of ``--repeats`` calls of an already-compiled chunk of ``--steps``
server steps; the variants are interleaved so machine noise hits them alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from jaxasync import delays as dl
from jaxasync.algorithms import get_algorithm
from jaxasync.data import partition
from jaxasync.sim import SimConfig, Simulator, put_data
from jaxasync.workloads import get_workload


def simulator_chunk(workload, data, m: int, k: int, batch: int, steps: int, ring: int,
                    runner: bool = False):
    """A timed call of ``steps`` server steps: a ``lax.scan`` of ``sim.step``, or (``runner``)
    the runner's program, :meth:`jaxasync.sim.Simulator.steps` with a traced step count."""
    cfg = SimConfig(num_workers=m, arrivals=k, batch_size=batch, ring_size=ring, steps=steps,
                    eval_every=steps, delay=dl.DelayConfig(kind="event"))
    sim = Simulator(get_algorithm("asgd"), {}, workload, cfg)
    hp = {"learning_rate": jnp.float32(0.01)}
    state = jax.jit(sim.init)(jax.random.PRNGKey(0), hp)
    count = jnp.int32(steps)

    def steps_fn(s, dd):
        if runner:
            return sim.steps(s, dd, hp, count)
        return jax.lax.scan(lambda c, _: (sim.step(c, dd, hp), None), s, None, length=steps)[0]

    # steps only (no evaluation), donating the state as the real run does
    run = jax.jit(steps_fn, donate_argnums=(0,))
    state = run(state, data)
    jax.block_until_ready(state)
    holder = {"s": state}

    def call():
        holder["s"] = run(holder["s"], data)
        jax.block_until_ready(holder["s"])

    return call, steps * k


def bare_chunk(workload, data, m: int, batch: int, steps: int):
    keys = jax.random.split(jax.random.PRNGKey(1), m)
    params_m = jax.vmap(workload.init)(keys)
    grad = jax.vmap(jax.grad(workload.loss))
    n = data.x_train.shape[0]

    def run(key, params, x_train, y_train):
        # parameters and data are arguments, not compile-time constants, as in the simulator
        def body(carry, k):
            acc, = carry
            idx = jax.random.randint(k, (m, batch), 0, n)
            g = grad(params, x_train[idx], y_train[idx])
            # consume every gradient so nothing is dead-code eliminated
            return (acc + sum(jnp.sum(x) for x in jax.tree.leaves(g)),), None

        return jax.lax.scan(body, (jnp.float32(0),), jax.random.split(key, steps))[0]

    run = jax.jit(run)
    args = (params_m, data.x_train, data.y_train)
    jax.block_until_ready(run(jax.random.PRNGKey(0), *args))

    def call():
        jax.block_until_ready(run(jax.random.PRNGKey(2), *args))

    return call, steps * m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="mnist_subset_fc")
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=50, help="server steps per timed call (K = M)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()

    wl = get_workload(args.workload)
    m = args.workers
    index, size = partition(wl.data.y_train, m, "iid")
    data = put_data(wl, index, size)
    ring = 8 * m
    variants = {
        "bare vmap(grad) limit": bare_chunk(wl, data, m, args.batch, args.steps),
        f"simulator ASGD K=M={m}": simulator_chunk(wl, data, m, m, args.batch, args.steps, ring),
        "simulator ASGD K=1": simulator_chunk(wl, data, m, 1, args.batch, args.steps * m, ring),
        # the runner's program (a traced step count: one program for every chunk length)
        f"runner ASGD K=M={m}": simulator_chunk(wl, data, m, m, args.batch, args.steps, ring,
                                                runner=True),
        "runner ASGD K=1": simulator_chunk(wl, data, m, 1, args.batch, args.steps * m, ring,
                                           runner=True),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, (call, _) in variants.items():
            t = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t)
    print(f"# {args.workload}: M={m}, batch {args.batch}, ring D={ring}, device {jax.devices()[0]}, "
          f"median of {args.repeats}")
    limit = None
    rows = {}
    print(f"{'variant':<28} {'grads/s':>12} {'ratio to limit':>15}")
    for name, (_, grads) in variants.items():
        rate = grads / statistics.median(times[name])
        limit = limit or rate
        rows[name] = {"grads_per_s": rate, "ratio": rate / limit}
        print(f"{name:<28} {rate:>12.0f} {rate / limit:>15.2f}")
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump({"workload": args.workload, "workers": m, "batch": args.batch,
                       "device": jax.devices()[0].device_kind, "variants": rows}, f, indent=1)


if __name__ == "__main__":
    main()
