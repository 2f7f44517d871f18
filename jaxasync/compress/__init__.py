r"""Gradient compressors, one worker at a time, and compression with memory.

Every compressor is called as ``compressor(tree, key) -> (message, bits)``:

* ``tree`` is one worker's gradient, a pytree of float arrays (a Flax params dict, say);
* ``message`` has the same structure, shapes and dtypes: the *decompressed* message the
  server sees, dense, zeros where nothing is sent;
* ``bits`` is a float32 scalar: the size of the message on the wire (what the counters add).

They read no config object and are pure, jittable and ``jax.vmap``-able over a leading
worker axis of ``tree`` and ``key`` (the caller vmaps). Hyperparameters are bound by factories
that take plain numbers::

    comp = top_k(0.01)                       # per-layer top-1%, exact
    msg, bits = jax.vmap(comp)(grads_w, jax.random.split(key, num_workers))

A compressor that keeps state per worker (PowerSGD, DGC, signum, the re-estimated threshold,
PermK) is a :class:`Stateful` (see :mod:`jaxasync.compress.base`): called as above it makes a
first call; with memory, its state lives in a :class:`Memory` and :func:`error_feedback`
carries it. :func:`error_feedback` is the one step of compression with memory (EF14 error
feedback, EF21's Markov compressor, or none), for every transform that compresses.

Modules: :mod:`~jaxasync.compress.mask` (the mask form of top-k), :mod:`~.sparsify` (top-k,
random-k, unbiased rand-k, PermK), :mod:`~.thresholding` (hard threshold, DGC),
:mod:`~.quantize` (identity, fp16, QSGD, sign, signum, 1-bit SGD, TernGrad, natural),
:mod:`~.hadamard` (the fast Walsh–Hadamard transform, FO-SGD), :mod:`~.lowrank` (PowerSGD),
:mod:`~.feedback` (:class:`Memory`, :func:`error_feedback`), :mod:`~.registry`
(:data:`COMPRESSORS`, :func:`register_compressor`, :func:`make_compressor`, and what each
compressor states: unbiased with :math:`\omega`, or contractive with :math:`\alpha`).
"""

from jaxasync.compress.base import Compressor, Stateful, is_stateful, top_k_count
from jaxasync.compress.feedback import Memory, error_feedback, init_memory
from jaxasync.compress.hadamard import fo_sgd, fwht
from jaxasync.compress.lowrank import powersgd
from jaxasync.compress.mask import (
    MaskCompressor,
    apply_selection,
    mask_error_feedback,
    selection_dtype,
    split_selection,
)
from jaxasync.compress.quantize import (
    fp16,
    identity,
    natural,
    onebit,
    qsgd,
    sign_scale,
    signum,
    terngrad,
)
from jaxasync.compress.registry import (
    COMPRESSORS,
    CompressorSpec,
    contraction,
    describe,
    leaf_sizes,
    make_compressor,
    register_compressor,
)
from jaxasync.compress.sparsify import (
    perm_k,
    rand_k_unbiased,
    random_k,
    top_k,
    top_k_select,
    top_k_threshold,
)
from jaxasync.compress.thresholding import dgc, threshold

__all__ = [
    "COMPRESSORS", "Compressor", "CompressorSpec", "MaskCompressor", "Memory", "Stateful",
    "apply_selection", "contraction", "describe", "dgc", "error_feedback", "fo_sgd", "fp16",
    "fwht", "identity", "init_memory", "is_stateful", "leaf_sizes", "make_compressor",
    "mask_error_feedback", "natural", "onebit", "perm_k", "powersgd", "qsgd",
    "rand_k_unbiased", "random_k", "register_compressor", "selection_dtype", "sign_scale",
    "signum", "split_selection", "terngrad", "threshold", "top_k", "top_k_count",
    "top_k_select", "top_k_threshold",
]
