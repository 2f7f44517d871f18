"""Tests for jaxasync.data: offline sources, file formats, downloads, partitioning, synthetics."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import random
import tarfile
import urllib.error

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxasync import data
from jaxasync.data import downloads, partitioning  # private names (_urlopen, _Resource) live there

# ---------------------------------------------------------------------------------------------
# Offline sources.
# ---------------------------------------------------------------------------------------------


def test_mnist1d_shapes_offline_and_no_side_effects(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.random.seed(123)
    random.seed(123)
    before_np, before_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    ds = data.load_mnist1d()
    # mnist1d reseeds the global RNGs; the loader must put them back.
    assert np.random.rand() == before_np and random.random() == before_py
    assert os.listdir(tmp_path) == []  # nothing written into the working directory
    assert ds.x_train.shape == (4000, 40) and ds.x_test.shape == (1000, 40)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert set(np.unique(ds.y_train)) == set(range(10))
    # Deterministic: the canonical seed-42 dataset starts with these labels every time.
    np.testing.assert_array_equal(ds.y_train[:3], data.load_mnist1d().y_train[:3])


def test_digits():
    ds = data.load_digits_data(test_fraction=0.25, seed=0)
    assert ds.x_train.shape[1] == 64 and len(ds.x_train) + len(ds.x_test) == 1797
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() <= 1.0
    assert ds.y_test.dtype == np.int32
    # Stratified: every class in the test set in proportion.
    counts = np.bincount(ds.y_test, minlength=10)
    assert counts.min() >= 40
    with pytest.raises(ValueError, match="test_fraction"):
        data.load_digits_data(test_fraction=1.5)


def test_mnist_subset_split_and_normalisation():
    ds = data.load_mnist_subset()
    assert ds.x_train.shape == (4000, 784) and ds.x_test.shape == (1000, 784)
    np.testing.assert_array_equal(np.bincount(ds.y_test), np.full(10, 100))
    np.testing.assert_array_equal(np.bincount(ds.y_train), np.full(10, 400))
    pixels = ds.x_train * data.MNIST_STD + data.MNIST_MEAN  # back to [0, 1]
    assert pixels.min() > -1e-5 and pixels.max() < 1 + 1e-5
    with pytest.raises(ValueError, match="test_size"):
        data.load_mnist_subset(test_size=5000)


# ---------------------------------------------------------------------------------------------
# IDX files.
# ---------------------------------------------------------------------------------------------


def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write(path, payload: bytes, gz: bool) -> str:
    path = str(path) + (".gz" if gz else "")
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(payload)
    return path


def _write_mnist(directory, n_train=6, n_test=4, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        _write(directory / f"{split}-images-idx3-ubyte", _idx_bytes(images, 2051), gz)
        _write(directory / f"{split}-labels-idx1-ubyte", _idx_bytes(labels, 2049), gz)
        out[split] = (images, labels)
    return out


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, gz):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = _write(tmp_path / "x-idx3-ubyte", _idx_bytes(images, 2051), gz)
    np.testing.assert_array_equal(data.read_idx(path, 2051), images)


def test_read_idx_errors_name_the_file(tmp_path):
    images = np.zeros((3, 2, 2), np.uint8)
    good = _idx_bytes(images, 2051)
    bad_magic = _write(tmp_path / "magic", _idx_bytes(images, 2049), False)
    with pytest.raises(ValueError, match=r"magic.*magic number 2049, expected 2051"):
        data.read_idx(bad_magic, 2051)
    truncated = _write(tmp_path / "short", good[:-3], False)
    with pytest.raises(ValueError, match=r"short: IDX file truncated"):
        data.read_idx(truncated, 2051)
    trailing = _write(tmp_path / "long", good + b"\0", False)
    with pytest.raises(ValueError, match=r"long: IDX file has trailing bytes"):
        data.read_idx(trailing, 2051)
    tiny = _write(tmp_path / "tiny", b"\0\0", False)
    with pytest.raises(ValueError, match="tiny: truncated"):
        data.read_idx(tiny, 2051)
    no_dims = _write(tmp_path / "nodims", good[:6], False)
    with pytest.raises(ValueError, match="nodims: truncated IDX header"):
        data.read_idx(no_dims, 2051)
    cut_gz = tmp_path / "cut.gz"
    cut_gz.write_bytes(gzip.compress(good)[:-10])
    with pytest.raises(ValueError, match="cut.gz"):
        data.read_idx(str(cut_gz), 2051)
    not_gz = tmp_path / "plain.gz"
    not_gz.write_bytes(good)
    with pytest.raises(ValueError, match="plain.gz: not a valid gzip"):
        data.read_idx(str(not_gz), 2051)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("layout", ["kind", "flat", "torchvision"])
def test_load_mnist_idx(tmp_path, gz, layout):
    sub = {"kind": "mnist", "flat": "", "torchvision": "MNIST/raw"}[layout]
    written = _write_mnist(tmp_path / sub, gz=gz)
    ds = data.load_mnist_idx(str(tmp_path), "mnist")
    assert ds.x_train.shape == (6, 784) and ds.x_test.shape == (4, 784)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    images, labels = written["train"]
    expected = (images.reshape(6, -1) / 255.0 - data.MNIST_MEAN) / data.MNIST_STD
    np.testing.assert_allclose(ds.x_train, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(ds.y_train, labels)


def test_load_fashion_mnist_normalisation(tmp_path):
    written = _write_mnist(tmp_path / "fashion_mnist")
    ds = data.load_mnist_idx(str(tmp_path), "fashion_mnist")
    images = written["t10k"][0].reshape(4, -1) / 255.0
    expected = (images - data.FASHION_MNIST_MEAN) / data.FASHION_MNIST_STD
    np.testing.assert_allclose(ds.x_test, expected, rtol=1e-6, atol=1e-6)


def test_load_mnist_idx_errors(tmp_path):
    with pytest.raises(ValueError, match="kind 'kmnist': unknown; choose one of: mnist"):
        data.load_mnist_idx(str(tmp_path), "kmnist")
    missing_dir = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.load_mnist_idx(str(missing_dir))
    d = tmp_path / "mnist"
    _write_mnist(d)
    os.remove(d / "t10k-labels-idx1-ubyte")
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte.*not found in.*mnist"):
        data.load_mnist_idx(str(tmp_path))
    # Mismatched counts: 6 train images, 5 labels.
    _write_mnist(d)
    labels = np.zeros(5, np.uint8)
    _write(d / "train-labels-idx1-ubyte", _idx_bytes(labels, 2049), False)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte holds 6 images.*5 labels"):
        data.load_mnist_idx(str(tmp_path))
    # Labels beyond 9.
    _write(d / "train-labels-idx1-ubyte", _idx_bytes(np.full(6, 12, np.uint8), 2049), False)
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte: label 12 outside 0..9"):
        data.load_mnist_idx(str(tmp_path))


# ---------------------------------------------------------------------------------------------
# CIFAR pickles.
# ---------------------------------------------------------------------------------------------


def _write_cifar_batch(path, n, num_classes, label_key, rng):
    images = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=n).tolist()
    with open(path, "wb") as f:
        # Protocol 2 and byte-string keys, like the official Python 2 pickles.
        pickle.dump({b"batch_label": b"test", b"data": images, label_key: labels}, f, protocol=2)
    return images, np.asarray(labels)


def _write_cifar(root, num_classes, n=4, seed=0):
    rng = np.random.default_rng(seed)
    if num_classes == 10:
        folder, test, key = "cifar-10-batches-py", "test_batch", b"labels"
        train = [f"data_batch_{i}" for i in range(1, 6)]
    else:
        folder, train, test, key = "cifar-100-python", ["train"], "test", b"fine_labels"
    d = root / folder
    d.mkdir(parents=True, exist_ok=True)
    written = [_write_cifar_batch(d / name, n, num_classes, key, rng) for name in train]
    test_written = _write_cifar_batch(d / test, n, num_classes, key, rng)
    return d, written, test_written


@pytest.mark.parametrize("num_classes", [10, 100])
def test_load_cifar(tmp_path, num_classes):
    _, written, (test_images, test_labels) = _write_cifar(tmp_path, num_classes)
    ds = data.load_cifar(str(tmp_path), num_classes)
    n_train = 4 * len(written)
    assert ds.x_train.shape == (n_train, 32, 32, 3) and ds.x_test.shape == (4, 32, 32, 3)
    assert ds.x_train.dtype == np.float32 and ds.y_test.dtype == np.int32
    np.testing.assert_array_equal(ds.y_test, test_labels)
    mean, std = (
        (data.CIFAR10_MEAN, data.CIFAR10_STD)
        if num_classes == 10
        else (data.CIFAR100_MEAN, data.CIFAR100_STD)
    )
    # Row layout: 1024 red, then green, then blue, each row-major; pixel (i=1, j=2) of channel c
    # sits at c * 1024 + 1 * 32 + 2.
    for c in range(3):
        raw = test_images[3, c * 1024 + 32 + 2] / 255.0
        np.testing.assert_allclose(ds.x_test[3, 1, 2, c], (raw - mean[c]) / std[c], rtol=1e-5)


def test_load_cifar_errors(tmp_path):
    with pytest.raises(ValueError, match="num_classes=20: unknown; choose one of: 10, 100"):
        data.load_cifar(str(tmp_path), 20)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        data.load_cifar(str(tmp_path), 10)
    d, _, _ = _write_cifar(tmp_path, 10)
    os.remove(d / "data_batch_3")
    with pytest.raises(FileNotFoundError, match=r"data_batch_3 not found in directory"):
        data.load_cifar(str(tmp_path), 10)
    d, _, _ = _write_cifar(tmp_path, 10)
    (d / "data_batch_2").write_bytes(b"this is not a pickle")
    with pytest.raises(ValueError, match=r"data_batch_2: not a valid CIFAR pickle"):
        data.load_cifar(str(tmp_path), 10)
    good = (d / "data_batch_1").read_bytes()
    (d / "data_batch_2").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(ValueError, match=r"data_batch_2: not a valid CIFAR pickle"):
        data.load_cifar(str(tmp_path), 10)
    with open(d / "data_batch_2", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8)}, f, protocol=2)
    with pytest.raises(ValueError, match=r"data_batch_2: CIFAR pickle lacks key"):
        data.load_cifar(str(tmp_path), 10)
    with open(d / "data_batch_2", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f, protocol=2)
    with pytest.raises(ValueError, match=r"data_batch_2: CIFAR 'data' must be uint8"):
        data.load_cifar(str(tmp_path), 10)
    with open(d / "data_batch_2", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, f, protocol=2)
    with pytest.raises(ValueError, match=r"data_batch_2: labels outside 0..9"):
        data.load_cifar(str(tmp_path), 10)


class _Payload:
    """Pickles to a call of os.getcwd: a loader must refuse to run it."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_load_cifar_refuses_code_in_pickles(tmp_path):
    d, _, _ = _write_cifar(tmp_path, 100)
    with open(d / "train", "wb") as f:
        pickle.dump({b"data": _Payload(), b"fine_labels": [0]}, f, protocol=2)
    with pytest.raises(ValueError, match=r"train: not a valid CIFAR pickle.*not allowed"):
        data.load_cifar(str(tmp_path), 100)


# ---------------------------------------------------------------------------------------------
# Checksums and downloads.
# ---------------------------------------------------------------------------------------------


def test_verify_checksum(tmp_path):
    path = tmp_path / "file.bin"
    payload = b"jaxasync" * 1000
    path.write_bytes(payload)
    md5, sha = hashlib.md5(payload).hexdigest(), hashlib.sha256(payload).hexdigest()
    assert data.verify_checksum(str(path), md5)
    assert data.verify_checksum(str(path), sha.upper())
    path.write_bytes(payload[:-1] + b"X")  # corrupted
    assert not data.verify_checksum(str(path), md5)
    assert not data.verify_checksum(str(path), sha)
    with pytest.raises(ValueError, match="checksum 'abc'"):
        data.verify_checksum(str(path), "abc")
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        data.verify_checksum(str(tmp_path / "missing.bin"), md5)


# Files on disk that claim to be originals (name + the original's example count) must have the
# original's checksum. The tests stand in for "the real file" by entering the checksum of a file
# they write into ORIGINALS; corrupting it afterwards must then be caught.


def test_originals_table_covers_every_file_the_loaders_read():
    names = {(k, n + ".gz") for k in ("mnist", "fashion_mnist") for n in
             ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    names |= {("cifar10", f"data_batch_{i}") for i in range(1, 6)} | {("cifar10", "test_batch")}
    names |= {("cifar100", "train"), ("cifar100", "test")}
    assert set(data.ORIGINALS) == names
    for (dataset, name), (md5, count) in data.ORIGINALS.items():
        assert len(md5) == 32 and count == (50_000 if name == "train" else
                                             60_000 if name.startswith("train") else 10_000)
    assert len({md5 for md5, _ in data.ORIGINALS.values()}) == len(data.ORIGINALS)


def test_a_file_with_an_originals_name_and_size_but_other_content_is_rejected(tmp_path):
    """The real table: 10,000 test labels that are not MNIST's are refused before parsing."""
    d = tmp_path / "mnist"
    _write_mnist(d, gz=True)                     # tiny files: loaded, nothing to verify
    assert data.load_mnist_idx(str(tmp_path)).x_test.shape == (4, 784)
    fake = _write(d / "t10k-labels-idx1-ubyte", _idx_bytes(np.zeros(10_000, np.uint8), 2049), True)
    actual = hashlib.md5(open(fake, "rb").read()).hexdigest()
    expected = data.ORIGINALS[("mnist", "t10k-labels-idx1-ubyte.gz")][0]
    with pytest.raises(ValueError) as err:
        data.load_mnist_idx(str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(fake) and "checksum mismatch" in msg
    assert f"MD5 {actual}, expected {expected}" in msg
    # the opt-out skips only the checksum: the format checks still run (4 images, 10,000 labels)
    with pytest.raises(ValueError, match="holds 4 images but .* holds 10000 labels"):
        data.load_mnist_idx(str(tmp_path), verify=False)


@pytest.mark.parametrize("gz", [False, True])
def test_corrupted_original_idx_is_rejected_and_verify_false_skips_the_check(
        tmp_path, monkeypatch, gz):
    d = tmp_path / "mnist"
    _write_mnist(d, gz=True)
    images = np.random.default_rng(1).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    path = _write(d / "train-images-idx3-ubyte", _idx_bytes(images, 2051), gz)
    if not gz:  # the loader prefers the .gz; take it away so it reads this one
        os.remove(d / "train-images-idx3-ubyte.gz")
    name = os.path.basename(path)
    good = open(path, "rb").read()
    # pretend this file is the 5-image original
    monkeypatch.setitem(data.ORIGINALS, ("mnist", name), (hashlib.md5(good).hexdigest(), 5))
    with pytest.raises(ValueError, match="holds 5 images but .* holds 6 labels"):
        data.load_mnist_idx(str(tmp_path))       # verified, then parsed (counts differ)
    bad = bytearray(good)
    bad[-1] ^= 0xFF          # the last pixel, or the gzip trailer: the header still reads
    open(path, "wb").write(bytes(bad))
    with pytest.raises(ValueError, match=f"{name}: checksum mismatch .*MD5 "
                       f"{hashlib.md5(bytes(bad)).hexdigest()}, expected "
                       f"{hashlib.md5(good).hexdigest()}"):
        data.load_mnist_idx(str(tmp_path))
    with pytest.raises(ValueError, match="not a valid gzip" if gz else "5 images but"):
        data.load_mnist_idx(str(tmp_path), verify=False)


def test_corrupted_original_cifar_batch_is_rejected(tmp_path, monkeypatch):
    d, _, _ = _write_cifar(tmp_path, 10, n=3)
    path = d / "test_batch"
    images = np.random.default_rng(2).integers(0, 256, (3, 3072), dtype=np.uint8)
    with open(path, "wb") as f:  # protocol 4: the pixel bytes stand in the file as they are
        pickle.dump({b"data": images, b"labels": [0, 1, 2]}, f, protocol=4)
    good = path.read_bytes()
    monkeypatch.setitem(data.ORIGINALS, ("cifar10", "test_batch"),
                        (hashlib.md5(good).hexdigest(), 3))
    assert data.load_cifar(str(tmp_path), 10).x_test.shape == (3, 32, 32, 3)
    bad = bytearray(good)
    bad[good.index(images.tobytes()) + 100] ^= 0xFF  # one pixel: the pickle still parses
    path.write_bytes(bytes(bad))
    with pytest.raises(ValueError, match=r"test_batch: checksum mismatch for the original "
                                         r"cifar10 file test_batch \(3 examples\)"):
        data.load_cifar(str(tmp_path), 10)
    assert data.load_cifar(str(tmp_path), 10, verify=False).x_test.shape == (3, 32, 32, 3)


def test_workload_option_verify_checksums(tmp_path, monkeypatch):
    from jaxasync.workloads import get_workload

    d, _, _ = _write_cifar(tmp_path, 100, n=2)
    monkeypatch.setitem(data.ORIGINALS, ("cifar100", "test"), ("0" * 32, 2))
    with pytest.raises(ValueError, match="test: checksum mismatch"):
        get_workload("cifar100_resnet18", data_dir=str(tmp_path))
    w = get_workload("cifar100_resnet18", data_dir=str(tmp_path), verify_checksums=False)
    assert w.data.x_test.shape == (2, 32, 32, 3)


def test_download_table_is_complete():
    assert set(data.DOWNLOADS) == {"mnist", "fashion_mnist", "cifar10", "cifar100"}
    for _, resources, _ in data.DOWNLOADS.values():
        for r in resources:
            assert len(r.md5) == 32 and r.urls and all(u.endswith(r.filename) for u in r.urls)


def test_download_offline_fails_clearly(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(downloads, "_urlopen", offline)
    with pytest.raises(ConnectionError) as info:
        data.download("cifar10", str(tmp_path))
    message = str(info.value)
    assert "cifar-10-python.tar.gz" in message and str(tmp_path) in message
    assert "offline" in message and "\n" not in message
    assert not any(name.endswith(".part") for name in os.listdir(tmp_path))
    with pytest.raises(ValueError, match="dataset 'svhn': unknown; choose one of"):
        data.download("svhn", str(tmp_path))


def _serve(files: dict[str, bytes]):
    def urlopen(url, timeout):
        return io.BytesIO(files[url.rsplit("/", 1)[1]])

    return urlopen


def test_download_verifies_and_extracts(tmp_path, monkeypatch):
    # A tiny CIFAR-100-shaped archive standing in for the real one.
    src = tmp_path / "src"
    _write_cifar(src, 100)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        tar.add(src / "cifar-100-python", arcname="cifar-100-python")
    payload = archive.getvalue()
    name = "cifar-100-python.tar.gz"
    monkeypatch.setattr(downloads, "_urlopen", _serve({name: payload}))
    folder, resources, extract = data.DOWNLOADS["cifar100"]
    fake = downloads._Resource(name, hashlib.md5(payload).hexdigest(), resources[0].urls)
    monkeypatch.setitem(data.DOWNLOADS, "cifar100", (folder, (fake,), extract))
    root = tmp_path / "root"
    data.download("cifar100", str(root))
    assert data.verify_checksum(str(root / name), fake.md5)
    assert data.load_cifar(str(root), 100).x_train.shape == (4, 32, 32, 3)
    # Wrong checksum: refused, and nothing half-written is left behind.
    bad = downloads._Resource(name, "0" * 32, resources[0].urls)
    monkeypatch.setitem(data.DOWNLOADS, "cifar100", (folder, (bad,), extract))
    root2 = tmp_path / "root2"
    with pytest.raises(ValueError, match=r"cifar-100-python.tar.gz downloaded into .* MD5"):
        data.download("cifar100", str(root2))
    assert os.listdir(root2) == []


def test_download_mnist_layout_is_what_the_loader_reads(tmp_path, monkeypatch):
    src = tmp_path / "src"
    _write_mnist(src, gz=True)
    files = {p: (src / p).read_bytes() for p in os.listdir(src)}
    monkeypatch.setattr(downloads, "_urlopen", _serve(files))
    folder, resources, extract = data.DOWNLOADS["mnist"]
    fakes = tuple(
        downloads._Resource(r.filename, hashlib.md5(files[r.filename]).hexdigest(), r.urls)
        for r in resources
    )
    monkeypatch.setitem(data.DOWNLOADS, "mnist", (folder, fakes, extract))
    data.download("mnist", str(tmp_path / "root"))
    assert data.load_mnist_idx(str(tmp_path / "root"), "mnist").x_train.shape == (6, 784)


# ---------------------------------------------------------------------------------------------
# Partitioning.
# ---------------------------------------------------------------------------------------------


def _check_valid(index, sizes, n):
    assert index.dtype == np.int32 and sizes.dtype == np.int32
    assert index.shape == (len(sizes), sizes.max())
    assert sizes.min() >= 1 and sizes.sum() <= n
    assert index.min() >= 0 and index.max() < n
    real = [index[m, : sizes[m]] for m in range(len(sizes))]
    for m, own in enumerate(real):
        assert len(np.unique(own)) == len(own)  # no duplicates within a worker
        assert set(index[m]) == set(own)  # padding only repeats the worker's own indices
    everything = np.concatenate(real)
    assert len(np.unique(everything)) == len(everything)  # disjoint across workers
    return real


def test_partition_iid():
    labels = np.repeat(np.arange(10), 103)
    index, sizes = data.partition(labels, 7, "iid", seed=3)
    _check_valid(index, sizes, len(labels))
    np.testing.assert_array_equal(sizes, np.full(7, 1030 // 7))
    again, _ = data.partition(labels, 7, "iid", seed=3)
    np.testing.assert_array_equal(index, again)
    other, _ = data.partition(labels, 7, "iid", seed=4)
    assert not np.array_equal(index, other)
    # Float (regression) targets work for iid: only the count matters.
    index, sizes = data.partition(np.linspace(0, 1, 50, dtype=np.float32), 5)
    assert sizes.tolist() == [10] * 5


def test_partition_shared_gives_every_worker_every_example():
    labels = np.arange(37) % 3
    index, sizes = data.partition(labels, 5, "shared", seed=3)
    assert sizes.tolist() == [37] * 5
    # one row that every worker reads, not M copies of it
    np.testing.assert_array_equal(index, np.arange(37)[None])
    rows = np.asarray(partitioning.worker_rows(jnp.asarray(index), jnp.asarray([4, 0, 2])))
    np.testing.assert_array_equal(rows, np.tile(np.arange(37), (3, 1)))
    # regression targets, and more workers than examples (each samples from all of them)
    index, sizes = data.partition(np.linspace(0, 1, 10, dtype=np.float32), 40, "shared")
    assert index.shape == (1, 10) and sizes.tolist() == [10] * 40
    # any other scheme: each worker its own row
    index, _ = data.partition(labels, 5, "iid", seed=3)
    rows = np.asarray(partitioning.worker_rows(jnp.asarray(index), jnp.asarray([4, 0])))
    np.testing.assert_array_equal(rows, index[[4, 0]])


def _label_skew(labels, index, sizes, num_classes=10):
    """Mean total-variation distance between worker label histograms and the global one."""
    overall = np.bincount(labels, minlength=num_classes) / len(labels)
    tv = []
    for m in range(len(sizes)):
        h = np.bincount(labels[index[m, : sizes[m]]], minlength=num_classes) / sizes[m]
        tv.append(0.5 * np.abs(h - overall).sum())
    return float(np.mean(tv))


def test_partition_dirichlet_skew_depends_on_alpha():
    labels = np.repeat(np.arange(10), 200)
    skewed = data.partition(labels, 10, "dirichlet", alpha=0.1, seed=0)
    uniform = data.partition(labels, 10, "dirichlet", alpha=1000.0, seed=0)
    for index, sizes in (skewed, uniform):
        real = _check_valid(index, sizes, len(labels))
        assert sum(len(r) for r in real) == len(labels)  # Dirichlet drops nothing
    assert _label_skew(labels, *skewed) > 0.5
    assert _label_skew(labels, *uniform) < 0.05
    iid = data.partition(labels, 10, "iid")
    assert _label_skew(labels, *iid) < 0.1


def test_partition_shards_limits_classes():
    labels = np.repeat(np.arange(10), 60)
    rng = np.random.default_rng(0)
    labels = labels[rng.permutation(len(labels))]
    for spw in (1, 2, 3):
        index, sizes = data.partition(labels, 10, "shards", shards_per_worker=spw, seed=1)
        real = _check_valid(index, sizes, len(labels))
        # 600 examples / (10 * spw) shards = at most 60 per shard = one class's count, so a shard
        # spans at most 2 classes.
        for own in real:
            assert len(np.unique(labels[own])) <= 2 * spw
    index, sizes = data.partition(labels, 10, "shards", shards_per_worker=2, seed=1)
    assert np.mean([len(np.unique(labels[index[m]])) for m in range(10)]) <= 3


def test_partition_errors():
    labels = np.repeat(np.arange(3), 4)
    with pytest.raises(ValueError, match="scheme 'random': unknown; choose one of: iid"):
        data.partition(labels, 2, "random")
    with pytest.raises(ValueError, match="alpha=0.0: must be"):
        data.partition(labels, 2, "dirichlet", alpha=0.0)
    with pytest.raises(ValueError, match="alpha=nan"):
        data.partition(labels, 2, "dirichlet", alpha=float("nan"))
    with pytest.raises(ValueError, match="num_workers=0"):
        data.partition(labels, 0)
    with pytest.raises(ValueError, match="num_workers=13: more workers than the 12"):
        data.partition(labels, 13)
    with pytest.raises(ValueError, match="num_workers=7"):
        data.partition(labels, 7, "shards", shards_per_worker=2)
    with pytest.raises(ValueError, match="shards_per_worker=0"):
        data.partition(labels, 2, "shards", shards_per_worker=0)
    with pytest.raises(ValueError, match=r"num_workers=12: a Dirichlet\(alpha=0.001\)"):
        data.partition(labels, 12, "dirichlet", alpha=0.001)
    with pytest.raises(ValueError, match="needs integer class labels"):
        data.partition(labels.astype(np.float32), 2, "dirichlet")
    with pytest.raises(ValueError, match="labels: must be 1-D"):
        data.partition(labels.reshape(3, 4), 2)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(20, 300),
    num_workers=st.integers(1, 10),
    num_classes=st.integers(1, 10),
    scheme=st.sampled_from([s for s in data.PARTITION_SCHEMES if s != "shared"]),  # disjoint
    alpha=st.floats(0.5, 100.0),
    spw=st.integers(1, 2),
    seed=st.integers(0, 2**16),
)
def test_partition_properties(n, num_workers, num_classes, scheme, alpha, spw, seed):
    labels = np.random.default_rng(seed).integers(0, num_classes, n)
    try:
        index, sizes = data.partition(
            labels, num_workers, scheme, alpha=alpha, shards_per_worker=spw, seed=seed
        )
    except ValueError as e:
        assert "num_workers" in str(e)  # the only legitimate failure: too little data
        return
    _check_valid(index, sizes, n)


# ---------------------------------------------------------------------------------------------
# Synthetic problems.
# ---------------------------------------------------------------------------------------------


def _ls_loss(w, a, b):
    return 0.5 * jnp.mean((a @ w - b) ** 2)


def _logistic_loss(w, a, y, l2):
    return jnp.mean(jax.nn.softplus(-(2.0 * y - 1.0) * (a @ w))) + 0.5 * l2 * jnp.sum(w * w)


def _max_eig(h):
    return float(np.linalg.eigvalsh(np.asarray(h, np.float64))[-1])


def test_least_squares_constants():
    p = data.make_least_squares(n=60, d=8, noise=0.3, seed=1)
    a, b = jnp.asarray(p.data.x_train), jnp.asarray(p.data.y_train)
    assert p.data.x_train.dtype == np.float32 and p.data.y_train.dtype == np.float32
    assert p.data.x_test.shape == (15, 8)
    h = jax.jit(jax.hessian(_ls_loss))(jnp.zeros(8), a, b)
    np.testing.assert_allclose(_max_eig(h), p.smoothness, rtol=1e-5)
    w_star = jnp.asarray(p.x_star, jnp.float32)
    np.testing.assert_allclose(float(_ls_loss(w_star, a, b)), p.f_star, rtol=1e-4)
    assert float(jnp.linalg.norm(jax.grad(_ls_loss)(w_star, a, b))) < 1e-5
    rng = np.random.default_rng(0)
    ws = w_star + jnp.asarray(rng.normal(size=(20, 8)), jnp.float32)
    assert np.all(np.asarray(jax.vmap(_ls_loss, (0, None, None))(ws, a, b)) >= p.f_star)
    # Underdetermined: interpolation, F* = 0.
    assert data.make_least_squares(n=5, d=10, seed=0).f_star < 1e-12


def test_logistic_constants():
    l2 = 1e-2
    p = data.make_logistic(n=80, d=6, seed=2, l2=l2)
    a, y = jnp.asarray(p.data.x_train), jnp.asarray(p.data.y_train, jnp.float32)
    assert set(np.unique(p.data.y_train)) == {0, 1} and p.data.y_train.dtype == np.int32
    # The Hessian is largest at w = 0 (sigma' = 1/4 everywhere), where it equals the stated L.
    hessian = jax.jit(jax.hessian(_logistic_loss))
    loss = jax.jit(_logistic_loss)
    np.testing.assert_allclose(_max_eig(hessian(jnp.zeros(6), a, y, l2)), p.smoothness, rtol=1e-5)
    rng = np.random.default_rng(0)
    w_star = jnp.asarray(p.x_star, jnp.float32)
    for _ in range(10):
        w = jnp.asarray(rng.normal(size=6), jnp.float32)
        assert _max_eig(hessian(w, a, y, l2)) <= p.smoothness * (1 + 1e-5)
        assert float(loss(w_star + w, a, y, l2)) >= p.f_star - 1e-6
    np.testing.assert_allclose(float(loss(w_star, a, y, l2)), p.f_star, rtol=1e-5)
    assert float(jnp.linalg.norm(jax.grad(_logistic_loss)(w_star, a, y, l2))) < 1e-5
    with pytest.raises(ValueError, match="l2=0"):
        data.make_logistic(l2=0)


def test_synthetic_validation():
    with pytest.raises(ValueError, match="n=0"):
        data.make_least_squares(n=0)
    with pytest.raises(ValueError, match="d=2.5"):
        data.make_least_squares(d=2.5)
    with pytest.raises(ValueError, match="noise=-1"):
        data.make_least_squares(noise=-1)
    with pytest.raises(ValueError, match="n_test=0"):
        data.make_logistic(n_test=0)


def test_mishchenko_quadratic():
    p = data.make_mishchenko_quadratic()
    a, b = p.data.x_train, p.data.y_train
    assert a.shape == (10_000, 400) and b.shape == (10_000,)
    assert 0.0 <= a.min() and a.max() < 1 / 20  # uniform[0, 1) / sqrt(400)
    assert p.data.x_test is a  # the objective is the training loss
    # L ~ |E a|^2 = 400 * (0.5 / 20)^2 = 0.25 plus the small isotropic part.
    assert 0.249 < p.smoothness < 0.252
    assert 0.0 <= p.f_star < 1e-9  # noise 1e-5: F* ~ 0.5e-10
    a64 = a.astype(np.float64)
    grad = a64.T @ (a64 @ p.x_star - b) / len(b)
    assert np.linalg.norm(grad) < 1e-10
    # The notebook's stream (seed 42): first row of A as printed by replaying it by hand.
    rng = np.random.default_rng(42)
    for _ in range(5):
        rng.choice(424242, size=1, replace=False)
    np.testing.assert_allclose(a[0], (rng.uniform(size=400) / 20).astype(np.float32))
