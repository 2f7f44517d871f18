"""Experiment trackers: the ``logger`` config group (``none``, ``tensorboard``, ``wandb``).

A tracker gets the resolved config as hyperparameters when the job starts, every member's
metrics at every evaluation (step = server step), and the final summary when it ends::

    jaxasync logger=tensorboard                 # <job dir>/tensorboard; tensorboard --logdir runs
    jaxasync logger=tensorboard logger.dir=tb   # tb/<job dir name>
    WANDB_MODE=offline jaxasync logger=wandb logger.project=mine

Each is an optional extra (``pip install "jaxasync[tensorboard]"``, ``"jaxasync[wandb]"``);
without it the job stops before compiling with a one-line error naming the extra. The
TensorBoard event files are written by ``tensorboardX``; W&B by ``wandb`` itself. A vmapped
run's members (seeds, swept values) are separate TensorBoard runs (subdirectories named like
``members/``), and prefixes of the metric names in W&B (``seed1/test_accuracy``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from jaxasync.config import ConfigError

#: logger name -> (module it needs, the extra that installs it)
NEEDS = {"tensorboard": ("tensorboardX", "tensorboard"), "wandb": ("wandb", "wandb")}
LOGGERS = ("none", *NEEDS)


def _scalars(row: dict) -> dict[str, float]:
    """The numeric metrics of an evaluation (not ``finite``, ``step``, or low-order parts)."""
    out = {}
    for k, v in row.items():
        if k in ("finite", "step") or k.endswith("_lo") or isinstance(v, bool):
            continue
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            continue
    return out


def hyperparameters(config: dict) -> dict[str, Any]:
    """The resolved config, flattened (``run.num_workers``...), as numbers, bools and text."""
    from jaxasync.tables import flatten

    out: dict[str, Any] = {}
    for k, v in flatten(config).items():
        finite = not isinstance(v, float) or math.isfinite(v)   # inf bandwidth: text
        out[k] = v if isinstance(v, bool | int | float | str) and finite else str(v)
    return out


def member_names(members: list[dict]) -> list[str]:
    """``seed0``, ``seed1_learning_rate=0.1``: the seed and the parameters that differ
    between the members."""
    varying = {k for m in members for k, v in m["params"].items()
               if len({x["params"].get(k) for x in members}) > 1}
    return ["_".join([f"seed{m['seed']}"] + [f"{k}={v:g}" for k, v in sorted(m["params"].items())
                                            if k in varying]) for m in members]


class Tracker:
    """Base: subclasses write ``start``/``log``/``finish`` to their backend."""

    def __init__(self, conf, run_name: str, out_dir: Path | None):
        self.conf, self.run_name, self.out_dir = conf, run_name, out_dir
        self.members: list[dict] = []

    def start(self, config: dict, members: list[dict]) -> None:
        self.members = members

    def log(self, rows: list[dict]) -> None:
        """Every member's metrics at one evaluation (the progress callback's ``last``)."""

    def finish(self, record: dict | None) -> None:
        """The final summary (``record`` None: the run failed) and closing."""


class TensorBoard(Tracker):
    def start(self, config: dict, members: list[dict]) -> None:
        import yaml
        from tensorboardX import SummaryWriter

        super().start(config, members)
        if self.conf.dir:
            root = Path(self.conf.dir).expanduser() / self.run_name
        elif self.out_dir is not None:
            root = Path(self.out_dir) / "tensorboard"
        else:
            raise ConfigError("logger.dir: required for logger=tensorboard without an out_dir")
        self.dirs = ([root] if len(members) == 1 else
                     [root / f"{i:03d}_{n}" for i, n in enumerate(member_names(members))])
        self.hparams = hyperparameters(config)
        self.writers = [SummaryWriter(logdir=str(d)) for d in self.dirs]
        text = "```\n" + yaml.safe_dump(config, sort_keys=False) + "```"
        for w in self.writers:
            w.add_text("config", text, 0)

    def log(self, rows: list[dict]) -> None:
        for w, row in zip(self.writers, rows, strict=True):
            step = int(row.get("step", 0))
            for k, v in _scalars(row).items():
                if math.isfinite(v):
                    w.add_scalar(k, v, step)
            w.flush()

    def finish(self, record: dict | None) -> None:
        for i, w in enumerate(getattr(self, "writers", [])):
            if record is not None:
                m = record["members"][i]
                final = {f"final/{k}": v for k, v in _scalars(m["final"]).items()
                         if math.isfinite(v)}
                hit = m.get("target_reached") or {}
                final.update({f"to_target/{k}": float(v) for k, v in hit.items()})
                params = {**self.hparams, "seed": m["seed"],
                          **{f"member.{k}": v for k, v in m["params"].items()}}
                w.add_hparams(params, final, name=".", global_step=int(m["final"]["step"]))
            w.close()


class WandB(Tracker):
    def start(self, config: dict, members: list[dict]) -> None:
        import wandb

        super().start(config, members)
        where = self.conf.dir or (str(self.out_dir) if self.out_dir is not None else None)
        if where:
            Path(where).mkdir(parents=True, exist_ok=True)
        self.prefixes = [""] if len(members) == 1 else [f"{n}/" for n in member_names(members)]
        self.run = wandb.init(project=self.conf.project, entity=self.conf.entity,
                              mode=self.conf.mode, tags=list(self.conf.tags) or None,
                              name=self.run_name, dir=where, config=hyperparameters(config))

    def log(self, rows: list[dict]) -> None:
        data: dict[str, float] = {}
        for prefix, row in zip(self.prefixes, rows, strict=True):
            data.update({prefix + k: v for k, v in _scalars(row).items()})
        self.run.log(data, step=int(rows[0].get("step", 0)))

    def finish(self, record: dict | None) -> None:
        run = getattr(self, "run", None)
        if run is None:
            return
        if record is not None:
            for prefix, m in zip(self.prefixes, record["members"], strict=True):
                run.summary.update({f"{prefix}final/{k}": v
                                    for k, v in _scalars(m["final"]).items()})
                hit = m.get("target_reached") or {}
                run.summary.update({f"{prefix}to_target/{k}": v for k, v in hit.items()})
                run.summary[f"{prefix}status"] = m["status"]
        run.finish(exit_code=0 if record is not None else 1)


def tracker_class(cfg) -> type[Tracker] | None:
    """The tracker class ``cfg.logger`` names (None for ``none``), its package imported now so
    that a missing extra stops the job before anything is written or compiled."""
    import importlib

    name = cfg.logger.name
    if name == "none":
        return None
    if name not in NEEDS:
        raise ConfigError(f"logger={name}: unknown; choose one of: {', '.join(LOGGERS)}")
    module, extra = NEEDS[name]
    try:
        importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"logger={name}: needs the {module} package; "
                          f"pip install \"jaxasync[{extra}]\"") from None
    return {"tensorboard": TensorBoard, "wandb": WandB}[name]


def open_tracker(cfg, out_dir: Path | None, run_name: str) -> Tracker | None:
    """The tracker ``cfg.logger`` names (None for ``none``); see :func:`tracker_class`."""
    cls = tracker_class(cfg)
    return None if cls is None else cls(cfg.logger, run_name, out_dir)
