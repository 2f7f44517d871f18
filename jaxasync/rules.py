"""Pure decision rules: traced numbers in, traced numbers out.

A rule never holds state and never reads a config object. Three kinds:

* **staleness scalers** map a delay ``tau`` (int array) to a step-size multiplier;
* **acceptance rules** map per-worker statistics to a boolean (``True`` = apply);
* **lazy (skip) rules** decide whether a worker may skip its upload.

Every rule works elementwise, so the same function serves one worker (scalars) or
all arriving workers at once (``[W]`` arrays). Transforms in
:mod:`jaxasync.transforms` compose them into Optax gradient transformations.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

# ----------------------------------------------------------------------------- scalers


def constant_scale(tau: Array) -> Array:
    """ASGD: every arrival at the full step size, whatever its delay."""
    return jnp.ones_like(tau, dtype=jnp.float32)


def inverse_staleness(tau: Array) -> Array:
    r"""Staleness-aware ASGD: :math:`1 / \max(1, \tau)`.

    Reference: Zhang, Gupta, Lian, Liu, "Staleness-aware Async-SGD for distributed
    deep learning", IJCAI 2016 (arXiv 1511.05950).
    """
    return 1.0 / jnp.maximum(1.0, tau.astype(jnp.float32))


def delay_adaptive(tau: Array, num_workers: int | Array) -> Array:
    r"""Delay-adaptive ASGD: :math:`M / \max(M, \tau)`.

    Reference: Mishchenko, Bach, Even, Woodworth, "Asynchronous SGD beats minibatch
    SGD under arbitrary delays", NeurIPS 2022 (arXiv 2206.07638), step size
    :math:`\eta_t = \eta\,\min(1, M/\tau_t)`.
    """
    m = jnp.asarray(num_workers, jnp.float32)
    return m / jnp.maximum(m, tau.astype(jnp.float32))


def fedbuff_weight(tau: Array) -> Array:
    r"""FedBuff staleness weight :math:`1/\sqrt{1+\tau}`.

    Reference: Nguyen et al., "Federated learning with buffered asynchronous
    aggregation", AISTATS 2022 (arXiv 2106.06639).
    """
    return 1.0 / jnp.sqrt(1.0 + tau.astype(jnp.float32))


def polynomial_weight(tau: Array, exponent: float | Array, reference: float | Array = 0.0
                      ) -> Array:
    r"""Normalised polynomial staleness weight :math:`(1+\tau)^{-e} / (1+\bar\tau)^{-e}`.

    :math:`\bar\tau = 0` is FedAsync's polynomial :math:`s_a(\tau) = (\tau+1)^{-a}` (Xie,
    Koyejo & Gupta, "Asynchronous Federated Optimization", arXiv 1903.03934, Section 5.2);
    with :math:`\bar\tau` the expected staleness it is FLSim's normalised weight, 1 at
    :math:`\tau = \bar\tau` (``PolynomialStalenessWeight`` with ``avg_staleness``,
    github.com/facebookresearch/FLSim, ``flsim/utils/async_trainer/async_staleness_weights.py``),
    which FedBuff's experiments use (Nguyen et al., AISTATS 2022, arXiv 2106.06639).
    """
    t = tau.astype(jnp.float32)
    e = jnp.asarray(exponent, jnp.float32)
    return (1.0 + jnp.asarray(reference, jnp.float32)) ** e / (1.0 + t) ** e


def hinge_weight(tau: Array, a: float | Array, b: float | Array) -> Array:
    r"""FedAsync's hinge staleness function: 1 if :math:`\tau \le b`, else
    :math:`1 / (a(\tau - b) + 1)` (Xie, Koyejo & Gupta, arXiv 1903.03934, Section 5.2)."""
    t = tau.astype(jnp.float32)
    return jnp.where(t <= b, 1.0, 1.0 / (a * (t - b) + 1.0))


def koloskova_scale(
    tau: Array, concurrency: int | Array, smoothness: float | Array | None = None,
    learning_rate: float | Array = 1.0,
) -> Array:
    r"""Koloskova et al. (NeurIPS 2022, arXiv 2206.08307, Thm. 8) delay rule.

    Full step for :math:`\tau \le \tau_C`; beyond the concurrency the gradient is
    dropped (``smoothness is None``: multiplier 0) or shrunk to
    :math:`\min(\eta, 1/(4L\tau))/\eta`.
    """
    tau_f = tau.astype(jnp.float32)
    within = tau_f <= jnp.asarray(concurrency, jnp.float32)
    if smoothness is None:
        beyond = jnp.zeros_like(tau_f)
    else:
        lr = jnp.asarray(learning_rate, jnp.float32)
        beyond = jnp.minimum(lr, 1.0 / (4.0 * smoothness * jnp.maximum(tau_f, 1.0))) / lr
    return jnp.where(within, 1.0, beyond)


# ----------------------------------------------------------------------------- acceptance


def accept_all(*stats: Array) -> Array:
    """Accept every arrival (the ASGD rule)."""
    return jnp.ones(jnp.shape(stats[0]), dtype=bool) if stats else jnp.asarray(True)


def norm_ratio(grad_norm: Array, drift_norm: Array, threshold: float | Array) -> Array:
    r"""CE-ASGD acceptance: accept iff :math:`\|g\| \ge c\,\|x_t - x_{t-\tau}\|`.

    Equivalently :math:`\|g\| / \|x_t - x_{t-\tau}\| \ge c`, with a zero drift
    (a fresh gradient) always accepted, also for :math:`c = \infty`.

    Reference: Ahmed, Ghosh, Wang, Shroff, "Communication Efficient Asynchronous
    Stochastic Gradient Descent", IEEE INFOCOM 2025 (our reading of the abstract).
    """
    c = jnp.asarray(threshold, jnp.float32)
    fresh = drift_norm <= 0.0
    # c * 0 would be nan for c = inf; the fresh branch covers that case.
    safe_drift = jnp.where(fresh, 1.0, drift_norm)
    return fresh | (grad_norm >= c * safe_drift)


def drift_at_most(drift_norm: Array, threshold: float | Array) -> Array:
    r"""PickySGD acceptance: apply iff :math:`\|x_t - x_{t-\tau}\| \le` threshold.

    Reference: Cohen, Daniely, Drori, Koren, Schain, "Asynchronous stochastic
    optimization robust to arbitrary delays", NeurIPS 2021 (arXiv 2106.11879).
    """
    return drift_norm <= jnp.asarray(threshold, jnp.float32)


def within_concurrency(tau: Array, concurrency: int | Array) -> Array:
    """Koloskova et al.'s drop rule: apply iff ``tau <= concurrency``."""
    return tau <= jnp.asarray(concurrency, tau.dtype)


# ----------------------------------------------------------------------------- lazy rules


def lazy_upload(diff_sq: Array, threshold: Array, consecutive_skips: Array,
                max_skips: int | Array) -> Array:
    r"""LAG / LASG / SASG upload test: upload iff the change is large or skipped too long.

    Upload iff :math:`\|g_{new} - g_{old}\|^2 > \text{thr}` or the worker has already
    skipped more than ``max_skips`` times in a row (a forced upload).

    References: Chen, Giannakis, Sun, Yin, "LAG", NeurIPS 2018 (arXiv 1805.09965);
    Chen, Sun, Yin, "LASG", IEEE TSP 2021 (arXiv 2002.11360); Deng, Li, Sun, Lu,
    "SASG" (arXiv 2112.04088).
    """
    return (diff_sq > threshold) | (consecutive_skips > max_skips)


def lazy_threshold(update_norms: Array, window: int, scale: float | Array) -> Array:
    r"""LAG / LASG / SASG threshold from the last iterate differences.

    .. math:: \text{thr} = s \sum_{j=0}^{w-1} \|x_{k-j} - x_{k-j-1}\|^2

    with ``update_norms`` :math:`u_j = \|x_{k-j} - x_{k-j-1}\|` newest first (slots not
    yet filled are 0), :math:`w` = ``window`` and :math:`s` = ``scale``. SASG's code sums
    the :math:`D-1` differences of its last :math:`D` stored iterates with
    :math:`s = 1/(2\alpha M^2)`; LAG sums :math:`D` differences with
    :math:`s = \xi/(\alpha^2 M^2)`, :math:`\xi = 1/D` (see :mod:`jaxasync.lazy`).
    """
    u = update_norms[:window].astype(jnp.float32)
    return jnp.asarray(scale, jnp.float32) * jnp.sum(u * u)


SCALERS = {
    "constant": constant_scale,
    "inverse": inverse_staleness,
    "delay_adaptive": delay_adaptive,
    "fedbuff": fedbuff_weight,
    "koloskova": koloskova_scale,
    "polynomial": polynomial_weight,
    "hinge": hinge_weight,
}
