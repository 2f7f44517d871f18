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
"""

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
from jaxasync.trees import dense_bits, num_params, row_norms, select_rows, tree_sq_dist

PyTree = Any

__all__ = [
    "AggregateState", "CommCounts", "CompressState", "WorkerRows", "accept_if", "aggregate",
    "algorithm_metrics", "as_rows", "communication", "compress_rows", "dense_bits",
    "find_states", "keep_decisions", "last_decisions", "num_params", "row_norms", "row_sum",
    "scale_by_staleness", "total_bits", "tree_sq_dist",
]


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


def empty_rows(w: int) -> WorkerRows:
    """Decisions of ``w`` rows before any update: nothing applied, nothing sent."""
    false = jnp.zeros((w,), bool)
    zero = jnp.zeros((w,), jnp.float32)
    return WorkerRows((), zero, false, false, false, false, false, zero, zero)


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


# ----------------------------------------------------------------------------- row transforms


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
    """State of :func:`compress_rows`: the error-feedback memories, one per worker
    (a :class:`jaxasync.compress.Memory` with leading axis ``M``; ``None`` without error
    feedback)."""

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
    error_feedback: bool = False,
    num_workers: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Compresses each applied row; optionally with error feedback.

    Without memory: :math:`m_i = C(g_i)`. With error feedback
    (:func:`jaxasync.compress.error_feedback`): :math:`v = e_w + g_i`, :math:`m_i = C(v)`,
    :math:`e_w \leftarrow v - m_i`, where :math:`w` is the row's worker. The row's uplink
    cost becomes the message size the compressor reports.

    Args:
      compressor: ``(tree, key) -> (decompressed_tree, bits)`` for one worker
        (see :mod:`jaxasync.compress`).
      error_feedback: keep a residual per worker.
      num_workers: M; the residual has a leading ``M`` axis indexed by the
        ``worker_ids`` extra arg. Without it, rows are taken to be workers
        ``0..W-1`` in order.

    Extra args: ``key`` (PRNG key, optional), ``worker_ids`` (int32[W], optional).

    References: Stich, Cordonnier, Jaggi, NeurIPS 2018 (arXiv 1809.07599); Aji & Heafield,
    EMNLP 2017 (arXiv 1704.05021).
    """
    lib = _compress_lib()

    def init_fn(params):
        if not error_feedback:
            return CompressState()
        if num_workers is None:
            raise ValueError("compress_rows(error_feedback=True) needs num_workers")
        return CompressState(lib.init_memory(compressor, params, num_workers))

    def update_fn(updates, state, params=None, *, mask=None, key=None, worker_ids=None, **extra):
        rows = as_rows(updates, mask, params, {**extra, "worker_ids": worker_ids})
        w = rows.scale.shape[0]
        keys = jax.random.split(jax.random.PRNGKey(0) if key is None else key, w)
        live = rows.uploaded
        if not error_feedback:
            msg, bits = jax.vmap(compressor)(rows.grads, keys)
            new_state = state
        else:
            if worker_ids is None and w > num_workers:
                # rows 0..W-1 are workers 0..W-1: memories past num_workers would be clamped
                # on read and lost on write, silently
                raise ValueError(f"compress_rows: {w} rows without worker_ids, but error "
                                 f"memories for num_workers={num_workers}; give num_workers "
                                 f">= {w}")
            if worker_ids is not None and _concrete(worker_ids) and np.any(
                    (np.asarray(worker_ids) < 0) | (np.asarray(worker_ids) >= num_workers)):
                # a gather clamps an index out of range, a scatter drops it: silently
                raise ValueError(f"worker_ids={np.asarray(worker_ids).tolist()}: must be in "
                                 f"[0, num_workers={num_workers})")
            ids = jnp.arange(w) if worker_ids is None else worker_ids
            # every worker's memory, in order: no gather or scatter where rows = workers
            every = worker_ids is None and w == num_workers
            mem_w = state.memory if every else jax.tree.map(lambda e: e[ids], state.memory)
            msg, mem_w, bits = lib.error_feedback(compressor, rows.grads, mem_w, keys, live)
            new_state = CompressState(mem_w if every else jax.tree.map(
                lambda e, n: e.at[ids].set(n), state.memory, mem_w))
        msg = select_rows(live, msg, rows.grads)
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
