"""Per-worker partitioning of a training set: IID, Dirichlet label skew, label shards, or the
whole set shared by every worker (:func:`partition`)."""

from __future__ import annotations

import numpy as np

PARTITION_SCHEMES = ("iid", "dirichlet", "shards", "shared")
_DIRICHLET_TRIES = 100


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r}: must be an integer >= 1")
    return int(value)


def _pad(shards: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stacks index lists into [M, n_max], repeating each worker's own indices as padding.

    Cyclic repetition keeps every entry a valid index of that worker, so a gather never reads out
    of range or another worker's data.
    """
    sizes = np.array([len(s) for s in shards], np.int32)
    n_max = int(sizes.max())
    index = np.stack([np.resize(s, n_max) for s in shards]).astype(np.int32)
    return index, sizes


def _iid(n: int, num_workers: int, rng: np.random.Generator) -> list[np.ndarray]:
    # Equal random split, the remainder dropped, like the SASG authors' per-worker split.
    per = n // num_workers
    perm = rng.permutation(n)[: per * num_workers]
    return list(perm.reshape(num_workers, per))


def _dirichlet(
    labels: np.ndarray, num_workers: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray] | None:
    """Per class k, proportions p_k ~ Dir(alpha * 1_M) split class k's examples among workers.

    The label-skew scheme of Yurochkin et al. (2019, arXiv 1905.12022) and Hsu et al. (2019,
    arXiv 1909.06335); small alpha concentrates each class on few workers. Returns None if some
    worker got nothing.
    """
    shards: list[list[np.ndarray]] = [[] for _ in range(num_workers)]
    for k in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == k))
        p = rng.dirichlet(np.full(num_workers, alpha))
        cuts = np.round(np.cumsum(p)[:-1] * len(members)).astype(np.int64)
        for m, part in enumerate(np.split(members, cuts)):
            shards[m].append(part)
    out = [np.sort(np.concatenate(s)) for s in shards]
    return out if min(len(s) for s in out) > 0 else None


def _dirichlet_split(
    labels: np.ndarray, num_workers: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """:func:`_dirichlet`, drawn again (up to ``_DIRICHLET_TRIES`` times) until every worker
    has at least one example."""
    if not (np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha={alpha!r}: must be a finite number > 0")
    for _ in range(_DIRICHLET_TRIES):
        shards = _dirichlet(labels, num_workers, float(alpha), rng)
        if shards is not None:
            return shards
    raise ValueError(
        f"num_workers={num_workers}: a Dirichlet(alpha={alpha}) split left some worker without "
        f"examples in {_DIRICHLET_TRIES} draws; use fewer workers or a larger alpha"
    )


def _label_shards(
    labels: np.ndarray, num_workers: int, shards_per_worker: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Sort by label, cut into M * shards_per_worker equal shards, deal them out at random.

    The pathological non-IID split of McMahan et al. (2017, arXiv 1602.05629, Sec. 3); ties are
    broken at random so a shard is a random subset of its classes. The remainder is dropped.
    """
    _check_positive_int("shards_per_worker", shards_per_worker)
    if len(labels) < num_workers * shards_per_worker:
        raise ValueError(
            f"num_workers={num_workers}: {num_workers} x {shards_per_worker} shards need at least "
            f"that many examples, have {len(labels)}"
        )
    shards_per_worker = int(shards_per_worker)
    num_shards = num_workers * shards_per_worker
    size = len(labels) // num_shards
    order = rng.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")][: size * num_shards]
    pieces = order.reshape(num_shards, size)
    deal = rng.permutation(num_shards).reshape(num_workers, shards_per_worker)
    return [np.sort(pieces[d].reshape(-1)) for d in deal]


def partition(
    labels: np.ndarray,
    num_workers: int,
    scheme: str = "iid",
    *,
    alpha: float = 0.5,
    shards_per_worker: int = 2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Splits a training set among workers.

    Args:
        labels: [n] training labels (only their count matters for ``"iid"``; the other schemes need
            integer class labels).
        num_workers: M >= 1.
        scheme: ``"iid"`` (random equal split, remainder dropped), ``"dirichlet"`` (label skew,
            per-class proportions ~ Dir(alpha)), ``"shards"`` (sort by label, deal
            ``shards_per_worker`` contiguous shards to each worker), or ``"shared"`` (no split:
            every worker samples from all n examples, as the workers of Mishchenko et al.,
            NeurIPS 2022, do in github.com/konstmish/asynchronous_sgd).
        alpha: Dirichlet concentration, > 0; small is skewed, large is near IID.
        shards_per_worker: shards per worker for ``"shards"``, >= 1.
        seed: NumPy seed; the split is a deterministic function of the arguments.

    Returns:
        ``(index, sizes)``: int32 [M, n_max] per-worker indices into the training set, padded to
        a common length by repeating the worker's own indices, and int32 [M] true shard sizes.
        A worker samples its minibatch as ``index[m, randint(0, sizes[m])]``. For ``"shared"``
        the index is one row, int32 [1, n], that every worker reads (:func:`worker_rows`).

    Raises:
        ValueError: bad arguments, or a split that leaves some worker without data. For
            ``"dirichlet"`` the draw is repeated (up to 100 times, deterministically) until
            every worker has at least one example, as common implementations do.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels: must be 1-D, got shape {labels.shape}")
    n = labels.shape[0]
    _check_positive_int("num_workers", num_workers)
    if scheme not in PARTITION_SCHEMES:
        raise ValueError(
            f"scheme {scheme!r}: unknown; choose one of: {', '.join(PARTITION_SCHEMES)}"
        )
    rng = np.random.default_rng(seed)

    if scheme == "shared":
        if n < 1:
            raise ValueError("labels: the training set is empty")
        # one row that every worker reads (not M copies: at M = 10,000 workers of a 2^18-draw
        # pool the copies took 10 GB)
        return np.arange(n, dtype=np.int32)[None], np.full(num_workers, n, np.int32)

    if scheme == "iid":
        if n < num_workers:
            raise ValueError(
                f"num_workers={num_workers}: more workers than the {n} training examples"
            )
        return _pad(_iid(n, num_workers, rng))

    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"scheme {scheme!r}: needs integer class labels, got dtype {labels.dtype}")
    if scheme == "dirichlet":
        return _pad(_dirichlet_split(labels, num_workers, alpha, rng))
    return _pad(_label_shards(labels, num_workers, shards_per_worker, rng))


def worker_rows(index, ids):
    """The index rows of workers ``ids``: ``index[ids]``, or the one shared row repeated where
    the index has a single row for every worker (``"shared"``)."""
    if index.shape[0] == 1:
        return index[ids * 0]
    return index[ids]
