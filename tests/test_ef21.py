"""EF21: the Markov compressor by hand, identity = gradient descent, the theoretical step,
partial participation, and the config that runs it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import least_squares, run_toy

import jaxasync as ja
from jaxasync import compress as C
from jaxasync import delays as dl
from jaxasync import sim

EPS32 = float(np.finfo(np.float32).eps)


def _update(tx, state, grads, ids=None, lr_params=None):
    p = lr_params or {"w": jnp.zeros(4)}
    w = grads["w"].shape[0]
    return tx.update(grads, state, p, staleness=jnp.zeros((w,), jnp.int32),
                     worker_ids=ids, key=jax.random.PRNGKey(0))


def test_markov_compressor_by_hand():
    """Two workers, top-1 of 4 entries: c_i = top1(grad_i - h_i), h_i += c_i, g += mean c_i,
    and the step is -lr g."""
    tx = ja.ef21(learning_rate=0.5, num_workers=2, compressor=C.top_k(0.25))
    state = tx.init({"w": jnp.zeros(4)})
    g1 = {"w": jnp.array([[1.0, -3.0, 2.0, 0.0], [0.0, 1.0, 0.0, 4.0]])}
    u, state = _update(tx, state, g1)
    # c = [0,-3,0,0], [0,0,0,4]; g = mean = [0,-1.5,0,2]
    np.testing.assert_allclose(u["w"], -0.5 * np.array([0.0, -1.5, 0.0, 2.0]))
    u, state = _update(tx, state, g1)
    # differences: [1,0,2,0] -> c = [0,0,2,0]; [0,1,0,0] -> c = [0,1,0,0]
    np.testing.assert_allclose(u["w"], -0.5 * np.array([0.0, -1.0, 1.0, 2.0]))
    (cs,) = ja.transforms.find_states(state, ja.transforms.CompressState)
    np.testing.assert_allclose(cs.memory.estimate["w"], [[0, -3, 2, 0], [0, 1, 0, 4]])
    # one top-k message per worker and round: 64 bits each
    assert float(ja.communication(state)["bits_up"]) == 4 * 64


def test_partial_participation_keeps_the_absent_workers_estimates():
    """EF21-PP: a worker that does not arrive keeps g_i, and g still averages over all n."""
    tx = ja.ef21(learning_rate=1.0, num_workers=3)                 # identity compressor
    state = tx.init({"w": jnp.zeros(4)})
    g = {"w": jnp.arange(12.0).reshape(3, 4)}
    _, state = _update(tx, state, g)                               # rows = workers 0, 1, 2
    u, state = _update(tx, state, {"w": jnp.full((1, 4), 100.0)}, ids=jnp.array([2]))
    # g = (g_0 + g_1 + 100) / 3 with g_0, g_1 from the first round
    np.testing.assert_allclose(u["w"], -(g["w"][0] + g["w"][1] + 100.0) / 3, rtol=4 * EPS32)


def test_ef21_with_the_identity_is_gradient_descent():
    """All workers every round at the current iterate (no delays), full local gradients: EF21
    with the identity is GD; synchronous SGD on the same shards is GD too."""
    wl = least_squares(n=64, d=6)
    cfg = sim.SimConfig(num_workers=4, arrivals=4, batch_size=16, ring_size=4, steps=40,
                        eval_every=40, full_batch=True, delay=dl.DelayConfig(kind="none"))
    a = run_toy("ef21", cfg, {"learning_rate": 0.1}, workload=wl)
    b = run_toy("sync_sgd", cfg, {"learning_rate": 0.1}, workload=wl)
    wa, wb = np.asarray(a.final_state.params["w"]), np.asarray(b.final_state.params["w"])
    # two programs: EF21 rebuilds g as g + mean(grad_i - g_i), which rounds differently from
    # the plain mean each step; 40 steps of contraction keep the difference to a few hundred
    # ulp of |w|
    np.testing.assert_allclose(wa, wb, atol=300 * EPS32 * np.abs(wb).max(),
                               err_msg="EF21(identity) vs GD, float32 rounding over 40 steps")
    assert a.history[0][-1]["train_loss"] == pytest.approx(b.history[0][-1]["train_loss"],
                                                           rel=1e-5)


def test_theoretical_step_size_by_hand():
    assert ja.ef21_step_size(0.25, 1.0, 2.0) == pytest.approx(1 / (1 + 2 * 7))
    s = np.sqrt(0.75)
    assert ja.ef21_step_size(0.25, 1.0, 2.0, exact=True) == pytest.approx(
        1 / (1 + 2 * s / (1 - s)))
    # the identity (alpha = 1): the exact form is GD's 1/L, the simplified one halves it
    assert ja.ef21_step_size(1.0, 3.0, exact=True) == pytest.approx(1 / 3)
    assert ja.ef21_step_size(1.0, 3.0) == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match="alpha"):
        ja.ef21_step_size(0.0, 1.0)


def test_theory_step_reads_the_compressors_alpha():
    comp = C.make_compressor("top_k", density=0.25)                  # alpha = 1/4 on 8 entries
    tx = ja.ef21(learning_rate=2.0, num_workers=1, compressor=comp, smoothness=1.0,
                 theory_step=True)
    p = {"w": jnp.zeros(8)}
    state = tx.init(p)
    g = {"w": jnp.arange(1.0, 9.0)[None]}
    u, _ = tx.update(g, state, p, staleness=jnp.zeros((1,), jnp.int32))
    gamma = 2.0 / (1 + 7)
    np.testing.assert_allclose(u["w"], -gamma * np.array([0, 0, 0, 0, 0, 0, 7.0, 8.0]),
                               rtol=4 * EPS32)
    with pytest.raises(ValueError, match="alpha"):
        ja.ef21(learning_rate=1.0, num_workers=1, compressor=C.make_compressor("qsgd", levels=2),
                smoothness=1.0, theory_step=True).init(p)


def test_the_experiment_gives_ef21_the_run_compressor_and_the_workload_smoothness():
    from jaxasync.experiment import run_experiment

    cfg = {"algorithm": {"name": "ef21", "params": {"learning_rate": 1.0, "theory_step": True},
                         "compressor": {"name": "top_k", "params": {"density": 0.2}}},
           "workload": {"name": "logistic", "batch_size": 10, "full_batch": True,
                        "options": {"n": 200, "d": 10}},
           "delay": {"kind": "none"}, "run": {"num_workers": 4, "steps": 30, "eval_every": 30},
           "plot": False}
    rec = run_experiment(cfg, progress=False)
    (member,) = rec["members"]
    last = member["final"]
    # every worker every round sends top-2 of 10 (64 bits per entry): the compressor arrived
    assert last["bits_up"] == 30 * 4 * 2 * 64 and np.isfinite(last["train_loss"])
