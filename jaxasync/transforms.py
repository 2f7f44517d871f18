"""Optax gradient transformations over a leading worker axis.

Shape letters used in names: ``W`` = rows in this step (the arriving workers),
``M`` = all workers, ``D`` = ring-buffer depth, ``P`` = parameters.

The contract
------------
A *worker-axis* transform receives updates whose leaves carry a leading axis ``W``
(one row per arriving worker: ``grads_w``). The first worker-axis transform of a
chain wraps them in :class:`WorkerRows`, which carries, next to the gradients, what
the rules decided for each row (its step-size multiplier, whether it is applied,
whether it was uploaded, rejected or skipped, and the bits it cost). Later
worker-axis transforms refine these fields; :func:`aggregate` reduces the worker axis
to an ordinary update and keeps the communication counters in its state. Any
ordinary optax transform (``optax.sgd``, ``optax.adam``...) can follow it.

Side information arrives as keyword extra args (``optax.GradientTransformationExtraArgs``):
``staleness`` (int32[W]), ``mask`` (bool[W], False: dropped as too stale), ``worker_ids``
(int32[W], or None when the rows are the workers 0..W-1 in order), ``key``, and what an
algorithm declares it needs: ``drift_norm``, ``drift``, ``update_norms`` (float32[D]),
``ref_grads``, ``ref_grad_dist``, ``loss``. :data:`jaxasync.side_info.SIDE_INFO` is the one
table of them, with their shapes and meaning; the first worker-axis transform of a chain
checks every row-shaped one against the gradient rows at trace time (:func:`check_inputs`).

The state of every transform here has its structure, shapes and dtypes fixed at ``init``
(optax's contract): ``lax.scan`` and ``lax.cond`` over updates work from ``tx.init(params)``.

Transforms ignore the extra args they do not use (``optax.chain`` filters them).

Where things are: the row bundle and its checks in :mod:`jaxasync.worker_rows`; the per-row
transforms (staleness scaling, acceptance, compression) in :mod:`jaxasync.row_transforms`;
here, the aggregation and its counters, worker control and reading a state. Every name is
importable from here.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

# the row bundle and the per-row transforms live in their own modules (re-exported here)
from jaxasync.row_transforms import (  # noqa: F401  (re-exported)
    CompressState,
    accept_if,
    compress_rows,
    needs_extra,
    scale_by_staleness,
)
from jaxasync.trees import dense_bits, num_params, row_norms, tree_sq_dist  # noqa: F401
from jaxasync.worker_rows import (  # noqa: F401  (re-exported)
    ROW_ARGS,
    TREE_ROW_ARGS,
    WorkerRows,
    as_rows,
    check_inputs,
    empty_rows,
)

PyTree = Any

__all__ = [
    "AggregateState", "CommCounts", "CompressState", "Control", "WorkerRows", "accept_if",
    "aggregate", "control", "worker_control",
    "algorithm_metrics", "as_rows", "communication", "compress_rows", "dense_bits",
    "find_states", "keep_decisions", "last_decisions", "num_params", "row_norms", "row_sum",
    "scale_by_staleness", "total_bits", "tree_sq_dist",
]


# ----------------------------------------------------------------------------- counters


class CommCounts(NamedTuple):
    """Cumulative communication counters (kept in :class:`AggregateState`).

    Bit totals are float32 with Kahan compensation (``*_c``), so adding ``32`` to
    ``1e12`` is not lost.
    """

    arrivals: Array
    applied: Array
    uploads: Array
    skips: Array
    rejections: Array
    dropped: Array
    bits_up: Array
    bits_up_c: Array
    bits_down: Array
    bits_down_c: Array

    @classmethod
    def zeros(cls) -> CommCounts:
        i = jnp.zeros((), jnp.int32)
        f = jnp.zeros((), jnp.float32)
        return cls(i, i, i, i, i, i, f, f, f, f)


def _kahan(total: Array, comp: Array, x: Array) -> tuple[Array, Array]:
    y = x - comp
    t = total + y
    return t, (t - total) - y


class AggregateState(NamedTuple):
    """State of :func:`aggregate`: cumulative counts and the last update's per-row decisions.

    ``last`` has a fixed number of rows ``R``, set at ``init`` (0 by default: decisions not
    kept; :func:`keep_decisions` sets ``R``), so the state's structure, shapes and dtypes never
    change across updates (``lax.scan``, ``lax.cond`` from ``tx.init`` work).
    """

    counts: CommCounts
    last: WorkerRows  # grads field is () (not kept): only the decisions, R rows


def _count(counts: CommCounts, rows: WorkerRows) -> CommCounts:
    s = lambda b: jnp.sum(b.astype(jnp.int32))
    bu, bu_c = _kahan(counts.bits_up, counts.bits_up_c, jnp.sum(rows.bits_up))
    bd, bd_c = _kahan(counts.bits_down, counts.bits_down_c, jnp.sum(rows.bits_down))
    return CommCounts(
        arrivals=counts.arrivals + s(~rows.dropped),
        applied=counts.applied + s(rows.applied),
        uploads=counts.uploads + s(rows.uploaded),
        skips=counts.skips + s(rows.skipped),
        rejections=counts.rejections + s(rows.rejected),
        dropped=counts.dropped + s(rows.dropped),
        bits_up=bu, bits_up_c=bu_c, bits_down=bd, bits_down_c=bd_c,
    )


AGGREGATIONS = ("mean", "sum", "weighted")


#: up to this many rows, ``aggregate(..., fuse_rows=True)`` adds them one by one
UNROLL_ROWS = 32


def row_sum(weight: Array, rows: Array, *, fuse_rows: bool = False) -> Array:
    r""":math:`\sum_i w_i r_i` over the leading (row) axis of ``rows``, ``weight`` [W].

    ``jnp.tensordot`` by default. With ``fuse_rows``, no device mesh and at most
    :data:`UNROLL_ROWS` rows, the rows are added one by one in order, a single elementwise
    pass: XLA then fuses whatever produces the rows into it (a top-k message is its stored
    vector under a mask) where the dot would first write every row out and read it back; on
    SASG's MNIST FC protocol ([10, 407,050] messages) the step is ~5% shorter. Only for rows
    that are exact copies of stored entries, as mask-form messages are: on this project's
    CPU the sum is then bitwise what the dot gave (SASG and Sparse, the 5-seed
    ``sasg_mnist_subset`` leaderboard entry: identical metrics). Rows computed by arithmetic
    (``alpha * g``) would be fused too, and XLA may reassociate and contract that arithmetic
    with the sum (FMA), which changes the last bits. On a mesh the rows are sharded, and the
    dot lets the partitioner sum each device's rows locally before one all-reduce.
    """
    n = rows.shape[0]
    if (not fuse_rows or n == 0 or n > UNROLL_ROWS
            or not jax.sharding.get_abstract_mesh().empty):
        return jnp.tensordot(weight, rows, axes=1)
    total = weight[0] * rows[0]
    for i in range(1, n):
        total = total + weight[i] * rows[i]
    return total


def aggregate(how: str = "mean", *, fuse_rows: bool = False
              ) -> optax.GradientTransformationExtraArgs:
    r"""Reduces the worker axis: the end of the worker-axis part of a chain.

    With :math:`a_i` = applied, :math:`s_i` = scale and :math:`g_i` the row:

    * ``"mean"``: :math:`\sum_i a_i s_i g_i / \max(1, \sum_i a_i)` (mean over applied rows);
    * ``"sum"``: :math:`\sum_i a_i s_i g_i` (SASG / LAG servers sum messages);
    * ``"weighted"``: :math:`\sum_i a_i s_i g_i / \sum_i a_i s_i` (normalised weights).

    Extra args: ``mask`` (bool[W], optional) when the rows arrive unwrapped.

    ``fuse_rows``: add the rows in one fused pass (see :func:`row_sum`), for rows that are
    exact copies of stored entries (mask-form top-k messages).

    The state keeps :class:`CommCounts` (read them with :func:`communication`) and, where
    :func:`keep_decisions` asked for them, the last update's per-row decisions
    (:func:`last_decisions`).
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"aggregate how={how!r}: unknown; choose one of {', '.join(AGGREGATIONS)}")

    def init_fn(params):
        del params
        return AggregateState(counts=CommCounts.zeros(), last=empty_rows(0))

    def update_fn(updates, state, params=None, *, mask=None, **extra):
        rows = as_rows(updates, mask, params, extra)
        kept = state.last.scale.shape[0]
        w = rows.scale.shape[0]
        if kept not in (0, w):
            raise ValueError(f"aggregate: {w} rows, but the state keeps the decisions of "
                             f"{kept} (keep_decisions(tx, rows={kept})); build it with "
                             f"rows={w}")
        weight = jnp.where(rows.applied, rows.scale, 0.0)
        if how == "mean":
            denom = jnp.maximum(1.0, jnp.sum(rows.applied.astype(jnp.float32)))
        elif how == "weighted":
            total = jnp.sum(weight)
            denom = jnp.where(total > 0, total, 1.0)
        else:
            denom = jnp.ones((), jnp.float32)
        out = jax.tree.map(
            lambda g: row_sum(weight.astype(g.dtype), g, fuse_rows=fuse_rows)
            / denom.astype(g.dtype), rows.grads)
        last = rows._replace(grads=()) if kept else state.last
        return out, AggregateState(counts=_count(state.counts, rows), last=last)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def keep_decisions(tx: optax.GradientTransformationExtraArgs, rows: int
                   ) -> optax.GradientTransformationExtraArgs:
    """``tx`` whose state keeps the per-row decisions of its last update (``rows`` rows).

    ``init`` cannot know how many rows an update will bring, so :func:`aggregate` keeps no
    per-row decisions by default (its counters are always kept). A loop that needs them
    (who uploaded, who was rejected: :func:`last_decisions`) wraps the algorithm once;
    the state still has a fixed structure, and an update with another number of rows is a
    trace-time error::

        tx = ja.keep_decisions(ja.sasg(learning_rate=0.005, num_workers=10), rows=10)
    """
    if isinstance(rows, bool) or not isinstance(rows, int | np.integer) or rows < 1:
        raise ValueError(f"keep_decisions: rows={rows!r}: must be an integer >= 1")

    def fix(node):
        if isinstance(node, AggregateState):
            return node._replace(last=empty_rows(int(rows)))
        return node

    def init_fn(params):
        return jax.tree.map(fix, tx.init(params), is_leaf=lambda x: isinstance(x, AggregateState))

    return optax.GradientTransformationExtraArgs(init_fn, tx.update)


# ----------------------------------------------------------------------------- worker control


class Control(NamedTuple):
    r"""What a server decides about the workers' computations, besides the rows it applies.

    A transform that stops, holds or times out computations, or that buffers rows over several
    steps, keeps one of these in its state (fixed shapes, ``M`` workers); the simulator reads it
    after each update (:func:`worker_control`) and carries it out. Without one, the simulator
    does what plain asynchronous SGD does: the iterate moves when a row is applied, the
    arriving workers start again at the new iterate, nobody else is interrupted.

    ``restart``, ``hold`` and ``timeout`` may be None: never (see :func:`control`).

    Attributes:
      advance: bool[] the server iterate moves this step (a new version). A buffering server
        (Rennala SGD) applies rows to its buffer without moving the iterate.
      restart: bool[M] these workers drop what they compute and start again at the new
        iterate now (Ringmaster ASGD's stops); the dropped work counts as wasted.
      hold: bool[M] these workers compute nothing after this step (their current work, if
        any, is dropped and counted as wasted) until a later step restarts them (MindFlayer's
        finished trial budget, Naive Optimal ASGD's unused workers). ``hold`` wins over
        ``restart``.
      timeout: float32[M] slack :math:`s_i`: a computation that has not ended after the
        worker's fixed time plus :math:`s_i` is stopped there and arrives without a gradient
        (masked); ``inf``: never (MindFlayer's clipping times :math:`t_i = \tau_i + s_i`).
    """

    advance: Array
    restart: Array
    hold: Array
    timeout: Array


def control(num_workers: int | None = None, *, advance: Array | bool = True,
            restart: Array | bool | None = None, hold: Array | bool | None = None,
            timeout: Array | float | None = None) -> Control:
    """A :class:`Control`; per-worker fields are broadcast to ``num_workers``.

    A field left None is "never" (no restart, no hold, no timeout) and fixed so at trace
    time: the simulator then does no per-worker work for it (a Rennala step stays O(1) in M).
    """
    def per_worker(x, dtype):
        if x is None:
            return None
        if num_workers is None:
            raise ValueError("control: num_workers is required for per-worker decisions")
        return jnp.broadcast_to(jnp.asarray(x, dtype), (num_workers,))

    return Control(advance=jnp.asarray(advance, bool), restart=per_worker(restart, bool),
                   hold=per_worker(hold, bool), timeout=per_worker(timeout, jnp.float32))


def worker_control(opt_state: PyTree) -> Control | None:
    """The :class:`Control` an algorithm's state exposes, or None (at most one per chain)."""
    states = find_states(opt_state, Control)
    if len(states) > 1:
        raise ValueError(f"expected at most one Control in the chain, found {len(states)}")
    return states[0] if states else None


# ----------------------------------------------------------------------------- reading state


def _nodes(tree: PyTree):
    """Every node of an optimizer-state tree (NamedTuples, tuples, lists, dicts), pre-order."""
    yield tree
    if isinstance(tree, tuple | list):
        for child in tree:
            yield from _nodes(child)
    elif isinstance(tree, dict):
        for child in tree.values():
            yield from _nodes(child)


def find_states(opt_state: PyTree, cls: type) -> list:
    """All state objects of type ``cls`` inside a (possibly chained) optimizer state."""
    return [node for node in _nodes(opt_state) if isinstance(node, cls)]


_find = find_states


def _counts(opt_state: PyTree) -> CommCounts:
    states = _find(opt_state, AggregateState)
    if len(states) != 1:
        raise ValueError(f"expected exactly one aggregate() in the chain, found {len(states)}")
    return states[0].counts


def communication(opt_state: PyTree) -> dict[str, Array]:
    """The communication counters of an algorithm's state, as a flat dict.

    Keys: ``arrivals, applied, uploads, skips, rejections, dropped`` (int32) and
    ``bits_up, bits_down`` (float32; :func:`total_bits` gives them exactly, as float64).
    Works on a single state or a stacked one (leading seed axis).
    """
    c = _counts(opt_state)
    return {
        "arrivals": c.arrivals, "applied": c.applied, "uploads": c.uploads, "skips": c.skips,
        "rejections": c.rejections, "dropped": c.dropped,
        "bits_up": c.bits_up, "bits_down": c.bits_down,
    }


def bit_parts(opt_state: PyTree) -> dict[str, Array]:
    """The bit counters as high and low float32 parts (``bits_up``, ``bits_up_lo``...):
    ``float64(hi) + float64(lo)`` is the exact total. For the simulator's metrics."""
    c = _counts(opt_state)
    return {"bits_up": c.bits_up, "bits_up_lo": -c.bits_up_c,
            "bits_down": c.bits_down, "bits_down_lo": -c.bits_down_c}


def total_bits(opt_state: PyTree, key: str = "bits_up") -> float:
    """The exact bit total (``"bits_up"`` or ``"bits_down"``) of a state, as a Python float
    (host side: the float32 counter plus its Kahan low-order part, in float64)."""
    parts = jax.device_get(bit_parts(opt_state))
    return float(np.float64(parts[key]) + np.float64(parts[key + "_lo"]))


def algorithm_metrics(opt_state: PyTree) -> dict[str, Array]:
    """Counters that transforms expose: every state object with a ``metrics()`` method.

    A transform that wants a counter reported per run (forced uploads, server work per
    decision...) gives its state NamedTuple a ``metrics(self) -> dict[str, Array]``
    method; the simulator merges the dicts into each evaluation's metrics. Keys must
    be unique across the chain.
    """
    out: dict[str, Array] = {}
    for node in _nodes(opt_state):
        if isinstance(node, tuple) and callable(getattr(node, "metrics", None)):
            for k, v in node.metrics().items():
                if k in out:
                    raise ValueError(f"algorithm metric {k!r} reported twice in one chain")
                out[k] = v
    return out


def last_decisions(opt_state: PyTree) -> WorkerRows:
    """The per-row decisions of the last update (``grads`` is empty).

    Raises:
      ValueError: the state keeps no decisions (wrap the algorithm in
        :func:`keep_decisions`).
    """
    states = _find(opt_state, AggregateState)
    if len(states) != 1:
        raise ValueError(f"expected exactly one aggregate() in the chain, found {len(states)}")
    last = states[0].last
    if last.scale.shape[-1] == 0:
        raise ValueError("last_decisions: this state keeps no per-row decisions; build the "
                         "algorithm with ja.keep_decisions(tx, rows=W)")
    return last
