"""The parameter-server simulator: one pure server step, scanned, jitted once.

Shape letters: ``S`` members (seeds x hyperparameters, vmapped), ``M`` workers,
``K`` arrivals per server step (rows ``W = K``), ``D`` ring depth, ``B`` batch.

One server step (:meth:`Simulator.step`, one method per phase):

1. pick the K arriving workers (sampled model: K distinct workers at random, each with
   a sampled delay; event model: the K that finish first; synchronous algorithms: all M
   at the current version);
2. gather each arrival's stale parameters from the ring of the last D versions (a
   gather with a traced index: changing delays never recompiles); an arrival staler than
   the ring holds is *dropped and counted*, never computed at a wrong version;
3. sample each arrival's minibatch from its own data shard, compute the gradients
   vmapped over the worker axis;
4. pass them through the algorithm (an optax transform) with the side information it
   declared it needs (:data:`jaxasync.side_info.SIDE_INFO`, one table), apply the update,
   push the new version into the ring;
5. advance the clocks (event model: the arrivals start again from the new version once
   their messages have crossed the link).

A chunk of E steps is one loop (:meth:`Simulator.steps`), followed by an evaluation; the
runner (:mod:`jaxasync.running`) compiles them once for all members (vmapped, or one after
another) and calls them chunk by chunk.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

from jaxasync import _feistel as feistel
from jaxasync import compress as compress_lib
from jaxasync import delays as dl
from jaxasync import downlink as downlink_lib
from jaxasync import side_info
from jaxasync.algorithms import AlgorithmSpec
from jaxasync.transforms import (
    Control,
    algorithm_metrics,
    bit_parts,
    communication,
    compress_rows,
    keep_decisions,
    last_decisions,
    worker_control,
)
from jaxasync.trees import dense_bits, repeat_rows, tree_norm

PyTree = Any


# ----------------------------------------------------------------------------- ring buffer


class Ring(NamedTuple):
    """The last D parameter versions: leaves ``[D, ...]``, slot ``head`` holds the newest."""

    versions: PyTree
    head: Array


def ring_init(params: PyTree, depth: int) -> Ring:
    """A ring whose every slot holds ``params``: reading before step 0 gives x_0."""
    versions = jax.tree.map(lambda p: jnp.broadcast_to(p, (depth,) + p.shape).copy(), params)
    return Ring(versions, jnp.zeros((), jnp.int32))


def ring_push(ring: Ring, params: PyTree) -> Ring:
    depth = jax.tree.leaves(ring.versions)[0].shape[0]
    head = (ring.head + 1) % depth
    versions = jax.tree.map(lambda r, p: r.at[head].set(p), ring.versions, params)
    return Ring(versions, head)


def ring_read(ring: Ring, lag: Array) -> PyTree:
    """The version pushed ``lag`` pushes ago (``lag`` int32 array, any shape; gathers)."""
    depth = jax.tree.leaves(ring.versions)[0].shape[0]
    slot = (ring.head - lag) % depth
    return jax.tree.map(lambda r: r[slot], ring.versions)


def read_rows(ring: Ring, lag: Array, always: Array) -> PyTree:
    """:func:`ring_read` into buffers of their own: the read is a branch of a ``lax.cond`` on
    ``always`` (True, but only known when the program runs), which XLA cannot fuse into the
    read's consumers.

    Why: when a reduction of the stale row (the minibatch loss, the update's norm) is fused
    with the read, XLA's CPU backend copies the whole ring every step before writing the new
    version in place. A workload whose loss is elementwise in the parameters (the worst-case
    quadratic) then ran at ~200 steps/s with 2,048 versions of d = 1,000 instead of ~30,000;
    one whose parameters meet a matrix product first (least squares: the row is a ``dot``
    operand, read once) never showed it.
    """
    def zeros(r, g):
        del g
        return jax.tree.map(lambda v: jnp.zeros(jnp.shape(lag) + v.shape[1:], v.dtype),
                            r.versions)

    return jax.lax.cond(always, ring_read, zeros, ring, lag)


# ----------------------------------------------------------------------------- config & state


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """Static simulation settings (plain numbers; Hydra stops above this).

    Attributes:
      num_workers: M.
      arrivals: K, arrivals per server step (ignored for synchronous algorithms: M).
      batch_size: per-worker minibatch B.
      ring_size: D, versions kept; staler arrivals are dropped.
      steps: server steps in the run.
      eval_every: steps per chunk (evaluation points).
      delay: the delay model.
      network: the link of every worker.
      eval_train_size: training examples used to evaluate the training loss.
      full_batch: each worker's batch is its whole shard, in order (deterministic
        full local gradients, as LAG uses); needs equal shard sizes.
      lr_boundaries: server steps at which the learning rate is multiplied by
        ``lr_factor`` (a step decay; the algorithm gets an optax schedule, see
        :func:`step_decay`); empty: the constant learning rate.
      lr_factor: the decay factor.
      sampling: ``"replacement"`` (each minibatch drawn uniformly from the worker's shard)
        or ``"epochs"`` (each worker walks through a fresh random order of its shard every
        epoch, as a shuffling data loader does, one batch per gradient it computes; see
        :func:`epoch_position`).
      compressor: ``(name, ((key, value), ...), error_feedback)``: a compressor of
        :data:`jaxasync.compress.COMPRESSORS` put in front of the algorithm (every row's
        gradient compressed, with a residual per worker when ``error_feedback``), or None.
      eval_grad_norm: evaluations also report ``train_grad_norm``, the norm of the gradient
        of the mean training loss over the whole training set (a full pass: meant for the
        small convex workloads).
      downlink: ``(name, ((key, value), ...), rule)``: the server's broadcast compressed with
        a compressor of :data:`jaxasync.compress.COMPRESSORS` and its own feedback
        (:mod:`jaxasync.downlink`: ``doublesqueeze``, ``ef21_bc``, ``ef21_p``), or None (the
        dense model).
    """

    num_workers: int = 16
    arrivals: int = 1
    batch_size: int = 32
    ring_size: int = 64
    steps: int = 1000
    eval_every: int = 100
    delay: dl.DelayConfig = dl.DelayConfig()
    network: dl.Network = dl.Network()
    eval_train_size: int = 4096
    full_batch: bool = False
    lr_boundaries: tuple[int, ...] = ()
    lr_factor: float = 1.0
    compressor: tuple | None = None
    sampling: str = "replacement"
    eval_grad_norm: bool = False
    downlink: tuple | None = None


class SimCounts(NamedTuple):
    """Simulator-side counters (the communication counters live in the optax state)."""

    iterations: Array       # server steps processed
    grads: Array            # worker gradient computations
    wasted: Array           # computations whose result was not applied (rejected, dropped)
    staleness_sum: Array    # over arrivals (float32)
    staleness_max: Array
    staleness_hist: Array   # int32[D + 1]; bin D counts arrivals with tau >= D (dropped)
    batch_loss_sum: Array   # minibatch losses at the stale iterates, summed over the chunk
    batch_loss_n: Array


class EventState(NamedTuple):
    """The event-driven model's bookkeeping beyond each worker's finish time and version.

    Attributes:
      block_min: float32[ceil(M / b)] the earliest finish time in each block of ``b =
        ceil(sqrt M)`` workers (one arrival per step; one unused slot otherwise): the next
        arrival is found in O(sqrt M) instead of O(M) (:func:`next_arrival`).
      clipped: bool[M] the worker's computation will be stopped at its timeout.
      held: bool[M] the worker computes nothing (held by the algorithm's :class:`Control`).
      stopped: int32[] computations dropped by a restart or a hold (wasted work).
      timeouts: int32[] arrivals stopped at their timeout.
    """

    block_min: Array
    clipped: Array
    held: Array
    stopped: Array
    timeouts: Array


class SimState(NamedTuple):
    params: PyTree
    opt_state: PyTree
    ring: Ring
    version: Array          # t: number of versions pushed (updates applied)
    norms: Array            # float32[D] ||x_slot - x_previous||, aligned with the ring slots
    clock: Array            # simulated time
    finish: Array           # float32[M] when each worker's gradient arrives (event model)
    worker_version: Array   # int32[M] the version each worker is computing on (event model)
    speed: Array            # float32[M] slowdown factors
    ref_params: PyTree      # [M, ...] each worker's last-upload iterate (only if needed)
    counts: SimCounts
    key: Array
    data_key: Array         # constant per member: the epoch orders of sampling="epochs"
    draws: Array            # int32[M] minibatches each worker has drawn (sampling="epochs")
    events: EventState      # arrival index, timeouts, holds, stops (event model)
    downlink: Any = ()      # jaxasync.downlink.DownlinkState with a compressed broadcast


class Data(NamedTuple):
    """Device arrays of a workload, with the per-worker shards."""

    x_train: Array
    y_train: Array
    x_test: Array
    y_test: Array
    shard_index: Array  # int32[M, n_max]
    shard_size: Array   # int32[M]


# ----------------------------------------------------------------------------- the simulator


def with_workers(compressor: str, params: dict, num_workers: int) -> dict:
    """A compressor's arguments with ``num_workers`` = M added where it takes one."""
    if "num_workers" in compress_lib.COMPRESSORS[compressor].params:
        params = {"num_workers": num_workers, **params}
    return params


def step_decay(learning_rate: float | Array, boundaries: tuple[int, ...],
               factor: float) -> optax.Schedule:
    r"""The step size :math:`\eta_k = \eta\, f^{\#\{b \in B:\, b \le k\}}` at server step
    :math:`k`: ``learning_rate`` (a number or a traced, vmapped member value) multiplied by
    ``factor`` at each boundary. An optax schedule, counted by the algorithm's own update
    counter (one update per server step)."""
    return optax.piecewise_constant_schedule(learning_rate, {int(b): factor for b in boundaries})


def full_gradient_norm(loss: Callable, params: PyTree, x: Array, y: Array,
                       chunk: int = 4096) -> Array:
    r""":math:`\|\nabla F(x)\|` for :math:`F` = ``loss`` (a mean) over all rows of ``x, y``.

    Rows are taken ``chunk`` at a time (``lax.map``), each chunk's gradient weighted by its
    share of the rows, which is exact for a mean loss plus any regulariser.
    """
    n = x.shape[0]
    full, tail = divmod(n, chunk) if n > chunk else (0, n)
    grad = jax.grad(loss)
    total = jax.tree.map(jnp.zeros_like, params)
    if full:
        xs = x[: full * chunk].reshape(full, chunk, *x.shape[1:])
        ys = y[: full * chunk].reshape(full, chunk, *y.shape[1:])
        parts = jax.lax.map(lambda xy: grad(params, *xy), (xs, ys))
        total = jax.tree.map(lambda g: jnp.sum(g, axis=0) * (chunk / n), parts)
    if tail:
        g = grad(params, x[full * chunk:], y[full * chunk:])
        total = jax.tree.map(lambda t, gi: t + gi * (tail / n), total, g)
    return tree_norm(total)


def epoch_position(key: Array, size: Array, q: Array) -> Array:
    r"""Where the ``q``-th draw of a shuffled pass over ``size`` examples lands: int32 in
    ``[0, size)``.

    Draw :math:`q` belongs to epoch :math:`e = \lfloor q / n \rfloor` and is the
    :math:`(q \bmod n)`-th entry of that epoch's random order :math:`\pi_e`, so every
    epoch visits each example exactly once. :math:`\pi_e` is the Feistel permutation of
    :func:`jaxasync._feistel.permute` keyed by ``fold_in(key, e)``. No sort, no state: any
    draw of any epoch is computed directly, which a scan over server steps needs.
    """
    size = jnp.asarray(size, jnp.int32)
    q = jnp.asarray(q, jnp.int32)
    epoch, r = q // size, q % size
    return feistel.permute(jax.random.fold_in(key, epoch), size, r)


# ----------------------------------------------------------------------------- arrivals


def block_size(m: int) -> int:
    """b = ceil(sqrt(M)): the block length of the arrival index."""
    return math.isqrt(max(m, 1) - 1) + 1


def _first_min(v: Array) -> tuple[Array, Array]:
    """``(index, value)`` of the first minimum of ``v``: two reductions, which XLA's CPU
    backend runs several times faster than ``argmin``'s index-carrying reduction."""
    low = jnp.min(v)
    return jnp.min(jnp.where(v == low, jnp.arange(v.shape[0], dtype=jnp.int32),
                             v.shape[0])), low


def _block(finish: Array, j: Array, b: int) -> tuple[Array, Array]:
    """Block ``j``'s finish times (``inf`` outside it) and the index of its first slot."""
    start = jnp.minimum(j * b, finish.shape[0] - b)
    row = jax.lax.dynamic_slice_in_dim(finish, start, b)
    inside = start + jnp.arange(b) >= j * b
    return jnp.where(inside, row, jnp.inf), start


def block_minima(finish: Array) -> Array:
    """The earliest finish time of every block (float32[ceil(M / b)])."""
    m = finish.shape[0]
    b = block_size(m)
    nb = -(-m // b)
    padded = jnp.concatenate([finish, jnp.full((nb * b - m,), jnp.inf, finish.dtype)])
    return jnp.min(padded.reshape(nb, b), axis=1)


def next_arrival(finish: Array, block_min: Array) -> Array:
    """The worker that finishes first (the lowest index among ties, as ``lax.top_k`` orders
    them), from the block minima: two reductions over sqrt(M) entries instead of a ``top_k``
    over M. On the 2-core CPU at M = 10,000 a step's pick fell from ~35 us (``top_k``) to a
    few (``benchmarks/async_bench.py``); an event heap would need log M dependent scalar
    steps, which XLA runs one kernel at a time."""
    j, _ = _first_min(block_min)
    row, start = _block(finish, j, block_size(finish.shape[0]))
    i, _ = _first_min(row)
    return (start + i).astype(jnp.int32)


def refresh_block(finish: Array, block_min: Array, i: Array) -> Array:
    """``block_min`` after worker ``i``'s finish time changed (O(sqrt M))."""
    b = block_size(finish.shape[0])
    row, _ = _block(finish, i // b, b)
    return block_min.at[i // b].set(jnp.min(row))


class Simulator:
    """Runs one algorithm on one workload under one delay model.

    Args:
      spec: the algorithm's registry entry.
      static_hparams: algorithm kwargs fixed at trace time (ints, strings, bools).
      workload: a :class:`jaxasync.workloads.Workload`.
      config: :class:`SimConfig`.
      worker_axis: ``vmap`` options for per-worker work (``spmd_axis_name`` on a mesh).
    """

    def __init__(self, spec: AlgorithmSpec, static_hparams: dict, workload, config: SimConfig,
                 worker_axis: dict | None = None):
        self.spec = spec
        self.static_hparams = dict(static_hparams)
        self.workload = workload
        self.cfg = config
        self.worker_axis = dict(worker_axis or {})
        m = config.num_workers
        self.rows = m if spec.synchronous else config.arrivals
        if "num_workers" in spec.parameters():
            self.static_hparams.setdefault("num_workers", m)
        self.needs = spec.needs
        #: the extra args the transform gets, in the order of the side-information table
        self.offered = side_info.offered(self.needs)
        # per-worker last-upload iterates are kept for the gradient at them (or its distance)
        self._needs_ref = side_info.keeps_reference(self.needs)
        self._fused = side_info.fused_with_gradients(self.needs)
        self._down_comp = None
        if config.downlink is not None:
            name, params, _ = config.downlink
            self._down_comp = compress_lib.make_compressor(name, **with_workers(
                name, dict(params), m))

    # -- building blocks -----------------------------------------------------------------

    def make_tx(self, hparams: dict) -> optax.GradientTransformationExtraArgs:
        """The algorithm (with the run's compressor in front, if any), keeping the per-row
        decisions of each step for the clocks and counters."""
        kwargs = {**self.static_hparams, **hparams}
        if self.cfg.lr_boundaries:
            base = kwargs.get("learning_rate", self.spec.defaults().get("learning_rate"))
            kwargs["learning_rate"] = step_decay(base, self.cfg.lr_boundaries, self.cfg.lr_factor)
        comp = self.compressor()
        if comp is not None and "compressor" in self.spec.params:
            # the algorithm applies the compressor its own way (EF21)
            return keep_decisions(self.spec.build(**kwargs, compressor=comp), self.rows)
        tx = self.spec.build(**kwargs)
        if comp is not None:
            tx = optax.chain(compress_rows(comp, error_feedback=self.cfg.compressor[2],
                                           num_workers=self.cfg.num_workers), tx)
        return keep_decisions(tx, self.rows)

    def compressor(self):
        """The run's ``algorithm.compressor``, built (``num_workers`` filled in where the
        compressor takes it: PermK, DGC's clipping), or None."""
        if self.cfg.compressor is None:
            return None
        name, params, _ = self.cfg.compressor
        return compress_lib.make_compressor(name, **with_workers(name, dict(params),
                                                                 self.cfg.num_workers))

    def vmap_workers(self, fn, in_axes=0):
        """``jax.vmap`` over the worker axis (named ``"workers"``; sharded on a mesh)."""
        return jax.vmap(fn, in_axes=in_axes, axis_name="workers", **self.worker_axis)

    def init(self, key: Array, hparams: dict) -> SimState:
        """Initial state for one member (vmap it over members)."""
        cfg = self.cfg
        k_init, k_speed, k_first, k_run = jax.random.split(key, 4)
        params = self.workload.init(k_init)
        opt_state = self.make_tx(hparams).init(params)
        speed = dl.worker_speeds(cfg.delay, k_speed, cfg.num_workers)
        m = cfg.num_workers
        events = self._events_init(m)
        if self._event:
            ctrl = worker_control(opt_state)
            compute, clipped = dl.computation(cfg.delay, k_first, speed, self._slack(ctrl))
            finish = compute + cfg.network.seconds(jnp.zeros((m,), jnp.float32))
            events = events._replace(clipped=events.clipped if clipped is None else clipped)
            if self.rows == 1:
                events = events._replace(block_min=block_minima(finish))
        else:
            finish = jnp.zeros((m,), jnp.float32)
        d = cfg.ring_size
        counts = SimCounts(
            iterations=jnp.zeros((), jnp.int32), grads=jnp.zeros((), jnp.int32),
            wasted=jnp.zeros((), jnp.int32), staleness_sum=jnp.zeros((), jnp.float32),
            staleness_max=jnp.zeros((), jnp.int32),
            staleness_hist=jnp.zeros((d + 1,), jnp.int32),
            batch_loss_sum=jnp.zeros((), jnp.float32), batch_loss_n=jnp.zeros((), jnp.int32),
        )
        return SimState(
            params=params, opt_state=opt_state, ring=ring_init(params, d),
            version=jnp.zeros((), jnp.int32), norms=jnp.zeros((d,), jnp.float32),
            clock=jnp.zeros((), jnp.float32), finish=finish,
            worker_version=jnp.zeros((m,), jnp.int32), speed=speed,
            ref_params=repeat_rows(params, m) if self._needs_ref else (),
            counts=counts, key=k_run,
            # (folded in, not split off: the other streams, and so old results, are unchanged)
            data_key=jax.random.fold_in(key, 0x5EED), draws=jnp.zeros((m,), jnp.int32),
            events=events,
            downlink=() if self.cfg.downlink is None else downlink_lib.init(
                self._down_comp, self.cfg.downlink[2], params, m),
        )

    @property
    def _event(self) -> bool:
        """Asynchronous workers racing in the event-driven model (finish times, versions)."""
        return self.cfg.delay.kind == "event" and not self.spec.synchronous

    @staticmethod
    def _slack(ctrl: Control | None, ids: Array | None = None) -> Array | None:
        """The timeouts of new computations (all workers, or rows ``ids``); None: none."""
        if ctrl is None or ctrl.timeout is None:
            return None
        return ctrl.timeout if ids is None else ctrl.timeout[ids]

    def _events_init(self, m: int) -> EventState:
        zero = jnp.zeros((), jnp.int32)
        false = jnp.zeros((m,), bool)
        # (one unused slot otherwise: orbax refuses to save an array of size zero)
        nb = -(-m // block_size(m)) if self._event and self.rows == 1 else 1
        return EventState(jnp.full((nb,), jnp.inf, jnp.float32), false, false, zero, zero)

    def _arrivals(self, state: SimState, key: Array):
        """Which workers arrive, how stale they are, and the new server clock."""
        cfg, m = self.cfg, self.cfg.num_workers
        k_pick, k_tau, k_time = jax.random.split(key, 3)
        if self.spec.synchronous:
            ids = jnp.arange(m, dtype=jnp.int32)
            tau = jnp.zeros((m,), jnp.int32)
            if cfg.delay.kind == "event":
                # compute times only: the round's length also depends on what each worker
                # sends, known after the update (see `_round_end`)
                return ids, tau, dl.compute_times(cfg.delay, k_time, state.speed)
            return ids, tau, state.clock + 1.0
        k = self.rows
        if cfg.delay.kind == "event":
            if k == 1:
                ids = next_arrival(state.finish, state.events.block_min)[None]
            else:
                _, ids = jax.lax.top_k(-state.finish, k)
                ids = ids.astype(jnp.int32)
            now = jnp.max(state.finish[ids])
            tau = state.version - state.worker_version[ids]
        else:
            ids = jax.random.permutation(k_pick, m)[:k].astype(jnp.int32)
            tau = dl.sample_delays(cfg.delay, k_tau, k, state.counts.iterations, ids=ids,
                                   draws=state.draws[ids])
            # No gradient predates x_0: before version tau, a "tau-stale" gradient was
            # computed at x_0 (what the ring returns), which is `version` versions old.
            tau = jnp.minimum(tau, state.version)
            now = state.clock + 1.0
        return ids, tau, now

    def _batches(self, data: Data, ids: Array, key: Array, state: SimState | None = None):
        b = self.cfg.batch_size
        k_idx, k_aug = jax.random.split(key)
        if self.cfg.full_batch:
            idx = data.shard_index[ids]                                   # [W, n]
        elif self.cfg.sampling == "epochs":
            # row i's draws continue its worker's stream where its last batch ended
            size = data.shard_size[ids]
            q = state.draws[ids][:, None] * b + jnp.arange(b, dtype=jnp.int32)     # [W, B]
            pos = jax.vmap(lambda w, s, qw: jax.vmap(
                lambda qq: epoch_position(jax.random.fold_in(state.data_key, w), s, qq))(qw)
            )(ids, size, q)                                                         # [W, B]
            idx = jnp.take_along_axis(data.shard_index[ids], pos, axis=1)
        else:
            size = data.shard_size[ids]                                   # [W]
            pos = jax.random.randint(k_idx, (ids.shape[0], b), 0, size[:, None])
            idx = jnp.take_along_axis(data.shard_index[ids], pos, axis=1)  # [W, B]
        x, y = data.x_train[idx], data.y_train[idx]
        if self.workload.augment is not None:
            keys = jax.random.split(k_aug, ids.shape[0])
            x = jax.vmap(self.workload.augment)(keys, x)
        return x, y

    # -- one server step: arrivals -> gather -> gradients -> side information -> transform
    #    -> apply -> clocks ------------------------------------------------------------------

    def step(self, state: SimState, data: Data, hparams: dict) -> SimState:
        """One server step (pure)."""
        key, k_arr, k_batch, k_tx, k_next = jax.random.split(state.key, 5)
        ctx = self._gather(self._workers_view(state), data, k_arr, k_batch, k_tx)
        self._gradients(ctx)
        extra = {name: side_info.SIDE_INFO[name].compute(ctx) for name in self.offered}
        updates, opt_state = self.make_tx(hparams).update(ctx.grads_w, state.opt_state,
                                                          state.params, **extra)
        rows, ctrl = last_decisions(opt_state), worker_control(opt_state)
        updates, view, down, rows = self._downlink(state, ctx, updates, rows, ctrl)
        params, ring, norms, version = self._apply(state, updates, rows, ctrl, view)
        now, finish, worker_version, events = self._clocks(state, ctx, rows, version, k_next,
                                                           ctrl)
        return SimState(params, opt_state, ring, version, norms, now, finish, worker_version,
                        state.speed, self._references(ctx.state, ctx, rows),
                        self._counted(state, ctx, rows), key, state.data_key,
                        state.draws.at[ctx.ids].add(1), events, down)

    # -- compression of the broadcast (jaxasync.downlink) ---------------------------------

    def _workers_view(self, state: SimState) -> SimState:
        """The state the workers read their model from: where the server's model and the
        workers' differ (``ef21_p``) a synchronous round computes at the newest view (the
        ring's head); asynchronous rows read the ring anyway."""
        if (self.cfg.downlink is None or self.cfg.downlink[2] != "ef21_p"
                or not self.spec.synchronous):
            return state
        return state._replace(params=ring_read(state.ring, jnp.zeros((), jnp.int32)))

    def _downlink(self, state: SimState, ctx, updates: PyTree, rows,
                  ctrl: Control | None = None):
        """The broadcast of this step: the update to apply, the view for the ring (None: the
        new parameters), the downlink state, and the rows with the bits they download."""
        if self.cfg.downlink is None:
            return updates, None, state.downlink, rows
        advance = jnp.any(rows.applied) if ctrl is None else ctrl.advance
        applied, view, down, paid = downlink_lib.step(
            self._down_comp, self.cfg.downlink[2], state.downlink, state.params, updates,
            advance, ctx.ids, jax.random.fold_in(ctx.key, 0xD0))
        return applied, view, down, rows._replace(bits_down=paid)

    def _gather(self, state: SimState, data: Data, k_arr: Array, k_batch: Array,
                k_tx: Array) -> side_info.StepContext:
        """Arrivals, their stale parameters from the ring, their minibatches."""
        d = self.cfg.ring_size
        ids, tau, now = self._arrivals(state, k_arr)   # synchronous + event: compute times
        live = tau < d                      # staler than the ring holds: dropped
        if self._event:                     # stopped at a timeout, or never coming back
            live = live & ~state.events.clipped[ids] & jnp.isfinite(now)
        x, y = self._batches(data, ids, k_batch, state)
        # synchronous rows are all at the current iterate (one params, unbatched)
        params_w = None if self.spec.synchronous else read_rows(
            state.ring, jnp.minimum(tau, d - 1), data.shard_size[0] >= 0)
        ctx = side_info.StepContext(self, state, ids, tau, live, params_w, x, y, k_tx)
        ctx.now = now
        return ctx

    def _gradients(self, ctx: side_info.StepContext) -> None:
        """Each row's minibatch loss and gradient at its stale iterate (and the side
        information computed together with them, where a need asks for it)."""
        if self._fused is not None:
            ctx.loss_w, ctx.grads_w, ctx.fused[self._fused] = (
                side_info.SIDE_INFO[self._fused].with_gradients(ctx))
            return
        base, axis = ((ctx.state.params, None) if ctx.params_w is None else (ctx.params_w, 0))
        ctx.loss_w, ctx.grads_w = self.vmap_workers(jax.value_and_grad(self.workload.loss),
                                                    (axis, 0, 0))(base, ctx.x, ctx.y)

    def _apply(self, state: SimState, updates: PyTree, rows, ctrl: Control | None = None,
               view: PyTree | None = None):
        """The new parameters, pushed into the ring (or the workers' ``view`` of them, where
        the broadcast is compressed), with the update's norm.

        A step that applies nothing (all rejected or dropped) makes no new version, so
        staleness counts real updates; an algorithm that buffers rows says itself when its
        iterate moves (``Control.advance``). Without ``cond`` (vmap would turn it into a select
        over the whole ring): when nothing advances, the head slot is rewritten with the same
        parameters.
        """
        d = self.cfg.ring_size
        advance = jnp.any(rows.applied) if ctrl is None else ctrl.advance
        new_params = jax.tree.map(lambda p, u: jnp.where(advance, p + u, p), state.params, updates)
        step_norm = jnp.where(advance, tree_norm(updates), 0.0)
        head = (state.ring.head + advance.astype(jnp.int32)) % d
        pushed = new_params if view is None else view
        ring = Ring(jax.tree.map(lambda r, p: r.at[head].set(p), state.ring.versions, pushed),
                    head)
        norms = state.norms.at[head].set(jnp.where(advance, step_norm, state.norms[head]))
        return new_params, ring, norms, state.version + advance.astype(jnp.int32)

    def _clocks(self, state: SimState, ctx, rows, version: Array, key: Array,
                ctrl: Control | None = None):
        """The server clock, when each worker's next gradient arrives, and the event state.

        Each arrival's exchange (its upload, the model download) delays its next gradient;
        rejected and dropped workers start again from the new version too. An algorithm's
        :class:`~jaxasync.transforms.Control` adds timeouts to new computations and restarts
        or holds other workers (:meth:`_interrupt`).
        """
        cfg, now = self.cfg, ctx.now
        if self.spec.synchronous and cfg.delay.kind == "event":
            now = self._round_end(state.clock, now, rows)
        finish, worker_version, ev = state.finish, state.worker_version, state.events
        if self._event:
            link = self._seconds(rows.bits_up, ctx.ids) + self._seconds(rows.bits_down, ctx.ids)
            compute, clipped = dl.computation(cfg.delay, key, state.speed[ctx.ids],
                                              self._slack(ctrl, ctx.ids))
            finish = finish.at[ctx.ids].set(now + link + compute)
            worker_version = worker_version.at[ctx.ids].set(version)
            if clipped is not None:
                ended = jnp.sum(ev.clipped[ctx.ids].astype(jnp.int32))
                ev = ev._replace(clipped=ev.clipped.at[ctx.ids].set(clipped),
                                 timeouts=ev.timeouts + ended)
            if ctrl is not None and (ctrl.restart is not None or ctrl.hold is not None):
                finish, worker_version, ev = self._interrupt(
                    state, ctx, ctrl, now, version, jax.random.fold_in(key, 1),
                    finish, worker_version, ev)
            elif self.rows == 1:
                ev = ev._replace(block_min=refresh_block(finish, ev.block_min, ctx.ids[0]))
        return now, finish, worker_version, ev

    def _interrupt(self, state: SimState, ctx, ctrl: Control, now, version, key, finish,
                   worker_version, ev: EventState):
        """Carries out an algorithm's restarts and holds (O(M), only for algorithms that
        expose them): a restarted worker drops its computation and starts one at the new
        version after downloading the model; a held one drops it and idles. Dropped work
        (of a worker that was busy and did not just arrive) is counted in ``stopped``."""
        m = self.cfg.num_workers
        false = jnp.zeros((m,), bool)
        restart = false if ctrl.restart is None else ctrl.restart
        hold = false if ctrl.hold is None else ctrl.hold
        arrived = false.at[ctx.ids].set(True)
        dropped = ~ev.held & ~arrived & (restart | hold)
        fresh = restart & ~hold & ~arrived
        compute, clipped = dl.computation(self.cfg.delay, key, state.speed, self._slack(ctrl))
        download = self._seconds(jnp.float32(dense_bits(state.params)), jnp.arange(m))
        finish = jnp.where(hold, jnp.inf, jnp.where(fresh, now + download + compute, finish))
        worker_version = jnp.where(fresh, version, worker_version)
        ev = ev._replace(
            clipped=ev.clipped if clipped is None else jnp.where(fresh, clipped, ev.clipped),
            held=hold | (ev.held & ~arrived & ~restart),
            stopped=ev.stopped + jnp.sum(dropped.astype(jnp.int32)))
        if self.rows == 1:
            ev = ev._replace(block_min=block_minima(finish))
        return finish, worker_version, ev

    def _seconds(self, bits: Array, ids: Array) -> Array:
        """Link time of a message of ``bits`` for workers ``ids``: the network's link, or each
        worker's own bandwidth (``delay.bandwidths``, e.g. from a FedScale capacity file)."""
        net, bw = self.cfg.network, self.cfg.delay.bandwidths
        if bw is None:
            return net.seconds(bits)
        return jnp.float32(net.latency) + bits / jnp.asarray(bw, jnp.float32)[ids]

    def _references(self, state: SimState, ctx, rows) -> PyTree:
        """Each worker's last-upload iterate, advanced for the rows that uploaded."""
        if not self._needs_ref:
            return state.ref_params
        w = ctx.rows
        if self.spec.synchronous:
            # in place, one elementwise pass (a gather + scatter would cost three)
            return jax.tree.map(
                lambda r, p: jnp.where(rows.uploaded.reshape((w,) + (1,) * p.ndim), p[None], r),
                state.ref_params, state.params)
        return jax.tree.map(
            lambda r, b: r.at[ctx.ids].set(jnp.where(
                rows.uploaded.reshape((w,) + (1,) * (b.ndim - 1)), b, r[ctx.ids])),
            state.ref_params, ctx.params_w)

    def _counted(self, state: SimState, ctx, rows) -> SimCounts:
        """The simulator's counters after the step."""
        c, tau, w, d = state.counts, ctx.tau, ctx.rows, self.cfg.ring_size
        n_ref = w if self._needs_ref else 0     # a gradient at each reference too
        return SimCounts(
            iterations=c.iterations + 1,
            grads=c.grads + w + n_ref,
            wasted=c.wasted + jnp.sum((rows.rejected | rows.dropped).astype(jnp.int32)),
            staleness_sum=c.staleness_sum + jnp.sum(tau.astype(jnp.float32)),
            staleness_max=jnp.maximum(c.staleness_max, jnp.max(tau)),
            staleness_hist=c.staleness_hist.at[jnp.minimum(tau, d)].add(1),
            batch_loss_sum=c.batch_loss_sum + jnp.mean(ctx.loss_w),
            batch_loss_n=c.batch_loss_n + 1,
        )

    def _round_end(self, clock: Array, compute: Array, rows) -> Array:
        """End of a synchronous round: its slowest worker's compute + upload + download.

        The upload costs what the row sent (a top-k message, a dense gradient), nothing
        for a worker that skipped its upload; every worker downloads the model.
        """
        ids = jnp.arange(self.cfg.num_workers)
        up = jnp.where(rows.bits_up > 0, self._seconds(rows.bits_up, ids), 0.0)
        return clock + jnp.max(compute + up + self._seconds(rows.bits_down, ids))

    # -- chunks, evaluation ----------------------------------------------------------------

    def evaluate(self, state: SimState, data: Data) -> dict[str, Array]:
        """Metrics of one member at its current parameters (pure, jittable)."""
        wl = self.workload
        n_tr = min(self.cfg.eval_train_size, data.x_train.shape[0])
        if wl.f_star is not None:  # F - F* needs F over the whole training set
            n_tr = data.x_train.shape[0]
        tr = wl.evaluate(state.params, data.x_train[:n_tr], data.y_train[:n_tr])
        te = wl.evaluate(state.params, data.x_test, data.y_test)
        out = {f"train_{k}": v for k, v in tr.items()}
        out.update({f"test_{k}": v for k, v in te.items()})
        if wl.f_star is not None:
            out["train_gap"] = tr["loss"] - wl.f_star
        if self.cfg.eval_grad_norm:
            out["train_grad_norm"] = full_gradient_norm(wl.loss, state.params, data.x_train,
                                                        data.y_train)
        c, ev = state.counts, state.events
        out["batch_loss"] = c.batch_loss_sum / jnp.maximum(1, c.batch_loss_n)
        comm = {**communication(state.opt_state), **bit_parts(state.opt_state)}
        if worker_control(state.opt_state) is not None:
            out.update({"stopped": ev.stopped, "timeouts": ev.timeouts})
        out.update({
            "step": c.iterations, "version": state.version, "time": state.clock,
            # a computation dropped by a restart or a hold is a gradient computed and wasted
            "grads": c.grads + ev.stopped, "wasted": c.wasted + ev.stopped,
            "staleness_mean": c.staleness_sum / jnp.maximum(1, c.iterations * self.rows),
            "staleness_max": c.staleness_max,
        })
        out.update(comm)
        if self.cfg.downlink is not None:        # the broadcasts charged, not dense models
            out.update(downlink_lib.metrics(state.downlink))
        out.update(algorithm_metrics(state.opt_state))
        leaves_ok = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(state.params)]))
        out["finite"] = leaves_ok & jnp.isfinite(out["train_loss"])
        return out

    def steps(self, state: SimState, data: Data, hparams: dict, length) -> SimState:
        """``length`` server steps in one loop, the chunk's batch-loss counters reset first.

        ``length`` is a Python int (a ``lax.scan``) or a traced int32 (a ``while`` loop: one
        compiled program serves every chunk length, the shorter last one included).
        """
        c = state.counts
        state = state._replace(counts=c._replace(batch_loss_sum=jnp.zeros_like(c.batch_loss_sum),
                                                 batch_loss_n=jnp.zeros_like(c.batch_loss_n)))
        return jax.lax.fori_loop(0, length, lambda _, s: self.step(s, data, hparams), state)

    def chunk(self, state: SimState, data: Data, hparams: dict, length: int):
        """``length`` steps (:meth:`steps`), then an evaluation."""
        state = self.steps(state, data, hparams, length)
        return state, self.evaluate(state, data)


# ----------------------------------------------------------------------------- running


def put_data(workload, shard_index: np.ndarray, shard_size: np.ndarray) -> Data:
    d = workload.data
    return Data(jnp.asarray(d.x_train), jnp.asarray(d.y_train), jnp.asarray(d.x_test),
                jnp.asarray(d.y_test), jnp.asarray(shard_index, jnp.int32),
                jnp.asarray(shard_size, jnp.int32))


# the runner (members' programs, compiled once, called chunk by chunk) lives in its own module
from jaxasync.running import RunResult, run  # noqa: E402,F401  (re-exported)
