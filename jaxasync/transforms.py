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

Side information arrives as keyword extra args (``optax.GradientTransformationExtraArgs``),
each an array with a leading ``W`` axis unless said otherwise:

============== ======================= ===============================================
name           shape                   meaning
============== ======================= ===============================================
``staleness``  int32[W]                delay tau of each row (server versions behind)
``mask``       bool[W]                 row is a real arrival (False: dropped as too stale)
``worker_ids`` int32[W] or None         which worker each row comes from; None: the rows
                                       are the workers 0..W-1 in order (synchronous rounds)
``drift_norm`` float32[W]              ||x_t - x_{t-tau}||, exact, from stored versions
``drift``      pytree [W, ...]         x_t - x_{t-tau} (DC-ASGD)
``update_norms`` float32[D]            ||x_{t-j} - x_{t-j-1}||, j = 0..D-1 (newest first)
``ref_grads``  pytree [W, ...]         gradient at the worker's last-upload iterate, same minibatch
``ref_grad_dist`` float32[W]           ||g - ref_grads||^2 per row, without forming ``ref_grads``
``key``        PRNG key                randomness for stochastic compressors
============== ======================= ===============================================

Transforms ignore the extra args they do not use (``optax.chain`` filters them).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import Array

PyTree = Any


# ----------------------------------------------------------------------------- the row bundle


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


def num_params(tree: PyTree, leading_axes: int = 0) -> int:
    """Number of scalars in ``tree``, not counting ``leading_axes`` batch axes."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        n = 1
        for s in jnp.shape(leaf)[leading_axes:]:
            n *= s
        total += n
    return total


def dense_bits(tree: PyTree, leading_axes: int = 0) -> int:
    """Bits of a dense float32 message: ``32 * d``."""
    return 32 * num_params(tree, leading_axes)


def as_rows(updates: PyTree | WorkerRows, mask: Array | None = None) -> WorkerRows:
    """Wraps stacked gradients ``[W, ...]`` into :class:`WorkerRows` (idempotent).

    Defaults: every unmasked row applied and uploaded as a dense float32 message
    (``32 d`` bits up) and answered with the dense model (``32 d`` bits down). A
    masked (dropped) row is not applied; it costs nothing up (a parameter server
    checks the version tag before the payload) and the model down.
    """
    if isinstance(updates, WorkerRows):
        return updates
    leaves = jax.tree.leaves(updates)
    w = leaves[0].shape[0]
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


def row_norms(grads_w: PyTree) -> Array:
    """Euclidean norm of each row of a ``[W, ...]`` pytree: float32[W]."""
    sq = sum(jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), axis=1) for g in jax.tree.leaves(grads_w))
    return jnp.sqrt(sq)


def tree_sq_dist(a: PyTree, b: PyTree) -> Array:
    r""":math:`\|a - b\|^2` over all leaves of two pytrees of the same structure (a scalar)."""
    return sum(jnp.sum(jnp.square(u - v))
               for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _bcast(v: Array, leaf: Array) -> Array:
    """Reshapes a ``[W]`` vector to broadcast against a ``[W, ...]`` leaf."""
    return v.reshape(v.shape + (1,) * (leaf.ndim - 1)).astype(leaf.dtype)


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
    """State of :func:`aggregate`: cumulative counts and this step's per-row decisions."""

    counts: CommCounts
    last: WorkerRows  # grads field is () (not kept): only the decisions


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

    The state keeps :class:`CommCounts` and the last step's per-row decisions; read
    them with :func:`communication` and :func:`last_decisions`.
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"aggregate how={how!r}: unknown; choose one of {', '.join(AGGREGATIONS)}")

    def init_fn(params):
        del params
        return AggregateState(counts=CommCounts.zeros(), last=None)

    def update_fn(updates, state, params=None, *, mask=None, **extra):
        del params, extra
        rows = as_rows(updates, mask)
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
        last = rows._replace(grads=())
        return out, AggregateState(counts=_count(state.counts, rows), last=last)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def empty_rows(w: int) -> WorkerRows:
    """Decisions of ``w`` rows before any update: nothing applied, nothing sent."""
    false = jnp.zeros((w,), bool)
    zero = jnp.zeros((w,), jnp.float32)
    return WorkerRows((), zero, false, false, false, false, false, zero, zero)


def with_rows(opt_state: PyTree, w: int) -> PyTree:
    """Gives an initial state fixed per-row shapes (``W`` rows), for ``lax.scan``.

    ``init`` cannot know how many rows will arrive, so :func:`aggregate` starts with
    ``last=None``; a loop that needs a fixed state structure calls this once.
    """

    def fix(node):
        if isinstance(node, AggregateState) and node.last is None:
            return node._replace(last=empty_rows(w))
        return node

    return jax.tree.map(fix, opt_state, is_leaf=lambda x: isinstance(x, AggregateState))


# ----------------------------------------------------------------------------- row transforms


def _row_transform(fn: Callable[..., WorkerRows]) -> optax.GradientTransformationExtraArgs:
    """A stateless worker-axis transform from ``fn(rows, params, **extra) -> rows``."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, *, mask=None, **extra):
        return fn(as_rows(updates, mask), params, **extra), state

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
        return rows._replace(scale=rows.scale * scaler(staleness).astype(jnp.float32))

    return _row_transform(fn)


def accept_if(
    rule: Callable[..., Array],
    inputs: Sequence[str] = ("grad_norm",),
    *,
    probe_bits: float = 0.0,
    upload_after_accept: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Applies a row only if ``rule(*inputs)`` is True; rejected rows contribute nothing.

    Args:
      rule: a pure function of the named inputs returning bool[W].
      inputs: the quantities passed to ``rule`` in order: ``"grad_norm"`` (computed
        from the rows), or the name of any extra arg (``"drift_norm"``,
        ``"staleness"``, ``"update_norms"``...).
      probe_bits: bits the worker sends before the decision (CE-ASGD: 32, the norm).
      upload_after_accept: the gradient itself is sent only when accepted (CE-ASGD);
        otherwise it was sent before the decision (PickySGD decides on arrival).

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
        ok = jnp.asarray(rule(*args), bool)
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
    """Error-feedback memory, one per worker (``[M, ...]``; ``()`` without error feedback).

    Attributes:
      error: the residuals :math:`e_w`; ``()`` where ``sent`` holds them.
      sent: with a :class:`jaxasync.compress.MaskCompressor` (top-k): the vector
        :math:`v` each worker last compressed; its residual is the dropped entries.
      selection: the compressor's selection of ``sent`` (per leaf ``[M, 2]`` integers).
    """

    error: PyTree
    sent: PyTree = ()
    selection: PyTree = ()

    def memory(self) -> PyTree:
        """The residuals :math:`e_w` (``[M, ...]``), however they are kept."""
        if isinstance(self.selection, tuple) and not self.selection:
            return self.error
        return jax.vmap(_compress_lib().apply_selection)(self.sent, self.selection)[1]


def _compress_lib():
    # the module, not the ``compress`` transform below
    return importlib.import_module("jaxasync.compress")


def compress(
    compressor: Callable[[PyTree, Array], tuple[PyTree, Array]],
    *,
    error_feedback: bool = False,
    num_workers: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Compresses each applied row; optionally with error feedback.

    Without memory: :math:`m_i = C(g_i)`. With error feedback (Stich, Cordonnier,
    Jaggi, NeurIPS 2018, arXiv 1809.07599; Aji & Heafield 2017, arXiv 1704.05021):
    :math:`v = e_w + g_i`, :math:`m_i = C(v)`, :math:`e_w \leftarrow v - m_i`, where
    :math:`w` is the row's worker. The row's uplink cost becomes the message size
    the compressor reports.

    Args:
      compressor: ``(tree, key) -> (decompressed_tree, bits)`` for one worker
        (see :mod:`jaxasync.compress`).
      error_feedback: keep a residual per worker.
      num_workers: M; the residual has a leading ``M`` axis indexed by the
        ``worker_ids`` extra arg. Without it, rows are taken to be workers
        ``0..W-1`` in order.

    Extra args: ``key`` (PRNG key, optional), ``worker_ids`` (int32[W], optional).
    """

    # top-k: keep the compressed vector and its selection, not a dense residual (the
    # message is rebuilt from them, so one array less is read and written per step)
    masked = error_feedback and isinstance(compressor, _compress_lib().MaskCompressor)

    def init_fn(params):
        if not error_feedback:
            return CompressState(error=())
        if num_workers is None:
            raise ValueError("compress(error_feedback=True) needs num_workers")
        zeros = jax.tree.map(lambda p: jnp.zeros((num_workers,) + jnp.shape(p), p.dtype), params)
        if masked:
            return CompressState(error=(), sent=zeros, selection=jax.tree.map(
                lambda p: jnp.zeros((num_workers, 2), _compress_lib().selection_dtype(p)), params))
        return CompressState(error=zeros)

    def update_fn(updates, state, params=None, *, mask=None, key=None, worker_ids=None, **extra):
        del params, extra
        rows = as_rows(updates, mask)
        w = rows.scale.shape[0]
        keys = jax.random.split(jax.random.PRNGKey(0) if key is None else key, w)
        if error_feedback and worker_ids is None and w > num_workers:
            # rows 0..W-1 are workers 0..W-1: memories past num_workers would be clamped on
            # read and lost on write, silently
            raise ValueError(f"compress: {w} rows without worker_ids, but error memories for "
                             f"num_workers={num_workers}; give num_workers >= {w}")
        ids = jnp.arange(w) if worker_ids is None else worker_ids
        every = worker_ids is None and error_feedback and w == num_workers
        # the rows' memories (all of them, in order, without a gather where rows = workers)
        take = (lambda t: t) if every else (lambda t: jax.tree.map(lambda e: e[ids], t))
        put = ((lambda t, new: new) if every else
               (lambda t, new: jax.tree.map(lambda e, n: e.at[ids].set(n), t, new)))
        live = rows.uploaded
        keep = lambda new, old: jax.tree.map(
            lambda n, o: jnp.where(_bcast(live, n) > 0, n, o), new, old)
        new_state = state
        if masked:
            # The memory changes only for rows that actually sent a message.
            msg, sent_w, sel_w, bits = _compress_lib().mask_error_feedback(
                compressor, rows.grads, take(state.sent), take(state.selection), keys, live)
            new_state = CompressState(error=(), sent=put(state.sent, sent_w),
                                      selection=put(state.selection, sel_w))
        else:
            if error_feedback:
                err_w = take(state.error)
                v = jax.tree.map(jnp.add, err_w, rows.grads)
            else:
                v = rows.grads
            msg, bits = jax.vmap(compressor)(v, keys)
            if error_feedback:
                # The residual changes only for rows that actually sent a message.
                new_state = CompressState(error=put(state.error, keep(
                    jax.tree.map(jnp.subtract, v, msg), err_w)))
        msg = keep(msg, rows.grads)
        bits_up = jnp.where(live, rows.bits_up - _dense_row_bits(rows) + bits, rows.bits_up)
        return rows._replace(grads=msg, bits_up=bits_up.astype(jnp.float32)), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _dense_row_bits(rows: WorkerRows) -> float:
    return float(dense_bits(rows.grads, leading_axes=1))


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


def communication(opt_state: PyTree) -> dict[str, Array]:
    """The communication counters of an algorithm's state, as a flat dict.

    Keys: ``arrivals, applied, uploads, skips, rejections, dropped, bits_up,
    bits_down``, and ``bits_up_lo, bits_down_lo``: the low-order parts, so that
    ``float64(bits_up) + float64(bits_up_lo)`` is the exact total (:func:`total_bits`).
    Works on a single state or a stacked one (leading seed axis).
    """
    states = _find(opt_state, AggregateState)
    if len(states) != 1:
        raise ValueError(f"expected exactly one aggregate() in the chain, found {len(states)}")
    c = states[0].counts
    return {
        "arrivals": c.arrivals, "applied": c.applied, "uploads": c.uploads, "skips": c.skips,
        "rejections": c.rejections, "dropped": c.dropped,
        "bits_up": c.bits_up, "bits_down": c.bits_down,
        "bits_up_lo": -c.bits_up_c, "bits_down_lo": -c.bits_down_c,
    }


def total_bits(comm: dict, key: str = "bits_up") -> float:
    """The exact float64 bit total from :func:`communication`'s high and low parts."""
    import numpy as np

    return float(np.float64(comm[key]) + np.float64(comm[key + "_lo"]))


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
    """The per-row decisions of the last update (``grads`` is empty)."""
    states = _find(opt_state, AggregateState)
    if len(states) != 1:
        raise ValueError(f"expected exactly one aggregate() in the chain, found {len(states)}")
    return states[0].last
