"""A run's output directory: checked, locked and probed before anything compiles, and written
so that nothing computed is lost.

* :func:`as_path` refuses what cannot be an output directory (a number, an empty string, a
  regular file, a path under a file) with one line naming ``out_dir``.
* :class:`OutputDir` (a context manager, entered after the config has been checked completely
  and before the run compiles) creates the directory, takes its lock and probes it for
  writing. The lock is a ``filelock.FileLock`` on ``.jaxasync.lock`` (``fcntl.flock``: the
  kernel drops it when its process dies, so the lock of a killed run is recovered by the
  next one); the holder writes its PID to ``.jaxasync.pid``, and a second run on the same
  directory stops with one line naming that PID.
* ``run.resume=false`` does not delete an earlier result: :meth:`OutputDir.set_aside` moves it
  to ``.replaced/`` and :meth:`OutputDir.first_result` removes that once the new run has
  written its first result (a checkpoint or its outputs). A run that fails before puts the
  earlier result back; one killed before is put back at the next start.
* :meth:`OutputDir.write` writes the outputs; if that fails (a full disk, a permission changed
  under the run), it writes them to a fallback directory instead and says where in one line.
* Several processes (:mod:`jaxasync.mesh`): process 0 alone creates, locks, probes, sets aside
  and writes; the others get an ``OutputDir(..., writer=False)`` that only names the path (they
  read process 0's checkpoints and write their shards of them through orbax).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxasync.config import ConfigError

LOCK_FILE = ".jaxasync.lock"
PID_FILE = ".jaxasync.pid"
ASIDE_DIR = ".replaced"
#: what a run writes into its directory (moved aside together by ``run.resume=false``)
RESULT_NAMES = ("run.json", "metrics.csv", "metrics.png", "members", "checkpoint")
#: where results go when the output directory cannot be written (the first that can)
FALLBACK_ENV = "JAXASYNC_FALLBACK_DIR"


def as_path(out_dir: Any, key: str = "out_dir") -> Path | None:
    """``out_dir`` as a :class:`~pathlib.Path` (None stays None), checked to be usable as a
    directory without touching anything; errors name ``key``.

    Raises:
      ConfigError: not a path, empty, a regular file, or below a regular file.
    """
    if out_dir is None:
        return None
    if isinstance(out_dir, bool) or not isinstance(out_dir, str | os.PathLike):
        raise ConfigError(f"{key}={out_dir!r}: must be a directory path (a string or "
                          f"os.PathLike), not {type(out_dir).__name__}")
    text = os.fspath(out_dir)
    if isinstance(text, bytes) or not text.strip():
        raise ConfigError(f"{key}={out_dir!r}: must be a non-empty directory path")
    path = Path(text).expanduser()
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == path else f"lies under the file {str(p)!r}"
                raise ConfigError(f"{key}={text!r}: {what}, not a directory; choose "
                                  f"another {key}")
            break
    return path


class OutputDir:
    """The locked output directory of one run (see the module docstring).

    Use as ``with OutputDir(path) as out: ...``; entering creates, locks and probes it.
    ``writer=False`` (a process other than 0 of a run of several): entering, setting aside and
    writing do nothing.
    """

    def __init__(self, path: Path, *, progress: bool = True, writer: bool = True):
        self.path = Path(path)
        self.progress = progress
        self.writer = writer
        self._lock = None
        self._aside: Path | None = None

    # -- entering and leaving -------------------------------------------------------------

    def __enter__(self) -> OutputDir:
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.restore_aside()
        self.close()

    def _error(self, what: str) -> ConfigError:
        return ConfigError(f"out_dir={str(self.path)!r}: {what}")

    def open(self) -> None:
        """Creates the directory, takes the lock, probes writing, and puts back an earlier
        result a killed ``run.resume=false`` run left aside."""
        from filelock import FileLock, Timeout

        if not self.writer:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._error(f"cannot be created ({e.strerror or e})") from None
        lock = FileLock(str(self.path / LOCK_FILE), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise self._error(f"another run ({_holder(self.path)}) is writing there; wait for "
                              f"it to finish, or choose another out_dir") from None
        except OSError as e:
            raise self._error(f"cannot be locked ({e.strerror or e})") from None
        self._lock = lock
        try:
            self._probe()
            (self.path / PID_FILE).write_text(f"{os.getpid()} {socket.gethostname()}\n")
        except BaseException:
            self.close()
            raise
        if (self.path / ASIDE_DIR).is_dir():
            self._aside = self.path / ASIDE_DIR
            self.restore_aside(why="the run that replaced it stopped before its first result")

    def _probe(self) -> None:
        try:
            fd, name = tempfile.mkstemp(dir=self.path, prefix=".probe.", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                f.write("probe\n")
                f.flush()
                os.fsync(f.fileno())
            os.unlink(name)
        except OSError as e:
            raise self._error(f"cannot be written ({e.strerror or e})") from None

    def close(self) -> None:
        """Releases the lock (idempotent)."""
        if self._lock is not None:
            try:
                (self.path / PID_FILE).unlink(missing_ok=True)
            except OSError:
                pass
            self._lock.release()
            self._lock = None

    # -- run.resume=false ----------------------------------------------------------------------

    def set_aside(self) -> bool:
        """Moves an earlier result (``run.json``, metrics, checkpoints) to ``.replaced/``;
        returns whether there was one."""
        if not self.writer:
            return False
        found = [n for n in RESULT_NAMES if (self.path / n).exists()]
        if not found:
            return False
        aside = self.path / ASIDE_DIR
        aside.mkdir(exist_ok=True)
        for name in found:
            os.replace(self.path / name, aside / name)
        self._aside = aside
        if self.progress:
            print(f"[out_dir] {self.path}: the earlier result is in {aside} until this run "
                  f"writes its first result", flush=True)
        return True

    def first_result(self) -> None:
        """The run has written a result: the earlier one set aside is removed."""
        if self._aside is not None:
            shutil.rmtree(self._aside, ignore_errors=True)
            self._aside = None

    def restore_aside(self, why: str = "this run stopped before its first result") -> None:
        """Puts the earlier result set aside back (what this run wrote of those names goes)."""
        aside = self._aside
        if aside is None or not aside.is_dir():
            return
        for item in aside.iterdir():
            target = self.path / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            elif target.exists():
                target.unlink()
            os.replace(item, target)
        aside.rmdir()
        self._aside = None
        print(f"[out_dir] {self.path}: the earlier result is back ({why})", file=sys.stderr,
              flush=True)

    # -- writing --------------------------------------------------------------------------------

    def write(self, write: Callable[[Path], None], label: str) -> Path:
        """``write(directory)`` into this directory, or, if that fails with an ``OSError``,
        into a fallback directory (one line on stderr says where); returns where it wrote.

        Raises:
          OSError: no fallback directory could be written either.
        """
        if not self.writer:
            return self.path
        try:
            write(self.path)
            self.first_result()
            return self.path
        except OSError as e:
            first = e
        for root in fallback_roots():
            try:
                target = Path(tempfile.mkdtemp(prefix=f"jaxasync-{label}-"
                                               f"{time.strftime('%Y%m%d-%H%M%S')}-", dir=root))
                write(target)
            except OSError:
                continue
            print(f"jaxasync: could not write to {self.path} ({first.strerror or first}); "
                  f"the results are in {target}", file=sys.stderr, flush=True)
            return target
        raise first


def fallback_roots() -> list[str]:
    """Where results go when their directory cannot be written: ``$JAXASYNC_FALLBACK_DIR``,
    the system's temporary directory, the home directory."""
    roots = [os.environ.get(FALLBACK_ENV), tempfile.gettempdir(), os.path.expanduser("~")]
    return [r for r in dict.fromkeys(roots) if r]


def _holder(path: Path) -> str:
    """Who holds the lock, in words (``PID 1234 on host``)."""
    try:
        pid, *host = (path / PID_FILE).read_text().split()
        return f"PID {int(pid)}" + (f" on {host[0]}" if host else "")
    except (OSError, ValueError):
        return "a process whose PID is not recorded yet"
