"""The CPU's unrolled Threefry lowering (jaxasync._threefry) draws the same bits as JAX's own."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

SCRIPT = r"""
import jax, jax.numpy as jnp, numpy as np
def draws(k):
    # (uniform floats are built from the bits exactly: mantissa bits | 1.0, minus 1.0; a
    # transcendental map such as normal's erfinv is left out, as two programs may round it
    # differently)
    return (jax.random.key_data(jax.random.split(k, 5)), jax.random.uniform(k, (1000,)),
            jax.random.randint(k, (11,), 0, 100),
            jax.random.bits(k, (4,), jnp.uint32), jax.random.permutation(k, 9),
            jax.random.key_data(jax.random.fold_in(k, 7)))
def big(k):      # past UNROLL_MAX: the loop even inside unrolled()
    return jax.random.bits(k, (5000,), jnp.uint32), jax.random.uniform(k, (70, 70))
keys = jax.random.split(jax.random.key(3), 7)
fns = [jax.jit(jax.vmap(draws)), jax.jit(jax.vmap(big))]
if INSTALL:
    from jaxasync import _threefry
    _threefry.install()
    split = lambda k: jax.random.split(k, 5)    # a fresh jit each time: JAX caches lowerings
    assert " while(" in jax.jit(split).lower(keys[0]).compile().as_text(), "outside: the loop"
    with _threefry.unrolled():
        text = jax.jit(lambda k: split(k)).lower(keys[0]).compile().as_text()
        assert " while(" not in text, "inside: unrolled"
        compiled = [f.lower(keys).compile() for f in fns]
    outside = [np.asarray(x).view(np.uint32) for f in fns for x in jax.tree.leaves(f(keys))]
else:
    compiled = fns
out = [np.asarray(x).view(np.uint32) for f in compiled for x in jax.tree.leaves(f(keys))]
if INSTALL:
    for a, b in zip(out, outside):
        np.testing.assert_array_equal(a, b)
np.savez(PATH, *out)
"""


def _draws(tmp_path, install: bool) -> list[np.ndarray]:
    path = tmp_path / f"d{int(install)}.npz"
    code = SCRIPT.replace("INSTALL", str(install)).replace("PATH", repr(str(path)))
    subprocess.run([sys.executable, "-c", code], check=True)
    with np.load(path) as f:
        return [f[k] for k in sorted(f.files, key=lambda s: int(s.split("_")[1]))]


def test_unrolled_threefry_draws_the_same_bits_as_jax(tmp_path):
    """Integer arithmetic only (wrap-around adds, rotations, xors; the uniform floats are exact
    bit manipulations of them): equal bit for bit, in a
    process with JAX's lowering and one with ours, unrolled (small draws inside
    ``unrolled()``) and as a loop (outside it, and large draws)."""
    ref, ours = _draws(tmp_path, False), _draws(tmp_path, True)
    assert len(ref) == len(ours) == 8
    for a, b in zip(ref, ours, strict=True):
        np.testing.assert_array_equal(a, b)


def test_threefry_against_the_published_vector():
    """Salmon et al. 2011's known-answer test for Threefry-2x32, 20 rounds (as in the Random123
    library's kat_vectors): key (0x13198a2e, 0x03707344), counter (0x243f6a88, 0x85a308d3)
    -> (0xc4923a9c, 0x483df7a0)."""
    from jaxasync._threefry import threefry2x32

    y = threefry2x32(np.uint32(0x13198A2E), np.uint32(0x03707344), np.uint32(0x243F6A88),
                     np.uint32(0x85A308D3))
    assert [int(v) for v in y] == [0xC4923A9C, 0x483DF7A0]
