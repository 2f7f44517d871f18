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
what cannot change a result: ``out_dir``, ``plot``, ``traceback``, ``imports``,
``run.checkpoint_every`` and ``run.resume``, and keys added later while they are at a value
that changes nothing (:data:`NEUTRAL`: no ``algorithm.lr_decay`` boundaries,
``run.eval_grad_norm=false``), so older results keep their hash.

The code is compared separately (:func:`code_identity`, recorded as ``code`` in ``run.json``
and in each checkpoint): jaxasync's version; when jaxasync runs from a git checkout, the git
tree of its package directory (``git rev-parse HEAD:jaxasync``: it changes with every commit
that changes the package, not with one that only touches the README or the tests) and a hash
of the uncommitted changes there (tracked and untracked files); and a hash of the source of
the algorithm's registered factory (of its whole module for an algorithm defined outside
jaxasync, where the rule usually sits next to the factory and git does not look). A finished
run of the same config but other code is run again, and one line names what changed; a
checkpoint of other code is not resumed (the result would mix two programs, reproducible by
neither): it is discarded, with the same line, and the run starts afresh.

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

import functools
import hashlib
import inspect
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxasync.config import Config, ConfigError
from jaxasync.resources import checkout

#: config keys that cannot change a run's result (left out of the hash)
UNHASHED = ("out_dir", "plot", "traceback", "imports", "logger", "run.checkpoint_every",
            "run.resume", "run.quiet", "run.compile_cache", "run.compile_cache_dir",
            # which process this is, and how they meet: every process of a run has one hash
            # (run.distributed stays hashed, as it was before these keys came)
            "run.coordinator", "run.num_processes", "run.process_id")
#: keys added after result files existed, left out of the hash while they change nothing, so
#: those results (and their hashes) stay valid: key -> "this value changes nothing"
NEUTRAL = {
    "algorithm.lr_decay": lambda v: not v["epochs"] and not v["steps"],
    "run.eval_grad_norm": lambda v: not v,
    "algorithm.compressor": lambda v: v["name"] == "none",
    "algorithm.downlink": lambda v: v["name"] == "none",
    "workload.sampling": lambda v: v == "replacement",
    "run.select": lambda v: v == "none",
    "delay.times": lambda v: v is None,
    "delay.times_seed": lambda v: v == 0,
    "delay.noise": lambda v: v == "none",
    "delay.noise_scale": lambda v: v == 1.0,
    "delay.noise_p": lambda v: v == 0.5,
    "delay.noise_alpha": lambda v: v == 2.0,
    "delay.trace_columns": lambda v: v == 1,
    "delay.bandwidths": lambda v: v is None,
    "workload.init": lambda v: v == "flax",
    "target": lambda v: v is None,
    "run.members": lambda v: v == "auto",
}

CHECKPOINT_DIR = "checkpoint"
FORMAT = 4  # bumped when what a checkpoint holds changes (2: SimState.data_key, draws;
#            3: top-k error feedback keeps the sent vector and its selection;
#            4: SimState.events, the arrival index and the event-model counters)


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
        try:
            d["delay"]["trace_sha256"] = hashlib.sha256(Path(trace).read_bytes()).hexdigest()
        except OSError:  # unreadable: resolving the config says so, naming the key
            pass
    text = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- the code


@functools.cache
def _source_state() -> dict | None:
    """The git tree of the package directory and a hash of its uncommitted changes, when
    jaxasync runs from a git checkout (None otherwise). Once per process: the code that runs
    is the code imported."""
    root = checkout()
    if root is None or not (root / ".git").exists():
        return None

    def git(*args: str) -> bytes:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, timeout=20,
                              check=True).stdout

    try:
        tree = git("rev-parse", "HEAD:jaxasync").decode().strip()
        diff = git("diff", "HEAD", "--no-ext-diff", "--binary", "--", "jaxasync")
        untracked = sorted(n for n in git("ls-files", "--others", "--exclude-standard", "-z",
                                          "--", "jaxasync").split(b"\0") if n)
    except (OSError, subprocess.SubprocessError):
        return None
    changes = None
    if diff or untracked:
        h = hashlib.sha256(diff)
        for name in untracked:
            h.update(name + b"\0" + (root / name.decode()).read_bytes())
        changes = h.hexdigest()[:16]
    return {"tree": tree[:16], "uncommitted": changes}


def _factory_hash(algorithm: str) -> str | None:
    """sha256 (16 hex digits) of the registered factory's source; of its whole module when it
    is defined outside jaxasync (None: no source to read, e.g. defined interactively)."""
    from jaxasync.algorithms import ALGORITHMS

    spec = ALGORITHMS.get(algorithm)
    if spec is None:
        return None
    module = inspect.getmodule(spec.factory)
    inside = module is not None and module.__name__.split(".")[0] == "jaxasync"
    try:
        text = inspect.getsource(spec.factory if inside or module is None else module)
    except (OSError, TypeError):
        return None
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def code_identity(algorithm: str) -> dict:
    """What code produces a run of ``algorithm``: ``{"jaxasync": version, "git": {"tree",
    "uncommitted"} or None, "algorithm": factory source hash}`` (see the module docstring)."""
    from jaxasync import __version__

    return {"jaxasync": __version__, "git": _source_state(), "algorithm": _factory_hash(algorithm)}


def code_changes(found: dict | None, now: dict, keys=("jaxasync", "git", "algorithm")
                 ) -> list[str]:
    """What differs between the code of a stored result (``found``) and this code (``now``),
    in words (empty: the same code); only ``keys`` are compared."""
    if not isinstance(found, dict):
        return ["its code is not recorded (a result of an older jaxasync)"]
    out = []
    if "jaxasync" in keys and found.get("jaxasync") != now["jaxasync"]:
        out.append(f"jaxasync {found.get('jaxasync')} -> {now['jaxasync']}")
    old, new = found.get("git") or {}, now["git"] or {}
    if "git" in keys and old != new:
        if old.get("tree") != new.get("tree"):
            out.append(f"package source: git tree {old.get('tree') or 'none'} -> "
                       f"{new.get('tree') or 'none'}")
        if old.get("uncommitted") != new.get("uncommitted"):
            out.append(f"uncommitted changes {old.get('uncommitted') or 'none'} -> "
                       f"{new.get('uncommitted') or 'none'}")
    if "algorithm" in keys and found.get("algorithm") != now["algorithm"]:
        out.append("the algorithm's source")
    return out


def _mismatch(what: Path, found: str | None, want: str) -> ConfigError:
    found_s = f"config hash {found}" if found else "no config hash"
    return ConfigError(
        f"out_dir={str(what.parent)!r}: holds {what.name} of a different config ({found_s}, this "
        f"config: {want}); use another out_dir, or run.resume=false to discard it and start afresh")


def finished_record(out_dir: Path, digest: str, code: dict | None = None,
                    say=None) -> dict | None:
    """The record in ``out_dir/run.json`` if it is a finished run of this config and, when
    ``code`` (:func:`code_identity`) is given, of this code. A run of other code gives None
    and ``say`` (print, say) gets one line naming what changed; it is left in place until the
    new run replaces it.

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
    changed = code_changes(record.get("code"), code) if code is not None else []
    if changed:
        if say is not None:
            say(f"{out_dir}: finished run of this config by other code ({'; '.join(changed)}); "
                f"running it again")
        return None
    # killed between writing run.json and removing the checkpoint: nothing to resume
    if jax.process_index() == 0:   # (several processes: process 0 alone writes)
        shutil.rmtree(Path(out_dir) / CHECKPOINT_DIR, ignore_errors=True)
    return record


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
      code: the run's :func:`code_identity` (saved; a checkpoint of other code is discarded).
      say: where the line naming a code change goes (``print``; None: nowhere).
    """

    def __init__(self, out_dir: Path, digest: str, every: int, eval_every: int, n_chunks: int,
                 on_first_save: Callable[[], None] | None = None, code: dict | None = None,
                 say=None):
        import orbax.checkpoint as ocp

        _quiet_orbax()
        self.directory = Path(out_dir).absolute() / CHECKPOINT_DIR
        self.digest, self.every = digest, every
        self.eval_every, self.n_chunks = eval_every, n_chunks
        self._on_first_save = on_first_save
        self.code, self._say = code, say
        self._ocp = ocp
        self._manager = self._open()

    def _open(self):
        ocp = self._ocp
        return ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=1, create=self.every > 0,
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
        changed = code_changes(meta.get("code"), self.code) if self.code is not None else []
        if changed:
            if self._say is not None:
                self._say(f"{self.directory}: a checkpoint of other code ({'; '.join(changed)})"
                          f"; discarded, the run starts afresh")
            self.remove()
            self._manager = self._open()
            return None, None
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
        # several processes: the state is spread over them; orbax writes each one's shards
        spread = any(isinstance(x, jax.Array) and not x.is_fully_addressable
                     for x in jax.tree.leaves(state))
        host = jax.tree.map(jax.numpy.copy, state) if spread else jax.device_get(state)
        meta = {"format": FORMAT, "config_hash": self.digest, "code": self.code,
                "chunks": done, "history": history}
        try:
            self._manager.save(done, args=ocp.args.Composite(
                state=ocp.args.StandardSave(host), meta=ocp.args.JsonSave(_plain(meta))))
            if self._on_first_save is not None:  # once: wait until it is complete on disk
                self._manager.wait_until_finished()
                self._on_first_save()
                self._on_first_save = None
        except Exception as e:  # a full disk, a permission changed: the run goes on
            self._give_up(e, f"after chunk {done}")

    def _give_up(self, e: Exception, which: str) -> None:
        """A checkpoint could not be written: say so in one line and save no more (the run
        itself goes on; its outputs are written, or go to a fallback directory)."""
        import sys

        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"jaxasync: the checkpoint {which} in {self.directory} could not be "
              f"written ({type(e).__name__}: {why[:200]}); the run goes on without "
              f"checkpoints", file=sys.stderr, flush=True)
        self.every = 0

    def close(self) -> None:
        """Waits for a save in flight and closes the orbax manager (idempotent; called on
        every path, so no orbax thread outlives the run)."""
        manager, self._manager = self._manager, None
        if manager is None:
            return
        try:
            manager.wait_until_finished()
        except Exception as e:  # an asynchronous save that failed
            self._give_up(e, "in flight")
        finally:
            manager.close()

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
