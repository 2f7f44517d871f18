"""Members (seeds) vmapped or run one after another: time per member-step, side by side.

    python benchmarks/member_map.py                       # SGD and SASG, 5 members, ~2 min
    python benchmarks/member_map.py --algorithms sgd_sum --members 3

The runner (:func:`jaxasync.sim.run`) runs the members of a sweep as one ``jax.vmap``-ed
program. On SASG's MNIST protocol (M = 10, batch 10, FC 784-512-10) this script times the
same simulator step for ``--members`` members, (a) vmapped over the members, as the runner
does, and (b) with ``jax.lax.map``, one member after another in the same program, and prints
milliseconds per member-step and the ratio. Each timing is the median of ``--repeats``
interleaved calls of an already-compiled scan of ``--steps`` steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxasync as ja
from jaxasync import delays as dl
from jaxasync.data import partition
from jaxasync.sim import SimConfig, Simulator, put_data
from jaxasync.workloads import get_workload

STATIC = {"sasg": {"topk_method": "exact", "history": 10, "density": 0.01},
          "topk_ef": {"topk_method": "exact", "density": 0.01}, "lasg": {"history": 10},
          "sgd_sum": {}}


def timings(algorithm: str, members: int, steps: int, repeats: int) -> dict[str, float]:
    wl = get_workload("mnist_subset_fc")
    index, size = partition(np.asarray(wl.data.y_train), 10, "iid")
    data = put_data(wl, index, size)
    cfg = SimConfig(num_workers=10, batch_size=10, ring_size=11, steps=steps, eval_every=steps,
                    delay=dl.DelayConfig(kind="none"))
    sim = Simulator(ja.get_algorithm(algorithm), STATIC[algorithm], wl, cfg)
    hp = {"learning_rate": jnp.full((members,), 0.005, jnp.float32)}
    keys = jax.random.split(jax.random.PRNGKey(1), members)

    def body(state, h):
        return jax.lax.scan(lambda s, _: (sim.step(s, data, h), None), state, None,
                            length=steps)[0]

    runs = {"vmap": jax.jit(jax.vmap(body), donate_argnums=0),
            "lax.map": jax.jit(lambda s, h: jax.lax.map(lambda a: body(*a), (s, h)),
                               donate_argnums=0)}
    init = jax.jit(jax.vmap(sim.init))
    states = {k: jax.block_until_ready(f(init(keys, hp), hp)) for k, f in runs.items()}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for k, f in runs.items():
            t = time.perf_counter()
            states[k] = jax.block_until_ready(f(states[k], hp))
            times[k].append((time.perf_counter() - t) / steps / members * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algorithms", default="sgd_sum,sasg",
                    help=f"comma-separated, of {', '.join(STATIC)}")
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"# {args.members} members, MNIST FC protocol, ms per member-step "
          f"(median of {args.repeats} x {args.steps} steps)")
    print(f"{'algorithm':<10} {'vmap':>8} {'lax.map':>8} {'vmap/map':>9}")
    for alg in args.algorithms.split(","):
        t = timings(alg, args.members, args.steps, args.repeats)
        print(f"{alg:<10} {t['vmap']:>8.2f} {t['lax.map']:>8.2f} {t['vmap'] / t['lax.map']:>9.2f}",
              flush=True)


if __name__ == "__main__":
    main()
