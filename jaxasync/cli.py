"""The Hydra command line: ``jaxasync [group=option ...] [key=value ...]``.

Every job writes ``run.json``, ``metrics.csv`` and ``metrics.png``/``.pdf`` into its Hydra
output directory and logs its progress and a summary table (:mod:`jaxasync.progress`:
Hydra's job log file holds the same lines); a multirun (``-m``, or the default comparison)
ends with a table over all its jobs, ``summary.md``, ``summary.csv`` and
``comparison.png``/``.pdf`` in the sweep directory (:mod:`jaxasync.tables`,
:mod:`jaxasync.plots`).

A bad config value, a misspelled key or an unknown config option exits with status 2
and a one-line message naming the key, the value and what is allowed, before any job
runs; ``--debug``, ``traceback=true`` or ``HYDRA_FULL_ERROR=1`` show the traceback::

    $ jaxasync run.num_wrkers=3
    jaxasync: error: run.num_wrkers: unknown key (did you mean run.num_workers?); run has: ...
    $ jaxasync algorithm=asgd algorithm.params.learning_rate=-1
    jaxasync: error: algorithm.params.learning_rate=-1.0: must be > 0

Rerunning into the same output directory (``out_dir=...``, or a fixed
``hydra.sweep.dir``) skips finished jobs and resumes checkpointed ones
(``run.checkpoint_every=N``); see :mod:`jaxasync.checkpoint`.
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path
from typing import Any

from jaxasync.config import ConfigError, register_configs
from jaxasync.resources import conf_dir

#: the Hydra config directory: the repository's ``conf/``, shipped in the wheel as
#: ``jaxasync/conf`` (:mod:`jaxasync.resources`)
CONF_DIR = conf_dir()


def _fail(msg: str, debug: bool) -> None:
    if debug or os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise
    print(f"jaxasync: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def _job(cfg: Any) -> None:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from jaxasync.checks import start_processes
    from jaxasync.config import to_config
    from jaxasync.experiment import run_experiment
    from jaxasync.mesh import is_writer, same_text

    _import_in_job(cfg)
    plain = OmegaConf.to_container(cfg, resolve=True)
    try:
        start_processes(to_config(plain))
    except ConfigError as e:
        _fail(str(e), bool(cfg.get("traceback")))
        return
    # several processes: every one writes (process 0) or reads (the others) process 0's
    out_dir = same_text(str(cfg.get("out_dir") or HydraConfig.get().runtime.output_dir))
    try:
        record = run_experiment(plain, out_dir)
    except ConfigError as e:
        _fail(str(e), bool(cfg.get("traceback")))
        return
    if not is_writer():   # several processes: process 0 alone prints and writes
        return
    show_job(record, Path(record.get("written_to") or out_dir))  # (a fallback when out_dir failed)


def files_line(directory: Path, names: list[str]) -> str:
    """``files in DIR: a, b`` naming only those of ``names`` that exist there."""
    have = [n for n in names if (Path(directory) / n).is_file()]
    return f"files in {directory}: {', '.join(have) or '(none)'}"


def show_job(record: dict, out_dir: Path) -> None:
    """A finished job's table and files, logged (so Hydra's job log has them too)."""
    import logging

    from jaxasync import tables

    log = logging.getLogger("jaxasync")
    log.info("\n" + tables.build([record]).text())
    log.info(files_line(out_dir, ["run.json", "metrics.csv", "metrics.png", "metrics.pdf"]))


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra < 1.1
    Callback = object  # type: ignore[misc,assignment]


def write_summary(records: list[dict], directory: Path, plot: bool = True,
                  show_table: bool = True) -> None:
    """``summary.md``, ``summary.csv`` and ``comparison.png``/``.pdf`` of ``records`` in
    ``directory``; prints the table (unless ``show_table``) and the files written."""
    from jaxasync import plots, report, tables

    table = tables.build(records)
    if show_table:
        print("\n" + table.text(), flush=True)
    report.atomic_write(directory / "summary.md", table.text() + "\n")
    report.atomic_write(directory / "summary.csv", table.csv())
    if plot:
        plots.plot_records(records, directory / "comparison.png")
    print(files_line(directory, ["summary.md", "summary.csv", "comparison.png",
                                 "comparison.pdf"]), flush=True)


class SummaryCallback(Callback):
    """At the end of a multirun: one table over all jobs (a single job's was printed by the
    job), ``summary.md``, ``summary.csv`` and a comparison plot."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        from jaxasync import report
        from jaxasync.mesh import is_writer

        if not is_writer():   # several processes: process 0 writes
            return

        sweep = Path(config.hydra.sweep.dir)
        records = report.load_records(sweep) if sweep.is_dir() else []
        if not records:
            return
        write_summary(records, sweep, plot=any(r["config"].get("plot", True) for r in records),
                      show_table=len(records) > 1)


# ----------------------------------------------------------------------------- several processes


def _process_overrides(base: Any) -> list[str]:
    """Hydra overrides for a run of several processes (``jaxasync.mesh``), else none.

    Every process must use process 0's output directories (their names hold the time each
    process started): process 0 fixes its own; the others keep Hydra's bookkeeping (its
    config copies, ``multirun.yaml``) in a temporary directory removed at exit, write no
    log file, and learn each job's directory from process 0 (``_job``).
    """
    import jax

    if base is None or not jax.distributed.is_initialized() or jax.process_count() == 1:
        return []
    from jaxasync.mesh import is_writer, same_text

    dirs = [same_text(str(base.hydra.run.dir)), same_text(str(base.hydra.sweep.dir))]
    if not is_writer():
        import atexit
        import shutil
        import tempfile

        scratch = tempfile.mkdtemp(prefix=f"jaxasync-process{jax.process_index()}-")
        atexit.register(shutil.rmtree, scratch, True)
        return [f"hydra.run.dir='{scratch}'", f"hydra.sweep.dir='{scratch}'",
                "hydra.output_subdir=null", "hydra/job_logging=stdout"]
    return [f"hydra.run.dir='{dirs[0]}'", f"hydra.sweep.dir='{dirs[1]}'"]


# ----------------------------------------------------------------------------- checking first


def _wants_traceback(overrides: list[str]) -> bool:
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return True
    return any(o.lstrip("+").replace(" ", "").lower() == "traceback=true" for o in overrides)


def _composition_message(e: Exception) -> str:
    """Hydra's composition errors (multi-line) -> one line naming the key."""
    import difflib

    from hydra.errors import MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    from jaxasync.config import config_error

    if isinstance(e, MissingConfigException) and "/" in (e.missing_cfg_file or ""):
        group, _, name = e.missing_cfg_file.rpartition("/")
        options = [o for o in (e.options or []) if o != "schema"]
        close = difflib.get_close_matches(name, options, n=1)
        hint = f" (did you mean {group}={close[0]}?)" if close else ""
        return (f"{group}={name}: no such {group} config{hint}; choose one of: "
                f"{', '.join(options) or '(none)'}")
    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
            return str(config_error(cause))
        cause = cause.__cause__
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _check_hydra_dirs(base: Any, multirun: bool, fail) -> None:
    """``hydra.run.dir`` / ``hydra.sweep.dir`` must be usable as directories (Hydra's own
    error for a file there is a traceback)."""
    from omegaconf import OmegaConf

    from jaxasync.outputs_dir import as_path

    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        path = OmegaConf.select(base, key)
    except Exception:  # an interpolation only Hydra resolves (${now:...} is resolved here)
        return
    try:
        as_path(path, key)
    except ConfigError as e:
        fail(str(e), e)


def _precheck(argv: list[str]) -> Any:
    """Composes and validates every job of the command before Hydra runs any.

    Hydra reports a misspelled key or an unknown config option with several lines and
    exit status 1; here they become the same one-line :class:`ConfigError` as the Python
    API's, with exit status 2. Every job of a sweep (the command line's and the config's
    ``hydra.sweeper.params``) is composed and checked with
    :func:`jaxasync.experiment.validate`, so a bad value in the last job stops the sweep
    before the first one runs. Checks that need the data run in each job, before it
    compiles. Anything this cannot judge (other sweepers, ``--cfg``, ``--help``...) is
    left to Hydra. Returns the command's first config (with its ``hydra`` node), or None
    where it left the command to Hydra.
    """
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf
    from omegaconf.errors import InterpolationResolutionError

    from jaxasync.experiment import validate

    args, _ = get_args_parser().parse_known_args(argv)
    if (args.help or args.hydra_help or args.info or args.shell_completion or args.cfg
            or args.experimental_rerun or args.config_path or args.config_dir):
        return
    debug = _wants_traceback(args.overrides)

    def fail(msg: str, exc: BaseException) -> None:
        if debug:
            raise exc
        print(f"jaxasync: error: {msg}", file=sys.stderr, flush=True)
        sys.exit(2)

    parser = OverridesParser.create()
    cmd = _command_overrides(parser, args.overrides, fail)
    if cmd is None:
        return
    config_name = args.config_name or "config"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3",
                               job_name="jaxasync_check"):
        first = [vals[0] for vals in cmd.values()]
        try:
            base = compose(config_name, overrides=first, return_hydra_config=True)
        except Exception as e:
            fail(_composition_message(e), e)
        multirun = args.multirun or str(base.hydra.mode).endswith("MULTIRUN")
        _check_hydra_dirs(base, multirun, fail)
        _check_sweeps(cmd, multirun, fail)
        if multirun and str(base.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
            if not _add_sweeper_params(parser, base.hydra.sweeper.get("params") or {}, cmd):
                return
        for combo in _combos(list(cmd.values())):
            if list(combo) == first:  # composed above: drop Hydra's own node
                cfg = OmegaConf.masked_copy(base, [k for k in base if k != "hydra"])
            else:
                try:
                    cfg = compose(config_name, overrides=list(combo))
                except Exception as e:
                    fail(_composition_message(e), e)
            debug = debug or bool(cfg.get("traceback"))
            try:
                plain = OmegaConf.to_container(cfg, resolve=True)
            except InterpolationResolutionError:
                continue  # e.g. ${hydra:...}: resolved, and checked, inside the job
            try:
                validate(plain)
            except ConfigError as e:
                fail(str(e), e)
    return base


def _command_overrides(parser, overrides: list[str], fail) -> dict[str, list[str]] | None:
    """Each key of the command line with its overrides (several for a sweep), or None where
    Hydra must judge the command (a sweeper plugin's syntax, ``glob()`` and the like)."""
    cmd: dict[str, list[str]] = {}
    for text in overrides:
        try:
            o = parser.parse_override(text)
        except Exception as e:
            fail(f"{text}: cannot parse this override ({str(e).splitlines()[0]})", e)
        key = o.get_key_element()
        if o.is_sweep_override():
            if not o.is_discrete_sweep():
                return  # a sweeper plugin's syntax: Hydra checks it
            try:
                cmd[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
            except Exception:
                return  # glob() and the like need Hydra's config loader
        else:
            cmd[key] = [text]
    return cmd


def _check_sweeps(cmd: dict[str, list[str]], multirun: bool, fail) -> None:
    """Several values of a key need a multirun (``-m``)."""
    sweeps = {k: v for k, v in cmd.items() if len(v) > 1}
    if sweeps and not multirun:
        key = next(iter(sweeps))
        fail(f"{key}={','.join(v.split('=', 1)[1] for v in sweeps[key])}: several values "
             f"need a multirun; add -m", ValueError(key))


def _add_sweeper_params(parser, params, cmd: dict[str, list[str]]) -> bool:
    """Adds the config's ``hydra.sweeper.params`` the command line does not set to ``cmd``;
    False where a value has a form this does not know (Hydra's sweeper judges it)."""
    for k, v in params.items():
        if k in cmd:
            continue
        try:
            o = parser.parse_override(f"{k}={v}")
            cmd[k] = ([f"{k}={x}" for x in o.sweep_string_iterator()]
                      if o.is_sweep_override() else [f"{k}={v}"])
        except Exception:
            return False  # a form this does not know: Hydra's sweeper judges it
    return True


def _combos(lists: list[list[str]]) -> list[tuple[str, ...]]:
    """The jobs to check: every combination of the keys' values, or, for a large grid (over
    64), every value of every key once with the other keys at their first value."""
    combos: list[tuple[str, ...]] = list(itertools.product(*lists))
    if len(combos) > 64:  # a large grid: every value of every key once, the rest first
        firsts = [vals[0] for vals in lists]
        combos = [(*firsts[:i], v, *firsts[i + 1:])
                  for i, vals in enumerate(lists) for v in vals]
    return combos


def main(argv: list[str] | None = None) -> None:
    """Console entry point ``jaxasync``.

    ``--help`` and ``--version`` are jaxasync's (Hydra's own help: ``--hydra-help``).
    ``--debug`` (removed before Hydra parses the command line) is ``traceback=true``.
    Entry points of ``jaxasync.plugins`` and the modules of ``imports=`` are loaded before
    anything is composed (:mod:`jaxasync.plugins`).
    """
    import hydra

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    if "--debug" in sys.argv[1:]:
        sys.argv = [a for a in sys.argv if a != "--debug"]
        if not any(a.lstrip("+").startswith("traceback=") for a in sys.argv[1:]):
            sys.argv.append("traceback=true")
    register_configs()
    _load_plugins(sys.argv[1:])
    if "--version" in sys.argv[1:]:
        print(f"jaxasync {version()}")
        return
    if {"--help", "-h"} & set(sys.argv[1:]):
        print(help_text())
        return
    base = _precheck(sys.argv[1:])
    sys.argv += _process_overrides(base)
    app = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(_job)
    app()


# ----------------------------------------------------------------------------- plugins


def _load_plugins(argv: list[str]) -> None:
    """Entry points and ``imports=`` modules; a module that fails to import exits with 2."""
    from jaxasync import plugins

    try:
        plugins.load(argv, CONF_DIR)
    except plugins.PluginError as e:
        _fail_plugin(e, _wants_traceback(argv))


def _fail_plugin(e: Exception, debug: bool) -> None:
    if debug:
        raise e
    print(f"jaxasync: error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


def _import_in_job(cfg: Any) -> None:
    """A job's ``imports`` (for launchers that run jobs in fresh processes; idempotent)."""
    from jaxasync import plugins

    names = list(cfg.get("imports") or [])
    if names:
        try:
            plugins.import_modules(names)
        except plugins.PluginError as e:
            _fail_plugin(e, bool(cfg.get("traceback")))


# ----------------------------------------------------------------------------- help, version


def version() -> str:
    """jaxasync's version: the installed distribution's (pyproject.toml is its one source)."""
    from jaxasync import __version__

    return __version__


def _group_options() -> dict[str, list[str]]:
    """Each config group's options: YAML files and ConfigStore nodes, without ``schema``."""
    from hydra.core.config_store import ConfigStore

    repo = ConfigStore.instance().repo
    groups: dict[str, set[str]] = {}
    for d in sorted(p for p in CONF_DIR.iterdir() if p.is_dir()):
        groups[d.name] = {f.stem for f in d.glob("*.yaml")}
    for name, node in repo.items():
        if isinstance(node, dict) and name in groups:
            groups[name] |= {k.removesuffix(".yaml") for k in node if k != "schema.yaml"}
    return {g: sorted(o - {"schema"}) for g, o in groups.items()}


def _key_lines(prefix: str, schema: Any) -> list[str]:
    """``prefix.key=default  help`` for every field of ``schema`` that carries a declaration
    (its ``doc`` is the help text)."""
    import dataclasses

    from omegaconf import OmegaConf

    from jaxasync.hparams import declaration_of

    lines = []
    for f in dataclasses.fields(schema):
        param = declaration_of(f)
        if param is None or not param.doc:
            continue
        default = OmegaConf.to_container(OmegaConf.structured(schema))[f.name]
        shown = "null" if default is None else str(default).replace(" ", "").replace("'", "")
        lines.append((f"{prefix}{f.name}={shown}".lower() if isinstance(default, bool)
                      else f"{prefix}{f.name}={shown}", param.doc))
    width = max(len(k) for k, _ in lines)
    return [_wrap(f"  {k:<{width}}  ", h) for k, h in lines]


def _wrap(head: str, text: str, width: int = 100) -> str:
    """``head`` then ``text`` wrapped to ``width`` columns, continued under its start."""
    import textwrap

    return textwrap.fill(text, width, initial_indent=head, subsequent_indent=" " * len(head),
                         break_on_hyphens=False)


def help_text() -> str:
    """``jaxasync --help``: rendered from the config directory and the schema, so it cannot
    drift from them."""
    from jaxasync.config import Config, RunConf

    groups = _group_options()
    gw = max(len(g) for g in groups)
    lines = [
        f"jaxasync {version()}: a benchmark suite for communication-efficient asynchronous "
        "and distributed SGD (JAX)",
        "",
        "usage: jaxasync [--help] [--version] [--debug] [-m] [group=option ...] "
        "[key=value ...]",
        "",
        _wrap("", "Without arguments: ASGD vs delay-adaptive ASGD vs synchronous SGD on "
              "MNIST-1D, a multirun ending with one table. -m with comma-separated values "
              "sweeps (jaxasync -m algorithm=asgd,sync_sgd); a list of seeds or numbers "
              "(run.seeds=[0,1,2]) runs as one vmapped program. Each job writes run.json, "
              "metrics.csv and metrics.png."),
        "",
        "Config groups (group=option):",
        *[_wrap(f"  {g:<{gw}}  ", ", ".join(o)) for g, o in groups.items()],
        "",
        "Run keys (run.key=default):",
        *_key_lines("run.", RunConf),
        "",
        "Other keys:",
        *_key_lines("", Config),
        _wrap("  algorithm.params.<name>=...  ", "the algorithm's parameters (a list of "
              "numbers: a vmapped sweep)"),
        "",
        _wrap("", "--debug: the full traceback of an error. --hydra-help: Hydra's own "
              "options. Your own algorithm: imports=[module] (see the README)."),
    ]
    return "\n".join(lines)
