"""Shared toy problems for the tests (no dataset downloads, compile in seconds)."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxasync import sim

#: float32 machine epsilon (2^-23): one rounding moves a value by at most eps32 / 2 of it
EPS32 = float(np.finfo(np.float32).eps)


def assert_f32_close(actual, desired, *, roundings: float, why: str, scale=None) -> None:
    """Two differently compiled programs computed the same float32 quantity: equal up to
    ``roundings`` float32 roundings of size ``scale`` (default: the largest ``|desired|``).

    XLA promises no order of operations across programs, CPUs or versions (fusion, vector
    width and reduction trees differ), so one formula in two programs may round differently:
    bitwise equality is asserted only where the same compiled program runs twice. The bound
    is ``roundings * eps32 * scale``; ``roundings`` counts the roundings in which the two
    computations may differ (with the propagation over steps), and ``why`` says how it was
    counted: it is part of the failure message. Works leaf by leaf on pytrees.
    """
    pairs = zip(jax.tree.leaves(actual), jax.tree.leaves(desired), strict=True)
    for a, d in pairs:
        a, d = np.asarray(a, np.float64), np.asarray(d, np.float64)
        assert a.shape == d.shape, f"shapes {a.shape} != {d.shape}; {why}"
        s = float(np.max(np.abs(d), initial=0.0)) if scale is None else float(scale)
        tol = roundings * EPS32 * max(s, float(np.finfo(np.float32).tiny))
        err = float(np.max(np.abs(a - d), initial=0.0))
        assert err <= tol, (f"max |difference| {err:.3g} > {tol:.3g} = {roundings:g} float32 "
                            f"roundings x eps32 x scale {s:.3g}; tolerance: {why}")


def sgd_roundings(steps: int, d: int, batch: int, rows: int = 1) -> int:
    """Roundings separating two programs' parameters after ``steps`` SGD steps on a least
    squares (per step: a ``d``-term dot product, a mean over ``batch`` examples and over
    ``rows`` arriving gradients, 3 scalar operations), relative to the parameters' size. The
    runs converge (the iteration contracts at the tests' step sizes), so the per-step
    differences add up and do not grow."""
    return steps * (d + batch + rows + 3)


def assert_loss_close(actual, desired, *, param_roundings: float, smoothness: float,
                      f_max: float, d: int, n: int, w_scale: float, why: str) -> None:
    """Losses of two programs whose parameters agree to ``param_roundings`` roundings of
    ``w_scale`` (each entry). For an L-smooth loss with f >= 0, ``|grad f|^2 <= 2 L f <= 2 L
    f_max`` (f_max: the largest loss of the run), so the parameters' difference changes the
    loss by at most ``sqrt(2 L f_max) * sqrt(d) * param_roundings * eps32 * w_scale``;
    evaluating it over ``n`` examples adds ``n + d + 2`` roundings of ``f_max``."""
    grad = math.sqrt(2.0 * smoothness * f_max)
    scale = grad * math.sqrt(d) * param_roundings * w_scale + (n + d + 2) * f_max
    assert_f32_close(actual, desired, roundings=1.0, scale=scale,
                     why=f"loss: |grad f| <= sqrt(2 L f_max) = {grad:.3g} times a parameter "
                         f"difference of {param_roundings:g} roundings, plus {n + d + 2} "
                         f"roundings of the evaluation; {why}")


class ToyData(NamedTuple):
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclasses.dataclass(frozen=True)
class ToyWorkload:
    """Least squares 0.5 * mean((x.w - y)^2), same interface as jaxasync.workloads.Workload."""

    name: str
    data: ToyData
    init: Callable
    loss: Callable
    evaluate: Callable
    f_star: float | None = None
    smoothness: float | None = None
    augment: Any = None
    target: Any = None
    num_classes: int | None = None


def least_squares(n: int = 256, d: int = 8, seed: int = 0, noise: float = 0.1) -> ToyWorkload:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, d)).astype(np.float32)
    w_star = rng.normal(size=(d,)).astype(np.float32)
    b = (a @ w_star + noise * rng.normal(size=(n,))).astype(np.float32)

    def init(key):
        return {"w": jnp.zeros((d,), jnp.float32)}

    def loss(params, x, y):
        return 0.5 * jnp.mean(jnp.square(x @ params["w"] - y))

    def evaluate(params, x, y):
        return {"loss": loss(params, x, y)}

    sol, *_ = np.linalg.lstsq(a.astype(np.float64), b.astype(np.float64), rcond=None)
    f_star = float(0.5 * np.mean((a @ sol - b) ** 2))
    lmax = float(np.linalg.eigvalsh(a.T.astype(np.float64) @ a / n).max())
    return ToyWorkload("toy_least_squares", ToyData(a, b, a, b), init, loss, evaluate,
                       f_star=f_star, smoothness=lmax)


def iid_shards(n: int, m: int):
    per = n // m
    index = np.arange(per * m, dtype=np.int32).reshape(m, per)
    return index, np.full((m,), per, np.int32)


def toy_data(workload, m: int) -> sim.Data:
    index, size = iid_shards(workload.data.x_train.shape[0], m)
    return sim.put_data(workload, index, size)


def run_toy(algorithm: str, cfg: sim.SimConfig, hparams: dict, seeds=(0,), workload=None, static=None):
    from jaxasync.algorithms import get_algorithm

    wl = workload or least_squares()
    s = sim.Simulator(get_algorithm(algorithm), static or {}, wl, cfg)
    data = toy_data(wl, cfg.num_workers)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds))
    hp = {k: jnp.full((len(seeds),), v, jnp.float32) for k, v in hparams.items()}
    return sim.run(s, data, keys, hp)


def full_batch_least_squares(n: int = 64, d: int = 6, seed: int = 1) -> ToyWorkload:
    """Least squares whose loss ignores the minibatch: every gradient is the full gradient.

    Makes the simulator deterministic given the delays, so it can be compared with a
    NumPy reference step by step.
    """
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, d)).astype(np.float32) / np.sqrt(d)
    b = rng.normal(size=(n,)).astype(np.float32)
    a_j, b_j = jnp.asarray(a), jnp.asarray(b)

    def init(key):
        return {"w": jnp.zeros((d,), jnp.float32)}

    def loss(params, x, y):
        del x, y
        return 0.5 * jnp.mean(jnp.square(a_j @ params["w"] - b_j))

    def evaluate(params, x, y):
        return {"loss": loss(params, x, y)}

    return ToyWorkload("toy_full_batch", ToyData(a, b, a, b), init, loss, evaluate)


def write_tiny_mnist(folder, train: int, test: int, seed: int = 0) -> None:
    """Random MNIST-shaped IDX files (``train``/``t10k`` images and labels) in ``folder``."""
    rng = np.random.default_rng(seed)

    def write(path, array, magic):
        header = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big")
                                                     for s in array.shape)
        path.write_bytes(header + array.astype(np.uint8).tobytes())

    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train), ("t10k", test)):
        write(folder / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 2051)
        write(folder / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n), 2049)


# ----------------------------------------------------------------------------- bad inputs

#: a tiny valid experiment (least squares, 4 workers)
BASE = {
    "algorithm": {"name": "asgd", "params": {"learning_rate": 0.05}},
    "workload": {"name": "least_squares", "batch_size": 8, "options": {"n": 200, "d": 5}},
    "delay": {"kind": "uniform", "low": 0, "high": 3},
    "run": {"num_workers": 4, "steps": 20, "eval_every": 10},
    "plot": False,
}
#: the same on the command line
BASE_CLI = ["hydra.mode=RUN", "algorithm=asgd", "workload=least_squares", "workload.batch_size=8",
            "+workload.options.n=200", "+workload.options.d=5", "delay=uniform", "delay.low=0",
            "delay.high=3", "run.num_workers=4", "run.steps=20", "run.eval_every=10", "plot=false"]


def merge_config(base: dict, delta: dict) -> dict:
    """``base`` updated by ``delta``, recursively; a key ending in ``!`` replaces."""
    out = copy.deepcopy(base)
    for k, v in delta.items():
        if k.endswith("!"):
            out[k[:-1]] = v
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_config(out[k], v)
        else:
            out[k] = v
    return out


def with_keys(base: dict, changes: dict, sep: str = ".") -> dict:
    """A copy of ``base`` with each ``changes`` key, a path of nested keys joined by ``sep``
    (``"run.steps"``), set to its value (missing levels are created)."""
    out = copy.deepcopy(base)
    for path, value in changes.items():
        *parents, last = path.split(sep)
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def snapshot(root) -> dict[str, bytes]:
    """Every file under ``root`` with its content (to assert that nothing changed)."""
    from pathlib import Path

    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def assert_one_line(msg: str, key: str, also=()) -> None:
    """A one-line error that starts with ``key`` and contains each of ``also``."""
    assert "\n" not in msg.strip() and "Traceback" not in msg, msg
    assert msg.startswith(key), (key, msg)
    for word in also:
        assert word in msg, (word, msg)
