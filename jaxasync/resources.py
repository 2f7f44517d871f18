"""Where jaxasync's data files live, in a checkout and in an installed package.

The repository keeps one copy of each: the Hydra configs in ``conf/`` and the leaderboard's
entries in ``benchmarks/leaderboard/entries.yaml``, both at its root. A wheel (``pip install
.`` or ``pip wheel .``) ships them inside the package, as ``jaxasync/conf/`` and
``jaxasync/board/entries.yaml`` (``setup.py`` maps those package directories onto the
repository's folders, so no file is duplicated in git). The functions below return the
installed copy when there is one, else the checkout's. The leaderboard's results and rendered
files are written to the checkout's ``benchmarks/leaderboard``, or for an installed package to
``./leaderboard`` (:func:`board_dir`; ``--results`` and ``--out`` choose others).
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent


def _first(*candidates: Path) -> Path:
    for c in candidates:
        if c.exists():
            return c
    return candidates[-1]     # neither: the checkout's path, named in the error that follows


def conf_dir() -> Path:
    """The Hydra config directory (holds ``config.yaml`` and the config groups)."""
    return _first(_PACKAGE / "conf" / "config.yaml", _CHECKOUT / "conf" / "config.yaml").parent


def entries_file() -> Path:
    """The leaderboard's entry definitions (``entries.yaml``)."""
    return _first(_PACKAGE / "board" / "entries.yaml",
                  _CHECKOUT / "benchmarks" / "leaderboard" / "entries.yaml")


def board_dir() -> Path:
    """The leaderboard's folder: ``benchmarks/leaderboard`` of a checkout (its rendered
    ``LEADERBOARD.md`` and stored ``results/``); for an installed package, ``leaderboard/``
    in the current directory (a relative path: wherever ``jaxasync-leaderboard`` runs)."""
    root = checkout()
    return root / "benchmarks" / "leaderboard" if root is not None else Path("leaderboard")


def checkout() -> Path | None:
    """The repository root when jaxasync runs from a checkout (editable install or source),
    None for an installed wheel."""
    return _CHECKOUT if (_CHECKOUT / "pyproject.toml").is_file() and \
        (_CHECKOUT / "conf" / "config.yaml").is_file() else None
