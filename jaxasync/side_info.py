"""Side information for the algorithms: one table, need name -> a value of the server step.

The extra args an algorithm's transform receives (:mod:`jaxasync.transforms` lists their
shapes) all come from :data:`SIDE_INFO`. Every server step the simulator builds a
:class:`StepContext` (what the step knows: the state, the arriving rows, their staleness,
stale parameters, minibatches, losses and gradients) and passes the algorithm
``{name: SIDE_INFO[name].compute(ctx)}`` for the entries marked ``always`` and for the names
it declared in ``register(..., needs=...)``. Values are computed only when asked for (the
context caches what several entries share, such as the drift).

A new kind of side information is one entry here and nowhere else: the registry's
``KNOWN_NEEDS`` is this table's keys, and :class:`jaxasync.sim.Simulator` never names one.

An entry with ``with_gradients`` is computed *together with* the gradients (``ref_grad_dist``:
for the MLPs the distance to the gradient at the last-upload iterate is exact without forming
that gradient, :func:`jaxasync.workloads.gradient_pair`); an entry with ``reference`` makes
the simulator keep every worker's last-upload iterate.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxasync.trees import row_norms

PyTree = Any


class StepContext:
    """The values of one server step that side information is computed from.

    Attributes:
      sim: the :class:`jaxasync.sim.Simulator` (its workload, config and worker vmap).
      state: the :class:`jaxasync.sim.SimState` before the step.
      ids: int32[W] arriving workers (synchronous rounds: 0..M-1).
      tau: int32[W] staleness; ``live``: bool[W], not dropped as too stale.
      params_w: the rows' stale parameters ``[W, ...]``, or None when every row is at the
        current iterate (synchronous rounds).
      x, y: the rows' minibatches ``[W, B, ...]``.
      key: the step's PRNG key for the transform (stochastic compressors).
      loss_w, grads_w: set once the gradients are computed.
    """

    def __init__(self, sim, state, ids, tau, live, params_w, x, y, key):
        self.sim, self.state, self.ids, self.tau, self.live = sim, state, ids, tau, live
        self.params_w, self.x, self.y, self.key = params_w, x, y, key
        self.loss_w = self.grads_w = None
        self.fused: dict[str, Any] = {}

    @property
    def rows(self) -> int:
        return self.ids.shape[0]

    @property
    def synchronous(self) -> bool:
        return self.params_w is None

    @functools.cached_property
    def drift(self) -> PyTree:
        """:math:`x_t - x_{t-\\tau_i}` per row (zeros for synchronous rows)."""
        p, w = self.state.params, self.rows
        if self.params_w is None:
            return jax.tree.map(lambda q: jnp.zeros((w,) + q.shape, q.dtype), p)
        return jax.tree.map(lambda q, qw: q[None] - qw, p, self.params_w)

    @functools.cached_property
    def ref_params_w(self) -> PyTree:
        """Each row's worker's last-upload iterate ``[W, ...]`` (synchronous rows are the
        workers in order: no gather)."""
        ref = self.state.ref_params
        if self.synchronous:
            return ref
        return jax.tree.map(lambda r: r[self.ids], ref)


@dataclasses.dataclass(frozen=True)
class Side:
    """One kind of side information.

    Attributes:
      compute: ``ctx -> value`` (traced, pure).
      shape: the value's shape, for the docs (``[W]``, ``[W, ...]``, ``[D]``...).
      doc: one line.
      always: offered to every algorithm (cheap), without being declared.
      reference: needs every worker's last-upload iterate (the simulator keeps them).
      with_gradients: ``(ctx) -> (loss_w, grads_w, value)``: computed together with the
        gradients, replacing the plain gradient computation.
    """

    compute: Callable[[StepContext], Any]
    shape: str
    doc: str
    always: bool = False
    reference: bool = False
    with_gradients: Callable[[StepContext], tuple] | None = None


def _ref_grads(ctx: StepContext) -> PyTree:
    return ctx.sim.vmap_workers(jax.grad(ctx.sim.workload.loss))(ctx.ref_params_w, ctx.x, ctx.y)


def _ref_grad_dist_with_gradients(ctx: StepContext):
    from jaxasync.workloads import gradient_pair

    reference, pair = gradient_pair(ctx.sim.workload)
    base, axis = ((ctx.state.params, None) if ctx.params_w is None else (ctx.params_w, 0))
    vm = ctx.sim.vmap_workers
    return vm(pair, (axis, 0, 0, 0))(base, vm(reference)(ctx.ref_params_w, ctx.x, ctx.y),
                                     ctx.x, ctx.y)


def _update_norms(ctx: StepContext):
    d = ctx.state.norms.shape[0]
    return ctx.state.norms[(ctx.state.ring.head - jnp.arange(d)) % d]


#: need name -> how the simulator computes it (see the module docstring)
SIDE_INFO: dict[str, Side] = {
    "staleness": Side(lambda c: c.tau, "int32[W]",
                      "delay of each row in server versions", always=True),
    "mask": Side(lambda c: c.live, "bool[W]",
                 "row is a real arrival (False: dropped as staler than the ring)", always=True),
    "worker_ids": Side(lambda c: None if c.synchronous else c.ids, "int32[W] or None",
                       "the worker of each row; None: rows are workers 0..W-1 in order",
                       always=True),
    "key": Side(lambda c: c.key, "PRNG key", "randomness for stochastic compressors",
                always=True),
    "drift": Side(lambda c: c.drift, "[W, ...]", "x_t - x_{t-tau}, from the stored versions"),
    "drift_norm": Side(lambda c: row_norms(c.drift), "float32[W]", "||x_t - x_{t-tau}||"),
    "update_norms": Side(_update_norms, "float32[D]",
                         "||x_{t-j} - x_{t-j-1}||, j = 0..D-1, newest first"),
    "ref_grads": Side(_ref_grads, "[W, ...]",
                      "gradient at the worker's last-upload iterate, same minibatch",
                      reference=True),
    "ref_grad_dist": Side(lambda c: c.fused["ref_grad_dist"], "float32[W]",
                          "||g - ref_grads||^2 per row, without forming ref_grads",
                          reference=True, with_gradients=_ref_grad_dist_with_gradients),
    "loss": Side(lambda c: c.loss_w, "float32[W]",
                 "each row's minibatch loss at its stale iterate"),
}

#: the names an algorithm may declare in ``register(..., needs=...)``
KNOWN_NEEDS = frozenset(k for k, s in SIDE_INFO.items() if not s.always)


def offered(needs: frozenset[str]) -> list[str]:
    """The entries an algorithm with these needs receives, in table order."""
    return [k for k, s in SIDE_INFO.items() if s.always or k in needs]


def keeps_reference(needs: frozenset[str]) -> bool:
    """Whether some need reads the workers' last-upload iterates."""
    return any(SIDE_INFO[k].reference for k in needs)


def fused_with_gradients(needs: frozenset[str]) -> str | None:
    """The need computed together with the gradients (at most one), or None."""
    fused = [k for k in needs if SIDE_INFO[k].with_gradients is not None]
    if len(fused) > 1:
        raise ValueError(f"needs {sorted(fused)}: at most one may replace the gradient "
                         "computation")
    return fused[0] if fused else None
