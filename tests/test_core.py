"""Transforms, ring buffer, delay models and the simulator on toy problems."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxasync as ja
from jaxasync import delays as dl
from jaxasync import rules, sim
from jaxasync.transforms import as_rows, keep_decisions

from helpers import (
    assert_f32_close,
    assert_loss_close,
    full_batch_least_squares,
    iid_shards,
    least_squares,
    run_toy,
    sgd_roundings,
    toy_data,
)


def _grads(key, w, d=5):
    return {"a": jax.random.normal(key, (w, d)), "b": jax.random.normal(jax.random.fold_in(key, 1), (w, 2, 3))}


# ----------------------------------------------------------------------------- transforms


def test_sync_sgd_equals_optax_sgd_on_mean_gradient_step_by_step():
    params = {"a": jnp.ones(5), "b": jnp.zeros((2, 3))}
    ref_params = params
    tx, ref = ja.sync_sgd(learning_rate=0.07), optax.sgd(0.07)
    s, rs = tx.init(params), ref.init(params)
    for t in range(200):
        g = _grads(jax.random.PRNGKey(t), 4)
        g = jax.tree.map(lambda x, p: x + 0.1 * p, g, params)  # depends on the iterate
        u, s = tx.update(g, s, params, staleness=jnp.zeros(4, jnp.int32))
        params = optax.apply_updates(params, u)
        rg = jax.tree.map(lambda x, p: x + 0.1 * p, _grads(jax.random.PRNGKey(t), 4), ref_params)
        ru, rs = ref.update(jax.tree.map(lambda x: x.mean(0), rg), rs, ref_params)
        ref_params = optax.apply_updates(ref_params, ru)
    for k in params:
        np.testing.assert_allclose(params[k], ref_params[k], rtol=1e-5, atol=1e-6)


def test_aggregations_by_hand():
    g = {"x": jnp.asarray([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])}
    rows = as_rows(g)._replace(scale=jnp.asarray([1.0, 0.5, 2.0]),
                               applied=jnp.asarray([True, True, False]))
    p = {"x": jnp.zeros(2)}
    for how, want in [("mean", [(1 + 1.5) / 2, (2 + 2) / 2]), ("sum", [2.5, 4.0]),
                      ("weighted", [2.5 / 1.5, 4.0 / 1.5])]:
        tx = ja.aggregate(how)
        u, _ = tx.update(rows, keep_decisions(tx, 3).init(p), p)
        np.testing.assert_allclose(u["x"], want, rtol=1e-6)
    with pytest.raises(ValueError, match="how='median'"):
        ja.aggregate("median")


def test_fused_row_sum_adds_the_rows_in_order():
    from jaxasync.transforms import UNROLL_ROWS, row_sum

    rng = np.random.default_rng(0)
    for n in (1, 3, 10, UNROLL_ROWS):
        rows = rng.standard_normal((n, 257)).astype(np.float32) * np.logspace(
            -3, 3, n, dtype=np.float32)[:, None]
        weight = (rng.random(n) < 0.7).astype(np.float32)
        want = weight[0] * rows[0]
        for i in range(1, n):                     # float32, one row after the other
            want = want + weight[i] * rows[i]
        got = jax.jit(lambda w, r: row_sum(w, r, fuse_rows=True))(weight, rows)
        np.testing.assert_array_equal(got, want)
    # the aggregate with fuse_rows is the same transform
    g = {"x": jnp.asarray(rng.standard_normal((5, 4)), jnp.float32)}
    p = {"x": jnp.zeros(4)}
    outs = []
    for fuse in (False, True):
        tx = ja.aggregate("sum", fuse_rows=fuse)
        outs.append(jax.jit(tx.update)(g, keep_decisions(tx, 5).init(p), p)[0]["x"])
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6)


def test_staleness_scalers_identity_at_zero_and_values():
    tau0 = jnp.zeros(5, jnp.int32)
    for fn in (rules.constant_scale, rules.inverse_staleness, rules.fedbuff_weight,
               lambda t: rules.delay_adaptive(t, 16), lambda t: rules.koloskova_scale(t, 4)):
        np.testing.assert_array_equal(fn(tau0), np.ones(5))
    tau = jnp.asarray([0, 1, 4, 32])
    np.testing.assert_allclose(rules.inverse_staleness(tau), [1, 1, 0.25, 1 / 32])
    np.testing.assert_allclose(rules.delay_adaptive(tau, 16), [1, 1, 1, 0.5])
    np.testing.assert_allclose(rules.fedbuff_weight(tau), 1 / np.sqrt(1 + np.asarray([0, 1, 4, 32])))
    np.testing.assert_allclose(rules.koloskova_scale(tau, 4), [1, 1, 1, 0])


def test_scale_by_staleness_at_zero_delay_is_identity_chain():
    p = {"a": jnp.zeros(5), "b": jnp.zeros((2, 3))}
    g = _grads(jax.random.PRNGKey(3), 3)
    for tx in (ja.staleness_aware(0.1), ja.delay_adaptive(0.1, num_workers=8), ja.fedbuff(0.1),
               ja.koloskova(0.1, num_workers=8),
               ja.koloskova(0.1, num_workers=8, mode="shrink", smoothness=1.0)):
        u, _ = tx.update(g, keep_decisions(tx, 3).init(p), p, staleness=jnp.zeros(3, jnp.int32))
        uu, _ = ja.asgd(0.1).update(g, ja.asgd(0.1).init(p), p)
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), u, uu)


def test_accept_if_rejects_and_counts_bits():
    p = {"x": jnp.zeros(4)}
    g = {"x": jnp.asarray([[3.0, 4.0, 0, 0], [0.3, 0.4, 0, 0], [6.0, 8.0, 0, 0]])}  # norms 5, .5, 10
    drift = jnp.asarray([1.0, 1.0, 0.0])
    tx = optax.chain(
        ja.accept_if(lambda n, dn: rules.norm_ratio(n, dn, 2.0), ("grad_norm", "drift_norm"),
                     probe_bits=32.0, upload_after_accept=True),
        ja.aggregate("mean"), optax.sgd(1.0))
    s = keep_decisions(tx, 3).init(p)
    u, s = tx.update(g, s, p, drift_norm=drift)
    # row 0: 5 >= 2*1 accept; row 1: .5 < 2 reject; row 2: fresh accept
    np.testing.assert_allclose(u["x"], -np.asarray([4.5, 6.0, 0, 0]), rtol=1e-6)
    c = ja.communication(s)
    assert int(c["rejections"]) == 1 and int(c["applied"]) == 2 and int(c["uploads"]) == 2
    assert float(c["bits_up"]) == 3 * 32 + 2 * 32 * 4
    assert float(c["bits_down"]) == 3 * 32 * 4
    last = ja.last_decisions(s)
    np.testing.assert_array_equal(last.rejected, [False, True, False])


def test_dropped_rows_are_counted_and_not_applied():
    p = {"x": jnp.zeros(2)}
    g = {"x": jnp.asarray([[1.0, 1.0], [5.0, 5.0]])}
    tx = ja.asgd(1.0)
    u, s = tx.update(g, keep_decisions(tx, 2).init(p), p, mask=jnp.asarray([True, False]))
    np.testing.assert_allclose(u["x"], [-1.0, -1.0])
    c = ja.communication(s)
    assert int(c["dropped"]) == 1 and int(c["arrivals"]) == 1 and float(c["bits_up"]) == 64


def test_bit_counter_keeps_small_increments_on_large_totals():
    p = {"x": jnp.zeros(1)}
    tx = ja.aggregate("sum")
    s = keep_decisions(tx, 1).init(p)
    s = s._replace(counts=s.counts._replace(bits_up=jnp.float32(1e12)))
    for _ in range(1000):
        _, s = tx.update({"x": jnp.ones((1, 1))}, s, p)
    got = ja.total_bits(s)
    assert got == float(np.float32(1e12)) + 32_000


def test_compress_identity_with_error_feedback_keeps_zero_residual():
    def identity(tree, key):
        return tree, jnp.float32(32 * sum(x.size for x in jax.tree.leaves(tree)))

    p = {"a": jnp.zeros(5), "b": jnp.zeros((2, 3))}
    tx = optax.chain(ja.compress_rows(identity, error_feedback=True, num_workers=3), ja.aggregate("mean"),
                     optax.sgd(0.1))
    s = keep_decisions(tx, 3).init(p)
    g = _grads(jax.random.PRNGKey(0), 3)
    u, s = tx.update(g, s, p, worker_ids=jnp.arange(3))
    ref, _ = ja.asgd(0.1).update(g, ja.asgd(0.1).init(p), p)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), u, ref)
    err = s[0].residual()
    assert all(float(jnp.abs(e).max()) == 0.0 for e in jax.tree.leaves(err))


def test_algorithms_work_under_inject_hyperparams_and_jit_without_recompiling():
    p = {"a": jnp.zeros(5), "b": jnp.zeros((2, 3))}
    tx = optax.inject_hyperparams(ja.staleness_aware)(learning_rate=0.1)
    s = keep_decisions(tx, 2).init(p)
    upd = jax.jit(tx.update)
    for t in range(3):
        _, s = upd(_grads(jax.random.PRNGKey(t), 2), s, p, staleness=jnp.asarray([t, 1]))
    assert upd._cache_size() == 1


# ----------------------------------------------------------------------------- ring & delays


def test_ring_read_returns_version_pushed_tau_steps_ago_for_traced_tau():
    depth = 8
    ring = sim.ring_init({"w": jnp.zeros(3)}, depth)
    push = jax.jit(sim.ring_push)
    read = jax.jit(sim.ring_read)
    for t in range(1, 20):
        ring = push(ring, {"w": jnp.full(3, float(t))})
        for tau in range(depth):
            got = read(ring, jnp.asarray(tau))["w"]
            np.testing.assert_array_equal(got, np.full(3, float(max(t - tau, 0))))
        many = read(ring, jnp.arange(depth))["w"][:, 0]
        np.testing.assert_array_equal(many, np.maximum(t - np.arange(depth), 0))
    assert read._cache_size() == 2  # scalar and vector lags, never one per value


@pytest.mark.parametrize("cfg", [
    dl.DelayConfig(kind="constant", tau=3),
    dl.DelayConfig(kind="uniform", low=2, high=9),
    dl.DelayConfig(kind="geometric", p=0.2, max_delay=60),
    dl.DelayConfig(kind="pareto", alpha=1.5, scale=4.0, max_delay=100),
    dl.DelayConfig(kind="trace", trace=(0, 5, 1, 7)),
])
def test_sampled_delays_match_their_distribution(cfg):
    n = 40_000
    taus = np.asarray(jax.jit(lambda k: dl.sample_delays(cfg, k, n, jnp.int32(0)))(jax.random.PRNGKey(0)))
    assert taus.min() >= 0
    bound = cfg.bound()
    if bound is not None:
        assert taus.max() <= bound
    mean = dl.truncated_mean(cfg)
    if cfg.kind in ("constant", "trace"):
        assert taus.mean() == pytest.approx(mean, abs=1e-3)
    else:
        # 5 standard errors of the sample mean (bounded support: sd <= (max - min) / 2)
        sd = taus.std()
        assert abs(taus.mean() - mean) < 5 * sd / np.sqrt(n)
    if cfg.kind == "geometric":
        assert (taus == 0).mean() == pytest.approx(cfg.p, abs=0.01)


def test_event_driven_identical_exponential_workers_mean_staleness_is_m_minus_1():
    m = 8
    cfg = sim.SimConfig(num_workers=m, arrivals=1, batch_size=4, ring_size=128, steps=4000,
                        eval_every=4000, delay=dl.DelayConfig(kind="event", compute="exponential"))
    r = run_toy("asgd", cfg, {"learning_rate": 0.01})
    h = r.history[0][-1]
    assert h["staleness_mean"] == pytest.approx(m - 1, rel=0.05)
    assert h["dropped"] == 0
    # with rate-1 workers, arrivals form a Poisson process of rate M
    assert h["time"] == pytest.approx(4000 / m, rel=0.05)
    # memoryless workers: each arrival is any of the M workers with probability 1/M, so a
    # worker's staleness is geometric, P(tau = k) = (1/M)(1 - 1/M)^k: mode 0, median about
    # M ln 2, mean M - 1 (the mishchenko_quadratic leaderboard entry relies on this shape)
    pmf = r.staleness_hist[0] / r.staleness_hist[0].sum()
    k = np.arange(31)
    np.testing.assert_allclose(pmf[:31], (1 / m) * (1 - 1 / m) ** k, atol=0.015)


def test_event_driven_constant_compute_is_round_robin():
    m = 5
    cfg = sim.SimConfig(num_workers=m, arrivals=1, batch_size=4, ring_size=16, steps=50, eval_every=50,
                        delay=dl.DelayConfig(kind="event", compute="constant", mean=1.0))
    h = run_toy("asgd", cfg, {"learning_rate": 0.01}).history[0][-1]
    hist = run_toy("asgd", cfg, {"learning_rate": 0.01}).staleness_hist[0]
    # after the first round every arrival is exactly M - 1 versions stale
    assert hist[m - 1] >= 50 - m and h["staleness_max"] == m - 1


def test_stragglers_and_heterogeneity_speeds():
    cfg = dl.DelayConfig(kind="event", straggler_fraction=0.25, straggler_slowdown=10.0)
    sp = np.asarray(dl.worker_speeds(cfg, jax.random.PRNGKey(0), 8))
    np.testing.assert_array_equal(sp, [10, 10, 1, 1, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="delay.speeds"):
        dl.worker_speeds(dl.DelayConfig(speeds=(1.0, 2.0)), jax.random.PRNGKey(0), 3)


def test_link_time_slows_large_messages():
    net = dl.Network(bandwidth=1e6, latency=0.01)
    assert float(net.seconds(jnp.float32(1e6))) == pytest.approx(1.01)
    assert float(dl.Network().seconds(jnp.float32(1e9))) == 0.0


def test_over_stale_arrivals_are_dropped_and_counted():
    # constant delay 6 with a ring of 4 versions. No gradient predates x_0, so at version v < 6
    # an arrival is min(6, v) stale: versions 0..3 are applied (staleness 0, 1, 2, 3); from
    # version 4 on every arrival is 4 >= 4 stale and dropped, and no version follows.
    cfg = sim.SimConfig(num_workers=2, arrivals=1, batch_size=4, ring_size=4, steps=20, eval_every=20,
                        delay=dl.DelayConfig(kind="constant", tau=6))
    h = run_toy("asgd", cfg, {"learning_rate": 0.1}).history[0][-1]
    assert h["dropped"] == 16 and h["applied"] == 4 and h["wasted"] == 16 and h["version"] == 4
    assert h["staleness_max"] == 4 and h["staleness_mean"] == pytest.approx((0 + 1 + 2 + 3 + 16 * 4) / 20)


def test_sampled_staleness_is_capped_at_the_version():
    # staleness-aware ASGD under a constant delay of 8: the first 8 steps read x_0, so their
    # true staleness is 0, 1, ..., 7 and the steps are eta / max(1, t), not eta / 8
    cfg = sim.SimConfig(num_workers=2, arrivals=1, batch_size=4, ring_size=16, steps=8, eval_every=8,
                        delay=dl.DelayConfig(kind="constant", tau=8))
    h = run_toy("staleness_aware", cfg, {"learning_rate": 0.1}).history[0][-1]
    assert h["staleness_mean"] == pytest.approx(sum(range(8)) / 8)
    assert h["staleness_max"] == 7


def test_read_trace(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("0 3, 2\n5")
    assert dl.read_trace(f) == (0, 3, 2, 5)
    f.write_text("1 -2")
    with pytest.raises(ValueError, match="line 1, entry 2 = '-2'"):   # (counted from 1)
        dl.read_trace(f)
    f.write_text("1 2.5")
    with pytest.raises(ValueError, match="non-negative integer"):
        dl.read_trace(f)


# ----------------------------------------------------------------------------- simulator


@pytest.mark.parametrize("tau", [0, 1, 3])
def test_constant_delay_reproduces_numpy_delayed_gd(tau):
    wl = full_batch_least_squares()
    a = wl.data.x_train.astype(np.float64)
    b = wl.data.y_train.astype(np.float64)
    lr, steps = 0.3, 60
    cfg = sim.SimConfig(num_workers=3, arrivals=1, batch_size=2, ring_size=tau + 1, steps=steps,
                        eval_every=steps, delay=dl.DelayConfig(kind="constant", tau=tau))
    r = run_toy("asgd", cfg, {"learning_rate": lr}, workload=wl)
    xs = [np.zeros(a.shape[1])]
    for t in range(steps):
        stale = xs[max(t - tau, 0)]
        xs.append(xs[-1] - lr * a.T @ (a @ stale - b) / a.shape[0])
    got = np.asarray(r.final_state.params["w"][0])
    np.testing.assert_allclose(got, xs[-1], rtol=1e-4, atol=1e-5)


def test_simulated_sync_sgd_equals_optax_full_gradient_descent():
    wl = full_batch_least_squares()
    cfg = sim.SimConfig(num_workers=4, batch_size=2, ring_size=2, steps=40, eval_every=20,
                        delay=dl.DelayConfig(kind="none"))
    r = run_toy("sync_sgd", cfg, {"learning_rate": 0.5}, workload=wl)
    p = wl.init(None)
    tx = optax.sgd(0.5)
    s = tx.init(p)
    for _ in range(40):
        u, s = tx.update(jax.grad(wl.loss)(p, None, None), s, p)
        p = optax.apply_updates(p, u)
    np.testing.assert_allclose(r.final_state.params["w"][0], p["w"], rtol=1e-5, atol=1e-6)
    h = r.history[0][-1]
    assert h["uploads"] == 160 and h["grads"] == 160 and h["staleness_max"] == 0


def test_simulated_sync_sgd_on_shards_is_gradient_descent_on_the_mean_shard_gradient():
    # a loss that depends on the data: each worker's full-shard gradient differs, and the
    # server step must be eta times their mean (not a sum, not one worker's, no duplicates)
    wl = least_squares(n=64, d=5)
    m, steps = 4, 30
    cfg = sim.SimConfig(num_workers=m, batch_size=16, ring_size=2, steps=steps, eval_every=steps,
                        delay=dl.DelayConfig(kind="none"), full_batch=True)
    r = run_toy("sync_sgd", cfg, {"learning_rate": 0.3}, workload=wl)
    x, y = np.asarray(wl.data.x_train, np.float64), np.asarray(wl.data.y_train, np.float64)
    index, _ = iid_shards(x.shape[0], m)
    w = np.zeros(5)
    for _ in range(steps):
        shard_grads = [x[i].T @ (x[i] @ w - y[i]) / len(i) for i in index]
        w = w - 0.3 * np.mean(shard_grads, axis=0)
    np.testing.assert_allclose(r.final_state.params["w"][0], w, rtol=1e-4, atol=1e-6)
    # a synchronous run is not a permutation of one: ASGD with every worker arriving each
    # step and no delay (the asynchronous path, reading the ring at lag 0) is the same method
    asgd_cfg = dataclasses.replace(cfg, arrivals=m, ring_size=4)
    a = run_toy("asgd", asgd_cfg, {"learning_rate": 0.3}, workload=wl)
    assert_f32_close(a.final_state.params["w"][0], r.final_state.params["w"][0],
                     roundings=sgd_roundings(steps, d=5, batch=16, rows=m),
                     why=f"two programs; {steps} steps x (5-term dot, mean of 16 and of {m} "
                         "rows, 3 ops), adding up")
    assert a.history[0][-1]["staleness_max"] == 0


def test_same_seed_identical_and_vmapped_seeds_equal_one_by_one():
    cfg = sim.SimConfig(num_workers=4, arrivals=1, batch_size=8, ring_size=32, steps=60, eval_every=20,
                        delay=dl.DelayConfig(kind="event"))
    both = run_toy("delay_adaptive", cfg, {"learning_rate": 0.05}, seeds=(3, 7))
    again = run_toy("delay_adaptive", cfg, {"learning_rate": 0.05}, seeds=(3, 7))
    assert both.history == again.history
    # a vmapped member against a lone run: two programs, equal up to rounding
    rounds = sgd_roundings(cfg.steps, d=8, batch=8)
    why = f"{cfg.steps} steps x (8-term dot, mean of 8, 3 ops), adding up"
    wl = least_squares()
    for i, seed in enumerate((3, 7)):
        one = run_toy("delay_adaptive", cfg, {"learning_rate": 0.05}, seeds=(seed,))
        w_one = one.final_state.params["w"][0]
        assert_f32_close(both.final_state.params["w"][i], w_one, roundings=rounds, why=why)
        f_max = max(h["train_loss"] for h in one.history[0])
        for h1, hv in zip(one.history[0], both.history[i], strict=True):
            assert_loss_close(hv["train_loss"], h1["train_loss"], param_roundings=rounds,
                              smoothness=wl.smoothness, f_max=f_max, d=8, n=256,
                              w_scale=float(np.abs(w_one).max()), why=why)
            for k in ("bits_up", "time", "staleness_mean"):   # integers, sums of <= 60 terms
                assert_f32_close(hv[k], h1[k], roundings=cfg.steps,
                                 why=f"{k}: an integer or a sum of at most {cfg.steps} terms")
    assert both.history[0][-1]["train_loss"] != both.history[1][-1]["train_loss"]


def test_chunk_compiles_once():
    wl = least_squares()
    cfg = sim.SimConfig(num_workers=4, arrivals=2, batch_size=8, ring_size=16, steps=30, eval_every=10,
                        delay=dl.DelayConfig(kind="uniform", low=0, high=5))
    s = sim.Simulator(ja.get_algorithm("asgd"), {}, wl, cfg)
    data = toy_data(wl, 4)
    hp = {"learning_rate": jnp.float32(0.05)}
    state = jax.jit(s.init)(jax.random.PRNGKey(0), hp)
    chunk = jax.jit(lambda st, dd, h: s.chunk(st, dd, h, 10), donate_argnums=(0,))
    for _ in range(3):
        state, m = chunk(state, data, hp)
    assert chunk._cache_size() == 1
    assert int(m["step"]) == 30


def test_divergence_is_reported_with_step():
    cfg = sim.SimConfig(num_workers=2, arrivals=1, batch_size=8, ring_size=4, steps=200, eval_every=20,
                        delay=dl.DelayConfig(kind="none"))
    r = run_toy("asgd", cfg, {"learning_rate": 50.0}, seeds=(0, 1))
    assert all(d is not None for d in r.diverged)
    assert r.diverged[0] % 20 == 0 and r.diverged[0] < 200
    assert r.history[0][-1]["finite"] is False and r.history[0][0]["finite"] is True


@pytest.mark.parametrize("n", [1, 2, 7, 64, 1000])
def test_epoch_position_visits_every_example_once_per_epoch(n):
    f = jax.jit(jax.vmap(sim.epoch_position, (None, None, 0)))
    k = jax.random.PRNGKey(11)
    p = np.asarray(f(k, n, jnp.arange(3 * n)))
    epochs = p.reshape(3, n)
    for e in epochs:
        assert sorted(e.tolist()) == list(range(n))
    if n >= 7:   # fresh orders: epoch to epoch, key to key
        assert not np.array_equal(epochs[0], epochs[1])
        other = np.asarray(f(jax.random.PRNGKey(12), n, jnp.arange(n)))
        assert not np.array_equal(other, epochs[0])


def test_epoch_sampling_gives_each_worker_its_whole_shard_every_epoch():
    # 4 workers x 12 examples, batch 4: 3 steps per epoch. x encodes the example's index.
    n, m, b = 48, 4, 4
    wl = least_squares(n=n, d=1)
    data = toy_data(wl, m)._replace(x_train=jnp.arange(n, dtype=jnp.float32)[:, None])
    cfg = sim.SimConfig(num_workers=m, batch_size=b, ring_size=2, steps=6, eval_every=6,
                        delay=dl.DelayConfig(kind="none"), sampling="epochs")
    s = sim.Simulator(ja.get_algorithm("sync_sgd"), {}, wl, cfg)
    state = s.init(jax.random.PRNGKey(0), {"learning_rate": jnp.float32(0.1)})
    ids = jnp.arange(m, dtype=jnp.int32)
    drawn = []
    for t in range(6):
        st = state._replace(draws=jnp.full((m,), t, jnp.int32))
        x, _ = s._batches(data, ids, jax.random.PRNGKey(t), st)
        drawn.append(np.asarray(x[..., 0], int))                     # [M, B]
    drawn = np.stack(drawn, axis=1).reshape(m, 2, 3 * b)              # [M, epoch, draws]
    for w in range(m):
        shard = list(range(12 * w, 12 * (w + 1)))
        assert sorted(drawn[w, 0]) == shard and sorted(drawn[w, 1]) == shard
        assert not np.array_equal(drawn[w, 0], drawn[w, 1])


def test_each_worker_counts_the_batches_it_drew():
    # asynchronous: one batch per computed gradient (dropped ones included); synchronous: one
    # per worker per step. The counts place each draw in its worker's shuffled epochs.
    cfg = sim.SimConfig(num_workers=4, arrivals=2, batch_size=4, ring_size=3, steps=10,
                        eval_every=10, delay=dl.DelayConfig(kind="uniform", high=4),
                        sampling="epochs")
    r = run_toy("asgd", cfg, {"learning_rate": 0.05})
    draws = np.asarray(r.final_state.draws[0])
    assert draws.sum() == 20 and r.history[0][-1]["grads"] == 20
    sync = run_toy("sync_sgd", dataclasses.replace(cfg, delay=dl.DelayConfig(kind="none")),
                   {"learning_rate": 0.05})
    np.testing.assert_array_equal(sync.final_state.draws[0], [10, 10, 10, 10])
