r"""Quantizers: identity, fp16, QSGD, scaled sign, signum, 1-bit SGD, TernGrad, natural.

Each is per layer (every leaf on its own); the message is the *decompressed* tree the server
sees, and ``bits`` the size of the encoded message, stated in each docstring and checked by
hand in ``tests/test_compress_properties.py``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array, lax

from jaxasync import hparams as hp
from jaxasync.compress.base import (
    Compressor,
    Stateful,
    f32,
    fused_sums,
    per_leaf,
    size,
    uniform,
    uniform_bits,
)
from jaxasync.compress.registry import register_compressor

PyTree = Any


def _as_f32(leaf: Array) -> Array:
    return leaf.astype(jnp.float32)


# ============================================================================= identity, fp16


@register_compressor("identity", unbiased=True, alpha=lambda sizes, **_: 1.0,
                     omega=lambda sizes, **_: 0.0)
def identity() -> Compressor:
    r"""No compression: the dense gradient.

    :math:`C(x) = x`; bits :math:`= 32\,d` (a dense float32 vector).
    """

    def compressor(tree: PyTree, key: Array) -> tuple[PyTree, Array]:
        del key
        return tree, f32(32.0 * sum(size(leaf) for leaf in jax.tree.leaves(tree)))

    return compressor


#: float16's largest finite value (a cast beyond it would give inf)
FP16_MAX = 65504.0
#: float16's unit roundoff 2^-11: |fl(x) - x| <= u |x| in its normal range
FP16_UNIT = 2.0 ** -11


@register_compressor("fp16", unbiased=False, alpha=lambda sizes, **_: 1.0 - FP16_UNIT ** 2)
def fp16() -> Compressor:
    r"""Half precision: every entry rounded to float16 (round to nearest even) and back.

    .. math:: C(x)_i = \mathrm{fl}_{16}(\mathrm{clip}(x_i, \pm 65504)), \qquad
              \text{bits} = 16\,d.

    Biased; for entries in float16's normal range (:math:`6.1 \cdot 10^{-5} \le |x_i| \le
    65504`) :math:`|C(x)_i - x_i| \le u |x_i|` with :math:`u = 2^{-11}`, so
    :math:`\alpha = 1 - u^2 = 1 - 2^{-22}`; smaller entries lose up to all of themselves
    (subnormals, flush to zero). Entries beyond the largest float16 are clamped to it, where
    GRACE's plain cast (``grace_dl/torch/compressor/fp16.py``) would send ``inf``.
    """

    def one(leaf, key):
        del key
        x = jnp.clip(_as_f32(leaf), -FP16_MAX, FP16_MAX)
        return x.astype(jnp.float16).astype(leaf.dtype), 16.0 * size(leaf)

    return per_leaf(one)


# ============================================================================= QSGD


def _qsgd_omega(sizes, levels, **_):
    return max(min(d / levels ** 2, math.sqrt(d) / levels) for d in sizes)


@register_compressor("qsgd", example={"levels": 4}, unbiased=True, omega=_qsgd_omega,
                     params={"levels": hp.integer(1, doc="s quantisation levels")})
def qsgd(levels: int) -> Compressor:
    r"""QSGD stochastic quantisation with :math:`s` levels, per layer, unbiased.

    .. math:: Q_s(x)_i = \|x\|_2\,\operatorname{sign}(x_i)\,\xi_i(x, s)/s,

    where, with :math:`a_i = s|x_i|/\|x\|_2` and :math:`\ell_i = \lfloor a_i \rfloor`,
    :math:`\xi_i = \ell_i + 1` with probability :math:`a_i - \ell_i` and :math:`\ell_i`
    otherwise, so :math:`\mathbb{E}\,Q_s(x) = x`, with
    :math:`\omega = \max_l \min(d_l/s^2, \sqrt{d_l}/s)` (the paper's Lemma 3.1). A zero layer
    stays zero.

    bits per layer :math:`= 32 + d_l\,(1 + \lceil \log_2(s+1) \rceil)`: the float32 norm, then a
    sign bit and a fixed-width level index in :math:`\{0,\dots,s\}` per entry. This is the
    simple fixed-width encoding, not the Elias coding of the paper, which is shorter.

    On the SASG shape (``benchmarks/compress_bench.py``, side by side, under load 2-3):
    0.7-0.8x one gradient's time (0.9-1.0x with the two-round hash before
    :func:`jaxasync.compress.base.random_bits` took one).

    Reference: Alistarh, Grubic, Li, Tomioka, Vojnovic, "QSGD: communication-efficient SGD
    via gradient quantization and encoding", NeurIPS 2017 (arXiv 1610.02132).
    """
    s = int(levels)
    per_entry = 1 + math.ceil(math.log2(s + 1))

    def one(leaf: Array, key: Array):
        x = _as_f32(leaf)
        norm = jnp.sqrt(jnp.sum(x * x))
        safe = jnp.where(norm > 0, norm, 1.0)
        scaled = jnp.abs(x) / safe * s
        lower = jnp.floor(scaled)
        up = uniform(key, x.shape) < (scaled - lower)
        xi = lower + up.astype(jnp.float32)
        q = norm * jnp.sign(x) * xi / s
        return q.astype(leaf.dtype), 32 + size(leaf) * per_entry

    return per_leaf(one)


# ============================================================================= signs


@register_compressor("sign", unbiased=False, alpha=lambda sizes, **_: 1.0 / max(sizes))
def sign_scale() -> Compressor:
    r"""Scaled sign compression (EF-signSGD with ``error_feedback=true``), per layer.

    .. math:: C(x) = \frac{\|x\|_1}{d_l}\,\operatorname{sign}(x), \qquad
              \|C(x) - x\|^2 = \|x\|^2 - \frac{\|x\|_1^2}{d_l} \le
              \Bigl(1 - \frac{1}{d_l}\Bigr)\|x\|^2,

    so :math:`\alpha = 1/\max_l d_l` (``jnp.sign``: an exact zero stays zero). bits per layer
    :math:`= d_l + 32`: one sign bit per entry and the float32 scale. EF-signSGD folds the
    step into the memory (:math:`p = \gamma g + e`); with a constant step that is the same
    algorithm, since :math:`C(\gamma p) = \gamma C(p)`.

    Reference: Karimireddy, Rebjock, Stich, Jaggi, "Error feedback fixes SignSGD and other
    gradient compression schemes", ICML 2019 (arXiv 1901.09847), Algorithm 1 (EF-SIGNSGD).
    """

    def one(leaf: Array, key: Array):
        del key
        x = _as_f32(leaf)
        scale = jnp.sum(jnp.abs(x)) / x.size
        return (scale * jnp.sign(x)).astype(leaf.dtype), size(leaf) + 32

    return per_leaf(one)


def _sign_bit(x: Array) -> Array:
    """+1 where x >= 0, -1 elsewhere: one bit per entry (a zero is sent as +1, as GRACE's
    ``tensor >= 0`` encoding does; one bit cannot say 0)."""
    return jnp.where(x >= 0, 1.0, -1.0).astype(x.dtype)


@register_compressor("signum", example={"momentum": 0.9}, unbiased=False, params={
    "momentum": hp.Param("float", low=0.0, high=1.0, high_open=True, static=True,
                         doc="beta; 0 is signSGD")})
def signum(momentum: float = 0.9) -> Stateful:
    r"""signSGD and signum: each worker sends the sign of its (momentum) gradient, 1 bit each.

    .. math:: m \leftarrow \beta m + (1 - \beta) g, \qquad C = \operatorname{sign}(m)
              \in \{-1, +1\}^d, \qquad \text{bits} = d

    (:math:`\beta = 0`: signSGD). The momentum :math:`m` is the worker's state (the
    ``prepare`` step, before any error feedback); ``sign(0) = +1``. Not a contraction (no
    :math:`\alpha`: :math:`\|\operatorname{sign}(x) - x\|` can exceed :math:`\|x\|`). The
    server here averages the signs (one arrival: the same as the paper's majority vote, which
    takes the sign of their sum); a majority-vote server is not implemented.

    Reference: Bernstein, Wang, Azizzadenesheli, Anandkumar, "signSGD: compressed
    optimisation for non-convex problems", ICML 2018 (arXiv 1802.04434), Algorithms 1
    (signSGD) and 3 (Signum); GRACE ``grace_dl/torch/compressor/signum.py``.
    """
    beta = float(momentum)

    def init(params, worker):
        del worker
        return jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.result_type(p)), params)

    def prepare(grad, state):
        m = jax.tree.map(lambda mm, g: (beta * mm + (1.0 - beta) * g).astype(g.dtype),
                         state, grad)
        return m, m

    def step(v, state, key):
        del key
        out = jax.tree.map(_sign_bit, v)
        return out, state, f32(sum(size(leaf) for leaf in jax.tree.leaves(v)))

    return Stateful(init, step, prepare=prepare)


def _onebit_alpha(sizes, per_column=False, **_):
    return 1.0 / max(sizes)


@register_compressor("onebit", unbiased=False, alpha=_onebit_alpha,
                     params={"per_column": hp.flag("means per column of a matrix (Seide)")})
def onebit(per_column: bool = False) -> Compressor:
    r"""1-bit SGD: one bit per entry (its sign), decoded to the mean of its sign class.

    With :math:`N = \{i: x_i < 0\}` and :math:`P` the rest (per layer, or per column of a
    matrix leaf with ``per_column``):

    .. math:: C(x)_i = \begin{cases} \bar x_N = \frac{1}{|N|}\sum_{j \in N} x_j & i \in N \\
              \bar x_P & i \in P \end{cases}

    the reconstruction values that minimise the squared error (an empty class gives 0).
    :math:`C(x)` is the orthogonal projection of :math:`x` on the span of the two class
    indicators, so :math:`\|C(x) - x\|^2 = \|x\|^2 - \|x_N\|_1^2/|N| - \|x_P\|_1^2/|P| \le
    (1 - 1/d_l)\|x\|^2`: :math:`\alpha = 1/\max_l d_l`. bits :math:`= d_l + 64` per layer
    (the signs, two float32 means), :math:`d_l + 64 c` with ``per_column`` (:math:`c`
    columns: the last axis of a kernel ``[in, out]``). Meant with error feedback, as in the
    paper.

    Written for speed: the count of the negatives and the sums of :math:`\min(x, 0)` and
    :math:`\max(x, 0)` (no select inside a reduction, 4-8x slower on XLA's CPU backend) are
    taken in one pass over the layer (:func:`jaxasync.compress.base.fused_sums`), then the
    message in a second: two reads of the layer where there were four (a count, two sums
    whose ``max(x, 0)`` XLA fed from a materialised array of zeros, the message). On the SASG
    shape (``benchmarks/compress_bench.py``, side by side, under load 2-3): 1.7-2.5x one
    gradient's time before, 0.8-1.4x after (0.9-1.0x in runs of two compressors). It cannot
    go much lower: scaled sign, one reduction and the message, measured 0.7-0.9x beside it.
    The count is a float32 sum, exact up to :math:`2^{24}` entries per layer.
    (The ``per_column`` form keeps one reduction per quantity.)

    References: Seide, Fu, Droppo, Li, Yu, "1-bit stochastic gradient descent and its
    application to data-parallel distributed training of speech DNNs", Interspeech 2014
    (per column, with error feedback); GRACE ``grace_dl/torch/compressor/onebit.py``
    (per tensor, the default here).
    """

    def one(leaf, key):
        del key
        x = _as_f32(leaf)
        axes = tuple(range(x.ndim - 1)) if per_column and x.ndim >= 2 else None
        neg = x < 0
        if axes is None:
            # the class sums as sums of min(x, 0) and max(x, 0), in one pass with the count
            s_neg, s_pos, n_neg = fused_sums(x, (lambda v: jnp.minimum(v, 0.0),
                                                 lambda v: jnp.maximum(v, 0.0),
                                                 lambda v: (v < 0).astype(jnp.float32)))
        else:
            n_neg = jnp.sum(neg.astype(jnp.float32), axis=axes, keepdims=True)
            s_neg = jnp.sum(jnp.minimum(x, 0.0), axis=axes, keepdims=True)
            s_pos = jnp.sum(jnp.maximum(x, 0.0), axis=axes, keepdims=True)
        n_pos = jnp.float32(x.size if axes is None else math.prod(x.shape[:-1])) - n_neg
        mean_neg = s_neg / jnp.maximum(n_neg, 1.0)
        mean_pos = s_pos / jnp.maximum(n_pos, 1.0)
        out = jnp.where(neg, mean_neg, mean_pos).astype(leaf.dtype)
        means = 2 * (x.shape[-1] if axes is not None else 1)
        return out, size(leaf) + 32 * means

    return per_leaf(one)


# ============================================================================= TernGrad


def _terngrad_omega(sizes, clip=None, **_):
    return None if clip is not None else max(math.sqrt(d) for d in sizes) - 1.0


@register_compressor("terngrad", unbiased=True, omega=_terngrad_omega, params={
    "clip": hp.positive("c: clip to c standard deviations first (biased)", optional=True,
                        static=True)})
def terngrad(clip: float | None = None) -> Compressor:
    r"""TernGrad: each entry becomes :math:`-s, 0` or :math:`+s`, unbiased, per layer.

    .. math:: s = \|x\|_\infty, \qquad C(x)_i = s\,\operatorname{sign}(x_i)\,b_i, \quad
              b_i \sim \mathrm{Bernoulli}(|x_i| / s), \qquad \mathbb E\,C(x) = x,

    :math:`\mathbb E\|C(x)\|^2 = s\|x\|_1 \le \sqrt{d_l}\|x\|^2`, so
    :math:`\omega = \max_l \sqrt{d_l} - 1`. With ``clip`` :math:`= c`, the entries are first
    clipped to :math:`\pm c\,\sigma` (:math:`\sigma` the layer's standard deviation; the
    paper's Section 3.3, :math:`c = 2.5`, which GRACE always applies): then biased, no
    :math:`\omega`. bits per layer :math:`= 2 d_l + 32` (two bits per ternary entry, the
    float32 scale).

    Written for speed: the draw is one hash round per entry
    (:func:`jaxasync.compress.base.random_bits`), and :math:`u s < |x|` is tested as
    :math:`u s < x` or :math:`u s < -x`, since an :math:`|x|` shared with the max was
    written to memory and read back. On the SASG shape (``benchmarks/compress_bench.py``,
    side by side, under load 2-3): 1.3-1.4x one gradient's time before, 0.8-1.1x after.

    Reference: Wen, Xu, Yan, Wu, Wang, Chen, Li, "TernGrad: ternary gradients to reduce
    communication in distributed deep learning", NeurIPS 2017 (arXiv 1705.07878), Eq. (4);
    GRACE ``grace_dl/torch/compressor/terngrad.py``.
    """

    def one(leaf, key):
        x = _as_f32(leaf)
        if clip is not None:
            sigma = jnp.sqrt(jnp.mean(jnp.square(x - jnp.mean(x))))
            x = jnp.clip(x, -clip * sigma, clip * sigma)
        s = jnp.max(jnp.abs(x))
        # u s < |x| as two comparisons: an abs shared with the max above is materialised
        t = uniform(key, x.shape) * s
        keep = (t < x) | (t < -x)
        out = jnp.where(keep, s * jnp.sign(x), 0.0).astype(leaf.dtype)
        return out, 2 * size(leaf) + 32

    return per_leaf(one)


# ============================================================================= natural


_MANTISSA = 0x007FFFFF
_EXP_ONE = 0x00800000


@register_compressor("natural", unbiased=True, omega=lambda sizes, **_: 1.0 / 8.0)
def natural() -> Compressor:
    r"""Natural compression: each entry randomly rounded to a neighbouring power of two.

    With :math:`2^a \le |x_i| < 2^{a+1}`:

    .. math:: C(x)_i = \operatorname{sign}(x_i) \begin{cases} 2^{a+1} & \text{with
              probability } p = |x_i|/2^a - 1 \\ 2^a & \text{otherwise} \end{cases},
              \qquad \mathbb E\,C(x) = x, \quad \omega = 1/8

    (the paper's Theorem 1). On a float32 this is exact integer arithmetic: :math:`p` is the
    mantissa over :math:`2^{23}`, so rounding up is ``mantissa > u`` for a uniform 23-bit
    :math:`u`, and the result is the exponent (plus one) with a zero mantissa. A subnormal
    rounds to 0 or :math:`2^{-126}` with the same rule (still unbiased); zero stays zero;
    the largest binade may round up to infinity. bits :math:`= 9 d` (sign and 8-bit
    exponent: the paper's count, the KAUST library's ``CompressedNatVector``).

    On the SASG shape (``benchmarks/compress_bench.py``, side by side, under load 2-3):
    0.5-0.6x one gradient's time (0.5-0.7x before :func:`jaxasync.compress.base.random_bits`
    took one hash round where it took two).

    Reference: Horváth, Ho, Horváth, Sahu, Canini, Richtárik, "Natural compression for
    distributed deep learning", MSML 2022 (arXiv 1905.10988), Section 3; GRACE
    ``grace_dl/torch/compressor/natural.py``.
    """

    def one(leaf, key):
        x = _as_f32(leaf)
        raw = lax.bitcast_convert_type(x, jnp.uint32)
        mantissa = raw & jnp.uint32(_MANTISSA)
        up = mantissa > uniform_bits(key, x.shape, 23)
        rounded = (raw & ~jnp.uint32(_MANTISSA)) + jnp.where(up, jnp.uint32(_EXP_ONE),
                                                              jnp.uint32(0))
        out = lax.bitcast_convert_type(rounded, jnp.float32)
        return out.astype(leaf.dtype), 9 * size(leaf)

    return per_leaf(one)
