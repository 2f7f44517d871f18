"""How much memory a run will hold, checked against the machine before anything compiles.

A delay bound of a billion steps makes a ring of a billion parameter versions; a run like that
used to compile and then fail inside XLA asking for terabytes. :func:`check_run_fits` adds up
what the run will hold, from the shapes of the simulator's state (``jax.eval_shape`` of the
vmapped ``init``: nothing is allocated) and of the data, and refuses the run with one line
naming the key that drives the size when the total exceeds the memory available:

* the **ring** of D parameter versions (with its per-slot norms and the staleness histogram);
* the **per-worker state**: the optimizer state (error-feedback memories, stored gradients),
  each worker's last-upload iterate, clocks and counters;
* the **parameters** themselves;
* the **gradient rows** of one step (rows x parameters for the gradients, the stale parameters
  gathered from the ring and the messages, per member);
* the **data** on the device (train and test arrays) and the **shard index** (M x the
  largest shard), on a CPU once more on the host;
* the **metric history** kept on the host (evaluation points x members).

Everything but the history and the data is per member: the vmapped members multiply it. The
estimate is a lower bound (it leaves out the model's activations and XLA's temporaries), so a
refused run could not run; one that passes may still be tight.

The memory available is the device's (``device.memory_stats()``: XLA's limit less what is in
use) on an accelerator, and the host's available RAM (``MemAvailable`` of ``/proc/meminfo``,
else ``os.sysconf``) on a CPU.
"""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple

import numpy as np

#: bytes of host memory one evaluation point of one member takes in the history (a dict of
#: about 20 floats, measured with tracemalloc: ~1.5 KB)
HISTORY_ROW_BYTES = 2048


class Part(NamedTuple):
    """One thing the run holds: what, its bytes, and the key (with its value) that sets it."""

    what: str
    nbytes: int
    key: str
    value: Any
    hint: str = ""


def tree_bytes(tree: Any) -> int:
    """Bytes of the arrays (or ``ShapeDtypeStruct``\\ s) of a pytree."""
    import jax

    return sum(int(math.prod(x.shape)) * np.dtype(x.dtype).itemsize
               for x in jax.tree.leaves(tree))


def host_available() -> int | None:
    """The host's available memory in bytes (None: unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available(device: Any = None) -> tuple[int | None, str]:
    """``(bytes, where)``: the memory a run may use on ``device`` (default: the first), and
    what that memory is, in words."""
    import jax

    dev = device if device is not None else jax.devices()[0]
    if dev.platform != "cpu":
        try:
            stats = dev.memory_stats() or {}
        except Exception:  # a backend without memory statistics
            stats = {}
        limit = stats.get("bytes_limit")
        if limit:
            return int(limit) - int(stats.get("bytes_in_use", 0)), \
                f"free memory of the {dev.device_kind}"
    return host_available(), "available RAM"


def fmt_bytes(n: float) -> str:
    """``1.5e12`` -> ``'1.5 TB'`` (decimal units)."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def run_parts(prep: Any, ring: Any) -> list[Part]:
    """What the run of ``prep`` (a :class:`jaxasync.experiment.Prepared`) will hold, part by
    part; ``ring`` is the resolved :class:`jaxasync.experiment.RingDepth`."""
    import jax

    cfg, sim = prep.cfg, prep.simulator
    members = len(prep.members)
    state = jax.eval_shape(jax.vmap(sim.init), prep.keys(), prep.hparams())
    m, rows = cfg.run.num_workers, prep.rows
    param_bytes = tree_bytes(state.params) // members
    n_params = sum(int(math.prod(x.shape[1:])) for x in jax.tree.leaves(state.params))
    d = ring.depth
    data = prep.workload.data
    data_bytes = sum(int(np.asarray(a).nbytes) for a in data)
    index_bytes = int(prep.index.nbytes)
    if jax.devices()[0].platform == "cpu":
        # the host's NumPy arrays and their device copies share the RAM
        data_bytes, index_bytes = 2 * data_bytes, 2 * index_bytes
    sc = prep.sim_config
    chunks = math.ceil(sc.steps / sc.eval_every) + 1
    rows_key = ("run.num_workers", m) if prep.spec.synchronous else \
        ("algorithm.arrivals", prep.sim_config.arrivals)
    return [
        Part(f"the ring of D = {d} versions ({ring.why}) x {n_params} parameters x {members} "
             f"member(s)",
             tree_bytes(state.ring) + tree_bytes(state.norms)
             + tree_bytes(state.counts.staleness_hist), ring.key, _value_of(cfg, ring.key),
             "lower it" if ring.key == "run.ring_size" else
             f"lower {ring.key}, or set run.ring_size (staler arrivals are dropped)"),
        Part(f"the per-worker and optimizer state of M = {m} workers x {members} member(s)",
             tree_bytes(state.opt_state) + tree_bytes(state.ref_params)
             + tree_bytes((state.finish, state.worker_version, state.speed, state.draws)),
             "run.num_workers", m, "use fewer workers, or spread them over devices "
                                   "(run.mesh_workers)"),
        Part(f"{rows} gradient rows per step x {n_params} parameters x {members} member(s) "
             f"(gradients, stale parameters, messages)",
             3 * rows * param_bytes * members, *rows_key, f"lower {rows_key[0]}"),
        Part(f"the parameters ({n_params}) x {members} member(s)", tree_bytes(state.params),
             "workload.name", cfg.workload.name, "use a smaller model, or fewer members"),
        Part("the data on the device (train and test sets)", data_bytes,
             "workload.name", cfg.workload.name, "use a smaller data set"),
        Part(f"the shard index ({prep.index.shape[0]} row(s) x {prep.index.shape[1]} examples, "
             f"workload.partition={cfg.workload.partition})", index_bytes,
             "run.num_workers", m, "use fewer workers"),
        Part(f"the metric history ({chunks} evaluation points x {members} member(s))",
             chunks * members * HISTORY_ROW_BYTES,
             *(("run.eval_every", cfg.run.eval_every) if cfg.run.eval_every is not None
               else ("run.steps", sc.steps)), "evaluate less often"),
    ]


def _value_of(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        if isinstance(node, dict):
            node = node.get(part)
        else:
            node = getattr(node, part, None)
    return node


def check_run_fits(prep: Any, ring: Any, limit: tuple[int | None, str] | None = None) -> None:
    """Refuses a run whose estimated memory exceeds what the machine has.

    Raises:
      ConfigError: ``"<key>=<value>: the run needs at least <total>, more than the <free> of
        <where>: <the largest part> takes <bytes>; ..."``.
    """
    from jaxasync.config import ConfigError

    parts = run_parts(prep, ring)
    total = sum(p.nbytes for p in parts)
    free, where = limit if limit is not None else available()
    devices = prep.cfg.run.mesh_workers
    if free is None or total <= free * devices:
        return
    where = where + (f" x {devices} devices" if devices > 1 else "")
    big = max(parts, key=lambda p: p.nbytes)
    value = "" if big.value is None else f"={big.value}"
    raise ConfigError(f"{big.key}{value}: the run needs at least {fmt_bytes(total)}, more "
                      f"than the {fmt_bytes(free * devices)} of {where}: {big.what} takes "
                      f"{fmt_bytes(big.nbytes)}; {big.hint}")


def check_host_bytes(nbytes: float, key: str, value: Any, what: str) -> None:
    """Refuses to allocate ``nbytes`` of host memory (a generated data set) beyond what is
    available. Raises ``ValueError("<key>=<value>: ...")`` (a factory's error)."""
    free = host_available()
    if free is not None and nbytes > free:
        raise ValueError(f"{key}={value}: {what} would take {fmt_bytes(nbytes)} of host "
                         f"memory, more than the {fmt_bytes(free)} available")
