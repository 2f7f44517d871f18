r"""The mask form of a compressor: messages that keep some entries of the input unchanged.

Top-k in every variant is a :class:`MaskCompressor`: its message keeps entries of the input
unchanged, chosen by a *selection* of two integers per leaf, so error feedback can store the
compressed vector and the selection instead of a dense message and a dense residual (one
array less to read and write per worker and step; see :func:`apply_selection` and
:func:`mask_error_feedback`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array, lax

from jaxasync._topk_radix import _sel_bits
from jaxasync.trees import select_rows

PyTree = Any


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
    dense residual: :func:`jaxasync.lazy.lazy_upload` and :func:`jaxasync.transforms.compress_rows`
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


