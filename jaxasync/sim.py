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

Steps 1, 3 and 5 (arrivals, minibatches, clocks and the event model's bookkeeping) are in
:mod:`jaxasync.arrivals`, the ring of versions in :mod:`jaxasync.ring`.

A chunk of E steps is one loop (:meth:`Simulator.steps`), followed by an evaluation; the
runner (:mod:`jaxasync.running`) compiles them once for all members (vmapped, or one after
another) and calls them chunk by chunk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

from jaxasync import compress as compress_lib
from jaxasync import delays as dl
from jaxasync import downlink as downlink_lib
from jaxasync import side_info
from jaxasync.algorithms import AlgorithmSpec
from jaxasync.arrivals import (  # noqa: F401  (re-exported)
    Arrivals,
    EventState,
    block_minima,
    block_size,
    epoch_position,
    next_arrival,
    refresh_block,
)
from jaxasync.ring import Ring, read_rows, ring_init, ring_push, ring_read  # noqa: F401
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
from jaxasync.trees import repeat_rows, tree_norm

PyTree = Any


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


# ----------------------------------------------------------------------------- helpers


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


# ----------------------------------------------------------------------------- the simulator


class Simulator(Arrivals):
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
        parameters. The norms of the updates (``update_norms``) are kept only for an algorithm
        that reads them.
        """
        d = self.cfg.ring_size
        advance = jnp.any(rows.applied) if ctrl is None else ctrl.advance
        new_params = jax.tree.map(lambda p, u: jnp.where(advance, p + u, p), state.params, updates)
        head = (state.ring.head + advance.astype(jnp.int32)) % d
        pushed = new_params if view is None else view
        ring = Ring(jax.tree.map(lambda r, p: r.at[head].set(p), state.ring.versions, pushed),
                    head)
        norms = state.norms
        if "update_norms" in self.offered:      # a reduction per step, only where it is read
            step_norm = jnp.where(advance, tree_norm(updates), 0.0)
            norms = norms.at[head].set(jnp.where(advance, step_norm, norms[head]))
        return new_params, ring, norms, state.version + advance.astype(jnp.int32)

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
