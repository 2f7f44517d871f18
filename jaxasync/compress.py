r"""Pure gradient compressors, one worker at a time.

Every compressor is a function ``compressor(tree, key) -> (message, bits)``:

* ``tree`` is one worker's gradient, a pytree of float arrays (a Flax params dict, say);
* ``message`` has the same structure, shapes and dtypes: the *decompressed* message the
  server sees, dense, zeros where nothing is sent;
* ``bits`` is a float32 scalar: the size of the message on the wire (what the counters add).

They hold no state, read no config object and are pure, jittable and ``jax.vmap``-able over a
leading worker axis of ``tree`` and ``key`` (the caller vmaps). Hyperparameters are bound by
factories that take plain numbers::

    comp = top_k(0.01)                       # per-layer top-1%, exact
    msg, bits = jax.vmap(comp)(grads_w, jax.random.split(key, num_workers))

Error feedback is one pure step, :func:`error_feedback`, over rows of any compressor, with the
memories in a :class:`Memory`. Registered compressors (:data:`COMPRESSORS`,
:func:`register_compressor`) declare their arguments. Top-k is a
:class:`MaskCompressor`: its message keeps entries of the input unchanged, chosen by a
selection of two integers per leaf, so error feedback can store the compressed vector and
the selection instead of a dense message and a dense residual (one array less to read and
write per worker and step; see :func:`apply_selection`).

Exact top-k is the hot path of SASG and Sparse (10 workers x 401,408 entries per step on a
2-core CPU), where ``jax.lax.top_k`` costs several milliseconds per vector. :func:`top_k`
therefore selects with a sample-bracket radix select built from XLA-friendly primitives
(see :func:`top_k_select`); it keeps exactly the set ``jax.lax.top_k`` keeps, ties included.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax

from jaxasync import hparams as hp
from jaxasync._topk_radix import _abs_bits, _kth_largest, _sel_bits, top_k_threshold
from jaxasync.trees import select_rows

PyTree = Any
Compressor = Callable[[PyTree, Array], tuple[PyTree, Array]]

__all__ = [
    "COMPRESSORS", "Compressor", "CompressorSpec", "MaskCompressor", "Memory",
    "apply_selection", "error_feedback", "identity", "init_memory", "make_compressor",
    "mask_error_feedback", "qsgd", "random_k", "register_compressor", "selection_dtype",
    "sign_scale", "split_selection", "top_k", "top_k_count", "top_k_select", "top_k_threshold",
]


# ============================================================================= validation


#: a sparsifier's density h (top-k, random-k)
_DENSITY = hp.Param("float", low=0.0, high=1.0, low_open=True, static=True,
                    doc="h: keep max(1, floor(h d_l)) entries per layer")


def top_k_count(density: float, size: int) -> int:
    r"""Entries kept by top-k / random-k of a vector of ``size`` entries.

    :math:`k = \max(1, \lfloor h\,d \rfloor)` with ``density`` :math:`h \in (0, 1]`.
    """
    return max(1, math.floor(_DENSITY.check("density", density) * size))


def _leaf_bits_f32(value: float) -> Array:
    return jnp.asarray(value, jnp.float32)


# ============================================================================= mask form


@dataclasses.dataclass(frozen=True)
class MaskCompressor:
    r"""A compressor that sends some entries of its input unchanged and zeroes the rest.

    Top-k in every variant is one: the message is :math:`x \odot \mathbb 1[\text{kept}]`,
    and which entries are kept is a *selection*, two integers per leaf, so

    .. math:: C(x) = x \odot \mathrm{mask}(x, s), \qquad
              x - C(x) = x \odot (1 - \mathrm{mask}(x, s)),

    with :math:`s` = ``select(x, key)``. Calling it is a plain compressor,
    ``(tree, key) -> (message, bits)``. The split lets error feedback store, per worker,
    only the vector it last compressed and the selection (:func:`apply_selection` rebuilds both the
    message and the residual from them, elementwise), instead of a dense message *and* a
    dense residual: :func:`jaxasync.lazy.lazy_upload` and :func:`jaxasync.transforms.compress`
    do so when the compressor is a ``MaskCompressor``.

    A leaf's selection is an integer ``[2]`` array ``(v, cut)``: keep entry :math:`i` iff
    :math:`b_i > v`, or :math:`b_i = v` and :math:`i \le` ``cut``, where :math:`b_i` is the
    bit pattern of :math:`|x_i|` as an integer (float32 as int32, float64 as int64: order-
    preserving for non-negative floats) and :math:`i` the flat position in the leaf.

    Attributes:
      select: ``(tree, key) -> (selection, bits)``, pure and vmappable; ``selection`` has
        ``tree``'s structure with an integer ``[2]`` array per leaf.
    """

    select: Callable[[PyTree, Array], tuple[PyTree, Array]]

    def __call__(self, tree: PyTree, key: Array) -> tuple[PyTree, Array]:
        selection, bits = self.select(tree, key)
        return apply_selection(tree, selection)[0], bits


def selection_dtype(leaf: Array):
    """The integer type of a leaf's selection: int32 (int64 for a float64 leaf)."""
    return jnp.int64 if jnp.result_type(leaf) == jnp.float64 else jnp.int32


def _flat_position(shape: tuple[int, ...], dtype) -> Array:
    """Row-major flat position of every entry of an array of ``shape``, in that shape."""
    pos, stride = jnp.zeros(shape, dtype), 1
    for axis in reversed(range(len(shape))):
        pos = pos + lax.broadcasted_iota(dtype, shape, axis) * stride
        stride *= shape[axis]
    return pos


def _kept(x: Array, sel: Array) -> Array:
    """The keep mask of one leaf (any shape) under its selection ``(v, cut)``."""
    # In the leaf's own shape (no flatten): the elementwise pass that updates a stored
    # vector from itself can then write in place.
    bits = _sel_bits(x, sel.dtype)
    pos = _flat_position(jnp.shape(x), sel.dtype)
    # b > v, or b == v at pos <= cut, as one comparison: b > v - [pos <= cut]. Fewer vector
    # ops in every pass that rebuilds a mask (2% of a SASG step, bitwise the same). b >= 0, so
    # any v < 0 keeps all; clamping the scalar v to -1 keeps v - 1 from wrapping.
    v = jnp.maximum(sel[0], -1)
    return bits > v - (pos <= sel[1]).astype(sel.dtype)


def apply_selection(tree: PyTree, selection: PyTree) -> tuple[PyTree, PyTree]:
    r"""``(message, residual)`` of a :class:`MaskCompressor` selection, elementwise.

    .. math:: m = x \odot \mathrm{mask}(x, s), \qquad r = x \odot (1 - \mathrm{mask}(x, s))

    exactly (no arithmetic: every entry goes to one side, the other gets 0), so
    :math:`m + r = x` holds bitwise. One worker's tree; vmap over a worker axis.
    """
    masks = jax.tree.map(_kept, tree, selection)
    message = jax.tree.map(lambda x, k: jnp.where(k, x, jnp.zeros_like(x)), tree, masks)
    residual = jax.tree.map(lambda x, k: jnp.where(k, jnp.zeros_like(x), x), tree, masks)
    return message, residual


def mask_error_feedback(
    compressor: MaskCompressor, grads_w: PyTree, sent_w: PyTree, selection_w: PyTree,
    keys: Array, send: Array,
) -> tuple[PyTree, PyTree, PyTree, Array]:
    r"""One error-feedback step of ``W`` rows kept as the vector last compressed and its
    selection (the layout of :class:`MaskCompressor`).

    .. math:: v = g + e, \quad e = \text{dropped}(s, \sigma); \qquad
              s' = v,\ \sigma' = \text{select}(v) \text{ where } \text{send},
              \text{ else } s, \sigma; \qquad m = \text{kept}(s', \sigma')

    Args:
      compressor: the mask compressor.
      grads_w, sent_w, selection_w: ``[W, ...]`` gradients (step folded in), stored vectors
        and their selections.
      keys: ``[W]`` PRNG keys.
      send: bool ``[W]``, the rows whose memory advances; the others keep theirs.

    Returns:
      ``(messages, sent, selection, bits)``: ``messages`` is the stored message of every row
      (a row that does not send keeps its last one), ``bits`` float32 ``[W]`` of the fresh
      selections. The selection is taken on the stored vector, which is ``v`` for the rows
      that send: one elementwise pass writes it (in place), the selection and the messages
      read it.
    """
    _, error = jax.vmap(apply_selection)(sent_w, selection_w)
    sent = select_rows(send, jax.tree.map(jnp.add, grads_w, error), sent_w)
    fresh, bits = jax.vmap(compressor.select)(sent, keys)
    selection = select_rows(send, fresh, selection_w)
    messages, _ = jax.vmap(apply_selection)(sent, selection)
    return messages, sent, selection, jnp.asarray(bits, jnp.float32)


def split_selection(selection: Array, start: int) -> Array:
    """The selection of a piece of a vector that starts at flat position ``start``."""
    return jnp.stack([selection[0], selection[1] - start])


# ============================================================================= identity


def identity() -> Compressor:
    r"""No compression: the dense gradient.

    :math:`C(x) = x`; bits :math:`= 32\,d` (a dense float32 vector).

    Returns:
      ``compressor(tree, key) -> (tree, bits)``.
    """

    def compressor(tree: PyTree, key: Array) -> tuple[PyTree, Array]:
        del key
        d = sum(int(np.prod(jnp.shape(leaf))) for leaf in jax.tree.leaves(tree))
        return tree, _leaf_bits_f32(32.0 * d)

    return compressor


# ============================================================================= top-k


def top_k(
    density: float,
    *,
    per_layer: bool = True,
    method: str = "exact",
    index_bits: int = 32,
    value_bits: int = 32,
) -> Compressor:
    r"""Top-k sparsification by magnitude.

    Per layer (every leaf :math:`l` with :math:`d_l` entries) it keeps the
    :math:`k_l = \max(1, \lfloor h\,d_l \rfloor)` entries of largest :math:`|x|` and zeroes the
    rest; globally (``per_layer=False``) it keeps the :math:`k = \max(1, \lfloor h\,d \rfloor)`
    largest of the concatenated vector. The message costs

    .. math:: \text{bits} = (b_v + b_i) \sum_l k_l

    (a value and an index per kept entry; ``value_bits`` :math:`b_v`, ``index_bits`` :math:`b_i`).

    ``method="exact"`` keeps exactly :math:`k_l` entries, the same set as
    ``jax.lax.top_k(jnp.abs(x), k)`` (ties go to the lower flat index), via
    :func:`top_k_select`. At ``density=1`` the message is the input itself.

    ``method="approx"`` is the sampled threshold of Deep Gradient Compression: estimate the
    :math:`k`-th largest :math:`|x|` from a systematic random sample of 1% of the entries (at
    least 256), keep every nonzero entry with :math:`|x| \ge` that estimate. The number kept
    varies around :math:`k`; ``bits`` counts the entries actually kept, so it is traced.

    ``method="lax"`` keeps the exact set with ``jax.lax.top_k`` itself (slow on CPU; the
    reference a straightforward port runs).

    The result is a :class:`MaskCompressor`: ``comp.select(tree, key)`` gives the selection
    (two integers per leaf) that :func:`apply_selection` turns into the message.

    Example::

        comp = top_k(0.01)                      # SASG: 1% per layer, 64 bits per entry
        msg, bits = jax.vmap(comp)(grads_w, jax.random.split(key, num_workers))

    Args:
      density: :math:`h \in (0, 1]`.
      per_layer: one :math:`k_l` per leaf (True) or one :math:`k` over the whole tree.
      method: ``"exact"``, ``"approx"`` or ``"lax"``.
      index_bits: bits per index on the wire.
      value_bits: bits per value on the wire.

    Returns:
      a :class:`MaskCompressor`, ``compressor(tree, key) -> (message, bits)``; the key is
      used by ``"approx"`` only.

    References:
      Aji & Heafield, "Sparse communication for distributed gradient descent", EMNLP 2017
      (arXiv 1704.05021). Lin, Han, Mao, Wang, Dally, "Deep gradient compression", ICLR 2018
      (arXiv 1712.01887), Section 3 (sampled threshold). Deng, Li, Sun, Lu, SASG
      (arXiv 2112.04088): per-layer top-k, 64 bits per kept entry.
    """
    # (the arguments are checked by the registry's declaration, see the end of this module)
    h = float(density)
    per_entry = float(value_bits + index_bits)

    def select_vector(flat: Array, key: Array) -> tuple[Array, Array]:
        k = top_k_count(h, flat.size)
        if method == "exact":
            return jnp.stack(top_k_threshold(flat, k)), _leaf_bits_f32(per_entry * k)
        if method == "lax":
            return jnp.stack(top_k_threshold(flat, k, use_lax=True)), _leaf_bits_f32(
                per_entry * k)
        sel, count = _approx_threshold(flat, k, key)
        return sel, per_entry * count.astype(jnp.float32)

    def select(tree: PyTree, key: Array) -> tuple[PyTree, Array]:
        leaves, treedef = jax.tree.flatten(tree)
        if not leaves:
            return tree, _leaf_bits_f32(0.0)
        if per_layer:
            # Only the sampled threshold uses randomness; exact selection needs no key.
            keys = jax.random.split(key, len(leaves)) if method == "approx" else [key] * len(leaves)
            sels, bits = [], []
            for leaf, leaf_key in zip(leaves, keys, strict=True):
                sel, b = select_vector(jnp.ravel(leaf), leaf_key)
                sels.append(sel)
                bits.append(b)
            return treedef.unflatten(sels), sum(bits[1:], bits[0])
        # Global: one selection over the concatenated vector (promoted to a common dtype,
        # which is exact for the float dtypes a gradient tree mixes); each leaf gets the same
        # threshold and the tie cut shifted to its own flat positions.
        flat = jnp.concatenate([jnp.ravel(leaf) for leaf in leaves])
        sel, b = select_vector(flat, key)
        sels, start = [], 0
        for leaf in leaves:
            sels.append(split_selection(sel, start))
            start += int(np.prod(jnp.shape(leaf)))
        return treedef.unflatten(sels), b

    return MaskCompressor(select)


def top_k_select(x: Array, k: int) -> Array:
    r"""Keeps the ``k`` entries of largest :math:`|x|` of a 1-D array, zeroes the rest.

    .. math:: y_i = x_i\,[\,i \in \operatorname{TopK}(|x|, k)\,]

    Exact: exactly :math:`k` entries are kept, the same set as
    ``jax.lax.top_k(jnp.abs(x), k)``; among entries tied at the :math:`k`-th magnitude the
    lower flat positions win. Large vectors use the sample-bracket radix select described in
    :mod:`jaxasync._topk_radix` (three passes over ``x``, falling back to ``jax.lax.top_k`` on the
    rare inputs where its high-probability bracket misses), small ones ``jax.lax.top_k``.
    Pure, jittable, vmappable; ``k`` is static.

    Args:
      x: float array of shape ``[d]`` (float16, bfloat16, float32; float64 goes through
        ``jax.lax.top_k``).
      k: number of entries to keep, ``1 <= k``; ``k >= d`` returns ``x``.

    Returns:
      Array like ``x`` with all but the top-k entries set to zero.
    """
    if x.ndim != 1:
        raise ValueError(f"top_k_select expects a 1-D array, got shape {x.shape}")
    if k >= x.shape[0]:
        return x
    return apply_selection(x, jnp.stack(top_k_threshold(x, k)))[0]


# ----------------------------------------------------------------------------- approx (DGC)

_APPROX_FRACTION = 0.01
_APPROX_MIN_SAMPLE = 256


def _approx_threshold(x: Array, k: int, key: Array) -> tuple[Array, Array]:
    """DGC sampled threshold: (selection, number kept)."""
    d = x.shape[0]
    target = min(d, max(_APPROX_MIN_SAMPLE, math.ceil(_APPROX_FRACTION * d)))
    stride = d // target
    sample_size = d // stride
    bits = _abs_bits(x)
    # Systematic sample with a random start: every stride-th entry from a random offset.
    offset = jax.random.randint(key, (), 0, stride)
    sample = lax.dynamic_index_in_dim(bits[: sample_size * stride].reshape(sample_size, stride),
                                      offset, axis=1, keepdims=False)
    rank = min(sample_size, max(1, round(k * sample_size / d)))
    threshold = _kth_largest(sample, (rank,))[0]
    # Keep |x| >= threshold, but exact zeros never (a mostly-zero layer can estimate
    # threshold 0): bits > max(threshold, 1) - 1, no ties.
    v = jnp.maximum(threshold, 1) - 1
    return jnp.stack([v, jnp.int32(-1)]), _count_true(bits > v)


def _count_true(mask: Array) -> Array:
    """Number of True entries of a 1-D bool array, as int32."""
    n = mask.shape[0]
    cols = -(-n // 32)
    padded = jnp.pad(mask, (0, 32 * cols - n)).reshape(32, cols)
    row = lax.broadcasted_iota(jnp.int32, (32, 1), 0)
    # Pack each column of 32 flags into one word, then popcount: the elementwise popcount
    # keeps XLA from merging the two reductions into one slow long reduction.
    packed = jnp.sum(padded.astype(jnp.int32) << row, axis=0)
    return jnp.sum(lax.population_count(packed))


# ============================================================================= random-k


def random_k(density: float) -> Compressor:
    r"""Random-k sparsification, unbiased.

    Per layer it keeps :math:`k_l = \max(1, \lfloor h\,d_l \rfloor)` coordinates drawn uniformly
    without replacement and rescales them:

    .. math:: C(x)_i = \frac{d_l}{k_l}\,x_i\,[\,i \in S\,],
              \quad S \sim \mathrm{Unif}\tbinom{[d_l]}{k_l}, \qquad \mathbb{E}\,C(x) = x.

    bits :math:`= 64 \sum_l k_l` (a float32 value and an int32 index per kept entry; a shared
    seed would save the indices, but that is not what is counted here).

    Args:
      density: :math:`h \in (0, 1]`.

    Returns:
      ``compressor(tree, key) -> (message, bits)``.

    Reference: Stich, Cordonnier, Jaggi, "Sparsified SGD with memory", NeurIPS 2018
    (arXiv 1809.07599), rand-k.
    """
    h = float(density)

    def one(leaf: Array, key: Array) -> tuple[Array, float]:
        flat = jnp.ravel(leaf)
        d = flat.size
        k = top_k_count(h, d)
        if k >= d:
            return leaf, 64.0 * d
        # A uniform k-subset = the k largest of d i.i.d. uniform keys; the exact selection
        # keeps exactly k of them, fast, without a permutation (a sort) of d entries.
        noise = lax.bitcast_convert_type(
            lax.shift_right_logical(jax.random.bits(key, (d,), jnp.uint32), jnp.uint32(9))
            | jnp.uint32(0x3F800000), jnp.float32)              # uniform floats in [1, 2)
        chosen = top_k_select(noise, k) != 0
        scaled = flat * jnp.asarray(d / k, flat.dtype)
        return jnp.where(chosen, scaled, jnp.zeros_like(flat)).reshape(leaf.shape), 64.0 * k

    def compressor(tree: PyTree, key: Array) -> tuple[PyTree, Array]:
        leaves, treedef = jax.tree.flatten(tree)
        keys = jax.random.split(key, max(1, len(leaves)))
        outs, total = [], 0.0
        for leaf, leaf_key in zip(leaves, keys, strict=False):
            out, b = one(leaf, leaf_key)
            outs.append(out)
            total += b
        return treedef.unflatten(outs), _leaf_bits_f32(total)

    return compressor


# ============================================================================= QSGD


def qsgd(levels: int) -> Compressor:
    r"""QSGD stochastic quantisation with :math:`s` levels, per layer, unbiased.

    .. math:: Q_s(x)_i = \|x\|_2\,\operatorname{sign}(x_i)\,\xi_i(x, s)/s,

    where, with :math:`a_i = s|x_i|/\|x\|_2` and :math:`\ell_i = \lfloor a_i \rfloor`,
    :math:`\xi_i = \ell_i + 1` with probability :math:`a_i - \ell_i` and :math:`\ell_i`
    otherwise, so :math:`\mathbb{E}\,Q_s(x) = x`. A zero layer stays zero.

    bits per layer :math:`= 32 + d_l\,(1 + \lceil \log_2(s+1) \rceil)`: the float32 norm, then a
    sign bit and a fixed-width level index in :math:`\{0,\dots,s\}` per entry. This is the
    simple fixed-width encoding, not the Elias coding of the paper, which is shorter.

    Args:
      levels: :math:`s \ge 1`.

    Returns:
      ``compressor(tree, key) -> (message, bits)``.

    Reference: Alistarh, Grubic, Li, Tomioka, Vojnovic, "QSGD: communication-efficient SGD
    via gradient quantization and encoding", NeurIPS 2017 (arXiv 1610.02132).
    """
    s = int(levels)
    per_entry = 1 + math.ceil(math.log2(s + 1))

    def one(leaf: Array, key: Array) -> Array:
        x = leaf.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(x * x))
        safe = jnp.where(norm > 0, norm, 1.0)
        scaled = jnp.abs(x) / safe * s
        lower = jnp.floor(scaled)
        up = jax.random.uniform(key, x.shape) < (scaled - lower)
        xi = lower + up.astype(jnp.float32)
        q = norm * jnp.sign(x) * xi / s
        return q.astype(leaf.dtype)

    def compressor(tree: PyTree, key: Array) -> tuple[PyTree, Array]:
        leaves, treedef = jax.tree.flatten(tree)
        keys = jax.random.split(key, max(1, len(leaves)))
        outs = [one(leaf, k) for leaf, k in zip(leaves, keys, strict=False)]
        bits = sum(32 + int(np.prod(jnp.shape(leaf))) * per_entry for leaf in leaves)
        return treedef.unflatten(outs), _leaf_bits_f32(bits)

    return compressor


# ============================================================================= scaled sign


def sign_scale() -> Compressor:
    r"""Scaled sign compression (EF-signSGD), per layer.

    .. math:: C(x) = \frac{\|x\|_1}{d_l}\,\operatorname{sign}(x)

    (``jnp.sign``: an exact zero stays zero). bits per layer :math:`= d_l + 32`: one sign bit
    per entry and the float32 scale.

    Returns:
      ``compressor(tree, key) -> (message, bits)``; the key is unused.

    Reference: Karimireddy, Rebjock, Stich, Jaggi, "Error feedback fixes SignSGD and other
    gradient compression schemes", ICML 2019 (arXiv 1901.09847).
    """

    def one(leaf: Array) -> Array:
        x = leaf.astype(jnp.float32)
        scale = jnp.sum(jnp.abs(x)) / x.size
        return (scale * jnp.sign(x)).astype(leaf.dtype)

    def compressor(tree: PyTree, key: Array) -> tuple[PyTree, Array]:
        del key
        leaves, treedef = jax.tree.flatten(tree)
        bits = sum(int(np.prod(jnp.shape(leaf))) + 32 for leaf in leaves)
        return treedef.unflatten([one(leaf) for leaf in leaves]), _leaf_bits_f32(bits)

    return compressor


# ============================================================================= error feedback


class Memory(NamedTuple):
    r"""Error-feedback memories of a stack of rows (workers), in one of two layouts.

    * dense: ``error`` holds the residuals :math:`e` (``sent``, ``selection`` are ``()``);
    * mask (a :class:`MaskCompressor`, top-k): ``sent`` holds the vector :math:`v` each row
      last compressed and ``selection`` its selection (``error`` is ``()``); the residual is
      the dropped entries of ``sent`` and the last message its kept entries, so one dense
      array per row is stored instead of two.

    Every leaf has the leading row axis; index it like any pytree
    (``jax.tree.map(lambda a: a[ids], memory)``).
    """

    error: PyTree = ()
    sent: PyTree = ()
    selection: PyTree = ()

    @property
    def masked(self) -> bool:
        return not (isinstance(self.sent, tuple) and not self.sent)

    def residual(self) -> PyTree:
        """The residuals :math:`e` of every row, however they are kept."""
        if not self.masked:
            return self.error
        return jax.vmap(apply_selection)(self.sent, self.selection)[1]

    def last_messages(self) -> PyTree:
        """The message each row last sent (mask layout only; the dense layout keeps none)."""
        if not self.masked:
            raise ValueError("Memory: the dense layout keeps residuals, not messages")
        return jax.vmap(apply_selection)(self.sent, self.selection)[0]


def init_memory(compressor: Compressor, params: PyTree, rows: int) -> Memory:
    """Zero memories for ``rows`` rows shaped like ``params``: the mask layout for a
    :class:`MaskCompressor`, dense otherwise."""
    zeros = jax.tree.map(lambda p: jnp.zeros((rows,) + jnp.shape(p), jnp.result_type(p)),
                         params)
    if isinstance(compressor, MaskCompressor):
        return Memory(sent=zeros, selection=jax.tree.map(
            lambda p: jnp.zeros((rows, 2), selection_dtype(p)), params))
    return Memory(error=zeros)


def error_feedback(compressor: Compressor, grads_w: PyTree, memory_w: Memory, keys: Array,
                   send: Array) -> tuple[PyTree, Memory, Array]:
    r"""One error-feedback step of ``W`` rows: the one implementation every transform uses.

    .. math:: v = g + e, \qquad m = C(v), \qquad e \leftarrow v - m \ 	ext{(rows that send)}

    Rows that do not send keep their memory. Mass is conserved for the rows that send:
    :math:`m + e' = e + g` (bitwise in the mask layout, where every entry of :math:`v` goes
    to one side; up to the rounding of :math:`v - m` in the dense layout).

    Args:
      compressor: any compressor; a :class:`MaskCompressor` needs the mask layout.
      grads_w: ``[W, ...]`` gradients (step folded in, where the algorithm does so).
      memory_w: the rows' :class:`Memory` (from :func:`init_memory`, rows taken as needed).
      keys: ``[W]`` PRNG keys.
      send: bool ``[W]``, the rows whose memory advances.

    Returns:
      ``(messages, memory, bits)``: ``messages`` ``[W, ...]`` are the fresh messages of the
      rows that send; a row that does not send gets its last message in the mask layout (it
      is rebuilt anyway) and an unspecified one in the dense layout (callers select);
      ``bits`` float32 ``[W]`` is the size of the fresh messages.

    References: Stich, Cordonnier, Jaggi, "Sparsified SGD with memory", NeurIPS 2018
    (arXiv 1809.07599); Aji & Heafield, EMNLP 2017 (arXiv 1704.05021); Seide et al.,
    Interspeech 2014 (1-bit SGD's error feedback).
    """
    if memory_w.masked:
        if not isinstance(compressor, MaskCompressor):
            raise ValueError("error_feedback: a mask-layout memory needs a MaskCompressor")
        messages, sent, selection, bits = mask_error_feedback(
            compressor, grads_w, memory_w.sent, memory_w.selection, keys, send)
        return messages, Memory(sent=sent, selection=selection), bits
    v = jax.tree.map(jnp.add, memory_w.error, grads_w)
    messages, bits = jax.vmap(compressor)(v, keys)
    error = select_rows(send, jax.tree.map(jnp.subtract, v, messages), memory_w.error)
    return messages, Memory(error=error), jnp.asarray(bits, jnp.float32)


# ============================================================================= registry


@dataclasses.dataclass(frozen=True)
class CompressorSpec:
    r"""A registered compressor.

    Attributes:
      name: the registry name (``algorithm.compressor.name``).
      factory: ``(**numbers) -> compressor``, checking its arguments on every call.
      params: every keyword argument with its :class:`jaxasync.hparams.Param` (compressor
        arguments are static: they fix shapes and message sizes).
      example: build arguments for the conformance tests.
      unbiased: :math:`\mathbb E\,C(x) = x` (random-k, QSGD...); False for biased ones
        (top-k, sign...), None where not stated.
    """

    name: str
    factory: Callable[..., Compressor]
    params: Mapping[str, hp.Param]
    example: Mapping[str, Any]
    unbiased: bool | None = None

    def build(self, **kwargs: Any) -> Compressor:
        return self.factory(**kwargs)


COMPRESSORS: dict[str, CompressorSpec] = {}


def register_compressor(name: str, *, params: Mapping[str, hp.Param] | None = None,
                        example: Mapping[str, Any] | None = None,
                        unbiased: bool | None = None):
    """Decorator adding a compressor factory to :data:`COMPRESSORS` under ``name``.

    The factory takes plain numbers and returns ``compressor(tree, key) -> (message, bits)``
    (see the module docstring). Its arguments are declared with
    :class:`jaxasync.hparams.Param` (undeclared ones derived from their defaults), all
    static, and checked on every call, so a bad value is a ``ValueError`` naming it. A new
    registration is tested by the conformance table without adding a test.
    """

    def deco(factory):
        declared = {k: dataclasses.replace(p, static=True)
                    for k, p in hp.derive(factory, params).items()}
        fn = hp.checked(f"compressor {name!r}", factory, declared)
        COMPRESSORS[name] = CompressorSpec(name, fn, declared, dict(example or {}), unbiased)
        return fn

    return deco


identity = register_compressor("identity", unbiased=True)(identity)
top_k = register_compressor("top_k", example={"density": 0.25}, unbiased=False, params={
    "density": _DENSITY, "method": hp.one_of("exact", "approx", "lax"),
    "index_bits": hp.integer(1), "value_bits": hp.integer(1)})(top_k)
random_k = register_compressor("random_k", example={"density": 0.25}, unbiased=True,
                               params={"density": _DENSITY})(random_k)
qsgd = register_compressor("qsgd", example={"levels": 4}, unbiased=True,
                           params={"levels": hp.integer(1, doc="s quantisation levels")})(qsgd)
sign_scale = register_compressor("sign", unbiased=False)(sign_scale)


def make_compressor(name: str, **kwargs: Any) -> Compressor:
    """Builds a registered compressor: ``make_compressor("top_k", density=0.01)``.

    Raises:
      ValueError: unknown name, unknown keyword, or a bad value (density outside (0, 1],
        levels < 1, ...), naming it in one line.
    """
    if name not in COMPRESSORS:
        raise ValueError(f"compressor {name!r}: unknown; choose one of: "
                         f"{', '.join(sorted(COMPRESSORS))}")
    return COMPRESSORS[name].build(**kwargs)
