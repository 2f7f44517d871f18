"""User algorithms and compressors on the command line: ``imports=``, entry points, defaults.

A module that registers an algorithm (``@jaxasync.register``) or a compressor reaches the
CLI in one of two ways, both before any config is composed or checked:

* ``jaxasync imports=[my_algos] algorithm=my_algo``: the listed modules are imported
  (``imports=my_algos`` for one; dotted names work). The current directory is searched
  first, so a file ``my_algos.py`` next to where you run needs no installation.
* An installed package declares an entry point in the group ``jaxasync.plugins``
  (pyproject: ``[project.entry-points."jaxasync.plugins"] my_algos = "my_algos"``); every
  such entry point is loaded when the CLI starts. It names a module (imported) or a function
  (called with no arguments).

An algorithm registered without a YAML file under ``conf/algorithm/`` gets a default
config, stored in Hydra's ConfigStore as the option ``algorithm=<name>``: its ``params`` are
the factory's keyword defaults (numbers, strings, bools; ``num_workers`` and ``smoothness``
are filled in by the runner), so ``algorithm.params.<name>=...`` overrides them as for any
other algorithm.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Iterable
from pathlib import Path

#: the entry-point group installed packages register their algorithms in
ENTRY_POINT_GROUP = "jaxasync.plugins"

#: factory parameters the runner fills in itself (never part of a default config)
FILLED_BY_RUNNER = ("num_workers", "smoothness")


class PluginError(ValueError):
    """A module listed in ``imports=`` cannot be imported (one line, naming it)."""


def import_modules(names: Iterable[str]) -> list[str]:
    """Imports each module of ``names`` (the current directory first on the path).

    Returns the names imported. Raises :class:`PluginError` naming the module and the cause.
    """
    names = [str(n) for n in names if str(n).strip()]
    if names and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            importlib.import_module(name.strip())
        except Exception as e:  # any failure of the user's module: name it, in one line
            cause = str(e).splitlines()[0] if str(e) else ""
            raise PluginError(f"imports={name}: cannot import {name!r} "
                              f"({type(e).__name__}: {cause}); the current directory and "
                              "the installed packages are searched") from e
    return names


def load_entry_points(group: str = ENTRY_POINT_GROUP) -> list[str]:
    """Loads every entry point of ``group``; returns their names.

    One that fails is reported on stderr with its name and the cause, and the others still
    load (a broken plugin must not take the whole CLI down).
    """
    from importlib.metadata import entry_points

    loaded = []
    for ep in entry_points(group=group):
        try:
            obj = ep.load()
            if callable(obj) and not inspect.ismodule(obj):
                obj()
        except Exception as e:
            print(f"jaxasync: warning: plugin {ep.name} ({ep.value}) failed to load: "
                  f"{type(e).__name__}: {e}", file=sys.stderr, flush=True)
            continue
        loaded.append(ep.name)
    return loaded


def default_params(factory) -> dict:
    """The factory's keyword defaults a config can carry (numbers, strings, bools), in order."""
    out = {}
    for name, p in inspect.signature(factory).parameters.items():
        if name in FILLED_BY_RUNNER or p.default is inspect.Parameter.empty:
            continue
        if isinstance(p.default, bool | int | float | str):
            out[name] = p.default
    return out


def store_default_configs(conf_dir: Path) -> list[str]:
    """Stores ``algorithm=<name>`` in Hydra's ConfigStore for every registered algorithm with
    no ``<conf_dir>/algorithm/<name>.yaml``; returns their names."""
    from hydra.core.config_store import ConfigStore

    from jaxasync.algorithms import ALGORITHMS

    cs = ConfigStore.instance()
    stored = []
    for name, spec in sorted(ALGORITHMS.items()):
        if (Path(conf_dir) / "algorithm" / f"{name}.yaml").is_file():
            continue
        cs.store(group="algorithm", name=name,
                 node={"name": name, "params": default_params(spec.factory)})
        stored.append(name)
    return stored


def command_line_imports(argv: list[str]) -> list[str]:
    """The module names given by ``imports=...`` (or ``+imports=...``) on a command line.

    Raises:
      PluginError: the value does not parse.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    names: list[str] = []
    for text in argv:
        if not text.lstrip("+~").startswith("imports="):
            continue
        try:
            o = parser.parse_override(text)
        except Exception as e:
            raise PluginError(f"{text}: cannot parse this override "
                              f"({str(e).splitlines()[0]})") from e
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()]
        for v in values:
            names += [str(x) for x in v] if isinstance(v, list | tuple) else [str(v)]
    return names


def load(argv: list[str], conf_dir: Path) -> None:
    """Everything the CLI does before composing: entry points, ``imports=``, defaults.

    Raises:
      PluginError: a module of ``imports=`` cannot be imported.
    """
    load_entry_points()
    import_modules(command_line_imports(argv))
    store_default_configs(conf_dir)
