"""Figures: one style for a run's ``metrics.png``, a sweep's ``comparison.png``,
``jaxasync-compare`` and the leaderboard.

A *curve* is one line: a label and the members (seeds) it averages, each with its metric
history. Every panel draws the mean over the curve's members, a min–max band over them when
there are several, a grid, axis labels with units (simulated seconds, bits), and readable
ticks (``16k``, not ``16000`` run into its neighbour; a log bits axis that starts at the
first non-zero value instead of a symlog axis across empty decades from 0). Figures are
saved as PNG at 150 dpi and as PDF, with matplotlib (nothing here is hand-drawn).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: axis labels, with units
AXIS = {
    "step": "iterations (server steps)", "grads": "gradients computed",
    "uploads": "communication rounds (uploads)",
    "bits_up": "uplink bits", "time": "simulated time (s)", "test_accuracy": "test accuracy",
    "test_top5": "test top-5 accuracy", "train_gap": "F(x) − F*", "train_loss": "train loss",
    "test_loss": "test loss", "train_grad_norm": "‖∇F(x)‖ (whole training set)",
}
#: metrics drawn on a log axis
LOG_METRICS = ("train_gap", "train_loss", "test_loss", "train_grad_norm", "bits_up")
#: x metrics drawn on a log axis when the curves end more than this factor apart (simulated
#: time: a synchronous run waiting for stragglers would squeeze the others into a corner)
SPREAD_LOG = {"time": 10.0}
DPI = 150
BAND = "min–max over seeds"


class Curve:
    """One line of a figure: ``label`` and the members it averages (dicts with ``history``,
    and ``staleness_hist`` for the delay histogram)."""

    def __init__(self, label: str, members: Sequence[dict]):
        self.label = label
        self.members = [m for m in members if m.get("history")]

    def arrays(self, key: str) -> np.ndarray:
        """``[members, evaluations]`` of ``key`` (NaN where missing or not finite),
        cut to the shortest history (a diverged member stops early)."""
        n = min(len(m["history"]) for m in self.members)
        a = np.asarray([[_num(h.get(key)) for h in m["history"][:n]] for m in self.members],
                       float)
        a[~np.isfinite(a)] = np.nan
        return a



#: the dash pattern of each round of ten curves (matplotlib's ten default colours)
LINESTYLES = ("-", "--", ":", "-.")

def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _quiet_stats(ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (diverged members)
        return np.nanmean(ys, axis=0), np.nanmin(ys, axis=0), np.nanmax(ys, axis=0)


def _count_formatter():
    """Tick labels for counts and seconds: 0, 500, 4k, 12k, 1.5M (no offset text)."""
    from matplotlib.ticker import FuncFormatter

    def fmt(v: float, _pos: int) -> str:
        a = abs(v)
        for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if a >= scale:
                return f"{v / scale:.3g}{suffix}"
        return f"{v:.3g}"

    return FuncFormatter(fmt)


def draw_panel(ax, curves: Sequence[Curve], x: str, y: str, *, xscale: str | None = None,
               yscale: str | None = None, ylim: Sequence[float] | None = None,
               target: dict | None = None) -> None:
    """``y`` against ``x`` for every curve: the mean over members and a min–max band.

    Lines carry ``gid="curve"``, bands ``gid="band"``, the target line ``gid="target"``
    (what the tests count). A log axis drops the non-positive points, so a bits axis starts
    at the first upload.
    """
    from matplotlib.ticker import MaxNLocator

    xscale = xscale or _default_xscale(curves, x)
    yscale = yscale or ("log" if y in LOG_METRICS else "linear")
    for i, c in enumerate(curves):
        if not c.members:
            continue
        xs, ys = c.arrays(x), c.arrays(y)
        if yscale == "log":
            ys[ys <= 0] = np.nan
        xm = np.nanmean(xs, axis=0) if np.isfinite(xs).any() else xs[0]
        keep = np.isfinite(xm) & ((xm > 0) if xscale == "log" else True)
        xm, ys = xm[keep], ys[:, keep]
        mean, lo, hi = _quiet_stats(ys)
        # beyond ten curves the colours repeat: each round of ten gets its own dash pattern,
        # so every curve keeps a distinct (colour, pattern) pair in the legend
        (line,) = ax.plot(xm, mean, label=c.label, color=f"C{i % 10}", linewidth=1.4,
                          linestyle=LINESTYLES[(i // 10) % len(LINESTYLES)], gid="curve")
        if len(c.members) > 1:
            ax.fill_between(xm, lo, hi, color=line.get_color(), alpha=0.18, linewidth=0,
                            gid="band")
    drawn = [ln for ln in ax.lines if ln.get_gid() == "curve"]
    for name, scale, data in (("x", xscale, [ln.get_xdata() for ln in drawn]),
                              ("y", yscale, [ln.get_ydata() for ln in drawn])):
        vals = np.concatenate([np.asarray(d, float) for d in data]) if data else np.zeros(0)
        if scale != "log" or np.any(np.isfinite(vals) & (vals > 0)):  # else: nothing to log
            getattr(ax, f"set_{name}scale")(scale)
    if ax.get_xscale() == "linear":
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.xaxis.set_major_formatter(_count_formatter())
    if ylim:   # [lo, hi]: keeps a diverging run from flattening the others
        ax.set_ylim(*ylim)
    elif ax.get_yscale() == "log":
        _clip_divergence(ax, curves, y)
    for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
        if scale == "log":
            _log_ticks(ax, axis)
    if target and target.get("metric") == y:
        ax.axhline(target["value"], color="grey", linestyle=":", linewidth=1, gid="target")
    ax.set_xlabel(AXIS.get(x, x))
    ax.set_ylabel(AXIS.get(y, y))
    ax.grid(True, which="major", alpha=0.3)


def _default_xscale(curves: Sequence[Curve], x: str) -> str:
    """log for :data:`LOG_METRICS`, and for :data:`SPREAD_LOG` metrics whose curves end
    further apart than its factor; linear otherwise."""
    if x in LOG_METRICS:
        return "log"
    if x in SPREAD_LOG:
        ends = [np.nanmax(c.arrays(x)) for c in curves if c.members]
        ends = [e for e in ends if np.isfinite(e) and e > 0]
        if len(ends) > 1 and max(ends) > SPREAD_LOG[x] * min(ends):
            return "log"
    return "linear"


def _clip_divergence(ax, curves: Sequence[Curve], y: str) -> None:
    """A log axis of a decreasing metric ends at 10x the largest starting value, so that a
    diverging run leaves the top of the panel instead of squashing the others."""
    starts = [np.nanmax(c.arrays(y)[:, 0]) for c in curves if c.members]
    starts = [v for v in starts if np.isfinite(v) and v > 0]
    lo, hi = ax.get_ylim()
    if starts and hi > 10 * max(starts):
        ax.set_ylim(lo, 10 * max(starts))


def _log_ticks(ax, axis) -> None:
    """Log ticks over less than two decades: plain numbers (``0.5``, ``1``, ``2``) at 1, 2, 5
    times powers of ten, or at a few even steps within one decade, where matplotlib would
    label minor ticks ``6×10^-1``; over more, matplotlib's ``10^k``."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    lo, hi = ax.get_xlim() if axis is ax.xaxis else ax.get_ylim()
    if not lo > 0 or hi / lo >= 100:
        return
    axis.set_major_locator(MaxNLocator(nbins=4) if hi / lo < 10 else
                           LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(_count_formatter() if axis is ax.xaxis else
                             FuncFormatter(lambda v, _pos: f"{v:.3g}"))
    axis.set_minor_formatter(NullFormatter())


def delay_histogram(ax, curves: Sequence[Curve], num_workers: int | None = None) -> bool:
    """The fraction of arrivals at each delay τ (log scale), one step line per curve that
    has stale arrivals, and a dotted line at τ = M. False if no curve has any."""
    fractions = {}
    for i, c in enumerate(curves):
        hs = [np.asarray(m.get("staleness_hist") or [0], float) for m in c.members]
        if not hs or sum(h.sum() for h in hs) == 0 or sum(h[1:].sum() for h in hs) == 0:
            continue
        n = max(len(h) for h in hs)
        h = np.sum([np.pad(x, (0, n - len(x))) for x in hs], axis=0)
        fractions[i] = h / h.sum()
    if not fractions:
        return False
    first = next(iter(fractions.values()))
    if len(fractions) > 1 and all(len(p) == len(first) and np.array_equal(p, first)
                                  for p in fractions.values()):
        fractions = {-1: first}      # the same delays in every run: one black line
    for i, p in fractions.items():
        top = int(np.flatnonzero(p)[-1]) + 1
        ax.step(np.arange(top), np.where(p[:top] > 0, p[:top], np.nan), where="mid",
                color="black" if i < 0 else f"C{i % 10}", linewidth=1, gid="curve")
    if num_workers:
        ax.axvline(num_workers, color="grey", linestyle=":", linewidth=1, gid="target")
        ax.text(num_workers, 0.97, f" M={num_workers}", fontsize=7, va="top",
                transform=ax.get_xaxis_transform())
    ax.set_yscale("log")
    ax.set_xlabel("delay τ (server steps)")
    ax.set_ylabel("fraction of arrivals")
    ax.set_title("delay histogram" + ("\n(the same in every run with stale arrivals)"
                                      if -1 in fractions else ""), fontsize=9)
    ax.grid(True, alpha=0.3)
    return True


def legend_title(curves: Sequence[Curve]) -> str:
    """What a line and a band are: ``line: mean over 3 seeds; band: min–max over seeds``."""
    ns = sorted({len(c.members) for c in curves if c.members})
    if ns == [1]:
        return "one seed per line"
    if len(ns) == 1:
        return f"line: mean over {ns[0]} seeds; band: {BAND}"
    return f"line: mean over a run's seeds ({ns[0]}–{ns[-1]}); band: {BAND} (where 2 or more)"


def figure_legend(fig, axes, curves: Sequence[Curve]) -> None:
    """One legend for the figure, below the panels (labels once each)."""
    handles, labels = [], []
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:   # as many columns as fit across the figure (8-point text)
        fit = int(fig.get_size_inches()[0] * 13 / (max(len(lab) for lab in labels) + 6))
        fig.legend(handles, labels, loc="outside lower center",
                   ncol=max(1, min(len(labels), 4, fit)),
                   fontsize=8, title=legend_title(curves), title_fontsize=8, frameon=False)


def default_panels(curves: Sequence[Curve]) -> tuple[list[str], list[str]]:
    """(y metrics, x axes) for runs and sweeps: accuracy and loss, or ‖∇F‖ and F − F* for
    convex workloads; against gradients (server steps where every run is synchronous),
    uploads where some algorithm skips or holds back uploads, simulated seconds, uplink
    bits."""
    first = [c.members[0]["history"][0] for c in curves if c.members]
    has = lambda k: any(k in h for h in first)   # noqa: E731
    if has("train_grad_norm") or has("train_gap"):
        ys = [k for k in ("train_grad_norm", "train_gap") if has(k)]
    elif has("test_accuracy"):
        ys = ["test_accuracy", "train_loss"]
    else:
        ys = ["train_loss"]
    finals = [m["history"][-1] for c in curves for m in c.members]
    # gradients computed where some run is asynchronous (its budget); else server steps
    xs = ["grads" if any(f.get("staleness_max") for f in finals) else "step"]
    if any(_num(f.get("uploads")) < 0.9 * _num(f.get("grads")) for f in finals):
        xs.append("uploads")
    if any(abs(_num(f.get("time")) - _num(f.get("step"))) > 1e-6 for f in finals):
        xs.append("time")   # (without delays, simulated seconds are server steps)
    return ys, [*xs, "bits_up"]


def curves_figure(curves: Sequence[Curve], *, title: str = "", target: dict | None = None,
                  num_workers: int | None = None):
    """The standard figure of runs and sweeps: a row per metric, a column per x axis, the
    delay histogram on the right where any arrival was stale (None: nothing to draw)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [c for c in curves if c.members]
    if not curves:
        return None
    ys, xs = default_panels(curves)
    stale = any(sum((m.get("staleness_hist") or [0])[1:]) > 0 for c in curves for m in c.members)
    ncols = len(xs) + (1 if stale else 0)
    fig = plt.figure(figsize=(3.6 * ncols, 2.9 * len(ys) + 0.9), layout="constrained")
    grid = fig.add_gridspec(len(ys), ncols)
    axes: list = []
    for i, yk in enumerate(ys):
        for j, xk in enumerate(xs):
            ax = fig.add_subplot(grid[i, j], sharex=axes[j] if i else None)
            draw_panel(ax, curves, xk, yk, target=target)
            axes.append(ax)
    if stale:
        delay_histogram(fig.add_subplot(grid[:, -1]), curves, num_workers)
    figure_legend(fig, axes, curves)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def save_figure(fig, path: Path) -> list[Path]:
    """Saves ``fig`` as ``path`` (PNG, 150 dpi) and the same name with ``.pdf``, each via a
    temporary file and a rename (never half-written); closes it; returns both paths."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    written = []
    for target, kw in ((path.with_suffix(".png"), {"dpi": DPI}), (path.with_suffix(".pdf"), {})):
        tmp = target.with_name(f".{target.name}.tmp{target.suffix}")
        fig.savefig(tmp, **kw)
        os.replace(tmp, target)
        written.append(target)
    plt.close(fig)
    return written


def records_figure(records: Sequence[dict]):
    """The standard figure of run records (``run.json``): a curve per group of
    :func:`jaxasync.tables.groups`, titled with what the runs share (None: no history)."""
    from jaxasync import tables

    gs = tables.groups(records)
    targets = [r["target"] for r in records if r.get("target")]
    ms = {(r.get("resolved") or {}).get("num_workers") for r in records}
    return curves_figure([Curve(g.label, g.members) for g in gs], title=tables.title(records),
                         target=targets[0] if targets else None,
                         num_workers=next(iter(ms)) if len(ms) == 1 else None)


def plot_records(records: Sequence[dict], path: Path) -> list[Path]:
    """:func:`records_figure` saved as ``path`` (PNG) and PDF; returns the files written."""
    fig = records_figure(records)
    return [] if fig is None else save_figure(fig, path)
