"""Compression of the server's broadcast (jaxasync.downlink): each rule by hand, the identity
as a no-op, the bits charged, the workers computing at the view, and the memory it costs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import least_squares, run_toy, toy_data

import jaxasync as ja
from jaxasync import compress as C
from jaxasync import delays as dl
from jaxasync import downlink, sim

EPS32 = float(np.finfo(np.float32).eps)


def _step(rule, comp, state, params, updates, ids=(0,), advance=True):
    return downlink.step(comp, rule, state, params, updates, jnp.asarray(advance),
                         jnp.asarray(ids, jnp.int32), jax.random.PRNGKey(0))


@pytest.mark.parametrize("rule,second", [
    # DoubleSqueeze: m = top1(u + e), e <- u + e - m; u + e = [2, -3, 4, 1] -> top-1 is 4
    ("doublesqueeze", [0.0, 0.0, 4.0, 0.0]),
    # EF21-BC: m = top1(u - h), h <- h + m, apply h; u - h = [1, 0, 2, 0.5] -> h = [0, -3, 2, 0]
    ("ef21_bc", [0.0, -3.0, 2.0, 0.0]),
])
def test_the_update_rules_by_hand(rule, second):
    """Two broadcasts of the same update u with top-1: the first sends -3 under both rules."""
    comp = C.top_k(0.25)
    p = {"w": jnp.zeros(4)}
    st = downlink.init(comp, rule, p, num_workers=2)
    u = {"w": jnp.array([1.0, -3.0, 2.0, 0.5])}
    applied, view, st, _ = _step(rule, comp, st, p, u)
    assert view is None                       # everybody applies the broadcast: the ring holds x
    np.testing.assert_array_equal(applied["w"], [0.0, -3.0, 0.0, 0.0])
    applied, _, st, _ = _step(rule, comp, st, p, u)
    np.testing.assert_array_equal(applied["w"], second)
    if rule == "doublesqueeze":
        np.testing.assert_array_equal(st.memory.residual()["w"][0], [2.0, -3.0, 0.0, 1.0])


def test_ef21_p_keeps_the_exact_model_and_moves_the_view():
    comp = C.top_k(0.25)
    p = {"w": jnp.array([1.0, 1.0, 1.0, 1.0])}
    st = downlink.init(comp, "ef21_p", p, num_workers=1)
    u = {"w": jnp.array([0.5, -2.0, 0.25, 0.0])}
    applied, view, st, _ = _step("ef21_p", comp, st, p, u)
    np.testing.assert_array_equal(applied["w"], u["w"])                  # x gets the exact u
    # w_0 = x_0; x_1 - w_0 = u: top-1 is -2
    np.testing.assert_array_equal(view["w"], [1.0, -1.0, 1.0, 1.0])


def test_bits_a_worker_pays_are_the_broadcasts_it_missed_capped_at_the_dense_model():
    comp = C.top_k(0.125)                     # one entry of 8: 64 bits per broadcast
    p = {"w": jnp.zeros(8)}
    st = downlink.init(comp, "doublesqueeze", p, num_workers=3)
    u = {"w": jnp.arange(1.0, 9.0)}
    paid = []
    for t, ids in enumerate([(0,), (1,), (0,), (2,)]):
        _, _, st, b = _step("doublesqueeze", comp, st, p, u, ids=ids, advance=t != 1)
        paid.append(float(b[0]))
    # worker 0 pays broadcast 0; worker 1 broadcast 0 (step 1 broadcast nothing); worker 0
    # broadcasts 1-2 (one); worker 2 all three made: 3 x 64 = 192, under 32 x 8 = 256
    assert paid == [64.0, 64.0, 64.0, 192.0]
    for _ in range(3):
        _, _, st, b = _step("doublesqueeze", comp, st, p, u, ids=(0,))
        paid.append(float(b[0]))
    assert paid[4:] == [128.0, 64.0, 64.0]    # worker 0 had missed the broadcast of step 3
    _, _, st, b = _step("doublesqueeze", comp, st, p, u, ids=(1,))
    assert float(b[0]) == 256.0               # 6 broadcasts missed: the dense model instead
    assert float(downlink.metrics(st)["bits_down"]) == sum(paid) + 256


def _run(rule, name="identity", params=(), algorithm="asgd", arrivals=1, delay=None, steps=30,
         m=4):
    cfg = sim.SimConfig(num_workers=m, arrivals=arrivals, batch_size=8, ring_size=8,
                        steps=steps, eval_every=steps,
                        delay=delay or dl.DelayConfig(kind="uniform", high=3),
                        downlink=None if rule is None else (name, params, rule))
    return run_toy(algorithm, cfg, {"learning_rate": 0.05})


@pytest.mark.parametrize("rule", downlink.RULES)
def test_the_identity_downlink_changes_nothing_but_the_bits(rule):
    plain, ident = _run(None), _run(rule)
    np.testing.assert_allclose(ident.final_state.params["w"], plain.final_state.params["w"],
                               rtol=64 * EPS32, atol=64 * EPS32,
                               err_msg="identity broadcast: the same iterates, up to the "
                                       "rounding of x + (x' - x)")
    hp, hi = plain.history[0][-1], ident.history[0][-1]
    assert hp["bits_down"] == hi["bits_down"] == 30 * 32 * 8      # one dense model per row
    assert hp["bits_up"] == hi["bits_up"]


@pytest.mark.parametrize("rule", downlink.RULES)
@pytest.mark.parametrize("algorithm,arrivals", [("asgd", 1), ("sync_sgd", 4)])
def test_a_compressed_broadcast_is_charged_and_still_converges(rule, algorithm, arrivals):
    plain = _run(None, algorithm=algorithm, arrivals=arrivals, steps=200)
    comp = _run(rule, "top_k", (("density", 0.25),), algorithm, arrivals, steps=200)
    hp, hc = plain.history[0][-1], comp.history[0][-1]
    rows = 200 * arrivals
    assert hp["bits_down"] == rows * 256
    # 2 of 8 entries, 64 bits each, per broadcast; a row pays what it missed (at most dense)
    assert rows * 128 <= hc["bits_down"] < rows * 256
    assert hc["train_loss"] < 2.0 * hp["train_loss"] + 0.05


def test_ef21_p_workers_compute_at_the_view():
    """With a broadcast that sends nothing useful (top-1 of 8 with a fixed huge threshold:
    nothing passes), the workers' view stays x_0: every gradient is taken at x_0, while the
    server's model moves. A synchronous run then steps by the same gradient every round."""
    wl = least_squares(n=64, d=8)
    cfg = sim.SimConfig(num_workers=2, batch_size=32, ring_size=4, steps=5, eval_every=5,
                        full_batch=True, delay=dl.DelayConfig(kind="none"),
                        downlink=("threshold", (("threshold", float("inf")),), "ef21_p"))
    s = sim.Simulator(ja.get_algorithm("sync_sgd"), {}, wl, cfg)
    r = sim.run(s, toy_data(wl, 2), jax.random.PRNGKey(0)[None],
                {"learning_rate": jnp.asarray([0.1])})
    g0 = jax.grad(wl.loss)(wl.init(None), jnp.asarray(wl.data.x_train), jnp.asarray(
        wl.data.y_train))
    np.testing.assert_allclose(r.final_state.params["w"][0], -0.5 * g0["w"], rtol=1e-5,
                               err_msg="5 steps of 0.1 x the gradient at x_0")
    assert r.history[0][-1]["bits_down"] == 0.0          # an empty message costs nothing


def test_the_memory_a_compressed_broadcast_costs():
    """The ring holds the workers' view; the rest is the server's memory (one parameter
    vector) and M floats of pending bits, against M vectors for a view kept per worker."""
    wl = least_squares(n=64, d=8)
    m = 4

    def state_bytes(downlink_cfg):
        cfg = sim.SimConfig(num_workers=m, batch_size=8, ring_size=8, steps=4, eval_every=4,
                            delay=dl.DelayConfig(kind="uniform", high=3),
                            downlink=downlink_cfg)
        s = sim.Simulator(ja.get_algorithm("asgd"), {}, wl, cfg)
        shape = jax.eval_shape(s.init, jax.random.PRNGKey(0),
                               {"learning_rate": jnp.float32(0.1)})
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shape))

    base = state_bytes(None)
    for rule in downlink.RULES:
        extra = state_bytes(("sign", (), rule)) - base
        # one 8-float vector, M pending floats, two float32 counters
        assert extra == 4 * (8 + m + 2), (rule, extra)
    # top-k's mask layout (DoubleSqueeze's EF14) adds its selection, two int32 per leaf
    assert state_bytes(("top_k", (("density", 0.25),), "doublesqueeze")) - base == 4 * (
        8 + 2 + m + 2)
