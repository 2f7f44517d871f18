"""What a job shows while it runs: a compiling phase, a progress bar, a few log lines.

Everything goes through Python :mod:`logging` (logger ``jaxasync``), so Hydra's job log file
holds what the terminal showed; the bar (tqdm, with its ETA) is drawn on a terminal only,
and log lines printed while it is up go through ``tqdm.write`` so they do not break it.
A job logs its header, ``compiling``, ``compiled in N s``, at most :data:`LINES` progress
lines (every tenth of the run) and its end: about 15 lines however many evaluations it
has. ``run.quiet=true`` (or ``progress=False`` in the Python API) shows none of them.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable

import numpy as np

log = logging.getLogger("jaxasync")

#: progress lines per job (the bar, on a terminal, shows every chunk)
LINES = 10


def ensure_logging() -> None:
    """Outside Hydra (the Python API, the leaderboard) INFO lines of ``jaxasync`` go to
    stdout as plain messages, unless the application configured logging itself."""
    if log.handlers or logging.getLogger().handlers:
        if log.getEffectiveLevel() > logging.INFO and not log.handlers:
            log.setLevel(logging.INFO)
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def _metric(last: list[dict]) -> str:
    h = last[0]
    mean = lambda k: float(np.nanmean([x.get(k, np.nan) for x in last]))  # noqa: E731
    if h.get("train_grad_norm") is not None:
        return f"|grad F| {mean('train_grad_norm'):.3g}"
    if h.get("train_gap") is not None:
        return f"F-F* {mean('train_gap'):.3g}"
    if h.get("test_accuracy") is not None:
        return f"acc {mean('test_accuracy'):.3f}  loss {mean('train_loss'):.3g}"
    return f"loss {mean('train_loss'):.3g}"


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 60 else f"{int(s // 60)} min {s % 60:02.0f} s"


class Progress:
    """The ``progress`` callback of :func:`jaxasync.sim.run`, and the job's log lines.

    ``sim.run`` calls it once when the program is compiled (``done`` = chunks already done:
    0, or where a resumed run starts) and after every chunk. ``on_chunk(rows)`` (a tracker)
    gets every chunk's per-member metric rows, also when quiet.
    """

    def __init__(self, name: str, quiet: bool = False, lines: int = LINES,
                 on_chunk: Callable[[list[dict]], None] | None = None):
        self.name, self.quiet, self.lines, self.on_chunk = name, quiet, lines, on_chunk
        self.t0 = time.perf_counter()
        self.t_run: float | None = None
        self.start = 0
        self.bar = None
        self._stack = contextlib.ExitStack()
        if not quiet:
            ensure_logging()

    def info(self, msg: str) -> None:
        """A line of this job (``[name] msg``), unless quiet."""
        if not self.quiet:
            log.info(f"[{self.name}] {msg}")

    def compiling(self) -> None:
        self.t0 = time.perf_counter()
        self.info("compiling")

    def __call__(self, done: int, total: int, last: list[dict]) -> None:
        if self.t_run is None:     # the "compiled" call
            self.t_run, self.start = time.perf_counter(), done
            self.info(f"compiled in {_seconds(self.t_run - self.t0)}")
            self._open_bar(done, total)
            return
        if self.on_chunk is not None:
            self.on_chunk(last)
        if self.bar is not None:
            self.bar.set_postfix_str(_metric(last), refresh=False)
            self.bar.update(done - self.bar.n)
        every = max(1, total // self.lines)
        if done == total or (done - self.start) % every == 0:
            elapsed = time.perf_counter() - self.t_run
            eta = elapsed / max(1, done - self.start) * (total - done)
            h = last[0]
            self.info(f"{100 * done // total:3d}%  step {h['step']}  grads {h['grads']}  "
                      f"{_metric(last)}  up {h['bits_up']:.3g} bits  sim {h['time']:.4g} s  "
                      f"| {_seconds(elapsed)}, ETA {_seconds(eta)}")

    def _open_bar(self, done: int, total: int) -> None:
        if self.quiet or not sys.stderr.isatty():
            return
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        mine = [log] if log.handlers else []      # ensure_logging's handler (no Hydra)
        self._stack.enter_context(logging_redirect_tqdm(loggers=[logging.root, *mine]))
        self.bar = self._stack.enter_context(
            tqdm(total=total, initial=done, desc=f"[{self.name}]", unit="chunk", leave=False,
                 dynamic_ncols=True, file=sys.stderr))

    def close(self) -> None:
        """Takes the bar down (the log lines stay); safe to call twice."""
        self._stack.close()
        self.bar = None
