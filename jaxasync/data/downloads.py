"""Dataset downloads: the official files' mirrors and published checksums, fetch and verify.

:func:`download` fetches a dataset's files (MNIST, Fashion-MNIST, CIFAR-10/100) with MD5
verification when the machine is online; :func:`check_original` rejects a file on disk that
claims to be an original but does not have its published checksum (:data:`ORIGINALS`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from typing import NamedTuple


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
