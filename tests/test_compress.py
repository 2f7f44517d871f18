"""Compressors: exactness of top-k, bit accounting, unbiasedness, error feedback, vmap.

The fast exact top-k path only engages for vectors of at least 2**15 entries, so the tests
that must exercise it use one such size (40,000 entries, k = 400) and batch several inputs
through one jitted, vmapped function to pay its compilation once.
"""

from __future__ import annotations

import importlib
import math
import re
from functools import cache

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

# The package exports the ``compress`` optax transform under the same name; import the module.
C = importlib.import_module("jaxasync.compress")
# The CPU radix top-k behind C.top_k_threshold (its internals are tested below).
R = importlib.import_module("jaxasync._topk_radix")

BIG_D, BIG_K = 40_000, 400   # above the fast-path threshold


def lax_reference(x: jax.Array, k: int) -> jax.Array:
    """What top-k must return: jax.lax.top_k's set of |x|, dense."""
    flat = x.reshape(-1)
    k = min(k, flat.size)
    _, idx = jax.lax.top_k(jnp.abs(flat.astype(jnp.float32)), k)
    return jnp.zeros_like(flat).at[idx].set(flat[idx]).reshape(x.shape)


BATCH = 6   # every fast-path test feeds this many rows, so one compilation serves them all


@cache
def big_select():
    """jit(vmap) of (top_k_select, whether the fast path succeeded) over BATCH rows."""
    plan = R._plan(BIG_D, BIG_K)
    assert plan is not None

    def one(v):
        return C.top_k_select(v, BIG_K), R._fast_threshold(v, BIG_K, plan)[2]

    return jax.jit(jax.vmap(one))


@cache
def big_reference():
    return jax.jit(jax.vmap(lambda v: lax_reference(v, BIG_K)))


def tree_example():
    key = jax.random.key(0)
    ka, kb, kc = jax.random.split(key, 3)
    return {
        "a": jax.random.normal(ka, (10, 20)),     # 200 entries
        "b": jax.random.normal(kb, (7,)),         # 7 entries
        "c": jax.random.normal(kc, ()),           # a scalar leaf
    }


# ============================================================================= top-k exactness


def test_density_one_is_identity_exactly():
    tree = tree_example()
    big = jax.random.normal(jax.random.key(3), (BIG_D,))
    for t in (tree, {"big": big}):
        out, _ = jax.jit(C.top_k(1.0))(t, jax.random.key(1))
        ident, _ = C.identity()(t, jax.random.key(1))
        for o, i in zip(jax.tree.leaves(out), jax.tree.leaves(ident), strict=True):
            np.testing.assert_array_equal(np.asarray(o), np.asarray(i))


def test_exact_count_per_layer_and_scalar_leaves():
    mid = jax.random.normal(jax.random.key(4), (999,))
    tree = {**tree_example(), "one": jnp.array([2.5]), "mid": mid}
    out, bits = jax.jit(C.top_k(0.1))(tree, jax.random.key(0))
    for name, leaf in tree.items():
        k = max(1, math.floor(0.1 * leaf.size))
        assert int(jnp.count_nonzero(out[name])) == k, name
        assert out[name].shape == leaf.shape and out[name].dtype == leaf.dtype
    np.testing.assert_array_equal(np.asarray(out["c"]), np.asarray(tree["c"]))   # k = 1 of 1
    np.testing.assert_array_equal(np.asarray(out["one"]), np.asarray(tree["one"]))
    assert float(bits) == 64 * sum(max(1, math.floor(0.1 * v.size)) for v in tree.values())


@cache
def jitted_top_k(density):
    return jax.jit(C.top_k(density))


@settings(max_examples=12, deadline=None)
@given(
    size=st.sampled_from([1, 2, 3, 10, 17, 100, 257, 300]),
    density=st.sampled_from([0.001, 0.1, 0.33, 0.9]),
    seed=st.integers(0, 2**31 - 1),
)
def test_small_layers_match_lax_top_k_set(size, density, seed):
    rng = np.random.default_rng(seed)
    # Distinct magnitudes, random signs: no ties, so the top-k set is unique.
    x = jnp.asarray((rng.permutation(size) + 1.0) * rng.choice([-1.0, 1.0], size), jnp.float32)
    k = max(1, math.floor(density * size))
    out, _ = jitted_top_k(density)({"x": x}, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(out["x"]), np.asarray(lax_reference(x, k)))


@jax.jit
def _first_round_overflows(v):
    """Whether the first sample bracket's selected bucket holds more entries than its slots."""
    plan = R._plan(BIG_D, BIG_K)
    bits = R._abs_bits(v)
    padded = jnp.pad(bits, (0, 4 * plan.words - BIG_D), constant_values=-1).reshape(4, plan.words)
    return R._select_in_bracket(bits, padded, BIG_K, plan, *R._sample_bracket(bits, plan))[4]


def test_fast_path_matches_lax_top_k_on_random_data():
    cluster = jax.random.uniform(jax.random.key(15), (1, BIG_D)) < 3e-3
    xs = jnp.concatenate([
        jax.random.normal(jax.random.key(10), (1, BIG_D)),
        # a cluster of far outliers (0.3% of entries, 1e4 x): the first bracket's bucket
        # overflows and the second round on the refined bracket resolves it
        jax.random.normal(jax.random.key(16), (1, BIG_D)) * jnp.where(cluster, 1e4, 1.0),
        jax.random.laplace(jax.random.key(11), (1, BIG_D)) * 1e-3,          # heavy tails, small
        jax.random.cauchy(jax.random.key(12), (1, BIG_D)),                  # outliers
        # gradient-like: most entries exactly zero (dead inputs), a dense rest
        jax.random.normal(jax.random.key(13), (2, BIG_D))
        * (jax.random.uniform(jax.random.key(14), (2, BIG_D)) < 0.2),
    ])
    out, ok = big_select()(xs)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(big_reference()(xs)))
    assert np.all(np.count_nonzero(np.asarray(out), axis=1) == BIG_K)
    # These inputs are what the fast path is for: none of them needed the fallback.
    assert bool(ok.all())
    # ... and the outlier cluster did take the second round (its first bucket overflowed)
    assert bool(_first_round_overflows(xs[1])) and not bool(_first_round_overflows(xs[0]))
    # vmap over rows equals one row at a time
    single = jax.jit(lambda v: C.top_k_select(v, BIG_K))
    for w in (0, 3):
        np.testing.assert_array_equal(np.asarray(out[w]), np.asarray(single(xs[w])))


def test_fast_path_ties_and_fallback_keep_exactly_k():
    rng = np.random.default_rng(0)
    base = rng.standard_normal(BIG_D).astype(np.float32)
    # Ties at the threshold inside the bracket: copy the k-th magnitude onto 37 more entries
    # (random signs) so the fast path's own tie cut must pick the lowest positions.
    tied = base.copy()
    kth = np.sort(np.abs(base))[::-1][BIG_K - 1]
    where = rng.choice(BIG_D, 37, replace=False)
    tied[where] = kth * rng.choice([-1.0, 1.0], 37)
    # Fewer nonzeros than k (a worker's all-zero row, dead units): zeros make up the count.
    sparse = np.zeros(BIG_D, np.float32)
    sparse[rng.choice(BIG_D, BIG_K // 3, replace=False)] = rng.standard_normal(BIG_K // 3)
    # Fallbacks: all equal (one giant bucket) and a quantised vector (huge bucket), and a
    # vector the fixed sample misrepresents (small at the sampled positions only).
    plan = R._plan(BIG_D, BIG_K)
    fooled = np.full(BIG_D, 5.0, np.float32) + rng.random(BIG_D).astype(np.float32)
    fooled[np.asarray(plan.sample)] = 1e-3
    xs = jnp.asarray(np.stack([
        tied, -np.ones(BIG_D, np.float32), np.round(base * 2) / 2, fooled, sparse, base,
    ]))
    out, ok = big_select()(xs)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(big_reference()(xs)))
    counts = np.count_nonzero(np.asarray(out), axis=1)
    assert np.all(counts[[0, 1, 2, 3, 5]] == BIG_K) and counts[4] == BIG_K // 3
    assert bool(ok[0]) and bool(ok[4]) and bool(ok[5])   # ties, zeros: on the fast path
    assert not bool(ok[1]) and not bool(ok[3])           # these went through the fallback


def test_all_equal_vector_keeps_exactly_k_small():
    x = jnp.full((50,), 3.0)
    out, bits = C.top_k(0.1)({"x": x}, jax.random.key(0))
    assert int(jnp.count_nonzero(out["x"])) == 5
    np.testing.assert_array_equal(np.asarray(out["x"]), np.asarray(lax_reference(x, 5)))
    assert float(bits) == 64 * 5


def _check_select(x, k):
    out = jax.jit(lambda v: C.top_k_select(v, k))(x)
    assert out.dtype == x.dtype
    np.testing.assert_array_equal(np.asarray(out.astype(jnp.float32)),
                                  np.asarray(lax_reference(x, k).astype(jnp.float32)))


def test_k_one_and_bfloat16_on_fast_path():
    x = jax.random.normal(jax.random.key(5), (BIG_D,))
    _check_select(x, 1)
    _check_select(x.astype(jnp.bfloat16), BIG_K)


@pytest.mark.slow
@pytest.mark.parametrize("k,dtype", [(7, jnp.float32), (BIG_D // 2, jnp.float32),
                                     (BIG_K, jnp.float16), (4014, jnp.float32)])
def test_more_k_and_dtypes_on_fast_path(k, dtype):
    d = 401_408 if k == 4014 else BIG_D          # the SASG layer: 784 x 512, k = 1%
    for seed in range(3):
        _check_select(jax.random.normal(jax.random.key(seed), (d,)).astype(dtype), k)


def test_global_versus_per_layer_k():
    big = jnp.arange(1.0, 101.0) * 100.0     # 100 large entries
    small = jnp.arange(1.0, 101.0)           # 100 small entries
    tree = {"big": big, "small": small}
    per_layer, bits_l = C.top_k(0.1)(tree, jax.random.key(0))
    global_, bits_g = C.top_k(0.1, per_layer=False)(tree, jax.random.key(0))
    assert int(jnp.count_nonzero(per_layer["big"])) == 10
    assert int(jnp.count_nonzero(per_layer["small"])) == 10
    assert int(jnp.count_nonzero(global_["big"])) == 20      # k = floor(0.1 * 200), all large
    assert int(jnp.count_nonzero(global_["small"])) == 0
    assert float(bits_l) == float(bits_g) == 64 * 20
    # global k from the concatenated size, not the sum of per-layer floors
    uneven = {"a": jnp.arange(1.0, 16.0), "b": jnp.arange(1.0, 16.0) + 0.5}
    _, bits = C.top_k(0.1, per_layer=False)(uneven, jax.random.key(0))
    _, bits_pl = C.top_k(0.1)(uneven, jax.random.key(0))
    assert float(bits) == 64 * 3 and float(bits_pl) == 64 * 2


def test_approx_top_k_dgc():
    x = jax.random.normal(jax.random.key(6), (BIG_D,))
    out, bits = jax.jit(C.top_k(0.01, method="approx"))({"x": x}, jax.random.key(1))
    kept = int(jnp.count_nonzero(out["x"]))
    assert float(bits) == 64 * kept                      # bits count the entries kept
    assert 0.5 * BIG_K <= kept <= 2.0 * BIG_K            # a 1% sample: roughly k
    exact = lax_reference(x, BIG_K) != 0
    recall = float(jnp.sum(exact & (out["x"] != 0))) / BIG_K
    assert recall > 0.8
    # kept entries are exactly those above a threshold
    mags = jnp.abs(x)
    assert float(jnp.min(jnp.where(out["x"] != 0, mags, jnp.inf))) >= float(
        jnp.max(jnp.where(out["x"] == 0, mags, -jnp.inf)))


# ============================================================================= bits


def test_bits_formulas_on_known_tree():
    tree = tree_example()               # leaves of 200, 7 and 1 entries: d = 208
    comps = {
        "identity": C.identity(),
        "top_k": C.top_k(0.1),
        "top_k_16_8": C.top_k(0.1, index_bits=16, value_bits=8),
        "top_k_global": C.top_k(0.1, per_layer=False),
        "random_k": C.random_k(0.1),
        "qsgd4": C.qsgd(4), "qsgd1": C.qsgd(1), "qsgd255": C.qsgd(255),
        "sign": C.sign_scale(),
    }
    # One program for all of them: compilation dominates these tiny calls.
    bits = jax.jit(lambda t, k: {n: c(t, k)[1] for n, c in comps.items()})(tree, jax.random.key(0))
    for b in bits.values():
        assert b.dtype == jnp.float32 and b.shape == ()
    bits = {n: float(b) for n, b in bits.items()}
    assert bits["identity"] == 32 * 208
    # k = 20, max(1, floor(0.7)) = 1, max(1, floor(0.1)) = 1
    assert bits["top_k"] == 64 * 22
    assert bits["top_k_16_8"] == 24 * 22
    assert bits["top_k_global"] == 64 * 20          # floor(0.1 * 208)
    assert bits["random_k"] == 64 * 22
    # QSGD: 32 (norm) + d_l (1 sign + ceil(log2(s + 1)) level bits) per layer
    assert bits["qsgd4"] == (32 + 200 * 4) + (32 + 7 * 4) + (32 + 1 * 4)
    assert bits["qsgd1"] == 3 * 32 + 208 * 2
    assert bits["qsgd255"] == 3 * 32 + 208 * 9
    assert bits["sign"] == (200 + 32) + (7 + 32) + (1 + 32)


# ============================================================================= unbiasedness


def _mean_over_keys(comp, x, n):
    keys = jax.random.split(jax.random.key(42), n)
    out, _ = jax.jit(jax.vmap(comp, in_axes=(None, 0)))({"x": x}, keys)
    return np.asarray(out["x"], np.float64).mean(axis=0)


def test_random_k_unbiased():
    x = jnp.asarray(np.random.default_rng(1).standard_normal(20), jnp.float32)
    n, d, k = 10_000, 20, 5
    mean = _mean_over_keys(C.random_k(0.25), x, n)
    # Each coordinate is (d/k) x_i Bernoulli(k/d): sd of the mean = |x_i| sqrt((d/k - 1)/n).
    # 5 sd per coordinate: a false alarm has probability ~ 20 * 6e-7.
    sd = np.abs(np.asarray(x)) * math.sqrt((d / k - 1) / n)
    assert np.all(np.abs(mean - np.asarray(x)) <= 5 * sd + 1e-6)
    one, _ = C.random_k(0.25)({"x": x}, jax.random.key(0))
    assert int(jnp.count_nonzero(one["x"])) == k


def test_random_k_exact_count_on_fast_path():
    x = jax.random.normal(jax.random.key(8), (BIG_D,))
    out, bits = jax.jit(C.random_k(0.01))({"x": x}, jax.random.key(3))
    assert int(jnp.count_nonzero(out["x"])) == BIG_K and float(bits) == 64 * BIG_K
    kept = out["x"] != 0
    np.testing.assert_allclose(np.asarray(out["x"][kept]), np.asarray(x[kept] * 100), rtol=1e-6)


def test_qsgd_unbiased_and_on_the_grid():
    x = jnp.asarray(np.random.default_rng(2).standard_normal(16), jnp.float32)
    s, n = 3, 10_000
    mean = _mean_over_keys(C.qsgd(s), x, n)
    norm = float(jnp.linalg.norm(x))
    # Each entry is norm/s times a {l, l+1} Bernoulli: variance <= (norm/s)^2 / 4.
    sd = norm / (2 * s * math.sqrt(n))
    assert np.all(np.abs(mean - np.asarray(x)) <= 5 * sd)
    q, _ = C.qsgd(s)({"x": x}, jax.random.key(0))
    levels = np.asarray(q["x"]) / norm * s
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
    assert np.all(np.sign(levels) * np.sign(np.asarray(x)) >= 0)
    zero, _ = C.qsgd(s)({"x": jnp.zeros(5)}, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(zero["x"]), np.zeros(5))


# ============================================================================= sign


def test_sign_scale_by_hand():
    out, bits = C.sign_scale()({"x": jnp.array([1.0, -2.0, 0.0, 3.0])}, jax.random.key(0))
    # ||x||_1 / d = 6 / 4 = 1.5
    np.testing.assert_allclose(np.asarray(out["x"]), [1.5, -1.5, 0.0, 1.5])
    assert float(bits) == 4 + 32


# ============================================================================= error feedback


def _ef_rows(comp, grads, memory, key, send=None):
    """One error-feedback step of a stack of rows (the one implementation)."""
    w = jax.tree.leaves(grads)[0].shape[0]
    send = jnp.ones((w,), bool) if send is None else send
    return jax.jit(C.error_feedback, static_argnums=0)(comp, grads, memory,
                                                      jax.random.split(key, w), send)


@pytest.mark.parametrize("make", [
    lambda: C.top_k(0.1), lambda: C.top_k(0.1, method="approx"), lambda: C.random_k(0.2),
    lambda: C.qsgd(2), lambda: C.sign_scale(), lambda: C.identity(),
])
def test_error_feedback_conserves_mass(make):
    """m + e' = e + g for the rows that send, over two steps; rows that do not send keep
    their memory. Bitwise in the mask layout (each entry of v goes to one side); the dense
    layout rounds v - m once: |error| <= ulp(|v|)."""
    comp = make()
    base = tree_example()
    grads = jax.tree.map(lambda a: jnp.stack([a, -0.5 * a, 2.0 * a]), base)
    memory = C.init_memory(comp, base, 3)
    send = jnp.asarray([True, False, True])
    for step in range(2):
        before = memory.residual()
        msg, memory, bits = _ef_rows(comp, grads, memory, jax.random.key(step), send)
        after = memory.residual()
        assert bits.shape == (3,)
        for m, e0, e1, g in zip(*(jax.tree.leaves(t) for t in (msg, before, after, grads)),
                                strict=True):
            v = np.asarray(e0 + g)[[0, 2]]
            m_sent = np.asarray(m)[[0, 2]]
            got = np.asarray(m + e1)[[0, 2]]
            # e' = fl(v - m) and the check's fl(m + e') round once each, relative to the
            # larger of |v| and |m| (an unbiased compressor's m may exceed v): 2 ulp of that
            bound = 2 * np.finfo(np.float32).eps * np.maximum(np.abs(v), np.abs(m_sent))
            assert np.all(np.abs(got - v) <= bound), "m + e' = e + g up to rounding of v - m"
            np.testing.assert_array_equal(np.asarray(e1)[1], np.asarray(e0)[1])


def test_error_feedback_residual_stays_zero_at_density_one():
    comp = C.top_k(1.0)
    tree = jax.tree.map(lambda a: a[None], tree_example())
    memory = C.init_memory(comp, tree_example(), 1)
    for i in range(3):
        grad = jax.tree.map(lambda a, i=i: a * (i + 1), tree)
        message, memory, _ = _ef_rows(comp, grad, memory, jax.random.key(i))
        for e in jax.tree.leaves(memory.residual()):
            assert not np.any(np.asarray(e))
        for m, g in zip(jax.tree.leaves(message), jax.tree.leaves(grad), strict=True):
            np.testing.assert_array_equal(np.asarray(m), np.asarray(g))


@pytest.mark.parametrize("layout", ["mask", "dense"])
def test_error_feedback_top_k_residual_is_the_unsent_part(layout):
    comp = C.top_k(0.5)
    if layout == "dense":   # the same selection through a plain compressor: dense residuals
        comp = (lambda c: lambda t, k: c(t, k))(comp)
    g = {"x": jnp.array([[3.0, -1.0, 0.5, -4.0]])}
    memory = C.init_memory(comp, {"x": jnp.zeros(4)}, 1)
    assert memory.masked == (layout == "mask")
    m, memory, _ = _ef_rows(comp, g, memory, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(m["x"][0]), [3.0, 0.0, 0.0, -4.0])
    np.testing.assert_array_equal(np.asarray(memory.residual()["x"][0]), [0.0, -1.0, 0.5, 0.0])
    m, memory, _ = _ef_rows(comp, g, memory, jax.random.key(0))   # v = [3, -2, 1, -4]
    np.testing.assert_array_equal(np.asarray(m["x"][0]), [3.0, 0.0, 0.0, -4.0])
    np.testing.assert_array_equal(np.asarray(memory.residual()["x"][0]), [0.0, -2.0, 1.0, 0.0])


# ============================================================================= vmap


@pytest.mark.parametrize("name,kwargs", [
    ("identity", {}), ("top_k", {"density": 0.1}),
    ("top_k", {"density": 0.1, "method": "approx"}),
    ("top_k", {"density": 0.05, "per_layer": False}),
    ("random_k", {"density": 0.1}), ("qsgd", {"levels": 4}), ("sign", {}),
])
def test_vmap_over_workers_equals_python_loop(name, kwargs):
    comp = C.make_compressor(name, **kwargs)
    workers = 3
    keys = jax.random.split(jax.random.key(7), workers)
    base = tree_example()
    trees = jax.tree.map(
        lambda a: jnp.stack([a * (w + 1) + 0.01 * w for w in range(workers)]), base)
    out_v, bits_v = jax.jit(jax.vmap(comp))(trees, keys)
    single = jax.jit(comp)
    for w in range(workers):
        tree_w = jax.tree.map(lambda a, w=w: a[w], trees)
        out_w, bits_w = single(tree_w, keys[w])
        for a, b in zip(jax.tree.leaves(out_v), jax.tree.leaves(out_w), strict=True):
            np.testing.assert_allclose(np.asarray(a[w]), np.asarray(b), rtol=1e-6, atol=1e-7)
        assert float(bits_v[w]) == float(bits_w)


# ============================================================================= validation


@pytest.mark.parametrize("call,needle", [
    (lambda: C.make_compressor("topk", density=0.1), "'topk'"),
    (lambda: C.make_compressor("top_k", density=0.0), "0.0"),
    (lambda: C.make_compressor("top_k", density=1.5), "1.5"),
    (lambda: C.make_compressor("random_k", density=-0.1), "-0.1"),
    (lambda: C.make_compressor("qsgd", levels=0), "levels"),
    (lambda: C.make_compressor("qsgd", levels=2.5), "2.5"),
    (lambda: C.make_compressor("top_k", density=0.1, method="fast"), "'fast'"),
    (lambda: C.make_compressor("top_k", density=0.1, bogus=1), "bogus"),
    (lambda: C.make_compressor("top_k", density="a lot"), "a lot"),
    (lambda: C.top_k(0.1, index_bits=0), "index_bits"),
])
def test_bad_names_and_values_raise_one_line(call, needle):
    with pytest.raises(ValueError) as err:
        call()
    message = str(err.value)
    assert needle in message and "\n" not in message


def test_registry_names():
    assert set(C.COMPRESSORS) == {
        "identity", "top_k", "random_k", "qsgd", "sign", "fp16", "onebit", "signum", "terngrad",
        "natural", "threshold", "powersgd", "dgc", "fo_sgd", "perm_k", "rand_k_unbiased"}
    tree = tree_example()
    comps = [C.make_compressor(name, **kwargs) for name, kwargs in [
        ("identity", {}), ("top_k", {"density": 0.5}), ("random_k", {"density": 0.5}),
        ("qsgd", {"levels": 2}), ("sign", {})]]
    results = jax.jit(lambda t, k: [c(t, k) for c in comps])(tree, jax.random.key(0))
    for out, bits in results:
        assert jax.tree.structure(out) == jax.tree.structure(tree)
        assert float(bits) > 0


def test_no_name_shadows_its_module():
    """``import jaxasync.compress as C`` gives the module (the transform is ``compress_rows``),
    and no other package attribute hides a submodule of the same name."""
    import importlib
    import pkgutil

    import jaxasync as ja

    assert importlib.import_module("jaxasync.compress") is ja.compress
    assert callable(ja.compress_rows) and ja.compress_rows.__module__ == "jaxasync.row_transforms"
    assert ja.transforms.compress_rows is ja.compress_rows
    for info in pkgutil.iter_modules(ja.__path__):
        attr = getattr(ja, info.name, None)
        assert attr is None or isinstance(attr, type(ja)), f"ja.{info.name} shadows its module"


# ----------------------------------------------------------------------------- any algorithm


def _sim_with(compressor, algorithm="asgd", m=4, arrivals=1, steps=30, delay=None):
    from helpers import run_toy

    from jaxasync import delays as dl
    from jaxasync import sim
    cfg = sim.SimConfig(num_workers=m, arrivals=arrivals, batch_size=8, ring_size=8, steps=steps,
                        eval_every=steps, delay=delay or dl.DelayConfig(kind="uniform", high=3),
                        compressor=compressor)
    return run_toy(algorithm, cfg, {"learning_rate": 0.05})


def test_a_compressor_in_front_of_asgd_density_one_is_asgd_with_its_message_size():
    plain = _sim_with(None)
    full = _sim_with(("top_k", (("density", 1.0),), True))
    from helpers import assert_f32_close, sgd_roundings

    assert_f32_close(full.final_state.params["w"], plain.final_state.params["w"],
                     roundings=sgd_roundings(30, d=8, batch=8),
                     why="two programs (top-1.0 selects everything, the residual is v - v = 0); "
                         "30 steps x (8-term dot, mean of 8, 3 ops), adding up")
    hp, hf = plain.history[0][-1], full.history[0][-1]
    # 8 parameters: 32 * 8 bits dense, 64 * 8 as a top-k message (value + index)
    assert hp["bits_up"] == 30 * 256 and hf["bits_up"] == 30 * 512


def test_error_feedback_memories_belong_to_the_workers_that_arrived():
    from jaxasync.transforms import CompressState, find_states

    # 8 workers, one arrival per step, 3 steps: at most 3 workers ever compressed anything
    r = _sim_with(("random_k", (("density", 0.25),), True), m=8, steps=3)
    (state,) = find_states(r.final_state.opt_state, CompressState)
    err = np.asarray(state.memory.error["w"][0])             # [M, 8] for the one seed
    nonzero = np.flatnonzero(np.abs(err).sum(axis=1))
    assert err.shape == (8, 8) and 1 <= nonzero.size <= 3
    # random-k keeps 2 of 8 (scaled by 4): each residual is v minus that message, so it is
    # nonzero outside the kept coordinates
    assert all(np.count_nonzero(err[i]) >= 6 for i in nonzero)


def test_synchronous_error_feedback_reads_its_memories_in_place():
    # Synchronous rows are the workers 0..M-1 in order, and the simulator says so statically
    # (worker_ids=None): the memories are then read and written whole, with no gather or
    # scatter over the worker axis (a scatter of Sparse's [10, 784, 512] memory cost 3 ms of
    # an 8 ms step on the MNIST FC protocol). The compiled step must hold no scatter.
    from helpers import least_squares, toy_data

    from jaxasync import delays as dl
    from jaxasync import sim
    from jaxasync.algorithms import get_algorithm

    wl = least_squares()
    hp = {"learning_rate": jnp.float32(0.05)}
    for name, static, compressor in [
            ("sparse", {"density": 0.25}, None),
            ("sgd_sum", {}, ("random_k", (("density", 0.25),), True))]:
        cfg = sim.SimConfig(num_workers=4, batch_size=8, ring_size=4, steps=4, eval_every=4,
                            delay=dl.DelayConfig(kind="none"), compressor=compressor)
        s = sim.Simulator(get_algorithm(name), static, wl, cfg)
        state = s.init(jax.random.PRNGKey(0), hp)
        text = jax.jit(s.step).lower(state, toy_data(wl, 4), hp).compile().as_text()
        # the memories are f32[4, 8] (M = 4 workers, 8 parameters); small int32 counters
        # may still be scattered
        for op in ("gather", "scatter"):
            assert not re.search(rf"= f32\[4,8\]\S* {op}\(", text), (name, op)


def test_the_counters_charge_the_compressors_message_size():
    from jaxasync import delays as dl
    r = _sim_with(("qsgd", (("levels", 4),), False), algorithm="sync_sgd", arrivals=4, steps=5,
                  delay=dl.DelayConfig(kind="none"))
    _, bits = C.make_compressor("qsgd", levels=4)({"w": jnp.ones((8,))}, jax.random.PRNGKey(0))
    h = r.history[0][-1]
    assert h["uploads"] == 20 and h["bits_up"] == pytest.approx(20 * float(bits))
    assert float(bits) < 32 * 8


# ----------------------------------------------------------------------------- mask form


def _tree_for_masks():
    # a big leaf (fast exact path) with exact zeros and 50 entries tied at its k-th magnitude,
    # a small leaf (jax.lax.top_k path) and a scalar
    big = np.array(jax.random.normal(jax.random.key(11), (BIG_D,)))
    big[:3000] = 0.0
    kth = np.sort(np.abs(big))[::-1][BIG_K - 1]
    tied = np.random.default_rng(1).choice(np.arange(3000, BIG_D), 50, replace=False)
    big[tied] = kth * np.sign(big[tied])
    small = jax.random.normal(jax.random.key(12), (30, 7))
    return {"big": jnp.asarray(big.reshape(200, 200)), "small": small, "s": jnp.float32(-2.5)}


@pytest.mark.parametrize("per_layer", [True, False])
def test_top_k_selection_splits_each_entry_to_one_side_exactly(per_layer):
    tree = _tree_for_masks()
    key = jax.random.key(3)
    # (each method compiles the fast path once more: the global case checks the exact one)
    methods = ("exact", "lax", "approx") if per_layer else ("exact",)
    for method in methods:
        comp = C.top_k(0.01, per_layer=per_layer, method=method)
        assert isinstance(comp, C.MaskCompressor)
        sel, bits = jax.jit(comp.select)(tree, key)
        assert jax.tree.structure(sel) == jax.tree.structure(tree)
        assert all(s.shape == (2,) and s.dtype == jnp.int32 for s in jax.tree.leaves(sel))
        msg, res = jax.jit(C.apply_selection)(tree, sel)
        for x, m, r in zip(*(jax.tree.leaves(t) for t in (tree, msg, res)), strict=True):
            x, m, r = np.asarray(x), np.asarray(m), np.asarray(r)
            np.testing.assert_array_equal(np.where(m != 0, m, r), x)   # every entry, one side
            assert not np.any((m != 0) & (r != 0))
        # calling the compressor is select + apply
        called, called_bits = jax.jit(comp)(tree, key)
        jax.tree.map(np.testing.assert_array_equal, called, msg)
        assert float(called_bits) == float(bits)
        kept = sum(int(jnp.count_nonzero(m)) for m in jax.tree.leaves(msg))
        assert float(bits) == 64 * kept
    # exact and lax keep jax.lax.top_k's set, per layer or over the concatenation
    flat = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])
    for method in methods[:2]:
        msg, _ = jax.jit(C.top_k(0.01, per_layer=per_layer, method=method))(tree, key)
        if per_layer:
            for x, m in zip(jax.tree.leaves(tree), jax.tree.leaves(msg), strict=True):
                k = C.top_k_count(0.01, x.size)
                want = x if k >= x.size else lax_reference(x, k)
                np.testing.assert_array_equal(m, want)
        else:
            got = jnp.concatenate([jnp.ravel(m) for m in jax.tree.leaves(msg)])
            np.testing.assert_array_equal(got, lax_reference(flat, C.top_k_count(0.01, flat.size)))


def test_top_k_threshold_is_the_selection_of_top_k_select():
    x = _tree_for_masks()["big"].ravel()
    v, cut = jax.jit(C.top_k_threshold, static_argnums=1)(x, BIG_K)
    bits = np.asarray(jax.lax.bitcast_convert_type(jnp.abs(x), jnp.int32))
    pos = np.arange(x.size)
    keep = (bits > int(v)) | ((bits == int(v)) & (pos <= int(cut)))
    assert keep.sum() == BIG_K
    np.testing.assert_array_equal(np.where(keep, x, 0.0), lax_reference(x, BIG_K))
    # 50 ties at the k-th magnitude: the cut keeps the first of them in flat order
    assert int(cut) < x.size - 1
    # k >= d keeps everything
    v_all, cut_all = C.top_k_threshold(x[:10], 10)
    assert int(v_all) == -1 and int(cut_all) == -1


def test_apply_selection_keeps_above_v_and_ties_up_to_the_cut_by_hand():
    # |x| bit patterns: 2.0 > 1.0 (three ties, at flat positions 1, 3, 4) > 0.5 > 0
    x = jnp.asarray([[0.5, -1.0, 2.0], [1.0, -1.0, 0.0]], jnp.float32)
    one = int(jax.lax.bitcast_convert_type(jnp.float32(1.0), jnp.int32))
    cases = {                                      # (v, cut) -> kept flat positions
        (one, 3): {1, 2, 3},                       # ties at 1 and 3 kept, 4 cut
        (one, 0): {2},                             # every tie cut
        (one, 2**31 - 1): {1, 2, 3, 4},            # every tie kept
        (-1, -1): {0, 1, 2, 3, 4, 5},              # k >= d: everything, zeros included
        (-(2**31), 5): {0, 1, 2, 3, 4, 5},         # any v < 0 keeps all (v - 1 must not wrap)
        (0, -1): {0, 1, 2, 3, 4},                  # keep |x| > 0
    }
    for (v, cut), kept in cases.items():
        msg, res = C.apply_selection(x, jnp.asarray([v, cut], jnp.int32))
        want = np.zeros(6, bool)
        want[list(kept)] = True
        flat = np.asarray(x).ravel()
        np.testing.assert_array_equal(np.asarray(msg).ravel(), np.where(want, flat, 0.0),
                                      err_msg=f"(v, cut) = {(v, cut)}")
        np.testing.assert_array_equal(np.asarray(res).ravel(), np.where(want, 0.0, flat))


def test_split_selection_shifts_the_tie_cut_to_each_piece():
    sel = jnp.asarray([1234, 57], jnp.int32)
    np.testing.assert_array_equal(C.split_selection(sel, 50), [1234, 7])
    np.testing.assert_array_equal(C.split_selection(sel, 60), [1234, -3])   # no ties kept


def test_mask_form_error_feedback_equals_the_dense_memory_with_arrivals():
    # the same top-k through compress(): as a MaskCompressor (stores v and its selection) and
    # wrapped in a plain function (stores a dense residual); 2 of 5 workers arrive per step,
    # one of them sometimes masked out, so memories must follow the workers that sent
    import jaxasync as ja
    from jaxasync.transforms import CompressState, find_states, keep_decisions

    top = C.top_k(0.2)
    plain = lambda tree, key: top(tree, key)                  # noqa: E731
    p = {"a": jnp.zeros((6, 5)), "b": jnp.zeros((9,))}
    states, outs = {}, {}
    for name, comp in (("mask", top), ("dense", plain)):
        tx = ja.compress_rows(comp, error_feedback=True, num_workers=5)
        s = keep_decisions(tx, 2).init(p)
        update = jax.jit(tx.update)
        outs[name] = []
        for t in range(12):
            k = jax.random.key(t)
            g = {"a": jax.random.normal(k, (2, 6, 5)),
                 "b": jax.random.normal(jax.random.fold_in(k, 1), (2, 9))}
            ids = jax.random.choice(jax.random.fold_in(k, 2), 5, (2,), replace=False)
            mask = jnp.asarray([True, t % 3 != 0])
            rows, s = update(g, s, p, worker_ids=ids.astype(jnp.int32), mask=mask)
            outs[name].append(rows)
        (states[name],) = find_states(s, CompressState)
    assert states["mask"].memory.masked and not states["dense"].memory.masked
    # Bitwise across the two programs: no rounding can differ. Both add v = e + g (one
    # addition of the same inputs, no product to contract into it), then only select entries
    # of v: message C(v), residual v - C(v) (v - v = 0 or v - 0 = v, exact) or v kept whole.
    for a, b in zip(outs["mask"], outs["dense"], strict=True):
        jax.tree.map(np.testing.assert_array_equal, a.grads, b.grads)
        np.testing.assert_array_equal(a.bits_up, b.bits_up)
    mem = states["mask"].residual()
    jax.tree.map(np.testing.assert_array_equal, mem, states["dense"].residual())
    assert sum(int(jnp.count_nonzero(e)) for e in jax.tree.leaves(mem)) > 0
