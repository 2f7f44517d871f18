"""Members (seeds) vmapped or run one after another: time per member-step, side by side.

    python benchmarks/member_map.py                       # SGD and SASG, 5 members, ~2 min
    python benchmarks/member_map.py --algorithms sgd_sum --members 3

The runner (:func:`jaxasync.sim.run`) runs the members of a sweep as one ``jax.vmap``-ed
program. On SASG's MNIST protocol (M = 10, batch 10, FC 784-512-10; the settings of
``sasg_bench.py``, imported from it) this script times the same simulator step for
``--members`` members, (a) vmapped over the members, as the runner does, and (b) with
``jax.lax.map``, one member after another in the same program, and prints milliseconds per
member-step and the ratio. Each timing is the median of ``--repeats``
interleaved calls of an already-compiled scan of ``--steps`` steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
from sasg_bench import BATCH, FAMILY, HISTORY, M, _setup  # the same protocol and settings

import jaxasync as ja
from jaxasync import delays as dl
from jaxasync.sim import SimConfig, Simulator


def timings(algorithm: str, members: int, steps: int, repeats: int) -> dict[str, float]:
    wl, data = _setup("mnist_subset_fc")
    cfg = SimConfig(num_workers=M, batch_size=BATCH, ring_size=HISTORY + 1, steps=steps,
                    eval_every=steps, delay=dl.DelayConfig(kind="none"))
    static = {k: ("exact" if v == "{method}" else v) for k, v in FAMILY[algorithm].items()}
    sim = Simulator(ja.get_algorithm(algorithm), static, wl, cfg)
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
                    help=f"comma-separated, of {', '.join(FAMILY)}")
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
