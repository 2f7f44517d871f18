r"""The compressor registry: names, declared arguments, and what each compressor guarantees.

Every compressor module registers its factories here with :func:`register_compressor`;
:data:`COMPRESSORS` maps the name (``algorithm.compressor.name``) to a :class:`CompressorSpec`.
Besides the arguments (:class:`jaxasync.hparams.Param`, all static), a registration states
what the compressor guarantees, in the two standard classes of the literature:

* **unbiased** with variance :math:`\omega`:
  :math:`\mathbb E\,C(x) = x,\ \mathbb E\|C(x) - x\|^2 \le \omega \|x\|^2`
  (Horváth et al., arXiv 1905.10988, Definition 1);
* **contractive** (biased) with :math:`\alpha \in [0, 1]`:
  :math:`\|C(x) - x\|^2 \le (1 - \alpha)\|x\|^2` (Stich, Cordonnier, Jaggi, arXiv 1809.07599,
  Definition 2.1; EF21's Definition 1, arXiv 2106.05203, in expectation).

``alpha`` / ``omega`` are functions ``(sizes, **kwargs) -> float | None`` of the leaf sizes of
the tree compressed (top-k's :math:`\alpha = \min_l k_l / d_l` depends on them) and the build
arguments. The property tests (``tests/test_compress_properties.py``) check every registered
compressor against what it states; EF21's theoretical step reads :math:`\alpha` through
:func:`contraction` (:func:`jaxasync.markov.ef21_step_size`).
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxasync import hparams as hp

PyTree = Any
Compressor = Callable[[PyTree, Any], tuple[PyTree, Any]]
Bound = Callable[..., "float | None"]


@dataclasses.dataclass(frozen=True)
class CompressorSpec:
    r"""A registered compressor.

    Attributes:
      name: the registry name (``algorithm.compressor.name``).
      factory: ``(**numbers) -> compressor``, checking its arguments on every call.
      params: every keyword argument with its :class:`jaxasync.hparams.Param` (compressor
        arguments are static: they fix shapes and message sizes).
      example: build arguments for the conformance and property tests.
      unbiased: :math:`\mathbb E\,C(x) = x` (random-k, QSGD...); False for biased ones
        (top-k, sign...), None where not stated.
      alpha: ``(sizes, **kwargs) -> alpha``, the contraction constant of a biased
        compressor on a tree with these leaf sizes (None: none is stated).
      omega: ``(sizes, **kwargs) -> omega``, the variance bound of an unbiased one.
    """

    name: str
    factory: Callable[..., Compressor]
    params: Mapping[str, hp.Param]
    example: Mapping[str, Any]
    unbiased: bool | None = None
    alpha: Bound | None = None
    omega: Bound | None = None

    def build(self, **kwargs: Any) -> Compressor:
        comp = self.factory(**kwargs)
        _BUILT[comp] = (self.name, dict(kwargs))
        return comp

    def contraction(self, sizes: Sequence[int], **kwargs: Any) -> float | None:
        """:math:`\\alpha` for leaves of these sizes (None where the compressor states none)."""
        return None if self.alpha is None else self.alpha(list(sizes), **_full(self, kwargs))

    def variance(self, sizes: Sequence[int], **kwargs: Any) -> float | None:
        """:math:`\\omega` for leaves of these sizes (None where the compressor states none)."""
        return None if self.omega is None else self.omega(list(sizes), **_full(self, kwargs))


def _full(spec: CompressorSpec, kwargs: Mapping[str, Any]) -> dict:
    import inspect

    sig = inspect.signature(spec.factory)
    out = {k: p.default for k, p in sig.parameters.items()
           if p.default is not inspect.Parameter.empty}
    out.update(kwargs)
    return out


COMPRESSORS: dict[str, CompressorSpec] = {}

#: built compressor -> (registry name, build arguments), for :func:`describe`
_BUILT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def register_compressor(name: str, *, params: Mapping[str, hp.Param] | None = None,
                        example: Mapping[str, Any] | None = None,
                        unbiased: bool | None = None, alpha: Bound | None = None,
                        omega: Bound | None = None):
    """Decorator adding a compressor factory to :data:`COMPRESSORS` under ``name``.

    The factory takes plain numbers and returns ``compressor(tree, key) -> (message, bits)``
    (see :mod:`jaxasync.compress`), or a :class:`jaxasync.compress.base.Stateful`. Its
    arguments are declared with :class:`jaxasync.hparams.Param` (undeclared ones derived from
    their defaults), all static, and checked on every call, so a bad value is a
    ``ValueError`` naming it. ``alpha``/``omega`` state its guarantee (module docstring). A new
    registration is tested by the conformance and property tables without adding a test.
    """

    def deco(factory):
        declared = {k: dataclasses.replace(p, static=True)
                    for k, p in hp.derive(factory, params).items()}
        fn = hp.checked(f"compressor {name!r}", factory, declared)
        COMPRESSORS[name] = CompressorSpec(name, fn, declared, dict(example or {}), unbiased,
                                           alpha, omega)
        return fn

    return deco


def make_compressor(name: str, **kwargs: Any) -> Compressor:
    """Builds a registered compressor: ``make_compressor("top_k", density=0.01)``.

    Raises:
      ValueError: unknown name, unknown keyword, or a bad value (density outside (0, 1],
        levels < 1, ...), naming it in one line.
    """
    if name not in COMPRESSORS:
        raise ValueError(f"compressor {name!r}: unknown; choose one of: "
                         f"{', '.join(sorted(COMPRESSORS))}")
    return COMPRESSORS[name].build(**kwargs)


def describe(compressor: Compressor) -> tuple[CompressorSpec, dict] | None:
    """``(spec, kwargs)`` of a compressor built by :func:`make_compressor` (or a spec's
    ``build``); None for one built otherwise (a factory called directly, a user's own)."""
    try:
        found = _BUILT.get(compressor)
    except TypeError:                      # not weak-referenceable: not one of ours
        return None
    return None if found is None else (COMPRESSORS[found[0]], found[1])


def leaf_sizes(tree: PyTree) -> list[int]:
    """The number of entries of every leaf of ``tree`` (shapes only)."""
    return [int(np.prod(np.shape(leaf))) for leaf in jax.tree.leaves(tree)]


def contraction(compressor: Compressor, tree: PyTree) -> float | None:
    r"""The contraction constant :math:`\alpha` a registered compressor states for ``tree``'s
    leaf sizes, or None (not built from the registry, or no :math:`\alpha` stated)."""
    found = describe(compressor)
    return None if found is None else found[0].contraction(leaf_sizes(tree), **found[1])
