"""Who arrives at each server step of the simulator, when, and with which minibatch; the
clocks and the event-driven model's bookkeeping.

* The *sampled* model draws K distinct workers at random, each with a sampled delay.
* The *event* model races the workers: each has a finish time, the K that finish first
  arrive; :class:`EventState` keeps the arrival index (block minima, :func:`next_arrival`),
  the timeouts and the holds an algorithm's :class:`~jaxasync.transforms.Control` asks for.
* Synchronous algorithms: all M workers arrive at the current version; a round ends with its
  slowest worker's compute, upload and download.

:class:`Arrivals` holds these phases of :class:`jaxasync.sim.Simulator` (which inherits it);
it reads the simulator's ``cfg`` (:class:`jaxasync.sim.SimConfig`), ``spec``, ``rows`` and
``workload``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from jaxasync import _feistel as feistel
from jaxasync import delays as dl
from jaxasync.data.partitioning import worker_rows
from jaxasync.transforms import Control
from jaxasync.trees import dense_bits

if TYPE_CHECKING:
    from jaxasync.sim import Data, SimState


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


# ----------------------------------------------------------------------------- arrival index


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


# ----------------------------------------------------------------------------- the phases


class Arrivals:
    """The simulator's arrivals, minibatches and clocks (a part of
    :class:`jaxasync.sim.Simulator`, which sets ``cfg``, ``spec``, ``rows``, ``workload``)."""

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
            idx = worker_rows(data.shard_index, ids)                      # [W, n]
        elif self.cfg.sampling == "epochs":
            # row i's draws continue its worker's stream where its last batch ended
            size = data.shard_size[ids]
            q = state.draws[ids][:, None] * b + jnp.arange(b, dtype=jnp.int32)     # [W, B]
            pos = jax.vmap(lambda w, s, qw: jax.vmap(
                lambda qq: epoch_position(jax.random.fold_in(state.data_key, w), s, qq))(qw)
            )(ids, size, q)                                                         # [W, B]
            idx = jnp.take_along_axis(worker_rows(data.shard_index, ids), pos, axis=1)
        else:
            size = data.shard_size[ids]                                   # [W]
            pos = jax.random.randint(k_idx, (ids.shape[0], b), 0, size[:, None])
            idx = jnp.take_along_axis(worker_rows(data.shard_index, ids), pos, axis=1)  # [W, B]
        x, y = data.x_train[idx], data.y_train[idx]
        if self.workload.augment is not None:
            keys = jax.random.split(k_aug, ids.shape[0])
            x = jax.vmap(self.workload.augment)(keys, x)
        return x, y

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

    def _round_end(self, clock: Array, compute: Array, rows) -> Array:
        """End of a synchronous round: its slowest worker's compute + upload + download.

        The upload costs what the row sent (a top-k message, a dense gradient), nothing
        for a worker that skipped its upload; every worker downloads the model.
        """
        ids = jnp.arange(self.cfg.num_workers)
        up = jnp.where(rows.bits_up > 0, self._seconds(rows.bits_up, ids), 0.0)
        return clock + jnp.max(compute + up + self._seconds(rows.bits_down, ids))
