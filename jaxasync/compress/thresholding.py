r"""Magnitude thresholds: the hard threshold (GRACE, DCT) and Deep Gradient Compression.

Both send the entries above a threshold (value and index: 64 bits each, the count traced)
and differ in where the threshold comes from: a fixed number or one re-estimated by exact
top-k every N calls (:func:`threshold`), or a sampled estimate of the top-k magnitude every
call, on a momentum-corrected gradient (:func:`dgc`).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array, lax

from jaxasync import hparams as hp
from jaxasync._topk_radix import _abs_bits, _kth_largest, top_k_threshold
from jaxasync.compress.base import DENSITY, Stateful, size, top_k_count, when
from jaxasync.compress.mask import apply_selection
from jaxasync.compress.registry import register_compressor
from jaxasync.compress.sparsify import _count_true

PyTree = Any

_NON_EXPANSIVE = lambda sizes, **_: 0.0      # noqa: E731  (drops entries: ||C(x) - x|| <= ||x||)


def _kept_bits(tree: PyTree, sels: PyTree, per_entry: float) -> tuple[PyTree, Array]:
    """Message of a per-leaf selection and its size (``per_entry`` bits per kept entry)."""
    message, _ = apply_selection(tree, sels)
    counts = [_count_true(jnp.ravel(m) != 0) for m in jax.tree.leaves(message)]
    return message, per_entry * sum(counts, jnp.zeros((), jnp.int32)).astype(jnp.float32)


# ============================================================================= hard threshold


@register_compressor("threshold", example={"density": 0.25, "period": 3}, unbiased=False,
                     alpha=_NON_EXPANSIVE, params={
                         "threshold": hp.threshold("lambda: send |x| > lambda (fixed)",
                                                   static=True),
                         "density": hp.Param("float", low=0.0, high=1.0, low_open=True,
                                             optional=True, static=True,
                                             doc="re-estimate lambda as top-k's at this h"),
                         "period": hp.integer(1, doc="N: calls between re-estimations")})
def threshold(threshold: float | None = None, density: float | None = None,
              period: int = 1000) -> Stateful:
    r"""Hard threshold: send every entry with :math:`|x_i|` above a per-layer :math:`\lambda_l`.

    .. math:: C(x)_i = x_i\,[\,|x_i| \ge \lambda_l\,], \qquad \text{bits} = 64\,\#\{i:
              C(x)_i \ne 0\}

    (a float32 value and an int32 index per entry sent; the count is traced). Either
    :math:`\lambda` is fixed (``threshold``, GRACE's ``ThresholdCompressor``: :math:`|x_i| >
    \lambda`), or, as Dynamic Communication Thresholding does, re-estimated every
    ``period`` calls of the worker as the :math:`k_l`-th largest :math:`|x_i|` of that call
    (``density`` :math:`h`, :math:`k_l = \max(1, \lfloor h d_l \rfloor)`, exact top-k, which
    that call sends) and used as is in between, so the costly selection runs once every N
    calls (under the worker ``vmap`` on the calls where some worker re-estimates).
    Non-expansive (:math:`\alpha = 0`): an entry is sent whole or not at all.

    State per worker (``density`` given): :math:`\lambda_l` (the float32 bit pattern of
    :math:`|x|`, order-preserving) and the call count.

    On the SASG shape (``benchmarks/compress_bench.py``, ``period`` = 100, side by side,
    under load 2-3): 0.6-0.7x one gradient's time on a call that reuses :math:`\lambda`. It
    was 1.4-1.9x, as much as exact top-k, while :func:`jaxasync.compress.base.when` let XLA
    hoist the re-estimation out of its loop, so that it ran on every call.

    References: Gupta, Choudhary, Tang, Wei, Wang, Huang, Kejariwal, Ramchandran, Mahoney,
    "Training recommender systems at scale: communication-efficient model and data
    parallelism", KDD 2021 (arXiv 2010.08899), DCT for data parallelism; GRACE
    ``grace_dl/torch/compressor/threshold.py``.
    """
    if (threshold is None) == (density is None):
        raise ValueError(f"compressor 'threshold': threshold={threshold!r}, "
                         f"density={density!r}: give exactly one (a fixed lambda, or the "
                         "density whose top-k threshold is re-estimated)")

    def init(params, worker):
        del worker
        lam = [jnp.zeros((), jnp.int32) for _ in jax.tree.leaves(params)]
        return {"lam": lam, "count": jnp.zeros((), jnp.int32)}

    def fixed(tree):
        # keep |x| > lambda: bits > bits(lambda); an infinite lambda keeps nothing
        v = lax.bitcast_convert_type(jnp.float32(min(threshold, 3.4e38)), jnp.int32)
        return jax.tree.map(lambda x: jnp.stack([v, jnp.int32(-1)]), tree)

    def estimate(tree):
        return jax.tree.map(lambda x: jnp.stack(top_k_threshold(
            jnp.ravel(x).astype(jnp.float32), top_k_count(density, size(x)))), tree)

    def step(tree, state, key):
        del key
        if density is None:
            message, bits = _kept_bits(tree, fixed(tree), 64.0)
            return message, state, bits
        leaves, treedef = jax.tree.flatten(tree)
        stored = treedef.unflatten([jnp.stack([lam - 1, jnp.int32(-1)])
                                    for lam in state["lam"]])
        sels = when(state["count"] % period == 0, estimate, stored, tree)
        message, bits = _kept_bits(tree, sels, 64.0)
        # a fresh estimate (v, cut) keeps b > v and ties up to cut: lambda = v, the k-th
        # largest magnitude; a stored one is (lambda - 1, -1): lambda again
        lam = [jnp.where(s[1] < 0, s[0] + 1, s[0]) for s in jax.tree.leaves(sels)]
        return message, {"lam": lam, "count": state["count"] + 1}, bits

    return Stateful(init, step)


# ============================================================================= DGC

#: DGC's warm-up densities: 75%, 93.75%, 98.4375%, 99.6% sparsity (the paper's Section 3.3)
_WARMUP_BASE = 4.0
#: DGC samples 0.1% to 1% of the entries to estimate the threshold (Section 4); 1%, >= 256
_SAMPLE_FRACTION, _SAMPLE_MIN = 0.01, 256


def _sampled_magnitude(x: Array, density: Array, key: Array) -> Array:
    r"""DGC's threshold: the :math:`\lceil h S \rceil`-th largest :math:`|x|` of a systematic
    random sample of :math:`S` entries (bit patterns; ``density`` may be traced)."""
    d = x.shape[0]
    target = min(d, max(_SAMPLE_MIN, math.ceil(_SAMPLE_FRACTION * d)))
    stride = d // target
    s = d // stride
    offset = jax.random.randint(key, (), 0, stride)
    sample = lax.dynamic_index_in_dim(_abs_bits(x)[: s * stride].reshape(s, stride), offset,
                                      axis=1, keepdims=False)
    rank = jnp.clip(jnp.ceil(density * s).astype(jnp.int32), 1, s)
    return _kth_largest(sample, (rank,), dynamic=True)[0]


def dgc_density(density: float, count: Array, warmup_steps: int, warmup_stages: int) -> Array:
    r"""DGC's density at a worker's ``count``-th call: :math:`4^{-(j+1)}` in warm-up stage
    :math:`j = \lfloor \text{count} / \text{warmup\_steps} \rfloor < ` ``warmup_stages``
    (75%, 93.75%, 98.4%, 99.6% sparsity), then :math:`h`; never below :math:`h`."""
    if warmup_steps <= 0 or warmup_stages <= 0:
        return jnp.float32(density)
    stage = count // warmup_steps
    warm = _WARMUP_BASE ** -(stage.astype(jnp.float32) + 1.0)
    return jnp.where(stage < warmup_stages, jnp.maximum(warm, density), density)


@register_compressor("dgc", example={"density": 0.25, "warmup_steps": 2}, unbiased=False,
                     alpha=_NON_EXPANSIVE, params={
                         "density": DENSITY,
                         "momentum": hp.Param("float", low=0.0, high=1.0, high_open=True,
                                              static=True, doc="m"),
                         "masking": hp.flag("momentum factor masking"),
                         "clip_norm": hp.positive("the global clipping norm", optional=True,
                                                  static=True),
                         "num_workers": hp.NUM_WORKERS,
                         "warmup_steps": hp.integer(0, doc="calls per warm-up stage"),
                         "warmup_stages": hp.integer(0)})
def dgc(density: float = 0.001, momentum: float = 0.9, masking: bool = True,
        clip_norm: float | None = None, num_workers: int | None = None,
        warmup_steps: int = 0, warmup_stages: int = 4) -> Stateful:
    r"""Deep Gradient Compression: momentum correction, local clipping, masking, warm-up.

    Per worker, with :math:`u` its momentum (the state) and :math:`v` the accumulation that
    error feedback keeps (use it with ``error_feedback=true``: then this is DGC):

    .. math::

       g &\leftarrow g \cdot \min\bigl(1, \tfrac{c/\sqrt N}{\|g\|}\bigr) \quad
          \text{(local clipping, with } c = \texttt{clip\_norm}\text{)} \\
       u &\leftarrow m\,u + g, \qquad v \leftarrow v + u \quad \text{(momentum correction)} \\
       \text{send } &v \odot \mathrm{mask}, \quad \mathrm{mask} = |v| \ge \mathrm{thr}_h(v),
          \qquad v \leftarrow v \odot \neg\mathrm{mask}, \quad
          u \leftarrow u \odot \neg\mathrm{mask} \ \text{(momentum factor masking)}

    and the server applies plain SGD to the sum (the momentum lives on the workers). The
    threshold :math:`\mathrm{thr}_h` is DGC's sampled estimate of the top-:math:`h`
    magnitude (the :math:`\lceil hS \rceil`-th largest of a 1% systematic random sample,
    at least 256 entries; the count sent varies, and bits :math:`= 64` per entry sent). With
    ``warmup_steps`` :math:`> 0` the density follows the paper's warm-up: :math:`4^{-(j+1)}`
    for the :math:`j`-th block of ``warmup_steps`` calls, ``warmup_stages`` blocks (the paper:
    4 epochs, 75% to 99.6% sparsity), then :math:`h`. At :math:`h = 1` every entry is sent:
    without masking that is momentum SGD exactly; with masking the momentum is cleared every
    call, which makes it plain SGD.

    Local clipping, our choice: the paper (Section 3.2) clips each worker's gradient *by its
    norm* before it is added to the accumulation, with the threshold of the global clipping
    (Pascanu et al. 2013) scaled by :math:`N^{-1/2}`, ``num_workers`` :math:`N`: that is what
    is implemented. GRACE (``grace_dl/torch/memory/dgc.py``) instead clamps every entry to
    :math:`\pm\sqrt{\tfrac1N\sum_j \|g_j\|^2}`, a threshold computed by an all-reduce of the
    workers' squared norms each step; that is neither the paper's rescaling nor computable by
    one worker of an asynchronous run (alone, the clamp :math:`\pm\|g\|` never binds).
    Neither does GRACE's refinement loop of the threshold (scaling it by 1.3 or 0.7 up to ten
    times until the count is within 30% of :math:`k`), which is not in the paper.

    On the SASG shape (``benchmarks/compress_bench.py``, side by side, under load 2-3):
    0.9-1.6x one gradient's time, about 1x. That is the floor of the recipe on XLA's CPU
    backend: three passes over the layer (the momentum correction reads two arrays and
    writes one, the message reads one and writes one, the count of entries sent reads the
    message) where the gradient of the SASG model writes about one array per layer.

    Args:
      density: :math:`h`, the final density (the paper: 0.1%).
      momentum: :math:`m`.
      masking: momentum factor masking.
      clip_norm: the global clipping norm :math:`c` (None: no clipping).
      num_workers: :math:`N` (the simulator passes the run's M; needed with ``clip_norm``).
      warmup_steps, warmup_stages: the warm-up schedule (0 steps: none).

    Reference: Lin, Han, Mao, Wang, Dally, "Deep gradient compression: reducing the
    communication bandwidth for distributed training", ICLR 2018 (arXiv 1712.01887),
    Algorithm 1 with Sections 3.2 (momentum correction, local clipping, momentum factor
    masking) and 3.3 (warm-up); GRACE ``grace_dl/torch/compressor/dgc.py`` and
    ``memory/dgc.py``.
    """
    if clip_norm is not None and num_workers is None:
        raise ValueError("compressor 'dgc': clip_norm needs num_workers (N in the local "
                         "threshold clip_norm / sqrt(N))")
    local = None if clip_norm is None else clip_norm / math.sqrt(num_workers)

    def init(params, worker):
        del worker
        u = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.result_type(p)), params)
        return {"u": u, "count": jnp.zeros((), jnp.int32)}

    def prepare(grad, state):
        if local is not None:
            norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32)))
                                for g in jax.tree.leaves(grad)))
            factor = jnp.minimum(1.0, local / jnp.maximum(norm, 1e-30))
            grad = jax.tree.map(lambda g: (g * factor).astype(g.dtype), grad)
        u = jax.tree.map(lambda uu, g: (momentum * uu + g).astype(g.dtype), state["u"], grad)
        return u, {**state, "u": u}

    def step(v, state, key):
        h = dgc_density(density, state["count"], warmup_steps, warmup_stages)
        leaves, treedef = jax.tree.flatten(v)
        keys = jax.random.split(key, max(1, len(leaves)))
        sels = []
        for leaf, k in zip(leaves, keys, strict=False):
            thr = _sampled_magnitude(jnp.ravel(leaf).astype(jnp.float32), h, k)
            # keep |v| >= thr, exact zeros never (bits > max(thr, 1) - 1); h >= 1: all
            cut = jnp.where(h >= 1.0, -1, jnp.maximum(thr, 1) - 1)
            sels.append(jnp.stack([cut, jnp.int32(-1)]))
        message, bits = _kept_bits(v, treedef.unflatten(sels), 64.0)
        u = state["u"]
        if masking:
            u = jax.tree.map(lambda uu, m: jnp.where(m != 0, jnp.zeros_like(uu), uu), u, message)
        return message, {"u": u, "count": state["count"] + 1}, bits

    return Stateful(init, step, prepare=prepare)
