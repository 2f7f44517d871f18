"""Measured delays and device speeds, read from the files that publish them.

Three formats, all given by path (``delay=trace delay.trace_file=PATH``; none is vendored):

* a plain trace: whitespace- or comma-separated non-negative integers, replayed as one
  sequence (:func:`jaxasync.delays.read_trace`);
* a per-worker staleness table: one row per server iteration, one column per worker, the
  format of the delays Wu, Chen, Duan & Yuan logged from real MPI runs of PIAG and Async-BCD
  with 8 workers ("Delay-adaptive step-sizes for asynchronous learning", ICML 2022,
  arXiv 2202.08550; files ``{algorithm}_{stepsize}_{dataset}.csv`` of
  github.com/xuyangwu/Delay-data, integers written as ``1.000000000000000000e+00``). Worker
  ``w`` replays column ``w mod C``, its k-th gradient with the column's k-th delay
  (:func:`read_delay_table`);
* FedScale's device-capacity pickle ``{client_id: {"computation": ms per sample,
  "communication": kbit/s}}`` (Lai et al., "FedScale", ICML 2022; the meaning of the two
  numbers is FedScale's ``ClientMetadata.get_completion_time`` in
  ``fedscale/cloud/internal/client_metadata.py``: ``3 * batch * computation / 1000`` seconds
  per local step, ``bits / (1000 * communication)`` seconds per message). It sets each
  worker's fixed compute time and link (:func:`read_fedscale`).

Every reader raises ``ValueError`` naming the file and the first bad entry.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from jaxasync.delays import read_trace


def _file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"delay.trace_file: {path} does not exist")
    return path


def read_delay_table(path: str | Path) -> tuple[tuple[int, ...], int]:
    """``(entries row by row, columns)`` of a delay file.

    A file whose every non-empty line has the same number C > 1 of comma- or
    whitespace-separated entries is a per-worker table of C columns (Wu et al.'s 8-column
    CSVs); anything else is one sequence (C = 1). Entries are checked by
    :func:`jaxasync.delays.read_trace`.
    """
    flat = read_trace(path)   # every entry checked, row by row
    widths = {len(ln.replace(",", " ").split()) for ln in Path(path).read_text().splitlines()}
    widths.discard(0)
    return flat, (widths.pop() if len(widths) == 1 else 1)


class _PlainUnpickler(pickle.Unpickler):
    """Only plain containers and numbers: a capacity file needs no other global, and loading
    one from an untrusted source must not run code."""

    _ALLOWED = {("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a device-"
                                     "capacity file")


def is_pickle(path: str | Path) -> bool:
    """Whether ``path`` names a pickle (FedScale's capacity file): by suffix, or by the
    opening PROTO opcode 0x80 followed by a protocol number 2-5 (any other binary file is
    left to :func:`jaxasync.delays.read_trace`, which names its first bad byte)."""
    p = Path(path)
    if p.suffix in (".pkl", ".pickle"):
        return True
    try:
        with open(p, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def read_fedscale(path: str | Path, num_workers: int, batch_size: int
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-worker ``(compute seconds per gradient, link bits/s)`` from FedScale's capacity file.

    Worker ``w`` is the ``w mod N``-th client in sorted id order. A gradient of a ``batch_size``
    minibatch takes ``3 * batch_size * computation / 1000`` s (FedScale's forward latency per
    sample times 3 for the backward pass); the link carries ``1000 * communication`` bits/s.
    """
    path = _file(path)
    try:
        with open(path, "rb") as f:
            table = _PlainUnpickler(f).load()
    except Exception as e:  # pickle raises many types on garbage
        raise ValueError(f"delay.trace_file {path}: not a readable capacity pickle "
                         f"({type(e).__name__}: {e})") from None
    if not isinstance(table, dict) or not table:
        raise ValueError(f"delay.trace_file {path}: expected a non-empty dict {{client_id: "
                         f"{{'computation', 'communication'}}}}, got {type(table).__name__}")
    ids = sorted(table, key=lambda k: (str(type(k)), k))
    compute, links = [], []
    for w in range(num_workers):
        cid = ids[w % len(ids)]
        entry = table[cid]
        try:
            c, b = float(entry["computation"]), float(entry["communication"])
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"delay.trace_file {path}: client {cid!r} = {entry!r}: needs "
                             "numbers 'computation' and 'communication'") from None
        if not (np.isfinite(c) and c > 0 and np.isfinite(b) and b > 0):
            raise ValueError(f"delay.trace_file {path}: client {cid!r}: computation={c} and "
                             f"communication={b} must be finite numbers > 0")
        compute.append(3.0 * batch_size * c / 1000.0)
        links.append(1000.0 * b)
    return tuple(compute), tuple(links)
