"""Delay models: how stale each arriving gradient is, and when workers finish.

Two families:

* **sampled** delays draw each arrival's staleness tau from a distribution
  (``constant``, ``uniform``, ``geometric``, ``pareto``, ``trace``), as in the theory
  papers; time advances one unit per server step.
* the **event-driven** model (``event``) gives every worker a compute-time
  distribution and a link; the K workers that finish first arrive, and staleness
  emerges from the race.

Everything here is a pure function of a PRNG key and numbers; :class:`DelayConfig`
holds the static choices.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from jaxasync import hparams as hp

SAMPLED = ("constant", "uniform", "geometric", "pareto", "trace")
KINDS = ("none",) + SAMPLED + ("event",)
COMPUTE = ("constant", "exponential", "lognormal")
#: the largest delay: the ring holds delay + 1 versions and counts them in int32
MAX_DELAY = 2**31 - 2


def _delay(doc: str = "", **kw) -> hp.Param:
    """A delay in server steps: a static integer in [0, MAX_DELAY]."""
    return hp.Param("int", low=0, high=MAX_DELAY, static=True, doc=doc, **kw)


@dataclasses.dataclass(frozen=True)
class DelayConfig:
    """Static description of a delay model.

    Attributes:
      kind: ``none`` (every gradient fresh), one of the sampled kinds, or ``event``.
      tau: constant delay (``constant``).
      low, high: inclusive bounds (``uniform``).
      p: success probability (``geometric``: P(tau = k) = (1-p)^k p, mean (1-p)/p).
      alpha, scale: Lomax shape and scale (``pareto``: tau = floor(scale (U^{-1/alpha} - 1))),
        truncated at ``max_delay``.
      max_delay: truncation of ``geometric`` and ``pareto`` (None: the ring decides,
        staler gradients are dropped and counted).
      trace: delays replayed cyclically (``trace``), e.g. read by :func:`read_trace`.
      compute: worker compute-time distribution (``event``).
      mean: mean compute time of a speed-1 worker (seconds).
      sigma: log-normal shape (``compute="lognormal"``), mean-preserving.
      speeds: per-worker slowdown factors (length M), or None (all 1).
      heterogeneity: if > 0 and no ``speeds``, slowdowns ~ LogNormal(0, heterogeneity),
        drawn once per run.
      straggler_fraction, straggler_slowdown: the first ceil(f M) workers are s times slower.
    """

    kind: str = hp.field(hp.one_of(*KINDS, doc="the delay model"), "event")
    tau: int = hp.field(_delay(doc="the constant delay (constant)"), 0)
    low: int = hp.field(_delay(doc="the smallest delay (uniform)"), 0)
    high: int = hp.field(_delay(doc="the largest delay, >= low (uniform)"), 0)
    p: float = hp.field(hp.Param("float", low=0.0, high=1.0, low_open=True, static=True,
                                 doc="success probability (geometric)"), 0.5)
    alpha: float = hp.field(hp.positive("Lomax shape (pareto)", static=True), 2.0)
    scale: float = hp.field(hp.positive("Lomax scale (pareto)", static=True), 1.0)
    max_delay: int | None = hp.field(_delay(optional=True, doc="truncation (geometric, "
                                                                "pareto); null: the ring's"), None)
    trace: tuple[int, ...] = hp.field(_delay(items=True, doc="delays replayed (trace)"), ())
    compute: str = hp.field(hp.one_of(*COMPUTE, doc="compute-time distribution (event)"),
                            "exponential")
    mean: float = hp.field(hp.positive("mean compute time in seconds (event)", static=True), 1.0)
    sigma: float = hp.field(hp.non_negative("log-normal shape (event)", static=True), 0.5)
    speeds: tuple[float, ...] | None = hp.field(
        hp.positive("per-worker slowdowns, one per worker (event)", static=True, items=True,
                    optional=True), None)
    heterogeneity: float = hp.field(hp.non_negative("log-normal spread of speeds (event)",
                                                    static=True), 0.0)
    straggler_fraction: float = hp.field(hp.Param("float", low=0.0, high=1.0, static=True,
                                                  doc="share of slow workers (event)"), 0.0)
    straggler_slowdown: float = hp.field(hp.Param("float", low=1.0, static=True,
                                                  doc="their slowdown (event)"), 1.0)

    @property
    def sampled(self) -> bool:
        return self.kind in SAMPLED

    def bound(self) -> int | None:
        """Largest delay this model can sample (None: unbounded or emergent)."""
        if self.kind == "none":
            return 0
        if self.kind == "constant":
            return self.tau
        if self.kind == "uniform":
            return self.high
        if self.kind == "trace":
            return max(self.trace) if self.trace else 0
        if self.kind in ("geometric", "pareto"):
            return self.max_delay
        return None


@dataclasses.dataclass(frozen=True)
class Network:
    """A worker's link: ``seconds(bits) = latency + bits / bandwidth`` per message.

    ``bandwidth`` in bits/s (``inf``: free), ``latency`` in seconds.
    """

    bandwidth: float = math.inf
    latency: float = 0.0

    def seconds(self, bits: Array) -> Array:
        bw = jnp.float32(self.bandwidth)
        per_bit = 0.0 if math.isinf(self.bandwidth) else 1.0 / bw
        return jnp.float32(self.latency) + bits * per_bit


def read_trace(path: str | Path, key: str = "delay.trace_file") -> tuple[int, ...]:
    """Reads a delay trace: whitespace- or comma-separated integers in [0, MAX_DELAY].

    Raises ``ValueError`` (or ``FileNotFoundError``) ``"<key>='<file>': ..."`` naming the
    file and, for a bad entry, its line and position: a missing file, a directory, binary
    content, a number that is not a non-negative integer (NaN, inf, 2.5, -1), an empty file.
    """
    path = Path(path)
    where = f"{key}={str(path)!r}"
    if path.is_dir():
        raise ValueError(f"{where}: is a directory; give a file of delays")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{where}: no such file") from None
    except OSError as e:
        raise ValueError(f"{where}: cannot be read ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
        if "\x00" in text:
            raise UnicodeDecodeError("utf-8", raw, raw.index(0), raw.index(0) + 1, "NUL byte")
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: binary content (byte {raw[e.start]:#04x} at offset "
                         f"{e.start}); expected integers separated by spaces, commas or "
                         f"newlines") from None
    out = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        for pos, tok in enumerate(line.replace(",", " ").split(), start=1):
            out.append(_trace_entry(tok, f"{where}: line {line_no}, entry {pos}"))
    if not out:
        raise ValueError(f"{where}: no delays in the file")
    return tuple(out)


def _trace_entry(tok: str, where: str) -> int:
    """One delay of a trace file: a non-negative integer (``3`` or ``3.0``) <= MAX_DELAY."""
    try:
        v = float(tok)
    except ValueError:
        raise ValueError(f"{where} = {tok!r}: not a number; must be a non-negative "
                         f"integer") from None
    if not math.isfinite(v) or v < 0 or v != int(v) or v > MAX_DELAY:
        raise ValueError(f"{where} = {tok!r}: must be a non-negative integer <= {MAX_DELAY}")
    return int(v)


def sample_delays(cfg: DelayConfig, key: Array, n: int, step: Array) -> Array:
    """Draws ``n`` delays (int32[n]) for the arrivals of server step ``step``."""
    if cfg.kind == "none":
        return jnp.zeros((n,), jnp.int32)
    if cfg.kind == "constant":
        return jnp.full((n,), cfg.tau, jnp.int32)
    if cfg.kind == "uniform":
        return jax.random.randint(key, (n,), cfg.low, cfg.high + 1, jnp.int32)
    if cfg.kind == "geometric":
        # jax's geometric counts trials (>= 1); staleness counts failures (>= 0).
        tau = jax.random.geometric(key, cfg.p, (n,)).astype(jnp.int32) - 1
    elif cfg.kind == "pareto":
        u = jax.random.uniform(key, (n,), minval=jnp.finfo(jnp.float32).tiny, maxval=1.0)
        tau_f = jnp.floor(cfg.scale * (u ** (-1.0 / cfg.alpha) - 1.0))
        tau = jnp.minimum(tau_f, 2.0**30).astype(jnp.int32)
    elif cfg.kind == "trace":
        trace = jnp.asarray(cfg.trace, jnp.int32)
        pos = (step * n + jnp.arange(n)) % trace.shape[0]
        return trace[pos]
    else:
        raise ValueError(f"delay.kind {cfg.kind!r}: not a sampled model")
    if cfg.max_delay is not None:
        tau = jnp.minimum(tau, cfg.max_delay)
    return tau


def worker_speeds(cfg: DelayConfig, key: Array, num_workers: int) -> Array:
    """Per-worker slowdown factors (float32[M]): fixed speeds, heterogeneity, stragglers."""
    if cfg.speeds is not None:
        if len(cfg.speeds) != num_workers:
            raise ValueError(
                f"delay.speeds: has {len(cfg.speeds)} entries, expected num_workers={num_workers}"
            )
        speed = jnp.asarray(cfg.speeds, jnp.float32)
    elif cfg.heterogeneity > 0:
        speed = jnp.exp(cfg.heterogeneity * jax.random.normal(key, (num_workers,)))
    else:
        speed = jnp.ones((num_workers,), jnp.float32)
    n_slow = int(math.ceil(cfg.straggler_fraction * num_workers))
    slow = jnp.arange(num_workers) < n_slow
    return jnp.where(slow, speed * cfg.straggler_slowdown, speed).astype(jnp.float32)


def compute_times(cfg: DelayConfig, key: Array, speed: Array) -> Array:
    """One compute-time draw per entry of ``speed`` (float32, same shape)."""
    shape = speed.shape
    if cfg.compute == "constant":
        base = jnp.full(shape, cfg.mean, jnp.float32)
    elif cfg.compute == "exponential":
        base = cfg.mean * jax.random.exponential(key, shape)
    elif cfg.compute == "lognormal":
        z = jax.random.normal(key, shape)
        base = cfg.mean * jnp.exp(cfg.sigma * z - 0.5 * cfg.sigma**2)
    else:
        raise ValueError(f"delay.compute {cfg.compute!r}: unknown; choose one of {', '.join(COMPUTE)}")
    return (base * speed).astype(jnp.float32)


def truncated_mean(cfg: DelayConfig) -> float:
    """Exact mean of a sampled model's delay (after truncation), for tests and docs."""
    if cfg.kind == "constant":
        return float(cfg.tau)
    if cfg.kind == "uniform":
        return 0.5 * (cfg.low + cfg.high)
    if cfg.kind == "trace":
        return float(np.mean(cfg.trace))
    cap = cfg.max_delay if cfg.max_delay is not None else 100_000
    k = np.arange(cap + 1, dtype=np.float64)
    if cfg.kind == "geometric":
        pmf = (1 - cfg.p) ** k * cfg.p
    elif cfg.kind == "pareto":
        # P(tau >= k) = P(scale (U^{-1/a} - 1) >= k) = (1 + k/scale)^{-a}
        surv = (1.0 + k / cfg.scale) ** (-cfg.alpha)
        pmf = surv - np.append(surv[1:], 0.0)
    else:
        raise ValueError(cfg.kind)
    pmf[-1] += max(0.0, 1.0 - pmf.sum())  # truncation puts the tail mass on the cap
    return float((k * pmf).sum())
