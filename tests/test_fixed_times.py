"""The fixed computation model: presets, noise laws, timeouts, the arrival index, the ring it
needs, delay files (Wu et al. tables, FedScale capacities), the worst-case quadratic and
``run.select``."""

from __future__ import annotations

import dataclasses
import math
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import with_keys

from jaxasync import delays as dl
from jaxasync import sim, traces
from jaxasync.config import ConfigError, to_config
from jaxasync.experiment import prepare, resolve, run_experiment

# ----------------------------------------------------------------------------- presets, noise


def test_presets():
    np.testing.assert_array_equal(dl.preset_times("equal", 3), [1, 1, 1])
    np.testing.assert_allclose(dl.preset_times("sqrt", 4), [1, math.sqrt(2), math.sqrt(3), 2])
    g = dl.preset_times("gamma", 2000, seed=3)
    assert np.all(g >= 1.0) and np.all(np.diff(g) >= 0)
    # Gamma(2, 1)/2 conditioned on >= 1: mean E[X | X >= 1] of X ~ Gamma(2, scale 1/2)
    x = np.random.default_rng(0).gamma(2.0, 0.5, 1_000_000)
    assert g.mean() == pytest.approx(x[x >= 1].mean(), rel=0.03)
    np.testing.assert_array_equal(g, dl.preset_times("gamma", 2000, seed=3))   # one draw
    sp = np.asarray(dl.worker_speeds(dl.DelayConfig(times="sqrt"), jax.random.PRNGKey(0), 4))
    np.testing.assert_allclose(sp, np.sqrt([1, 2, 3, 4]), rtol=1e-7)


@pytest.mark.parametrize("noise,kw", [
    ("exponential", {"noise_scale": 0.5}),
    ("infinite_bernoulli", {"noise_p": 0.7}),
    ("alpha_bernoulli", {"noise_p": 0.7, "noise_alpha": 3.0}),
    ("cauchy", {"noise_scale": 0.5}),
    ("levy", {"noise_scale": 0.5}),
])
def test_noise_laws_and_their_success_probability(noise, kw):
    """tau_i + eta_i draws: eta >= 0, and the fraction within tau_i + s is clip_success (5
    standard errors of a binomial proportion)."""
    cfg = dl.DelayConfig(kind="event", compute="constant", noise=noise, **kw)
    speed = jnp.full((200_000,), 2.0)
    t = np.asarray(dl.compute_times(cfg, jax.random.PRNGKey(1), speed))
    assert np.all(t >= 2.0)
    for slack in (0.0, 0.3, 2.5):
        p = float(dl.clip_success(cfg, jnp.asarray([2.0]), jnp.float32(slack))[0])
        frac = float(np.mean(t <= 2.0 + slack))
        assert abs(frac - p) < 5 * math.sqrt(max(p * (1 - p), 1e-4) / t.size) + 1e-6, (slack, p)
    if noise == "alpha_bernoulli":
        assert set(np.unique(t)) == {2.0, 6.0}
    if noise == "infinite_bernoulli":
        assert np.mean(np.isinf(t)) == pytest.approx(0.3, abs=0.01)


def test_timeouts_stop_a_computation_at_tau_plus_slack():
    cfg = dl.DelayConfig(kind="event", compute="constant", noise="exponential", noise_scale=1.0)
    d, stopped = dl.computation(cfg, jax.random.PRNGKey(0), jnp.full((5000,), 1.0),
                                jnp.full((5000,), 0.5))
    d, stopped = np.asarray(d), np.asarray(stopped)
    assert np.all(d <= 1.5) and np.all(d[stopped] == 1.5) and np.all(d[~stopped] < 1.5)
    assert np.mean(stopped) == pytest.approx(math.exp(-0.5), abs=0.03)


# ----------------------------------------------------------------------------- the arrival index


@pytest.mark.parametrize("m", [1, 2, 7, 10, 99, 100, 1000])
def test_next_arrival_is_top_k_first_with_ties(m):
    """The block index picks what ``lax.top_k(-finish, 1)`` picks, ties (the lowest index)
    and infinite finish times included, also after single-entry updates."""
    rng = np.random.default_rng(m)
    finish = jnp.asarray(rng.integers(0, 5, m).astype(np.float32))
    finish = finish.at[rng.integers(0, m, max(1, m // 4))].set(jnp.inf)
    bmin = sim.block_minima(finish)
    for _ in range(30):
        want = int(jax.lax.top_k(-finish, 1)[1][0])
        got = int(sim.next_arrival(finish, bmin))
        assert got == want
        finish = finish.at[got].set(float(rng.integers(0, 8)))
        bmin = sim.refresh_block(finish, bmin, jnp.int32(got))
        np.testing.assert_array_equal(bmin, sim.block_minima(finish))


def _cfg(**over):
    base = {"algorithm": {"name": "asgd", "params": {"learning_rate": 0.01}},
            "workload": {"name": "worst_case_quadratic", "batch_size": 1, "partition": "shared",
                         "options": {"dim": 50, "sigma": 0.01, "epsilon": 1.0}},
            "delay": {"kind": "event", "compute": "constant", "times": "sqrt"},
            "network": {"bandwidth": math.inf, "latency": 0.0},
            "run": {"num_workers": 8, "steps": 400, "evals": 4, "seeds": [0]}, "plot": False}
    return with_keys(base, over)


def test_ring_is_sized_by_what_the_run_can_use():
    """ASGD under fixed sqrt times: the staleness bound of the times (no drop in a run);
    Rennala: 2 versions (only fresh rows count); Ringmaster: R; exponential times: 8 M."""
    res = resolve(to_config(_cfg()))
    bound = dl.fixed_staleness_bound(res.delay, 8)
    assert res.ring == bound + 1 < 8 * 8 * 2
    assert resolve(to_config(_cfg(**{"algorithm.name": "rennala"}))).ring == 2
    assert resolve(to_config(_cfg(**{"algorithm.name": "ringmaster",
                                     "algorithm.params": {"learning_rate": 0.1,
                                                          "delay_threshold": [3.0, 5.0]}}))
                   ).ring == 5
    assert resolve(to_config(_cfg(**{"delay.compute": "exponential", "delay.times": None}))
                   ).ring == 64
    rec = run_experiment(_cfg(), progress=False)
    last = rec["members"][0]["final"]
    assert last["dropped"] == 0 and last["staleness_max"] <= bound


def test_rennala_s_grid_runs_as_one_program_and_select_picks_the_fastest(tmp_path):
    """A grid of learning rates x Rennala's S: one program; ``run.select=time`` reports the
    value reaching the target first; the table shows that row only, the files keep all."""
    import csv
    import json

    from jaxasync import tables

    rec = run_experiment(_cfg(**{"algorithm.name": "rennala",
                                 "algorithm.params": {"learning_rate": [0.3, 0.1],
                                                      "batch": [1, 4]},
                                 "run.select": "time", "run.steps": 600}),
                         tmp_path / "job", progress=False)
    assert len(rec["members"]) == 4
    sel = rec["selected"]
    times = {}
    for m in rec["members"]:
        hit = m["target_reached"]
        times[(m["params"]["learning_rate"], m["params"]["batch"])] = (
            hit["time"] if hit else math.inf)
    best = min(times, key=times.get)
    assert math.isfinite(times[best]) and len(set(times.values())) > 1
    assert (sel["params"]["learning_rate"], sel["params"]["batch"]) == best
    assert sel["value"] == times[best] and sel["reached"]
    [row] = tables.build([rec]).rows
    assert row["select"] == "best time of 4"
    assert (float(row["learning_rate"]), int(row["batch"])) == best
    saved = json.loads((tmp_path / "job" / "run.json").read_text())
    assert len(saved["members"]) == 4 and saved["selected"]["params"] == sel["params"]
    with open(tmp_path / "job" / "metrics.csv") as f:
        assert {r["member"] for r in csv.DictReader(f)} == {"0", "1", "2", "3"}
    assert len(tables.groups([rec], selected=False)) == 4


def test_select_without_a_hit_takes_the_lowest_final_value():
    """No grid value reaches the target: the one with the lowest final metric (mean over
    seeds) is reported, and ``reached`` says so; a diverged value is never chosen."""
    from jaxasync import report

    def member(lr, seed, finals, status="ok"):
        hist = [{"step": i, "time": float(i), "train_gap": v} for i, v in enumerate(finals)]
        return {"params": {"learning_rate": lr}, "seed": seed, "status": status,
                "history": hist}

    target = {"metric": "train_gap", "value": 0.01, "mode": "min"}
    members = [member(0.1, 0, [5.0, 1.0]), member(0.1, 1, [5.0, 3.0]),     # mean 2
               member(0.2, 0, [5.0, 1.5]), member(0.2, 1, [5.0, 1.5]),     # mean 1.5
               member(0.4, 0, [5.0, 0.1], "diverged"), member(0.4, 1, [5.0, 0.1])]
    sel = report.select_members(members, target, "time")
    assert sel == {"by": "time", "params": {"learning_rate": 0.2}, "members": [2, 3],
                   "value": None, "reached": False}
    members[1]["history"].append({"step": 2, "time": 2.0, "train_gap": 0.005})
    members[0]["history"].append({"step": 2, "time": 2.0, "train_gap": 0.001})
    sel = report.select_members(members, target, "time")
    assert sel["params"] == {"learning_rate": 0.1} and sel["value"] == 2.0 and sel["reached"]
    assert report.select_members(members, target, "none") is None


# ----------------------------------------------------------------------------- delay files


def test_wu_et_al_table_is_replayed_per_worker(tmp_path):
    """8 columns (one worker each) in the files' float format: worker w's k-th gradient gets
    column w's k-th delay."""
    table = np.arange(24, dtype=float).reshape(3, 8) % 5
    f = tmp_path / "PIAG_sun_MNIST.csv"
    f.write_text("\n".join(",".join(f"{v:.18e}" for v in row) for row in table) + "\n")
    flat, cols = traces.read_delay_table(f)
    assert cols == 8 and flat == tuple(int(v) for v in table.ravel())
    cfg = dl.DelayConfig(kind="trace", trace=flat, trace_columns=8)
    ids = jnp.asarray([2, 9, 5], jnp.int32)
    draws = jnp.asarray([0, 1, 4], jnp.int32)
    got = dl.sample_delays(cfg, jax.random.PRNGKey(0), 3, jnp.int32(0), ids=ids, draws=draws)
    np.testing.assert_array_equal(got, [table[0, 2], table[1, 1], table[1, 5]])
    one = tmp_path / "one.csv"
    one.write_text("3\n1\n4\n")
    assert traces.read_delay_table(one) == ((3, 1, 4), 1)
    res = resolve(to_config(_cfg(**{"delay": {"kind": "trace", "trace_file": str(f)}})))
    assert res.delay.trace_columns == 8 and res.ring == 5


def test_fedscale_capacities_set_times_and_links(tmp_path):
    caps = {7: {"computation": 20.0, "communication": 500.0},
            3: {"computation": 10.0, "communication": 1000.0}}
    f = tmp_path / "client_device_capacity"
    f.write_bytes(pickle.dumps(caps))
    compute, links = traces.read_fedscale(f, 3, batch_size=10)
    assert compute == pytest.approx((0.3, 0.6, 0.3)) and links == (1e6, 5e5, 1e6)
    res = resolve(to_config(_cfg(**{"delay": {"kind": "trace", "trace_file": str(f)},
                                    "run.num_workers": 3, "workload.batch_size": 10})))
    assert res.delay.kind == "event" and res.delay.bandwidths == (1e6, 5e5, 1e6)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    f.write_bytes(pickle.dumps({1: Evil()}))
    with pytest.raises(ValueError, match="not allowed"):
        traces.read_fedscale(f, 2, 1)


def test_bad_delay_values_are_one_line_errors():
    for key, value, word in (("delay.noise", "gauss", "delay.noise"),
                             ("delay.noise_p", 0.0, "delay.noise_p"),
                             ("delay.times", "cubic", "delay.times")):
        with pytest.raises(ConfigError, match=word) as e:
            resolve(to_config(_cfg(**{key: value})))
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="run.select"):
        resolve(to_config(_cfg(**{"run.select": "fastest"})))


# ----------------------------------------------------------------------------- the quadratic


def test_worst_case_quadratic_gap_gradient_and_noise():
    """Against dense float64 linear algebra, at mu = 1e-2 (condition number 1e2: the float32
    gap is then good to ~1e2 eps32 relative; at the default mu = 1e-5 and d = 30, x* has
    entries of ~600 along the smallest eigenvector and float32 keeps only ~1e-3 of the gap)."""
    from jaxasync import quadratic
    from jaxasync.workloads import get_workload

    d, mu = 30, 1e-2
    diag, off, b, x_star, f_star, lmax = quadratic.worst_case_terms(d, strong_convexity=mu)
    a = np.diag(diag) + np.diag(off, 1) + np.diag(off, -1)
    np.testing.assert_allclose(x_star, np.linalg.solve(a, b), rtol=1e-9)
    assert f_star == pytest.approx(-0.5 * b @ np.linalg.solve(a, b), rel=1e-12)
    eig = np.linalg.eigvalsh(a)
    # mu up to the float32 rounding of the diagonal (~3e-8 on 0.5)
    assert eig.min() == pytest.approx(mu, abs=1e-7) and lmax == pytest.approx(eig.max())
    opts = {"dim": d, "strong_convexity": mu}
    wl = get_workload("worst_case_quadratic", sigma=0.0, **opts)
    p = wl.init(None)
    x0 = np.zeros(d)
    x0[0] = math.sqrt(d)
    f = lambda x: 0.5 * x @ a @ x - b @ x  # noqa: E731
    assert float(wl.evaluate(p, None, None)["loss"]) == pytest.approx(
        f(x0) - f_star, rel=1e3 * 6e-8), "float32 gap of a condition-1e2 problem"
    xi = jnp.asarray([[0.7, 0.9]], jnp.float32)
    g = jax.grad(wl.loss)(p, xi, None)["x"]
    np.testing.assert_allclose(g, a @ x0 - b, rtol=1e-6, atol=1e-6)
    noisy = get_workload("worst_case_quadratic", sigma=2.0, **opts)
    np.testing.assert_allclose(jax.grad(noisy.loss)(p, xi, None)["x"], a @ x0 - b + 1.4,
                               rtol=1e-6, atol=1e-5)
    zl = get_workload("worst_case_quadratic", noise="zero-last", p=0.5, **opts)
    g0 = jax.grad(zl.loss)(p, jnp.asarray([[0.0, 0.9]]), None)["x"]     # coin 0: past prog zero
    g1 = jax.grad(zl.loss)(p, jnp.asarray([[0.0, 0.1]]), None)["x"]     # coin 1: scaled by 2
    full = a @ x0 - b
    np.testing.assert_allclose(g0, np.r_[full[0], np.zeros(d - 1)], atol=1e-6)
    np.testing.assert_allclose(g1, np.r_[full[0], 2 * full[1:]], rtol=1e-6, atol=1e-6)
    # the papers' size: d = 1000, mu = 1e-5, f(x0) - f* = 258.03 (f* = -0.1243)
    big = get_workload("worst_case_quadratic")
    assert float(big.evaluate(big.init(None), None, None)["loss"]) == pytest.approx(258.034,
                                                                                    abs=1e-3)


def test_prepare_builds_the_fixed_model_end_to_end():
    prep = prepare(_cfg(**{"algorithm.name": "naive_optimal_asgd",
                           "algorithm.params": {"learning_rate": 0.1, "sigma_sq": 0.0,
                                                "epsilon": 1.0}}))
    # sigma^2 = 0: one worker, the fastest, is optimal; its times were passed to the factory
    assert prep.static["worker_times"] == pytest.approx(tuple(np.sqrt(np.arange(1, 9))))


def test_optimal_time_of_the_quadratic_and_the_leaderboard_ratio():
    """T* of the worst-case quadratic: L, Delta = f(x0) - f* and sigma^2 = d sigma_add^2 / B
    computed here from the dense matrix (float64); the leaderboard's time_over_optimal divides a
    member's time to target by it, and is undefined off the quadratic or with random times."""
    from jaxasync import quadratic
    from jaxasync.leaderboard import verdicts
    from jaxasync.optimal import optimal_time

    d, sigma, eps = 6, 0.5, 0.2
    diag, off, b, _, _, _ = quadratic.worst_case_terms(d)
    a = np.diag(diag) + np.diag(off, 1) + np.diag(off, -1)
    x0 = np.zeros(d)
    x0[0] = math.sqrt(d)
    x_star = np.linalg.solve(a, b)
    f = lambda x: 0.5 * x @ a @ x - b @ x  # noqa: E731
    times = dl.preset_times("sqrt", 5)
    want = optimal_time(times, float(np.linalg.eigvalsh(a).max()), f(x0) - f(x_star),
                        d * sigma**2 / 2, eps)
    got = quadratic.optimal_time_of(times, eps, dim=d, sigma=sigma, batch_size=2)
    # L in optimal_time_of is the analytic eigenvalue; the matrix here has the float32-rounded
    # coefficients (relative change <= 2^-24 each): T* agrees to ~1e-7
    assert got[1] == want[1] and got[0] == pytest.approx(want[0], rel=1e-6)
    assert quadratic.optimal_time_of(times, eps, dim=d, noise="zero-last") is None
    target = {"metric": "train_gap", "value": eps, "mode": "min"}
    record = {"workload": "worst_case_quadratic", "target": target,
              "config": {"workload": {"options": {"dim": d, "sigma": sigma, "epsilon": eps}}},
              "resolved": {"num_workers": 5, "batch_size": 2, "delay": dataclasses.asdict(
                  dl.DelayConfig(kind="event", compute="constant", times="sqrt"))},
              "members": [{"history": [{"time": 0.0, "train_gap": 9.0},
                                       {"time": 3.0 * got[0], "train_gap": eps / 2}]}]}
    assert verdicts.optimal_time(record) == pytest.approx(got[0], rel=1e-12)
    s = verdicts.summarize(record, "time_over_optimal")
    assert s.values[0] == pytest.approx(3.0)
    record["resolved"]["delay"]["noise"] = "exponential"
    assert verdicts.summarize(record, "time_over_optimal").values == (None,)
