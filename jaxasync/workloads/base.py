"""The parts every workload is made of: :class:`Target`, :class:`Workload`, the gradient pair
of the lazy skip test, losses and chunked evaluation, and the declared options of the
factories (:mod:`jaxasync.workloads`)."""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxasync import data as data_lib
from jaxasync import hparams as hp
from jaxasync.transforms import tree_sq_dist

PyTree = Any
_MODES = ("max", "min")
_DEFAULT_DATA_DIR = "data"


@dataclasses.dataclass(frozen=True)
class Target:
    """When a run counts as having reached the workload's goal.

    Attributes:
      metric: ``"<split>_<key>"`` where ``key`` is a key of ``Workload.evaluate``'s result on
        that split (``"test_accuracy"``, ``"test_top5"``, ``"test_loss"``), or ``"train_gap"``:
        ``evaluate(params, x_train, y_train)["loss"] - f_star``.
      value: the threshold.
      mode: ``"max"`` (reached when metric >= value) or ``"min"`` (metric <= value).
    """

    metric: str
    value: float
    mode: str

    def __post_init__(self):
        if self.mode not in _MODES:
            raise ValueError(f"target mode {self.mode!r}: unknown; choose one of: max, min")
        if not math.isfinite(self.value):
            raise ValueError(f"target value {self.value!r}: must be finite")

    def reached(self, value: float | jax.Array) -> bool | jax.Array:
        """Whether ``value`` of ``metric`` meets the target (works on traced arrays too)."""
        return value >= self.value if self.mode == "max" else value <= self.value


@dataclasses.dataclass(frozen=True)
class Workload:
    """A benchmark problem; all callables are pure and jittable.

    Attributes:
        name: registry name.
        data: host NumPy arrays (the simulator puts them on the device).
        init: PRNG key -> params pytree (Flax variables ``{"params": ...}``).
        loss: (params, x_batch, y_batch) -> scalar mean training loss; vmappable over a leading
            params axis.
        evaluate: (params, x, y) -> ``{"loss", "accuracy"}`` for classification (plus ``"top5"``
            for CIFAR-100), ``{"loss"}`` for least squares; means over all rows, computed in
            fixed-size chunks. ``"loss"`` is the training objective (regulariser included), so
            ``evaluate(params, x_train, y_train)["loss"] - f_star`` is the optimality gap.
        target: the threshold a run must reach (see :class:`Target`).
        smoothness: L of the mean training loss, when known (convex workloads).
        f_star: the optimal mean training loss, when known (convex workloads).
        num_classes: number of classes; None for regression.
        augment: (key, x_batch) -> x_batch, on-device training augmentation (CIFAR), or None.
        description: one line for reports.
        grad_pair: an exact fast form of :func:`gradient_pair` for this model (the MLPs:
            :func:`jaxasync.models.mlp_grad_pair`), or None for the generic one.
    """

    name: str
    data: data_lib.Dataset
    init: Callable[[jax.Array], PyTree]
    loss: Callable[[PyTree, jax.Array, jax.Array], jax.Array]
    evaluate: Callable[[PyTree, jax.Array, jax.Array], dict]
    target: Target
    smoothness: float | None = None
    f_star: float | None = None
    num_classes: int | None = None
    augment: Callable | None = None
    description: str = ""
    grad_pair: tuple[Callable, Callable] | None = None


def gradient_pair(workload: Any) -> tuple[Callable, Callable]:
    r"""``(reference, pair)``: what the lazy skip test needs from a workload, in two halves.

    ``reference(params_b, x, y) -> ref`` is everything the test needs from the gradient at
    ``params_b``; ``pair(params_a, ref, x, y) -> (loss_a, grad_a, dist_sq)`` the loss and
    gradient at ``params_a`` and :math:`\|\nabla L(a) - \nabla L(b)\|^2` on the same
    minibatch. The workload's exact fast form (its ``grad_pair``, e.g. the MLPs') where it has
    one; otherwise, for any object with a ``loss``, ``ref`` is the gradient itself.
    """
    fast = getattr(workload, "grad_pair", None)
    if fast is not None:
        return fast
    loss = workload.loss

    def pair(params_a, grad_b, x, y):
        loss_a, grad_a = jax.value_and_grad(loss)(params_a, x, y)
        return loss_a, grad_a, tree_sq_dist(grad_a, grad_b)

    return jax.grad(loss), pair


# ---------------------------------------------------------------------------------------------
# Building blocks: losses and chunked evaluation.
# ---------------------------------------------------------------------------------------------


def _chunked_sums(
    per_example: Callable[[jax.Array, jax.Array], dict], x: jax.Array, y: jax.Array, chunk: int
) -> dict:
    """Means over the examples of ``per_example``'s outputs, computed ``chunk`` rows at a time.

    ``lax.map`` runs the chunks sequentially so memory is bounded by one chunk's activations;
    the tail is zero-padded and masked out so any set size works with one compiled chunk shape.
    """
    n = x.shape[0]
    chunk = max(1, min(chunk, n))
    num_chunks = -(-n // chunk)
    pad = num_chunks * chunk - n
    mask = jnp.arange(num_chunks * chunk) < n
    xs = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape(num_chunks, chunk, *x.shape[1:])
    ys = jnp.pad(y, [(0, pad)] + [(0, 0)] * (y.ndim - 1)).reshape(num_chunks, chunk, *y.shape[1:])
    ms = mask.reshape(num_chunks, chunk)

    def one(args):
        xc, yc, mc = args
        return jax.tree.map(lambda v: jnp.sum(jnp.where(mc, v, 0.0)), per_example(xc, yc))

    sums = jax.lax.map(one, (xs, ys, ms))
    return jax.tree.map(lambda s: jnp.sum(s) / n, sums)


def _mean_cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _classifier(module: nn.Module, chunk: int, top5: bool = False) -> tuple[Callable, Callable]:
    """Softmax cross-entropy loss, and an evaluate reporting loss, accuracy (and top-5)."""

    def loss(params, x, y):
        return _mean_cross_entropy(module.apply(params, x), y)

    def per_example(params, x, y):
        logits = module.apply(params, x).astype(jnp.float32)
        out = {
            "loss": optax.softmax_cross_entropy_with_integer_labels(logits, y),
            "accuracy": (jnp.argmax(logits, -1) == y).astype(jnp.float32),
        }
        if top5:
            # Rank of the true class = number of classes scoring strictly higher (ties favour it,
            # like torch.topk on distinct scores).
            true = jnp.take_along_axis(logits, y[:, None], axis=-1)
            out["top5"] = (jnp.sum(logits > true, axis=-1) < 5).astype(jnp.float32)
        return out

    def evaluate(params, x, y):
        return _chunked_sums(lambda xc, yc: per_example(params, xc, yc), x, y, chunk)

    return loss, evaluate


def _init_fn(module: nn.Module, example_x: np.ndarray) -> Callable[[jax.Array], PyTree]:
    shape = (1, *example_x.shape[1:])
    return lambda key: module.init(key, jnp.zeros(shape, jnp.float32))


def _check_seed(seed) -> int:
    return hp.Param("int", low=0, high=2**32 - 1).check("seed", seed)


# Every workload option is declared (``workload.options.<name>`` on the command line): the
# same declaration is checked by get_workload, by jaxasync.experiment.validate before any
# data is read, and named in the error. Options not declared here are derived from their
# defaults (hparams.derive).
_SEED = hp.Param("int", low=0, high=2**32 - 1, static=True, doc="the data seed")
_DATA_DIR = hp.Param("str", optional=True, static=True, doc="where the data files are")
_COMMON = {"seed": _SEED, "data_dir": _DATA_DIR,
           "verify_checksums": hp.flag("a file claiming to be an original must have its "
                                       "published checksum")}
_SIZE = {"n": hp.integer(1, doc="training examples"), "d": hp.integer(1, doc="dimension")}


def _options(**declared: hp.Param) -> Callable:
    """Declares a workload factory's options (see :func:`options_of`)."""

    def wrap(factory: Callable) -> Callable:
        params = inspect.signature(factory).parameters
        common = {k: p for k, p in _COMMON.items() if k in params}
        factory.options = hp.derive(factory, {**common, **declared})
        return factory

    return wrap
