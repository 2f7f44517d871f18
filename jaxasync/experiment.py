"""One experiment: validate a config, build the simulator, run every member, report.

Used by the Hydra CLI, the leaderboard and the tests alike::

    from jaxasync.experiment import run_experiment
    result = run_experiment({"algorithm": {"name": "asgd", "params": {"learning_rate": 0.05}},
                             "workload": {"name": "mnist1d_mlp"}, "run": {"gradients": 2000}})

A *member* is one seed with one value of every swept numeric parameter; all members
of an experiment run as one vmapped, jitted program.

The four stages that prepare a run (``prepare(cfg) = build(load(resolve(cfg)))`` and
``validate``) are in :mod:`jaxasync.stages`; their names are importable from here.
"""

from __future__ import annotations

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
import numpy as np

from jaxasync import report
from jaxasync.checks import _distributed
from jaxasync.config import to_config
from jaxasync.sim import put_data, run
from jaxasync.stages import (  # noqa: F401  (the four stages, re-exported)
    Loaded,
    Prepared,
    Resolved,
    RingDepth,
    load,
    prepare,
    resolve,
    validate,
)

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


def run_experiment(cfg: Any, out_dir: str | os.PathLike | None = None, *,
                   progress: bool = True, workload_factory: Callable | None = None) -> dict:
    """Validates, runs all members as one program, writes outputs, returns the run record.

    The record (also written as ``run.json`` when ``out_dir`` is given) holds the
    resolved config, per-member metric histories, counters, targets reached, the
    staleness histogram, versions, device, git revision and timings.

    With ``out_dir`` (see :mod:`jaxasync.checkpoint` and :mod:`jaxasync.outputs_dir`): a
    finished ``run.json`` of the same config is reused (the run is skipped), a checkpoint of
    the same config is resumed, and ``run.checkpoint_every = N > 0`` saves the state every N
    chunks. The config is checked completely (data and memory included) before the directory
    is touched; then it is created, locked against a second run and probed for writing, all
    before anything compiles. ``run.resume=false`` moves an earlier result aside until this
    run writes its first result. Outputs that cannot be written there go to a fallback
    directory (one line says where).

    Several processes (:mod:`jaxasync.mesh`): every process calls this with the same config
    and ``out_dir`` and gets the same record; process 0 alone locks the directory, prints the
    progress and writes the results (the others print one line and write nothing but their
    shards of the checkpoints, which orbax writes and reads on every process).
    """
    from jaxasync import checkpoint as ckpt
    from jaxasync import compile_cache, trackers
    from jaxasync.mesh import barrier, is_writer
    from jaxasync.outputs_dir import OutputDir, as_path
    from jaxasync.progress import Progress

    t_start = time.perf_counter()
    cfg_obj = to_config(cfg)
    _distributed(cfg_obj.run)                  # before anything asks JAX for its devices
    out, writer = as_path(out_dir), is_writer()
    digest = ckpt.config_hash(cfg_obj)
    name = cfg_obj.algorithm.name
    shown = Progress(name, quiet=not progress or cfg_obj.run.quiet or not writer)
    code = ckpt.code_identity(name)   # (what the cache of finished runs compares)
    if out is not None and cfg_obj.run.resume:
        done = _finished(out, digest, code, shown)
        if done is not None:
            return done
    prep = prepare(cfg_obj, workload_factory)
    if progress and not writer:
        _announce_process(name)
    trackers.tracker_class(cfg_obj)   # (a missing extra: an error before the directory)
    compile_cache.configure_run(cfg_obj.run)
    if out is None:
        return _execute(prep, None, digest, code, shown, t_start)
    with OutputDir(out, progress=progress, writer=writer) as target:
        if cfg_obj.run.resume:   # (finished meanwhile, or an earlier result put back)
            done = _finished(out, digest, code, shown)
            if done is not None:
                return done
        else:
            target.set_aside()
        barrier("jaxasync: out_dir locked and ready")   # (process 0 locked it, set aside)
        record = _execute(prep, target, digest, code, shown, t_start)
        barrier("jaxasync: results written")
        return record


def _finished(out: Path, digest: str, code: dict, shown) -> dict | None:
    """A finished ``run.json`` of this config and code in ``out`` (None: none, or of other
    code, which is then said). Several processes: process 0 decides, the others read it."""
    from jaxasync import checkpoint as ckpt
    from jaxasync.mesh import is_writer, same_text

    done = ckpt.finished_record(out, digest, code, shown.info) if is_writer() else None
    if same_text("done" if done is not None else "") and done is None:
        done = ckpt.finished_record(out, digest, code)   # (a process other than 0)
    if done is not None:
        shown.info(f"{out}: finished run of this config (hash {digest}) found; skipped")
    return done


def _execute(prep: Prepared, target, digest: str, code: dict, shown,
             t_start: float) -> dict:
    """Runs a prepared experiment (resuming and saving checkpoints in ``target``, an open
    :class:`jaxasync.outputs_dir.OutputDir`, if given), reports to the configured tracker and
    writes its outputs there (process 0)."""
    from jaxasync import checkpoint as ckpt
    from jaxasync import trackers
    from jaxasync.mesh import is_writer

    cfg = prep.cfg
    shown.info(_describe(prep))
    keys, hparams = prep.keys(), prep.hparams()
    checkpoints, state, history, record, tracker = None, None, None, None, None
    every = cfg.run.checkpoint_every
    try:
        if target is not None and (every > 0 or ckpt.Checkpoints.exists(target.path)):
            checkpoints = _checkpoints(prep, target, digest, code, shown)
            state, history = checkpoints.restore(prep.simulator, keys, hparams, mesh=prep.mesh)
            if state is not None:
                shown.info(f"resuming from {checkpoints.directory} after chunk "
                           f"{checkpoints.chunks_done(history)}")
        resumed = checkpoints.chunks_done(history) if history is not None else None
        if is_writer():
            tracker = trackers.open_tracker(cfg, None if target is None else target.path,
                                            cfg.algorithm.name if target is None
                                            else target.path.name)
        if tracker is not None:
            tracker.start(report.plain_config(cfg), prep.members)
            shown.on_chunk = tracker.log
        data = put_data(prep.workload, prep.index, prep.size)
        shown.compiling()
        try:
            result = run(prep.simulator, data, keys, hparams, progress=shown,
                         state=state, history=history,
                         on_chunk=checkpoints.on_chunk if checkpoints is not None else None,
                         mesh=prep.mesh, members=cfg.run.members)
        finally:
            shown.close()
        record = report.make_record(prep, result, provenance(), time.perf_counter() - t_start)
        record["config_hash"] = digest
        record["code"] = code
        record["timing"]["resumed_after_chunk"] = resumed
    finally:
        if checkpoints is not None:
            checkpoints.close()
        if tracker is not None:
            tracker.finish(record)
    if target is not None:
        _write(record, cfg, target, digest, checkpoints)
    return record


def _describe(prep: Prepared) -> str:
    """The run's first line: workload, sizes, members, delay model."""
    procs = f" processes={jax.process_count()}" if jax.process_count() > 1 else ""
    return (f"{prep.workload.name}: M={prep.sim_config.num_workers} "
            f"K={prep.rows} D={prep.sim_config.ring_size} steps={prep.sim_config.steps} "
            f"members={len(prep.members)} delay={prep.delay.kind}{procs}")


def _checkpoints(prep: Prepared, target, digest: str, code: dict, shown):
    """The run's :class:`jaxasync.checkpoint.Checkpoints` in ``target`` (opened, not read)."""
    from jaxasync import checkpoint as ckpt

    sc = prep.sim_config
    return ckpt.Checkpoints(target.path, digest, prep.cfg.run.checkpoint_every, sc.eval_every,
                            math.ceil(sc.steps / sc.eval_every),
                            on_first_save=target.first_result, code=code, say=shown.info)


def _write(record: dict, cfg, target, digest: str, checkpoints) -> None:
    """Writes the run's outputs in ``target`` (or its fallback, then said in the record);
    the checkpoints go once the results are where they belong."""
    where = target.write(lambda d: report.write_outputs(record, d, plot=cfg.plot),
                         label=f"{cfg.algorithm.name}-{digest}")
    if where != target.path:
        record["written_to"] = str(where)
    elif checkpoints is not None:
        checkpoints.remove()


def _announce_process(name: str) -> None:
    """What a process other than 0 prints: which one it is (process 0 prints the progress)."""
    print(f"[{name}] process {jax.process_index()}/{jax.process_count()}: "
          f"{jax.local_device_count()} of {jax.device_count()} devices; process 0 prints "
          f"the progress and writes the results", flush=True)
