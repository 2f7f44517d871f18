"""The worker-axis transforms that act on each row: staleness scaling
(:func:`scale_by_staleness`), acceptance tests (:func:`accept_if`) and compression with
per-worker memories (:func:`compress_rows`), with the helpers that build one from a
function of the rows. See :mod:`jaxasync.transforms` for the contract."""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

from jaxasync.side_info import SIDE_INFO
from jaxasync.trees import dense_bits, row_norms, select_rows
from jaxasync.worker_rows import WorkerRows, _concrete, as_rows

PyTree = Any


def needs_extra(where: str, *names: str) -> Callable:
    """Decorates an ``update_fn`` that requires the extra args ``names``: a call without one
    raises ``ValueError`` naming it and its shape (instead of a ``TypeError`` about a
    missing keyword argument from inside)."""

    def wrap(update_fn: Callable) -> Callable:
        @functools.wraps(update_fn)
        def call(updates, state, params=None, **kw):
            missing = next((n for n in names if kw.get(n) is None), None)
            if missing is not None:
                shape = f" ({SIDE_INFO[missing].shape})" if missing in SIDE_INFO else ""
                raise ValueError(f"{missing}: missing; {where} needs the extra arg {missing}"
                                 f"{shape}: pass {missing}=... to update (the simulator does)")
            return update_fn(updates, state, params, **kw)

        return call

    return wrap


def _row_transform(fn: Callable[..., WorkerRows]) -> optax.GradientTransformationExtraArgs:
    """A stateless worker-axis transform from ``fn(rows, params, **extra) -> rows`` (its
    keyword-only arguments without a default are required extra args)."""
    required = [p.name for p in inspect.signature(fn).parameters.values()
                if p.kind is p.KEYWORD_ONLY and p.default is p.empty]

    def init_fn(params):
        del params
        return optax.EmptyState()

    @needs_extra(fn.__qualname__.split(".")[0], *required)
    def update_fn(updates, state, params=None, *, mask=None, **extra):
        return fn(as_rows(updates, mask, params, extra), params, **extra), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_staleness(scaler: Callable[[Array], Array]) -> optax.GradientTransformationExtraArgs:
    r"""Multiplies each row's step by ``scaler(tau_i)``.

    Extra args: ``staleness`` (int32[W]). With :math:`\tau = 0` every scaler of
    :mod:`jaxasync.rules` returns 1, so this is the identity on fresh gradients.

    Example (staleness-aware ASGD)::

        tx = optax.chain(scale_by_staleness(rules.inverse_staleness),
                         aggregate("mean"), optax.sgd(0.1))
    """

    def fn(rows, params, *, staleness, **extra):
        del params, extra
        factor = _rule_output(scaler, (staleness,), rows.scale.shape[0], "scale_by_staleness",
                              dtype="float")
        return rows._replace(scale=rows.scale * factor.astype(jnp.float32))

    return _row_transform(fn)


def _rule_output(rule: Callable[..., Array], args: Sequence[Array], w: int, where: str,
                 dtype: str = "bool", scalar: bool = False) -> Array:
    """``rule(*args)``, checked at trace time to be ``dtype[W]`` (or a scalar if declared)."""
    out = jnp.asarray(rule(*args))
    name = getattr(rule, "__name__", "rule")
    kind_ok = (out.dtype == jnp.bool_) if dtype == "bool" else jnp.issubdtype(out.dtype,
                                                                             jnp.floating)
    shape_ok = out.shape == (w,) or (scalar and out.shape == ())
    if not (kind_ok and shape_ok):
        want = f"{dtype}[{w}]" + (" or a scalar" if scalar else "")
        raise ValueError(f"{where}: rule {name!r} returned {out.dtype}{list(out.shape)}; it "
                         f"must return {want} (one {'decision' if dtype == 'bool' else 'factor'}"
                         f" per row, W={w})")
    return jnp.broadcast_to(out, (w,))


def accept_if(
    rule: Callable[..., Array],
    inputs: Sequence[str] = ("grad_norm",),
    *,
    probe_bits: float = 0.0,
    upload_after_accept: bool = False,
    scalar: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Applies a row only if ``rule(*inputs)`` is True; rejected rows contribute nothing.

    Args:
      rule: a pure function of the named inputs returning ``bool[W]`` (checked at trace time:
        a float or a wrong shape is a ``ValueError``, never a silent cast or broadcast).
      inputs: the quantities passed to ``rule`` in order: ``"grad_norm"`` (computed
        from the rows), or the name of any extra arg (``"drift_norm"``,
        ``"staleness"``, ``"update_norms"``...).
      probe_bits: bits the worker sends before the decision (CE-ASGD: 32, the norm).
      upload_after_accept: the gradient itself is sent only when accepted (CE-ASGD);
        otherwise it was sent before the decision (PickySGD decides on arrival).
      scalar: the rule returns one decision for all rows (a ``bool`` scalar), broadcast.

    Rejections are counted by :func:`aggregate` (``rejections``).
    """

    def fn(rows, params, **extra):
        del params
        args = []
        for name in inputs:
            if name == "grad_norm":
                args.append(row_norms(rows.grads))
            elif name in extra:
                args.append(extra[name])
            else:
                raise ValueError(f"accept_if input {name!r}: not supplied as an extra arg")
        ok = _rule_output(rule, args, rows.scale.shape[0], "accept_if", scalar=scalar)
        live = rows.applied
        applied = live & ok
        rejected = rows.rejected | (live & ~ok)
        if upload_after_accept:
            uploaded = rows.uploaded & ok
            bits_up = jnp.where(live, probe_bits + jnp.where(ok, rows.bits_up, 0.0), rows.bits_up)
        else:
            uploaded = rows.uploaded
            bits_up = jnp.where(live, probe_bits + rows.bits_up, rows.bits_up)
        return rows._replace(applied=applied, rejected=rejected, uploaded=uploaded,
                             bits_up=bits_up.astype(jnp.float32))

    return _row_transform(fn)


class CompressState(NamedTuple):
    """State of :func:`compress_rows`: the memories, one per worker (a
    :class:`jaxasync.compress.Memory` with leading axis ``M``: error feedback's residuals and a
    stateful compressor's state; ``None`` when there is neither)."""

    memory: Any = None

    def residual(self) -> PyTree:
        """The residuals :math:`e_w` (``[M, ...]``), however they are kept."""
        return self.memory.residual()


def _compress_lib():
    # (imported when first used: jaxasync.compress imports jaxasync.trees, not this module,
    # but keeping it lazy lets this module load without jax's compile-time constants)
    return importlib.import_module("jaxasync.compress")


def compress_rows(
    compressor: Callable[[PyTree, Array], tuple[PyTree, Array]],
    *,
    error_feedback: bool | str = False,
    num_workers: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Compresses each applied row; optionally with error feedback.

    Without memory: :math:`m_i = C(g_i)`. With error feedback
    (:func:`jaxasync.compress.error_feedback`): :math:`v = e_w + g_i`, :math:`m_i = C(v)`,
    :math:`e_w \leftarrow v - m_i`, where :math:`w` is the row's worker. A stateful compressor
    (:class:`jaxasync.compress.Stateful`: PowerSGD, DGC, signum...) keeps its state per worker
    in the same memories, with or without error feedback. The row's uplink cost becomes the
    message size the compressor reports.

    Args:
      compressor: ``(tree, key) -> (decompressed_tree, bits)`` for one worker
        (see :mod:`jaxasync.compress`).
      error_feedback: keep a residual per worker (True, or ``"ef14"``); ``"ef21"``: EF21's
        Markov compressor instead, :math:`m_i = C(g_i - h_w)`, :math:`h_w \leftarrow h_w + m_i`
        (what :func:`jaxasync.markov.ef21` sends).
      num_workers: M; the memories have a leading ``M`` axis indexed by the
        ``worker_ids`` extra arg (required with error feedback or a stateful compressor).
        Without worker ids, rows are taken to be workers ``0..W-1`` in order.

    Extra args: ``key`` (PRNG key, optional), ``worker_ids`` (int32[W], optional).

    References: Stich, Cordonnier, Jaggi, NeurIPS 2018 (arXiv 1809.07599); Aji & Heafield,
    EMNLP 2017 (arXiv 1704.05021).
    """
    lib = _compress_lib()

    # memories per worker: error feedback's, and a stateful compressor's state (PowerSGD's Q,
    # DGC's momentum...), both carried by the one error_feedback step
    if error_feedback not in (False, True, "ef14", "ef21"):
        raise ValueError(f"compress_rows: error_feedback={error_feedback!r}: must be true, "
                         "false, 'ef14' or 'ef21'")
    feedback = "ef14" if error_feedback is True else (error_feedback or None)
    keeps = feedback is not None or lib.is_stateful(compressor)

    def init_fn(params):
        if not keeps:
            return CompressState()
        if num_workers is None:
            raise ValueError("compress_rows(error_feedback=True) or a stateful compressor "
                             "needs num_workers")
        return CompressState(lib.init_memory(compressor, params, num_workers, feedback))

    def update_fn(updates, state, params=None, *, mask=None, key=None, worker_ids=None, **extra):
        rows = as_rows(updates, mask, params, {**extra, "worker_ids": worker_ids})
        w = rows.scale.shape[0]
        keys = jax.random.split(jax.random.PRNGKey(0) if key is None else key, w)
        live = rows.uploaded
        if not keeps:
            msg, bits = jax.vmap(compressor)(rows.grads, keys)
            new_state = state
        else:
            msg, memory, bits = _with_memory(lib, compressor, rows.grads, state.memory, keys,
                                             live, worker_ids, num_workers)
            new_state = CompressState(memory)
        msg = select_rows(live, msg, rows.grads)
        bits_up = jnp.where(live, rows.bits_up - _dense_row_bits(rows) + bits, rows.bits_up)
        return rows._replace(grads=msg, bits_up=bits_up.astype(jnp.float32)), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _dense_row_bits(rows: WorkerRows) -> float:
    return float(dense_bits(rows.grads, leading_axes=1))


def _check_worker_ids(w: int, worker_ids: Array | None, num_workers: int) -> None:
    """Trace-time checks of the rows' workers against the memories of ``num_workers``."""
    if worker_ids is None and w > num_workers:
        # rows 0..W-1 are workers 0..W-1: memories past num_workers would be clamped
        # on read and lost on write, silently
        raise ValueError(f"compress_rows: {w} rows without worker_ids, but "
                         f"memories for num_workers={num_workers}; give num_workers "
                         f">= {w}")
    if worker_ids is not None and _concrete(worker_ids) and np.any(
            (np.asarray(worker_ids) < 0) | (np.asarray(worker_ids) >= num_workers)):
        # a gather clamps an index out of range, a scatter drops it: silently
        raise ValueError(f"worker_ids={np.asarray(worker_ids).tolist()}: must be in "
                         f"[0, num_workers={num_workers})")


def _with_memory(lib, compressor: Callable, grads: PyTree, memory: Any, keys: Array,
                 live: Array, worker_ids: Array | None, num_workers: int):
    """The rows compressed with their workers' memories (:func:`jaxasync.compress.error_feedback`):
    ``(messages, every worker's memories after the step, bits)``."""
    w = keys.shape[0]
    _check_worker_ids(w, worker_ids, num_workers)
    ids = jnp.arange(w) if worker_ids is None else worker_ids
    # every worker's memory, in order: no gather or scatter where rows = workers
    every = worker_ids is None and w == num_workers
    mem_w = memory if every else jax.tree.map(lambda e: e[ids], memory)
    msg, mem_w, bits = lib.error_feedback(compressor, grads, mem_w, keys, live)
    return msg, mem_w if every else jax.tree.map(
        lambda e, n: e.at[ids].set(n), memory, mem_w), bits
