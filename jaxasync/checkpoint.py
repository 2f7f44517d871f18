"""Checkpoint and resume (orbax), config hashes, finished runs, determinism.

What is saved
-------------
A run with an output directory and ``run.checkpoint_every = N > 0`` saves, every N
chunks, everything the next chunk depends on: the :class:`~jaxasync.sim.SimState` of
all members (parameters, ring of versions, optimizer state with its communication
counters, clocks, per-worker versions and speeds, counters, PRNG keys) and the host
metric history, into ``<out_dir>/checkpoint/<chunks done>/``. The data are not saved:
they are rebuilt from the config (every generator and loader is seeded). Orbax writes a
checkpoint into a temporary directory and renames it once complete, so a process killed
during a save (even with SIGKILL) leaves the previous checkpoint intact; the temporary
directory is removed at the next start. Only the latest checkpoint is kept, and the
directory is deleted once ``run.json`` is written.

Starting again with the same output directory (``out_dir=...`` on the command line, or
a fixed ``hydra.sweep.dir`` for a multirun, whose job directories are then the same)
------------------------------------------------------------------------------------------
* ``run.json`` of the same config (same :func:`config_hash`): the run is finished, it is
  skipped and its record reused; a multirun rerun skips its finished members;
* a checkpoint of the same config: the run resumes from it and ends with the metrics of an
  uninterrupted run, bit for bit (on CPU; see below);
* ``run.json`` or a checkpoint of a *different* config: a :class:`ConfigError` (exit
  status 2), never a silent overwrite: one output directory holds one config's result.
  Choose another directory, or set ``run.resume=false`` to discard them and start afresh.

The hash covers the whole resolved config (and the content of a delay trace file) except
what cannot change a result: ``out_dir``, ``plot``, ``traceback``,
``run.checkpoint_every`` and ``run.resume``, and keys added later while they are at a value
that changes nothing (:data:`NEUTRAL`: no ``algorithm.lr_decay`` boundaries,
``run.eval_grad_norm=false``), so older results keep their hash. It does not cover the code: after changing
the simulator or an algorithm, rerun into a fresh directory (or with ``run.resume=false``).

Determinism
-----------
The same config and seed give bitwise-identical metrics on CPU, across processes and
across a kill and resume (every random draw comes from the members' PRNG keys, and the
data generators and loaders are seeded). On GPU, XLA may pick non-deterministic kernels
(atomics in scatter-adds and reductions) and autotune kernels differently in each
process; for reproducible GPU runs set, before JAX starts::

    XLA_FLAGS=--xla_gpu_deterministic_ops=true jaxasync ...

``--xla_gpu_deterministic_ops`` guarantees run-to-run determinism: XLA uses deterministic
implementations (or fails to compile) and does not autotune. The lighter
``--xla_gpu_exclude_nondeterministic_ops=true`` only excludes non-deterministic ops and
keeps autotuning (add ``--xla_gpu_autotune_level=0`` to turn that off too). Either way,
results repeat on the same GPU model with the same JAX and driver versions, at some cost
in speed; another GPU model or version gives slightly different numbers.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxasync.config import Config, ConfigError

#: config keys that cannot change a run's result (left out of the hash)
UNHASHED = ("out_dir", "plot", "traceback", "run.checkpoint_every", "run.resume",
            # which process this is, and how they meet: every process of a run has one hash
            "run.distributed", "run.coordinator", "run.num_processes", "run.process_id")
#: keys added after result files existed, left out of the hash while they change nothing, so
#: those results (and their hashes) stay valid: key -> "this value changes nothing"
NEUTRAL = {
    "algorithm.lr_decay": lambda v: not v["epochs"] and not v["steps"],
    "run.eval_grad_norm": lambda v: not v,
    "algorithm.compressor": lambda v: v["name"] == "none",
    "workload.sampling": lambda v: v == "replacement",
    "workload.init": lambda v: v == "flax",
    "run.members": lambda v: v == "auto",
}

CHECKPOINT_DIR = "checkpoint"
FORMAT = 3  # bumped when what a checkpoint holds changes (2: SimState.data_key, draws;
#            3: top-k error feedback keeps the sent vector and its selection)


def config_hash(cfg: Config) -> str:
    """A short hex digest of everything in ``cfg`` that can change the result."""
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    for key in (*UNHASHED, *NEUTRAL):
        *parents, last = key.split(".")
        node = d
        for p in parents:
            node = node[p]
        if key in UNHASHED or NEUTRAL[key](node.get(last)):
            node.pop(last, None)
    trace = cfg.delay.trace_file
    if cfg.delay.kind == "trace" and trace and Path(trace).is_file():
        d["delay"]["trace_sha256"] = hashlib.sha256(Path(trace).read_bytes()).hexdigest()
    text = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _mismatch(what: Path, found: str | None, want: str) -> ConfigError:
    found_s = f"config hash {found}" if found else "no config hash"
    return ConfigError(
        f"out_dir={str(what.parent)!r}: holds {what.name} of a different config ({found_s}, this "
        f"config: {want}); use another out_dir, or run.resume=false to discard it and start afresh")


def finished_record(out_dir: Path, digest: str) -> dict | None:
    """The record in ``out_dir/run.json`` if it is a finished run of this config.

    Raises:
      ConfigError: ``run.json`` belongs to a different config.
    """
    path = Path(out_dir) / "run.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"out_dir={str(out_dir)!r}: run.json cannot be read ({e}); "
                          f"run.resume=false starts afresh") from None
    found = record.get("config_hash") if isinstance(record, dict) else None
    if found != digest:
        raise _mismatch(path, found, digest)
    # killed between writing run.json and removing the checkpoint: nothing to resume
    if jax.process_index() == 0:   # (several processes: process 0 alone writes)
        shutil.rmtree(Path(out_dir) / CHECKPOINT_DIR, ignore_errors=True)
    return record


def discard(out_dir: Path) -> None:
    """Removes a previous result and checkpoint from ``out_dir`` (``run.resume=false``)."""
    out_dir = Path(out_dir)
    (out_dir / "run.json").unlink(missing_ok=True)
    shutil.rmtree(out_dir / CHECKPOINT_DIR, ignore_errors=True)


def _quiet_orbax() -> None:
    import logging

    for name in ("absl", "orbax", "orbax.checkpoint"):
        logging.getLogger(name).setLevel(logging.ERROR)


class Checkpoints:
    """The checkpoints of one run in ``<out_dir>/checkpoint`` (an orbax CheckpointManager).

    Args:
      out_dir: the run's output directory.
      digest: the run's :func:`config_hash`.
      every: save every ``every`` chunks (0: never save, only resume).
      eval_every: server steps per chunk (to count chunks from the history).
      n_chunks: chunks in the whole run (the last one is not saved: ``run.json`` follows).
    """

    def __init__(self, out_dir: Path, digest: str, every: int, eval_every: int, n_chunks: int):
        import orbax.checkpoint as ocp

        _quiet_orbax()
        self.directory = Path(out_dir).absolute() / CHECKPOINT_DIR
        self.digest, self.every = digest, every
        self.eval_every, self.n_chunks = eval_every, n_chunks
        self._ocp = ocp
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=1, create=every > 0,
                                                 cleanup_tmp_directories=True),
        )

    @staticmethod
    def exists(out_dir: Path) -> bool:
        return (Path(out_dir) / CHECKPOINT_DIR).is_dir()

    def latest(self) -> int | None:
        """Chunks done at the latest complete checkpoint (None: none)."""
        return self._manager.latest_step()

    def restore(self, sim, keys, hparams, mesh=None) -> tuple[Any, list[list[dict]] | None]:
        """``(state, history)`` of the latest checkpoint, or ``(None, None)``.

        The state is restored into the exact structure, shapes and dtypes of a fresh
        ``vmap(sim.init)(keys, hparams)``; with a ``mesh``, straight into the run's shardings
        (each process reads its own shards: several processes restore together).

        Raises:
          ConfigError: the checkpoint belongs to another config, or cannot be read.
        """
        ocp = self._ocp
        step = self.latest()
        if step is None:
            return None, None
        where = self.directory / str(step)
        try:
            meta = self._manager.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore())).meta
        except Exception as e:  # any orbax failure: name the directory
            raise ConfigError(f"out_dir={str(self.directory.parent)!r}: checkpoint {where} "
                              f"cannot be read ({type(e).__name__}); run.resume=false starts "
                              f"afresh") from None
        if meta.get("config_hash") != self.digest:
            raise _mismatch(self.directory, meta.get("config_hash"), self.digest)
        if meta.get("format") != FORMAT:
            raise ConfigError(f"out_dir={str(self.directory.parent)!r}: checkpoint {where} has "
                              f"format {meta.get('format')!r}, this jaxasync reads {FORMAT}; "
                              f"run.resume=false starts afresh")
        shapes = jax.eval_shape(jax.vmap(sim.init), keys, hparams)
        if mesh is None:
            target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
        else:
            from jaxasync.mesh import state_shardings

            target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                  shapes, state_shardings(shapes, mesh, sim.cfg.num_workers))
        try:
            state = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target))).state
        except Exception as e:  # a state of another structure (older code)
            raise ConfigError(f"out_dir={str(self.directory.parent)!r}: checkpoint {where} does "
                              f"not match this run's state ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); run.resume=false "
                              f"starts afresh") from None
        if mesh is None:
            state = jax.tree.map(lambda x, s: jax.numpy.asarray(x, s.dtype), state, shapes)
        return state, meta["history"]

    def chunks_done(self, history: list[list[dict]]) -> int:
        return max(h[-1]["step"] for h in history) // self.eval_every

    def on_chunk(self, state, history: list[list[dict]]) -> None:
        """``sim.run``'s callback: saves every ``every`` chunks (asynchronously).

        The state is copied first (to the host; several processes: on the devices, each
        process writing its own shards), so the next chunk may donate its buffers while
        orbax writes. Every process of a run calls this.
        """
        done = self.chunks_done(history)
        if self.every <= 0 or done % self.every or done >= self.n_chunks:
            return
        ocp = self._ocp
        spread = any(isinstance(x, jax.Array) and not x.is_fully_addressable
                     for x in jax.tree.leaves(state))
        host = jax.tree.map(jax.numpy.copy, state) if spread else jax.device_get(state)
        meta = {"format": FORMAT, "config_hash": self.digest, "chunks": done,
                "history": history}
        self._manager.save(done, args=ocp.args.Composite(
            state=ocp.args.StandardSave(host), meta=ocp.args.JsonSave(_plain(meta))))

    def close(self) -> None:
        """Waits for a save in flight (idempotent)."""
        if self._manager is not None:
            self._manager.wait_until_finished()
            self._manager.close()
            self._manager = None

    def remove(self) -> None:
        """Deletes the checkpoints (once ``run.json`` is written; process 0)."""
        self.close()
        if jax.process_index() == 0:
            shutil.rmtree(self.directory, ignore_errors=True)


def _plain(o: Any) -> Any:
    """A deep, JSON-ready copy (NumPy scalars to Python; NaN and inf stay floats).

    A copy, because orbax may serialise in the background while the run appends rows.
    """
    if isinstance(o, dict):
        return {str(k): _plain(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_plain(v) for v in o]
    if isinstance(o, np.generic):
        return o.item()
    return o
