"""jaxasync: a JAX benchmark suite for communication-efficient asynchronous SGD.

Import the optax transforms of the algorithms directly::

    import jaxasync as ja
    tx = ja.delay_adaptive(learning_rate=0.1, num_workers=16)
"""

from jaxasync import rules, transforms
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
from jaxasync.transforms import (
    WorkerRows,
    accept_if,
    aggregate,
    communication,
    compress,
    last_decisions,
    scale_by_staleness,
)

__version__ = "0.1.0"

__all__ = [
    "ALGORITHMS", "AlgorithmSpec", "WorkerRows", "accept_if", "aggregate", "asgd",
    "communication", "compress", "delay_adaptive", "get_algorithm", "last_decisions", "register",
    "rules", "scale_by_staleness", "staleness_aware", "sync_sgd", "transforms",
]
