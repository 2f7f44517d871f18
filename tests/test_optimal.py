"""Rennala, Ringmaster, Naive Optimal ASGD, MindFlayer, Malenia on 3-4 workers with fixed
compute times and deterministic gradients: the whole event order is known, so the decisions
(applied, discarded, stopped) are checked by hand and the iterates against a NumPy event loop
written here.

The toy objective is f(w) = 1/2 |w - c|^2 with c a worker's data value (every row of its shard
holds c), so a gradient at w is w - c exactly. The NumPy loop works in float32 like the
simulator; the two are different programs, so iterates are compared within a float32 rounding
bound: each update rounds once per coordinate (|error| <= eps32 |w|), over at most N updates.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxasync as ja
from jaxasync import delays as dl
from jaxasync import sim
from jaxasync.algorithms import get_algorithm

EPS32 = float(np.finfo(np.float32).eps)
D = 3


class _Data(NamedTuple):
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclasses.dataclass(frozen=True)
class Toy:
    """f_i(w) = 1/2 |w - c_i|^2 on worker i (rows of worker i all hold c_i)."""

    name: str
    data: _Data
    init: object
    loss: object
    evaluate: object
    f_star: float | None = None
    smoothness: float | None = 1.0
    augment: object = None
    target: object = None
    num_classes: int | None = None


W0 = np.asarray([4.0, -2.0, 1.0], np.float32)


def toy(centres, rows_per_worker=4) -> tuple[Toy, sim.Data]:
    centres = np.asarray(centres, np.float32)
    m = centres.size
    y = np.repeat(centres, rows_per_worker).astype(np.float32)
    x = np.zeros((y.size, 1), np.float32)

    def loss(params, xb, yb):
        del xb
        return 0.5 * jnp.mean(jnp.sum((params["w"][None] - yb[:, None]) ** 2, axis=1))

    def evaluate(params, xb, yb):
        return {"loss": loss(params, xb, yb)}

    wl = Toy("toy", _Data(x, y, x, y), lambda key: {"w": jnp.asarray(W0)}, loss, evaluate)
    index = np.arange(y.size, dtype=np.int32).reshape(m, rows_per_worker)
    return wl, sim.put_data(wl, index, np.full((m,), rows_per_worker, np.int32))


def run(name, times, steps, hparams, static=None, centres=None, noise="none", **delay):
    m = len(times)
    wl, data = toy(np.zeros(m) if centres is None else centres)
    cfg = sim.SimConfig(num_workers=m, arrivals=1, batch_size=1, ring_size=64, steps=steps,
                        eval_every=steps,
                        delay=dl.DelayConfig(kind="event", compute="constant",
                                             speeds=tuple(float(t) for t in times),
                                             noise=noise, **delay))
    s = sim.Simulator(get_algorithm(name), static or {}, wl, cfg)
    hp = {k: jnp.asarray([v], jnp.float32) for k, v in hparams.items()}
    r = sim.run(s, data, jax.random.PRNGKey(0)[None], hp)
    return r, np.asarray(r.final_state.params["w"][0]), r.history[0][-1]


# ----------------------------------------------------------------------------- NumPy event loop


class Events:
    """Workers with fixed float32 times; the first to finish arrives (lowest index on ties,
    as the simulator's arrival index picks). ``xs[i]`` is the iterate worker i computes at."""

    def __init__(self, times, centres=None):
        self.t = np.asarray(times, np.float32)
        self.m = self.t.size
        self.c = np.zeros(self.m, np.float32) if centres is None else np.asarray(centres,
                                                                                 np.float32)
        self.finish = self.t.copy()
        self.wv = np.zeros(self.m, int)
        self.version, self.x = 0, W0.copy()
        self.xs = [W0.copy() for _ in range(self.m)]
        self.log, self.stopped = [], 0

    def arrive(self):
        i = int(np.argmin(self.finish))
        now = self.finish[i]
        return i, now, self.version - self.wv[i], self.xs[i] - self.c[i]

    def start(self, i, now):
        self.finish[i] = np.float32(now + self.t[i])
        self.wv[i], self.xs[i] = self.version, self.x.copy()

    def move(self, step):
        self.x = (self.x - step).astype(np.float32)
        self.version += 1


def np_ringmaster(times, steps, lr, r=np.inf, stop=False, centres=None):
    ev = Events(times, centres)
    for _ in range(steps):
        i, now, tau, g = ev.arrive()
        ok = tau < r
        if ok:
            ev.move(np.float32(lr) * g)
        ev.start(i, now)
        ev.log.append((i, "applied" if ok else "discarded"))
        if stop and ok:
            for j in range(ev.m):
                if j != i and ev.version - ev.wv[j] >= r:
                    ev.start(j, now)
                    ev.stopped += 1
                    ev.log.append((j, "stopped"))
    return ev


def np_rennala(times, steps, lr, batch):
    ev, buf, count = Events(times), np.zeros(D, np.float32), 0
    for _ in range(steps):
        i, now, tau, g = ev.arrive()
        if tau == 0:
            buf, count = buf + g, count + 1
            if count == batch:
                ev.move(np.float32(lr) * (buf / np.float32(count)))
                buf, count = np.zeros(D, np.float32), 0
        ev.start(i, now)
        ev.log.append((i, "accepted" if tau == 0 else "discarded"))
    return ev


def test_ringmaster_by_hand_three_workers():
    """tau = (1, 2, 3), R = 2. t=1: w0 (delay 0) applied. t=2: w0 (0) applied, then w1 (its
    x_0 is 2 versions old) discarded. t=3: w0 applied, w2 (3 old) discarded. t=4: w0 applied,
    w1 (restarted at version 2, now 4) discarded: with R = 2 only the fastest worker counts."""
    ev = np_ringmaster((1.0, 2.0, 3.0), 9, 0.1, r=2)
    assert ev.log[:7] == [(0, "applied"), (0, "applied"), (1, "discarded"), (0, "applied"),
                          (2, "discarded"), (0, "applied"), (1, "discarded")]
    r, w, last = run("ringmaster", (1.0, 2.0, 3.0), 9, {"learning_rate": 0.1,
                                                       "delay_threshold": 2.0})
    applied = sum(1 for _, d in ev.log if d == "applied")
    assert last["applied"] == applied and last["rejections"] == 9 - applied
    assert last["version"] == ev.version and last["time"] == 6.0     # the 9th arrival
    np.testing.assert_allclose(w, ev.x, rtol=0, atol=9 * EPS32 * 4,
                               err_msg="9 float32 updates of |w| <= 4")


def test_ringmaster_stop_by_hand_stops_and_restarts():
    """tau = (1, 2, 3), R = 2, Algorithm 5: at t=1 w0's update makes w1's and w2's x_0 one
    version old; at t=2 w0's second update makes them 2 old, so both are stopped and restart
    at version 2 (finishing at 4 and 5): no gradient is ever discarded."""
    times = (1.0, 2.0, 3.0)
    ev = np_ringmaster(times, 8, 0.1, r=2, stop=True)
    assert ev.log[:4] == [(0, "applied"), (0, "applied"), (1, "stopped"), (2, "stopped")]
    assert all(d != "discarded" for _, d in ev.log)
    r, w, last = run("ringmaster_stop", times, 8, {"learning_rate": 0.1, "delay_threshold": 2.0})
    assert last["rejections"] == 0 and last["stopped"] == ev.stopped
    assert last["wasted"] == ev.stopped and last["grads"] == 8 + ev.stopped
    np.testing.assert_allclose(w, ev.x, rtol=0, atol=8 * EPS32 * 4,
                               err_msg="8 float32 updates of |w| <= 4")


def test_ringmaster_iterates_match_numpy_on_four_workers():
    times = (1.0, 1.5, 2.5, 4.0)
    ev = np_ringmaster(times, 40, 0.05, r=3, centres=(1.0, -1.0, 0.5, 2.0))
    _, w, last = run("ringmaster", times, 40, {"learning_rate": 0.05, "delay_threshold": 3.0},
                     centres=(1.0, -1.0, 0.5, 2.0))
    assert last["version"] == ev.version
    np.testing.assert_allclose(w, ev.x, rtol=0, atol=40 * EPS32 * 4,
                               err_msg="40 float32 updates of |w| <= 4")


def test_ringmaster_with_infinite_r_is_asgd():
    """Two programs (an acceptance test that always passes vs none): equal within float32
    rounding (one rounding per update and coordinate)."""
    times = tuple(float(np.sqrt(i + 1)) for i in range(4))
    _, w_r, a = run("ringmaster", times, 60, {"learning_rate": 0.05,
                                              "delay_threshold": float("inf")})
    _, w_a, b = run("asgd", times, 60, {"learning_rate": 0.05})
    np.testing.assert_allclose(w_r, w_a, rtol=0, atol=60 * EPS32 * 4,
                               err_msg="60 float32 updates of |w| <= 4")
    assert a["applied"] == b["applied"] == 60 and a["time"] == b["time"]
    assert a["staleness_mean"] == b["staleness_mean"]


def test_rennala_by_hand_and_against_numpy():
    """tau = (1, 2, 3), S = 2. t=1: w0 accepted (1 of 2). t=2: w0 accepted -> step 1; w1's
    x_0 gradient is stale: discarded. t=3: w0 accepted, w2 discarded. t=4: w0 -> step 2..."""
    times = (1.0, 2.0, 3.0)
    ev = np_rennala(times, 12, 0.2, batch=2)
    assert ev.log[:5] == [(0, "accepted"), (0, "accepted"), (1, "discarded"), (0, "accepted"),
                          (2, "discarded")]
    _, w, last = run("rennala", times, 12, {"learning_rate": 0.2, "batch": 2})
    assert last["version"] == ev.version
    accepted = sum(1 for _, d in ev.log if d == "accepted")
    assert last["rejections"] == 12 - accepted and last["applied"] == accepted
    np.testing.assert_allclose(w, ev.x, rtol=0, atol=12 * EPS32 * 4,
                               err_msg="12 float32 updates of |w| <= 4")


def test_rennala_s1_equal_times_is_sgd_with_one_gradient():
    """Equal times: all workers finish together; the first fresh gradient moves the iterate,
    the other M - 1 are then stale and discarded, and all restart: one SGD step of one
    gradient per unit of time."""
    m, steps, lr = 4, 4 * 6, 0.3
    _, w, last = run("rennala", (1.0,) * m, steps, {"learning_rate": lr, "batch": 1})
    x = W0.copy()
    for _ in range(steps // m):
        x = (x - np.float32(lr) * x).astype(np.float32)
    np.testing.assert_allclose(w, x, rtol=0, atol=6 * EPS32 * 4,
                               err_msg="6 float32 SGD steps of |w| <= 4")
    assert last["version"] == steps // m and last["time"] == steps // m
    assert last["rejections"] == steps - steps // m


def test_mindflayer_infinite_clip_one_trial_is_minibatch_sgd():
    """clip = inf, B = 1: every worker computes one gradient at x_k, the round ends with the
    slowest, and the estimate is their mean (sum p_i B = M): synchronous minibatch SGD, the
    same rounds as sync_sgd (another program: float32 tolerance per update)."""
    times, steps, lr = (1.0, 1.5, 3.0), 15, 0.2
    centres = (1.0, -2.0, 0.5)
    _, w, last = run("mindflayer", times, steps, {"learning_rate": lr, "clip": float("inf"),
                                                  "trials": 1}, centres=centres)
    x = W0.copy()
    for _ in range(steps // 3):
        x = (x - np.float32(lr) * (x - np.float32(np.mean(centres)))).astype(np.float32)
    np.testing.assert_allclose(w, x, rtol=0, atol=5 * 4 * EPS32 * 4,
                               err_msg="5 rounds of a mean of 3 float32 gradients, |w| <= 4")
    assert last["version"] == 5 and last["time"] == pytest.approx(5 * 3.0)
    wl, data = toy(centres)
    cfg = sim.SimConfig(num_workers=3, batch_size=1, ring_size=4, steps=5, eval_every=5,
                        delay=dl.DelayConfig(kind="event", compute="constant", speeds=times))
    rs = sim.run(sim.Simulator(get_algorithm("sync_sgd"), {}, wl, cfg), data,
                 jax.random.PRNGKey(0)[None], {"learning_rate": jnp.asarray([lr])})
    np.testing.assert_allclose(w, np.asarray(rs.final_state.params["w"][0]), rtol=0,
                               atol=5 * 4 * EPS32 * 4, err_msg="two programs, 5 rounds")
    assert rs.history[0][-1]["time"] == pytest.approx(last["time"])


def test_mindflayer_clips_outages_and_stays_unbiased():
    """Infinite-Bernoulli outages (p = 0.5): without clipping a lost trial never returns; with
    clip = 0 it is stopped at tau_i, counted as a timeout, and the estimate divides by
    sum B p_i = M B p, so its mean is the gradient."""
    times = (1.0, 1.0, 1.0, 1.0)
    r, w, last = run("mindflayer", times, 400, {"learning_rate": 0.1, "clip": 0.0, "trials": 2},
                     noise="infinite_bernoulli", noise_p=0.5)
    assert last["version"] == 400 // 8                     # 4 workers x 2 trials per round
    assert last["time"] == pytest.approx(2.0 * 50)         # each round: 2 trials of 1 s
    assert 0.35 < last["timeouts"] / 400 < 0.65
    assert np.all(np.abs(w) < 0.05 * np.abs(W0) + 0.05)    # contracted towards 0
    # ASGD under the same outages: every worker is eventually lost and time stops at inf
    _, _, a = run("asgd", times, 60, {"learning_rate": 0.1}, noise="infinite_bernoulli",
                  noise_p=0.5)
    assert a["time"] == float("inf")


def test_naive_optimal_holds_the_slow_workers():
    """tau = (1, 1, 4, 16), sigma^2 / eps small: m* = 2 (harmonic terms 1, 1, 1.33, ...:
    1 + s/(m eps) for m = 2 is 1.5 against 1.6 for m = 3 with s/eps = 1). Workers 2 and 3
    are stopped at the first step and never arrive."""
    times = (1.0, 1.0, 4.0, 16.0)
    mask = np.asarray(ja.optimal.fastest_workers(jnp.asarray(times), 1.0, 1.0))
    np.testing.assert_array_equal(mask, [True, True, False, False])
    _, w, last = run("naive_optimal_asgd", times, 20, {"learning_rate": 0.1, "sigma_sq": 1.0,
                                                       "epsilon": 1.0})
    assert last["stopped"] == 2 and last["applied"] == 20 and last["rejections"] == 0
    assert last["time"] == pytest.approx(10.0)             # two workers, one arrival each per s
    t_star, m_star = ja.optimal_time(times, 1.0, 1.0, 1.0, 1.0)
    assert m_star == 2 and t_star == pytest.approx(1.0 * 1.5)


def test_malenia_weighs_every_worker_equally():
    """Heterogeneous data: worker i's gradient is w - c_i. Malenia's estimate is
    w - mean(c) whatever the speeds, so it converges to mean(c); ASGD drifts towards the fast
    worker's c."""
    times, centres = (1.0, 2.0, 5.0), (3.0, 0.0, -3.0)
    _, w, last = run("malenia", times, 200, {"learning_rate": 0.5, "batch": 3},
                     centres=centres)
    np.testing.assert_allclose(w, np.full(D, np.mean(centres)), atol=1e-3)
    _, w_asgd, _ = run("asgd", times, 200, {"learning_rate": 0.5}, centres=centres)
    assert np.all(w_asgd > 0.5)


def test_restarted_work_counts_as_wasted():
    """Rennala with restart_stale: every move restarts the workers still at the old iterate;
    with tau = (1, 3) and S = 1, w1 never finishes (stopped at t = 1, 2, ...)."""
    _, _, last = run("rennala", (1.0, 3.0), 10, {"learning_rate": 0.1, "batch": 1},
                     static={"restart_stale": True})
    assert last["stopped"] == 10 and last["wasted"] == 10 and last["grads"] == 20
    assert last["version"] == 10 and last["rejections"] == 0
