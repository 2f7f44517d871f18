"""Named algorithms: each an ``optax.chain`` of worker-axis pieces, plus a registry.

A named algorithm is a factory taking plain numbers and returning an
``optax.GradientTransformationExtraArgs``. It expects stacked per-worker gradients
``[W, ...]`` and returns an ordinary update for the server parameters, so it works in
anyone's training loop::

    import jaxasync as ja
    tx = ja.delay_adaptive(learning_rate=0.1, num_workers=16)
    state = tx.init(params)
    updates, state = tx.update(grads_w, state, params, staleness=tau_w)
    params = optax.apply_updates(params, updates)

The registry (:data:`ALGORITHMS`) tells the simulator what each algorithm needs beyond
the cheap side information (``needs``: keys of :data:`jaxasync.side_info.SIDE_INFO`), how
many arrivals a server step waits for by default, whether it runs synchronous rounds, and what
each argument may be (:mod:`jaxasync.hparams`: type, range, static or traced). Adding an
algorithm never needs a change in the simulator: decorate its factory with :func:`register`.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import optax

from jaxasync import hparams as hp
from jaxasync import rules
from jaxasync.side_info import KNOWN_NEEDS
from jaxasync.transforms import aggregate, scale_by_staleness


@dataclasses.dataclass(frozen=True)
class AlgorithmSpec:
    """How the simulator runs a named algorithm.

    Attributes:
      name: registry name (the Hydra ``algorithm=`` option).
      factory: ``(**numbers) -> optax.GradientTransformationExtraArgs``, checking its
        arguments against ``params`` on every call.
      needs: extra args beyond the ones every algorithm gets (``staleness, mask,
        worker_ids, key``): names of :data:`jaxasync.side_info.SIDE_INFO`.
      arrivals: default arrivals per server step: an int, or ``"all"`` (= M).
      synchronous: every step all M workers compute at the current version
        (synchronous SGD, LAG/LASG/SASG); no delay model applies.
      own_messages: the algorithm decides what a worker sends (an acceptance test before
        the upload, a lazy skip, its own compression), so a generic compressor
        (``algorithm.compressor``) cannot be put in front of it.
      params: every keyword argument with its :class:`jaxasync.hparams.Param` (type, range,
        static or traced, schedule allowed).
      example: build arguments for the conformance tests (besides ``num_workers``, which
        they pass when the factory takes it): every registered algorithm is driven through
        the same contract tests built from these.
    """

    name: str
    factory: Callable[..., optax.GradientTransformationExtraArgs]
    needs: frozenset = frozenset()
    arrivals: int | str = 1
    synchronous: bool = False
    own_messages: bool = False
    params: Mapping[str, hp.Param] = dataclasses.field(default_factory=dict)
    example: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def parameters(self) -> list[str]:
        """Keyword arguments the factory accepts."""
        return list(self.params)

    def static(self) -> frozenset[str]:
        """The parameters fixed at trace time (one value per compiled program)."""
        return hp.static_names(self.params)

    def defaults(self) -> dict[str, Any]:
        """The factory's keyword defaults (a default config for an algorithm without YAML)."""
        sig = inspect.signature(self.factory)
        return {k: p.default for k, p in sig.parameters.items()
                if k in self.params and p.default is not inspect.Parameter.empty}

    def takes_schedule(self) -> bool:
        """Whether ``learning_rate`` may be an optax schedule (step decay)."""
        lr = self.params.get("learning_rate")
        return lr is not None and lr.schedule

    def example_kwargs(self, num_workers: int = 4) -> dict[str, Any]:
        """The conformance tests' build arguments: :attr:`example`, plus ``num_workers``."""
        kw = dict(self.example)
        if "num_workers" in self.params:
            kw.setdefault("num_workers", num_workers)
        return kw

    def build(self, **kwargs) -> optax.GradientTransformationExtraArgs:
        """Calls the factory; an unknown or bad argument is a ``ValueError`` naming it."""
        return self.factory(**kwargs)


ALGORITHMS: dict[str, AlgorithmSpec] = {}


def required_workers(algorithm: str, num_workers: int | None) -> int:
    """``num_workers`` of a factory whose rule depends on M: an integer >= 1, or a clear error
    (a silent default of 1 would change the rule, not fail)."""
    if num_workers is None:
        raise ValueError(f"{algorithm}: num_workers (M) is required; the simulator passes "
                         "the run's, a direct call must give it")
    return hp.NUM_WORKERS.check(f"{algorithm}: num_workers", num_workers)


def register(name: str, *, needs=(), arrivals: int | str = 1, synchronous: bool = False,
             own_messages: bool = False, params: Mapping[str, hp.Param] | None = None,
             static: tuple[str, ...] = (), example: Mapping[str, Any] | None = None):
    """Decorator adding a factory to :data:`ALGORITHMS` under ``name``.

    Args:
      needs: side information the transform needs (keys of
        :data:`jaxasync.side_info.SIDE_INFO`).
      arrivals, synchronous, own_messages: see :class:`AlgorithmSpec`.
      params: declarations of the factory's arguments (:class:`jaxasync.hparams.Param`);
        undeclared ones are derived from their defaults (:func:`jaxasync.hparams.derive`).
      static: names to treat as static whatever their declaration (shapes, branches).
      example: the conformance tests' build arguments, when the defaults do not build.

    The decorated name is the factory with its arguments checked on every call, so
    ``ja.asgd(learning_rate=-1.0)`` raises ``ValueError`` naming ``learning_rate``.
    """
    unknown = set(needs) - KNOWN_NEEDS
    if unknown:
        raise ValueError(f"register({name!r}): unknown needs {sorted(unknown)}; known: "
                         f"{', '.join(sorted(KNOWN_NEEDS))}")

    def deco(factory):
        declared = hp.derive(factory, params)
        for k in static:
            if k not in declared:
                raise ValueError(f"register({name!r}): static={k!r} is not an argument")
            declared[k] = dataclasses.replace(declared[k], static=True)
        fn = hp.checked(name, factory, declared)
        ALGORITHMS[name] = AlgorithmSpec(name, fn, frozenset(needs), arrivals, synchronous,
                                         own_messages, declared, dict(example or {}))
        return fn

    return deco


def get_algorithm(name: str) -> AlgorithmSpec:
    """The registered spec for ``name``; a clear error for an unknown name."""
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm {name!r}: unknown; choose one of: {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]


# ----------------------------------------------------------------------------- the first four


@register("sync_sgd", arrivals="all", synchronous=True)
def sync_sgd(learning_rate: float = 0.1) -> optax.GradientTransformationExtraArgs:
    r"""Synchronous (minibatch) SGD: all M workers at :math:`x_t`, mean of their gradients.

    .. math:: x_{t+1} = x_t - \eta \frac{1}{M} \sum_{i=1}^M g_i(x_t)

    Args:
      learning_rate: :math:`\eta`.

    References: Dekel, Gilad-Bachrach, Shamir, Xiao, "Optimal distributed online prediction
    using mini-batches", JMLR 2012 (arXiv 1012.1367); the baseline of Mishchenko et al.,
    NeurIPS 2022 (arXiv 2206.07638).
    """
    return optax.chain(aggregate("mean"), optax.sgd(learning_rate))


@register("asgd")
def asgd(learning_rate: float = 0.1) -> optax.GradientTransformationExtraArgs:
    r"""Asynchronous SGD: every arrival applied at a constant step size.

    .. math:: x_{t+1} = x_t - \eta\, g_i(x_{t-\tau_i})

    (With K arrivals per step, the mean of the K stale gradients.)

    References: Recht, Re, Wright, Niu, "Hogwild!", NeurIPS 2011; Lian, Huang, Li, Liu,
    "Asynchronous parallel SGD for nonconvex optimization", NeurIPS 2015.
    """
    return optax.chain(aggregate("mean"), optax.sgd(learning_rate))


@register("staleness_aware")
def staleness_aware(learning_rate: float = 0.1) -> optax.GradientTransformationExtraArgs:
    r"""Staleness-aware ASGD: :math:`\eta_i = \eta / \max(1, \tau_i)`.

    Extra args: ``staleness`` (int32[W]).

    Reference: Zhang, Gupta, Lian, Liu, "Staleness-aware Async-SGD for distributed deep
    learning", IJCAI 2016 (arXiv 1511.05950).
    """
    return optax.chain(scale_by_staleness(rules.inverse_staleness), aggregate("mean"),
                       optax.sgd(learning_rate))


@register("delay_adaptive")
def delay_adaptive(learning_rate: float = 0.1, num_workers: int | None = None
                   ) -> optax.GradientTransformationExtraArgs:
    r"""Delay-adaptive ASGD: :math:`\eta_i = \eta\, M / \max(M, \tau_i)`.

    Args:
      learning_rate: :math:`\eta`.
      num_workers: :math:`M` (required; the simulator fills it in).

    Extra args: ``staleness`` (int32[W]).

    Reference: Mishchenko, Bach, Even, Woodworth, "Asynchronous SGD beats minibatch SGD
    under arbitrary delays", NeurIPS 2022 (arXiv 2206.07638); code
    github.com/konstmish/asynchronous_sgd.
    """
    num_workers = required_workers("delay_adaptive", num_workers)
    scaler = lambda tau: rules.delay_adaptive(tau, num_workers)
    return optax.chain(scale_by_staleness(scaler), aggregate("mean"), optax.sgd(learning_rate))
