"""Leaderboard quantities: what is measured in a run record (:data:`QUANTITIES`), one value
per member, and its summary over a run's members (:func:`summarize`); pure functions of the
record. :mod:`jaxasync.leaderboard.verdicts` judges them."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable

import numpy as np

from jaxasync import report

INF = math.inf


class EntryError(ValueError):
    """A malformed entry definition (the message names the entry and the key)."""


# ============================================================================ quantities


@dataclasses.dataclass(frozen=True)
class Quantity:
    """A measurement of one member (seed) of a run record.

    ``fn(member, target)`` returns a float, or None when the member has no value (never
    reached the target, diverged); such members count as the worst value (``+inf`` when
    lower is better, ``-inf`` otherwise) in orderings and ratios.
    """

    label: str
    lower_is_better: bool
    kind: str  # how to print: count, bits, percent, float, sci
    fn: Callable[[dict, dict | None], float | None]
    #: the record's divisor of every member's value (None: the quantity is undefined there)
    scale: Callable[[dict], float | None] | None = None

    @property
    def worst(self) -> float:
        return INF if self.lower_is_better else -INF


def _hit(member: dict, target: dict | None, key: str) -> float | None:
    if target is None:
        return None
    hit = report.reached(member["history"], target["metric"], target["value"], target["mode"])
    return None if hit is None or key not in hit else float(hit[key])


def _final(member: dict, key: str, scale: float = 1.0) -> float | None:
    if member.get("status", "ok") != "ok":
        return None
    v = member["history"][-1].get(key)
    if v is None or not math.isfinite(v):
        return None
    return float(v) * scale


def _fraction(member: dict, part: str, whole: Iterable[str]) -> float | None:
    last = member["history"][-1]
    total = sum(float(last.get(k, 0.0)) for k in whole)
    if part not in last or total <= 0:
        return None
    return 100.0 * float(last[part]) / total


def optimal_time(record: dict) -> float | None:
    """T*, the lower bound of Tyurin & Richtarik (NeurIPS 2023, Theorem 6.4) for the run's
    worst-case quadratic, fixed compute times and target (None for any other run)."""
    from jaxasync import delays as dl
    from jaxasync import quadratic

    config, res, target = record.get("config") or {}, record.get("resolved") or {}, \
        record.get("target")
    if record.get("workload") != "worst_case_quadratic" or not target:
        return None
    d = {k: tuple(v) if isinstance(v, list) else v for k, v in res.get("delay", {}).items()}
    times = dl.known_times(dl.DelayConfig(**d), res["num_workers"])
    if times is None or d.get("compute") != "constant" or d.get("noise", "none") != "none":
        return None
    opts = dict((config.get("workload") or {}).get("options") or {})
    opts.pop("epsilon", None)
    got = quadratic.optimal_time_of(times, target["value"], **opts,
                                    batch_size=res.get("batch_size") or 1)
    return None if got is None else got[0]
def _per_upload(member: dict) -> float | None:
    """Mean uplink bits per upload over the run (a compressor's message size)."""
    last = member["history"][-1]
    uploads = float(last.get("uploads", 0.0))
    return None if uploads <= 0 or "bits_up" not in last else float(last["bits_up"]) / uploads


def _hist_median(member: dict) -> float | None:
    hist = np.asarray(member.get("staleness_hist") or [], float)
    if hist.sum() <= 0:
        return None
    return float(np.searchsorted(np.cumsum(hist), hist.sum() / 2.0))


QUANTITIES: dict[str, Quantity] = {
    "rounds_to_target": Quantity("rounds to target", True, "count",
                                 lambda m, t: _hit(m, t, "uploads")),
    "bits_to_target": Quantity("uplink bits to target", True, "bits",
                               lambda m, t: _hit(m, t, "bits_up")),
    "grads_to_target": Quantity("gradients to target", True, "count",
                                lambda m, t: _hit(m, t, "grads")),
    "steps_to_target": Quantity("iterations to target", True, "count",
                                lambda m, t: _hit(m, t, "step")),
    "time_to_target": Quantity("simulated time to target", True, "float",
                               lambda m, t: _hit(m, t, "time")),
    "time_over_optimal": Quantity("time to target / T*", True, "float",
                                  lambda m, t: _hit(m, t, "time"), optimal_time),
    "final_accuracy": Quantity("final test accuracy (%)", False, "percent",
                               lambda m, t: _final(m, "test_accuracy", 100.0)),
    "final_top5": Quantity("final test top-5 (%)", False, "percent",
                           lambda m, t: _final(m, "test_top5", 100.0)),
    "final_gap": Quantity("final F - F*", True, "sci", lambda m, t: _final(m, "train_gap")),
    "final_grad_norm": Quantity("final ||grad F||", True, "sci",
                                lambda m, t: _final(m, "train_grad_norm")),
    "final_loss": Quantity("final train loss", True, "sci", lambda m, t: _final(m, "train_loss")),
    "skip_fraction": Quantity("uploads skipped (%)", False, "percent",
                              lambda m, t: _fraction(m, "skips", ("skips", "uploads"))),
    "rejection_fraction": Quantity("arrivals rejected (%)", False, "percent",
                                   lambda m, t: _fraction(m, "rejections", ("arrivals",))),
    "staleness_mean": Quantity("mean delay", True, "float",
                               lambda m, t: _final(m, "staleness_mean")),
    "staleness_median": Quantity("median delay", True, "float", lambda m, t: _hist_median(m)),
    "staleness_max": Quantity("max delay", True, "count", lambda m, t: _final(m, "staleness_max")),
    "bits_up": Quantity("uplink bits", True, "bits", lambda m, t: _final(m, "bits_up")),
    "uploads": Quantity("uploads", True, "count", lambda m, t: _final(m, "uploads")),
    "bits_per_upload": Quantity("uplink bits per upload", True, "bits",
                                lambda m, t: _per_upload(m)),
    "grads": Quantity("gradients computed", True, "count", lambda m, t: _final(m, "grads")),
}


def quantity(name: str) -> Quantity:
    if name not in QUANTITIES:
        raise EntryError(f"quantity {name!r}: unknown; choose one of: {', '.join(QUANTITIES)}")
    return QUANTITIES[name]


@dataclasses.dataclass(frozen=True)
class Summary:
    """One quantity over a run's members: values (None = missing), and their statistics."""

    values: tuple[float | None, ...]
    worst: float

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def present(self) -> list[float]:
        return [v for v in self.values if v is not None]

    @property
    def complete(self) -> bool:
        return self.n > 0 and len(self.present) == self.n

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.present)) if self.present else None

    @property
    def sd(self) -> float | None:
        return float(np.std(self.present, ddof=1)) if len(self.present) > 1 else None

    @property
    def value(self) -> float:
        """What orderings and ratios compare: the mean if every member has a value, else
        the worst value (a run reaches a target only if all its seeds do)."""
        return self.mean if self.complete else self.worst


def summarize(record: dict, name: str, target: dict | None = None) -> Summary:
    """Quantity ``name`` over the members of ``record`` (target: the entry's, else the record's)."""
    q = quantity(name)
    t = target if target is not None else record.get("target")
    values = [q.fn(m, t) for m in report.selected_members(record)]
    if q.scale is not None:
        scale = q.scale(record)
        values = [None if v is None or not scale else v / scale for v in values]
    return Summary(tuple(values), q.worst)
