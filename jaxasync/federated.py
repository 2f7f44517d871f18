r"""Asynchronous federated servers: FedAsync and FedBuff.

* ``fedasync`` (``drift``): mix each arriving client model into the server model with a
  staleness-dependent weight, :math:`x \leftarrow (1-\alpha_t) x + \alpha_t x_{\text{client}}`;
* ``fedbuff``: wait for K arrivals, weight each by its staleness, and apply their sum divided
  by K (the paper) or by the sum of the weights.

Each client runs one local step from the model it downloaded (the simulator's gradient at the
stale iterate), so a client model is :math:`x_{t-\tau} - \gamma g`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import Array

from jaxasync import hparams as hp
from jaxasync import rules
from jaxasync.algorithms import register
from jaxasync.transforms import aggregate, as_rows, scale_by_staleness

PyTree = Any

STALENESS_FUNCTIONS = ("constant", "polynomial", "hinge")


def staleness_function(name: str, a: float | Array = 0.5, b: float | Array = 4.0):
    r"""FedAsync's :math:`s(t - \tau)` (arXiv 1903.03934, Section 5.2): ``constant`` (1),
    ``polynomial`` :math:`(\tau+1)^{-a}`, ``hinge`` (1 up to :math:`b`, then
    :math:`1/(a(\tau-b)+1)`), as a function of the staleness."""
    if name == "constant":
        return rules.constant_scale
    if name == "polynomial":
        return lambda tau: rules.polynomial_weight(tau, a)
    if name == "hinge":
        return lambda tau: rules.hinge_weight(tau, a, b)
    raise ValueError(f"fedasync: staleness={name!r}: unknown; choose one of "
                     f"{', '.join(STALENESS_FUNCTIONS)}")


class MixState(NamedTuple):
    """:func:`client_mix`'s state: updates so far (the client learning rate's schedule)."""

    count: Array


def client_mix(learning_rate, alpha, weight) -> optax.GradientTransformationExtraArgs:
    r"""Each row becomes the server's move towards its client model, before the mixing weight.

    Row i (client model :math:`x_{t-\tau_i} - \gamma g_i`) becomes
    :math:`x_t - x_{\text{client}} = (x_t - x_{t-\tau_i}) + \gamma g_i` with scale
    :math:`\alpha\, s(\tau_i)`; ``aggregate("mean")`` and a sign flip then give
    :math:`x_{t+1} = x_t + \alpha_t (x_{\text{client}} - x_t)`. The weight depends on the
    row's staleness only, never on the number of updates so far (``count`` feeds only the
    client learning rate's schedule).

    Extra args: ``drift`` (pytree ``[W, ...]``), ``staleness``.
    """
    def init_fn(params):
        del params
        return MixState(jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None, *, drift, staleness, mask=None, **extra):
        rows = as_rows(updates, mask, params, {**extra, "drift": drift, "staleness": staleness})
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        moved = jax.tree.map(lambda dr, g: (dr + lr * g).astype(g.dtype), drift, rows.grads)
        factor = (alpha * weight(staleness)).astype(jnp.float32)
        return (rows._replace(grads=moved, scale=rows.scale * factor),
                MixState(state.count + 1))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@register("fedasync", needs={"drift"}, params={
    "alpha": hp.Param("float", low=0.0, high=1.0, low_open=True, doc="alpha, the mixing weight"),
    "staleness": hp.one_of(*STALENESS_FUNCTIONS, doc="s(t - tau)"),
    "a": hp.non_negative("a of the polynomial and hinge functions"),
    "b": hp.non_negative("b of the hinge function"),
})
def fedasync(learning_rate: float = 0.1, alpha: float = 0.6, staleness: str = "polynomial",
             a: float = 0.5, b: float = 4.0) -> optax.GradientTransformationExtraArgs:
    r"""FedAsync: mix each client's model into the server's with a staleness-scaled weight.

    .. math:: x_{t+1} = (1 - \alpha_t)\, x_t + \alpha_t\, x_{\text{client}}, \qquad
              \alpha_t = \alpha\, s(t - \tau), \qquad x_{\text{client}} = x_{t-\tau} - \gamma g

    :math:`\alpha_t` depends on the arrival's staleness only: it does not decay with the
    number of updates (a public implementation multiplies :math:`\alpha` by a decay factor
    after every update, which the paper does not do; ``tests/test_federated.py`` pins ours).
    With K > 1 arrivals per step the moves are averaged. :math:`s = 1` and
    :math:`\alpha = 1` give :math:`x_{t+1} = x_{\text{client}}`.

    Args:
      learning_rate: :math:`\gamma`, the client's step size (one local step).
      alpha: :math:`\alpha \in (0, 1]`.
      staleness: :math:`s`: ``constant``, ``polynomial`` :math:`(t-\tau+1)^{-a}` or ``hinge``.
      a, b: the staleness function's parameters (traced).

    Extra args: ``staleness``, ``drift``.

    Reference: Xie, Koyejo & Gupta, "Asynchronous Federated Optimization", OPT 2020,
    arXiv 1903.03934 (Algorithm 1, Section 5.2).
    """
    weight = staleness_function(staleness, a, b)
    return optax.chain(client_mix(learning_rate, alpha, weight), aggregate("mean"),
                       optax.scale(-1.0))


# ----------------------------------------------------------------------------- FedBuff

NORMALISATIONS = ("buffer", "weights")


@register("fedbuff", arrivals=4, params={
    "normalise": hp.one_of(*NORMALISATIONS, doc="divide by K (buffer) or by the weights' sum"),
    "exponent": hp.Param("float", low=0.0, optional=True,
                         doc="e of (1+tau)^-e / (1+avg)^-e; null: 1/sqrt(1+tau)"),
    "avg_staleness": hp.non_negative("the staleness whose weight is 1"),
})
def fedbuff(learning_rate: float = 0.05, normalise: str = "buffer",
            exponent: float | None = None, avg_staleness: float = 0.0
            ) -> optax.GradientTransformationExtraArgs:
    r"""FedBuff-style buffered ASGD: wait for K arrivals, down-weight stale ones, combine.

    .. math::

        x_{t+1} = x_t - \eta_g\, \frac{\sum_{i=1}^{K} w(\tau_i)\, g_i}{N}, \qquad
        N = K \text{ (``buffer``)} \text{ or } \sum_i w(\tau_i) \text{ (``weights``)}

    with :math:`w(\tau) = 1/\sqrt{1 + \tau}` (the paper's), or with ``exponent`` = e the
    normalised polynomial :math:`w(\tau) = (1+\tau)^{-e} / (1+\bar\tau)^{-e}`,
    :math:`\bar\tau` = ``avg_staleness`` (:func:`jaxasync.rules.polynomial_weight`). Each
    client contributes one gradient (one local step, the client learning rate folded into
    :math:`\eta_g`). K is the simulator's arrivals per step: 4 by default,
    ``algorithm.arrivals`` in the config.

    Args:
      learning_rate: :math:`\eta_g`, the server learning rate.
      normalise: ``buffer`` (divide by K, the paper's Algorithm 1) or ``weights``.
      exponent: e, or None for :math:`1/\sqrt{1+\tau}`.
      avg_staleness: :math:`\bar\tau`.

    Extra args: ``staleness`` (int32[W]).

    References:
      Nguyen, Malik, Zhan, Yousefpour, Rabbat, Malek, Huba, "Federated Learning with
      Buffered Asynchronous Aggregation", AISTATS 2022, arXiv 2106.06639 (Algorithm 1).
    """
    if exponent is None:
        weight = rules.fedbuff_weight
    else:
        weight = lambda tau: rules.polynomial_weight(tau, exponent, avg_staleness)  # noqa: E731
    how = "mean" if normalise == "buffer" else "weighted"
    return optax.chain(scale_by_staleness(weight), aggregate(how), optax.sgd(learning_rate))
