"""One experiment: validate a config, build the simulator, run every member, report.

Used by the Hydra CLI, the leaderboard and the tests alike::

    from jaxasync.experiment import run_experiment
    result = run_experiment({"algorithm": {"name": "asgd", "params": {"learning_rate": 0.05}},
                             "workload": {"name": "mnist1d_mlp"}, "run": {"gradients": 2000}})

A *member* is one seed with one value of every swept numeric parameter; all members
of an experiment run as one vmapped, jitted program.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import itertools
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxasync import delays as dl
from jaxasync import report
from jaxasync.algorithms import ALGORITHMS, get_algorithm
from jaxasync.config import Config, ConfigError, to_config
from jaxasync.data import PARTITION_SCHEMES
from jaxasync.sim import Data, SimConfig, Simulator, put_data, run

# ----------------------------------------------------------------------------- validation


def _delay_config(c: Config) -> dl.DelayConfig:
    d = c.delay
    if d.kind not in dl.KINDS:
        raise ConfigError(f"delay.kind={d.kind!r}: unknown; choose one of: {', '.join(dl.KINDS)}")
    if d.compute not in dl.COMPUTE:
        raise ConfigError(f"delay.compute={d.compute!r}: unknown; choose one of: {', '.join(dl.COMPUTE)}")
    trace: tuple[int, ...] = ()
    if d.kind == "trace":
        if not d.trace_file:
            raise ConfigError("delay.trace_file: required when delay.kind=trace")
        try:
            trace = dl.read_trace(d.trace_file)
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(str(e)) from None
    checks = [
        ("delay.tau", d.tau, d.tau >= 0, ">= 0"),
        ("delay.low", d.low, 0 <= d.low, ">= 0"),
        ("delay.high", d.high, d.high >= d.low, f">= delay.low={d.low}"),
        ("delay.p", d.p, 0 < d.p <= 1, "in (0, 1]"),
        ("delay.alpha", d.alpha, d.alpha > 0, "> 0"),
        ("delay.scale", d.scale, d.scale > 0, "> 0"),
        ("delay.mean", d.mean, d.mean > 0, "> 0"),
        ("delay.sigma", d.sigma, d.sigma >= 0, ">= 0"),
        ("delay.heterogeneity", d.heterogeneity, d.heterogeneity >= 0, ">= 0"),
        ("delay.straggler_fraction", d.straggler_fraction, 0 <= d.straggler_fraction <= 1, "in [0, 1]"),
        ("delay.straggler_slowdown", d.straggler_slowdown, d.straggler_slowdown >= 1, ">= 1"),
    ]
    if d.max_delay is not None:
        checks.append(("delay.max_delay", d.max_delay, d.max_delay >= 0, ">= 0"))
    for key, val, ok, allowed in checks:
        if not ok:
            raise ConfigError(f"{key}={val!r}: must be {allowed}")
    return dl.DelayConfig(
        kind=d.kind, tau=d.tau, low=d.low, high=d.high, p=d.p, alpha=d.alpha, scale=d.scale,
        max_delay=d.max_delay, trace=trace, compute=d.compute, mean=d.mean, sigma=d.sigma,
        speeds=tuple(d.speeds) if d.speeds is not None else None, heterogeneity=d.heterogeneity,
        straggler_fraction=d.straggler_fraction, straggler_slowdown=d.straggler_slowdown,
    )


#: numeric parameters that fix array shapes (top-k's k = max(1, floor(density * d))): kept
#: static (one compiled program per value), never traced or swept inside one program
_SHAPING = ("density",)


def _split_params(params: dict) -> tuple[dict, dict[str, list[float]]]:
    """Static params (ints, strings, bools) vs numeric ones (floats, lists of floats: swept)."""
    static, numeric = {}, {}
    for k, v in params.items():
        if isinstance(v, bool) or isinstance(v, str) or v is None:
            static[k] = v
        elif k in _SHAPING:
            if not isinstance(v, int | float):
                raise ConfigError(f"algorithm.params.{k}={v!r}: must be one number (it fixes "
                                  "array shapes; sweep it with a Hydra multirun, -m)")
            static[k] = v
        elif isinstance(v, float):
            numeric[k] = [v]
        elif isinstance(v, int):
            static[k] = v
        elif isinstance(v, list | tuple) and v and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v):
            numeric[k] = [float(x) for x in v]
        else:
            raise ConfigError(f"algorithm.params.{k}={v!r}: must be a number, a list of numbers, a string or a bool")
    return static, numeric


_POSITIVE = ("learning_rate", "density", "levels")
_NON_NEGATIVE = ("threshold", "kappa", "lam", "lam0")


def _check_params(numeric: dict, static: dict) -> None:
    for k, vs in itertools.chain(numeric.items(), ((k, [v]) for k, v in static.items())):
        for v in vs:
            if not isinstance(v, int | float) or isinstance(v, bool):
                continue
            if not math.isfinite(v):
                raise ConfigError(f"algorithm.params.{k}={v!r}: must be a finite number")
            if k in _POSITIVE and not v > 0:
                raise ConfigError(f"algorithm.params.{k}={v!r}: must be > 0")
            if k == "density" and not v <= 1:
                raise ConfigError(f"algorithm.params.density={v!r}: must be in (0, 1]")
            if k in _NON_NEGATIVE and not v >= 0:
                raise ConfigError(f"algorithm.params.{k}={v!r}: must be >= 0")


def _check_run(cfg: Config) -> None:
    """Run-level values that need no data: mesh, checkpoints, evaluation, speeds."""
    r, m = cfg.run, cfg.run.num_workers
    mesh = r.mesh_workers
    if not isinstance(mesh, int) or mesh < 1:
        raise ConfigError(f"run.mesh_workers={mesh!r}: must be an integer >= 1")
    if m % mesh:
        raise ConfigError(f"run.mesh_workers={mesh}: must divide run.num_workers={m}")
    if mesh > jax.device_count():
        raise ConfigError(f"run.mesh_workers={mesh}: larger than the {jax.device_count()} "
                          f"{jax.default_backend()} device(s) available")
    if r.checkpoint_every < 0:
        raise ConfigError(f"run.checkpoint_every={r.checkpoint_every!r}: must be >= 0 (0: off)")
    if r.eval_train_size < 1:
        raise ConfigError(f"run.eval_train_size={r.eval_train_size!r}: must be >= 1")
    if cfg.workload.shards_per_worker < 1:
        raise ConfigError(f"workload.shards_per_worker={cfg.workload.shards_per_worker!r}: "
                          f"must be >= 1")
    speeds = cfg.delay.speeds
    if speeds is not None:
        if len(speeds) != m:
            raise ConfigError(f"delay.speeds: has {len(speeds)} entries; must have one per "
                              f"worker (run.num_workers={m})")
        bad = [v for v in speeds if not (v > 0 and math.isfinite(v))]
        if bad:
            raise ConfigError(f"delay.speeds: entry {bad[0]!r} must be a finite number > 0")


def _check_workload(name: str, options: dict) -> None:
    """Workload name, option names and data directory, without loading anything."""
    import difflib

    from jaxasync.workloads import OFFLINE_WORKLOADS, WORKLOADS

    if name not in WORKLOADS:
        close = difflib.get_close_matches(str(name), WORKLOADS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"workload.name={name!r}: unknown{hint}; choose one of: "
                          f"{', '.join(WORKLOADS)}")
    allowed = inspect.signature(WORKLOADS[name]).parameters
    for k in options:
        if k not in allowed:
            raise ConfigError(f"workload.options.{k}: unknown option for workload {name!r}; "
                              f"allowed: {', '.join(allowed)}")
    if name not in OFFLINE_WORKLOADS and "data_dir" in allowed:
        d = options.get("data_dir", allowed["data_dir"].default)
        if d is not None and not os.path.isdir(os.path.expanduser(os.fspath(d))):
            raise ConfigError(f"workload.options.data_dir={os.fspath(d)!r}: no such directory "
                              f"(workload {name!r} reads its files from there)")


def _check_lr_decay(dec) -> None:
    """``algorithm.lr_decay`` values that need no data: the factor and the boundary lists."""
    if dec.epochs and dec.steps:
        raise ConfigError(f"algorithm.lr_decay: give epochs or steps, not both "
                          f"(epochs={list(dec.epochs)}, steps={list(dec.steps)})")
    if not (math.isfinite(dec.factor) and dec.factor > 0):
        raise ConfigError(f"algorithm.lr_decay.factor={dec.factor!r}: must be a finite number > 0")
    for key, values, least in (("epochs", list(dec.epochs), "> 0"),
                               ("steps", list(dec.steps), ">= 1")):
        for v in values:
            if not math.isfinite(v) or (v <= 0 if key == "epochs" else v < 1):
                raise ConfigError(f"algorithm.lr_decay.{key}={values}: entry {v!r} must be "
                                  f"finite and {least}")
        if any(b <= a for a, b in itertools.pairwise(values)):
            raise ConfigError(f"algorithm.lr_decay.{key}={values}: must be strictly increasing")


def lr_boundaries(dec, steps_per_epoch: float) -> tuple[int, ...]:
    """The decay boundaries of ``algorithm.lr_decay`` in server steps.

    Epochs become ``round(epoch * steps_per_epoch)`` server steps; ``steps_per_epoch`` is
    n_train / (rows x examples per row): rows = M for synchronous algorithms, K arrivals
    (gradients applied or not) for asynchronous ones.
    """
    if dec.steps:
        return tuple(int(b) for b in dec.steps)
    bounds = tuple(round(e * steps_per_epoch) for e in dec.epochs)
    if bounds and bounds[0] < 1:
        raise ConfigError(f"algorithm.lr_decay.epochs={list(dec.epochs)}: epoch {dec.epochs[0]:g} "
                          f"is step {bounds[0]} ({steps_per_epoch:g} steps per epoch); must be >= 1")
    if any(b <= a for a, b in itertools.pairwise(bounds)):
        raise ConfigError(f"algorithm.lr_decay.epochs={list(dec.epochs)}: two boundaries fall on "
                          f"the same server step ({steps_per_epoch:g} steps per epoch): {list(bounds)}")
    return bounds


def _compressor(spec, conf) -> tuple | None:
    """``algorithm.compressor`` as the simulator takes it, ``(name, params, error_feedback)``,
    or None; a one-line error for what cannot run."""
    params = dict(conf.params)
    if conf.name == "none":
        if params or conf.error_feedback:
            raise ConfigError("algorithm.compressor.name=none: params or error_feedback given "
                              "without a compressor; name one")
        return None
    lib = importlib.import_module("jaxasync.compress")
    if conf.name not in lib.COMPRESSORS:
        raise ConfigError(f"algorithm.compressor.name={conf.name!r}: unknown; choose one of: "
                          f"none, {', '.join(sorted(lib.COMPRESSORS))}")
    if spec.own_messages:
        ok = sorted(n for n, s in ALGORITHMS.items() if not s.own_messages)
        raise ConfigError(f"algorithm.compressor.name={conf.name!r}: algorithm {spec.name!r} "
                          f"decides what its workers send; a compressor goes in front of "
                          f"{', '.join(ok)}")
    try:
        lib.make_compressor(conf.name, **params)
    except ValueError as e:
        raise ConfigError(f"algorithm.compressor.params={params}: {e}") from None
    return conf.name, tuple(sorted(params.items())), bool(conf.error_feedback)


def _takes_schedule(spec, static: dict, numeric: dict, sim_config: SimConfig) -> bool:
    """Whether the algorithm, built with these parameters, runs with an optax schedule as its
    learning rate: one server step traced (``jax.eval_shape``, nothing compiled) on a
    two-parameter least-squares problem, with the schedule and, if that fails, without it.
    (False only when the constant rate traces and the schedule does not; a failure of both
    is left to the real run to report.)"""
    import types

    probe = types.SimpleNamespace(
        init=lambda key: {"w": jnp.zeros((2,), jnp.float32)},
        loss=lambda p, x, y: 0.5 * jnp.mean(jnp.square(x @ p["w"] - y)), augment=None)
    m = sim_config.num_workers
    data = Data(jnp.zeros((1, 2)), jnp.zeros((1,)), jnp.zeros((1, 2)), jnp.zeros((1,)),
                jnp.zeros((m, 1), jnp.int32), jnp.ones((m,), jnp.int32))
    hp = {k: jnp.float32(v[0]) for k, v in numeric.items()}
    if "smoothness" in spec.parameters() and static.get("smoothness") is None:
        static = {**static, "smoothness": 1.0}   # a placeholder: only shapes are traced

    def traces(boundaries: tuple[int, ...]) -> bool:
        cfg = dataclasses.replace(sim_config, batch_size=1, full_batch=False,
                                  lr_boundaries=boundaries, lr_factor=0.5)
        sim = Simulator(spec, static, probe, cfg)
        try:
            jax.eval_shape(lambda: sim.step(sim.init(jax.random.PRNGKey(0), hp), data, hp))
        except Exception:  # noqa: BLE001 -- any failure to trace means "not with this rate"
            return False
        return True

    return traces((1,)) or not traces(())


class Prepared:
    """A validated experiment, ready to run (built by :func:`prepare`)."""

    def __init__(self, cfg: Config, workload_factory: Callable | None = None):
        from jaxasync.data import partition
        from jaxasync.workloads import get_workload

        self.cfg = cfg
        r, w, a = cfg.run, cfg.workload, cfg.algorithm
        try:
            self.spec = get_algorithm(a.name)
        except ValueError as e:
            raise ConfigError(str(e).replace("algorithm ", "algorithm.name=", 1)) from None
        m = r.num_workers
        if not isinstance(m, int) or m < 1:
            raise ConfigError(f"run.num_workers={m!r}: must be an integer >= 1")
        _check_run(cfg)
        arrivals = a.arrivals if a.arrivals is not None else self.spec.arrivals
        if arrivals == "all":
            arrivals = m
        if not isinstance(arrivals, int) or arrivals < 1:
            raise ConfigError(f"algorithm.arrivals={a.arrivals!r}: must be an integer >= 1 or 'all'")
        if arrivals > m:
            raise ConfigError(f"algorithm.arrivals={arrivals}: must be <= run.num_workers={m}")
        self.delay = _delay_config(cfg)
        static, numeric = _split_params(dict(a.params))
        _check_params(numeric, static)
        unknown = sorted(set(static) | set(numeric) - set())
        accepted = set(self.spec.parameters())
        for k in unknown:
            if k not in accepted:
                raise ConfigError(f"algorithm.params.{k}: unknown for algorithm {a.name!r}; "
                                  f"accepted: {', '.join(sorted(accepted))}")
        if not r.seeds:
            raise ConfigError("run.seeds: must list at least one seed")
        if r.evals < 1:
            raise ConfigError(f"run.evals={r.evals!r}: must be >= 1")
        if r.eval_every is not None and r.eval_every < 1:
            raise ConfigError(f"run.eval_every={r.eval_every!r}: must be >= 1")
        if r.steps is not None and r.steps < 1:
            raise ConfigError(f"run.steps={r.steps!r}: must be >= 1")
        if r.gradients < 1:
            raise ConfigError(f"run.gradients={r.gradients!r}: must be >= 1")
        if w.batch_size < 1:
            raise ConfigError(f"workload.batch_size={w.batch_size!r}: must be >= 1")
        if w.partition not in PARTITION_SCHEMES:
            raise ConfigError(f"workload.partition={w.partition!r}: unknown; choose one of: "
                              f"{', '.join(PARTITION_SCHEMES)}")
        if w.sampling not in ("replacement", "epochs"):
            raise ConfigError(f"workload.sampling={w.sampling!r}: unknown; choose replacement "
                              f"or epochs")
        if w.sampling == "epochs" and w.full_batch:
            raise ConfigError("workload.sampling=epochs: has no effect with "
                              "workload.full_batch=true (each batch is the whole shard)")
        if w.dirichlet_alpha <= 0:
            raise ConfigError(f"workload.dirichlet_alpha={w.dirichlet_alpha!r}: must be > 0")
        if cfg.network.bandwidth <= 0:
            raise ConfigError(f"network.bandwidth={cfg.network.bandwidth!r}: must be > 0")
        if cfg.network.latency < 0:
            raise ConfigError(f"network.latency={cfg.network.latency!r}: must be >= 0")

        rows = m if self.spec.synchronous else arrivals
        self.rows = rows
        bound = 0 if self.spec.synchronous else self.delay.bound()
        if r.ring_size is not None:
            if r.ring_size < 1:
                raise ConfigError(f"run.ring_size={r.ring_size!r}: must be >= 1")
            if bound is not None and r.ring_size < bound + 1:
                raise ConfigError(f"run.ring_size={r.ring_size}: smaller than the delay bound + 1 = "
                                  f"{bound + 1} (delay.kind={self.delay.kind})")
            ring = r.ring_size
        elif bound is not None:
            ring = bound + 1
        else:
            ring = max(16, 8 * m)  # K = 1, exponential: P(tau >= 8M) ~ e^-8
        # The ring depth must also cover the lazy algorithms' history window (the factory's
        # default when the config does not set it).
        default = inspect.signature(self.spec.factory).parameters.get("history")
        history = static.get("history", None if default is None else default.default)
        ring = max(ring, int(history or 0) + 1, 2)

        steps = r.steps if r.steps is not None else math.ceil(r.gradients / rows)
        every = r.eval_every if r.eval_every is not None else max(1, steps // r.evals)
        steps = math.ceil(steps / every) * every

        compressor = _compressor(self.spec, a.compressor)
        decay = a.lr_decay
        _check_lr_decay(decay)
        if decay.epochs or decay.steps:
            if "learning_rate" not in accepted:
                raise ConfigError(f"algorithm.lr_decay: algorithm {a.name!r} has no learning_rate")
            probe = SimConfig(num_workers=m, arrivals=arrivals, ring_size=ring, delay=self.delay,
                              network=dl.Network(cfg.network.bandwidth, cfg.network.latency))
            if not _takes_schedule(self.spec, static, numeric, probe):
                raise ConfigError(f"algorithm.lr_decay: algorithm {a.name!r} with these parameters "
                                  f"takes only a constant learning_rate (it uses the number itself); "
                                  f"drop algorithm.lr_decay")

        wopts = dict(w.options)
        if workload_factory is None:
            _check_workload(w.name, wopts)
        try:
            self.workload = (workload_factory or get_workload)(w.name, **wopts)
        except ValueError as e:
            opt = next((k for k in wopts if str(e).startswith(f"{k}=")), None)
            if opt is not None:
                raise ConfigError(f"workload.options.{e}") from None
            raise ConfigError(f"workload.name={w.name!r}: {e}") from None
        except FileNotFoundError as e:
            raise ConfigError(f"workload.options.data_dir: {e}") from None
        labels = np.asarray(self.workload.data.y_train)
        if self.workload.num_classes is None:
            labels = (np.zeros(labels.shape[0], np.int32) if w.partition in ("iid", "shared")
                      else labels)
            if w.partition not in ("iid", "shared"):
                raise ConfigError(f"workload.partition={w.partition!r}: needs a classification "
                                  f"workload; {w.name!r} is regression (use iid or shared)")
        try:
            index, size = partition(labels, m, w.partition, alpha=w.dirichlet_alpha,
                                    shards_per_worker=w.shards_per_worker,
                                    seed=int(wopts.get("seed", 0)))
        except ValueError as e:
            raise ConfigError(f"workload.partition: {e}") from None
        if w.full_batch and int(np.min(size)) != int(np.max(size)):
            raise ConfigError(f"workload.full_batch=true: needs equal shards; partition "
                              f"{w.partition!r} gives sizes {int(np.min(size))}..{int(np.max(size))}")
        if not w.full_batch and w.batch_size > int(np.min(size)):
            raise ConfigError(f"workload.batch_size={w.batch_size}: larger than the smallest worker "
                              f"shard ({int(np.min(size))} examples with {m} workers)")
        self.index, self.size = index, size
        per_row = int(size[0]) if w.full_batch else w.batch_size
        self.steps_per_epoch = labels.shape[0] / (rows * per_row)
        self.lr_boundaries = lr_boundaries(decay, self.steps_per_epoch)
        self.sim_config = SimConfig(
            num_workers=m, arrivals=arrivals, batch_size=w.batch_size, ring_size=ring,
            steps=steps, eval_every=every, delay=self.delay,
            network=dl.Network(cfg.network.bandwidth, cfg.network.latency),
            eval_train_size=r.eval_train_size, full_batch=w.full_batch, sampling=w.sampling,
            lr_boundaries=self.lr_boundaries,
            lr_factor=float(decay.factor) if self.lr_boundaries else 1.0,
            eval_grad_norm=bool(r.eval_grad_norm),
            compressor=compressor,
        )
        # A factory taking `smoothness` gets the workload's L (None where unknown): CE-ASGD's
        # threshold kappa * L, Koloskova's 1/(4 L tau). One trial build turns a factory's
        # ValueError (kappa without a known L...) into a config error before compiling.
        if "smoothness" in accepted and "smoothness" not in static and "smoothness" not in numeric:
            static["smoothness"] = self.workload.smoothness
        trial = {"num_workers": m} if "num_workers" in accepted else {}
        trial.update(static, **{k: v[0] for k, v in numeric.items()})
        try:
            self.spec.build(**trial)
        except ValueError as e:
            raise ConfigError(f"algorithm.params: {e}") from None
        self.static = static
        # members: seeds x grid of swept numeric parameters
        names = sorted(numeric)
        grid = list(itertools.product(*(numeric[k] for k in names))) or [()]
        self.members = [
            {"seed": int(s), "params": dict(zip(names, vals, strict=True))}
            for vals in grid for s in r.seeds
        ]
        self.mesh, worker_axis = None, None
        if r.mesh_workers > 1:  # validated above: divides M, enough devices
            from jaxasync.mesh import make_mesh

            self.mesh = make_mesh(r.mesh_workers)
            if rows % r.mesh_workers == 0:
                worker_axis = {"spmd_axis_name": "workers"}
        self.simulator = Simulator(self.spec, static, self.workload, self.sim_config, worker_axis)

    def hparams(self) -> dict:
        names = self.members[0]["params"].keys()
        return {k: jnp.asarray([m["params"][k] for m in self.members], jnp.float32) for k in names}

    def keys(self):
        return jax.vmap(jax.random.PRNGKey)(jnp.asarray([m["seed"] for m in self.members]))


def prepare(cfg: Any, workload_factory: Callable | None = None) -> Prepared:
    """Validates ``cfg`` (dict, OmegaConf or :class:`Config`) and builds the simulator."""
    return Prepared(to_config(cfg), workload_factory)


class _DataNeeded(Exception):
    """Raised in place of loading the data: every check that needs no data has passed
    (or, with ``error``, the workload's own check failed)."""

    def __init__(self, error: ConfigError | None = None):
        super().__init__()
        self.error = error


def validate(cfg: Any) -> Config:
    """Checks every value that can be checked without loading data or compiling.

    Raises the same :class:`ConfigError` as :func:`prepare` for all but the checks that
    need the data (batch larger than a shard, a partition that cannot be made, a missing
    or broken data file), which :func:`prepare` makes before compiling. The CLI runs it
    on every job of a sweep before starting any.
    """
    c = to_config(cfg)

    def stop(name: str, **options: Any):
        try:
            _check_workload(name, options)
        except ConfigError as e:  # not through Prepared's `except ValueError`
            raise _DataNeeded(e) from None
        raise _DataNeeded

    try:
        Prepared(c, stop)
    except _DataNeeded as stopped:
        if stopped.error is not None:
            raise stopped.error from None
    return c


# ----------------------------------------------------------------------------- provenance


def provenance() -> dict:
    """Versions, device and git revision of this run."""
    import flax
    import optax

    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True,
                                    text=True, cwd=Path(__file__).parent, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        rev, dirty = None, None
    dev = jax.devices()[0]
    return {
        "versions": {"python": sys.version.split()[0], "jax": jax.__version__,
                     "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
                     "optax": optax.__version__, "flax": flax.__version__,
                     "numpy": np.__version__},
        "device": {"platform": dev.platform, "kind": dev.device_kind, "count": jax.device_count(),
                   "host": platform.node(), "processor": platform.processor() or platform.machine()},
        "git": {"revision": rev, "dirty": dirty},
    }


def _progress_printer(name: str, stream=sys.stdout):
    t0 = time.perf_counter()

    def show(done: int, total: int, last: list[dict]):
        h = last[0]
        acc = h.get("test_accuracy")
        metric = f"acc {np.mean([x['test_accuracy'] for x in last]):.3f}" if acc is not None else \
            f"loss {np.mean([x['train_loss'] for x in last]):.4g}"
        print(f"[{name}] chunk {done}/{total}  step {h['step']}  grads {h['grads']}  "
              f"{metric}  up {h['bits_up']:.3g} bits  {time.perf_counter() - t0:.1f}s",
              file=stream, flush=True)

    return show


def run_experiment(cfg: Any, out_dir: str | os.PathLike | None = None, *,
                   progress: bool = True, workload_factory: Callable | None = None) -> dict:
    """Validates, runs all members as one program, writes outputs, returns the run record.

    The record (also written as ``run.json`` when ``out_dir`` is given) holds the
    resolved config, per-member metric histories, counters, targets reached, the
    staleness histogram, versions, device, git revision and timings.

    With ``out_dir`` (see :mod:`jaxasync.checkpoint`): a finished ``run.json`` of the
    same config is reused (the run is skipped), a checkpoint of the same config is
    resumed, and ``run.checkpoint_every = N > 0`` saves the state every N chunks.
    """
    from jaxasync import checkpoint as ckpt

    t_start = time.perf_counter()
    cfg_obj = to_config(cfg)
    name = cfg_obj.algorithm.name
    digest = ckpt.config_hash(cfg_obj)
    code = ckpt.code_identity(name)
    say = (lambda line: print(f"[{name}] {line}", flush=True)) if progress else None
    if out_dir is not None and cfg_obj.run.resume:
        done = ckpt.finished_record(Path(out_dir), digest, code, say)
        if done is not None:
            if progress:
                print(f"[{name}] {out_dir}: finished run of this config (hash {digest}) found; "
                      f"skipped", flush=True)
            return done
    elif out_dir is not None:
        ckpt.discard(Path(out_dir))
    prep = prepare(cfg_obj, workload_factory)
    if progress:
        print(f"[{name}] {prep.workload.name}: M={prep.sim_config.num_workers} "
              f"K={prep.rows} D={prep.sim_config.ring_size} steps={prep.sim_config.steps} "
              f"members={len(prep.members)} delay={prep.delay.kind}", flush=True)
    keys, hparams = prep.keys(), prep.hparams()
    checkpoints, state, history = None, None, None
    every = cfg_obj.run.checkpoint_every
    if out_dir is not None and (every > 0 or ckpt.Checkpoints.exists(out_dir)):
        sc = prep.sim_config
        checkpoints = ckpt.Checkpoints(Path(out_dir), digest, every, sc.eval_every,
                                       math.ceil(sc.steps / sc.eval_every), code, say)
        state, history = checkpoints.restore(prep.simulator, keys, hparams)
        if state is not None and progress:
            print(f"[{name}] resuming from {checkpoints.directory} after chunk "
                  f"{checkpoints.chunks_done(history)}", flush=True)
    resumed = checkpoints.chunks_done(history) if history is not None else None
    data = put_data(prep.workload, prep.index, prep.size)
    try:
        result = run(prep.simulator, data, keys, hparams,
                     progress=_progress_printer(name) if progress else None,
                     state=state, history=history,
                     on_chunk=checkpoints.on_chunk if checkpoints is not None else None,
                     mesh=prep.mesh)
    finally:
        if checkpoints is not None:
            checkpoints.close()
    record = report.make_record(prep, result, provenance(), time.perf_counter() - t_start)
    record["config_hash"] = digest
    record["code"] = code
    record["timing"]["resumed_after_chunk"] = resumed
    if out_dir is not None:
        report.write_outputs(record, Path(out_dir), plot=cfg_obj.plot)
        if checkpoints is not None:
            checkpoints.remove()
    return record
