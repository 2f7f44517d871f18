r"""CE-ASGD and CE-ASGD-lite: norm-ratio acceptance of stale gradients.

Ahmed, Ghosh, Wang, Shroff, "Communication Efficient Asynchronous Stochastic Gradient
Descent", IEEE INFOCOM 2025 (DOI 10.1109/INFOCOM55648.2025.11044686).

**This module implements our interpretation of the paper's abstract**, which is all that
is public (no full text, no code, no published numbers). The abstract says: a worker sends
only the *norm* of its stale gradient; the server accepts the gradient when
:math:`\|g\| / \|x_{global} - x_{local}\|` exceeds a threshold; with a proper threshold the
rate matches synchronous SGD independently of the staleness; a simplified variant lowers
the server's computation without losing the rate. The protocol below (and the meaning of
"simplified variant") is our reading:

Per arrival of worker :math:`i` with a gradient :math:`g_i` computed at :math:`x_{t-\tau_i}`:

1. the worker sends :math:`s_i = \|g_i\|` (32 bits up);
2. the server computes the drift :math:`\delta_i = \|x_t - x_{t-\tau_i}\|` (full) or the
   bound :math:`\hat\delta_i = \sum_{j<\tau_i} \|x_{t-j} - x_{t-j-1}\| \ge \delta_i` (lite);
3. it accepts iff :math:`\tau_i = 0` or :math:`s_i \ge c\,\delta_i` (:math:`\delta_i = 0`
   accepts; ``threshold`` :math:`c`, or :math:`c = \kappa L` on an :math:`L`-smooth problem);
4. accepted: the worker uploads :math:`g_i` (:math:`32d` bits), the server applies it and
   sends the new model back (:math:`32d` down);
5. rejected: nothing is applied; the worker receives the current model (:math:`32d` down),
   its gradient computation is wasted, and it computes a fresh gradient.

Steps 4-5's consequences in the event-driven model (link time of the download, the
restart from the new version, the wasted-computation counter) are carried out by the
simulator generically from the decisions in :class:`jaxasync.transforms.WorkerRows`.

Why :math:`c = \kappa L`: for an :math:`L`-smooth :math:`f`,
:math:`\|\nabla f(x_t) - \nabla f(x_{t-\tau})\| \le L\delta`, so an accepted gradient
(:math:`s \ge \kappa L \delta`) has a staleness error at most :math:`s/\kappa`.

Server work per decision is counted in :class:`ServerWorkState` and read with
:func:`server_work` (the simulator reports it as the ``server_*`` metrics): the full rule
computes one :math:`d`-vector drift norm (about :math:`2d` flops) per stale decision and
keeps :math:`D` model versions; lite adds :math:`\tau_i` scalars per decision and keeps
:math:`D` scalars.

The factories are ``jaxasync.ce_asgd`` and ``jaxasync.ce_asgd_lite``; the helpers are in
this module, ``jaxasync.ce`` (``from jaxasync.ce import drift_bound, server_work``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
import optax
from jax import Array

from jaxasync import hparams as hp
from jaxasync import rules
from jaxasync.algorithms import register
from jaxasync.transforms import (
    accept_if,
    aggregate,
    as_rows,
    find_states,
    needs_extra,
    num_params,
)

PyTree = Any

#: bits of the norm probe a CE-ASGD worker sends before the decision (one float32)
PROBE_BITS = 32.0

VARIANTS = ("full", "lite")

#: the CE-ASGD arguments' declarations (both variants)
_PARAMS = {"threshold": hp.threshold("c"), "kappa": hp.threshold("kappa: c = kappa L"),
           "smoothness": hp.positive("L", optional=True)}


# ----------------------------------------------------------------------------- pure pieces


def drift_bound(update_norms: Array, staleness: Array) -> Array:
    r"""CE-ASGD-lite's drift bound :math:`\hat\delta_i = \sum_{j<\tau_i} u_j`.

    By the triangle inequality
    :math:`\|x_t - x_{t-\tau}\| \le \sum_{j=0}^{\tau-1} \|x_{t-j} - x_{t-j-1}\|`, so the
    bound never underestimates the exact drift; it needs only the scalar update norms.

    Args:
      update_norms: float32[D], :math:`u_j = \|x_{t-j} - x_{t-j-1}\|`, newest first (the
        ``update_norms`` extra arg).
      staleness: int32[W], :math:`\tau_i`; values :math:`\ge D` give the sum of all D
        norms (such rows are dropped by the simulator anyway).

    Returns:
      float32[W], :math:`\hat\delta_i` (0 for :math:`\tau_i = 0`).
    """
    csum = jnp.concatenate([jnp.zeros((1,), jnp.float32),
                            jnp.cumsum(update_norms.astype(jnp.float32))])
    idx = jnp.clip(staleness.astype(jnp.int32), 0, update_norms.shape[0])
    return csum[idx]


def resolve_threshold(threshold: float | Array | None, kappa: float | Array | None,
                      smoothness: float | None, name: str = "ce_asgd") -> float | Array:
    r"""The acceptance threshold: :math:`c = \kappa L` where :math:`L` is known, else ``threshold``.

    ``kappa`` takes precedence when ``smoothness`` is known, so one config can carry both
    (``kappa`` for workloads with a known :math:`L`, ``threshold`` as the fallback).

    Raises:
      ValueError: neither is usable (no ``threshold``, and ``kappa`` without ``smoothness``).
    """
    if kappa is not None and smoothness is not None:
        return kappa * smoothness
    if threshold is not None:
        return threshold
    if kappa is not None:
        raise ValueError(f"{name}: kappa={kappa!r} needs the smoothness L, and this workload has "
                         "none; give threshold instead (or as a fallback)")
    raise ValueError(f"{name}: give threshold (a number) or kappa (threshold = kappa * L)")


# ----------------------------------------------------------------------------- server work


class ServerWorkState(NamedTuple):
    """Cumulative server-side work of the acceptance decisions (int32 scalars).

    Attributes:
      decisions: arrivals the server decided on (accepted or rejected; dropped rows excluded).
      vector_ops: :math:`d`-vector norms the server computed (full: one drift norm per
        stale decision; lite with K > 1: one update norm per applied step).
      scalar_ops: scalar operations (lite: :math:`\\tau_i` additions per decision; both:
        one multiply and one compare per decision; lite with K = 1: one multiply per applied
        step for the update norm :math:`\\eta s_i`).
      dim: :math:`d`, the number of parameters (to turn vector ops into flops).
    """

    decisions: Array
    vector_ops: Array
    scalar_ops: Array
    dim: Array

    def metrics(self) -> dict[str, Array]:
        """The ``server_*`` metrics (the simulator reports every state's ``metrics()``).

        ``server_flops`` counts :math:`2d` flops per vector op plus the scalar ops;
        ``server_flops_per_decision`` divides it by the decisions.
        """
        flops = (2.0 * self.dim.astype(jnp.float32) * self.vector_ops.astype(jnp.float32)
                 + self.scalar_ops.astype(jnp.float32))
        return {
            "server_decisions": self.decisions,
            "server_vector_ops": self.vector_ops,
            "server_scalar_ops": self.scalar_ops,
            "server_flops": flops,
            "server_flops_per_decision": flops / jnp.maximum(1, self.decisions).astype(jnp.float32),
        }


def count_server_work(variant: str) -> optax.GradientTransformationExtraArgs:
    r"""Counts the server's work for CE-ASGD decisions; passes the rows through unchanged.

    Place it right after the :func:`~jaxasync.transforms.accept_if` it measures: a decision
    is a row that is accepted or rejected (not dropped).

    * ``"full"``: per decision with :math:`\tau_i > 0` one drift norm
      :math:`\|x_t - x_{t-\tau_i}\|` (a :math:`d`-vector op, about :math:`2d` flops),
      plus 2 scalar ops (:math:`c\,\delta_i`, the comparison).
    * ``"lite"``: per decision :math:`\tau_i` scalar additions plus 2 scalar ops; per
      applied step the new update norm: with one row (K = 1) it is :math:`\eta s_i`
      (one scalar op, the worker sent :math:`s_i`), with more rows a :math:`d`-vector norm.

    Extra args: ``staleness`` (int32[W]), ``mask`` (bool[W], optional).
    """
    if variant not in VARIANTS:
        raise ValueError(f"count_server_work variant={variant!r}: choose one of "
                         f"{', '.join(VARIANTS)}")

    def init_fn(params):
        z = jnp.zeros((), jnp.int32)
        return ServerWorkState(z, z, z, jnp.asarray(num_params(params), jnp.int32))

    @needs_extra('count_server_work', 'staleness')
    def update_fn(updates, state, params=None, *, staleness, mask=None, **extra):
        rows = as_rows(updates, mask, params, {**extra, "staleness": staleness})
        w = rows.scale.shape[0]
        decided = (rows.applied | rows.rejected) & ~rows.dropped
        n_dec = jnp.sum(decided.astype(jnp.int32))
        tau = staleness.astype(jnp.int32)
        if variant == "full":
            vec = jnp.sum((decided & (tau > 0)).astype(jnp.int32))
            scal = 2 * n_dec
        else:
            advance = jnp.any(rows.applied).astype(jnp.int32)
            scal = jnp.sum(jnp.where(decided, tau + 2, 0))
            if w == 1:
                vec = jnp.zeros((), jnp.int32)
                scal = scal + advance
            else:
                vec = advance
        new = ServerWorkState(state.decisions + n_dec, state.vector_ops + vec,
                              state.scalar_ops + scal, state.dim)
        return rows, new

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def server_work(opt_state: PyTree) -> dict[str, Array]:
    """The server-work counters of a CE-ASGD state, as a flat dict.

    Keys: ``server_decisions, server_vector_ops, server_scalar_ops, server_flops,
    server_flops_per_decision`` (see :class:`ServerWorkState`). Works on a single state
    or a stacked one (leading seed axis). The simulator reports the same keys in its
    metrics (any state node with a ``metrics()`` method).

    Raises:
      ValueError: the state has no :func:`count_server_work` in its chain.
    """
    states = find_states(opt_state, ServerWorkState)
    if len(states) != 1:
        raise ValueError("expected exactly one count_server_work() in the chain, "
                         f"found {len(states)}")
    return states[0].metrics()


# ----------------------------------------------------------------------------- the algorithms


@register("ce_asgd", needs={"drift_norm"}, own_messages=True, params=_PARAMS,
          example={"threshold": 1.0})
def ce_asgd(learning_rate: float = 0.05, threshold: float | None = None,
            kappa: float | None = None, smoothness: float | None = None
            ) -> optax.GradientTransformationExtraArgs:
    r"""CE-ASGD: apply a stale gradient only if its norm is large against the exact drift.

    **Our interpretation of the abstract** of Ahmed et al. (INFOCOM 2025); only the
    abstract is public (see the module docstring for the protocol we read from it).

    .. math::

        \delta_i = \|x_t - x_{t-\tau_i}\|, \qquad
        a_i = [\tau_i = 0 \;\lor\; \|g_i\| \ge c\,\delta_i], \qquad
        x_{t+1} = x_t - \eta\,\frac{\sum_i a_i g_i}{\max(1, \sum_i a_i)}

    with :math:`c` = ``threshold``, or :math:`c = \kappa L`. Communication per arrival:
    32 bits up (the norm), plus :math:`32d` up if accepted; the model (:math:`32d`) down
    either way. :math:`c = 0` is ASGD (plus the 32-bit probe); :math:`c = \infty` applies
    only fresh gradients.

    Args:
      learning_rate: :math:`\eta`.
      threshold: :math:`c`, a number (``inf`` accepts only fresh gradients).
      kappa: :math:`\kappa`; with a known ``smoothness`` the threshold is :math:`\kappa L`
        and ``threshold`` is ignored (it is the fallback where :math:`L` is unknown).
      smoothness: :math:`L` (the experiment runner passes the workload's, when known).

    Extra args: ``drift_norm`` (float32[W], exact :math:`\delta_i`), ``staleness``
    (int32[W]), ``mask`` (bool[W], optional).

    State: the server work is counted (:func:`server_work`: one :math:`d`-vector norm per
    stale decision); accepted/rejected/bits in :func:`jaxasync.communication`.

    Example::

        tx = ja.ce_asgd(learning_rate=0.1, threshold=2.0)
        updates, state = tx.update(grads_w, state, params, staleness=tau_w,
                                   drift_norm=drift_norm_w)

    References:
      Ahmed, Ghosh, Wang, Shroff, "Communication Efficient Asynchronous Stochastic
      Gradient Descent", IEEE INFOCOM 2025, DOI 10.1109/INFOCOM55648.2025.11044686
      (abstract only; no arXiv version).
    """
    c = resolve_threshold(threshold, kappa, smoothness, "ce_asgd")
    accept = lambda grad_norm, drift_norm: rules.norm_ratio(grad_norm, drift_norm, c)
    return optax.chain(
        accept_if(accept, ("grad_norm", "drift_norm"), probe_bits=PROBE_BITS,
                  upload_after_accept=True),
        count_server_work("full"),
        aggregate("mean"),
        optax.sgd(learning_rate),
    )


@register("ce_asgd_lite", needs={"update_norms"}, own_messages=True, params=_PARAMS,
          example={"threshold": 1.0})
def ce_asgd_lite(learning_rate: float = 0.05, threshold: float | None = None,
                 kappa: float | None = None, smoothness: float | None = None
                 ) -> optax.GradientTransformationExtraArgs:
    r"""CE-ASGD-lite: the norm-ratio rule against a scalar bound on the drift.

    **Our interpretation of the "simplified variant"** in the abstract of Ahmed et al.
    (INFOCOM 2025); only the abstract is public. The server never reads stored models:
    it keeps a ring of the scalar norms of its own updates and bounds the drift by the
    triangle inequality,

    .. math::

        \hat\delta_i = \sum_{j=0}^{\tau_i - 1} \|x_{t-j} - x_{t-j-1}\| \;\ge\; \delta_i,
        \qquad a_i = [\tau_i = 0 \;\lor\; \|g_i\| \ge c\,\hat\delta_i],
        \qquad x_{t+1} = x_t - \eta\,\frac{\sum_i a_i g_i}{\max(1, \sum_i a_i)}.

    Since :math:`\hat\delta_i \ge \delta_i`, lite never accepts a gradient that
    :func:`ce_asgd` would reject on the same history; it costs :math:`O(\tau_i)` scalar
    additions per decision instead of a :math:`d`-vector norm, and :math:`D` scalars of
    memory instead of :math:`D` model versions. Communication as :func:`ce_asgd`.

    In floating point the ring holds the norms of the updates the server applied, while the
    stored float32 versions are rounded, so :math:`\hat\delta_i \ge \delta_i` holds up to a
    few ulp of :math:`|x|` per version crossed (the tests allow exactly that).

    Args:
      learning_rate: :math:`\eta`.
      threshold: :math:`c`, a number.
      kappa: :math:`\kappa`; with a known ``smoothness`` the threshold is :math:`\kappa L`
        and ``threshold`` is the fallback.
      smoothness: :math:`L` (the experiment runner passes the workload's, when known).

    Extra args: ``update_norms`` (float32[D], :math:`\|x_{t-j} - x_{t-j-1}\|` newest first),
    ``staleness`` (int32[W]), ``mask`` (bool[W], optional).

    References:
      Ahmed, Ghosh, Wang, Shroff, "Communication Efficient Asynchronous Stochastic
      Gradient Descent", IEEE INFOCOM 2025, DOI 10.1109/INFOCOM55648.2025.11044686
      (abstract only; no arXiv version).
    """
    c = resolve_threshold(threshold, kappa, smoothness, "ce_asgd_lite")

    def accept(grad_norm, update_norms, staleness):
        return rules.norm_ratio(grad_norm, drift_bound(update_norms, staleness), c)

    return optax.chain(
        accept_if(accept, ("grad_norm", "update_norms", "staleness"), probe_bits=PROBE_BITS,
                  upload_after_accept=True),
        count_server_work("lite"),
        aggregate("mean"),
        optax.sgd(learning_rate),
    )
