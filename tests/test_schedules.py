"""Step-size decay (``algorithm.lr_decay``) and the full-gradient-norm metric.

A decayed run must equal a run with the constant rate stopped at the boundary and resumed
with the decayed rate (up to float32 rounding: they are two programs); epochs become server
steps by the documented convention; the schedule is recorded in run.json and the config hash;
``train_grad_norm`` equals a NumPy computation of the full gradient.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    assert_f32_close,
    assert_loss_close,
    least_squares,
    sgd_roundings,
    toy_data,
    with_keys,
)

import jaxasync as ja
from jaxasync import data as data_lib
from jaxasync import delays as dl
from jaxasync import sim
from jaxasync.algorithms import get_algorithm
from jaxasync.checkpoint import config_hash
from jaxasync.config import to_config
from jaxasync.experiment import prepare, run_experiment
from jaxasync.workloads import get_workload

LR, FACTOR, BOUNDARY = 0.02, 0.1, 30
#: the decayed rate as the schedule computes it, in float32
LR_AFTER = float(np.float32(FACTOR) * np.float32(LR))

CASES = {  # algorithm: (delay, workers, static params)
    "sgd_sum": (dl.DelayConfig(kind="none"), 4, {}),
    "asgd": (dl.DelayConfig(kind="event", compute="exponential"), 4, {}),
    "lasg": (dl.DelayConfig(kind="none"), 4, {"history": 3}),
}


def _chunks(name: str, cfg: sim.SimConfig, lrs: list[float]):
    """Chunks of BOUNDARY server steps, chunk i at learning rate lrs[i] (one compiled chunk,
    the rate a traced member value), from the same initial state; final state and metrics."""
    _, m, static = CASES[name]
    wl = least_squares()
    s = sim.Simulator(get_algorithm(name), static, wl, cfg)
    data = toy_data(wl, m)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray([0, 1]))
    rate = lambda lr: {"learning_rate": jnp.full((2,), lr, jnp.float32)}
    state = jax.vmap(s.init)(keys, rate(lrs[0]))
    chunk = jax.jit(jax.vmap(lambda st, d, hp: s.chunk(st, d, hp, BOUNDARY), in_axes=(0, None, 0)))
    metrics = []
    for lr in lrs:
        state, out = chunk(state, data, rate(lr))
        metrics.append(jax.device_get(out))
    return state, metrics


@pytest.mark.parametrize("name", sorted(CASES))
def test_decay_equals_a_run_switched_by_hand_at_the_boundary(name):
    delay, m, _ = CASES[name]
    base = sim.SimConfig(num_workers=m, arrivals=1, batch_size=8, ring_size=32,
                         steps=2 * BOUNDARY, eval_every=BOUNDARY, delay=delay)
    decayed = dataclasses.replace(base, lr_boundaries=(BOUNDARY,), lr_factor=FACTOR)
    got_state, got = _chunks(name, decayed, [LR, LR])
    want_state, want = _chunks(name, base, [LR, LR_AFTER])     # switched by hand
    # two programs (a schedule in one, a constant rate in the other): equal up to rounding
    rounds = sgd_roundings(2 * BOUNDARY, d=8, batch=8, rows=m)
    why = f"{2 * BOUNDARY} steps x (8-term dot, mean of 8 and of {m} rows, 3 ops), adding up"
    assert_f32_close(got_state.params, want_state.params, roundings=rounds, why=why)
    wl = least_squares()
    for g, w in zip(got, want, strict=True):   # every metric of both evaluations
        assert g.keys() == w.keys()
        for k in g:
            if "loss" in k:      # a function of the parameters
                f_max = float(np.max([h[k] for h in got]))
                assert_loss_close(g[k], w[k], param_roundings=rounds, f_max=f_max,
                                  smoothness=wl.smoothness, d=8, n=256,
                                  w_scale=float(np.abs(want_state.params["w"]).max()),
                                  why=f"{k}; {why}")
            elif "norm" in k:
                continue         # (not in these runs' metrics)
            else:                # counters (integers below 2^24: exact), clocks and delays
                assert_f32_close(g[k], w[k], roundings=2 * BOUNDARY,
                                 why=f"{k}: a sum of at most {BOUNDARY} terms since the last "
                                     "evaluation, or an integer")
    # (a schedule ignored would run chunk 2 at LR, not LR_AFTER, and end elsewhere)


def test_koloskova_shrink_refuses_a_schedule_with_one_line():
    """Its rule min(lr, 1/(4 L tau)) uses the number itself; every other algorithm's schedule
    is driven by the conformance table (tests/test_contract.py)."""
    sched = sim.step_decay(0.1, (5,), 0.5)
    with pytest.raises(ValueError, match="learning_rate.*schedule"):
        ja.koloskova(learning_rate=sched, num_workers=4, mode="shrink", smoothness=1.0)
    ja.koloskova(learning_rate=sched, num_workers=4, mode="drop")


def test_step_decay_values():
    sched = sim.step_decay(jnp.float32(0.5), (3, 5), 0.1)
    got = [float(sched(jnp.int32(k))) for k in range(7)]
    want = [0.5, 0.5, 0.5, 0.05, 0.05, 0.005, 0.005]
    np.testing.assert_allclose(got, want, rtol=1e-6)


BASE = {
    "algorithm": {"name": "sgd_sum", "params": {"learning_rate": 0.01}},
    "workload": {"name": "least_squares", "batch_size": 8, "options": {"n": 200, "d": 5}},
    "delay": {"kind": "none"}, "network": {"bandwidth": float("inf")},
    "run": {"num_workers": 4, "steps": 20, "eval_every": 10}, "plot": False,
}


def _cfg(**changes):
    return with_keys(BASE, changes, sep="__")


@pytest.mark.parametrize("changes, per_epoch", [
    ({}, 200 / (4 * 8)),                                                  # sync: M x B
    ({"algorithm__name": "asgd", "delay": {"kind": "uniform", "low": 0, "high": 2}},
     200 / (1 * 8)),                                                      # async: K x B
    ({"algorithm__name": "fedbuff", "delay": {"kind": "uniform", "low": 0, "high": 2}},
     200 / (4 * 8)),                                                      # K = 4 arrivals
    ({"algorithm__name": "lag_wk", "workload__full_batch": True}, 1.0),   # whole shards
])
def test_epochs_are_passes_over_the_training_set(changes, per_epoch):
    prep = prepare(_cfg(**changes, algorithm__lr_decay={"epochs": [2.0, 3.0]}))
    assert prep.steps_per_epoch == pytest.approx(per_epoch)
    assert prep.lr_boundaries == (round(2 * per_epoch), round(3 * per_epoch))
    assert prep.sim_config.lr_factor == 0.1


def test_schedule_and_grad_norm_recorded_in_run_json_and_config_hash(tmp_path):
    by_epochs = _cfg(algorithm__lr_decay={"epochs": [2.0], "factor": 0.5},   # 2 x 6.25 = 12.5
                     run__eval_grad_norm=True)
    by_steps = _cfg(algorithm__lr_decay={"steps": [12], "factor": 0.5})
    plain = _cfg()
    assert prepare(by_steps).lr_boundaries == prepare(by_epochs).lr_boundaries == (12,)
    rec_e = run_experiment(by_epochs, tmp_path / "e", progress=False)
    rec_p = run_experiment(plain, tmp_path / "p", progress=False)
    saved = json.loads((tmp_path / "e" / "run.json").read_text())
    assert saved["resolved"]["lr_decay"] == {"boundaries": [12], "factor": 0.5}
    assert saved["config"]["algorithm"]["lr_decay"]["epochs"] == [2.0]
    assert rec_p["resolved"]["lr_decay"] is None
    hist_e, hist_p = rec_e["members"][0]["history"], rec_p["members"][0]["history"]
    # evaluations at steps 0, 10, 20: equal before the boundary at 12 (the gradient norm only
    # observes), different after it
    loss_e, loss_p = [h["train_loss"] for h in hist_e], [h["train_loss"] for h in hist_p]
    assert loss_e[:2] == loss_p[:2] and loss_e[2] != loss_p[2]
    # train_grad_norm only when asked; at x = 0 the gradient of 0.5 mean((Ax - b)^2) is -A^T b / n
    assert "train_grad_norm" not in hist_p[-1]
    problem = data_lib.make_least_squares(n=200, d=5)
    a = problem.data.x_train.astype(np.float64)
    b = problem.data.y_train.astype(np.float64)
    assert hist_e[0]["train_grad_norm"] == pytest.approx(np.linalg.norm(a.T @ b) / 200, rel=1e-5)
    assert hist_e[-1]["train_grad_norm"] < hist_e[0]["train_grad_norm"]
    hashes = {config_hash(to_config(c)) for c in (by_epochs, by_steps, plain)}
    assert len(hashes) == 3
    # keys at a value that changes nothing leave the hash of older results as it was
    neutral = _cfg(algorithm__lr_decay={"factor": 0.5}, run__eval_grad_norm=False)
    assert config_hash(to_config(neutral)) == config_hash(to_config(plain))
    assert config_hash(to_config(_cfg(run__eval_grad_norm=True))) != config_hash(to_config(plain))


# ----------------------------------------------------------------------------- gradient norm


def test_full_gradient_norm_matches_numpy_for_any_chunking():
    wl = get_workload("logistic", n=300, d=7, seed=3, l2=1e-2)
    a, y = wl.data.x_train.astype(np.float64), wl.data.y_train
    w = np.random.default_rng(0).normal(size=7)
    s = 2.0 * y - 1.0
    sig = 1.0 / (1.0 + np.exp(s * (a @ w)))
    want = np.linalg.norm(-(a.T @ (s * sig)) / len(y) + 1e-2 * w)  # grad of mean softplus + l2
    params = {"params": {"w": jnp.asarray(w, jnp.float32)}}
    for chunk in (100, 64, 1000):   # chunks only, chunks + a tail, one short chunk
        got = sim.full_gradient_norm(wl.loss, params, jnp.asarray(wl.data.x_train),
                                     jnp.asarray(y), chunk=chunk)
        assert float(got) == pytest.approx(want, rel=1e-5)
