"""The lazy family as registered algorithms: SASG, LASG, LAG (WK and PS), Sparse and SGD as
the SASG authors run them, each a chain around :func:`jaxasync.lazy.lazy_upload` (the
transform, its rules and its state live in :mod:`jaxasync.lazy`).

References: Deng, Li, Sun, Lu, SASG, arXiv 2112.04088 (and the authors' code,
github.com/xiaogdeng/SASG); Chen, Sun, Yin, LASG, arXiv 2002.11360; Chen, Giannakis, Sun,
Yin, LAG, NeurIPS 2018, arXiv 1805.09965.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax
from jax import Array

from jaxasync import hparams as hp
from jaxasync.algorithms import register, required_workers
from jaxasync.lazy import (
    _LAZY_NEEDS,
    THRESHOLDS,
    TOPK_METHODS,
    _server_sum,
    lazy_upload,
    scale_rows,
    top_k_compressor,
)
from jaxasync.transforms import compress_rows

PyTree = Any
Compressor = Callable[[PyTree, Array], tuple[PyTree, Array]]



#: declarations of the lazy family's arguments (each factory takes a subset)
_PARAMS = {
    "density": hp.Param("float", low=0.0, high=1.0, low_open=True, static=True,
                         doc="h: top-k keeps max(1, floor(h d_l)) entries per layer"),
    "history": hp.integer(1, doc="D: warm-up, threshold window, forced upload after D skips"),
    "threshold": hp.one_of(*THRESHOLDS, doc="the threshold's form"),
    "threshold_scale": hp.non_negative("multiplies the threshold"),
    "per_layer": hp.flag("top-k per leaf (True) or over the whole vector"),
    "max_skips": hp.integer(0, optional=True, doc="default: history"),
    "smoothness": hp.positive("L_m of LAG-PS", optional=True),
    "variant": hp.one_of("wk", "ps"),
}


def _declare(*names: str) -> dict[str, hp.Param]:
    return {k: _PARAMS[k] for k in names}


_PARAMS["topk_method"] = hp.one_of(*TOPK_METHODS, doc="exact, approx (DGC) or lax.top_k")


# ----------------------------------------------------------------------------- the algorithms


@register("sasg", needs=_LAZY_NEEDS, arrivals="all", synchronous=True, own_messages=True,
          params=_declare("density", "history", "threshold", "threshold_scale", "per_layer",
                          "topk_method", "max_skips"))
def sasg(learning_rate: float = 0.005, num_workers: int | None = None, density: float = 0.01,
         history: int = 10, threshold: str = "2alpha", threshold_scale: float = 1.0,
         per_layer: bool = True, topk_method: str = "exact", max_skips: int | None = None
         ) -> optax.GradientTransformationExtraArgs:
    r"""SASG: lazy (skipped) uploads of per-layer top-k messages with error feedback.

    .. math::

       &\text{upload}_m \iff k < D \lor \|g_m(x_k;\xi) - g_m(\hat x_m;\xi)\|^2
          > \frac{\sum_{j=0}^{D-2}\|x_{k-j} - x_{k-j-1}\|^2}{2\alpha M^2} \lor \tau_m > D \\
       &\text{upload: } v = \alpha g_m(x_k;\xi) + e_m,\ \hat g_m = \mathrm{TopK}_h(v),\
          e_m = v - \hat g_m,\ \hat x_m = x_k \\
       &x_{k+1} = x_k - \textstyle\sum_m \hat g_m

    Args:
      learning_rate: :math:`\alpha`.
      num_workers: :math:`M`.
      density: :math:`h`; :math:`k_l = \max(1, \lfloor h d_l\rfloor)` per layer.
      history: :math:`D` (warm-up, window, forced upload after :math:`D` skips).
      threshold: the constant's form: ``"2alpha"`` (MNIST notebook), ``"alpha"`` (CIFAR
        notebooks, distributed code), ``"wk2"`` (:math:`4\Sigma/(D(M\alpha)^2)`, VGG
        notebook), or ``"lag"``/``"never"`` (see :mod:`jaxasync.lazy`).
      threshold_scale: multiplies the threshold.
      per_layer: top-k per parameter leaf (as the authors) or over the whole vector.
      topk_method: ``"exact"`` (fast exact selection), ``"approx"`` (sampled threshold, as
        in Deep Gradient Compression) or ``"lax"`` (``jax.lax.top_k``); see
        :func:`top_k_compressor`.
      max_skips: default ``history``.

    Extra args: ``ref_grad_dist`` (:math:`\|g_m - g_m^{ref}\|^2`, :math:`g_m^{ref}` the
    worker's gradient at its last-upload iterate on the same minibatch) or ``ref_grads``
    (:math:`g_m^{ref}` itself), ``update_norms``, ``key``.

    Uplink bits per upload: :math:`64\sum_l k_l`; a skip costs nothing.

    References: Deng, Li, Sun, Lu, "SASG: sparse communication with adaptive aggregated
    stochastic gradients for distributed learning", arXiv 2112.04088 (code
    github.com/xiaogdeng/SASG, ``FullConnect_MNIST.ipynb``).
    """
    comp = top_k_compressor(density, per_layer=per_layer, method=topk_method)
    return optax.chain(
        lazy_upload(learning_rate, num_workers, rule="gradient", threshold=threshold,
                    threshold_scale=threshold_scale, history=history, max_skips=max_skips,
                    compressor=comp, error_feedback=True),
        _server_sum(fuse_rows=True),
    )


@register("lasg", needs=_LAZY_NEEDS, arrivals="all", synchronous=True, own_messages=True,
          params=_declare("history", "threshold", "threshold_scale", "max_skips"))
def lasg(learning_rate: float = 0.005, num_workers: int | None = None, history: int = 10,
         threshold: str = "2alpha", threshold_scale: float = 1.0, max_skips: int | None = None
         ) -> optax.GradientTransformationExtraArgs:
    r"""LASG-WK2 as the SASG authors run it: SASG's skip rule with dense messages, no memory.

    .. math::

       \text{upload}_m \iff k < D \lor \|g_m(x_k;\xi) - g_m(\hat x_m;\xi)\|^2 > \text{thr}_k
       \lor \tau_m > D,\qquad x_{k+1} = x_k - \textstyle\sum_m \hat g_m,\
       \hat g_m = \alpha g_m(\hat x_m; \xi_{\text{last upload}})

    The default threshold is SASG's (``"2alpha"``); the SASG MNIST notebook's LASG cell
    forgets to assign its division by :math:`2\alpha M^2`, which equals 1 at
    :math:`\alpha = 0.005, M = 10`, so the default reproduces it there. ``"wk2"`` is the
    LASG paper's constant (:math:`\xi_d = 4/D`).

    Args:
      learning_rate: :math:`\alpha`. num_workers: :math:`M`. history: :math:`D`.
      threshold, threshold_scale, max_skips: as :func:`sasg`.

    Extra args: ``ref_grad_dist`` (or ``ref_grads``), ``update_norms``.

    References: Chen, Sun, Yin, "LASG: lazily aggregated stochastic gradients for
    communication-efficient distributed learning", arXiv 2002.11360 (IEEE TSP 2021);
    Deng, Li, Sun, Lu, arXiv 2112.04088 (the harness).
    """
    return optax.chain(
        lazy_upload(learning_rate, num_workers, rule="gradient", threshold=threshold,
                    threshold_scale=threshold_scale, history=history, max_skips=max_skips),
        _server_sum(),
    )


def lag(learning_rate: float = 0.01, num_workers: int | None = None, variant: str = "wk",
        history: int = 10, smoothness: float | None = None, threshold: str = "lag",
        threshold_scale: float = 1.0, max_skips: int | None = None
        ) -> optax.GradientTransformationExtraArgs:
    r"""LAG (lazily aggregated gradient), worker-side (WK) or server-side (PS) trigger.

    Deterministic: run it with full local gradients (``workload.full_batch=true``), so
    :math:`\nabla L_m` is worker :math:`m`'s full-shard gradient.

    .. math::

       \text{WK: upload}_m \iff \|\nabla L_m(x_k) - \nabla L_m(\hat x_m)\|^2 >
         \frac{1}{\alpha^2 M^2}\sum_{d=1}^{D} \xi_d \|x_{k+1-d} - x_{k-d}\|^2,\ \xi_d = 1/D

       \text{PS: upload}_m \iff L_m^2 \|\hat x_m - x_k\|^2 > \text{(same)}

       x_{k+1} = x_k - \alpha \textstyle\sum_m \nabla L_m(\hat x_m)

    Every worker uploads at :math:`k = 0` (nothing is stored yet), and, as in LASG/SASG, a
    worker that skipped ``max_skips`` (default :math:`D`) times in a row uploads.

    Args:
      learning_rate: :math:`\alpha` (the paper's :math:`1/L` for a sum of :math:`M` mean
        losses is :math:`1/(M L)` here).
      num_workers: :math:`M`.
      variant: ``"wk"`` (needs ``ref_grads``) or ``"ps"`` (needs ``smoothness``).
      history: :math:`D`.
      smoothness: :math:`L_m` (one value for all workers) for ``"ps"``.
      threshold: default ``"lag"``; threshold_scale, max_skips: as :func:`sasg`.

    References: Chen, Giannakis, Sun, Yin, "LAG: lazily aggregated gradient for
    communication-efficient distributed learning", NeurIPS 2018, arXiv 1805.09965.
    """
    if variant not in ("wk", "ps"):
        raise ValueError(f"lag variant={variant!r}: choose 'wk' or 'ps'")
    return optax.chain(
        lazy_upload(learning_rate, num_workers, rule="gradient" if variant == "wk" else "parameter",
                    threshold=threshold, threshold_scale=threshold_scale, history=history,
                    max_skips=max_skips, warmup=1, smoothness=smoothness),
        _server_sum(),
    )


@register("lag_wk", needs=_LAZY_NEEDS, arrivals="all", synchronous=True, own_messages=True,
          params=_declare("history", "threshold", "threshold_scale", "max_skips"))
def lag_wk(learning_rate: float = 0.01, num_workers: int | None = None, history: int = 10,
           threshold: str = "lag", threshold_scale: float = 1.0, max_skips: int | None = None
           ) -> optax.GradientTransformationExtraArgs:
    """LAG-WK: :func:`lag` with ``variant="wk"`` (the worker tests its gradient change).

    Extra args: ``ref_grad_dist`` (or ``ref_grads``), ``update_norms``.

    Reference: Chen, Giannakis, Sun, Yin, NeurIPS 2018, arXiv 1805.09965.
    """
    return lag(learning_rate, num_workers, "wk", history, None, threshold, threshold_scale,
               max_skips)


@register("lag_ps", needs=("update_norms",), arrivals="all", synchronous=True,
          own_messages=True, example={"smoothness": 1.0},
          params=_declare("history", "smoothness", "threshold", "threshold_scale", "max_skips"))
def lag_ps(learning_rate: float = 0.01, num_workers: int | None = None, history: int = 10,
           smoothness: float | None = None, threshold: str = "lag", threshold_scale: float = 1.0,
           max_skips: int | None = None) -> optax.GradientTransformationExtraArgs:
    r"""LAG-PS: :func:`lag` with ``variant="ps"``: the server tests :math:`L^2\|\hat x_m - x_k\|^2`.

    ``smoothness`` defaults to the workload's :math:`L` when run by the experiment runner.

    Extra args: ``update_norms``.

    Reference: Chen, Giannakis, Sun, Yin, NeurIPS 2018, arXiv 1805.09965.
    """
    return lag(learning_rate, num_workers, "ps", history, smoothness, threshold,
               threshold_scale, max_skips)


@register("sparse", arrivals="all", synchronous=True, own_messages=True,
          params=_declare("density", "per_layer", "topk_method"))
def sparse(learning_rate: float = 0.005, num_workers: int | None = None, density: float = 0.01,
            per_layer: bool = True, topk_method: str = "exact"
            ) -> optax.GradientTransformationExtraArgs:
    r"""Top-k sparsification with error feedback, every worker every round ("Sparse").

    .. math::

       v_m = \alpha g_m(x_k) + e_m,\quad \hat g_m = \mathrm{TopK}_h(v_m),\quad
       e_m \leftarrow v_m - \hat g_m,\quad x_{k+1} = x_k - \textstyle\sum_m \hat g_m

    Built from the generic :func:`jaxasync.transforms.compress_rows` transform (not from
    :func:`lazy_upload`), so ``sasg(threshold="never") == sparse`` is a real check.

    Args:
      learning_rate: :math:`\alpha`. num_workers: :math:`M` (error memories).
      density, per_layer, topk_method: as :func:`sasg`.

    Extra args: ``key`` (unused by exact top-k).

    References: Stich, Cordonnier, Jaggi, "Sparsified SGD with memory", NeurIPS 2018,
    arXiv 1809.07599; Aji, Heafield, arXiv 1704.05021; run as in Deng et al., arXiv
    2112.04088.
    """
    num_workers = required_workers("sparse", num_workers)
    comp = top_k_compressor(density, per_layer=per_layer, method=topk_method)
    return optax.chain(scale_rows(learning_rate),
                       compress_rows(comp, error_feedback=True, num_workers=num_workers),
                       _server_sum(fuse_rows=True))


@register("sgd_sum", arrivals="all", synchronous=True)
def sgd_sum(learning_rate: float = 0.005) -> optax.GradientTransformationExtraArgs:
    r"""Synchronous SGD as the SASG authors run it: every worker uploads :math:`\alpha g_m`.

    .. math:: x_{k+1} = x_k - \sum_{m=1}^{M} \alpha\, g_m(x_k)

    (a sum, not a mean: :math:`\alpha = 0.005` with :math:`M = 10` is a mean step of 0.05).

    Args:
      learning_rate: :math:`\alpha`.

    Reference: Deng, Li, Sun, Lu, arXiv 2112.04088 (the "SGD" baseline).
    """
    return optax.chain(scale_rows(learning_rate), _server_sum())
