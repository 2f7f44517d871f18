"""Structured config: the Hydra schemas, and their conversion to plain numbers.

Config stops here: everything below it takes plain numbers. The same
:func:`validate` runs for the CLI and for the Python API, so both raise the same
:class:`ConfigError`, a one-line message naming the key, the bad value and what is
allowed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import field
from typing import Any

from omegaconf import MISSING

from jaxasync import hparams as hp
from jaxasync.data.partitioning import PARTITION_SCHEMES
from jaxasync.delays import DelayConfig
from jaxasync.report import SELECT

#: the largest count the simulator's int32 counters hold
INT32_MAX = 2**31 - 1


def _count(low: int, doc: str, **kw) -> hp.Param:
    """A count: an integer in [low, 2^31 - 1]."""
    return hp.Param("int", low=low, high=INT32_MAX, static=True, doc=doc, **kw)


def _text(doc: str, **kw) -> hp.Param:
    return hp.Param("str", static=True, doc=doc, **kw)


class ConfigError(ValueError):
    """A bad config value; the message names the key, the value and what is allowed."""


# ----------------------------------------------------------------------------- schemas


@dataclasses.dataclass
class LrDecayConf:
    """``algorithm.lr_decay``: step decay, the learning rate times ``factor`` at each boundary.

    Boundaries in ``epochs`` (passes over the training set: an epoch is
    n_train / (rows x batch) server steps, rows = M for synchronous algorithms, K arrivals
    otherwise) or in server ``steps``; empty lists: a constant learning rate.
    """

    epochs: list[float] = hp.field(hp.positive("boundaries in epochs, increasing", items=True),
                                   default_factory=list)
    steps: list[int] = hp.field(_count(1, "boundaries in server steps, increasing", items=True),
                                default_factory=list)
    factor: float = hp.field(hp.positive("the learning rate's factor at each boundary"), 0.1)


@dataclasses.dataclass
class CompressorConf:
    """``algorithm.compressor``: a compressor in front of an algorithm that sends gradients as
    they are (``none``: no compression; EF21 takes it as its own). ``name`` is one of
    :data:`jaxasync.compress.COMPRESSORS` (``top_k``, ``powersgd``, ``dgc``, ``qsgd``...),
    ``params`` its arguments (``density``, ``levels``, ``rank``...), ``error_feedback`` a
    residual per worker (v = e + g, send C(v), e = v - C(v))."""

    name: str = hp.field(_text("a compressor of jaxasync.compress.COMPRESSORS, or none"),
                         "none")
    error_feedback: bool = hp.field(hp.flag("a residual per worker"), False)
    params: dict[str, Any] = hp.field(hp.Param("any", doc="the compressor's arguments (its "
                                                          "own declarations)"),
                                      default_factory=dict)


#: the downlink rules (:data:`jaxasync.downlink.RULES` is this tuple; named here so that the
#: config needs no JAX)
DOWNLINK_RULES = ("doublesqueeze", "ef21_bc", "ef21_p")


@dataclasses.dataclass
class DownlinkConf:
    """``algorithm.downlink``: the server's broadcast compressed (``none``: the dense model).
    ``name`` is one of :data:`jaxasync.compress.COMPRESSORS`, ``params`` its arguments,
    ``rule`` the server's feedback: ``doublesqueeze`` (EF14 on the update), ``ef21_bc``
    (EF21 on the update) or ``ef21_p`` (EF21 on the model; the workers' view differs from
    the server's model). See :mod:`jaxasync.downlink`."""

    name: str = hp.field(_text("a compressor of jaxasync.compress.COMPRESSORS for the "
                               "server's broadcast, or none"), "none")
    rule: str = hp.field(hp.one_of(*DOWNLINK_RULES, doc="the server's feedback on what it "
                                   "broadcasts (jaxasync.downlink.RULES)"), "doublesqueeze")
    params: dict[str, Any] = hp.field(hp.Param("any", doc="the downlink compressor's "
                                                          "arguments (its own declarations)"),
                                      default_factory=dict)


@dataclasses.dataclass
class AlgorithmConf:
    """``algorithm/``: a registered algorithm and its numeric parameters."""

    name: str = hp.field(_text("a registered algorithm"), MISSING)
    arrivals: Any = hp.field(hp.Param("any", optional=True, doc="K per server step: an "
                                      "integer >= 1, 'all', or null (the algorithm's default)"),
                             None)
    params: dict[str, Any] = hp.field(hp.Param("any", doc="the algorithm's arguments (its own "
                                                          "declarations)"),
                                      default_factory=dict)
    lr_decay: LrDecayConf = field(default_factory=LrDecayConf)
    compressor: CompressorConf = field(default_factory=CompressorConf)
    downlink: DownlinkConf = field(default_factory=DownlinkConf)


@dataclasses.dataclass
class WorkloadConf:
    """``workload/``: dataset + model + loss + target, and how data is split."""

    name: str = hp.field(_text("a registered workload"), MISSING)
    batch_size: int = hp.field(_count(1, "examples per worker gradient"), 32)
    full_batch: bool = hp.field(hp.flag("each worker's batch is its whole shard (full local "
                                        "gradients)"), False)
    sampling: str = hp.field(hp.one_of("replacement", "epochs", doc="minibatches drawn with "
                                       "replacement, or a fresh shuffle of the shard per epoch"),
                             "replacement")
    partition: str = hp.field(hp.one_of(*PARTITION_SCHEMES, doc="how the data is split over "
                                        "the workers (shared: every worker has all of it)"),
                              "iid")
    dirichlet_alpha: float = hp.field(hp.positive("label skew of partition=dirichlet",
                                                  static=True), 0.5)
    shards_per_worker: int = hp.field(_count(1, "label shards per worker (partition=shards)"), 2)
    init: str = hp.field(_text("jaxasync.models.INITS: flax (LeCun normal, zero bias) | "
                               "torch (U(+-1/sqrt(fan_in)))"), "flax")
    options: dict[str, Any] = hp.field(hp.Param("any", doc="the workload factory's arguments "
                                                           "(its own declarations)"),
                                       default_factory=dict)


def _as_list_type(t: Any) -> Any:
    """``tuple[X, ...]`` -> ``list[X]`` (also inside ``| None``): OmegaConf has lists."""
    if typing.get_origin(t) is tuple:
        return list[typing.get_args(t)[0]]
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        return typing.Optional[_as_list_type(next(a for a in typing.get_args(t)  # noqa: UP045
                                                   if a is not type(None)))]
    return t


def _schema_of(cls: type, name: str, replace: dict[str, tuple[str, Any, Any, hp.Param]],
               doc: str) -> type:
    """A Hydra schema (a dataclass OmegaConf takes) with ``cls``'s fields, types, defaults and
    declarations, so the two cannot drift apart; ``replace`` maps a field to
    ``(name, type, default, declaration)``."""
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        key, typ, default, param = replace.get(
            f.name, (f.name, _as_list_type(hints[f.name]), f.default, hp.declaration_of(f)))
        fields.append((key, typ, field(default=default, metadata={"param": param})))
    schema = dataclasses.make_dataclass(name, fields)
    schema.__doc__ = doc
    schema.__module__ = __name__
    return schema


#: ``delay/``: :class:`jaxasync.delays.DelayConfig`'s fields, except that a delay trace is
#: named by its file (``trace_file``), read and checked when the run is prepared
DelayConf = _schema_of(
    DelayConfig, "DelayConf",
    {"trace": ("trace_file", typing.Optional[str], None,  # noqa: UP045
               _text("a file of delays (kind=trace), read when the run is prepared",
                     optional=True))},
    "``delay/``: the fields of :class:`jaxasync.delays.DelayConfig` (``trace`` given as "
    "``trace_file``).")


@dataclasses.dataclass
class NetworkConf:
    """``network/``: every worker's link."""

    bandwidth: float = hp.field(hp.Param("float", low=0.0, low_open=True, finite=False,
                                         static=True, doc="bits per second (inf: free)"),
                                math.inf)
    latency: float = hp.field(hp.non_negative("seconds per message", static=True), 0.0)


@dataclasses.dataclass
class RunConf:
    """``run.*``: how long, how many workers, which seeds (each key's help is ``--help``'s)."""

    num_workers: int = hp.field(_count(1, "M, the workers"), 16)
    gradients: int = hp.field(_count(1, "budget in worker gradients (steps = gradients / "
                                        "rows per step)"), 16000)
    steps: int | None = hp.field(_count(1, "server steps; overrides gradients",
                                        optional=True), None)
    evals: int = hp.field(_count(1, "evaluation points (when eval_every is null)"), 20)
    eval_every: int | None = hp.field(_count(1, "server steps between evaluations",
                                             optional=True), None)
    seeds: list[int] = hp.field(_count(0, "one member per seed (distinct)", items=True),
                                default_factory=lambda: [0])
    ring_size: int | None = hp.field(_count(1, "D, versions kept; null: enough for the delay "
                                               "model (event: 8 M)", optional=True), None)
    eval_train_size: int = hp.field(_count(1, "training examples the train loss is "
                                              "evaluated on"), 4096)
    eval_grad_norm: bool = hp.field(hp.flag("report ||grad F(x)|| over the whole train set"),
                                    False)
    mesh_workers: int = hp.field(_count(1, "devices along the worker axis; divides "
                                           "num_workers"), 1)
    members: str = hp.field(hp.one_of("auto", "vmap", "map",
                                      doc="members (seeds x swept values) batched with vmap "
                                          "or run one after another with lax.map; auto: map "
                                          "for synchronous algorithms on the CPU"), "auto")
    distributed: bool = hp.field(hp.flag("several processes (hosts): jax.distributed."
                                         "initialize(), from run.coordinator/num_processes/"
                                         "process_id, JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/"
                                         "JAX_PROCESS_ID, or a Slurm (srun) or Open MPI "
                                         "(mpirun) launch"), False)
    coordinator: str | None = hp.field(_text("several processes: process 0's host:port (sets "
                                             "run.distributed)", optional=True), None)
    num_processes: int | None = hp.field(_count(1, "several processes: how many",
                                                optional=True), None)
    process_id: int | None = hp.field(_count(0, "several processes: this one's id, in "
                                                "[0, num_processes)", optional=True), None)
    checkpoint_every: int = hp.field(_count(0, "save the state to <out_dir>/checkpoint every "
                                               "N chunks; 0: off"), 0)
    resume: bool = hp.field(hp.flag("reuse a finished run.json, resume a checkpoint of this "
                                    "config"), True)
    select: str = hp.field(hp.Param("str", choices=SELECT, static=True,
                                    doc="per run, report the grid value (learning rate, S...) "
                                        "reaching the target first in this quantity, or "
                                        "lowest at the end; none: every value (the whole "
                                        "grid is kept in the files)"), "none")
    quiet: bool = hp.field(hp.flag("no progress lines and no bar (tables still print)"), False)
    compile_cache: bool = hp.field(hp.flag("JAX's persistent compilation cache (a rerun loads, "
                                           "not compiles)"), True)
    compile_cache_dir: str | None = hp.field(_text("the cache directory; null: "
                                                   "$JAXASYNC_COMPILE_CACHE_DIR or the user "
                                                   "cache", optional=True), None)


@dataclasses.dataclass
class TargetConf:
    """``target``: what "reached" means, in place of the workload's target (AlgoPerf style):
    the first evaluation with ``metric`` >= ``value`` (mode ``max``) or <= (``min``)."""

    metric: str = hp.field(_text("a metric of jaxasync.report.TARGET_METRICS"), MISSING)
    value: float = hp.field(hp.Param("float", static=True, doc="the threshold"), MISSING)
    mode: str = hp.field(hp.one_of("min", "max", doc="reached at <= value (min) or >= (max)"),
                         "min")


@dataclasses.dataclass
class LoggerConf:
    """``logger/``: where metrics go besides run.json: ``none``, ``tensorboard`` or ``wandb``
    (see :mod:`jaxasync.trackers`)."""

    name: str = hp.field(hp.one_of("none", "tensorboard", "wandb", doc="the tracker"), "none")
    dir: str | None = hp.field(_text("tensorboard: the log directory (null: <job "
                                     "dir>/tensorboard)", optional=True), None)
    project: str = hp.field(_text("wandb: the project"), "jaxasync")
    entity: str | None = hp.field(_text("wandb: the entity", optional=True), None)
    mode: str | None = hp.field(hp.Param("str", choices=("online", "offline", "disabled"),
                                          optional=True, static=True,
                                          doc="wandb's mode (null: $WANDB_MODE)"), None)
    tags: list[str] = hp.field(_text("wandb: tags", items=True), default_factory=list)


@dataclasses.dataclass
class Config:
    """The whole config (``config.yaml`` composes its groups onto it)."""

    algorithm: AlgorithmConf = field(default_factory=AlgorithmConf)
    workload: WorkloadConf = field(default_factory=WorkloadConf)
    delay: DelayConf = field(default_factory=DelayConf)
    network: NetworkConf = field(default_factory=NetworkConf)
    run: RunConf = field(default_factory=RunConf)
    logger: LoggerConf = field(default_factory=LoggerConf)
    target: TargetConf | None = hp.field(hp.Param("any", optional=True, doc="what \"reached\" "
                                                  "means (null: the workload's target)"), None)
    imports: list[str] = hp.field(_text("modules to import first, e.g. your own algorithms: "
                                        "imports=[my_algos]", items=True), default_factory=list)
    out_dir: str | None = hp.field(_text("where the run writes (the CLI: Hydra's run "
                                         "directory)", optional=True), None)
    plot: bool = hp.field(hp.flag("write metrics.png"), True)
    traceback: bool = hp.field(hp.flag("show the full traceback of a config error"), False)


def register_configs() -> None:
    """Registers the schemas in Hydra's ConfigStore (a typo becomes an error)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="algorithm", name="schema", node=AlgorithmConf)
    cs.store(group="workload", name="schema", node=WorkloadConf)
    cs.store(group="delay", name="schema", node=DelayConf)
    cs.store(group="network", name="schema", node=NetworkConf)
    cs.store(group="logger", name="schema", node=LoggerConf)


# ----------------------------------------------------------------------------- resolving


def to_config(cfg: Any) -> Config:
    """A plain dict, an OmegaConf node or a :class:`Config` -> a checked :class:`Config`.

    Unknown keys, values of the wrong type and values their declaration refuses (see
    :func:`check_values`) are a one-line :class:`ConfigError`.
    """
    from collections.abc import Mapping

    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(cfg, Mapping | DictConfig | Config):
        shown = repr(cfg) if len(repr(cfg)) <= 60 else repr(cfg)[:57] + "..."
        raise ConfigError(f"config={shown}: must be a dict of config keys (or an OmegaConf "
                          f"DictConfig, or a jaxasync.config.Config), not "
                          f"{type(cfg).__name__}")
    if not isinstance(cfg, Config | DictConfig):
        _check_groups(cfg, Config, "")
    try:
        node = (OmegaConf.structured(cfg) if isinstance(cfg, Config) else
                OmegaConf.merge(OmegaConf.structured(Config),
                                cfg if isinstance(cfg, DictConfig) else
                                OmegaConf.create(_plain_numbers(dict(cfg)))))
        out = OmegaConf.to_object(node)
    except OmegaConfBaseException as e:
        raise config_error(e) from None
    check_values(out)
    return out


def _check_groups(given: Any, cls: type, prefix: str) -> None:
    """A key that is a group of keys in the schema (``run``, ``algorithm.params``...) must be
    given a mapping: one line naming it (OmegaConf's merge error names none)."""
    from collections.abc import Mapping

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in given:
            continue
        value, typ, key = given[f.name], hints[f.name], prefix + f.name
        group = dataclasses.is_dataclass(typ) or typing.get_origin(typ) is dict
        if group and not isinstance(value, Mapping):
            raise ConfigError(f"{key}={value!r}: must be a mapping (a group of keys), not "
                              f"{type(value).__name__}")
        if dataclasses.is_dataclass(typ):
            _check_groups(value, typ, key + ".")


def _plain_numbers(obj: Any) -> Any:
    """NumPy scalars (``np.float32(0.1)`` as a learning rate) as Python numbers, which
    OmegaConf takes; everything else as it is."""
    from collections.abc import Mapping

    import numpy as np

    if isinstance(obj, Mapping):
        return {k: _plain_numbers(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain_numbers(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _schema_node(parts: list[str]):
    """The schema node at ``parts`` (an OmegaConf node), or None past a leaf."""
    from omegaconf import DictConfig, OmegaConf

    node = OmegaConf.structured(Config)
    for part in parts:
        if not isinstance(node, DictConfig) or part not in node:
            return None
        node = node._get_node(part)
    return node


def unknown_key(full_key: str) -> ConfigError:
    """The error for a key the schema does not have, with the closest allowed key."""
    import difflib

    from omegaconf import DictConfig, OmegaConf

    parts = full_key.split(".")
    parent = _schema_node(parts[:-1])
    prefix = ".".join(parts[:-1])
    if isinstance(parent, DictConfig):
        if not dataclasses.is_dataclass(OmegaConf.get_type(parent)):
            # a free-form dict (algorithm.params, workload.options): Hydra wants a '+'
            return ConfigError(f"{full_key}: not in the config; add a key to {prefix} with "
                               f"+{full_key}=VALUE")
        keys = [str(k) for k in parent.keys()]
        close = difflib.get_close_matches(parts[-1], keys, n=1)
        hint = f" (did you mean {'.'.join([*parts[:-1], close[0]])}?)" if close else ""
        where = prefix or "the top level"
        return ConfigError(f"{full_key}: unknown key{hint}; {where} has: {', '.join(keys)}")
    return ConfigError(f"{full_key}: unknown key; {prefix} is not a group of keys")


def declaration(full_key: str) -> hp.Param | None:
    """The declaration of a config key (``"run.steps"``), or None (a free-form key such as
    ``algorithm.params.*``, whose declarations are the algorithm's)."""
    cls: Any = Config
    parts = full_key.split(".")
    for i, part in enumerate(parts):
        f = next((f for f in dataclasses.fields(cls) if f.name == part), None)
        if f is None:
            return None
        if i == len(parts) - 1:
            return hp.declaration_of(f)
        cls = typing.get_type_hints(cls).get(part)
        if not dataclasses.is_dataclass(cls):
            return None
    return None


def check_values(cfg: Config) -> None:
    """Checks every declared key of ``cfg`` against its declaration (the schemas' metadata:
    finite, sign, integer, range, type; a bool or null is not a number).

    Raises:
      ConfigError: ``"<key>=<value>: must be ..."`` for the first value refused.
    """
    try:
        hp.check_fields(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None


_TYPE_WORDS = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false",
               "String": "a string"}


def config_error(e: Exception) -> ConfigError:
    """An OmegaConf error (multi-line) -> one-line :class:`ConfigError` naming the key."""
    import re

    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue

    key = getattr(e, "full_key", None) or ""
    first = (getattr(e, "msg", None) or str(e)).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, ConfigKeyError | ConfigAttributeError) and key:
        return unknown_key(key)
    if isinstance(e, MissingMandatoryValue) and key:
        return ConfigError(f"{key}: missing; it has no default, set it ({key}=...)")
    if not key:
        return ConfigError(f"config: {first}")
    value = getattr(e, "value", None)
    param = declaration(key)
    m = re.search(r"could not be converted to (\w+)", first)
    refused = ("is not Optional", "is not a valid bool", "Incompatible value")
    if (m or any(r in first for r in refused)) and param:
        first = f"must be {param.allowed()}"
        if value is None:
            return ConfigError(f"{key}=None: {first}")
    elif m:
        first = f"must be {_TYPE_WORDS.get(m.group(1), m.group(1))}"
    elif "is not a ListConfig" in first:
        first = "must be a list"
    elif "is not a valid bool" in first:
        first = "must be true or false"
    shown = f"={value!r}" if value is not None else ""
    return ConfigError(f"{key}{shown}: {first}")
