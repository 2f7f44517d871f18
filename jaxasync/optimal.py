r"""The methods with optimal time complexity under heterogeneous compute times (2023-2025).

Tyurin & Richtarik's lower bound for M workers that need fixed times
:math:`\tau_1 \le \dots \le \tau_M` per stochastic gradient ("Optimal time complexities of
parallel stochastic optimization methods under a fixed computation model", NeurIPS 2023,
arXiv 2305.12387, Theorem 6.4) is

.. math:: T^* = \min_{m \in [M]} \Big[\Big(\frac1m \sum_{i \le m} \frac1{\tau_i}\Big)^{-1}
          \Big(\frac{L\Delta}{\varepsilon} + \frac{\sigma^2 L \Delta}{m \varepsilon^2}\Big)\Big]

(:func:`optimal_time`). The methods here reach it (or are their baselines); registry name,
then the side information each needs beyond staleness, mask and worker ids:

* ``rennala``: Rennala SGD, a batch of S gradients at one iterate;
* ``ringmaster`` / ``ringmaster_stop`` (``inflight``): ASGD that ignores delays >= R, and
  that also stops computations whose delay reaches R;
* ``naive_optimal_asgd`` (``compute_times``): ASGD on the :math:`m^*` fastest workers;
* in :mod:`jaxasync.rounds`: ``mindflayer`` (clipped trials, for random compute times) and
  ``malenia`` (per-worker batches, for heterogeneous data).

Buffering servers (Rennala here, MindFlayer and Malenia in :mod:`jaxasync.rounds`) accept
rows for several steps and move the iterate only when the batch is complete; they say so
through a :class:`~jaxasync.transforms.Control` in their state (``advance``), and their update
is zero on the other steps (an optax user gets the same iterates without the simulator).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

from jaxasync import hparams as hp
from jaxasync.algorithms import register, required_workers
from jaxasync.transforms import Control, accept_if, aggregate, as_rows, control

PyTree = Any


def optimal_time(times, smoothness: float, delta: float, sigma_sq: float, epsilon: float
                 ) -> tuple[float, int]:
    r"""``(T*, m*)`` of Tyurin & Richtarik's lower bound (NeurIPS 2023, Theorem 6.4; the
    :math:`m^*` of Maranjyan, Tyurin & Richtarik, ICML 2025, arXiv 2501.16168, Section 4):
    :math:`\min_m (\frac1m\sum_{i\le m} 1/\tau_i)^{-1}(L\Delta/\varepsilon +
    \sigma^2 L\Delta/(m\varepsilon^2))` over the times sorted ascending (NumPy, float64)."""
    t = np.sort(np.asarray(times, np.float64))
    m = np.arange(1, t.size + 1)
    harmonic = m / np.cumsum(1.0 / t)
    cost = harmonic * (smoothness * delta / epsilon + sigma_sq * smoothness * delta
                       / (m * epsilon**2))
    best = int(np.argmin(cost))
    return float(cost[best]), best + 1


# ----------------------------------------------------------------------------- building blocks


def _ids(worker_ids: Array | None, w: int) -> Array:
    return jnp.arange(w, dtype=jnp.int32) if worker_ids is None else worker_ids


def _sgd_chain(first: optax.GradientTransformationExtraArgs, learning_rate,
               how: str = "mean") -> optax.GradientTransformationExtraArgs:
    return optax.chain(first, aggregate(how), optax.sgd(learning_rate))


# ----------------------------------------------------------------------------- Rennala SGD


class BatchState(NamedTuple):
    """A buffering server's state: the float32 sum of the accepted gradients, how many, and
    its :class:`~jaxasync.transforms.Control`."""

    total: PyTree
    count: Array
    control: Control

    def metrics(self) -> dict[str, Array]:
        return {"buffered": self.count}


def fresh(tau: Array) -> Array:
    """Only gradients computed at the current iterate count (Rennala SGD, Algorithm 4
    line 8: ``if k' = k``)."""
    return tau == 0


def fresh_count(staleness: Array, mask: Array | None) -> Array:
    """How many rows :func:`accept_fresh` applied: live and fresh."""
    ok = fresh(staleness) if mask is None else mask & fresh(staleness)
    return jnp.sum(ok.astype(jnp.int32))


def accept_fresh() -> optax.GradientTransformationExtraArgs:
    """Rows computed at the current iterate are applied, stale ones rejected (their workers
    start again at the iterate, as every arriving worker does)."""
    return accept_if(fresh, ("staleness",))


def zeros32(params: PyTree) -> PyTree:
    return jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)


def add32(total: PyTree, updates: PyTree) -> PyTree:
    return jax.tree.map(lambda t, u: t + u.astype(jnp.float32), total, updates)


def emit_if(fire: Array, estimate: PyTree, like: PyTree) -> PyTree:
    """``estimate`` (in ``like``'s dtypes) on a completing step, zeros otherwise."""
    return jax.tree.map(lambda e, u: jnp.where(fire, e, 0.0).astype(u.dtype), estimate, like)


def rennala_batch(batch: int | Array, num_workers: int | None = None,
                  restart_stale: bool = False) -> optax.GradientTransformationExtraArgs:
    r"""Rennala SGD's buffer (Tyurin & Richtarik, NeurIPS 2023, arXiv 2305.12387,
    Algorithm 4; the KAUST simulator's ``rennala_master``), after :func:`accept_fresh` and
    ``aggregate("sum")``: add the step's accepted gradients to the buffer and, once it holds
    ``batch`` = S of them, emit their mean :math:`\frac1S \sum_s \nabla f(x^k; \xi_s)` and
    move the iterate; emit zero before.

    ``restart_stale``: when the iterate moves, also stop every worker still computing at the
    old one and restart it at the new one (a variant; the paper lets them finish and
    discards their gradient on arrival). ``batch`` may be traced (a vmapped grid of S).

    Extra args: ``staleness``, ``mask`` (to count the accepted rows).
    """
    if restart_stale:
        num_workers = required_workers("rennala", num_workers)

    def init_fn(params):
        restart = False if restart_stale else None
        return BatchState(zeros32(params), jnp.zeros((), jnp.int32),
                          control(num_workers, advance=False, restart=restart))

    def update_fn(updates, state, params=None, *, staleness, mask=None, **extra):
        del params, extra
        new_rows = fresh_count(staleness, mask)
        total, count = add32(state.total, updates), state.count + new_rows
        fire = (count >= batch) & (new_rows > 0)
        mean = jax.tree.map(lambda t: t / jnp.maximum(count, 1).astype(jnp.float32), total)
        new = BatchState(jax.tree.map(lambda t: jnp.where(fire, 0.0, t), total),
                         jnp.where(fire, 0, count),
                         control(num_workers, advance=fire,
                                 restart=fire if restart_stale else None))
        return emit_if(fire, mean, updates), new

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@register("rennala", params={
    "batch": hp.Param("int", low=1, doc="S, gradients per step (traced: a grid of S runs "
                                         "in one program)"),
    "restart_stale": hp.flag("restart the workers still at the old iterate"),
}, example={"batch": 2}, max_staleness=lambda p: 0)
def rennala(learning_rate: float = 0.1, batch: int = 1, num_workers: int | None = None,
            restart_stale: bool = False) -> optax.GradientTransformationExtraArgs:
    r"""Rennala SGD: a minibatch of S gradients, all computed at the current iterate.

    .. math:: x^{k+1} = x^k - \gamma\,\frac1S \sum_{s=1}^S \nabla f(x^k; \xi_s)

    Workers compute asynchronously; a gradient computed at an older iterate is discarded on
    arrival and its worker starts again at :math:`x^k` at once (Algorithm 4, lines 8-11).
    With S = 1 and equal times it is SGD with one gradient per step; under fixed times
    :math:`\tau_i` its time complexity is optimal (Theorem 7.3) for a tuned S.

    Args:
      learning_rate: :math:`\gamma`.
      batch: S (an integer >= 1; traced, so a grid of S is one vmapped program).
      num_workers: M (needed with ``restart_stale``).
      restart_stale: also stop and restart every worker still computing at the old iterate
        when the iterate moves (not in the paper; their work counts as wasted).

    Extra args: ``staleness``.

    References:
      Tyurin & Richtarik, "Optimal Time Complexities of Parallel Stochastic Optimization
      Methods Under a Fixed Computation Model", NeurIPS 2023, arXiv 2305.12387
      (Algorithm 4, Method 5); KAUST simulator ``asynchronous/algorithm.py``
      (``AsynchronousMiniBatchSGD``), github.com/k3nfalt/optimal-decentralized-optimization.
    """
    return optax.chain(accept_fresh(), aggregate("sum"),
                       rennala_batch(batch, num_workers, restart_stale),
                       optax.sgd(learning_rate))


# ----------------------------------------------------------------------------- Ringmaster ASGD


class StopState(NamedTuple):
    """:func:`stop_stale`'s state: its :class:`~jaxasync.transforms.Control`."""

    control: Control


def stop_stale(delay_threshold: float | Array, num_workers: int
               ) -> optax.GradientTransformationExtraArgs:
    r"""Ringmaster ASGD's stops (arXiv 2501.16168, Algorithm 5): when the iterate moves,
    every computation whose delay reaches R (it could only be ignored) is stopped and
    restarted at the new iterate.

    After the step the delay of worker i's computation is
    :math:`\delta_i = \text{inflight}_i + a` (:math:`a` = 1 if the step moves the iterate);
    restart iff :math:`\delta_i \ge R`. Put it after the acceptance rule: it reads which rows
    are applied.

    Extra args: ``inflight`` (int32[M]).
    """
    def init_fn(params):
        del params
        return StopState(control(num_workers, advance=False, restart=False))

    def update_fn(updates, state, params=None, *, inflight, mask=None, **extra):
        del state
        rows = as_rows(updates, mask, params, extra)
        advance = jnp.any(rows.applied)
        delay = inflight.astype(jnp.float32) + advance.astype(jnp.float32)
        ctrl = control(num_workers, advance=advance, restart=delay >= delay_threshold)
        return rows, StopState(ctrl)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _within(delay_threshold):
    """The Ringmaster acceptance: :math:`\\delta < R` (``R = inf``: every row)."""
    return accept_if(lambda tau: tau.astype(jnp.float32) < delay_threshold, ("staleness",))


RINGMASTER_PARAMS = {"delay_threshold": hp.Param(
    "float", low=1.0, finite=False, doc="R: gradients with delay >= R are ignored (inf: ASGD)")}


def _ringmaster_staleness(params: dict) -> int | None:
    """Rows with delay >= R are never applied: the ring needs R versions."""
    r = params.get("delay_threshold", float("inf"))
    return None if r is None or math.isinf(r) else math.ceil(r) - 1


@register("ringmaster", params=RINGMASTER_PARAMS, example={"delay_threshold": 2.0},
          max_staleness=_ringmaster_staleness)
def ringmaster(learning_rate: float = 0.1, delay_threshold: float = float("inf")
               ) -> optax.GradientTransformationExtraArgs:
    r"""Ringmaster ASGD without calculation stops (arXiv 2501.16168, Algorithm 4).

    .. math:: x^{k+1} = \begin{cases} x^k - \gamma \nabla f(x^{k-\delta^k}; \xi) &
              \delta^k < R \\ x^k & \text{otherwise (the gradient is ignored)} \end{cases}

    The arriving worker starts again at the (new) iterate either way. R = :math:`\infty` is
    ASGD; the paper's choice is :math:`R = \max\{1, \lceil \sigma^2/\varepsilon \rceil\}`.

    Args:
      learning_rate: :math:`\gamma`.
      delay_threshold: R (>= 1, ``inf`` allowed; traced, so a grid of R is one program).

    Extra args: ``staleness``.

    Reference: Maranjyan, Tyurin & Richtarik, "Ringmaster ASGD: The First Asynchronous SGD
    with Optimal Time Complexity", ICML 2025, arXiv 2501.16168 (Algorithm 4).
    """
    return _sgd_chain(_within(delay_threshold), learning_rate)


@register("ringmaster_stop", needs={"inflight"}, params=RINGMASTER_PARAMS,
          example={"delay_threshold": 2.0}, max_staleness=_ringmaster_staleness)
def ringmaster_stop(learning_rate: float = 0.1, delay_threshold: float = float("inf"),
                    num_workers: int | None = None) -> optax.GradientTransformationExtraArgs:
    r"""Ringmaster ASGD with calculation stops (arXiv 2501.16168, Algorithm 5).

    Algorithm 4's rule, and whenever the iterate moves every computation whose delay reaches
    R is stopped and restarted at the new iterate (:func:`stop_stale`): no worker ever
    computes a gradient that would be ignored. Stopped work counts as wasted (``stopped``).

    Args:
      learning_rate: :math:`\gamma`.
      delay_threshold: R (>= 1; traced).
      num_workers: M (the simulator fills it in).

    Extra args: ``staleness``, ``inflight`` (int32[M]).

    Reference: Maranjyan, Tyurin & Richtarik, ICML 2025, arXiv 2501.16168 (Algorithm 5).
    """
    m = required_workers("ringmaster_stop", num_workers)
    return optax.chain(_within(delay_threshold), stop_stale(delay_threshold, m),
                       aggregate("mean"), optax.sgd(learning_rate))


# ----------------------------------------------------------------------------- Naive Optimal ASGD


def fastest_workers(times: Array, sigma_sq: float | Array, epsilon: float | Array,
                    workers: int | None = None) -> Array:
    r"""bool[M]: the :math:`m^*` workers with the smallest times (ties: lower index), where
    :math:`m^* = \arg\min_m (\frac1m \sum_{i \le m} 1/\tau_{(i)})^{-1}
    (1 + \sigma^2/(m\varepsilon))` (arXiv 2501.16168, Section 4; the same minimiser as
    :func:`optimal_time`), or the ``workers`` fastest."""
    m = times.shape[0]
    order = jnp.argsort(times, stable=True)
    rank = jnp.zeros((m,), jnp.int32).at[order].set(jnp.arange(m, dtype=jnp.int32))
    if workers is not None:
        return rank < workers
    k = jnp.arange(1, m + 1, dtype=jnp.float32)
    harmonic = k / jnp.cumsum(1.0 / times[order])
    cost = harmonic * (1.0 + sigma_sq / (k * epsilon))
    return rank <= jnp.argmin(cost)


class SelectState(NamedTuple):
    """:func:`only_fastest`'s state: its :class:`~jaxasync.transforms.Control`."""

    control: Control


def only_fastest(num_workers: int, sigma_sq, epsilon, workers: int | None = None,
                 worker_times: tuple | None = None) -> optax.GradientTransformationExtraArgs:
    """Rows of the :func:`fastest_workers` only; the others are rejected and held idle.

    ``worker_times``: the workers' fixed times when known before the run (the experiment
    passes them for deterministic times): the selection is then computed once, on the host;
    otherwise every step from the ``compute_times`` side information (a sort over M).

    Extra args: ``worker_ids``, ``compute_times`` (float32[M]).
    """
    known = None
    if worker_times is not None:
        t = np.asarray(worker_times, np.float64)
        if t.shape != (num_workers,):
            raise ValueError(f"naive_optimal_asgd: worker_times has {t.size} entries; "
                             f"expected num_workers={num_workers}")
        known = fastest_workers(jnp.asarray(t, jnp.float32), sigma_sq, epsilon, workers)

    def init_fn(params):
        del params
        return SelectState(control(num_workers, advance=False, hold=False))

    def update_fn(updates, state, params=None, *, compute_times, worker_ids=None, mask=None,
                  **extra):
        del state
        rows = as_rows(updates, mask, params, {**extra, "worker_ids": worker_ids})
        active = known if known is not None else fastest_workers(compute_times, sigma_sq,
                                                                 epsilon, workers)
        ok = rows.applied & active[_ids(worker_ids, rows.scale.shape[0])]
        rows = rows._replace(applied=ok, rejected=rows.rejected | (rows.applied & ~ok))
        return rows, SelectState(control(num_workers, advance=jnp.any(ok), hold=~active))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@register("naive_optimal_asgd", needs={"compute_times"}, params={
    "sigma_sq": hp.non_negative("sigma^2, the gradient noise variance"),
    "epsilon": hp.positive("epsilon, the target accuracy"),
    "workers": hp.integer(1, optional=True, doc="m*; default: from sigma^2, epsilon, tau_i"),
    "worker_times": hp.Param("any", optional=True, static=True,
                             doc="tau_i when known before the run (the runner passes them)"),
})
def naive_optimal_asgd(learning_rate: float = 0.1, sigma_sq: float = 1.0, epsilon: float = 0.01,
                       workers: int | None = None, num_workers: int | None = None,
                       worker_times: tuple | None = None) -> optax.GradientTransformationExtraArgs:
    r"""Naive Optimal ASGD: ASGD on the :math:`m^*` fastest workers only; the others idle.

    .. math:: m^* = \arg\min_{m \in [M]} \Big(\frac1m \sum_{i=1}^m \frac1{\tau_i}\Big)^{-1}
              \Big(1 + \frac{\sigma^2}{m\varepsilon}\Big), \qquad
              x^{k+1} = x^k - \gamma \nabla f(x^{k-\delta^k}; \xi) \text{ from workers } 1..m^*

    Optimal under fixed times when they are known (arXiv 2501.16168, Algorithm 3 and
    Theorem 4.1). The slower workers' first computations are stopped at the first step
    (counted in ``stopped``).

    Args:
      learning_rate: :math:`\gamma`.
      sigma_sq, epsilon: :math:`\sigma^2` and :math:`\varepsilon` of the selection.
      workers: :math:`m^*` directly (overrides the formula).
      num_workers: M (the simulator fills it in).
      worker_times: :math:`\tau_i` when known before the run (the experiment passes them).

    Extra args: ``worker_ids``, ``compute_times`` (float32[M]).

    Reference: Maranjyan, Tyurin & Richtarik, ICML 2025, arXiv 2501.16168 (Algorithm 3).
    """
    m = required_workers("naive_optimal_asgd", num_workers)
    if workers is not None and workers > m:
        raise ValueError(f"naive_optimal_asgd: workers={workers}: must be <= num_workers={m}")
    return _sgd_chain(only_fastest(m, sigma_sq, epsilon, workers, worker_times), learning_rate)
