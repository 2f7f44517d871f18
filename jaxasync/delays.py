"""Delay models: how stale each arriving gradient is, and when workers finish.

Two families:

* **sampled** delays draw each arrival's staleness tau from a distribution
  (``constant``, ``uniform``, ``geometric``, ``pareto``, ``trace``), as in the theory
  papers; time advances one unit per server step.
* the **event-driven** model (``event``) gives every worker a compute-time
  distribution and a link; the K workers that finish first arrive, and staleness
  emerges from the race.

The event-driven model also has the *fixed computation model* of Tyurin & Richtarik
(NeurIPS 2023, arXiv 2305.12387, Section 2): worker i needs a fixed time tau_i per gradient
(``times``: the presets ``equal``, ``sqrt``, ``gamma`` of the KAUST simulator,
github.com/k3nfalt/optimal-decentralized-optimization,
``experiments/asynchronous/config_async.py``), optionally plus a random eta_i
(``noise``: the laws of Maranjyan, Omar & Richtarik, "MindFlayer SGD", arXiv 2410.04285).

Everything here is a pure function of a PRNG key and numbers; :class:`DelayConfig`
holds the static choices. A plain delay file is read by :func:`read_trace`; tables and
device-capacity files by :mod:`jaxasync.traces`.
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
#: fixed per-worker compute times (see :func:`preset_times`)
TIMES = ("equal", "sqrt", "gamma")
#: the random part eta_i added to a computation (see :func:`noise_draw`)
NOISES = ("none", "exponential", "infinite_bernoulli", "alpha_bernoulli", "cauchy", "levy")

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
      times: a preset of fixed per-worker compute times tau_i (multiplying ``mean``):
        ``equal`` (1), ``sqrt`` (sqrt(i + 1)), ``gamma`` (Gamma(2, 200)/400 redrawn until
        >= 1, sorted; drawn once on the host with ``times_seed``); None: ``speeds`` /
        ``heterogeneity`` decide. With ``compute="constant"`` this is the fixed computation
        model of Tyurin & Richtarik (NeurIPS 2023).
      times_seed: the NumPy seed of the ``gamma`` preset (one draw shared by every member).
      noise: a random eta added to every computation (``none``, ``exponential``,
        ``infinite_bernoulli``, ``alpha_bernoulli``, ``cauchy`` (|Cauchy|), ``levy``); see
        :func:`noise_draw`.
      noise_scale: the exponential law's mean; the |Cauchy| and Levy laws' scale.
      noise_p: the Bernoulli laws' probability that a computation takes its fixed time.
      noise_alpha: ``alpha_bernoulli``: otherwise it takes alpha tau_i.
      trace_columns: columns of the ``trace`` table (1: one sequence; 8: a per-worker
        staleness CSV of Wu et al., ICML 2022, read by :func:`jaxasync.traces.read_delay_table`);
        ``trace`` holds the table row by row.
      bandwidths: per-worker link bandwidths in bits/s (length M), or None (the network's);
        set by a FedScale device-capacity file (:func:`jaxasync.traces.read_fedscale`).
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
    times: str | None = hp.field(hp.Param("str", choices=TIMES, optional=True, static=True,
                                          doc="fixed compute-time preset (event)"), None)
    times_seed: int = hp.field(hp.Param("int", low=0, static=True,
                                        doc="seed of the gamma preset"), 0)
    noise: str = hp.field(hp.one_of(*NOISES, doc="random eta_i added to each computation "
                                                 "(event)"), "none")
    noise_scale: float = hp.field(hp.positive("eta's scale (exponential mean, |Cauchy|, Levy)",
                                              static=True), 1.0)
    noise_p: float = hp.field(hp.Param("float", low=0.0, high=1.0, low_open=True, static=True,
                                       doc="P(no extra time) (Bernoulli noises)"), 0.5)
    noise_alpha: float = hp.field(hp.Param("float", low=1.0, static=True,
                                           doc="alpha of alpha_bernoulli"), 2.0)
    trace_columns: int = hp.field(hp.Param("int", low=1, static=True,
                                           doc="columns of the trace table"), 1)
    bandwidths: tuple[float, ...] | None = hp.field(
        hp.positive("per-worker link bits/s (a FedScale file)", static=True, items=True,
                    optional=True), None)

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


def sample_delays(cfg: DelayConfig, key: Array, n: int, step: Array, ids: Array | None = None,
                  draws: Array | None = None) -> Array:
    """Draws ``n`` delays (int32[n]) for the arrivals of server step ``step``.

    A ``trace`` of C > 1 columns (``trace_columns``) is a per-worker table: arriving worker
    ``ids[i]`` gets the entry of column ``ids[i] mod C`` in row ``draws[i] mod rows``, its own
    k-th delay for its k-th gradient (``draws``: the gradients it computed before).
    """
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
    elif cfg.kind == "trace" and cfg.trace_columns > 1:
        c = cfg.trace_columns
        table = jnp.asarray(cfg.trace, jnp.int32).reshape(-1, c)
        return table[draws % table.shape[0], ids % c]
    elif cfg.kind == "trace":
        trace = jnp.asarray(cfg.trace, jnp.int32)
        pos = (step * n + jnp.arange(n)) % trace.shape[0]
        return trace[pos]
    else:
        raise ValueError(f"delay.kind {cfg.kind!r}: not a sampled model")
    if cfg.max_delay is not None:
        tau = jnp.minimum(tau, cfg.max_delay)
    return tau


def preset_times(name: str, num_workers: int, seed: int = 0) -> np.ndarray:
    """The fixed compute times tau_i (float64[M]) of a preset.

    ``equal``: 1; ``sqrt``: sqrt(i + 1); ``gamma``: Gamma(k = 2, theta = 200) / (k theta) (mean
    1), each redrawn until >= 1, then sorted ascending (the KAUST simulator's presets,
    ``experiments/asynchronous/config_async.py``; its gamma draws come from NumPy's global
    stream, ours from ``numpy.random.default_rng(seed)``).
    """
    i = np.arange(num_workers, dtype=np.float64)
    if name == "equal":
        return np.ones(num_workers)
    if name == "sqrt":
        return np.sqrt(i + 1.0)
    if name == "gamma":
        rng, k, theta = np.random.default_rng(seed), 2.0, 200.0
        out = np.empty(num_workers)
        for w in range(num_workers):
            t = 0.0
            while t < 1.0:
                t = rng.gamma(k, theta) / (k * theta)
            out[w] = t
        return np.sort(out)
    raise ValueError(f"delay.times={name!r}: unknown; choose one of {', '.join(TIMES)}")


def worker_speeds(cfg: DelayConfig, key: Array, num_workers: int) -> Array:
    """Per-worker slowdown factors (float32[M]): fixed speeds, a preset of fixed times,
    heterogeneity, stragglers."""
    if cfg.times is not None:
        if cfg.speeds is not None:
            raise ValueError(f"delay.times={cfg.times!r}: give delay.times or delay.speeds, "
                             "not both")
        speed = jnp.asarray(preset_times(cfg.times, num_workers, cfg.times_seed), jnp.float32)
    elif cfg.speeds is not None:
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
    out = (base * speed).astype(jnp.float32)
    if cfg.noise == "none":
        return out
    return out + noise_draw(cfg, jax.random.fold_in(key, 0x9015E), nominal_times(cfg, speed))


def nominal_times(cfg: DelayConfig, speed: Array) -> Array:
    """tau_i = mean x speed_i: the fixed part of a computation (``compute="constant"``), the
    mean of the others; float32, computed as :func:`compute_times` computes a constant draw
    (so a draw without noise equals it bitwise)."""
    return (jnp.full(speed.shape, cfg.mean, jnp.float32) * speed).astype(jnp.float32)


def noise_draw(cfg: DelayConfig, key: Array, nominal: Array) -> Array:
    r"""The random extra time :math:`\eta_i` of each computation (float32, ``nominal``'s shape).

    With :math:`s` = ``noise_scale``, :math:`p` = ``noise_p``, :math:`\alpha` = ``noise_alpha``
    and :math:`\tau_i` = ``nominal``:

    * ``exponential``: :math:`\eta \sim \mathrm{Exp}` with mean :math:`s`;
    * ``infinite_bernoulli``: :math:`\eta = 0` with probability :math:`p`, else
      :math:`\infty` (the worker never returns);
    * ``alpha_bernoulli``: :math:`\eta = 0` with probability :math:`p`, else
      :math:`(\alpha - 1)\tau_i` (the computation takes :math:`\alpha\tau_i`);
    * ``cauchy``: :math:`s\,|C|`, :math:`C` standard Cauchy;
    * ``levy``: :math:`s / Z^2`, :math:`Z \sim N(0, 1)` (the Levy law of scale :math:`s`).

    The laws of Maranjyan, Omar & Richtarik, "MindFlayer SGD" (arXiv 2410.04285, Section 2
    and the experiments); one law for every worker, drawn independently per computation.
    """
    shape = nominal.shape
    s, p = cfg.noise_scale, cfg.noise_p
    if cfg.noise == "exponential":
        return (s * jax.random.exponential(key, shape)).astype(jnp.float32)
    if cfg.noise in ("infinite_bernoulli", "alpha_bernoulli"):
        late = jax.random.uniform(key, shape) >= p
        extra = jnp.inf if cfg.noise == "infinite_bernoulli" else (cfg.noise_alpha - 1.0) * nominal
        return jnp.where(late, extra, 0.0).astype(jnp.float32)
    if cfg.noise == "cauchy":
        return (s * jnp.abs(jax.random.cauchy(key, shape))).astype(jnp.float32)
    if cfg.noise == "levy":
        z = jax.random.normal(key, shape)
        return (s / jnp.maximum(z * z, jnp.finfo(jnp.float32).tiny)).astype(jnp.float32)
    raise ValueError(f"delay.noise={cfg.noise!r}: unknown; choose one of {', '.join(NOISES)}")


def computation(cfg: DelayConfig, key: Array, speed: Array, slack: Array | None
                ) -> tuple[Array, Array | None]:
    r"""``(duration, stopped)`` of new computations: a :func:`compute_times` draw, stopped at
    ``nominal + slack`` when longer (a timeout the algorithm set, e.g. MindFlayer's clipping
    time :math:`t_i = \tau_i + s_i`); ``slack`` None: no timeouts (``stopped`` None)."""
    draw = compute_times(cfg, key, speed)
    if slack is None:
        return draw, None
    limit = nominal_times(cfg, speed) + slack
    stopped = draw > limit
    return jnp.where(stopped, limit, draw), stopped


def clip_success(cfg: DelayConfig, nominal: Array, slack: Array) -> Array:
    r"""P(a computation ends within ``nominal + slack``): float32, ``nominal``'s shape.

    Exact for ``compute="constant"`` with any noise (P(eta <= slack)), and for the exponential
    and log-normal laws without noise. MindFlayer's :math:`p_i` (arXiv 2410.04285, Algorithm
    1: the estimator is divided by :math:`\sum_i B_i p_i`).
    """
    slack = jnp.asarray(slack, jnp.float32)
    if cfg.compute != "constant":
        if cfg.noise != "none":
            raise ValueError(f"delay.noise={cfg.noise!r} with delay.compute={cfg.compute!r}: "
                             "the probability of a timeout is known for compute=constant only")
        if cfg.compute == "exponential":
            return 1.0 - jnp.exp(-(1.0 + slack / nominal))
        z = (jnp.log1p(slack / nominal) + 0.5 * cfg.sigma**2) / max(cfg.sigma, 1e-30)
        return jax.scipy.stats.norm.cdf(z)
    s, p = cfg.noise_scale, cfg.noise_p
    finite = jnp.isfinite(slack)
    if cfg.noise == "none":
        return jnp.ones_like(nominal)
    if cfg.noise == "exponential":
        return jnp.where(finite, 1.0 - jnp.exp(-slack / s), 1.0) * jnp.ones_like(nominal)
    if cfg.noise == "infinite_bernoulli":
        return jnp.full(nominal.shape, p, jnp.float32)
    if cfg.noise == "alpha_bernoulli":
        return p + (1.0 - p) * ((cfg.noise_alpha - 1.0) * nominal <= slack)
    if cfg.noise == "cauchy":
        return (2.0 / math.pi) * jnp.arctan(slack / s) * jnp.ones_like(nominal)
    # levy: P(s / Z^2 <= t) = P(|Z| >= sqrt(s / t)) = erfc(sqrt(s / (2 t)))
    safe = jnp.maximum(slack, jnp.finfo(jnp.float32).tiny)
    return jnp.where(slack > 0, jax.scipy.special.erfc(jnp.sqrt(s / (2.0 * safe))), 0.0
                     ) * jnp.ones_like(nominal)


def known_times(cfg: DelayConfig, num_workers: int) -> np.ndarray | None:
    """Each worker's nominal time tau_i = mean x speed_i (float64[M]) when it is known before
    the run (a preset, given speeds, stragglers), None when drawn per run (heterogeneity)."""
    if cfg.heterogeneity > 0 and cfg.times is None and cfg.speeds is None:
        return None
    if cfg.times is not None:
        tau = preset_times(cfg.times, num_workers, cfg.times_seed)
    elif cfg.speeds is not None:
        tau = np.asarray(cfg.speeds, np.float64)
    else:
        tau = np.ones(num_workers)
    n_slow = int(math.ceil(cfg.straggler_fraction * num_workers))
    return cfg.mean * np.where(np.arange(num_workers) < n_slow, tau * cfg.straggler_slowdown,
                               tau)


def fixed_staleness_bound(cfg: DelayConfig, num_workers: int, latency: float = 0.0
                          ) -> int | None:
    """The largest staleness fixed compute times allow (event model, compute=constant, no
    noise or a Bernoulli law), or None when they allow any.

    Worker j's arrivals are at least tau_j + 2 latency apart, so during one computation of at
    most W = alpha tau_max + 2 latency at most floor(W / (tau_j + 2 latency)) + 1 of them land;
    the sum over workers bounds the versions pushed in between (one version per step at most).
    """
    tau = known_times(cfg, num_workers)
    if cfg.kind != "event" or cfg.compute != "constant" or tau is None:
        return None
    if cfg.noise not in ("none", "infinite_bernoulli", "alpha_bernoulli"):
        return None
    stretch = cfg.noise_alpha if cfg.noise == "alpha_bernoulli" else 1.0
    window = stretch * tau.max() + 2 * latency
    # a margin for the float32 clock: an arrival time is a sum of float32 times, rounded
    # relative to the clock (2^-24 of it per addition), so spacings may shrink a little
    ratios = window / (tau + 2 * latency) * 1.01
    return int(np.sum(np.floor(ratios) + 1)) + 1


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
