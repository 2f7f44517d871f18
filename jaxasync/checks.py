"""The checks of a config that need no simulator: run-level relations (mesh, seeds, speeds,
processes), workload names and options, delay times and trace files, learning-rate decays,
named compressors (uplink and downlink), and the split of an algorithm's parameters into
static values and swept numbers. :mod:`jaxasync.experiment` runs them in its four stages."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import itertools
import os

import jax

from jaxasync import delays as dl
from jaxasync import report, traces
from jaxasync.algorithms import ALGORITHMS
from jaxasync.config import Config, ConfigError
from jaxasync.sim import with_workers


def _delay_config(c: Config) -> dl.DelayConfig:
    """``delay`` as the simulator takes it (every value checked by its declaration in
    :class:`jaxasync.delays.DelayConfig`); a trace is read from ``delay.trace_file``."""
    d = c.delay
    if d.high < d.low:
        raise ConfigError(f"delay.high={d.high!r}: must be >= delay.low={d.low}")
    values = {f.name: getattr(d, f.name) for f in dataclasses.fields(dl.DelayConfig)
              if f.name != "trace"}
    # (lists in the schema are tuples here: the config is static and hashable)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    _check_times(values, c.run.num_workers)
    if d.kind == "trace":
        values = _trace_values(values, d.trace_file, c)
    return dl.DelayConfig(**{"trace": (), **values})


def _check_times(values: dict, m: int) -> None:
    """Fixed times: one source (a preset or speeds), per-worker links of the right length."""
    if values["times"] is not None and values["speeds"] is not None:
        raise ConfigError(f"delay.times={values['times']!r}: give delay.times or delay.speeds, "
                          "not both")
    if values["times"] is not None and values["heterogeneity"] > 0:
        raise ConfigError(f"delay.times={values['times']!r}: fixed times; drop "
                          f"delay.heterogeneity={values['heterogeneity']!r}")
    bw = values["bandwidths"]
    if bw is not None:
        if len(bw) != m:
            raise ConfigError(f"delay.bandwidths: has {len(bw)} entries; must have one per "
                              f"worker (run.num_workers={m})")
        bad = [v for v in bw if not (v > 0)]
        if bad:
            raise ConfigError(f"delay.bandwidths: entry {bad[0]!r} must be > 0 (bits/s)")


def _trace_values(values: dict, path, c: Config) -> dict:
    """``delay.kind=trace``: a per-worker staleness table (Wu et al.'s CSVs, or one sequence)
    is replayed; FedScale's capacity pickle becomes the event-driven model with each worker's
    fixed compute time and link (:mod:`jaxasync.traces`)."""
    if not path:
        raise ConfigError("delay.trace_file: required when delay.kind=trace")
    try:
        if traces.is_pickle(path):
            compute, links = traces.read_fedscale(path, c.run.num_workers,
                                                  c.workload.batch_size)
            return {**values, "kind": "event", "compute": "constant", "mean": 1.0,
                    "speeds": compute, "bandwidths": links}
        table, columns = traces.read_delay_table(path)
    except (ValueError, OSError) as e:
        raise ConfigError(str(e)) from None
    if len(table) % columns:
        raise ConfigError(f"delay.trace_file {path}: {len(table)} entries do not fill rows of "
                          f"{columns} columns")
    return {**values, "trace": table, "trace_columns": columns}


def split_params(spec, params: dict) -> tuple[dict, dict[str, list[float]]]:
    """``algorithm.params`` -> (static, traced): by the algorithm's declarations
    (:attr:`jaxasync.algorithms.AlgorithmSpec.params`), never by the YAML type.

    A traced parameter (a float, or an integer declared traced, such as Rennala's batch S,
    which only enters comparisons) may be one number or a list of numbers (the members of one
    vmapped program, each checked here on its concrete value before anything is traced); a
    static one takes one value (it fixes shapes or branches: sweep it with a Hydra multirun,
    ``-m``).

    Raises:
      ConfigError: an unknown name, a value its declaration refuses, a list for a static one.
    """
    static, numeric = {}, {}
    for k, v in params.items():
        key = f"algorithm.params.{k}"
        decl = spec.params.get(k)
        if decl is None:
            raise ConfigError(f"{key}: unknown for algorithm {spec.name!r}; accepted: "
                              f"{', '.join(spec.parameters()) or '(none)'}")
        listed = isinstance(v, list | tuple)
        traced = not decl.static and decl.kind in ("float", "int")
        if listed and not traced:
            raise ConfigError(f"{key}={list(v)!r}: takes one value (it is fixed when the "
                              f"program is compiled); sweep it with a Hydra multirun, -m")
        if listed and not v:
            raise ConfigError(f"{key}=[]: an empty list; give one or more numbers")
        try:
            values = [decl.check(key, x) for x in (v if listed else [v])]
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if not traced or values[0] is None:
            static[k] = values[0]
        else:  # an integer that only enters comparisons (Rennala's S) is traced as well
            numeric[k] = [int(x) if decl.kind == "int" else float(x) for x in values]
    return static, numeric


def _check_run(cfg: Config) -> None:
    """Run-level relations between values (each value alone is checked by its declaration):
    the mesh against the workers and devices, the speeds against the workers, the seeds."""
    r, m = cfg.run, cfg.run.num_workers
    _distributed(r)   # (before the device count below)
    if m % r.mesh_workers:
        raise ConfigError(f"run.mesh_workers={r.mesh_workers}: must divide run.num_workers={m}")
    if r.mesh_workers > jax.device_count():
        raise ConfigError(f"run.mesh_workers={r.mesh_workers}: larger than the "
                          f"{jax.device_count()} {jax.default_backend()} device(s) available")
    speeds = cfg.delay.speeds
    if speeds is not None and len(speeds) != m:
        raise ConfigError(f"delay.speeds: has {len(speeds)} entries; must have one per "
                          f"worker (run.num_workers={m})")
    if not r.seeds:
        raise ConfigError("run.seeds: must list at least one seed")
    if len(set(r.seeds)) != len(r.seeds):
        dup = next(x for x in r.seeds if list(r.seeds).count(x) > 1)
        raise ConfigError(f"run.seeds={list(r.seeds)}: seed {dup} is listed twice")
    report.check_target(cfg)


def start_processes(cfg: Config) -> None:
    """Starts ``jax.distributed`` when ``cfg.run`` names several processes (a
    :class:`ConfigError` for a bad value); call it before anything asks JAX for its devices.
    See :func:`jaxasync.mesh.initialize_distributed`."""
    _distributed(cfg.run)


def _distributed(r) -> None:
    """:func:`start_processes` of ``run``."""
    from jaxasync.mesh import initialize_distributed

    for key in ("num_processes", "process_id"):
        v = getattr(r, key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise ConfigError(f"run.{key}={v!r}: must be an integer")
    try:
        initialize_distributed(r.coordinator, r.num_processes, r.process_id,
                               detect=bool(r.distributed))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _check_workload(name: str, options: dict) -> dict:
    """Workload name, option names and values (their declarations) and the data directory,
    without loading anything; returns the checked options."""
    import difflib

    from jaxasync.workloads import OFFLINE_WORKLOADS, WORKLOADS, check_options, options_of

    if name not in WORKLOADS:
        close = difflib.get_close_matches(str(name), WORKLOADS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"workload.name={name!r}: unknown{hint}; choose one of: "
                          f"{', '.join(WORKLOADS)}")
    allowed = options_of(name)
    for k in options:
        if k not in allowed:
            raise ConfigError(f"workload.options.{k}: unknown option for workload {name!r}; "
                              f"allowed: {', '.join(allowed)}")
    try:
        options = check_options(name, options, prefix="workload.options.")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if name not in OFFLINE_WORKLOADS and "data_dir" in allowed:
        d = options.get("data_dir", inspect.signature(WORKLOADS[name]).parameters["data_dir"]
                        .default)
        if d is not None:
            path = os.path.expanduser(d)
            if not os.path.isdir(path):
                what = "is a file, not a directory" if os.path.exists(path) else \
                    "no such directory"
                raise ConfigError(f"workload.options.data_dir={d!r}: {what} (workload "
                                  f"{name!r} reads its files from there)")
    return options


def _check_lr_decay(dec) -> None:
    """``algorithm.lr_decay``: epochs or steps, each list increasing (each value is checked
    by its declaration in :class:`jaxasync.config.LrDecayConf`)."""
    if dec.epochs and dec.steps:
        raise ConfigError(f"algorithm.lr_decay: give epochs or steps, not both "
                          f"(epochs={list(dec.epochs)}, steps={list(dec.steps)})")
    for key, values in (("epochs", list(dec.epochs)), ("steps", list(dec.steps))):
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


def _named(key: str, conf, what: str, given: bool) -> bool:
    """Whether ``algorithm.<key>`` names a registered compressor (False for ``none``); a
    one-line error for an unknown name, or for ``what`` given (``given``) without one."""
    if conf.name == "none":
        if given:
            raise ConfigError(f"algorithm.{key}.name=none: {what} given without a compressor; "
                              "name one")
        return False
    lib = importlib.import_module("jaxasync.compress")
    if conf.name not in lib.COMPRESSORS:
        raise ConfigError(f"algorithm.{key}.name={conf.name!r}: unknown; choose one of: "
                          f"none, {', '.join(sorted(lib.COMPRESSORS))}")
    return True


def _trial_compressor(key: str, conf, num_workers: int) -> tuple:
    """``(name, params)`` of ``algorithm.<key>`` once a build with them succeeded."""
    params = dict(conf.params)
    try:
        importlib.import_module("jaxasync.compress").make_compressor(
            conf.name, **with_workers(conf.name, params, num_workers))
    except ValueError as e:
        raise ConfigError(f"algorithm.{key}.params={params}: {e}") from None
    return conf.name, tuple(sorted(params.items()))


def _compressor(spec, conf, num_workers: int) -> tuple | None:
    """``algorithm.compressor`` as the simulator takes it, ``(name, params, error_feedback)``,
    or None; a one-line error for what cannot run."""
    if not _named("compressor", conf, "params or error_feedback",
                  bool(conf.params) or bool(conf.error_feedback)):
        return None
    takes = "compressor" in spec.params          # the algorithm applies it itself (EF21)
    if spec.own_messages and not takes:
        ok = sorted(n for n, s in ALGORITHMS.items() if not s.own_messages or
                    "compressor" in s.params)
        raise ConfigError(f"algorithm.compressor.name={conf.name!r}: algorithm {spec.name!r} "
                          f"decides what its workers send; a compressor goes with "
                          f"{', '.join(ok)}")
    if takes and conf.error_feedback:
        raise ConfigError(f"algorithm.compressor.error_feedback=true: algorithm {spec.name!r} "
                          "is its own error feedback; set it to false")
    return *_trial_compressor("compressor", conf, num_workers), bool(conf.error_feedback)


def _downlink(conf, num_workers: int) -> tuple | None:
    """``algorithm.downlink`` as the simulator takes it, ``(name, params, rule)``, or None;
    a one-line error for what cannot run."""
    if not _named("downlink", conf, "params", bool(conf.params)):
        return None
    rules = importlib.import_module("jaxasync.downlink").RULES
    if conf.rule not in rules:
        raise ConfigError(f"algorithm.downlink.rule={conf.rule!r}: unknown; choose one of: "
                          f"{', '.join(rules)}")
    return *_trial_compressor("downlink", conf, num_workers), conf.rule
