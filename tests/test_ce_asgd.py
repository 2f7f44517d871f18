"""CE-ASGD and CE-ASGD-lite: decisions by hand, equivalences through the simulator, counters."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_f32_close, least_squares, sgd_roundings, toy_data

import jaxasync as ja
from jaxasync import delays as dl
from jaxasync import rules, sim
from jaxasync.algorithms import AlgorithmSpec, get_algorithm
from jaxasync.ce import drift_bound
from jaxasync.config import ConfigError
from jaxasync.transforms import as_rows, keep_decisions, row_norms

INF = math.inf

# Event-driven, ideal links: 6 exponential workers, one arrival per step, one chunk.
EVENT = sim.SimConfig(num_workers=6, arrivals=1, batch_size=8, ring_size=64, steps=300,
                      eval_every=300, delay=dl.DelayConfig(kind="event", compute="exponential"))


def _run(spec, cfg, hparams: dict, seeds=None, static=None, workload=None):
    """One vmapped run; ``hparams`` values are per-member lists (same seed unless given)."""
    wl = workload or least_squares()
    n = len(next(iter(hparams.values())))
    s = sim.Simulator(spec if isinstance(spec, AlgorithmSpec) else get_algorithm(spec),
                      static or {}, wl, cfg)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds if seeds is not None else [0] * n))
    hp = {k: jnp.asarray(v, jnp.float32) for k, v in hparams.items()}
    return sim.run(s, toy_data(wl, cfg.num_workers), keys, hp)


def _member(tree, i):
    return jax.tree.map(lambda x: np.asarray(x[i]), tree)


# ----------------------------------------------------------------------------- by hand


def test_norm_ratio_and_drift_bound_by_hand():
    s = jnp.asarray([5.0, 0.5, 1.0, 2.0, 3.0])
    delta = jnp.asarray([1.0, 1.0, 0.0, 1.0, 1.5])
    np.testing.assert_array_equal(rules.norm_ratio(s, delta, 2.0), [True, False, True, True, True])
    np.testing.assert_array_equal(rules.norm_ratio(s, delta, 0.0), [True] * 5)
    np.testing.assert_array_equal(rules.norm_ratio(s, delta, INF),
                                  [False, False, True, False, False])
    u = jnp.asarray([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(drift_bound(u, jnp.asarray([0, 1, 2, 4, 9])), [0, 1, 3, 10, 10])


def _rows_problem():
    # four arriving rows of a 3-parameter model; gradient norms 5, 0.5, 10, 3
    g = {"w": jnp.asarray([[3.0, 4.0, 0.0], [0.3, 0.4, 0.0], [0.0, 6.0, 8.0], [3.0, 0.0, 0.0]])}
    return {"w": jnp.zeros(3)}, g


def test_ce_asgd_full_decisions_bits_and_server_work_by_hand():
    p, g = _rows_problem()
    tau = jnp.asarray([1, 1, 0, 3])
    drift = jnp.asarray([1.0, 1.0, 0.0, 2.0])
    tx = ja.ce_asgd(learning_rate=0.5, threshold=2.0)
    u, s = jax.jit(tx.update)(g, keep_decisions(tx, 4).init(p), p, staleness=tau, drift_norm=drift)
    # 5 >= 2*1 accept; .5 < 2 reject; fresh accept; 3 < 2*2 reject
    np.testing.assert_array_equal(ja.last_decisions(s).applied, [True, False, True, False])
    np.testing.assert_allclose(u["w"], -0.5 * np.asarray([3.0, 10.0, 8.0]) / 2, rtol=1e-6)
    c = ja.communication(s)
    assert int(c["applied"]) == 2 and int(c["rejections"]) == 2 and int(c["uploads"]) == 2
    assert float(c["bits_up"]) == 4 * 32 + 2 * 32 * 3      # 4 norm probes + 2 gradients
    assert float(c["bits_down"]) == 4 * 32 * 3             # every arrival gets the model
    w = ja.server_work(s)
    assert int(w["server_decisions"]) == 4
    assert int(w["server_vector_ops"]) == 3                # a drift norm per stale row
    assert int(w["server_scalar_ops"]) == 8
    assert float(w["server_flops"]) == 2 * 3 * 3 + 8


def test_ce_asgd_lite_decisions_and_server_work_by_hand():
    p, g = _rows_problem()
    g = {"w": g["w"].at[1].set(jnp.asarray([0.6, 0.8, 0.0]))}       # norm 1
    tau = jnp.asarray([1, 2, 0, 3])
    u_norms = jnp.asarray([0.5, 0.25, 1.0, 7.0])   # newest first: bounds 0.5, 0.75, 0, 1.75
    tx = ja.ce_asgd_lite(learning_rate=1.0, threshold=2.0)
    u, s = jax.jit(tx.update)(g, keep_decisions(tx, 4).init(p), p, staleness=tau,
                              update_norms=u_norms)
    # 5 >= 1 accept; 1 < 1.5 reject; fresh accept; 3 < 3.5 reject
    np.testing.assert_array_equal(ja.last_decisions(s).applied, [True, False, True, False])
    np.testing.assert_allclose(u["w"], -np.asarray([3.0, 10.0, 8.0]) / 2, rtol=1e-6)
    w = ja.server_work(s)
    assert int(w["server_scalar_ops"]) == (1 + 2) + (2 + 2) + (0 + 2) + (3 + 2)
    assert int(w["server_vector_ops"]) == 1   # K > 1: the new update norm is a vector norm
    # K = 1: the update norm is lr * s, one scalar op on an applied step, no vector op
    tx1 = ja.ce_asgd_lite(learning_rate=1.0, threshold=2.0)
    _, s1 = jax.jit(tx1.update)(jax.tree.map(lambda x: x[:1], g), keep_decisions(tx1, 1).init(p), p,
                                staleness=tau[:1], update_norms=u_norms)
    w1 = ja.server_work(s1)
    assert int(w1["server_scalar_ops"]) == 1 + 2 + 1 and int(w1["server_vector_ops"]) == 0


def test_threshold_from_kappa_and_smoothness():
    p, g = _rows_problem()
    tau, drift = jnp.asarray([1, 1, 0, 3]), jnp.asarray([1.0, 1.0, 0.0, 2.0])

    def applied(tx):
        _, s = tx.update(g, keep_decisions(tx, 4).init(p), p, staleness=tau, drift_norm=drift)
        return np.asarray(ja.last_decisions(s).applied)

    want = applied(ja.ce_asgd(threshold=2.0))
    np.testing.assert_array_equal(applied(ja.ce_asgd(kappa=4.0, smoothness=0.5)), want)
    # with a known L, kappa wins; threshold is the fallback where L is unknown
    both = ja.ce_asgd(threshold=99.0, kappa=4.0, smoothness=0.5)
    np.testing.assert_array_equal(applied(both), want)
    np.testing.assert_array_equal(applied(ja.ce_asgd(threshold=2.0, kappa=99.0)), want)
    with pytest.raises(ValueError, match="kappa=.* needs the smoothness"):
        ja.ce_asgd_lite(kappa=1.0)
    with pytest.raises(ValueError, match="give threshold"):
        ja.ce_asgd()


def test_experiment_passes_the_workload_smoothness_and_reports_missing_l():
    from jaxasync.experiment import prepare

    wl = least_squares()
    cfg = {"algorithm": {"name": "ce_asgd", "params": {"learning_rate": 0.05, "kappa": 2.0}},
           "workload": {"name": "toy", "batch_size": 8},
           "delay": {"kind": "event"}, "run": {"num_workers": 4, "gradients": 40}}
    prep = prepare(cfg, workload_factory=lambda name, **o: wl)
    assert prep.static["smoothness"] == wl.smoothness
    no_l = dataclasses.replace(wl, smoothness=None)
    with pytest.raises(ConfigError, match="algorithm.params: ce_asgd: kappa"):
        prepare(cfg, workload_factory=lambda name, **o: no_l)
    cfg["algorithm"]["params"]["threshold"] = 3.0      # the fallback makes it valid
    assert prepare(cfg, workload_factory=lambda name, **o: no_l).static["smoothness"] is None


# ----------------------------------------------------------------------------- lite vs full


def _history(rng, t, d, collinear):
    """Versions x_0..x_t of a random walk (float32); collinear: every step along one axis."""
    if collinear:
        steps = np.outer(rng.uniform(0.0, 2.0, t), np.eye(d)[0])
    else:
        drift = rng.normal(size=d) * rng.uniform(0, 2)      # some persistence, as in SGD
        steps = rng.normal(size=(t, d)) * rng.uniform(0.01, 1.0) + drift
    return np.concatenate([np.zeros((1, d)), np.cumsum(steps, axis=0)]).astype(np.float32)


@pytest.mark.parametrize("collinear", [False, True])
def test_lite_never_accepts_what_full_rejects_on_random_histories(collinear):
    rng = np.random.default_rng(7 if collinear else 3)
    w, depth = 16, 12
    full = ja.ce_asgd(learning_rate=0.1, threshold=1.0)
    lite = ja.ce_asgd_lite(learning_rate=0.1, threshold=1.0)

    @jax.jit
    def decide(g, versions, tau):
        p = {"x": versions[-1]}
        t = versions.shape[0] - 1
        drift = jnp.linalg.norm(versions[-1][None] - versions[t - tau], axis=1)
        u_norms = jnp.linalg.norm(versions[1:] - versions[:-1], axis=1)[::-1]
        acc = []
        for tx, extra in ((full, {"drift_norm": drift}), (lite, {"update_norms": u_norms})):
            _, s = tx.update({"x": g}, keep_decisions(tx, w).init(p), p, staleness=tau, **extra)
            acc.append(ja.last_decisions(s).applied)
        bound = drift_bound(u_norms, tau)
        return acc[0], acc[1], drift, bound, row_norms({"x": g})

    lite_rejects = full_rejects = 0
    for _ in range(60):
        versions = _history(rng, depth, 5, collinear)
        tau = jnp.asarray(rng.integers(0, depth + 1, w), jnp.int32)
        # gradient norms spread around the boundary c * drift
        g = rng.normal(size=(w, 5)).astype(np.float32)
        g *= (rng.uniform(0.3, 3.0, w) / np.linalg.norm(g, axis=1))[:, None]
        acc_full, acc_lite, drift, bound, s = map(np.asarray, decide(g, versions, tau))
        assert np.all(bound >= drift * (1 - 1e-5))                      # delta-hat >= delta
        near = np.abs(s - drift) <= 1e-5 * drift                        # float32 rounding band
        assert not np.any(acc_lite & ~acc_full & ~near)
        lite_rejects += int(np.sum(~acc_lite))
        full_rejects += int(np.sum(~acc_full))
    assert lite_rejects >= full_rejects > 0


def _full_vs_lite_spec():
    """CE-ASGD (full), recording what lite would have decided on the same history."""
    from typing import NamedTuple

    class PairState(NamedTuple):
        lite_accepts_full_rejects: jax.Array
        bound_below_drift: jax.Array
        lite_rejects: jax.Array
        full_rejects: jax.Array

        def metrics(self):
            return self._asdict()

    def recorder(threshold):
        def init_fn(params):
            z = jnp.zeros((), jnp.int32)
            return PairState(z, z, z, z)

        def update_fn(updates, state, params=None, *, staleness, drift_norm, update_norms,
                      mask=None, **extra):
            rows = as_rows(updates, mask)
            live = rows.applied
            s = row_norms(rows.grads)
            bound = drift_bound(update_norms, staleness)
            full = rules.norm_ratio(s, drift_norm, threshold)
            lite = rules.norm_ratio(s, bound, threshold)
            # The ring's update norms are those of the updates applied; the stored versions
            # are rounded to float32, so delta-hat >= delta holds up to that rounding: a few
            # ulp of |x| per version crossed.
            d = params["w"].size
            ulp = jnp.finfo(jnp.float32).eps * (jnp.max(jnp.abs(params["w"])) + 1.0)
            slack = 4.0 * staleness * jnp.sqrt(float(d)) * ulp
            below = bound < drift_norm - slack
            n = lambda b: jnp.sum((b & live).astype(jnp.int32))
            return rows, PairState(
                state.lite_accepts_full_rejects + n(lite & ~full & below),
                state.bound_below_drift + n(below),
                state.lite_rejects + n(~lite), state.full_rejects + n(~full))

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)

    registered = get_algorithm("ce_asgd")

    def factory(learning_rate=0.05, threshold=1.0):
        # the registered CE-ASGD, behind a recorder that passes the rows through unchanged
        return optax.chain(recorder(threshold), registered.build(learning_rate=learning_rate,
                                                                 threshold=threshold))

    return AlgorithmSpec("ce_asgd_recording_lite", factory,
                         registered.needs | {"update_norms"})


# ----------------------------------------------------------------------------- simulator


@pytest.fixture(scope="module")
def runs():
    """ASGD, and CE-ASGD / lite at thresholds 0, inf and 8 (members), same seed.

    The CE-ASGD run records, at every decision, what lite would have decided.
    """
    hp = {"learning_rate": [0.05] * 3, "threshold": [0.0, INF, 8.0]}
    return {"asgd": _run("asgd", EVENT, {"learning_rate": [0.05]}),
            "ce_asgd": _run(_full_vs_lite_spec(), EVENT, hp),
            "ce_asgd_lite": _run("ce_asgd_lite", EVENT, hp)}


def test_lite_never_accepts_what_full_rejects_through_the_simulator(runs):
    for h in (m[-1] for m in runs["ce_asgd"].history):
        assert h["lite_accepts_full_rejects"] == 0 and h["bound_below_drift"] == 0
        assert h["lite_rejects"] >= h["full_rejects"]
    assert runs["ce_asgd"].history[2][-1]["lite_rejects"] > runs["ce_asgd"].history[2][-1][
        "full_rejects"] > 0


@pytest.mark.parametrize("name", ["ce_asgd", "ce_asgd_lite"])
def test_threshold_zero_equals_asgd_through_the_simulator(runs, name):
    a, c = runs["asgd"], runs[name]
    # Two programs (three vmapped members against one): the same iterates up to rounding.
    # The loss is a function of the parameters, so they are what is compared.
    assert_f32_close(_member(c.final_state.params, 0)["w"], _member(a.final_state.params, 0)["w"],
                     roundings=sgd_roundings(EVENT.steps, d=8, batch=8),
                     why="300 steps x (8-term dot, mean of 8, 3 ops), differences add up")
    ha, hc = a.history[0][-1], c.history[0][-1]
    # counters: integers below 2^24, exact in float32 whatever the order of the additions
    assert hc["applied"] == ha["applied"] == EVENT.steps and hc["rejections"] == 0
    assert hc["bits_up"] == ha["bits_up"] + 32 * hc["arrivals"]   # plus the norm probes


@pytest.mark.parametrize("name", ["ce_asgd", "ce_asgd_lite"])
def test_infinite_threshold_applies_only_fresh_gradients(runs, name):
    r = runs[name]
    h, hist = r.history[1][-1], r.staleness_hist[1]
    assert h["applied"] == hist[0] > 0               # every fresh arrival, nothing else
    assert h["rejections"] == EVENT.steps - hist[0] > 0
    assert h["train_loss"] < r.history[1][0]["train_loss"]
    # full and lite agree when only fresh gradients pass
    other = runs["ce_asgd_lite" if name == "ce_asgd" else "ce_asgd"]
    assert_f32_close(_member(r.final_state.params, 1)["w"],
                     _member(other.final_state.params, 1)["w"],
                     roundings=sgd_roundings(EVENT.steps, d=8, batch=8),
                     why="two programs, at most 300 steps x (8-term dot, mean of 8, 3 ops)")


@pytest.mark.parametrize("name", ["ce_asgd", "ce_asgd_lite"])
def test_counters_add_up(runs, name):
    r = runs[name]
    d = 8
    h = r.history[2][-1]
    steps = EVENT.steps
    assert 0 < h["rejections"] < steps
    assert h["applied"] + h["rejections"] + h["dropped"] == steps == h["grads"]
    assert h["arrivals"] == steps - h["dropped"] and h["dropped"] == 0
    assert h["uploads"] == h["applied"] and h["wasted"] == h["rejections"] + h["dropped"]
    assert h["bits_up"] == 32 * h["arrivals"] + 32 * d * h["applied"]
    assert h["bits_down"] == 32 * d * steps
    assert h["version"] == h["applied"]
    assert h["server_decisions"] == h["arrivals"]
    if name == "ce_asgd":
        assert h["server_vector_ops"] == steps - r.staleness_hist[2][0]   # stale decisions
        assert h["server_scalar_ops"] == 2 * steps
    else:
        tau_sum = int(np.dot(np.arange(r.staleness_hist.shape[1]), r.staleness_hist[2]))
        assert h["server_vector_ops"] == 0
        assert h["server_scalar_ops"] == tau_sum + 2 * steps + h["applied"]


def test_rejected_worker_gets_the_model_pays_the_link_and_computes_again():
    # two identical workers (compute 1 s), 1000 bit/s links with 10 ms latency
    wl = least_squares(d=8)
    d_bits = 32 * 8
    cfg = sim.SimConfig(num_workers=2, arrivals=1, batch_size=4, ring_size=8, steps=3, eval_every=3,
                        delay=dl.DelayConfig(kind="event", compute="constant", mean=1.0),
                        network=dl.Network(bandwidth=1000.0, latency=0.01))
    s = sim.Simulator(get_algorithm("ce_asgd"), {}, wl, cfg)
    data = toy_data(wl, 2)
    hp = {"learning_rate": jnp.float32(0.05), "threshold": jnp.float32(INF)}
    st = s.init(jax.random.PRNGKey(0), hp)
    step = jax.jit(lambda st: s.step(st, data, hp))
    np.testing.assert_allclose(st.finish, [1.01, 1.01], rtol=1e-6)
    st1 = step(st)                        # a fresh arrival: accepted
    first = int(np.argmin(st.finish))
    other = 1 - first
    up_acc, down = 32 + d_bits, d_bits
    link = lambda up: 0.01 + up / 1000 + 0.01 + down / 1000     # upload, then the model down
    np.testing.assert_allclose(st1.finish[first], 1.01 + link(up_acc) + 1, rtol=1e-6)
    assert int(st1.version) == 1
    st2 = step(st1)                       # the other one is one version stale: rejected
    rows = ja.last_decisions(st2.opt_state)
    assert bool(rows.rejected[0]) and float(rows.bits_up[0]) == 32
    assert float(rows.bits_down[0]) == down
    assert int(st2.version) == 1 and int(st2.counts.wasted) == 1 and int(st2.counts.grads) == 2
    # it paid the 32-bit probe up and the model down, then computes again from version 1
    np.testing.assert_allclose(st2.finish[other], 1.01 + link(32) + 1, rtol=1e-6)
    assert int(st2.worker_version[other]) == 1
    st3 = step(st2)                       # its fresh gradient is accepted
    assert bool(ja.last_decisions(st3.opt_state).applied[0]) and int(st3.version) == 2
    c = ja.communication(st3.opt_state)
    assert float(c["bits_up"]) == 3 * 32 + 2 * d_bits and float(c["bits_down"]) == 3 * down


# ----------------------------------------------------------------------------- configs


def test_algorithm_configs_and_presets_compose_and_build():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from jaxasync.cli import CONF_DIR
    from jaxasync.config import register_configs, to_config
    from jaxasync.workloads import get_workload

    register_configs()
    presets = sorted(p.stem for p in (CONF_DIR / "experiment").glob("ce_*.yaml"))
    assert len(presets) >= 3
    smooth = {"logistic": get_workload("logistic").smoothness}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for preset in presets:
            text = (CONF_DIR / "experiment" / f"{preset}.yaml").read_text()
            assert text.startswith("# @package _global_") and "jaxasync" in text.splitlines()[1]
            cfg = compose(config_name="config", overrides=[f"experiment={preset}"],
                          return_hydra_config=True)
            sweep = OmegaConf.to_container(cfg.hydra.sweeper.params)
            algos = [a.strip() for a in str(sweep.pop("algorithm")).split(",")]
            assert "ce_asgd" in algos or "ce_asgd_lite" in algos
            for algo in algos:
                job = compose(config_name="config",
                              overrides=[f"experiment={preset}", f"algorithm={algo}"])
                plain = OmegaConf.to_container(job, resolve=True)
                c = to_config(plain)
                spec = get_algorithm(c.algorithm.name)
                params = {k: (v[0] if isinstance(v, list) else v)
                          for k, v in c.algorithm.params.items()}
                if "smoothness" in spec.parameters():
                    params["smoothness"] = smooth.get(c.workload.name)
                if "num_workers" in spec.parameters():
                    params["num_workers"] = c.run.num_workers
                spec.build(**params)
