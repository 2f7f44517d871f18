r"""The fast Walsh–Hadamard transform and FO-SGD's flattened, dithered one-bit quantizer.

:func:`fwht` applies the Sylvester–Hadamard matrix :math:`H_n` (:math:`n = 2^p`,
:math:`H_{2n} = \begin{psmallmatrix} H_n & H_n \\ H_n & -H_n \end{psmallmatrix}`) in
:math:`O(n \log n)`. It is written as the Kronecker product it is,
:math:`H_{2^p} = H_{2^{c_1}} \otimes \dots \otimes H_{2^{c_m}}` with blocks of at most
:math:`2^7`: the vector reshaped to :math:`[2^{c_1}, \dots, 2^{c_m}]` and one small dense
matmul per axis (four for :math:`n = 2^{20}`), each contracting the first block axis so that
no transpose is needed between them. On a 2-core CPU that measured a little faster than the
:math:`p` butterfly passes (52 vs 59 ms at :math:`2^{20}`, under load, with blocks of
:math:`2^7`; ``benchmarks/compress_bench.py`` has the comparison with a dense matmul of the
same size). Blocks of :math:`2^5` without the transposes took 0.69x the time of blocks of
:math:`2^7` with them (10 rows of :math:`2^{19}`, side by side, under load): 32 multiply-adds
per entry and block where 128 were.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from jaxasync import hparams as hp
from jaxasync.compress.base import Compressor, per_leaf, random_bits, size, uniform
from jaxasync.compress.registry import register_compressor

PyTree = Any

_BLOCK_BITS = 5


@cache
def _sylvester(bits: int) -> np.ndarray:
    h = np.ones((1, 1), np.float32)
    for _ in range(bits):
        h = np.block([[h, h], [h, -h]])
    return h


def fwht(x: Array) -> Array:
    r""":math:`H_n x` along the last axis of ``x`` (:math:`n` a power of two; unnormalised:
    :math:`H_n H_n = n I`). Leading axes are batch axes."""
    n = x.shape[-1]
    p = int(math.log2(n)) if n else 0
    if n != 1 << p:
        raise ValueError(f"fwht: the last axis has {n} entries; must be a power of two")
    blocks, rest = [], p
    while rest > 0:
        c = min(_BLOCK_BITS, rest)
        blocks.append(c)
        rest -= c
    lead = x.shape[:-1]
    y = x.reshape(lead + tuple(1 << c for c in blocks))
    # each product contracts the first block axis and appends the result's axis last: after
    # one product per block the axes are back in order, with no transpose in between
    for c in blocks:
        y = jnp.tensordot(y, jnp.asarray(_sylvester(c), x.dtype), axes=([len(lead)], [1]))
    return y.reshape(x.shape)


def padded_size(d: int) -> int:
    """The power of two at or above ``d`` (the transform's length for ``d`` entries)."""
    return 1 << max(0, math.ceil(math.log2(d))) if d > 1 else 1


def _fo_sgd_omega(sizes, lam=None, **_):
    return None if lam is not None else max(padded_size(d) for d in sizes) - 1.0


@register_compressor("fo_sgd", unbiased=True, omega=_fo_sgd_omega, params={
    "lam": hp.positive("a fixed dither range lambda (entries beyond it clip: biased)",
                       optional=True, static=True)})
def fo_sgd(lam: float | None = None) -> Compressor:
    r"""FO-SGD's compressor: random sign flip, fast Walsh–Hadamard transform, dithered 1 bit.

    Per layer, :math:`x \in \mathbb R^{d}` zero-padded to :math:`n = 2^{\lceil \log_2 d
    \rceil}`, :math:`D = \mathrm{diag}(\epsilon)` with random signs :math:`\epsilon`,
    :math:`\Phi = n^{-1/2} H_n D` (orthonormal):

    .. math:: y = \Phi x, \qquad q = \operatorname{sign}(y + \tau),\
              \tau_i \sim \mathcal U[-\lambda, \lambda], \qquad
              C(x) = \bigl(\Phi^\top \lambda q\bigr)_{1..d}

    with :math:`\lambda = \|y\|_\infty` by default. Then every :math:`|y_i| \le \lambda`, so
    :math:`\mathbb E[\lambda q_i] = y_i` and :math:`C` is unbiased, with
    :math:`\mathbb E\|C(x) - x\|^2 \le n\lambda^2 - \|x\|^2`: :math:`\omega \le n - 1` in the
    worst case, about :math:`2 \ln(2n)` once :math:`\Phi` has flattened :math:`x`
    (:math:`\|y\|_\infty^2 \approx 2\ln(2n)\|x\|^2/n`), whatever the sparsity of :math:`x`
    (without the flattening a 1-sparse :math:`x` would have :math:`\omega = d - 1`). With a
    fixed ``lam``, entries beyond :math:`\pm\lambda` saturate and :math:`C` is biased.
    bits per layer :math:`= n + 32` (one bit per transformed entry and the float32
    :math:`\lambda`; :math:`n` with a fixed ``lam``); the signs :math:`\epsilon` and dither
    :math:`\tau` come from a seed the server shares and are not sent (the decoder needs only
    :math:`\lambda q`).

    What could be checked from here, and what is our reading: the paper's abstract (the only
    part of arXiv 2405.11095 reachable from this machine) gives the construction (dithered
    one-bit quantisation after a randomised fast Walsh–Hadamard transform, usable in both
    directions) and calls the resulting estimate biased; its exact dither range and scaling
    could not be read. The uniform dither on :math:`[-\lambda, \lambda]` with the
    :math:`\lambda q` decoder is the standard dithered one-bit quantiser of that line of work
    (Jacques and Cambareri 2017; Dirksen and Mendelson 2021); :math:`\lambda =
    \|y\|_\infty` is our choice (the smallest range that keeps every entry unsaturated), and
    ``lam`` gives the saturating, biased regime the abstract describes.

    Not under 1x one gradient's time on the SASG shape (``benchmarks/compress_bench.py``):
    two transforms of :math:`2^{19}` entries per worker (the kernel's 401,408 padded) cost
    15x (side by side, under load 2-3; 23-28x with the transform's earlier blocks of
    :math:`2^7`, see :func:`fwht`).

    Reference: Stollenwerk, Jacques, "Flattened one-bit stochastic gradient descent:
    compressed distributed optimization with controlled variance", arXiv 2405.11095 (2024).
    """

    def one(leaf: Array, key: Array):
        d = size(leaf)
        n = padded_size(d)
        k_sign, k_dither = jax.random.split(key)
        x = jnp.pad(jnp.ravel(leaf).astype(jnp.float32), (0, n - d))
        eps = jnp.where(random_bits(k_sign, (n,)) >> 31 == 1, 1.0, -1.0)
        scale = 1.0 / math.sqrt(n)
        y = fwht(eps * x) * scale
        lam_ = jnp.max(jnp.abs(y)) if lam is None else jnp.float32(lam)
        tau = (2.0 * uniform(k_dither, (n,)) - 1.0) * lam_
        q = jnp.where(y + tau >= 0, lam_, -lam_)
        out = (eps * fwht(q) * scale)[:d]
        return out.reshape(jnp.shape(leaf)).astype(leaf.dtype), n + (32 if lam is None else 0)

    return per_leaf(one)


def fwht_flops(n: int) -> int:
    """Multiply-adds of :func:`fwht` on ``n`` entries (for the benchmark's report)."""
    p = int(math.log2(n))
    blocks = [min(_BLOCK_BITS, p - i) for i in range(0, p, _BLOCK_BITS)]
    return sum(n * (1 << c) for c in blocks)

