r"""Compression with memory: error feedback (EF14), EF21's Markov compressor, compressor state.

One pure step, :func:`error_feedback`, over a stack of rows (workers) and their
:class:`Memory`, is the only place where a compressor meets its per-worker memories; every
transform that compresses with memory calls it (:func:`jaxasync.transforms.compress_rows`,
:func:`jaxasync.lazy.lazy_upload`, :func:`jaxasync.markov.ef21`, the simulator's downlink).
What the memory holds decides the rule:

* ``error`` (EF14, classic error feedback: Seide et al. 2014; Stich, Cordonnier, Jaggi,
  arXiv 1809.07599, Algorithm 1): :math:`v = g + e,\ m = C(v),\ e \leftarrow v - m`;
* ``sent`` + ``selection``: the same rule for a :class:`MaskCompressor`, kept as the vector
  last compressed and its selection (:func:`jaxasync.compress.mask.mask_error_feedback`);
* ``estimate`` (EF21: Richtárik, Sokolov, Fatkhullin, arXiv 2106.05203, Algorithm 1):
  :math:`c = C(g - h),\ h \leftarrow h + c`, the message being :math:`c`;
* none of these: no feedback, :math:`m = C(g)`;

and ``state`` carries a :class:`jaxasync.compress.base.Stateful` compressor's per-worker
state through any of them (its ``prepare`` runs on :math:`g` before the rule, its ``step``
compresses :math:`v`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from jaxasync.compress.base import Compressor, is_stateful
from jaxasync.compress.mask import (
    MaskCompressor,
    apply_selection,
    mask_error_feedback,
    selection_dtype,
)
from jaxasync.trees import select_rows

PyTree = Any

#: the rules :func:`init_memory` sets up (None: no feedback)
FEEDBACK = ("ef14", "ef21")


def _filled(x: PyTree) -> bool:
    return not (isinstance(x, tuple) and not x)


class Memory(NamedTuple):
    r"""The memories of a stack of rows (workers) for :func:`error_feedback`.

    * ``error``: EF14 residuals :math:`e` (dense layout);
    * ``sent``, ``selection``: EF14 for a :class:`MaskCompressor` (top-k): the vector
      :math:`v` each row last compressed and its selection; the residual is the dropped
      entries of ``sent`` and the last message its kept entries, so one dense array per row
      is stored instead of two;
    * ``state``: a stateful compressor's per-row state (any layout);
    * ``estimate``: EF21's :math:`h_i` (the receiver's running estimate of :math:`g_i`).

    Unused fields are ``()``. Every leaf has the leading row axis; index it like any pytree
    (``jax.tree.map(lambda a: a[ids], memory)``).
    """

    error: PyTree = ()
    sent: PyTree = ()
    selection: PyTree = ()
    state: PyTree = ()
    estimate: PyTree = ()

    @property
    def masked(self) -> bool:
        return _filled(self.sent)

    @property
    def rule(self) -> str | None:
        """``"ef14"``, ``"ef21"`` or None (no feedback: the memory holds only state)."""
        if self.masked or _filled(self.error):
            return "ef14"
        return "ef21" if _filled(self.estimate) else None

    def residual(self) -> PyTree:
        """The EF14 residuals :math:`e` of every row, however they are kept (``()`` for
        other rules)."""
        if not self.masked:
            return self.error
        return jax.vmap(apply_selection)(self.sent, self.selection)[1]

    def last_messages(self) -> PyTree:
        """The message each row last sent (mask layout only; the dense layout keeps none)."""
        if not self.masked:
            raise ValueError("Memory: the dense layout keeps residuals, not messages")
        return jax.vmap(apply_selection)(self.sent, self.selection)[0]


def init_memory(compressor: Compressor, params: PyTree, rows: int,
                feedback: str | None = "ef14") -> Memory:
    """Zero memories for ``rows`` rows shaped like ``params``.

    ``feedback`` is ``"ef14"`` (the mask layout for a :class:`MaskCompressor`, dense
    otherwise), ``"ef21"`` or None; a :class:`jaxasync.compress.base.Stateful` compressor's
    states (workers ``0..rows-1``) are added in every case.
    """
    if feedback not in (*FEEDBACK, None):
        raise ValueError(f"init_memory feedback={feedback!r}: choose one of ef14, ef21, None")
    zeros = jax.tree.map(lambda p: jnp.zeros((rows,) + jnp.shape(p), jnp.result_type(p)),
                         params)
    state = compressor.init_rows(params, rows) if is_stateful(compressor) else ()
    if feedback == "ef21":
        return Memory(estimate=zeros, state=state)
    if feedback is None:
        return Memory(state=state)
    if isinstance(compressor, MaskCompressor):
        return Memory(sent=zeros, selection=jax.tree.map(
            lambda p: jnp.zeros((rows, 2), selection_dtype(p)), params), state=state)
    return Memory(error=zeros, state=state)


def compress_rows_once(compressor: Compressor, v_w: PyTree, state_w: PyTree, keys: Array
                       ) -> tuple[PyTree, PyTree, Array]:
    """``C`` over a stack of rows: ``(messages, states, bits float32[W])``."""
    if is_stateful(compressor):
        messages, state_w, bits = compressor.step_rows(v_w, state_w, keys)
    else:
        messages, bits = jax.vmap(compressor)(v_w, keys)
    return messages, state_w, jnp.asarray(bits, jnp.float32)


def error_feedback(compressor: Compressor, grads_w: PyTree, memory_w: Memory, keys: Array,
                   send: Array) -> tuple[PyTree, Memory, Array]:
    r"""One compression step of ``W`` rows with their memories: the one implementation.

    With :math:`g` the rows' gradients (after the compressor's ``prepare``, if any):

    .. math:: \text{EF14: } v = g + e,\ m = C(v),\ e \leftarrow v - m; \qquad
              \text{EF21: } m = C(g - h),\ h \leftarrow h + m; \qquad
              \text{none: } m = C(g)

    Rows that do not send keep their whole memory (state included). EF14 conserves mass for
    the rows that send: :math:`m + e' = e + g` (bitwise in the mask layout, where every
    entry of :math:`v` goes to one side; up to the rounding of :math:`v - m` in the dense
    layout).

    Args:
      compressor: any compressor; a :class:`MaskCompressor` needs the mask layout there.
      grads_w: ``[W, ...]`` gradients (step folded in, where the algorithm does so).
      memory_w: the rows' :class:`Memory` (from :func:`init_memory`, rows taken as needed).
      keys: ``[W]`` PRNG keys.
      send: bool ``[W]``, the rows whose memory advances.

    Returns:
      ``(messages, memory, bits)``: ``messages`` ``[W, ...]`` are the fresh messages of the
      rows that send; a row that does not send gets its last message in the mask layout (it
      is rebuilt anyway) and an unspecified one otherwise (callers select); ``bits``
      float32 ``[W]`` is the size of the fresh messages.

    References: Stich, Cordonnier, Jaggi, "Sparsified SGD with memory", NeurIPS 2018
    (arXiv 1809.07599); Aji & Heafield, EMNLP 2017 (arXiv 1704.05021); Seide et al.,
    Interspeech 2014 (1-bit SGD's error feedback); Richtárik, Sokolov, Fatkhullin, "EF21",
    NeurIPS 2021 (arXiv 2106.05203), Algorithm 1.
    """
    if memory_w.masked:
        if not isinstance(compressor, MaskCompressor):
            raise ValueError("error_feedback: a mask-layout memory needs a MaskCompressor")
        messages, sent, selection, bits = mask_error_feedback(
            compressor, grads_w, memory_w.sent, memory_w.selection, keys, send)
        return messages, memory_w._replace(sent=sent, selection=selection), bits
    state = memory_w.state
    if is_stateful(compressor):
        grads_w, state = compressor.prepare_rows(grads_w, state)
    rule = memory_w.rule
    if rule == "ef14":
        v = jax.tree.map(jnp.add, memory_w.error, grads_w)
    elif rule == "ef21":
        v = jax.tree.map(jnp.subtract, grads_w, memory_w.estimate)
    else:
        v = grads_w
    messages, state, bits = compress_rows_once(compressor, v, state, keys)
    new = memory_w._replace(state=select_rows(send, state, memory_w.state))
    if rule == "ef14":
        new = new._replace(error=select_rows(send, jax.tree.map(jnp.subtract, v, messages),
                                             memory_w.error))
    elif rule == "ef21":
        new = new._replace(estimate=select_rows(
            send, jax.tree.map(jnp.add, memory_w.estimate, messages), memory_w.estimate))
    return messages, new, bits
