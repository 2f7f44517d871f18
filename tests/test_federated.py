"""FedAsync and FedBuff: their mixing and weighting rules by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxasync as ja
from jaxasync import rules
from jaxasync.transforms import keep_decisions

EPS32 = float(np.finfo(np.float32).eps)


def _update(tx, grads, state, params, **extra):
    return jax.jit(tx.update)(grads, state, params, **extra)


def test_fedasync_s1_alpha1_applies_the_client_model():
    """s = 1, alpha = 1: x_{t+1} = x_client = x_{t-tau} - gamma g, whatever x_t."""
    x_t = {"w": jnp.asarray([1.0, 2.0, -1.0])}
    x_old = np.asarray([0.5, 2.5, 0.0], np.float32)
    g = np.asarray([1.0, -2.0, 4.0], np.float32)
    tx = ja.fedasync(learning_rate=0.25, alpha=1.0, staleness="constant")
    state = keep_decisions(tx, 1).init(x_t)
    drift = {"w": (x_t["w"] - x_old)[None]}
    u, _ = _update(tx, {"w": jnp.asarray(g)[None]}, state, x_t, drift=drift,
                   staleness=jnp.asarray([3], jnp.int32))
    np.testing.assert_allclose(x_t["w"] + u["w"], x_old - 0.25 * g, rtol=0, atol=4 * EPS32 * 4,
                               err_msg="a few float32 roundings of |x| <= 4")


@pytest.mark.parametrize("fn,a,b,tau,want", [
    ("constant", 0.5, 4.0, 7, 1.0),
    ("polynomial", 0.5, 4.0, 3, 0.5),             # (3 + 1)^-0.5
    ("hinge", 10.0, 4.0, 4, 1.0),                 # tau <= b
    ("hinge", 10.0, 4.0, 6, 1.0 / 21.0),          # 1 / (10 (6 - 4) + 1)
])
def test_fedasync_mixing_weight_by_hand_and_it_never_decays(fn, a, b, tau, want):
    """alpha_t = alpha s(tau): the same at the first update and the 200th (a public
    implementation decays alpha after every update; the paper does not)."""
    p = {"w": jnp.zeros(2)}
    tx = ja.fedasync(learning_rate=1.0, alpha=0.5, staleness=fn, a=a, b=b)
    state = keep_decisions(tx, 1).init(p)
    g = {"w": jnp.asarray([[2.0, -4.0]])}
    zero = {"w": jnp.zeros((1, 2))}
    weights = []
    for t in range(200):
        u, state = _update(tx, g, state, p, drift=zero, staleness=jnp.asarray([tau], jnp.int32))
        if t in (0, 199):
            weights.append(-np.asarray(u["w"]) / np.asarray([2.0, -4.0]))
    np.testing.assert_allclose(weights[0], 0.5 * want, rtol=4 * EPS32)
    np.testing.assert_array_equal(weights[0], weights[1])


def test_fedbuff_normalisations_and_polynomial_weights():
    p = {"w": jnp.zeros(2)}
    g = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    tau = jnp.asarray([0, 3, 8], jnp.int32)
    w_sqrt = 1.0 / np.sqrt(1.0 + np.asarray([0, 3, 8]))
    for normalise, denom in (("buffer", 3.0), ("weights", w_sqrt.sum())):
        tx = ja.fedbuff(learning_rate=1.0, normalise=normalise)
        u, _ = _update(tx, {"w": g}, keep_decisions(tx, 3).init(p), p, staleness=tau)
        np.testing.assert_allclose(-u["w"], (w_sqrt @ np.asarray(g)) / denom, rtol=4 * EPS32)
    # normalised polynomial weights: 1 at tau = avg_staleness
    w = np.asarray(rules.polynomial_weight(tau, 0.5, 3.0))
    np.testing.assert_allclose(w, np.sqrt(4.0 / (1.0 + np.asarray([0, 3, 8]))), rtol=4 * EPS32)
    tx = ja.fedbuff(learning_rate=1.0, exponent=0.5, avg_staleness=3.0, normalise="buffer")
    u, _ = _update(tx, {"w": g}, keep_decisions(tx, 3).init(p), p, staleness=tau)
    np.testing.assert_allclose(-u["w"], (w @ np.asarray(g)) / 3.0, rtol=4 * EPS32)


def test_fedbuff_default_is_the_original_rule():
    """The defaults keep the paper's 1/sqrt(1 + tau) through the same code as before (the
    stored leaderboard results of fedbuff do not move)."""
    p = {"w": jnp.zeros(3)}
    g = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
    tau = jnp.asarray([0, 1, 2, 5], jnp.int32)
    tx = ja.fedbuff(learning_rate=0.05)
    u, _ = _update(tx, {"w": g}, keep_decisions(tx, 4).init(p), p, staleness=tau)
    want = -0.05 * np.mean(np.asarray(rules.fedbuff_weight(tau))[:, None] * np.asarray(g), 0)
    np.testing.assert_allclose(u["w"], want, rtol=4 * EPS32)
