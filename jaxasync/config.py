"""Structured config: the Hydra schemas, and their conversion to plain numbers.

Config stops here (DESIGN.md, item 8): everything below takes plain numbers. The same
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

from jaxasync.delays import DelayConfig


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

    epochs: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    factor: float = 0.1


@dataclasses.dataclass
class CompressorConf:
    """``algorithm.compressor``: a compressor in front of an algorithm that sends gradients as
    they are (``none``: no compression). ``name`` is one of :data:`jaxasync.compress.COMPRESSORS`
    (``top_k``, ``random_k``, ``qsgd``, ``sign``, ``identity``), ``params`` its arguments
    (``density``, ``levels``...), ``error_feedback`` a residual per worker (v = e + g, send
    C(v), e = v - C(v))."""

    name: str = "none"
    error_feedback: bool = False
    params: dict[str, Any] = field(default_factory=dict)


@dataclasses.dataclass
class AlgorithmConf:
    """``algorithm/``: a registered algorithm and its numeric parameters."""

    name: str = MISSING
    arrivals: Any = None          # K per server step; None: the algorithm's default
    params: dict[str, Any] = field(default_factory=dict)
    lr_decay: LrDecayConf = field(default_factory=LrDecayConf)
    compressor: CompressorConf = field(default_factory=CompressorConf)


@dataclasses.dataclass
class WorkloadConf:
    """``workload/``: dataset + model + loss + target, and how data is split."""

    name: str = MISSING
    batch_size: int = 32
    full_batch: bool = False      # each worker's batch = its whole shard (full local gradients)
    sampling: str = "replacement"  # replacement | epochs (a fresh shuffle of the shard per epoch)
    partition: str = "iid"        # iid | dirichlet | shards | shared (every worker: all examples)
    dirichlet_alpha: float = 0.5
    shards_per_worker: int = 2
    init: str = "flax"            # flax (LeCun normal, zero bias) | torch (U(+-1/sqrt(fan_in)))
    options: dict[str, Any] = field(default_factory=dict)


def _as_list_type(t: Any) -> Any:
    """``tuple[X, ...]`` -> ``list[X]`` (also inside ``| None``): OmegaConf has lists."""
    if typing.get_origin(t) is tuple:
        return list[typing.get_args(t)[0]]
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        return typing.Optional[_as_list_type(next(a for a in typing.get_args(t)  # noqa: UP045
                                                   if a is not type(None)))]
    return t


def _schema_of(cls: type, name: str, replace: dict[str, tuple[str, Any, Any]], doc: str) -> type:
    """A Hydra schema (a dataclass OmegaConf takes) with ``cls``'s fields, types and defaults,
    so the two cannot drift apart; ``replace`` maps a field to ``(name, type, default)``."""
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        key, typ, default = replace.get(f.name, (f.name, _as_list_type(hints[f.name]),
                                                 f.default))
        fields.append((key, typ, field(default=default)))
    schema = dataclasses.make_dataclass(name, fields)
    schema.__doc__ = doc
    schema.__module__ = __name__
    return schema


#: ``delay/``: :class:`jaxasync.delays.DelayConfig`'s fields, except that a delay trace is
#: named by its file (``trace_file``), read and checked when the run is prepared
DelayConf = _schema_of(
    DelayConfig, "DelayConf", {"trace": ("trace_file", typing.Optional[str], None)},  # noqa: UP045
    "``delay/``: the fields of :class:`jaxasync.delays.DelayConfig` (``trace`` given as "
    "``trace_file``).")


@dataclasses.dataclass
class NetworkConf:
    """``network/``: every worker's link."""

    bandwidth: float = math.inf   # bits per second
    latency: float = 0.0          # seconds per message


@dataclasses.dataclass
class RunConf:
    """How long, how many workers, which seeds."""

    num_workers: int = 16
    gradients: int = 16000        # budget in worker gradients (steps = gradients / arrivals)
    steps: int | None = None      # server steps; overrides `gradients`
    evals: int = 20               # evaluation points (when eval_every is None)
    eval_every: int | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    ring_size: int | None = None  # D; None: enough for the delay model (event: 8 M)
    eval_train_size: int = 4096
    eval_grad_norm: bool = False  # report train_grad_norm = ||grad F(x)|| over the whole train set
    mesh_workers: int = 1         # devices along the worker axis; must divide num_workers
    members: str = "auto"         # auto | vmap | map: members batched or one after another
    # several processes (hosts), see jaxasync.mesh: the coordinator (process 0's host:port), the
    # number of processes and this one's id; or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
    # JAX_PROCESS_ID; or distributed=true under a Slurm (srun) or Open MPI (mpirun) launch
    distributed: bool = False
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    checkpoint_every: int = 0     # save the state to <out_dir>/checkpoint every N chunks; 0: off
    resume: bool = True           # reuse a finished run.json, resume a checkpoint of this config


@dataclasses.dataclass
class Config:
    algorithm: AlgorithmConf = field(default_factory=AlgorithmConf)
    workload: WorkloadConf = field(default_factory=WorkloadConf)
    delay: DelayConf = field(default_factory=DelayConf)
    network: NetworkConf = field(default_factory=NetworkConf)
    run: RunConf = field(default_factory=RunConf)
    out_dir: str | None = None
    plot: bool = True
    traceback: bool = False      # show the full traceback of a config error


def register_configs() -> None:
    """Registers the schemas in Hydra's ConfigStore (a typo becomes an error)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="algorithm", name="schema", node=AlgorithmConf)
    cs.store(group="workload", name="schema", node=WorkloadConf)
    cs.store(group="delay", name="schema", node=DelayConf)
    cs.store(group="network", name="schema", node=NetworkConf)


# ----------------------------------------------------------------------------- resolving


def to_config(cfg: Any) -> Config:
    """An OmegaConf node or a plain dict -> :class:`Config` (unknown keys are errors)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(cfg, Config):
        return cfg
    base = OmegaConf.structured(Config)
    try:
        merged = OmegaConf.merge(base, OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise config_error(e) from None


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
    m = re.search(r"could not be converted to (\w+)", first)
    if m:
        first = f"must be {_TYPE_WORDS.get(m.group(1), m.group(1))}"
    elif "is not a ListConfig" in first:
        first = "must be a list"
    elif "is not a valid bool" in first:
        first = "must be true or false"
    shown = f"={value!r}" if value is not None else ""
    return ConfigError(f"{key}{shown}: {first}")
