r"""The worst-case quadratic of the optimal-time-complexity papers, as a workload.

.. math::

    f(x) = \tfrac12 x^\top A x - b^\top x, \qquad
    A = \tfrac L4 \operatorname{tridiag}(-1, 2, -1) - \lambda_{\min} I + \mu I, \qquad
    b = -\tfrac L4 e_1, \qquad x_0 = \sqrt d\, e_1,

Nesterov's "chain" quadratic (each gradient step reveals one more coordinate), shifted so that
its smallest eigenvalue is :math:`\mu` (the strong convexity). Tyurin & Richtarik use it for
every figure of "Optimal time complexities of parallel stochastic optimization methods under a
fixed computation model" (NeurIPS 2023, arXiv 2305.12387), and so do Ringmaster ASGD and
MindFlayer SGD; the KAUST simulator builds it in ``function.py`` (``create_worst_case``,
``TridiagonalQuadraticFunction.create_worst_case_functions``) and starts at
:math:`\sqrt d\, e_1` (``experiments/asynchronous/config_async.py``, ``dump_task``).

Stochastic gradients, as that code's ``StochasticTridiagonalQuadraticFunction``:

* ``add``: :math:`\nabla f(x) + \sigma \xi \mathbf 1`, one :math:`\xi \sim N(0, 1)` for every
  coordinate;
* ``zero-last``: the coordinates past the progress index :math:`\mathrm{prog}(x) = \max\{i:
  x_i \ne 0\}` multiplied by :math:`\eta/p`, :math:`\eta \sim \mathrm{Bernoulli}(p)`.

The random draws come from a pool of ``pool`` pre-drawn (normal, uniform) pairs that every
worker samples from (``workload.partition=shared``): the simulator's minibatches are rows of a
dataset. :math:`f^*` and :math:`x^*` are computed in float64 (a tridiagonal solve) for the
coefficients rounded to float32, the problem the simulator solves.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxasync import data as data_lib

NOISES = ("add", "zero-last")


def tridiagonal_solve(diag: np.ndarray, off: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solves the symmetric tridiagonal system (main ``diag``, off-diagonal ``off``) in
    float64 (the Thomas algorithm, O(d); the matrix is positive definite, so no pivoting)."""
    n = diag.size
    c, d = np.zeros(n), np.zeros(n)
    c[0], d[0] = (off[0] / diag[0] if n > 1 else 0.0), rhs[0] / diag[0]
    for i in range(1, n):
        den = diag[i] - off[i - 1] * c[i - 1]
        c[i] = off[i] / den if i < n - 1 else 0.0
        d[i] = (rhs[i] - off[i - 1] * d[i - 1]) / den
    x = np.zeros(n)
    x[-1] = d[-1]
    for i in range(n - 2, -1, -1):
        x[i] = d[i] - c[i] * x[i + 1]
    return x


def worst_case_terms(dim: int, smoothness: float = 1.0, strong_convexity: float = 1e-5):
    """``(diag, off, b, x_star, f_star, L)`` of the shifted chain quadratic (float64).

    :math:`\\lambda_{\\min}` of :math:`\\frac L4 \\mathrm{tridiag}(-1, 2, -1)` is
    :math:`\\frac L2 (1 - \\cos\\frac{\\pi}{d+1})` exactly (the KAUST code computes it with
    ``eigh_tridiagonal`` in float32).
    """
    s = smoothness / 4.0
    lmin = 2.0 * s * (1.0 - math.cos(math.pi / (dim + 1)))
    # the coefficients rounded to float32, as the simulator computes with them: x* and f* are
    # exact for that problem (in float64 arithmetic: A's smallest eigenvalue mu is ~1e-5, and
    # the float32 rounding of the diagonal moves it by ~0.5%, which for small d moves x*)
    f32 = lambda v: np.asarray(v, np.float32).astype(np.float64)  # noqa: E731
    diag = f32(np.full(dim, 2.0 * s) - lmin + strong_convexity)
    off = f32(np.full(max(dim - 1, 0), -s))
    b = np.zeros(dim)
    b[0] = f32(-s)
    x_star = tridiagonal_solve(diag, off, b)
    f_star = -0.5 * float(b @ x_star)
    lmax = 2.0 * s * (1.0 - math.cos(dim * math.pi / (dim + 1))) - lmin + strong_convexity
    return diag, off, b, x_star, f_star, lmax


def optimal_time_of(times, epsilon: float, *, dim: int = 1000, smoothness: float = 1.0,
                    strong_convexity: float = 1e-5, noise: str = "add", sigma: float = 0.0,
                    batch_size: int = 1, **_) -> tuple[float, int] | None:
    r"""``(T*, m*)`` (:func:`jaxasync.optimal.optimal_time`) of this problem under fixed
    compute ``times``: :math:`L` its largest eigenvalue, :math:`\Delta = f(x_0) - f^*`,
    :math:`\sigma^2 = d\sigma_{add}^2 / B` the variance of a stochastic gradient with
    ``noise="add"`` (one scalar on every coordinate); None for ``zero-last`` (its variance
    depends on the iterate). The other keyword arguments (the workload's other options) are
    ignored."""
    from jaxasync.optimal import optimal_time

    if noise != "add":
        return None
    diag, _, b, _, f_star, lmax = worst_case_terms(dim, smoothness, strong_convexity)
    f0 = 0.5 * dim * diag[0] - b[0] * math.sqrt(dim)      # x0 = sqrt(d) e_1
    return optimal_time(times, lmax, f0 - f_star, dim * sigma**2 / batch_size, epsilon)


def _matvec(diag, off, x):
    """A x for the symmetric tridiagonal A (float32, shifted copies: no d x d matrix)."""
    zero = jnp.zeros((1,), x.dtype)
    below = jnp.concatenate([zero, off * x[:-1]])
    above = jnp.concatenate([off * x[1:], zero])
    return diag * x + below + above


@jax.custom_jvp
def _surrogate(value, grad, x):
    """A function of ``x`` whose value is ``value`` and whose gradient is ``grad`` (both
    computed from ``x`` by the caller, treated as constants): lets a loss report the exact gap
    while its gradient is the method's stochastic gradient.

    A custom JVP (tangent :math:`\\langle g, \\dot x\\rangle`) rather than the identity
    :math:`\\mathrm{sg}(v) + \\langle \\mathrm{sg}(g), x\\rangle - \\mathrm{sg}(\\langle g,
    x\\rangle)`, which gives the same value and gradient bit for bit (the two inner products
    are one computation and cancel exactly) but computes an inner product every step: one
    reduction of d entries out of a step that has three (``benchmarks/async_bench.py``)."""
    del grad, x
    return value


@_surrogate.defjvp
def _surrogate_jvp(primals, tangents):
    value, grad, _ = primals
    return value, jnp.vdot(jax.lax.stop_gradient(grad), tangents[2])


def build(dim: int = 1000, smoothness: float = 1.0, strong_convexity: float = 1e-5,
          noise: str = "add", sigma: float = 0.0, p: float = 1.0, epsilon: float = 1e-2,
          pool: int = 1 << 18, seed: int = 0):
    """The workload's pieces: ``(dataset, init, loss, evaluate, smoothness, f_star_true)``.

    ``loss`` and ``evaluate`` report :math:`f(x) - f^*`, computed as
    :math:`\\frac12 (x - x^*)^\\top A (x - x^*)` (no cancellation in float32 near the
    optimum); the gradient of ``loss`` is the stochastic gradient :math:`Ax - b + \\dots`.
    """
    if noise not in NOISES:
        raise ValueError(f"noise={noise!r}: unknown; choose one of {', '.join(NOISES)}")
    diag64, off64, b64, xs64, f_star, lmax = worst_case_terms(dim, smoothness, strong_convexity)
    diag, off = jnp.asarray(diag64, jnp.float32), jnp.asarray(off64, jnp.float32)
    b, x_star = jnp.asarray(b64, jnp.float32), jnp.asarray(xs64, jnp.float32)
    rng = np.random.default_rng(seed)
    draws = np.stack([rng.standard_normal(pool), rng.random(pool)], 1).astype(np.float32)
    dataset = data_lib.Dataset(draws, np.zeros(pool, np.float32), draws[:1],
                               np.zeros(1, np.float32))
    x0 = np.zeros(dim, np.float32)
    x0[0] = math.sqrt(dim)

    def gap(x):
        e = x - x_star
        return 0.5 * jnp.vdot(e, _matvec(diag, off, e))

    def gradient(x, xi):
        g = _matvec(diag, off, x) - b
        if noise == "add":
            return g + sigma * jnp.mean(xi[:, 0])
        prog = jnp.max(jnp.where(x != 0, jnp.arange(dim), -1))
        coin = (xi[:, 1] < p).astype(jnp.float32) / p            # [B]
        past = jnp.arange(dim) > prog
        return jnp.where(past, g * jnp.mean(coin), g)

    def loss(params, xb, yb):
        del yb
        x = params["x"]
        return _surrogate(gap(x), gradient(x, xb), x)

    def evaluate(params, xb, yb):
        del xb, yb
        return {"loss": gap(params["x"])}

    return dataset, (lambda key: {"x": jnp.asarray(x0)}), loss, evaluate, lmax, f_star
