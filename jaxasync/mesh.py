"""The worker axis on a device mesh: the same program on one CPU, N devices or many hosts.

With ``run.mesh_workers = N`` the simulator's worker axis is the mesh axis ``"workers"``:

* per-worker state (clocks, versions, speeds, last-upload iterates, and every optimizer-state
  leaf with a leading M axis, e.g. error-feedback memories) is sharded along M;
* the ring of past versions is sharded along its depth D (each device holds D/N versions);
* the per-step worker computation (``vmap`` over arriving rows) carries
  ``spmd_axis_name="workers"``, so each device computes the gradients of its own rows;
* the data shards' index table is sharded along M; the data themselves are replicated.

XLA's SPMD partitioner inserts the collectives (the stale-parameter gather across ring
shards, the aggregation over rows).

Several processes (hosts)
-------------------------
:func:`initialize_distributed` starts ``jax.distributed`` before anything else uses JAX, from
(first found) the config keys ``run.coordinator`` (``host:port`` of process 0),
``run.num_processes`` and ``run.process_id``; the environment variables
``JAX_COORDINATOR_ADDRESS`` (JAX's own), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``; or a Slurm
(``srun``) or Open MPI (``mpirun``) launch, which JAX detects (``run.distributed=true``).
Afterwards ``jax.devices()`` spans every process and the same mesh code applies: every process
runs the same program on its own devices (CPU processes exchange data through JAX's CPU
collectives, gloo). Every process computes every metric (they are replicated); process 0
alone writes results (:func:`is_writer`); checkpoints are written by every process, each its
own shards of the state (orbax multi-host), and restored the same way.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "workers"


def make_mesh(n: int) -> Mesh:
    """A 1-D mesh of the first ``n`` devices along the axis ``"workers"``."""
    devices = jax.devices()
    if n > len(devices):
        raise ValueError(f"run.mesh_workers={n}: only {len(devices)} devices are visible")
    return Mesh(np.asarray(devices[:n]), (AXIS,))


#: environment variables naming the processes of a run, besides JAX_COORDINATOR_ADDRESS
ENV_NUM_PROCESSES, ENV_PROCESS_ID = "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"
#: a launch JAX detects by itself (Slurm's srun, Open MPI 4's mpirun)
CLUSTER_VARS = ("SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri")


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, detect: bool = False) -> bool:
    """Starts ``jax.distributed`` once per process; True when this is a multi-process run.

    Each argument left None is read from the environment (``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``). With none of them, nothing happens unless
    ``detect`` (``run.distributed=true``): then JAX reads a Slurm (``srun``) or Open MPI 4
    (``mpirun``) launch from its environment. Open MPI's ``OMPI_COMM_WORLD_SIZE`` and
    ``OMPI_COMM_WORLD_RANK`` fill in the number and id of the processes (Open MPI 5, which JAX
    does not detect, then needs only ``run.coordinator``). Must run before anything else uses
    JAX; a second call does nothing.

    Raises:
      ValueError: a bad value or a missing one (named).
    """
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    env = os.environ
    coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    if (coordinator, num_processes, process_id) == (None, None, None) and not detect:
        return False
    if num_processes is None:
        num_processes = _env_int("OMPI_COMM_WORLD_SIZE")
    if process_id is None:
        process_id = _env_int("OMPI_COMM_WORLD_RANK")
    if coordinator is not None and (":" not in coordinator
                                    or not coordinator.rsplit(":", 1)[1].isdigit()):
        raise ValueError(f"run.coordinator={coordinator!r}: must be host:port (process 0's "
                         f"address and a free port, e.g. 127.0.0.1:12345)")
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"run.num_processes={num_processes!r}: must be >= 1")
    if process_id is not None and not (0 <= process_id < (num_processes or process_id + 1)):
        raise ValueError(f"run.process_id={process_id!r}: must be in [0, run.num_processes="
                         f"{num_processes})")
    if coordinator is None and not any(v in env for v in CLUSTER_VARS):
        raise ValueError("run.coordinator: missing; give process 0's host:port (or "
                         "JAX_COORDINATOR_ADDRESS), or launch with Slurm's srun or Open MPI's "
                         "mpirun and run.distributed=true")
    jax.distributed.initialize(coordinator, num_processes, process_id)
    return jax.process_count() > 1


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: must be an integer") from None


def is_writer() -> bool:
    """Whether this process writes results: process 0 (every process of a one-process run)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process got here (nothing to wait for with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def same_text(text: str, size: int = 4096) -> str:
    """Process 0's ``text`` on every process (a directory name with a timestamp, say)."""
    if jax.process_count() == 1:
        return text
    from jax.experimental import multihost_utils

    raw = text.encode()
    if len(raw) > size:
        raise ValueError(f"same_text: {len(raw)} bytes, more than {size}")
    buf = np.zeros(size + 4, np.uint8)
    buf[:4] = np.frombuffer(np.uint32(len(raw)).tobytes(), np.uint8)
    buf[4:4 + len(raw)] = np.frombuffer(raw, np.uint8)
    out = np.asarray(multihost_utils.broadcast_one_to_all(buf))
    n = int(np.frombuffer(out[:4].tobytes(), np.uint32)[0])
    return out[4:4 + n].tobytes().decode()


def put_global(tree: Any, shardings: Any) -> Any:
    """``jax.device_put`` onto shardings that may span several processes.

    Every process passes the same full value (host or local-device arrays); each keeps the
    shards its devices hold (``jax.make_array_from_callback``). ``shardings``: one sharding
    for every leaf, or a tree of them. Arrays already spread over the processes are resharded.
    """
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree)
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def put(x, sharding):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(x, sharding)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree, shardings)


def _spec(leaf: Any, axis: int | None, n: int) -> P:
    """Shards ``axis`` of a member-stacked leaf if it divides evenly, else replicates."""
    shape = np.shape(leaf)
    if axis is None or len(shape) <= axis or shape[axis] % n:
        return P()
    return P(*([None] * axis), AXIS)


def state_shardings(state: Any, mesh: Mesh, num_workers: int) -> Any:
    """NamedShardings for a member-stacked :class:`jaxasync.sim.SimState` (leading S axis)."""
    n = mesh.shape[AXIS]
    ns = lambda spec: NamedSharding(mesh, spec)
    worker = lambda tree: jax.tree.map(lambda x: ns(_spec(x, 1, n)), tree)
    replicated = lambda tree: jax.tree.map(lambda x: ns(P()), tree)

    def opt_leaf(x):
        shape = np.shape(x)
        per_worker = len(shape) >= 2 and shape[1] == num_workers
        return ns(_spec(x, 1 if per_worker else None, n))

    return state._replace(
        params=replicated(state.params),
        opt_state=jax.tree.map(opt_leaf, state.opt_state),
        ring=state.ring._replace(versions=worker(state.ring.versions), head=ns(P())),
        version=ns(P()), norms=ns(P()), clock=ns(P()),
        finish=worker(state.finish), worker_version=worker(state.worker_version),
        speed=worker(state.speed), ref_params=worker(state.ref_params),
        counts=replicated(state.counts), key=ns(P()), data_key=ns(P()),
        draws=worker(state.draws),
        events=state.events._replace(   # (the block minima and the counts are not per worker)
            block_min=ns(P()), clipped=worker(state.events.clipped),
            held=worker(state.events.held), stopped=ns(P()), timeouts=ns(P())),
        downlink=replicated(state.downlink),   # the server's broadcast memory: one row
    )


def data_shardings(data: Any, mesh: Mesh) -> Any:
    """The index table of the worker shards along M; the arrays replicated."""
    n = mesh.shape[AXIS]
    ns = lambda spec: NamedSharding(mesh, spec)
    return data._replace(
        x_train=ns(P()), y_train=ns(P()), x_test=ns(P()), y_test=ns(P()),
        shard_index=ns(_spec(data.shard_index, 0, n)), shard_size=ns(_spec(data.shard_size, 0, n)),
    )
