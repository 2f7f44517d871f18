"""Shared toy problems for the tests (no dataset downloads, compile in seconds)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxasync import sim


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
