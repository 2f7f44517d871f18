"""Synthetic convex problems with known smoothness L and optimum F*: least squares, the
quadratic of Mishchenko et al. (NeurIPS 2022), and L2-regularised logistic regression."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxasync.data.formats import Dataset
from jaxasync.data.partitioning import _check_positive_int


class SyntheticProblem(NamedTuple):
    """A generated convex problem with its known constants.

    Attributes:
        data: the train/test arrays.
        smoothness: L, the largest eigenvalue of the Hessian of the *mean* training loss (exact,
            computed in float64 from the float32 data the model sees).
        f_star: the optimal mean training loss F* (float64 solve of the float32 data).
        x_star: the minimiser, float64 [d].
    """

    data: Dataset
    smoothness: float
    f_star: float
    x_star: np.ndarray


def _least_squares_constants(a: np.ndarray, b: np.ndarray) -> tuple[float, float, np.ndarray]:
    """L and F* of F(x) = 0.5 * mean((A x - b)^2), in float64.

    The Hessian is A^T A / n, so L = lambda_max(A^T A) / n = sigma_max(A)^2 / n. The minimiser
    solves the normal equations; ``lstsq`` (SVD) is used because it is stable and also covers
    n < d (minimum-norm solution, F* = 0).
    """
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    x_star, _, _, singular_values = np.linalg.lstsq(a64, b64, rcond=None)
    smoothness = float(singular_values[0] ** 2 / a64.shape[0])  # the same SVD gives sigma_max
    f_star = float(0.5 * np.mean((a64 @ x_star - b64) ** 2))
    return smoothness, f_star, x_star


def _check_size(n: int, n_test: int, d: int) -> None:
    """Refuses a problem whose generation would not fit in the host's memory: the rows are
    drawn in float64 and kept in float32, the constants need a float64 copy and d x d
    matrices (about 3 (n + n_test) d + 2 d^2 doubles)."""
    from jaxasync.memory import check_host_bytes

    nbytes = 8 * (3 * (n + n_test) * d + 2 * d * d)
    key, value = ("n", n) if n * d >= d * d else ("d", d)
    check_host_bytes(nbytes, key, value, f"generating n={n} (+{n_test} test) rows of d={d}")


def make_least_squares(
    n: int = 1000, d: int = 50, noise: float = 0.1, seed: int = 0, n_test: int | None = None
) -> SyntheticProblem:
    """Random linear regression, F(x) = 0.5 * mean((A x - b)^2), no bias term.

    A has i.i.d. N(0, 1) entries, x_true ~ N(0, I/d) (so A x_true has unit variance per row), and
    b = A x_true + noise * N(0, 1). A test set of ``n_test`` (default n // 4) rows is drawn from
    the same model. L and F* are exact for the float32 data (see ``_least_squares_constants``).
    """
    n, d = _check_positive_int("n", n), _check_positive_int("d", d)
    n_test = max(n // 4, 1) if n_test is None else _check_positive_int("n_test", n_test)
    _check_size(n, n_test, d)
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise={noise!r}: must be a finite number >= 0")
    rng = np.random.default_rng(seed)
    x_true = rng.standard_normal(d) / np.sqrt(d)

    def draw(m: int) -> tuple[np.ndarray, np.ndarray]:
        a = rng.standard_normal((m, d))
        b = a @ x_true + noise * rng.standard_normal(m)
        return a.astype(np.float32), b.astype(np.float32)

    a, b = draw(n)
    a_test, b_test = draw(n_test)
    smoothness, f_star, x_star = _least_squares_constants(a, b)
    return SyntheticProblem(Dataset(a, b, a_test, b_test), smoothness, f_star, x_star)


def make_mishchenko_quadratic(seed: int = 42) -> SyntheticProblem:
    """The least-squares problem of Mishchenko, Bach, Even & Woodworth (NeurIPS 2022, "Asynchronous
    SGD beats minibatch SGD under arbitrary delays"), as built in github.com/konstmish/
    asynchronous_sgd (code.ipynb).

    n = 10,000, d = 400, A = uniform[0, 1) / sqrt(400), x_rand ~ N(0, I),
    b = A x_rand + 1e-5 * noise, F(x) = 0.5 * mean((A x - b)^2), started at x = 0. With the
    notebook's seed 42 we replay its random stream exactly: five
    ``rng.choice(424242, size=1, replace=False)`` draws for the run seeds come first, then A,
    x_rand and the noise. The objective is the training loss, so the test arrays are the
    training arrays.
    """
    rng = np.random.default_rng(seed)
    for _ in range(5):  # the notebook's run seeds, drawn from the same generator before A
        rng.choice(424242, size=1, replace=False)
    n, d = 10_000, 400
    a = rng.uniform(size=(n, d)) / np.sqrt(d)
    x_rand = rng.normal(size=d)
    b = a @ x_rand + 1e-5 * rng.normal(size=n)
    a, b = a.astype(np.float32), b.astype(np.float32)
    smoothness, f_star, x_star = _least_squares_constants(a, b)
    return SyntheticProblem(Dataset(a, b, a, b), smoothness, f_star, x_star)


def _logistic_objective(
    w: np.ndarray, a: np.ndarray, s: np.ndarray, l2: float
) -> tuple[float, np.ndarray, np.ndarray]:
    """Value, gradient and Hessian of mean(log(1 + exp(-s * A w))) + l2/2 |w|^2, s in {-1, +1}."""
    z = s * (a @ w)
    value = np.mean(np.logaddexp(0.0, -z)) + 0.5 * l2 * (w @ w)
    sig = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid(z), overflow-free
    grad = -(a.T @ (s * (1.0 - sig))) / len(s) + l2 * w
    hess = (a.T * (sig * (1.0 - sig))) @ a / len(s) + l2 * np.eye(len(w))
    return float(value), grad, hess


def _newton_logistic(a: np.ndarray, s: np.ndarray, l2: float, tol: float = 1e-10) -> np.ndarray:
    """Damped Newton with backtracking (Boyd & Vandenberghe, 2004, Alg. 9.5), to |grad| <= tol.

    The objective is l2-strongly convex, so the minimiser is unique and Newton converges
    quadratically once the unit step is accepted.
    """
    w = np.zeros(a.shape[1])
    for _ in range(200):
        value, grad, hess = _logistic_objective(w, a, s, l2)
        if np.linalg.norm(grad) <= tol:
            return w
        step = np.linalg.solve(hess, -grad)
        t = 1.0
        while _logistic_objective(w + t * step, a, s, l2)[0] > value + 0.25 * t * (grad @ step):
            t *= 0.5
            if t < 1e-12:
                return w  # at float64 resolution: no further decrease is representable
        w = w + t * step
    raise RuntimeError("Newton's method did not converge for the logistic problem")


def make_logistic(
    n: int = 2000,
    d: int = 20,
    seed: int = 0,
    l2: float = 1e-3,
    margin_scale: float = 2.0,
    n_test: int | None = None,
) -> SyntheticProblem:
    """Random binary logistic regression with an L2 term, no bias.

    A has i.i.d. N(0, 1) entries, w_true ~ N(0, margin_scale^2 / d * I) (true margins have standard
    deviation ``margin_scale``), y ~ Bernoulli(sigmoid(A w_true)) as int32 {0, 1}. Objective:
    F(w) = mean(log(1 + exp(-s_i a_i^T w))) + l2/2 |w|^2 with s = 2y - 1.

    Its Hessian is A^T D A / n + l2 I with D = diag(sigma'(z)) <= 1/4, attained at w = 0, so
    L = lambda_max(A^T A) / (4n) + l2 exactly. F* comes from Newton's method in float64 to
    |grad| <= 1e-10 on the float32 data.
    """
    n, d = _check_positive_int("n", n), _check_positive_int("d", d)
    n_test = max(n // 4, 1) if n_test is None else _check_positive_int("n_test", n_test)
    _check_size(n, n_test, d)
    if not (np.isfinite(l2) and l2 > 0):
        raise ValueError(f"l2={l2!r}: must be a finite number > 0 (it makes the optimum unique)")
    rng = np.random.default_rng(seed)
    w_true = rng.standard_normal(d) * (margin_scale / np.sqrt(d))

    def draw(m: int) -> tuple[np.ndarray, np.ndarray]:
        a = rng.standard_normal((m, d))
        p = 0.5 * (1.0 + np.tanh(0.5 * (a @ w_true)))
        y = (rng.uniform(size=m) < p).astype(np.int32)
        return a.astype(np.float32), y

    a, y = draw(n)
    a_test, y_test = draw(n_test)
    a64, s = a.astype(np.float64), 2.0 * y - 1.0
    smoothness = float(np.linalg.norm(a64, 2) ** 2 / (4 * n) + l2)
    x_star = _newton_logistic(a64, s, float(l2))
    f_star = _logistic_objective(x_star, a64, s, float(l2))[0]
    return SyntheticProblem(Dataset(a, y, a_test, y_test), smoothness, f_star, x_star)
