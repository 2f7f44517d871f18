r"""Compression in both directions: the server's broadcast compressed, with its own feedback.

Without it every worker downloads the dense model (:math:`32d` bits). With
``algorithm.downlink.name=<compressor>`` the server broadcasts a compressed message each time
it makes a new version, keeps its own memory for it (the one
:func:`jaxasync.compress.error_feedback`, on a single row), and the workers compute their
gradients at the model the broadcasts give them. Three rules (``algorithm.downlink.rule``):

* ``doublesqueeze`` (Tang, Yu, Lian, Zhang, Liu, "DoubleSqueeze: parallel stochastic gradient
  descent with double-pass error-compensated compression", ICML 2019, arXiv 1905.05957,
  Algorithm 1): the server compresses its update :math:`u` with EF14 feedback,
  :math:`m = C(u + e),\ e \leftarrow u + e - m`, and everybody, server included, applies
  :math:`m`: the model *is* the sum of the broadcasts;
* ``ef21_bc`` (Fatkhullin et al., arXiv 2110.03294, EF21-BC's server side): EF21's Markov
  compressor on the update, :math:`m = C(u - h),\ h \leftarrow h + m`, everybody applies
  :math:`h` (the paper compresses the direction :math:`g` and steps by :math:`\gamma h`; with a
  constant step and a positively homogeneous compressor, as every registered one is in its
  scale, the same);
* ``ef21_p`` (Gruntkowska, Tyurin, Richtárik, "EF21-P and friends", ICML 2023,
  arXiv 2209.15218, Algorithm 1's server side): the server keeps the exact model :math:`x`
  and the workers' :math:`w`, broadcasting :math:`c = C(x^{t+1} - w^t)`,
  :math:`w^{t+1} = w^t + c`; workers compute at :math:`w`.

Where the workers' model lives: one view for all workers (a broadcast), in the ring. The ring
of the simulator holds the versions the workers compute at: :math:`x` itself for the first
two rules (the model everybody builds from the same broadcasts), :math:`w` for ``ef21_p``
(:math:`x` stays in ``SimState.params``). An arrival :math:`\tau` versions stale computes at
the view of :math:`\tau` versions ago, in any delay model; a synchronous round computes at the
newest view. The memory this costs is one parameter vector for the server's memory (:math:`e`,
:math:`h`, or :math:`w`) and :math:`M` floats of pending bits, against :math:`M` vectors for a
view kept per worker (``tests/test_downlink.py`` measures it).

Bits: a worker receives every broadcast. It pays, when it next downloads (the rows of a
server step, after the update), the broadcasts made since its last download, or the dense
model if that is smaller (then it has the exact view too): :math:`\min(\sum b, 32d)`. In a
synchronous run that is one broadcast per worker per round. These replace the dense
:math:`32d` per row of the transforms' ``bits_down`` counter, in the metrics and in the link
time of the event model.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from jaxasync import compress as compress_lib
from jaxasync.config import DOWNLINK_RULES
from jaxasync.trees import dense_bits, repeat_rows

PyTree = Any

#: the server's feedback rules (declared once, with the config key ``algorithm.downlink.rule``)
RULES = DOWNLINK_RULES


class DownlinkState(NamedTuple):
    """The server's broadcast memory (one row), bits not yet downloaded, and the total
    charged (float32 with its Kahan compensation, as the transforms' counters)."""

    memory: Any
    pending: Array          # float32[M]
    bits: Array
    bits_c: Array


def init(compressor, rule: str, params: PyTree, num_workers: int) -> DownlinkState:
    """The state before the first broadcast: the workers hold :math:`x_0` (sent dense at the
    start, not counted, as the uncompressed runs do not count it either)."""
    if rule not in RULES:
        raise ValueError(f"downlink rule={rule!r}: unknown; choose one of {', '.join(RULES)}")
    feedback = "ef14" if rule == "doublesqueeze" else "ef21"
    memory = compress_lib.init_memory(compressor, params, 1, feedback)
    if rule == "ef21_p":                               # w_0 = x_0
        memory = memory._replace(estimate=repeat_rows(params, 1))
    z = jnp.zeros((), jnp.float32)
    return DownlinkState(memory, jnp.zeros((num_workers,), jnp.float32), z, z)


def _kahan(total: Array, comp: Array, x: Array) -> tuple[Array, Array]:
    y = x - comp
    t = total + y
    return t, (t - total) - y


def step(compressor, rule: str, state: DownlinkState, params: PyTree, updates: PyTree,
         advance: Array, ids: Array, key: Array):
    """One server step's broadcast.

    Args:
      params, updates: the server's model before the step and the algorithm's update.
      advance: bool, the step makes a new version (else nothing is broadcast).
      ids: int32[W], the workers that download this step.

    Returns:
      ``(applied, view, state, bits_w)``: the update to apply to :math:`x`; the new workers'
      view to push into the ring (None: :math:`x` itself); the new state; float32[W] the bits
      each downloading row pays.
    """
    row = lambda tree: jax.tree.map(lambda a: a[None], tree)            # noqa: E731
    first = lambda tree: jax.tree.map(lambda a: a[0], tree)             # noqa: E731
    send = jnp.reshape(advance, (1,))
    if rule == "ef21_p":
        target = jax.tree.map(lambda p, u: p + u, params, updates)
        _, memory, bits = compress_lib.error_feedback(compressor, row(target), state.memory,
                                                      key[None], send)
        applied, view = updates, first(memory.estimate)
    else:
        msg, memory, bits = compress_lib.error_feedback(compressor, row(updates),
                                                        state.memory, key[None], send)
        applied = first(memory.estimate) if rule == "ef21_bc" else first(msg)
        view = None
    b = jnp.where(advance, bits[0], 0.0)
    pending = state.pending + b
    dense = float(dense_bits(params))
    paid = jnp.minimum(pending[ids], dense)
    total, comp = _kahan(state.bits, state.bits_c, jnp.sum(paid))
    new = DownlinkState(memory, pending.at[ids].set(0.0), total, comp)
    return applied, view, new, paid.astype(jnp.float32)


def metrics(state: DownlinkState) -> dict[str, Array]:
    """``bits_down`` (and its low part) from the broadcasts charged."""
    return {"bits_down": state.bits, "bits_down_lo": -state.bits_c}
