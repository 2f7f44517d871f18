"""Leaderboard entries: their definitions (:class:`Entry`, :func:`load_entries`), the configs
their runs compose to (:func:`compose_configs`, :func:`command`), and what their result
files say (:func:`entry_state`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
from pathlib import Path
from typing import Any

from jaxasync.leaderboard.verdicts import EntryError, parse_chain, quantity
from jaxasync.resources import board_dir, checkout, conf_dir, entries_file

#: the repository root when running from a checkout, None for an installed package
ROOT = checkout()
CONF_DIR = conf_dir()
#: results and rendered files: the checkout's benchmarks/leaderboard, or ./leaderboard for an
#: installed package (jaxasync.resources)
BOARD_DIR = board_dir()
ENTRIES_FILE = entries_file()
RESULTS_DIR = BOARD_DIR / "results"
#: what of a result's code the leaderboard compares (checkpoint.code_identity): the version and
#: the algorithm's source; not the git tree, which every commit to the package changes
CODE_KEYS = ("jaxasync", "algorithm")
ENTRY_STATUS = "entry.json"


# ============================================================================ entries


@dataclasses.dataclass(frozen=True)
class Run:
    label: str
    overrides: tuple[str, ...]

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "_", self.label.lower()).strip("_") or "run"


@dataclasses.dataclass(frozen=True)
class Entry:
    id: str
    title: str
    task: str
    source: str
    runs: tuple[Run, ...]
    checks: tuple[dict, ...]
    preset: str | None = None
    overrides: tuple[str, ...] = ()
    target: dict | None = None
    device: str = "any"           # "gpu": skipped on a CPU-only machine unless --allow-cpu
    minutes: dict = dataclasses.field(default_factory=dict)  # rough run time: {cpu:, gpu:}
    data: tuple[str, ...] = ()    # datasets read from --data-dir (names of jaxasync.data.download)
    derived: dict = dataclasses.field(default_factory=dict)  # label -> (num run, den run)
    plots: tuple[dict, ...] = ()
    histogram: bool = False
    notes: str = ""

    def run(self, label: str) -> Run:
        for r in self.runs:
            if r.label == label:
                return r
        raise KeyError(label)


_ENTRY_KEYS = {f.name for f in dataclasses.fields(Entry)}
_CHECK_KEYS = {"kind", "run", "quantity", "published", "rel", "abs", "min", "max", "reference",
               "chain", "approx", "much", "num", "den", "factor", "at_least"}


def parse_entries(raw: Any) -> list[Entry]:
    """Entry definitions (the parsed YAML) -> :class:`Entry` objects, checked."""
    if not isinstance(raw, dict) or not isinstance(raw.get("entries"), list):
        raise EntryError("entries file: expected a mapping with a list under 'entries'")
    out, seen = [], set()
    for i, e in enumerate(raw["entries"]):
        where = f"entries[{i}]"
        if not isinstance(e, dict) or "id" not in e:
            raise EntryError(f"{where}: must be a mapping with an 'id'")
        where = f"entry {e['id']!r}"
        if e["id"] in seen:
            raise EntryError(f"{where}: duplicate id")
        seen.add(e["id"])
        unknown = set(e) - _ENTRY_KEYS
        if unknown:
            raise EntryError(f"{where}: unknown key {sorted(unknown)[0]!r}; allowed: "
                             f"{', '.join(sorted(_ENTRY_KEYS))}")
        for key in ("title", "task", "source", "runs", "checks"):
            if key not in e:
                raise EntryError(f"{where}: missing {key!r}")
        if not isinstance(e["runs"], dict) or not e["runs"]:
            raise EntryError(f"{where}: 'runs' must map labels to lists of Hydra overrides")
        runs = tuple(Run(str(k), tuple(str(o) for o in (v or []))) for k, v in e["runs"].items())
        slugs = [r.slug for r in runs]
        if len(set(slugs)) != len(slugs):
            raise EntryError(f"{where}: two run labels share a directory name ({slugs})")
        derived = {str(k): tuple(v) for k, v in (e.get("derived") or {}).items()}
        labels = {r.label for r in runs}
        for k, v in derived.items():
            if len(v) != 2 or not set(v) <= labels:
                raise EntryError(f"{where}: derived {k!r} must name two runs of the entry")
        device = e.get("device", "any")
        if device not in ("any", "gpu"):
            raise EntryError(f"{where}: device={device!r}: choose 'any' or 'gpu'")
        minutes = e.get("minutes") or {}
        if not isinstance(minutes, dict) or not set(minutes) <= {"cpu", "gpu"} or not all(
                isinstance(v, int | float) and v > 0 for v in minutes.values()):
            raise EntryError(f"{where}: minutes must map cpu / gpu to positive numbers")
        target = e.get("target")
        if target is not None and (set(target) != {"metric", "value", "mode"}
                                   or target["mode"] not in ("max", "min")):
            raise EntryError(f"{where}: target must be {{metric, value, mode: max|min}}")
        entry = Entry(
            id=str(e["id"]), title=str(e["title"]), task=str(e["task"]), source=str(e["source"]),
            runs=runs, checks=tuple(e["checks"]), preset=e.get("preset"),
            overrides=tuple(str(o) for o in (e.get("overrides") or [])), target=target,
            device=device, minutes=dict(e.get("minutes") or {}),
            data=tuple(e.get("data") or ()), derived=derived,
            plots=tuple(e.get("plots") or ()), histogram=bool(e.get("histogram", False)),
            notes=str(e.get("notes", "")).strip())
        for j, c in enumerate(entry.checks):
            _check_check(entry, c, f"{where}, checks[{j}]", labels | set(derived))
        out.append(entry)
    return out


def _check_check(entry: Entry, c: Any, where: str, labels: set[str]) -> None:
    if not isinstance(c, dict) or c.get("kind") not in ("value", "ordering", "ratio"):
        raise EntryError(f"{where}: must be a mapping with kind value, ordering or ratio")
    unknown = set(c) - _CHECK_KEYS
    if unknown:
        raise EntryError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    try:
        quantity(c.get("quantity", ""))
    except EntryError as e:
        raise EntryError(f"{where}: {e}") from None
    if c["kind"] == "value":
        if c.get("run") not in {r.label for r in entry.runs}:
            raise EntryError(f"{where}: run {c.get('run')!r} is not a run of the entry")
        if "published" in c and ("rel" in c) == ("abs" in c):
            raise EntryError(f"{where}: a published value needs exactly one of rel, abs")
    elif c["kind"] == "ordering":
        try:
            names, _ = parse_chain(str(c.get("chain", "")))
        except EntryError as e:
            raise EntryError(f"{where}: {e}") from None
        bad = [n for n in names if n not in labels]
        if bad:
            raise EntryError(f"{where}: chain names {bad[0]!r}, not a run or derived label")
    else:
        for key in ("num", "den"):
            if c.get(key) not in labels:
                raise EntryError(f"{where}: {key}={c.get(key)!r} is not a run of the entry")
        if "at_least" not in c and ("published" not in c or ("factor" in c) == ("rel" in c)):
            raise EntryError(f"{where}: needs at_least, or published with one of factor, rel")


def load_entries(path: str | os.PathLike = ENTRIES_FILE) -> list[Entry]:
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise EntryError(f"entries file {str(path)!r} not found") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise EntryError(f"entries file {str(path)!r}: not valid YAML{at} ({what})") from None
    except UnicodeDecodeError as e:
        raise EntryError(f"entries file {str(path)!r}: binary content (byte "
                         f"{e.object[e.start]:#04x} at offset {e.start}); expected YAML text"
                         ) from None
    except IsADirectoryError:
        raise EntryError(f"entries file {str(path)!r}: is a directory, not a file") from None
    except OSError as e:
        raise EntryError(f"entries file {str(path)!r}: cannot be read ({e.strerror or e})"
                         ) from None
    return parse_entries(raw)


# ============================================================================ configs


def _override_key(o: str) -> str:
    return o.lstrip("+~").split("=", 1)[0]


def command(entry: Entry, run: Run, data_dir: str | None = None) -> str:
    """The ``jaxasync`` command line that runs ``run`` alone (what the leaderboard composes)."""
    args = ([f"experiment={entry.preset}"] if entry.preset else []) + list(entry.overrides)
    args += list(run.overrides)
    if entry.data and data_dir is not None:
        args.append(f"workload.options.data_dir={data_dir}")
    return "jaxasync " + " ".join(shlex.quote(a) for a in args)


def compose_configs(entry: Entry, data_dir: str | None = None,
                    conf_dir: Path = CONF_DIR) -> dict[str, dict]:
    """Each run's resolved config (a plain dict), as ``jaxasync`` composes it.

    Raises:
      EntryError: a missing preset, a bad override, or a key the preset sweeps that the
        entry does not fix (the composed config would not be the command's).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from jaxasync.cli import _composition_message
    from jaxasync.config import register_configs

    register_configs()
    if entry.preset and not (conf_dir / "experiment" / f"{entry.preset}.yaml").is_file():
        raise EntryError(f"preset conf/experiment/{entry.preset}.yaml does not exist (yet)")
    out = {}
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3",
                               job_name="leaderboard"):
        for run in entry.runs:
            overrides = (([f"experiment={entry.preset}"] if entry.preset else [])
                         + list(entry.overrides) + list(run.overrides))
            try:
                cfg = compose("config", overrides=overrides, return_hydra_config=True)
            except Exception as e:  # Hydra's composition errors: one line naming the key
                raise EntryError(f"entry {entry.id!r}, run {run.label!r}: "
                                 f"{_composition_message(e)}") from None
            swept = cfg.hydra.sweeper.get("params") or {}
            fixed = {_override_key(o) for o in overrides}
            open_keys = [k for k in swept if k not in fixed]
            if open_keys:
                raise EntryError(f"entry {entry.id!r}, run {run.label!r}: the preset sweeps "
                                 f"{open_keys[0]} ({swept[open_keys[0]]}); fix it in the "
                                 f"entry's overrides")
            plain = OmegaConf.to_container(
                OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
            if entry.data and data_dir is not None:
                plain["workload"].setdefault("options", {})["data_dir"] = str(data_dir)
            plain["out_dir"] = None
            out[run.label] = plain
    GlobalHydra.instance().clear()
    return out


def config_digest(cfg: dict) -> str:
    from jaxasync.checkpoint import config_hash
    from jaxasync.config import to_config

    return config_hash(to_config(cfg))


# ============================================================================ result files


def read_json(path: Path) -> dict | None:
    """A result file, or its xz-compressed form (``run.json.xz``: large results are stored
    compressed, :func:`jaxasync.report.compact_result`); None where it cannot be read."""
    from jaxasync.report import read_record

    return read_record(path)


@dataclasses.dataclass
class EntryState:
    """What the result files say about an entry."""

    entry: Entry
    records: dict[str, dict]
    status: str           # done | partial | skipped | failed | not run
    reason: str | None
    info: dict            # entry.json
    stale: list[str]      # run labels whose result is of another config or older code


def entry_state(entry: Entry, results: Path, configs: dict[str, dict] | None = None,
                config_error: str | None = None) -> EntryState:
    """Reads ``results/<entry>/``; with ``configs`` (label -> config), results of another
    config hash or of older code (:func:`stale_reason`) are set aside as stale."""
    edir = Path(results) / entry.id
    info = read_json(edir / ENTRY_STATUS) or {}
    records, stale, whys = {}, [], []
    for run in entry.runs:
        rec = read_json(edir / run.slug / "run.json")
        if rec is None:
            continue
        if configs is not None and run.label in configs:
            why = stale_reason(rec, _with_data_dir(configs[run.label], rec))
            if why:
                stale.append(run.label)
                whys.append(f"{run.label} ({why})")
                continue
        records[run.label] = rec
    complete = len(records) == len(entry.runs)
    reason = None
    if complete:
        status = "done"
    elif info.get("status") in ("skipped", "failed"):  # the last attempt: the freshest news
        status, reason = info["status"], info.get("reason")
    elif stale:
        status = "stale"
        reason = (f"result of {', '.join(whys)} is stale; rerun "
                  f"`jaxasync-leaderboard {entry.id}`")
    elif config_error:
        status, reason = "skipped", config_error
    else:
        status = "partial" if records else "not run"
    return EntryState(entry, records, status, reason, info, stale)


def stale_reason(record: dict, cfg: dict) -> str | None:
    """Why a stored result no longer stands for ``cfg`` (None: it does): another config
    (its config hash), or older code (:data:`CODE_KEYS` of its ``code``, see
    :func:`jaxasync.checkpoint.code_identity`). The one rule for rendering and rerunning."""
    from jaxasync.checkpoint import code_changes, code_identity

    if record.get("config_hash") != config_digest(cfg):
        return "another config"
    changed = code_changes(record.get("code"), code_identity(cfg["algorithm"]["name"]),
                           keys=CODE_KEYS)
    return f"older code: {'; '.join(changed)}" if changed else None


def _with_data_dir(cfg: dict, record: dict) -> dict:
    """``cfg`` with the data directory the record was run with (not a config change)."""
    used = (record.get("config") or {}).get("workload", {}).get("options", {}).get("data_dir")
    if used is None or "data_dir" not in cfg["workload"].get("options", {}):
        return cfg
    return {**cfg, "workload": {**cfg["workload"],
                                "options": {**cfg["workload"]["options"], "data_dir": used}}}
