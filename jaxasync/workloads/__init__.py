"""Workloads: dataset + model + loss + evaluation + target (AlgoPerf style).

A :class:`Workload` owns everything the simulator needs to train and judge a model: host NumPy
data, a pure ``init(key)``, a pure mean ``loss(params, x, y)`` (jittable, vmappable over a
leading params axis), a jittable chunked ``evaluate(params, x, y)``, and the :class:`Target` that
decides when a run has "reached" (AlgoPerf, Dahl et al., 2023, arXiv 2306.07179, fixes the target
per workload in the same way). Build one with ``get_workload(name, **options)``.

Target values were measured here with plain ``optax.sgd`` (no momentum) on this machine's CPU
unless the docstring cites a paper; see each factory.

The parts (:mod:`.base`), the convex workloads (:mod:`.convex`) and the classification ones
(:mod:`.classification`) have modules of their own; this one is the registry, and every name
is importable from here.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from jaxasync import hparams as hp
from jaxasync.workloads.base import (  # noqa: F401  (re-exported)
    _COMMON,
    _DATA_DIR,
    _DEFAULT_DATA_DIR,
    _MODES,
    _SEED,
    _SIZE,
    Target,
    Workload,
    _check_seed,
    _chunked_sums,
    _classifier,
    _init_fn,
    _mean_cross_entropy,
    _options,
    gradient_pair,
)
from jaxasync.workloads.classification import (  # noqa: F401  (re-exported)
    _cifar_augment,
    _classification_workload,
    cifar10_resnet18,
    cifar100_resnet18,
    digits_mlp,
    fashion_mnist_fc,
    mnist1d_cnn,
    mnist1d_mlp,
    mnist_fc,
    mnist_subset_fc,
)
from jaxasync.workloads.convex import (  # noqa: F401  (re-exported)
    _initial_gap,
    _least_squares_workload,
    least_squares,
    logistic,
    mishchenko_quadratic,
    sign_counterexample,
    worst_case_quadratic,
)

__all__ = ["Target", "Workload", "WORKLOADS", "get_workload", "gradient_pair", "list_workloads",
           "options_of"]


def options_of(name_or_factory: str | Callable) -> dict[str, hp.Param]:
    """Every option of a workload with its declaration (derived from the defaults where the
    factory declares none)."""
    f = WORKLOADS[name_or_factory] if isinstance(name_or_factory, str) else name_or_factory
    return getattr(f, "options", None) or hp.derive(f)


# ---------------------------------------------------------------------------------------------
# Registry.
# ---------------------------------------------------------------------------------------------

WORKLOADS: dict[str, Callable[..., Workload]] = {
    "least_squares": least_squares,
    "logistic": logistic,
    "mishchenko_quadratic": mishchenko_quadratic,
    "worst_case_quadratic": worst_case_quadratic,
    "sign_counterexample": sign_counterexample,
    "mnist1d_mlp": mnist1d_mlp,
    "mnist1d_cnn": mnist1d_cnn,
    "digits_mlp": digits_mlp,
    "mnist_subset_fc": mnist_subset_fc,
    "mnist_fc": mnist_fc,
    "fashion_mnist_fc": fashion_mnist_fc,
    "cifar10_resnet18": cifar10_resnet18,
    "cifar100_resnet18": cifar100_resnet18,
}

# Workloads that need no files (everything is generated or shipped in a PyPI package).
OFFLINE_WORKLOADS = (
    "least_squares",
    "logistic",
    "mishchenko_quadratic",
    "worst_case_quadratic",
    "sign_counterexample",
    "mnist1d_mlp",
    "mnist1d_cnn",
    "digits_mlp",
    "mnist_subset_fc",
)


def list_workloads() -> list[str]:
    """Registered workload names."""
    return list(WORKLOADS)


def get_workload(name: str, **options) -> Workload:
    """Builds the workload ``name`` with keyword ``options`` (its factory's parameters).

    Every workload accepts ``seed`` (the data seed) and ``data_dir`` (used by the file-based
    ones, default ``"data"``); the file-based ones also ``verify_checksums`` (default True: a
    file that claims to be an original must have its published checksum, see
    ``data.check_original``); the rest are listed in each factory's signature.

    Raises:
      ValueError: unknown workload or option, or a bad option value.
      FileNotFoundError: a file-based workload whose files are missing from ``data_dir``.
    """
    if name not in WORKLOADS:
        close = difflib.get_close_matches(name, WORKLOADS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"workload {name!r}: unknown{hint}; choose one of: {', '.join(WORKLOADS)}")
    factory = WORKLOADS[name]
    allowed = options_of(factory)
    for key in options:
        if key not in allowed:
            raise ValueError(
                f"workload {name!r}: unknown option {key!r}; allowed: {', '.join(allowed)}"
            )
    return factory(**check_options(name, options))


def check_options(name: str, options: dict, prefix: str = "") -> dict:
    """``options`` of workload ``name`` checked against their declarations (a path-like
    ``data_dir`` becomes a string); raises ``ValueError("<prefix><option>=<value>: must be
    ...")``."""
    import os

    declared = options_of(name)
    out = {}
    for key, value in options.items():
        if key == "data_dir" and isinstance(value, os.PathLike):
            value = os.fspath(value)
        out[key] = declared[key].check(prefix + key, value) if key in declared else value
    return out
