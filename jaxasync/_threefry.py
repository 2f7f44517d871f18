"""Threefry-2x32 lowered without a loop on the CPU: the same bits, a fifth of the kernels.

JAX draws every random number with the Threefry-2x32 hash (Salmon, Moraes, Dror & Shaw,
"Parallel random numbers: as easy as 1, 2, 3", SC 2011: 20 rounds of add-rotate-xor on two
32-bit words, a key injection after every 4). On the CPU, JAX lowers it as a ``fori_loop`` of
five 4-round blocks to keep compile times down. Inside the simulator's step, which runs
several tiny draws per server step (the step's key split, the minibatch, the delays), each
draw is then a ``while`` loop of 5 iterations, and each iteration is a few XLA kernels plus
the copies of its loop state: on the 2-core CPU, the worst-case quadratic's ASGD step at n = 10
spent about a quarter of its time in these loops (24 -> 17.6 us per arrival with the unrolled
form, ``benchmarks/async_bench.py``).

:func:`install` registers, for the CPU only, a lowering of ``threefry2x32_p`` that writes the
20 rounds out for small operands (:data:`UNROLL_MAX`) of a program lowered inside
:func:`unrolled` (XLA fuses them into one kernel per draw), and keeps the loop elsewhere. It
computes the same function in uint32 arithmetic (wrap-around adds, rotations, xors: exact), so
every random stream, and every stored result, is bitwise unchanged (``tests/test_threefry.py``
checks it against JAX's own lowering). The registration is global to the process and
idempotent; outside :func:`unrolled` it lowers as JAX does (a loop).
"""

from __future__ import annotations

import contextlib
import contextvars

import numpy as np

#: the rotation constants of Threefry-2x32, for rounds 1-4 and 5-8 (then repeated)
ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
#: the key schedule's parity constant (Salmon et al. 2011, Threefish's C240 for 32-bit words)
PARITY = 0x1BD11BDA

_installed = False


def _rotl(v, r: int):
    return (v << np.uint32(r)) | (v >> np.uint32(32 - r))


def threefry2x32(k0, k1, x0, x1):
    """The Threefry-2x32 hash of counts ``(x0, x1)`` under key ``(k0, k1)``, 20 rounds
    unrolled (uint32 arrays, broadcast together)."""
    import jax.numpy as jnp

    k0, k1, x0, x1 = (jnp.asarray(a, jnp.uint32) for a in (k0, k1, x0, x1))
    ks = (k0, k1, k0 ^ k1 ^ np.uint32(PARITY))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for block in range(5):                       # 5 blocks of 4 rounds, a key injection each
        for r in ROTATIONS[block % 2]:
            x0 = x0 + x1
            x1 = _rotl(x1, r) ^ x0
        x0 = x0 + ks[(block + 1) % 3]
        x1 = x1 + ks[(block + 2) % 3] + np.uint32(block + 1)
    return x0, x1


def _rolled(k0, k1, x0, x1):
    """The same hash as :func:`threefry2x32`, its five 4-round blocks a ``fori_loop`` (the form
    JAX itself uses on the CPU, whose rule is private, hence written here): a small program for
    large operands, whose draws cost far more than a loop's iterations."""
    import jax
    import jax.numpy as jnp

    k0, k1, x0, x1 = (jnp.asarray(a, jnp.uint32) for a in (k0, k1, x0, x1))
    ks = jnp.stack(jnp.broadcast_arrays(k0, k1, k0 ^ k1 ^ np.uint32(PARITY)))
    rot = jnp.asarray(ROTATIONS, jnp.uint32)

    def block(b, x):
        y0, y1 = x
        for j in range(4):
            r = rot[b % 2, j]
            y0 = y0 + y1
            y1 = ((y1 << r) | (y1 >> (np.uint32(32) - r))) ^ y0
        return (y0 + ks[(b + 1) % 3],
                y1 + ks[(b + 2) % 3] + (b + 1).astype(jnp.uint32))

    return jax.lax.fori_loop(0, 5, block, (x0 + ks[0], x1 + ks[1]))


#: operands up to this many entries get the unrolled form: the simulator's per-step draws
#: (key splits, minibatch indices, delays). Larger ones (initialisations, a compressor's draw
#: per parameter) keep the loop: unrolled, XLA duplicates the 20 rounds into every fusion that
#: reads them, and the default job's compile time doubled (``benchmarks/compile_time.py``).
UNROLL_MAX = 4096


_UNROLL = contextvars.ContextVar("jaxasync_threefry_unrolled", default=False)


def _lowered(k0, k1, x0, x1):
    size = max(int(np.prod(np.shape(a))) for a in (k0, k1, x0, x1))
    fn = threefry2x32 if _UNROLL.get() and size <= UNROLL_MAX else _rolled
    return list(fn(k0, k1, x0, x1))


@contextlib.contextmanager
def unrolled():
    """Programs lowered inside this block draw their small operands' random bits with the
    unrolled hash (:data:`UNROLL_MAX`); everywhere else the loop (JAX's CPU form). The
    simulator's runner lowers its step program in it: the step runs its draws thousands of
    times, while the initial state (compiled once, run once) has dozens of small draws that,
    unrolled, took its compilation from 0.9 to 3.7 CPU seconds on the default job
    (``benchmarks/compile_time.py --breakdown``)."""
    install()
    token = _UNROLL.set(True)
    try:
        yield
    finally:
        _UNROLL.reset(token)


def install() -> None:
    """Registers the unrolled lowering for the CPU (once per process)."""
    global _installed
    if _installed:
        return
    from jax.extend.random import threefry2x32_p
    from jax.interpreters import mlir

    mlir.register_lowering(
        threefry2x32_p,
        mlir.lower_fun(_lowered, multiple_results=True),
        platform="cpu")
    _installed = True
