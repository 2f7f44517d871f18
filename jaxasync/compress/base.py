r"""What every compressor module shares: the stateful compressor type and per-leaf helpers.

A *plain* compressor is a pure function ``compressor(tree, key) -> (message, bits)``. A
compressor that keeps something per worker between its calls (PowerSGD's warm-start
:math:`Q`, DGC's momentum :math:`u`, signum's momentum, the threshold compressor's estimate,
PermK's call counter) is a :class:`Stateful`:

* ``init(params, worker) -> state``: one worker's state (shapes from ``params``, ``worker``
  an int32 scalar: PermK's block, a per-worker seed), fixed in structure, shapes and dtypes,
  as optax's contract asks of every state;
* ``prepare(grad, state) -> (grad', state')`` (optional): what happens to the gradient
  *before* error feedback adds its memory (DGC's clipping and momentum correction, signum's
  momentum);
* ``step(v, state, key) -> (message, state', bits)``: the compression of ``v`` (the gradient,
  or what error feedback made of it);

Under the worker ``vmap`` a ``lax.cond`` on a per-worker predicate computes both branches;
work needed on some calls only (the threshold compressor's re-estimation) is a
:func:`when` instead, which runs once if some row needs it and not at all otherwise.

Called as a plain compressor (``comp(tree, key)``) it starts from ``init(tree, 0)`` and
forgets the new state: a first call. The per-worker states live in
:class:`jaxasync.compress.Memory` (field ``state``, leading worker axis), and
:func:`jaxasync.compress.error_feedback` carries them, for
:func:`jaxasync.transforms.compress_rows`, :func:`jaxasync.lazy.lazy_upload` and EF21 alike.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from jaxasync import hparams as hp
from jaxasync._feistel import mix32

PyTree = Any
Compressor = Callable[[PyTree, Array], tuple[PyTree, Array]]

#: a sparsifier's density h (top-k, random-k)
DENSITY = hp.Param("float", low=0.0, high=1.0, low_open=True, static=True,
                   doc="h: keep max(1, floor(h d_l)) entries per layer")


def top_k_count(density: float, size: int) -> int:
    r"""Entries kept by top-k / random-k of a vector of ``size`` entries.

    :math:`k = \max(1, \lfloor h\,d \rfloor)` with ``density`` :math:`h \in (0, 1]`.
    """
    return max(1, math.floor(DENSITY.check("density", density) * size))


def f32(value) -> Array:
    """A float32 scalar (message sizes are float32)."""
    return jnp.asarray(value, jnp.float32)


def size(leaf) -> int:
    """Entries of a leaf (static)."""
    return int(np.prod(jnp.shape(leaf)))


def per_leaf(one: Callable[[Array, Array], tuple[Array, Any]]) -> Compressor:
    """A compressor from ``one(leaf, key) -> (message_leaf, bits)``: each leaf with its own
    key (split from ``key``), the bits summed."""

    def compressor(tree: PyTree, key: Array) -> tuple[PyTree, Array]:
        leaves, treedef = jax.tree.flatten(tree)
        keys = jax.random.split(key, max(1, len(leaves)))
        outs, static, traced = [], 0.0, None
        for leaf, k in zip(leaves, keys, strict=False):
            out, bits = one(leaf, k)
            outs.append(out)
            # sizes known at trace time are summed exactly in Python, then cast once
            if isinstance(bits, int | float):
                static += bits
            else:
                traced = f32(bits) if traced is None else traced + f32(bits)
        total = f32(static) if traced is None else traced + f32(static)
        return treedef.unflatten(outs), total

    return compressor


@dataclasses.dataclass(frozen=True, eq=False)
class Stateful:
    """A compressor with per-worker state (see the module docstring).

    Attributes:
      init: ``(params, worker) -> state`` of one worker.
      step: ``(v, state, key) -> (message, state, bits)``.
      prepare: ``(grad, state) -> (grad, state)`` before error feedback, or None.
    """

    init: Callable[[PyTree, Array], PyTree]
    step: Callable[[PyTree, PyTree, Array], tuple[PyTree, PyTree, Array]]
    prepare: Callable[[PyTree, PyTree], tuple[PyTree, PyTree]] | None = None

    def __call__(self, tree: PyTree, key: Array) -> tuple[PyTree, Array]:
        state = self.init(tree, jnp.int32(0))
        if self.prepare is not None:
            tree, state = self.prepare(tree, state)
        message, _, bits = self.step(tree, state, key)
        return message, bits

    def init_rows(self, params: PyTree, rows: int) -> PyTree:
        """The states of workers ``0..rows-1``, stacked (leading axis ``rows``)."""
        return jax.vmap(lambda w: self.init(params, w))(jnp.arange(rows, dtype=jnp.int32))

    def prepare_rows(self, grads_w: PyTree, state_w: PyTree) -> tuple[PyTree, PyTree]:
        if self.prepare is None:
            return grads_w, state_w
        return jax.vmap(self.prepare)(grads_w, state_w)

    def step_rows(self, v_w: PyTree, state_w: PyTree, keys: Array
                  ) -> tuple[PyTree, PyTree, Array]:
        return jax.vmap(self.step)(v_w, state_w, keys)


def is_stateful(compressor: Any) -> bool:
    """Whether ``compressor`` keeps per-worker state (a :class:`Stateful`)."""
    return isinstance(compressor, Stateful)


#: leaves below this many entries are summed term by term (nothing to gain from one pass)
_FUSED_MIN = 4096
#: rows of the partial sums of :func:`fused_sums`
_FUSED_ROWS = 32


def _pairwise(parts: list[Array]) -> Array:
    while len(parts) > 1:
        parts = [a + b for a, b in zip(parts[::2], parts[1::2], strict=False)] + (
            parts[-1:] if len(parts) % 2 else [])
    return parts[0]


def fused_sums(x: Array, terms: Sequence[Callable[[Array], Array]]) -> list[Array]:
    r"""``[sum(f(x)) for f in terms]`` (float32 scalars), the leaf read once.

    Written for speed: XLA's CPU backend (jax 0.10) gives each reduction its own pass over
    the leaf, and hands a reduction whose elementwise part has a constant operand (a
    ``maximum(x, 0)``, a ``x < 0``) or an operand shared with another reduction (a common
    ``abs(x)``) a materialised copy of it: three class sums of 1-bit SGD cost more than one
    gradient of the SASG shape. Here the flat leaf is cut into :math:`32` rows, each term
    is summed across the rows elementwise (a pairwise sum of 32 slices: one loop fusion, the
    leaf read once, every term computed from the same load) and the terms' partial sums,
    stacked along the last axis, are summed once (:math:`d/32` entries per term). The tail
    of :math:`d \bmod 32` entries and leaves under 4,096 entries are summed directly.
    """
    flat = jnp.ravel(x)
    n = flat.size
    if n < _FUSED_MIN:
        return [jnp.sum(f(flat)).astype(jnp.float32) for f in terms]
    cols = n // _FUSED_ROWS
    head = flat[: cols * _FUSED_ROWS].reshape(_FUSED_ROWS, cols)
    rows = [head[i] for i in range(_FUSED_ROWS)]
    partial = jnp.stack([_pairwise([f(r).astype(jnp.float32) for r in rows]) for f in terms],
                        axis=-1)
    totals = jnp.sum(partial, axis=0)
    tail = flat[cols * _FUSED_ROWS:]
    return [totals[i] + jnp.sum(f(tail)).astype(jnp.float32) if tail.size else totals[i]
            for i, f in enumerate(terms)]


def random_bits(key: Array, shape: tuple[int, ...]) -> Array:
    r"""Pseudo-random uint32 per entry: a counter-based hash of the entry's index :math:`i`,
    SplitMix's construction in 32 bits,

    .. math:: h_i = \mathrm{fmix32}(\gamma\, i + s) \bmod 2^{32},

    with :math:`s` and the odd multiplier :math:`\gamma` drawn from ``key`` (its bits
    balanced as SplitMix's ``mixGamma`` does: a :math:`\gamma` with fewer than 12 changes
    between neighbouring bits is xored with ``0xAAAAAAAA``) and fmix32 the MurmurHash3
    finaliser. Each key gives its own Weyl sequence :math:`\gamma i + s` (a different step,
    not a shift of one sequence), scrambled by the finaliser. Reference: Steele, Lea, Flood,
    "Fast splittable pseudorandom number generators", OOPSLA 2014 (SplitMix, ``mixGamma``).

    Written for speed: the stochastic compressors draw one or two numbers per gradient entry,
    and ``jax.random.bits`` (threefry) costs 45x more on a 2-core CPU (10 x 401,408 draws:
    1,070 vs 24 ms, measured side by side under load), more than the gradient itself. One
    finaliser round where there were two (``fmix32(fmix32(i ^ s_0) + s_1)``): TernGrad 0.87x
    -> 0.65x one gradient of the SASG shape, QSGD 0.72x -> 0.55x (side by side, under load).
    ``tests/test_compress_properties.py::test_random_bits_are_uniform_and_uncorrelated``
    checks uniformity, every bit's balance, and the correlations between neighbouring entries
    and between keys; the property tests check the compressors' unbiasedness and variance.
    """
    seed = jax.random.bits(key, (2,), jnp.uint32)
    gamma = seed[0] | jnp.uint32(1)
    flips = jax.lax.population_count(gamma ^ (gamma >> 1))
    gamma = jnp.where(flips < 12, gamma ^ jnp.uint32(0xAAAAAAAA), gamma)
    index = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    return mix32(index * gamma + seed[1])


def uniform_bits(key: Array, shape: tuple[int, ...], bits: int) -> Array:
    """Uniform random integers in ``[0, 2**bits)`` as uint32 (``bits <= 32``)."""
    raw = random_bits(key, shape)
    return raw if bits == 32 else raw >> jnp.uint32(32 - bits)


def uniform(key: Array, shape: tuple[int, ...]) -> Array:
    """Uniform float32 in ``[0, 1)`` on a grid of :math:`2^{-24}` (from :func:`random_bits`).

    The 24-bit integers go to float32 through int32 (exact either way): a uint32 conversion
    has no vector instruction on x86 and cost a third of the draw on the SASG shape."""
    ints = uniform_bits(key, shape, 24).astype(jnp.int32)
    return ints.astype(jnp.float32) * jnp.float32(2.0 ** -24)


def when(need: Array, fn: Callable[[PyTree], PyTree], value: PyTree, operand: PyTree) -> PyTree:
    """``fn(operand)`` where ``need``, else ``value``: a ``vmap``-able "if" that computes
    ``fn`` only when some row needs it (a ``lax.while_loop`` of at most one iteration, as
    :func:`jaxasync._topk_radix.top_k_threshold`'s fallback; a ``lax.cond`` under ``vmap``
    would compute both branches every time).

    The body reads ``operand`` behind a select on the loop's trip counter: XLA's loop
    invariant code motion hoists out of the loop whatever depends on loop invariants only.
    An earlier version carried the operand unchanged through the loop state, a loop
    invariant, so ``fn`` was hoisted and ran on every call (the threshold compressor's exact
    top-k: 1.5x one gradient's time on the SASG shape on every call, where it is meant once
    every ``period`` calls);
    ``tests/test_compress_properties.py::test_when_is_not_hoisted_out_of_its_loop`` checks
    the compiled program."""

    def body(carry):
        trips, _ = carry
        live = jax.tree.map(lambda a: jnp.where(trips == 0, a, jnp.zeros_like(a)), operand)
        return trips + 1, fn(live)

    limit = jnp.asarray(need).astype(jnp.int32)
    _, out = jax.lax.while_loop(lambda c: c[0] < limit, body, (jnp.zeros((), jnp.int32), value))
    return out
