"""Small pytree helpers over a leading row axis, written once and shared.

Shape letters: ``W`` rows (one per arriving worker), ``M`` workers. A *row tree* is a pytree
whose every leaf has the leading axis ``W``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

PyTree = Any


def num_params(tree: PyTree, leading_axes: int = 0) -> int:
    """Number of scalars in ``tree``, not counting ``leading_axes`` batch axes."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        n = 1
        for s in jnp.shape(leaf)[leading_axes:]:
            n *= s
        total += n
    return total


def dense_bits(tree: PyTree, leading_axes: int = 0) -> int:
    """Bits of a dense float32 message: ``32 * d``."""
    return 32 * num_params(tree, leading_axes)


def bcast(v: Array, leaf: Array) -> Array:
    """Reshapes a per-row vector ``[W]`` to broadcast against a ``[W, ...]`` leaf."""
    return v.reshape(v.shape + (1,) * (jnp.ndim(leaf) - v.ndim))


def select_rows(take_w: Array, new_w: PyTree, old_w: PyTree) -> PyTree:
    """Row ``i`` of ``new_w`` where ``take_w[i]``, else row ``i`` of ``old_w`` (elementwise,
    no gather: the pass can write in place)."""
    return jax.tree.map(lambda n, o: jnp.where(bcast(take_w, n), n, o), new_w, old_w)


def row_norms(grads_w: PyTree) -> Array:
    """Euclidean norm of each row of a row tree: float32[W]."""
    return jnp.sqrt(row_sq_norms(grads_w))


def row_sq_norms(tree_w: PyTree) -> Array:
    """Squared Euclidean norm of each row of a row tree: float32[W]."""
    return sum(jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), axis=1)
               for g in jax.tree.leaves(tree_w))


def row_sq_dist(a_w: PyTree, b_w: PyTree) -> Array:
    r""":math:`\|a_i - b_i\|^2` per row of two row trees of the same structure: float32[W]."""
    return sum(jnp.sum(jnp.square(a - b).reshape(a.shape[0], -1), axis=1)
               for a, b in zip(jax.tree.leaves(a_w), jax.tree.leaves(b_w), strict=True))


def tree_sq_dist(a: PyTree, b: PyTree) -> Array:
    r""":math:`\|a - b\|^2` over all leaves of two pytrees of the same structure (a scalar)."""
    return sum(jnp.sum(jnp.square(u - v))
               for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def tree_norm(tree: PyTree) -> Array:
    r""":math:`\|x\|` over all leaves (a scalar)."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def repeat_rows(tree: PyTree, n: int) -> PyTree:
    """``n`` copies of ``tree`` stacked on a new leading axis (a fresh buffer)."""
    return jax.tree.map(lambda p: jnp.broadcast_to(p, (n,) + jnp.shape(p)).copy(), tree)


def zeros_rows(tree: PyTree, n: int) -> PyTree:
    """Zeros shaped ``[n, ...]`` per leaf of ``tree``, in each leaf's dtype."""
    return jax.tree.map(lambda p: jnp.zeros((n,) + jnp.shape(p), jnp.result_type(p)), tree)
