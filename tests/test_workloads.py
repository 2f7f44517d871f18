"""Tests for jaxasync.models and jaxasync.workloads."""

from __future__ import annotations

import inspect
import math
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import write_tiny_mnist
from jax.flatten_util import ravel_pytree

from jaxasync import data, models, workloads
from jaxasync.workloads import Target, get_workload

# ---------------------------------------------------------------------------------------------
# Models.
# ---------------------------------------------------------------------------------------------

KEY = jax.random.key(0)


def _param_count(module, x_shape) -> int:
    # eval_shape: counts without running (ResNet-18 init would take seconds on a CPU).
    return models.count_params(jax.eval_shape(module.init, KEY, jnp.zeros(x_shape)))


def test_sasg_fc_net_has_407050_params():
    assert _param_count(models.MLP((512,), 10), (1, 784)) == 407_050


def test_resnet18_param_count():
    # GroupNorm has BatchNorm's trainable per-channel scale and bias, so the count equals the
    # BatchNorm ResNet-18 of the SASG code ("11.17 M"), computed here rather than assumed.
    assert _param_count(models.ResNet18(10), (1, 32, 32, 3)) == 11_173_962
    assert _param_count(models.ResNet18(100), (1, 32, 32, 3)) == 11_220_132
    out = jax.eval_shape(
        models.ResNet18(10).apply,
        jax.eval_shape(models.ResNet18(10).init, KEY, jnp.zeros((1, 32, 32, 3))),
        jnp.zeros((2, 32, 32, 3)),
    )
    assert out.shape == (2, 10)


def test_resnet18_forward_and_gradients_on_a_tiny_batch():
    """Gradient shapes = parameter shapes, all finite and non-zero, and the classifier bias's
    gradient equals mean(softmax(logits) - onehot(y)), computed by hand."""
    model = models.ResNet18(10)
    x = jax.random.normal(KEY, (2, 32, 32, 3))
    y = jnp.asarray([3, 7])
    shapes = jax.eval_shape(model.init, KEY, x)          # no init compile (seconds on a CPU)
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda s: (0.05 * rng.standard_normal(s.shape)).astype(np.float32),
                          shapes)

    def loss_and_logits(p):
        logits = model.apply(p, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

    (loss, logits), grads = jax.jit(jax.value_and_grad(loss_and_logits, has_aux=True))(params)
    assert logits.shape == (2, 10) and bool(jnp.isfinite(loss))
    assert jax.tree.map(jnp.shape, grads) == jax.tree.map(jnp.shape, params)
    assert all(bool(jnp.all(jnp.isfinite(g))) and bool(jnp.any(g != 0))
               for g in jax.tree.leaves(grads))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    want = (probs - np.eye(10)[np.asarray(y)]).mean(0)
    np.testing.assert_allclose(grads["params"]["head"]["bias"], want, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_resnet18_forward():
    model = models.ResNet18(10)
    x = jax.random.normal(KEY, (2, 32, 32, 3))
    params = jax.jit(model.init)(KEY, x)
    logits = jax.jit(model.apply)(params, x)
    assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize(
    "module, x_shape, n_out",
    [
        (models.MLP((100, 100), 10), (5, 40), 10),
        (models.MLP((64,), 10), (5, 8, 8), 10),  # flattens its input
        (models.CNN1D(10), (5, 40), 10),
        (models.Linear(), (5, 7), None),
    ],
)
def test_forward_shapes(module, x_shape, n_out):
    # Shapes only (eval_shape traces without compiling); real forward passes run in the
    # workload tests below.
    x = jnp.zeros(x_shape)
    y = jax.eval_shape(module.apply, jax.eval_shape(module.init, KEY, x), x)
    assert y.shape == ((5, n_out) if n_out else (5,))


def test_cnn1d_is_small_and_its_conv_matches_lax():
    assert _param_count(models.CNN1D(10), (1, 40)) < 30_000
    x = jax.random.normal(KEY, (2, 40, 3))

    @jax.jit
    def both(x):
        out = []
        for strides in (1, 2):
            conv = models.Conv1D(4, 5, strides=strides)
            p = conv.init(KEY, x)["params"]
            ref = jax.lax.conv_general_dilated(
                x, p["kernel"], (strides,), [(2, 2)], dimension_numbers=("NWC", "WIO", "NWC")
            )
            out.append((conv.apply({"params": p}, x), ref + p["bias"]))
        return out

    for mine, ref in both(x):
        np.testing.assert_allclose(mine, ref, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Target and registry.
# ---------------------------------------------------------------------------------------------


def test_target():
    assert Target("test_accuracy", 0.9, "max").reached(0.9)
    assert not Target("test_accuracy", 0.9, "max").reached(0.89)
    assert Target("train_gap", 1e-3, "min").reached(1e-4)
    with pytest.raises(ValueError, match="target mode 'up': unknown; choose one of: max, min"):
        Target("test_accuracy", 0.9, "up")
    with pytest.raises(ValueError, match="target value"):
        Target("test_accuracy", math.nan, "max")


def test_registry_names():
    assert set(workloads.WORKLOADS) == {
        "least_squares",
        "logistic",
        "mishchenko_quadratic",
        "sign_counterexample",
        "worst_case_quadratic",
        "mnist1d_mlp",
        "mnist1d_cnn",
        "digits_mlp",
        "mnist_subset_fc",
        "mnist_fc",
        "fashion_mnist_fc",
        "cifar10_resnet18",
        "cifar100_resnet18",
    }
    assert set(workloads.OFFLINE_WORKLOADS) < set(workloads.WORKLOADS)
    for factory in workloads.WORKLOADS.values():  # the common options
        assert {"seed", "data_dir"} <= set(inspect.signature(factory).parameters)


def test_get_workload_errors(tmp_path):
    with pytest.raises(ValueError, match=r"workload 'mnst1d_mlp': unknown \(did you mean"):
        get_workload("mnst1d_mlp")
    with pytest.raises(ValueError, match="workload 'least_squares': unknown option 'lr'; allowed"):
        get_workload("least_squares", lr=0.1)
    with pytest.raises(ValueError, match="n=0: must be an integer >= 1"):
        get_workload("least_squares", n=0)
    with pytest.raises(ValueError, match="seed=-1"):
        get_workload("least_squares", seed=-1)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        get_workload("mnist_fc", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte\[.gz\] not found"):
        get_workload("fashion_mnist_fc", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        get_workload("cifar100_resnet18", data_dir=str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Offline workloads: init, loss and evaluate run jitted, finite, vmappable.
# ---------------------------------------------------------------------------------------------

_SMALL = {"least_squares": {"n": 200, "d": 10}, "logistic": {"n": 200, "d": 10}}


@pytest.fixture(scope="module")
def offline():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = get_workload(name, **_SMALL.get(name, {}))
        return cache[name]

    return get


@pytest.mark.parametrize("name", workloads.OFFLINE_WORKLOADS)
def test_offline_workload_runs(offline, name):
    w = offline(name)
    assert w.name == name and w.description
    d = w.data
    assert d.x_train.dtype == np.float32 and isinstance(d.x_train, np.ndarray)
    assert len(d.x_train) == len(d.y_train) and len(d.x_test) == len(d.y_test)
    if w.num_classes is not None:
        assert d.y_train.dtype == np.int32 and d.y_train.max() < w.num_classes

    # One jitted program (one compile keeps the test fast): init three workers' params, loss and
    # gradient vmapped over the leading params axis (one row per worker, as the simulator uses
    # it), and evaluate on the whole test set.
    @jax.jit
    def run(keys, xw, yw, x_test, y_test):
        stacked = jax.vmap(w.init)(keys)
        losses, grads = jax.vmap(jax.value_and_grad(w.loss), in_axes=(0, 0, 0))(stacked, xw, yw)
        params = jax.tree.map(lambda p: p[0], stacked)
        return losses, grads, w.evaluate(params, x_test, y_test)

    # (a workload with fewer than 24 examples repeats them: sign_counterexample has 2)
    rows = np.arange(24) % len(d.x_train)
    xw = jnp.asarray(d.x_train[rows]).reshape(3, 8, *d.x_train.shape[1:])
    yw = jnp.asarray(d.y_train[rows]).reshape(3, 8)
    keys = jax.random.split(KEY, 3)
    losses, grads, metrics = run(keys, xw, yw, jnp.asarray(d.x_test), jnp.asarray(d.y_test))
    assert losses.shape == (3,) and bool(jnp.all(jnp.isfinite(losses)))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert "loss" in metrics and all(bool(jnp.isfinite(v)) for v in metrics.values())
    if w.num_classes is not None:
        assert 0.0 <= float(metrics["accuracy"]) <= 1.0

    assert w.target.mode in ("max", "min")
    if w.target.metric == "train_gap":
        assert w.f_star is not None and w.smoothness is not None and w.smoothness > 0
    else:
        assert w.target.metric in ("test_accuracy", "test_top5")


@pytest.mark.parametrize("name", ["least_squares", "logistic", "mishchenko_quadratic"])
def test_convex_workload_constants(offline, name):
    w = offline(name)
    x, y = jnp.asarray(w.data.x_train), jnp.asarray(w.data.y_train)
    small = x.shape[1] <= 50

    @jax.jit
    def check(key):
        params = w.init(key)
        flat, unravel = ravel_pytree(params)
        hessian = jax.hessian(lambda v: w.loss(unravel(v), x, y))(flat) if small else None
        return params, w.evaluate(params, x, y)["loss"], w.loss(params, x, y), hessian

    params, eval_loss, loss, hessian = check(KEY)
    # Zero init; the target is a fraction of (or below) the initial gap.
    assert all(float(jnp.abs(p).max()) == 0.0 for p in jax.tree.leaves(params))
    gap0 = float(eval_loss) - w.f_star
    assert 0 < w.target.value < gap0 and not w.target.reached(gap0)
    # evaluate's loss is the training objective, the one F* refers to.
    np.testing.assert_allclose(float(eval_loss), float(loss), rtol=1e-5)
    # The workload's loss, through its own params, has Hessian max eigenvalue L at zero.
    if small:
        top = np.linalg.eigvalsh(np.asarray(hessian, np.float64))[-1]
        np.testing.assert_allclose(top, w.smoothness, rtol=1e-4)


def test_convex_targets_as_documented(offline):
    ls = offline("least_squares")
    gap0 = 0.5 * float(np.mean(ls.data.y_train.astype(np.float64) ** 2)) - ls.f_star
    np.testing.assert_allclose(ls.target.value, 1e-3 * gap0, rtol=1e-6)
    lg = offline("logistic")
    np.testing.assert_allclose(lg.target.value, 1e-2 * (math.log(2) - lg.f_star), rtol=1e-6)
    assert offline("mishchenko_quadratic").target == Target("train_gap", 5e-3, "min")


def test_classification_targets(offline):
    expected = {"mnist1d_mlp": 0.60, "mnist1d_cnn": 0.90, "digits_mlp": 0.95,
                "mnist_subset_fc": 0.94}  # fmt: skip
    for name, value in expected.items():
        assert offline(name).target == Target("test_accuracy", value, "max")


# ---------------------------------------------------------------------------------------------
# Evaluation details.
# ---------------------------------------------------------------------------------------------


def test_chunked_evaluate_matches_direct(offline):
    w = offline("digits_mlp")
    x, y = jnp.asarray(w.data.x_test), jnp.asarray(w.data.y_test)  # 450 rows, not a multiple
    _, evaluate = workloads._classifier(models.MLP((64,), 10), chunk=64)

    @jax.jit
    def both(key):
        params = w.init(key)
        logits = models.MLP((64,), 10).apply(params, x)
        direct = {"loss": w.loss(params, x, y), "accuracy": jnp.mean(logits.argmax(-1) == y)}
        return evaluate(params, x, y), direct

    chunked, direct = both(KEY)
    np.testing.assert_allclose(float(chunked["loss"]), float(direct["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(chunked["accuracy"]), float(direct["accuracy"]), rtol=1e-6)
    assert set(chunked) == {"loss", "accuracy"}  # top-5 only where asked for (CIFAR-100)


def test_top5_by_hand():
    class Fixed(models.nn.Module):  # logits = the input itself
        @models.nn.compact
        def __call__(self, x):
            return x

    _, evaluate = workloads._classifier(Fixed(), chunk=2, top5=True)
    logits = jnp.asarray([[6.0, 5, 4, 3, 2, 1, 0]] * 3)
    labels = jnp.asarray([0, 4, 5])  # ranks 0, 4, 5: top-1 once, top-5 twice
    m = evaluate({}, logits, labels)
    np.testing.assert_allclose(float(m["accuracy"]), 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(float(m["top5"]), 2 / 3, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# File-based workloads on tiny files written here.
# ---------------------------------------------------------------------------------------------


def test_mnist_fc_from_tiny_idx(tmp_path):
    write_tiny_mnist(tmp_path / "mnist", train=12, test=5)
    w = get_workload("mnist_fc", data_dir=str(tmp_path))
    assert w.target == Target("test_accuracy", 0.98, "max")
    assert w.data.x_train.shape == (12, 784)
    assert models.count_params(jax.eval_shape(w.init, KEY)) == 407_050


def _write_cifar100(root, n=3):
    rng = np.random.default_rng(0)
    folder = root / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        batch = {
            b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
            b"fine_labels": rng.integers(0, 100, n).tolist(),
            b"coarse_labels": rng.integers(0, 20, n).tolist(),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)


def test_cifar100_workload_from_tiny_pickles(tmp_path):
    _write_cifar100(tmp_path)
    w = get_workload("cifar100_resnet18", data_dir=str(tmp_path))
    assert w.target == Target("test_top5", 0.92, "max") and w.num_classes == 100
    assert w.data.x_train.shape == (3, 32, 32, 3)
    shapes = jax.eval_shape(w.init, KEY)
    assert models.count_params(shapes) == 11_220_132
    metrics = jax.eval_shape(w.evaluate, shapes, w.data.x_test, w.data.y_test)
    assert set(metrics) == {"loss", "accuracy", "top5"}


@pytest.mark.slow
def test_cifar10_workload_runs(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (2, 3072)).astype(np.uint8), b"labels": [1, 2]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    w = get_workload("cifar10_resnet18", data_dir=str(tmp_path))
    params = jax.jit(w.init)(KEY)
    x = w.augment(KEY, jnp.asarray(w.data.x_train[:4]))
    loss = jax.jit(w.loss)(params, x, jnp.asarray(w.data.y_train[:4]))
    assert bool(jnp.isfinite(loss))
    m = jax.jit(w.evaluate)(params, jnp.asarray(w.data.x_test), jnp.asarray(w.data.y_test))
    assert all(bool(jnp.isfinite(v)) for v in m.values())


def test_cifar_augment_is_a_crop_and_flip():
    mean, std = data.CIFAR10_MEAN, data.CIFAR10_STD
    augment = jax.jit(workloads._cifar_augment(mean, std))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 32, 32, 3)).astype(np.float32)
    fill = -np.asarray(mean, np.float32) / np.asarray(std, np.float32)
    padded = np.broadcast_to(fill, (6, 40, 40, 3)).copy()
    padded[:, 4:36, 4:36] = x
    seen_offsets, seen_flips = set(), set()
    for seed in range(5):
        out = np.asarray(augment(jax.random.key(seed), jnp.asarray(x)))
        assert out.shape == x.shape
        for b in range(6):
            found = [
                (i, j, flip)
                for i in range(9)
                for j in range(9)
                for flip in (False, True)
                if np.array_equal(
                    out[b], padded[b, i : i + 32, j : j + 32][:, ::-1] if flip else
                    padded[b, i : i + 32, j : j + 32]
                )
            ]  # fmt: skip
            assert found, "augmented image is not a crop (+ flip) of the padded input"
            seen_offsets.add(found[0][:2])
            seen_flips.add(found[0][2])
    assert len(seen_offsets) > 5 and seen_flips == {False, True}
    # Vmappable over a worker axis, as the simulator calls it.
    keys = jax.random.split(KEY, 2)
    assert jax.vmap(augment)(keys, jnp.stack([x, x])).shape == (2, *x.shape)


def _crop_and_flip(out, padded):
    """The (row offset, column offset, flipped) whose window of ``padded`` is ``out``: every
    candidate that matches exactly (one, for a random image)."""
    h, w = out.shape[:2]
    return [(i, j, flip) for i in range(9) for j in range(9) for flip in (False, True)
            if np.array_equal(out, padded[i:i + h, j:j + w][:, ::-1] if flip
                              else padded[i:i + h, j:j + w])]


def test_cifar_augment_is_deterministic_per_key_with_uniform_crops_and_flips():
    mean, std = data.CIFAR100_MEAN, data.CIFAR100_STD
    augment = jax.jit(workloads._cifar_augment(mean, std))
    x = np.random.default_rng(1).normal(size=(64, 32, 32, 3)).astype(np.float32)
    padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
    padded[:, :4], padded[:, -4:], padded[:, :, :4], padded[:, :, -4:] = (
        -np.asarray(mean, np.float32) / np.asarray(std, np.float32),) * 4  # black, normalised
    k1, k2 = jax.random.key(7), jax.random.key(8)
    out = np.asarray(augment(k1, jnp.asarray(x)))
    assert out.shape == x.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.asarray(augment(k1, jnp.asarray(x))))  # same key
    assert not np.array_equal(out, np.asarray(augment(k2, jnp.asarray(x))))      # another key
    found = [_crop_and_flip(out[b], padded[b]) for b in range(64)]
    assert all(len(f) == 1 for f in found)          # exactly one window (+ mirror) each
    (rows, cols, flips) = map(np.asarray, zip(*[f[0] for f in found], strict=True))
    # offsets 0..8 each way (padding 4), flips about half: 64 draws, loose bounds
    assert rows.min() >= 0 and rows.max() <= 8 and len(set(rows)) >= 6 and len(set(cols)) >= 6
    assert 16 <= flips.sum() <= 48
    # a flip is the exact mirror of the same window: un-mirror the flipped ones and compare
    for b in np.flatnonzero(flips)[:5]:
        i, j = rows[b], cols[b]
        np.testing.assert_array_equal(out[b][:, ::-1], padded[b, i:i + 32, j:j + 32])
        assert not np.array_equal(out[b], padded[b, i:i + 32, j:j + 32])
    # the identity crop (offset 4, 4) without a flip returns the image itself
    keep = np.flatnonzero((rows == 4) & (cols == 4) & ~flips)
    for b in keep:
        np.testing.assert_array_equal(out[b], x[b])


# ----------------------------------------------------------------------------- initialisation


def test_torch_init_is_uniform_within_one_over_sqrt_fan_in_for_every_layer():
    """workload.init=torch: every dense/conv kernel and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    (torch.nn.Linear / Conv reset_parameters); norm layers and shapes untouched."""
    import flax.linen as nn

    from jaxasync.models import CNN1D, MLP, with_init

    for module, x in ((MLP((64,), 10), jnp.zeros((1, 784))),
                      (CNN1D(channels=8), jnp.zeros((1, 40))),
                      (nn.Sequential([nn.Conv(16, (3, 3)), nn.GroupNorm(4)]),
                       jnp.zeros((1, 8, 8, 3)))):
        flax_init = lambda k, m=module, x=x: m.init(k, x)          # noqa: E731
        torch = with_init(flax_init, "torch")(jax.random.PRNGKey(0))
        ref = flax_init(jax.random.PRNGKey(0))
        assert jax.tree.structure(torch) == jax.tree.structure(ref)
        flat = jax.tree_util.tree_flatten_with_path(torch)[0]
        layers = 0
        for path, leaf in flat:
            names = [getattr(p, "key", "") for p in path]
            parent = torch
            for n in names[:-1]:
                parent = parent[n]
            if "kernel" not in parent or parent["kernel"].ndim < 2:
                # a norm layer: as flax (and torch) leave it, scale 1 and bias 0
                ref_leaf = ref
                for n in names:
                    ref_leaf = ref_leaf[n]
                np.testing.assert_array_equal(leaf, ref_leaf)
                continue
            fan_in = int(np.prod(parent["kernel"].shape[:-1]))
            bound = 1 / np.sqrt(fan_in)
            a = np.asarray(leaf)
            assert np.all(np.abs(a) <= bound)
            if a.size >= 500:   # uniform: mean 0, variance b^2/3 within 6 standard errors
                assert abs(a.mean()) < 6 * bound / np.sqrt(3 * a.size)
                assert abs(a.var() / (bound**2 / 3) - 1) < 6 * np.sqrt(0.8 / a.size)
            if names[-1] == "bias":
                assert np.any(a != 0)          # torch draws biases too (flax: zeros)
            layers += names[-1] == "kernel"
        assert layers >= 1


def test_workload_init_torch_through_the_config_and_refused_when_unknown():
    from jaxasync.config import ConfigError
    from jaxasync.experiment import prepare

    cfg = {"algorithm": {"name": "asgd"}, "workload": {"name": "digits_mlp", "init": "torch"},
           "run": {"num_workers": 2, "steps": 2, "eval_every": 1}}
    prep = prepare(cfg)
    p = prep.workload.init(jax.random.PRNGKey(1))
    k = p["params"]["Dense_0"]["kernel"]
    assert np.abs(np.asarray(k)).max() <= 1 / np.sqrt(k.shape[0])
    assert np.any(np.asarray(p["params"]["Dense_0"]["bias"]) != 0)
    with pytest.raises(ConfigError, match="workload.init='jax'"):
        prepare({**cfg, "workload": {"name": "digits_mlp", "init": "jax"}})
