r"""Round-based servers of the optimal-time-complexity line: MindFlayer SGD and Malenia SGD.

Both collect gradients at one iterate over many arrivals and move the iterate once per round
(a :class:`~jaxasync.transforms.Control` with ``advance``; zero updates in between):

* ``mindflayer`` (``clip_success``): every worker runs B trials per round, each stopped at
  its clipping time; for random compute times with heavy tails or outages;
* ``malenia``: per-worker minibatches weighted equally, for heterogeneous data.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import Array

from jaxasync import hparams as hp
from jaxasync.algorithms import register, required_workers
from jaxasync.optimal import accept_fresh, add32, emit_if, fresh, zeros32
from jaxasync.transforms import Control, aggregate, as_rows, control

PyTree = Any


def _ids(worker_ids: Array | None, w: int) -> Array:
    return jnp.arange(w, dtype=jnp.int32) if worker_ids is None else worker_ids


def _rows_of(mask: Array | None, extra: dict) -> int:
    """W, the rows of this step, from a row-shaped extra arg."""
    return (mask if mask is not None else extra["staleness"]).shape[0]


# ----------------------------------------------------------------------------- MindFlayer SGD


class TrialState(NamedTuple):
    """MindFlayer's server state: the float32 sum of this round's successful gradients, each
    worker's trials so far this round, and its :class:`~jaxasync.transforms.Control`."""

    total: PyTree
    trials: Array
    control: Control

    def metrics(self) -> dict[str, Array]:
        return {"round_trials": jnp.sum(self.trials)}


def mindflayer_rounds(num_workers: int, clip, trials) -> optax.GradientTransformationExtraArgs:
    r"""MindFlayer SGD's rounds (arXiv 2410.04285, Algorithm 1), after
    :func:`~jaxasync.optimal.accept_fresh` and ``aggregate("sum")``.

    Every worker runs ``trials`` = B trials at the round's iterate; a trial not finished
    within the worker's clipping time :math:`t_i = \tau_i + s` (``clip`` = s) is stopped
    there (the simulator's timeout) and arrives masked. A worker that has used its B trials
    is held; when all have, the round's estimate
    :math:`g = \sum_{\text{successes}} \nabla f(x^k;\xi) / \sum_i B p_i` is emitted and
    every worker restarts at the new iterate; :math:`p_i` = P(a trial of worker i succeeds).

    Extra args: ``worker_ids`` (every arriving row is a trial), ``clip_success``
    (float32[M]: :math:`p_i`), ``mask`` or ``staleness`` (for the rows' count).
    """
    def init_fn(params):
        return TrialState(zeros32(params), jnp.zeros((num_workers,), jnp.int32),
                          control(num_workers, advance=False, restart=False, hold=False,
                                  timeout=clip))

    def update_fn(updates, state, params=None, *, clip_success, worker_ids=None, mask=None,
                  **extra):
        del params
        # every arrival is a trial, successful or not (masked: stopped at its timeout)
        done_trials = state.trials.at[_ids(worker_ids, _rows_of(mask, extra))].add(1)
        total = add32(state.total, updates)
        done = done_trials >= trials
        fire = jnp.all(done)
        expected = jnp.sum(trials * clip_success)
        estimate = jax.tree.map(lambda t: t / jnp.maximum(expected, 1e-30), total)
        new = TrialState(jax.tree.map(lambda t: jnp.where(fire, 0.0, t), total),
                         jnp.where(fire, 0, done_trials),
                         control(num_workers, advance=fire, restart=fire, hold=done & ~fire,
                                 timeout=clip))
        return emit_if(fire, estimate, updates), new

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@register("mindflayer", needs={"clip_success"}, params={
    "clip": hp.Param("float", low=0.0, finite=False,
                     doc="s: a trial is stopped after tau_i + s (inf: never)"),
    "trials": hp.Param("int", low=1, doc="B: trials per worker per round (traced)"),
}, example={"clip": 0.5, "trials": 2}, max_staleness=lambda p: 0)
def mindflayer(learning_rate: float = 0.1, clip: float = float("inf"), trials: int = 1,
               num_workers: int | None = None) -> optax.GradientTransformationExtraArgs:
    r"""MindFlayer SGD: rounds of clipped trials, for random compute times with outages.

    .. math:: x^{k+1} = x^k - \gamma\, \frac{1}{\sum_i B p_i}
              \sum_{i=1}^M \sum_{j \le B,\ \text{trial } j \text{ of } i \text{ succeeds}}
              \nabla f(x^k; \xi_{ij})

    A trial of worker i succeeds when it finishes within :math:`t_i = \tau_i + s`; otherwise
    the worker stops it at :math:`t_i` and starts the next (the stopped trial counts in
    ``timeouts`` and as wasted). :math:`p_i` is the success probability under the run's delay
    model (``clip_success``), so the estimator is unbiased. With :math:`s = \infty` and
    B = 1 it is minibatch SGD over the M workers. Under infinite-Bernoulli outages a worker
    that would never return is abandoned at :math:`t_i` instead of stalling the round.

    Args:
      learning_rate: :math:`\gamma`.
      clip: s, the clipping slack over the worker's fixed time (>= 0, ``inf``: never clip;
        traced). The paper's clipping time is :math:`t_i = \tau_i + s`; one s for all here.
      trials: B, trials per worker and round (the paper allows one :math:`B_i` per worker;
        one B for all here; traced, so a grid of B is one program).
      num_workers: M (the simulator fills it in).

    Extra args: ``staleness``, ``worker_ids``, ``clip_success`` (float32[M]).

    Reference: Maranjyan, Omar & Richtarik, "MindFlayer SGD: Efficient Parallel SGD in the
    Presence of Heterogeneous and Random Worker Compute Times", UAI 2025, arXiv 2410.04285
    (Algorithm 1).
    """
    m = required_workers("mindflayer", num_workers)
    return optax.chain(accept_fresh(), aggregate("sum"), mindflayer_rounds(m, clip, trials),
                       optax.sgd(learning_rate))


# ----------------------------------------------------------------------------- Malenia SGD


class WorkerBatchState(NamedTuple):
    """Malenia's server state: per-worker float32 sums and counts of fresh gradients, and its
    :class:`~jaxasync.transforms.Control`."""

    totals: PyTree
    counts: Array
    control: Control


def _carry(rows, fire: Array, estimate: PyTree, accepted: Array):
    """Rows whose ``aggregate("sum")`` is ``estimate`` on a completing step and zero
    otherwise: the first accepted row (there is one: a round completes on a fresh arrival)
    carries the estimate with weight 1, every other row weight 0 (their gradients are in the
    per-worker sums already). Every accepted row still counts as applied."""
    carrier = accepted & (jnp.cumsum(accepted.astype(jnp.int32)) == 1) & fire
    w = carrier.shape[0]
    grads = jax.tree.map(
        lambda g, e: jnp.where(carrier.reshape((w,) + (1,) * (g.ndim - 1)),
                               e[None].astype(g.dtype), g), rows.grads, estimate)
    return rows._replace(grads=grads, scale=carrier.astype(jnp.float32))


def malenia_batches(num_workers: int, batch) -> optax.GradientTransformationExtraArgs:
    r"""Malenia SGD's server (Tyurin & Richtarik, NeurIPS 2023, arXiv 2305.12387, Section 5):
    collect :math:`B_i` fresh gradients from each worker until
    :math:`(\frac1M \sum_i 1/B_i)^{-1} \ge S/M` (every :math:`B_i \ge 1`), then emit
    :math:`g = \frac1M \sum_i \frac{1}{B_i} \sum_{j \le B_i} \nabla f_i(x^k; \xi_{ij})`.

    A worker-axis transform (it needs each row's worker): memory is a parameter-sized float32
    sum per worker (``[M, ...]``); the estimate is formed on every step and kept on the
    completing one.

    Extra args: ``staleness``, ``worker_ids``, ``mask``.
    """
    def init_fn(params):
        totals = jax.tree.map(lambda p: jnp.zeros((num_workers,) + jnp.shape(p), jnp.float32),
                              params)
        return WorkerBatchState(totals, jnp.zeros((num_workers,), jnp.int32),
                                control(advance=False))

    def update_fn(updates, state, params=None, *, staleness, worker_ids=None, mask=None,
                  **extra):
        rows = as_rows(updates, mask, params,
                       {**extra, "staleness": staleness, "worker_ids": worker_ids})
        ok = rows.applied & fresh(staleness)
        rows = rows._replace(applied=ok, rejected=rows.rejected | (rows.applied & ~ok))
        ids = _ids(worker_ids, rows.scale.shape[0])
        totals = jax.tree.map(
            lambda t, g: t.at[ids].add(jnp.where(ok.reshape((-1,) + (1,) * (g.ndim - 1)),
                                                 g.astype(jnp.float32), 0.0)),
            state.totals, rows.grads)
        counts = state.counts.at[ids].add(ok.astype(jnp.int32))
        inv = 1.0 / jnp.maximum(counts, 1).astype(jnp.float32)
        harmonic = num_workers / jnp.sum(inv)
        fire = jnp.all(counts >= 1) & (harmonic >= batch / num_workers) & jnp.any(ok)
        estimate = jax.tree.map(lambda t: jnp.tensordot(inv, t, axes=1) / num_workers, totals)
        new = WorkerBatchState(jax.tree.map(lambda t: jnp.where(fire, 0.0, t), totals),
                               jnp.where(fire, 0, counts), control(advance=fire))
        return _carry(rows, fire, estimate, ok), new

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@register("malenia", params={
    "batch": hp.Param("int", low=1, doc="S: collect until the harmonic mean of the B_i "
                                         "reaches S/M (traced)")},
          example={"batch": 4}, max_staleness=lambda p: 0)
def malenia(learning_rate: float = 0.1, batch: int = 1, num_workers: int | None = None
            ) -> optax.GradientTransformationExtraArgs:
    r"""Malenia SGD: per-worker minibatches at one iterate, for heterogeneous data.

    .. math:: x^{k+1} = x^k - \gamma\, \frac1M \sum_{i=1}^M \frac1{B_i}
              \sum_{j=1}^{B_i} \nabla f_i(x^k; \xi_{ij}),
              \quad \text{once } \Big(\frac1M \sum_i \frac1{B_i}\Big)^{-1} \ge \frac SM

    Each worker's own data (its shard) weigh equally whatever its speed; gradients computed
    at an older iterate are discarded on arrival, as in Rennala SGD.

    Args:
      learning_rate: :math:`\gamma`.
      batch: S (traced).
      num_workers: M (the simulator fills it in).

    Extra args: ``staleness``, ``worker_ids``.

    Reference: Tyurin & Richtarik, NeurIPS 2023, arXiv 2305.12387 (Malenia SGD, Section 5).
    """
    m = required_workers("malenia", num_workers)
    return optax.chain(malenia_batches(m, batch), aggregate("sum"), optax.sgd(learning_rate))
