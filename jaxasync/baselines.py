r"""The asynchronous baselines CE-ASGD competes against (each factory cites its paper).

Each one is an ``optax.chain`` of worker-axis pieces (:mod:`jaxasync.transforms`),
registered for the simulator (registry name, then the extra args it needs):

* ``dc_asgd`` (``drift``): :math:`g + \lambda\, g \odot g \odot (x_t - x_{t-\tau})`;
* ``dc_asgd_adaptive`` (``drift``): the same with
  :math:`\lambda_t = \lambda_0/\sqrt{MS_t + \epsilon}`;
* ``koloskova``: a full step within the concurrency :math:`\tau_C`, drop (or shrink) beyond;
* ``picky`` (``drift_norm``): apply iff :math:`\|x_t - x_{t-\tau}\| \le \rho`;
* ``fedbuff``: K arrivals per step (4 by default), weights :math:`1/\sqrt{1+\tau}`, mean.

(ASGD, staleness-aware and delay-adaptive ASGD live in :mod:`jaxasync.algorithms`.)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import Array

from jaxasync import hparams as hp
from jaxasync import rules
from jaxasync.algorithms import register, required_workers
from jaxasync.transforms import accept_if, aggregate, as_rows, needs_extra, scale_by_staleness

PyTree = Any


# ----------------------------------------------------------------------------- DC-ASGD


class DelayCompensationState(NamedTuple):
    """State of :func:`delay_compensate`: the running mean square :math:`MS_t` (adaptive
    :math:`\\lambda`; ``()`` for a constant :math:`\\lambda`) and the steps counted."""

    mean_square: PyTree
    count: Array


def delay_compensate(lam: float | Array = 0.04, *, adaptive: bool = False,
                     ms_decay: float | Array = 0.95, eps: float | Array = 1e-7
                     ) -> optax.GradientTransformationExtraArgs:
    r"""Delay compensation of each row (Zheng et al., ICML 2017), elementwise.

    .. math:: \tilde g_i = g_i + \lambda\, g_i \odot g_i \odot (x_t - x_{t-\tau_i})

    The term is a first-order Taylor correction of :math:`g(x_{t-\tau})` towards
    :math:`g(x_t)` with the Hessian approximated by :math:`\lambda\, g g^\top`'s diagonal.
    With ``adaptive=True``, :math:`\lambda` is the elementwise
    :math:`\lambda_t = \lambda_0 / \sqrt{MS_t + \epsilon}`, where
    :math:`MS_t = m\,MS_{t-1} + (1-m)\,\bar{g^2}` and :math:`\bar{g^2}` is the mean of
    :math:`g_i \odot g_i` over this step's applied rows (the arriving gradient when K = 1).

    Args:
      lam: :math:`\lambda` (constant), or :math:`\lambda_0` when adaptive.
      adaptive: use :math:`\lambda_t`.
      ms_decay: :math:`m`.
      eps: :math:`\epsilon`.

    Extra args: ``drift`` (pytree ``[W, ...]``, :math:`x_t - x_{t-\tau_i}`), ``mask``.
    """

    def init_fn(params):
        ms = jax.tree.map(jnp.zeros_like, params) if adaptive else ()
        return DelayCompensationState(ms, jnp.zeros((), jnp.int32))

    @needs_extra('delay compensation', 'drift')
    def update_fn(updates, state, params=None, *, drift, mask=None, **extra):
        rows = as_rows(updates, mask, params, {**extra, "drift": drift})
        live = rows.applied
        n_live = jnp.sum(live.astype(jnp.float32))
        if adaptive:
            def new_ms(ms, g):
                sq = jnp.tensordot(live.astype(g.dtype), g * g, axes=1) / jnp.maximum(1.0, n_live)
                # a step without applied rows leaves the mean square as it was
                return jnp.where(n_live > 0, ms_decay * ms + (1.0 - ms_decay) * sq, ms)

            ms = jax.tree.map(new_ms, state.mean_square, rows.grads)
            lam_tree = jax.tree.map(lambda v: lam / jnp.sqrt(v + eps), ms)
            grads = jax.tree.map(lambda g, dr, lt: g + lt[None] * g * g * dr,
                                 rows.grads, drift, lam_tree)
        else:
            ms = state.mean_square
            grads = jax.tree.map(lambda g, dr: g + lam * g * g * dr, rows.grads, drift)
        # rows that are not applied keep their raw gradient (they contribute nothing)
        grads = jax.tree.map(
            lambda new, old: jnp.where(live.reshape(live.shape + (1,) * (new.ndim - 1)), new, old),
            grads, rows.grads)
        count = state.count + (n_live > 0).astype(jnp.int32)
        return rows._replace(grads=grads), DelayCompensationState(ms, count)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@register("dc_asgd", needs={"drift"}, params={"lam": hp.non_negative("lambda")})
def dc_asgd(learning_rate: float = 0.05, lam: float = 0.04
            ) -> optax.GradientTransformationExtraArgs:
    r"""DC-ASGD-c: ASGD with delay compensation at a constant :math:`\lambda`.

    .. math::

        x_{t+1} = x_t - \eta \left(g_i + \lambda\, g_i \odot g_i \odot (x_t - x_{t-\tau_i})\right)

    (the mean over the rows when K > 1). :math:`\lambda = 0` is ASGD.

    Args:
      learning_rate: :math:`\eta`.
      lam: :math:`\lambda` (the paper's DC-ASGD-c uses 0.04).

    Extra args: ``drift`` (pytree ``[W, ...]``, :math:`x_t - x_{t-\tau_i}`).

    References:
      Zheng, Meng, Wang, Chen, Yu, Ma, Liu, "Asynchronous Stochastic Gradient Descent with
      Delay Compensation", ICML 2017, arXiv 1609.08326 (Algorithm 1, DC-ASGD-c).
    """
    return optax.chain(delay_compensate(lam), aggregate("mean"), optax.sgd(learning_rate))


@register("dc_asgd_adaptive", needs={"drift"}, params={
    "lam0": hp.non_negative("lambda_0"),
    "ms_decay": hp.Param("float", low=0.0, high=1.0, high_open=True, doc="m"),
    "eps": hp.positive("epsilon")})
def dc_asgd_adaptive(learning_rate: float = 0.05, lam0: float = 2.0, ms_decay: float = 0.95,
                     eps: float = 1e-7) -> optax.GradientTransformationExtraArgs:
    r"""DC-ASGD-a: delay compensation with an adaptive, elementwise :math:`\lambda_t`.

    .. math::

        MS_t = m\,MS_{t-1} + (1 - m)\, g_i \odot g_i, \qquad
        \lambda_t = \frac{\lambda_0}{\sqrt{MS_t + \epsilon}}, \qquad
        x_{t+1} = x_t - \eta \left(g_i + \lambda_t \odot g_i \odot g_i \odot
        (x_t - x_{t-\tau_i})\right)

    Args:
      learning_rate: :math:`\eta`.
      lam0: :math:`\lambda_0` (paper: 2).
      ms_decay: :math:`m` (paper: 0.95).
      eps: :math:`\epsilon` (paper: 1e-7).

    Extra args: ``drift`` (pytree ``[W, ...]``, :math:`x_t - x_{t-\tau_i}`).

    References:
      Zheng, Meng, Wang, Chen, Yu, Ma, Liu, "Asynchronous Stochastic Gradient Descent with
      Delay Compensation", ICML 2017, arXiv 1609.08326 (DC-ASGD-a, Section 5).
    """
    return optax.chain(delay_compensate(lam0, adaptive=True, ms_decay=ms_decay, eps=eps),
                       aggregate("mean"), optax.sgd(learning_rate))


# ----------------------------------------------------------------------------- Koloskova et al.

KOLOSKOVA_MODES = ("drop", "shrink")


@register("koloskova", params={
    "concurrency": hp.integer(0, optional=True, doc="tau_C; default M"),
    "mode": hp.one_of(*KOLOSKOVA_MODES),
    "smoothness": hp.positive("L", optional=True)})
def koloskova(learning_rate: float = 0.05, num_workers: int | None = None,
              concurrency: int | None = None,
              mode: str = "drop", smoothness: float | None = None
              ) -> optax.GradientTransformationExtraArgs:
    r"""Koloskova et al.'s rule: a full step within the concurrency, none or a small one beyond.

    .. math::

        \eta_i = \begin{cases} \eta & \tau_i \le \tau_C \\
        0 \;\text{(drop)} \;\text{ or }\; \min\!\left(\eta, \frac{1}{4 L \tau_i}\right)
        \;\text{(shrink)} & \tau_i > \tau_C \end{cases}, \qquad
        x_{t+1} = x_t - \eta_i\, g_i

    A dropped gradient was already sent (the server decides on arrival): it costs its
    :math:`32d` uplink bits and counts as rejected and wasted. With :math:`\tau_C` above
    every delay, both modes are ASGD.

    Args:
      learning_rate: :math:`\eta`.
      num_workers: :math:`M` (the simulator fills it in; required without ``concurrency``).
      concurrency: :math:`\tau_C`; default :math:`M`.
      mode: ``"drop"`` or ``"shrink"``.
      smoothness: :math:`L`, needed by ``"shrink"`` (the experiment runner passes the
        workload's, when known).

    Extra args: ``staleness`` (int32[W]).

    References:
      Koloskova, Stich, Jaggi, "Sharper Convergence Guarantees for Asynchronous SGD for
      Distributed and Federated Learning", NeurIPS 2022, arXiv 2206.08307 (Theorem 8).
    """
    if mode not in KOLOSKOVA_MODES:
        raise ValueError(f"koloskova mode={mode!r}: unknown; choose one of "
                         f"{', '.join(KOLOSKOVA_MODES)}")
    if mode == "shrink" and callable(learning_rate):
        raise ValueError("koloskova: learning_rate: mode='shrink' takes only a number (its rule "
                         "is min(lr, 1/(4 L tau))), not a schedule; use mode='drop'")
    if mode == "shrink" and smoothness is None:
        raise ValueError("koloskova mode='shrink': needs the smoothness L (this workload has "
                         "none); use mode='drop'")
    tau_c = required_workers("koloskova", num_workers) if concurrency is None else concurrency
    if mode == "drop":
        first = accept_if(lambda tau: rules.within_concurrency(tau, tau_c), ("staleness",))
    else:
        first = scale_by_staleness(
            lambda tau: rules.koloskova_scale(tau, tau_c, smoothness, learning_rate))
    return optax.chain(first, aggregate("mean"), optax.sgd(learning_rate))


# ----------------------------------------------------------------------------- PickySGD


@register("picky", needs={"drift_norm"}, example={"threshold": 1.0}, params={
    "threshold": hp.threshold("rho"), "epsilon": hp.positive("epsilon", optional=True),
    "smoothness": hp.positive("L", optional=True)})
def picky(learning_rate: float = 0.05, threshold: float | None = None,
          epsilon: float | None = None, smoothness: float | None = None
          ) -> optax.GradientTransformationExtraArgs:
    r"""PickySGD: apply a stale gradient only if the model has not moved far since it was read.

    .. math::

        a_i = [\|x_t - x_{t-\tau_i}\| \le \rho], \qquad
        x_{t+1} = x_t - \eta\, \frac{\sum_i a_i g_i}{\max(1, \sum_i a_i)}

    with :math:`\rho = \epsilon / (2L)` as in the paper (target gradient norm
    :math:`\epsilon`, smoothness :math:`L`), or :math:`\rho` = ``threshold``. An absolute
    drift rule (the closest prior rule to CE-ASGD's relative one). The worker has already
    sent its gradient when the server decides: a rejection costs the full :math:`32d`
    uplink bits, counts as rejected and wasted. :math:`\rho = \infty` is ASGD.

    Args:
      learning_rate: :math:`\eta`.
      threshold: :math:`\rho`, a number (the fallback where :math:`L` is unknown).
      epsilon: :math:`\epsilon`; with a known ``smoothness``, :math:`\rho = \epsilon/(2L)`
        and ``threshold`` is ignored.
      smoothness: :math:`L` (the experiment runner passes the workload's, when known).

    Extra args: ``drift_norm`` (float32[W], :math:`\|x_t - x_{t-\tau_i}\|`).

    References:
      Cohen, Daniely, Drori, Koren, Schain, "Asynchronous Stochastic Optimization Robust
      to Arbitrary Delays", NeurIPS 2021, arXiv 2106.11879 (Algorithm 1, Picky SGD).
    """
    if epsilon is not None and smoothness is not None:
        rho = epsilon / (2.0 * smoothness)
    elif threshold is not None:
        rho = threshold
    elif epsilon is not None:
        raise ValueError(f"picky: epsilon={epsilon!r} needs the smoothness L, and this workload "
                         "has none; give threshold instead (or as a fallback)")
    else:
        raise ValueError("picky: give threshold (a drift radius) or epsilon (radius epsilon / 2L)")
    accept = lambda drift_norm: rules.drift_at_most(drift_norm, rho)
    return optax.chain(accept_if(accept, ("drift_norm",), upload_after_accept=False),
                       aggregate("mean"), optax.sgd(learning_rate))


# ----------------------------------------------------------------------------- FedBuff


@register("fedbuff", arrivals=4)
def fedbuff(learning_rate: float = 0.05) -> optax.GradientTransformationExtraArgs:
    r"""FedBuff-style buffered ASGD: wait for K arrivals, down-weight stale ones, average.

    .. math::

        x_{t+1} = x_t - \eta_g\, \frac{1}{K} \sum_{i=1}^{K} \frac{g_i}{\sqrt{1 + \tau_i}}

    Each client contributes one gradient (one local step, the client learning rate folded
    into :math:`\eta_g`). K is the simulator's arrivals per step: 4 by default,
    ``algorithm.arrivals`` in the config.

    Args:
      learning_rate: :math:`\eta_g`, the server learning rate.

    Extra args: ``staleness`` (int32[W]).

    References:
      Nguyen, Malik, Zhan, Yousefpour, Rabbat, Malek, Huba, "Federated Learning with
      Buffered Asynchronous Aggregation", AISTATS 2022, arXiv 2106.06639.
    """
    return optax.chain(scale_by_staleness(rules.fedbuff_weight), aggregate("mean"),
                       optax.sgd(learning_rate))
