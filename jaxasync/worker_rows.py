"""The row bundle of the worker-axis transforms: :class:`WorkerRows` (per-row gradients and
the decisions taken on them), the trace-time checks of a transform's inputs, and the
wrapping of stacked gradients (:func:`as_rows`). See :mod:`jaxasync.transforms` for the
contract."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from jaxasync.side_info import SIDE_INFO
from jaxasync.trees import dense_bits

PyTree = Any


class WorkerRows(NamedTuple):
    """Per-row gradients plus the decisions taken on them so far (all leading axis ``W``).

    Attributes:
      grads: pytree of ``[W, ...]`` gradients (or compressed messages).
      scale: float32[W] multiplier applied at aggregation (staleness scaling).
      applied: bool[W] the row enters the aggregate.
      uploaded: bool[W] the worker sent its gradient message (a communication round).
      rejected: bool[W] an acceptance rule refused the row.
      skipped: bool[W] a lazy rule let the worker skip its upload.
      dropped: bool[W] the row arrived staler than the ring holds and was dropped.
      bits_up: float32[W] bits the row sent worker -> server this step.
      bits_down: float32[W] bits the worker receives server -> worker this step.
    """

    grads: PyTree
    scale: Array
    applied: Array
    uploaded: Array
    rejected: Array
    skipped: Array
    dropped: Array
    bits_up: Array
    bits_down: Array


#: extra args with a leading row axis ``W`` (checked against the gradient rows)
ROW_ARGS = tuple(k for k, s in SIDE_INFO.items() if "[W" in s.shape)
#: of those, the ones shaped like the parameters after the row axis
TREE_ROW_ARGS = tuple(k for k, s in SIDE_INFO.items() if s.shape == "[W, ...]")


def _concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_inputs(updates: PyTree, params: PyTree | None, extra: dict) -> int:
    """Checks a worker-axis transform's inputs at trace time; returns ``W``.

    * every leaf of ``updates`` has the same leading row axis ``W``;
    * with ``params``: ``updates`` has the parameters' tree structure, each leaf
      ``[W, *param.shape]``;
    * every extra arg with a row axis (:data:`ROW_ARGS`) has ``W`` rows (pytree ones are
      shaped like the gradients);
    * ``staleness`` is non-negative, where it is concrete (not traced).

    Shapes are static, so this costs nothing per step. Raises ``ValueError`` naming the
    argument, its shape and the expected one.
    """
    leaves = jax.tree.leaves(updates)
    if not leaves:
        raise ValueError("worker-axis transform: the updates are empty; expected stacked "
                         "per-worker gradients [W, ...]")
    shapes = [jnp.shape(x) for x in leaves]
    if any(len(s) == 0 for s in shapes):
        raise ValueError(f"updates: a leaf of shape {shapes[0]} has no worker axis; expected "
                         "stacked per-worker gradients [W, ...]")
    w = shapes[0][0]
    if any(s[0] != w for s in shapes):
        axes = sorted({s[0] for s in shapes})
        raise ValueError(f"updates: leaves have different worker axes {axes}; expected one W "
                         "for every leaf")
    if params is not None:
        _check_tree("updates", updates, params, w)
    for name in ROW_ARGS:
        value = extra.get(name)
        if value is None:
            continue
        if name in TREE_ROW_ARGS:
            _check_tree(name, value, params if params is not None else
                        jax.tree.map(lambda g: g[0], updates), w)
            continue
        shape = jnp.shape(value)
        if len(shape) != 1 or shape[0] != w:
            raise ValueError(f"{name}: shape {tuple(shape)}; expected ({w},), one entry per "
                             f"gradient row (W={w})")
    tau = extra.get("staleness")
    if tau is not None and _concrete(tau) and np.any(np.asarray(tau) < 0):
        raise ValueError(f"staleness={np.asarray(tau).tolist()}: must be >= 0")
    return w


def _check_tree(name: str, rows: PyTree, params: PyTree, w: int) -> None:
    if jax.tree.structure(rows) != jax.tree.structure(params):
        raise ValueError(f"{name}: tree structure {jax.tree.structure(rows)} does not match "
                         f"the parameters' {jax.tree.structure(params)}")
    for r, p in zip(jax.tree.leaves(rows), jax.tree.leaves(params), strict=True):
        want = (w,) + tuple(jnp.shape(p))
        if tuple(jnp.shape(r)) != want:
            raise ValueError(f"{name}: a leaf of shape {tuple(jnp.shape(r))}; expected {want} "
                             f"(W={w} rows of the parameter's shape {tuple(jnp.shape(p))})")


def as_rows(updates: PyTree | WorkerRows, mask: Array | None = None,
            params: PyTree | None = None, extra: dict | None = None) -> WorkerRows:
    """Wraps stacked gradients ``[W, ...]`` into :class:`WorkerRows` (idempotent).

    The first worker-axis transform of a chain does the wrapping, after checking its inputs
    (:func:`check_inputs`; pass ``params`` and the other extra args). Defaults: every
    unmasked row applied and uploaded as a dense float32 message (``32 d`` bits up) and
    answered with the dense model (``32 d`` bits down). A masked (dropped) row is not
    applied; it costs nothing up (a parameter server checks the version tag before the
    payload) and the model down.
    """
    if isinstance(updates, WorkerRows):
        return updates
    w = check_inputs(updates, params, {**(extra or {}), "mask": mask})
    live = jnp.ones((w,), bool) if mask is None else jnp.asarray(mask, bool)
    d_bits = float(dense_bits(updates, leading_axes=1))
    false = jnp.zeros((w,), bool)
    return WorkerRows(
        grads=updates,
        scale=jnp.ones((w,), jnp.float32),
        applied=live,
        uploaded=live,
        rejected=false,
        skipped=false,
        dropped=~live,
        bits_up=jnp.where(live, d_bits, 0.0).astype(jnp.float32),
        bits_down=jnp.full((w,), d_bits, jnp.float32),
    )


def empty_rows(w: int) -> WorkerRows:
    """Decisions of ``w`` rows before any update: nothing applied, nothing sent."""
    false = jnp.zeros((w,), bool)
    zero = jnp.zeros((w,), jnp.float32)
    return WorkerRows((), zero, false, false, false, false, false, zero, zero)
