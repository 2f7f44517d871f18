"""The four stages that turn a config into a runnable experiment:
``prepare(cfg) = build(load(resolve(cfg)))``, and ``validate(cfg)`` (every check that needs
no data), each a function that can be tested alone. :mod:`jaxasync.experiment` runs what
they prepare (and re-exports them)."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxasync import delays as dl
from jaxasync.algorithms import get_algorithm
from jaxasync.checks import (
    _check_lr_decay,
    _check_run,
    _check_workload,
    _compressor,
    _delay_config,
    _downlink,
    lr_boundaries,
    split_params,
)
from jaxasync.config import INT32_MAX, Config, ConfigError, check_values, to_config
from jaxasync.sim import SimConfig, Simulator

# ----------------------------------------------------------------------------- the four stages
#
# prepare(cfg) = build(load(resolve(cfg))): resolve checks every value that needs no data and
# fixes the sizes (arrivals, ring depth, steps, members); load reads the workload and
# partitions it; build makes the simulator. validate(cfg) is resolve plus the workload's own
# checks that need no data (its name, options, data directory).


@dataclasses.dataclass(frozen=True)
class Resolved:
    """A config whose every data-free value is checked, with the sizes it fixes."""

    cfg: Config
    spec: Any                     # AlgorithmSpec
    delay: dl.DelayConfig
    network: dl.Network
    static: dict                  # algorithm kwargs fixed at trace time
    numeric: dict                 # traced algorithm kwargs: name -> member values
    arrivals: int                 # K per server step
    rows: int                     # gradient rows per step (M for synchronous algorithms)
    ring: int                     # D, versions kept
    steps: int
    eval_every: int
    compressor: tuple | None
    ring_depth: RingDepth | None = None   # D with the key that sets it (size messages)
    downlink: tuple | None = None


def _algorithm(cfg: Config):
    try:
        return get_algorithm(cfg.algorithm.name)
    except ValueError as e:
        raise ConfigError(str(e).replace("algorithm ", "algorithm.name=", 1)) from None


def _arrivals(cfg: Config, spec) -> tuple[int, int]:
    """``(K, rows)``: arrivals per server step, and gradient rows per step."""
    m, a = cfg.run.num_workers, cfg.algorithm
    arrivals = a.arrivals if a.arrivals is not None else spec.arrivals
    if arrivals == "all":
        arrivals = m
    if isinstance(arrivals, bool) or not isinstance(arrivals, int) or arrivals < 1:
        raise ConfigError(f"algorithm.arrivals={a.arrivals!r}: must be an integer >= 1 or 'all'")
    if arrivals > m:
        raise ConfigError(f"algorithm.arrivals={arrivals}: must be <= run.num_workers={m}")
    return arrivals, (m if spec.synchronous else arrivals)


def _check_values(cfg: Config) -> None:
    """Every declared value (:func:`jaxasync.config.check_values`), and the relations
    between run and workload values that need neither data nor the algorithm."""
    from jaxasync.models import INITS  # (the models' module: flax, not imported by config)

    check_values(cfg)
    _check_run(cfg)
    if cfg.workload.init not in INITS:
        raise ConfigError(f"workload.init={cfg.workload.init!r}: unknown; choose one of: "
                          f"{', '.join(INITS)}")
    if cfg.workload.sampling == "epochs" and cfg.workload.full_batch:
        raise ConfigError("workload.sampling=epochs: has no effect with "
                          "workload.full_batch=true (each batch is the whole shard)")


class RingDepth(NamedTuple):
    """D, the versions the ring keeps, with the key that sets it and how (for messages)."""

    depth: int
    key: str                      # "delay.tau", "run.ring_size", "algorithm.params.history"...
    why: str                      # "the delay bound 1000 + 1"


#: the key holding each sampled delay model's bound
_BOUND_KEYS = {"constant": "delay.tau", "uniform": "delay.high", "trace": "delay.trace_file",
               "geometric": "delay.max_delay", "pareto": "delay.max_delay"}


def _ring_depth(cfg: Config, spec, delay: dl.DelayConfig, static: dict,
                numeric: dict | None = None) -> RingDepth:
    """D: the versions the ring keeps, at least the lazy algorithms' history window + 1.

    ``run.ring_size``, or what the run can use: the delay model's bound + 1 (a sampled
    model's largest delay; fixed compute times' largest staleness,
    :func:`jaxasync.delays.fixed_staleness_bound`), capped by the largest staleness the
    algorithm applies + 1 (``max_staleness``: Rennala 0, Ringmaster R - 1; a staler arrival
    is dropped unseen, as it would have been discarded); 8 M when neither bounds it.
    """
    r, m = cfg.run, cfg.run.num_workers
    bound = 0 if spec.synchronous else delay.bound()
    if bound is None and not spec.synchronous:
        bound = dl.fixed_staleness_bound(delay, m, cfg.network.latency) \
            if math.isinf(cfg.network.bandwidth) else None
    used = _max_staleness(spec, static, numeric or {}, m)
    if r.ring_size is not None:
        if bound is not None and delay.kind != "event" and r.ring_size < bound + 1:
            raise ConfigError(f"run.ring_size={r.ring_size}: smaller than the delay bound + 1 = "
                              f"{bound + 1} (delay.kind={delay.kind})")
        ring = RingDepth(r.ring_size, "run.ring_size", "set by run.ring_size")
    elif used is not None and (bound is None or used < bound):
        ring = RingDepth(used + 1, "algorithm.name", f"the largest staleness {spec.name} "
                         f"applies, {used}, + 1")
    elif bound is not None:
        key = _BOUND_KEYS.get(delay.kind, "delay.times")
        ring = RingDepth(bound + 1, key, f"the delay bound {bound} + 1, delay.kind={delay.kind}"
                         + (", the largest delay in the file" if delay.kind == "trace" else "")
                         + (", fixed compute times" if delay.kind == "event" else ""))
    else:
        ring = RingDepth(max(16, 8 * m), "run.num_workers",
                         f"8 M for M={m} workers (delay.kind={delay.kind} has no bound; set "
                         f"run.ring_size to choose D)")
    history = int(static.get("history", spec.defaults().get("history")) or 0)
    if history + 1 > ring.depth:
        ring = RingDepth(history + 1, "algorithm.params.history",
                         f"the history window {history} + 1")
    return ring if ring.depth >= 2 else RingDepth(2, ring.key, "at least 2")


def _max_staleness(spec, static: dict, numeric: dict, m: int) -> int | None:
    """The algorithm's ``max_staleness`` at this run's values (a traced parameter's largest
    member value), or None."""
    if spec.max_staleness is None:
        return None
    values = {**spec.defaults(), **static, "num_workers": m}
    values.update({k: max(v) for k, v in numeric.items()})
    return spec.max_staleness(values)


def _steps(cfg: Config, rows: int) -> tuple[int, int]:
    """``(steps, eval_every)``. The last chunk is shorter when ``eval_every`` does not divide
    the steps: steps are never added. The simulator counts gradients in int32: steps x rows
    must fit."""
    r = cfg.run
    steps = r.steps if r.steps is not None else math.ceil(r.gradients / rows)
    every = r.eval_every if r.eval_every is not None else max(1, steps // r.evals)
    if steps * rows > INT32_MAX:
        key = ("run.steps", r.steps) if r.steps is not None else ("run.gradients", r.gradients)
        raise ConfigError(f"{key[0]}={key[1]}: {steps} steps x {rows} gradient rows = "
                          f"{steps * rows} gradients, more than the simulator's int32 "
                          f"counters hold ({INT32_MAX})")
    return steps, min(every, steps)


def _check_schedule(spec, decay) -> None:
    if not (decay.epochs or decay.steps):
        return
    if "learning_rate" not in spec.params:
        raise ConfigError(f"algorithm.lr_decay: algorithm {spec.name!r} has no learning_rate")
    if not spec.takes_schedule():
        raise ConfigError(f"algorithm.lr_decay: algorithm {spec.name!r} takes only a constant "
                          f"learning_rate; drop algorithm.lr_decay")


def resolve(cfg: Config) -> Resolved:
    """Checks every value that needs no data, and fixes the sizes the config implies."""
    spec = _algorithm(cfg)
    _check_values(cfg)
    arrivals, rows = _arrivals(cfg, spec)
    delay = _delay_config(cfg)
    static, numeric = split_params(spec, dict(cfg.algorithm.params))
    ring = _ring_depth(cfg, spec, delay, static, numeric)
    steps, every = _steps(cfg, rows)
    compressor = _compressor(spec, cfg.algorithm.compressor, cfg.run.num_workers)
    downlink = _downlink(cfg.algorithm.downlink, cfg.run.num_workers)
    _check_lr_decay(cfg.algorithm.lr_decay)
    _check_schedule(spec, cfg.algorithm.lr_decay)
    network = dl.Network(cfg.network.bandwidth, cfg.network.latency)
    return Resolved(cfg, spec, delay, network, static, numeric, arrivals, rows, ring.depth,
                    steps, every, compressor, ring_depth=ring, downlink=downlink)


@dataclasses.dataclass(frozen=True)
class Loaded:
    """The workload's data, partitioned over the workers."""

    workload: Any
    index: np.ndarray             # int32[M, n_max] each worker's examples
    size: np.ndarray              # int32[M]
    steps_per_epoch: float
    lr_boundaries: tuple[int, ...]


def _workload(cfg: Config, workload_factory: Callable | None):
    from jaxasync.workloads import get_workload

    w = cfg.workload
    wopts = dict(w.options)
    if workload_factory is None:
        wopts = _check_workload(w.name, wopts)
    try:
        return (workload_factory or get_workload)(w.name, **wopts)
    except (ValueError, OSError) as e:
        raise _workload_error(w.name, wopts, e) from None


def _workload_error(name: str, options: dict, e: Exception) -> ConfigError:
    """A workload factory's error as a one-line :class:`ConfigError` naming the key: the
    option its message starts with, else the data directory for a file-based workload (the
    message names the file and the field), else the workload."""
    from jaxasync.workloads import OFFLINE_WORKLOADS, WORKLOADS, options_of

    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    declared = options_of(name) if name in WORKLOADS else options
    opt = next((k for k in declared if msg.startswith(f"{k}=")), None)
    if opt is not None:
        return ConfigError(f"workload.options.{msg}")
    if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) and e.filename:
        msg = f"{e.filename}: cannot be read ({e.strerror})"
    if name in WORKLOADS and name not in OFFLINE_WORKLOADS and "data_dir" in declared:
        d = options.get("data_dir", inspect.signature(WORKLOADS[name]).parameters["data_dir"]
                        .default)
        return ConfigError(f"workload.options.data_dir={d!r}: {msg}")
    return ConfigError(f"workload.name={name!r}: {msg}")


def load(res: Resolved, workload_factory: Callable | None = None) -> Loaded:
    """Loads the workload and partitions it over the workers (data-dependent checks)."""
    from jaxasync.data import partition
    from jaxasync.models import with_init

    cfg, w, m = res.cfg, res.cfg.workload, res.cfg.run.num_workers
    workload = _workload(cfg, workload_factory)
    if w.init != "flax":
        workload = dataclasses.replace(workload, init=with_init(workload.init, w.init))
    labels = np.asarray(workload.data.y_train)
    if workload.num_classes is None:
        if w.partition not in ("iid", "shared"):
            raise ConfigError(f"workload.partition={w.partition!r}: needs a classification "
                              f"workload; {w.name!r} is regression (use iid or shared)")
        labels = np.zeros(labels.shape[0], np.int32)
    try:
        index, size = partition(labels, m, w.partition, alpha=w.dirichlet_alpha,
                                shards_per_worker=w.shards_per_worker,
                                seed=int(dict(w.options).get("seed", 0)))
    except ValueError as e:
        msg = str(e)
        for arg, key in (("num_workers=", "run."), ("alpha=", "workload.dirichlet_")):
            if msg.startswith(arg):
                raise ConfigError(f"{key}{msg} (workload.partition={w.partition})") from None
        raise ConfigError(f"workload.partition={w.partition!r}: {msg}") from None
    if w.full_batch and int(np.min(size)) != int(np.max(size)):
        raise ConfigError(f"workload.full_batch=true: needs equal shards; partition "
                          f"{w.partition!r} gives sizes {int(np.min(size))}..{int(np.max(size))}")
    if not w.full_batch and w.batch_size > int(np.min(size)):
        raise ConfigError(f"workload.batch_size={w.batch_size}: larger than the smallest worker "
                          f"shard ({int(np.min(size))} examples with {m} workers)")
    per_row = int(size[0]) if w.full_batch else w.batch_size
    steps_per_epoch = labels.shape[0] / (res.rows * per_row)
    bounds = lr_boundaries(cfg.algorithm.lr_decay, steps_per_epoch)
    return Loaded(workload, index, size, steps_per_epoch, bounds)


class Prepared:
    """A validated experiment, ready to run (built by :func:`prepare`).

    Attributes: ``cfg``, ``spec``, ``delay``, ``rows``, ``static`` (algorithm kwargs fixed at
    trace time), ``members`` (``[{"seed", "params"}]``: seeds x the grid of traced values),
    ``workload``, ``index``/``size`` (the partition), ``steps_per_epoch``, ``lr_boundaries``,
    ``sim_config``, ``mesh`` and ``simulator``.
    """

    def __init__(self, res: Resolved, data: Loaded):
        cfg, r = res.cfg, res.cfg.run
        self.cfg, self.spec, self.delay, self.rows = cfg, res.spec, res.delay, res.rows
        self.workload, self.index, self.size = data.workload, data.index, data.size
        self.steps_per_epoch, self.lr_boundaries = data.steps_per_epoch, data.lr_boundaries
        decay = cfg.algorithm.lr_decay
        self.sim_config = SimConfig(
            num_workers=r.num_workers, arrivals=res.arrivals, batch_size=cfg.workload.batch_size,
            ring_size=res.ring, steps=res.steps, eval_every=res.eval_every, delay=res.delay,
            network=res.network, eval_train_size=r.eval_train_size,
            full_batch=cfg.workload.full_batch, sampling=cfg.workload.sampling,
            lr_boundaries=data.lr_boundaries,
            lr_factor=float(decay.factor) if data.lr_boundaries else 1.0,
            eval_grad_norm=bool(r.eval_grad_norm), compressor=res.compressor,
            downlink=res.downlink,
        )
        self.static = _with_smoothness(res, data.workload.smoothness)
        _trial_build(res, self.static, data.lr_boundaries, self.sim_config.lr_factor)
        names = sorted(res.numeric)
        grid = list(itertools.product(*(res.numeric[k] for k in names))) or [()]
        self.members = [{"seed": int(s), "params": dict(zip(names, vals, strict=True))}
                        for vals in grid for s in r.seeds]
        self.mesh, worker_axis = None, None
        if r.mesh_workers > 1:  # validated: divides M, enough devices
            from jaxasync.mesh import make_mesh

            self.mesh = make_mesh(r.mesh_workers)
            if res.rows % r.mesh_workers == 0:
                worker_axis = {"spmd_axis_name": "workers"}
        self.simulator = Simulator(self.spec, self.static, self.workload, self.sim_config,
                                   worker_axis)
        if res.ring_depth is not None:
            from jaxasync.memory import check_run_fits

            check_run_fits(self, res.ring_depth)

    def hparams(self) -> dict:
        names = self.members[0]["params"].keys()
        return {k: jnp.asarray([m["params"][k] for m in self.members], jnp.float32) for k in names}

    def keys(self):
        return jax.vmap(jax.random.PRNGKey)(jnp.asarray([m["seed"] for m in self.members]))


def _with_smoothness(res: Resolved, smoothness: float | None) -> dict:
    """The static kwargs, plus what the run knows that a factory may take: the workload's L
    (``smoothness``: CE-ASGD's threshold kappa * L, Koloskova's 1/(4 L tau); None where
    unknown) and the workers' fixed times (``worker_times``: Naive Optimal ASGD's selection),
    when known before the run."""
    static = dict(res.static)
    if "smoothness" in res.spec.params and "smoothness" not in static | res.numeric:
        static["smoothness"] = smoothness
    if "worker_times" in res.spec.params and "worker_times" not in static:
        times = dl.known_times(res.delay, res.cfg.run.num_workers)
        static["worker_times"] = None if times is None else tuple(float(t) for t in times)
    return static


def _trial_build(res: Resolved, static: dict, boundaries: tuple[int, ...], factor: float
                 ) -> None:
    """Builds the algorithm once with every member's values (and the run's schedule), so a
    factory's own ``ValueError`` (kappa without a known L, a schedule it cannot take...) is a
    config error before anything compiles."""
    from jaxasync.sim import step_decay

    kw = {"num_workers": res.cfg.run.num_workers} if "num_workers" in res.spec.params else {}
    kw.update(static)
    members = list(itertools.product(*res.numeric.values())) or [()]
    for vals in members:
        trial = {**kw, **dict(zip(res.numeric, vals, strict=True))}
        try:
            res.spec.build(**trial)
        except ValueError as e:
            raise ConfigError(f"algorithm.params: {e}") from None
        if boundaries:
            base = trial.get("learning_rate", res.spec.defaults().get("learning_rate"))
            try:
                res.spec.build(**{**trial, "learning_rate": step_decay(base, boundaries, factor)})
            except ValueError as e:
                raise ConfigError(f"algorithm.lr_decay: algorithm {res.spec.name!r} with these "
                                  f"parameters takes no schedule ({e}); drop algorithm.lr_decay"
                                  ) from None


def prepare(cfg: Any, workload_factory: Callable | None = None) -> Prepared:
    """Validates ``cfg`` (dict, OmegaConf or :class:`Config`), loads the data and builds the
    simulator: ``build(load(resolve(cfg)))``."""
    res = resolve(to_config(cfg))
    return Prepared(res, load(res, workload_factory))


def validate(cfg: Any) -> Config:
    """Checks every value that can be checked without loading data or compiling.

    Raises the same :class:`ConfigError` as :func:`prepare` for all but the checks that
    need the data (batch larger than a shard, a partition that cannot be made, a missing
    or broken data file), which :func:`prepare` makes before compiling. The CLI runs it
    on every job of a sweep before starting any.
    """
    from jaxasync.outputs_dir import as_path

    c = to_config(cfg)
    as_path(c.out_dir)
    res = resolve(c)
    _check_workload(c.workload.name, dict(c.workload.options))
    # the factory's own checks; the workload's L and the decay's steps need the data, so a
    # placeholder L (only "known or not" can matter to a factory) and one boundary stand in
    decay = c.algorithm.lr_decay
    _trial_build(res, _with_smoothness(res, 1.0), (1,) if decay.epochs or decay.steps else (),
                 decay.factor)
    return c
