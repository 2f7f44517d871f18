"""jaxasync: a JAX benchmark suite for communication-efficient asynchronous SGD.

Import the optax transforms of the algorithms directly::

    import jaxasync as ja
    tx = ja.delay_adaptive(learning_rate=0.1, num_workers=16)
"""

from jaxasync import compress, hparams, rules, transforms
from jaxasync.algorithms import (
    ALGORITHMS,
    AlgorithmSpec,
    asgd,
    delay_adaptive,
    get_algorithm,
    register,
    staleness_aware,
    sync_sgd,
)
from jaxasync.baselines import asgd_drop, dc_asgd, dc_asgd_adaptive, koloskova, picky
from jaxasync.ce import ce_asgd, ce_asgd_lite, server_work
from jaxasync.compress import COMPRESSORS, register_compressor
from jaxasync.federated import fedasync, fedbuff
from jaxasync.lazy import LazyState, lazy_counters, lazy_state, lazy_upload
from jaxasync.lazy_algorithms import lag, lag_ps, lag_wk, lasg, sasg, sgd_sum, sparse
from jaxasync.markov import ef21, ef21_step_size
from jaxasync.optimal import (
    naive_optimal_asgd,
    optimal_time,
    rennala,
    ringmaster,
    ringmaster_stop,
)
from jaxasync.rounds import malenia, mindflayer
from jaxasync.transforms import (
    Control,
    WorkerRows,
    accept_if,
    aggregate,
    communication,
    compress_rows,
    control,
    keep_decisions,
    last_decisions,
    scale_by_staleness,
    total_bits,
    worker_control,
)


def _version() -> str:
    """The installed distribution's version: pyproject.toml is its one source. A source tree
    run without installing reads it from there."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jaxasync")
    except PackageNotFoundError:
        import re
        from pathlib import Path

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        found = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.M) \
            if pyproject.is_file() else None
        return found.group(1) if found else "unknown"


__version__ = _version()

__all__ = [
    "ALGORITHMS", "AlgorithmSpec", "COMPRESSORS", "WorkerRows", "accept_if", "aggregate", "asgd",
    "communication", "compress", "compress_rows", "delay_adaptive", "get_algorithm", "hparams",
    "keep_decisions", "last_decisions", "register", "register_compressor", "rules",
    "scale_by_staleness", "staleness_aware", "sync_sgd", "total_bits", "transforms",
    "ce_asgd", "ce_asgd_lite", "server_work",
    "dc_asgd", "dc_asgd_adaptive", "fedbuff", "koloskova", "picky", "asgd_drop",
    "Control", "control", "worker_control", "fedasync", "malenia", "mindflayer",
    "naive_optimal_asgd", "optimal_time", "rennala", "ringmaster", "ringmaster_stop",
    "ef21", "ef21_step_size",
    "LazyState", "lag", "lag_ps", "lag_wk", "lasg", "lazy_counters", "lazy_state", "lazy_upload",
    "sasg", "sgd_sum", "sparse",
]
