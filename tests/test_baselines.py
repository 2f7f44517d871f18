"""The asynchronous baselines: rules by hand, equivalences with ASGD, the optax contract."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import EPS32, assert_f32_close, least_squares, sgd_roundings, toy_data

import jaxasync as ja
from jaxasync import delays as dl
from jaxasync import sim
from jaxasync.algorithms import get_algorithm
from jaxasync.transforms import keep_decisions

# Sampled delays uniform on {0..5}: every rule sees stale and fresh arrivals.
UNIFORM = sim.SimConfig(num_workers=6, arrivals=1, batch_size=8, ring_size=8, steps=200,
                        eval_every=200, delay=dl.DelayConfig(kind="uniform", low=0, high=5))

def _run(name, cfg, hparams: dict, static=None):
    wl = least_squares()
    n = len(next(iter(hparams.values())))
    s = sim.Simulator(get_algorithm(name), static or {}, wl, cfg)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.zeros((n,), jnp.int32))
    hp = {k: jnp.asarray(v, jnp.float32) for k, v in hparams.items()}
    return sim.run(s, toy_data(wl, cfg.num_workers), keys, hp)


def _params(r, i):
    return np.asarray(r.final_state.params["w"][i])


@pytest.fixture(scope="module")
def asgd_run():
    return _run("asgd", UNIFORM, {"learning_rate": [0.05]})


# (the optax contract of every registered algorithm: tests/test_contract.py)


# ----------------------------------------------------------------------------- DC-ASGD


def test_dc_asgd_constant_and_adaptive_by_hand():
    p = {"x": jnp.zeros(2)}
    g = {"x": jnp.asarray([[1.0, 2.0]])}
    drift = {"x": jnp.asarray([[0.5, -1.0]])}
    tx = ja.dc_asgd(learning_rate=1.0, lam=0.04)
    u, _ = tx.update(g, keep_decisions(tx, 1).init(p), p, drift=drift)
    np.testing.assert_allclose(-u["x"], [1 + 0.04 * 1 * 0.5, 2 - 0.04 * 4 * 1.0], rtol=1e-6)

    tx = ja.dc_asgd_adaptive(learning_rate=1.0, lam0=2.0, ms_decay=0.95, eps=1e-7)
    s = keep_decisions(tx, 1).init(p)
    ms = np.zeros(2)
    for gv, dv in (([1.0, 2.0], [0.5, -1.0]), ([0.5, -1.0], [0.2, 0.1])):
        gv, dv = np.asarray(gv), np.asarray(dv)
        u, s = tx.update({"x": jnp.asarray([gv])}, s, p, drift={"x": jnp.asarray([dv])})
        ms = 0.95 * ms + 0.05 * gv**2
        lam = 2.0 / np.sqrt(ms + 1e-7)
        np.testing.assert_allclose(-u["x"], gv + lam * gv * gv * dv, rtol=1e-5)


def test_dc_asgd_adaptive_with_zero_lambda_is_asgd_step_by_step():
    p = {"x": jnp.zeros(3)}
    tx, ref = ja.dc_asgd_adaptive(0.1, lam0=0.0), ja.asgd(0.1)
    s, rs = keep_decisions(tx, 2).init(p), keep_decisions(ref, 2).init(p)
    for t in range(2):
        key = jax.random.PRNGKey(t)
        g = {"x": jax.random.normal(key, (2, 3))}
        u, s = tx.update(g, s, p, drift={"x": jax.random.normal(key, (2, 3))})
        ru, rs = ref.update(g, rs, p)
        assert_f32_close(u["x"], ru["x"], roundings=4,
                         why="g + 0 is exact; a mean of 2 rows and the step: 3 roundings")


def test_dc_asgd_lambda_zero_equals_asgd_through_the_simulator(asgd_run):
    r = _run("dc_asgd", UNIFORM, {"learning_rate": [0.05, 0.05], "lam": [0.0, 0.5]})
    assert_f32_close(_params(r, 0), _params(asgd_run, 0),
                     roundings=sgd_roundings(UNIFORM.steps, d=8, batch=8),
                     why="two programs; 200 steps x (8-term dot, mean of 8, 3 ops), adding up")
    # an integer count below 2^24: exact in float32 in any order
    assert r.history[0][-1]["bits_up"] == asgd_run.history[0][-1]["bits_up"]
    # compensation acts: lam = 0.5 ends 10x further from ASGD than lam = 0 (at least 10
    # roundings of the parameters; it is small at this scale: ~50 of them)
    gap = lambda i: np.abs(_params(r, i) - _params(asgd_run, 0)).max()
    assert gap(1) > 10 * max(gap(0), EPS32 * np.abs(_params(r, 0)).max())


# ----------------------------------------------------------------------------- Koloskova


def test_koloskova_drop_and_shrink_by_hand():
    p = {"x": jnp.zeros(1)}
    g = {"x": jnp.asarray([[1.0], [2.0], [4.0]])}
    tau = jnp.asarray([0, 3, 5])
    tx = ja.koloskova(learning_rate=0.1, num_workers=4)         # concurrency defaults to M
    u, s = tx.update(g, keep_decisions(tx, 3).init(p), p, staleness=tau)
    np.testing.assert_array_equal(ja.last_decisions(s).applied, [True, True, False])
    np.testing.assert_allclose(u["x"], [-0.1 * 1.5], rtol=1e-6)
    c = ja.communication(s)
    assert int(c["rejections"]) == 1 and int(c["uploads"]) == 3       # it was already sent
    # shrink: tau = 5 > 4 gets min(0.1, 1 / (4 * 1 * 5)) = 0.05, i.e. half the step
    tx = ja.koloskova(learning_rate=0.1, num_workers=4, mode="shrink", smoothness=1.0)
    u, _ = tx.update(g, keep_decisions(tx, 3).init(p), p, staleness=tau)
    np.testing.assert_allclose(u["x"], [-0.1 * (1 + 2 + 0.5 * 4) / 3], rtol=1e-6)
    with pytest.raises(ValueError, match="needs the smoothness"):
        ja.koloskova(mode="shrink")
    with pytest.raises(ValueError, match="mode='skip'"):
        ja.koloskova(mode="skip")


def test_koloskova_shrink_with_concurrency_above_every_delay_is_asgd():
    p = {"x": jnp.zeros(3)}
    tx, ref = ja.koloskova(0.1, concurrency=50, mode="shrink", smoothness=10.0), ja.asgd(0.1)
    g = {"x": jax.random.normal(jax.random.PRNGKey(0), (3, 3))}
    u, _ = tx.update(g, keep_decisions(tx, 3).init(p), p, staleness=jnp.asarray([0, 7, 50]))
    ru, _ = ref.update(g, keep_decisions(ref, 3).init(p), p)
    assert_f32_close(u["x"], ru["x"], roundings=6,
                     why="a scale of 1, a mean of 3 rows and the step: <= 5 roundings")


def test_koloskova_through_the_simulator(asgd_run):
    # concurrency 100 (above every delay) is ASGD; concurrency 2 drops exactly the tau > 2
    r = _run("koloskova", UNIFORM, {"learning_rate": [0.05, 0.05], "concurrency": [100.0, 2.0]})
    assert_f32_close(_params(r, 0), _params(asgd_run, 0),
                     roundings=sgd_roundings(UNIFORM.steps, d=8, batch=8),
                     why="two programs; 200 steps x (8-term dot, mean of 8, 3 ops), adding up")
    h, hist = r.history[1][-1], r.staleness_hist[1]
    assert h["rejections"] == int(hist[3:].sum()) > 0
    assert h["applied"] + h["rejections"] + h["dropped"] == UNIFORM.steps
    assert h["wasted"] == h["rejections"]
    assert h["bits_up"] == 32 * 8 * UNIFORM.steps                   # every gradient was sent


# ----------------------------------------------------------------------------- PickySGD


def test_picky_by_hand_and_radius_from_epsilon():
    p = {"x": jnp.zeros(2)}
    g = {"x": jnp.asarray([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])}
    drift = jnp.asarray([0.1, 0.5, 0.0])
    for tx in (ja.picky(learning_rate=1.0, threshold=0.2),
               ja.picky(learning_rate=1.0, epsilon=0.8, smoothness=2.0),      # 0.8 / 4
               ja.picky(learning_rate=1.0, threshold=0.2, epsilon=9.0)):      # no L: fallback
        u, s = tx.update(g, keep_decisions(tx, 3).init(p), p, drift_norm=drift)
        np.testing.assert_array_equal(ja.last_decisions(s).applied, [True, False, True])
        np.testing.assert_allclose(u["x"], [-2.0, -1.5], rtol=1e-6)
        c = ja.communication(s)
        assert int(c["rejections"]) == 1 and float(c["bits_up"]) == 3 * 64   # sent before
    tx = ja.picky(learning_rate=1.0, threshold=math.inf)
    u, _ = tx.update(g, keep_decisions(tx, 3).init(p), p, drift_norm=drift)
    np.testing.assert_allclose(u["x"], [-4.0 / 3, -5.0 / 3], rtol=1e-6)
    with pytest.raises(ValueError, match="needs the smoothness"):
        ja.picky(epsilon=1.0)


# ----------------------------------------------------------------------------- FedBuff


def test_fedbuff_weights_by_hand_and_arrivals_config():
    from jaxasync.experiment import prepare

    p = {"x": jnp.zeros(1)}
    g = {"x": jnp.asarray([[1.0], [2.0], [3.0], [4.0]])}
    tau = jnp.asarray([0, 1, 3, 8])
    tx = ja.fedbuff(learning_rate=0.5)
    u, _ = tx.update(g, keep_decisions(tx, 4).init(p), p, staleness=tau)
    want = np.mean(np.asarray([1.0, 2.0, 3.0, 4.0]) / np.sqrt(1 + np.asarray([0, 1, 3, 8])))
    np.testing.assert_allclose(u["x"], [-0.5 * want], rtol=1e-6)
    assert get_algorithm("fedbuff").arrivals == 4
    wl = least_squares()
    cfg = {"algorithm": {"name": "fedbuff", "params": {"learning_rate": 0.05}},
           "workload": {"name": "toy", "batch_size": 8}, "run": {"num_workers": 8}}
    assert prepare(cfg, workload_factory=lambda name, **o: wl).rows == 4
    cfg["algorithm"]["arrivals"] = 2
    assert prepare(cfg, workload_factory=lambda name, **o: wl).rows == 2
