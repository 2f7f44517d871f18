"""The worker axis on a device mesh: the same program on one CPU, N devices or many hosts.

With ``run.mesh_workers = N`` the simulator's worker axis is the mesh axis ``"workers"``:

* per-worker state (clocks, versions, speeds, last-upload iterates, and every optimizer-state
  leaf with a leading M axis, e.g. error-feedback memories) is sharded along M;
* the ring of past versions is sharded along its depth D (each device holds D/N versions);
* the per-step worker computation (``vmap`` over arriving rows) carries
  ``spmd_axis_name="workers"``, so each device computes the gradients of its own rows;
* the data shards' index table is sharded along M; the data themselves are replicated.

XLA's SPMD partitioner inserts the collectives (the stale-parameter gather across ring
shards, the aggregation over rows). Multi-host: call :func:`initialize_distributed` first
(``run.distributed=true``): ``jax.distributed.initialize()`` detects Slurm and Open MPI
launches from their environment variables, after which ``jax.devices()`` spans every host
and the same mesh code applies.
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


def initialize_distributed() -> None:
    """Multi-host start: ``jax.distributed.initialize()`` (auto-detects Slurm / Open MPI).

    Outside a cluster launch (no coordinator in the environment) this does nothing, so the
    same command runs on a laptop.
    """
    cluster_vars = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "JAX_COORDINATOR_ADDRESS")
    if any(v in os.environ for v in cluster_vars):
        jax.distributed.initialize()


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
        draws=worker(state.draws), events=worker(state.events),
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
