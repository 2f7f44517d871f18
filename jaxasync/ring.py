"""The ring buffer of the last D parameter versions the simulator keeps (leaves ``[D, ...]``):
an arrival ``tau`` versions stale reads its iterate with a gather at a traced index, so
changing delays never recompiles (:class:`jaxasync.sim.Simulator`)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

PyTree = Any


class Ring(NamedTuple):
    """The last D parameter versions: leaves ``[D, ...]``, slot ``head`` holds the newest."""

    versions: PyTree
    head: Array


def ring_init(params: PyTree, depth: int) -> Ring:
    """A ring whose every slot holds ``params``: reading before step 0 gives x_0."""
    versions = jax.tree.map(lambda p: jnp.broadcast_to(p, (depth,) + p.shape).copy(), params)
    return Ring(versions, jnp.zeros((), jnp.int32))


def ring_push(ring: Ring, params: PyTree) -> Ring:
    depth = jax.tree.leaves(ring.versions)[0].shape[0]
    head = (ring.head + 1) % depth
    versions = jax.tree.map(lambda r, p: r.at[head].set(p), ring.versions, params)
    return Ring(versions, head)


def ring_read(ring: Ring, lag: Array) -> PyTree:
    """The version pushed ``lag`` pushes ago (``lag`` int32 array, any shape; gathers)."""
    depth = jax.tree.leaves(ring.versions)[0].shape[0]
    slot = (ring.head - lag) % depth
    return jax.tree.map(lambda r: r[slot], ring.versions)


def read_rows(ring: Ring, lag: Array, always: Array) -> PyTree:
    """:func:`ring_read` into buffers of their own: the read is a branch of a ``lax.cond`` on
    ``always`` (True, but only known when the program runs), which XLA cannot fuse into the
    read's consumers.

    Why: when a reduction of the stale row (the minibatch loss, the update's norm) is fused
    with the read, XLA's CPU backend copies the whole ring every step before writing the new
    version in place. A workload whose loss is elementwise in the parameters (the worst-case
    quadratic) then ran at ~200 steps/s with 2,048 versions of d = 1,000 instead of ~30,000;
    one whose parameters meet a matrix product first (least squares: the row is a ``dot``
    operand, read once) never showed it.
    """
    def zeros(r, g):
        del g
        return jax.tree.map(lambda v: jnp.zeros(jnp.shape(lag) + v.shape[1:], v.dtype),
                            r.versions)

    return jax.lax.cond(always, ring_read, zeros, ring, lag)
