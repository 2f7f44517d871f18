"""Every registered compressor against what it states, from one table.

For each compressor the table gives its build arguments and its message size computed by
hand for a tiny tree (a 2x3 matrix, a scalar, a 5-vector: every layer kind). Driven for every
entry:

* the bits by hand;
* every layer kind keeps its shape and dtype, and the same key gives the same message;
* the guarantee the registry states (:mod:`jaxasync.compress.registry`): an unbiased
  compressor's Monte-Carlo mean over keys is within a tolerance derived from its variance,
  and its mean square error within its stated omega; a contractive one satisfies
  ||C(x) - x||^2 <= (1 - alpha) ||x||^2 on varied inputs (dense, sparse, constant, tiny).

Then the specific claims: PowerSGD at full rank is exact and its warm start is a power
iteration, DGC at density 1 is momentum SGD (SGD with masking), PermK's blocks partition the
coordinates, the threshold is re-estimated every N calls, the one-bit, TernGrad and natural
messages by hand, the Walsh-Hadamard transform against the matrix.
"""

from __future__ import annotations

import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxasync as ja

C = importlib.import_module("jaxasync.compress")
EPS32 = float(np.finfo(np.float32).eps)


def tiny():
    """A 2x3 matrix, a scalar, a 5-vector (leaves in key order: m, s, v)."""
    k = jax.random.split(jax.random.PRNGKey(3), 3)
    return {"m": jax.random.normal(k[0], (2, 3)), "s": jax.random.normal(k[1], ()) + 2.0,
            "v": jax.random.normal(k[2], (5,))}


def _nnz(msg):
    return sum(int(np.count_nonzero(np.asarray(x))) for x in jax.tree.leaves(msg))


def _above(tree, lam):
    return sum(int(np.sum(np.abs(np.asarray(x)) > lam)) for x in jax.tree.leaves(tree))


# name -> (build kwargs, bits(tree, message) by hand). d: m 6, s 1, v 5 (12 in all).
TABLE = {
    "identity": ({}, lambda t, m: 32 * 12),
    "top_k": ({"density": 0.25}, lambda t, m: 64 * (1 + 1 + 1)),      # k_l = max(1, h d_l)
    "random_k": ({"density": 0.25}, lambda t, m: 64 * (1 + 1 + 1)),
    "rand_k_unbiased": ({"k": 8}, lambda t, m: 32 * 8),               # values only
    "perm_k": ({"num_workers": 4}, lambda t, m: 32 * 3),              # 12 / 4 per block
    "qsgd": ({"levels": 4}, lambda t, m: (32 + 4 * 6) + (32 + 4) + (32 + 4 * 5)),  # 1+3 bits
    "sign": ({}, lambda t, m: (6 + 32) + (1 + 32) + (5 + 32)),
    "signum": ({"momentum": 0.9}, lambda t, m: 12),
    "onebit": ({}, lambda t, m: (6 + 64) + (1 + 64) + (5 + 64)),
    "terngrad": ({}, lambda t, m: (2 * 6 + 32) + (2 + 32) + (2 * 5 + 32)),
    "natural": ({}, lambda t, m: 9 * 12),
    "fp16": ({}, lambda t, m: 16 * 12),
    "threshold": ({"threshold": 0.5}, lambda t, m: 64 * _above(t, 0.5)),
    "dgc": ({"density": 0.25}, lambda t, m: 64 * _nnz(m)),
    # the 2x3 matrix at rank 1: 32 (2 + 3); the scalar and vector sent whole
    "powersgd": ({"rank": 1, "min_compression_rate": 0.0}, lambda t, m: 32 * 5 + 32 * 6),
    # padded to 8, 1, 8 entries, one bit each, and a float32 lambda per layer
    "fo_sgd": ({}, lambda t, m: (8 + 32) + (1 + 32) + (8 + 32)),
}


def test_the_table_covers_every_registered_compressor():
    assert set(TABLE) == set(C.COMPRESSORS)


def test_no_name_of_the_package_hides_a_module():
    import pkgutil

    for info in pkgutil.iter_modules(C.__path__):
        attr = getattr(C, info.name, None)
        assert attr is None or isinstance(attr, type(C)), f"compress.{info.name} hides its module"


def _build(name):
    return C.make_compressor(name, **TABLE[name][0])


@pytest.mark.parametrize("name", sorted(TABLE))
def test_bits_by_hand_every_layer_kind_and_determinism(name):
    comp, tree = _build(name), tiny()
    run = jax.jit(comp)
    msg, bits = run(tree, jax.random.PRNGKey(7))
    assert float(bits) == TABLE[name][1](tree, msg)
    for out, leaf in zip(jax.tree.leaves(msg), jax.tree.leaves(tree), strict=True):
        assert out.shape == leaf.shape and out.dtype == leaf.dtype
        assert np.all(np.isfinite(np.asarray(out)))
    again, bits2 = run(tree, jax.random.PRNGKey(7))
    for a, b in zip(jax.tree.leaves(msg), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)                 # one program, same key: bitwise
    assert float(bits2) == float(bits)


# ----------------------------------------------------------------------------- guarantees


def _inputs():
    """Varied inputs: dense Gaussian, heavy-tailed, 1-sparse, constant, tiny magnitudes."""
    base = tiny()
    leaves, tdef = jax.tree.flatten(base)
    k = jax.random.split(jax.random.PRNGKey(5), 4)
    heavy = [jax.random.cauchy(kk, leaf.shape) for kk, leaf in zip(k, leaves, strict=False)]
    sparse = [jnp.zeros_like(leaf) for leaf in leaves]
    sparse[2] = sparse[2].at[3].set(-4.0)
    const = [jnp.full(leaf.shape, 0.7) for leaf in leaves]
    tiny_mag = [leaf * 1e-3 for leaf in leaves]
    return [base] + [tdef.unflatten(x) for x in (heavy, sparse, const, tiny_mag)]


def _sq(tree):
    return float(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(tree)))


def _sq_err(a, b):
    return float(sum(np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2)
                     for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)))


def _samples(comp, tree, n):
    """n messages of ``tree``: over n keys; for a stateful compressor over n successive calls
    of worker 0 (PermK draws its randomness from its call count)."""
    keys = jax.random.split(jax.random.PRNGKey(11), n)
    if not C.is_stateful(comp):
        return jax.jit(jax.vmap(lambda k: comp(tree, k)[0]))(keys)

    def body(state, key):
        msg, state, _ = comp.step(tree, state, key)
        return state, msg

    return jax.jit(lambda ks: jax.lax.scan(body, comp.init(tree, jnp.int32(0)), ks)[1])(keys)


UNBIASED = sorted(n for n, s in C.COMPRESSORS.items() if s.unbiased and s.omega is not None)
CONTRACTIVE = sorted(n for n, s in C.COMPRESSORS.items() if s.alpha is not None)


def test_every_compressor_states_a_guarantee_or_is_a_known_exception():
    stated = set(UNBIASED) | set(CONTRACTIVE)
    # sign without a scale is no contraction (||sign(x) - x|| may exceed ||x||): signum
    assert set(C.COMPRESSORS) - stated == {"signum"}


@pytest.mark.parametrize("name", UNBIASED)
def test_unbiased_mean_over_keys_and_variance_within_omega(name):
    spec, n = C.COMPRESSORS[name], 4000
    comp = _build(name)
    for tree in _inputs()[:3]:
        omega = spec.variance(C.leaf_sizes(tree), **TABLE[name][0])
        msgs = _samples(comp, tree, n)
        rows = [np.asarray(m, np.float64).reshape(n, -1) for m in jax.tree.leaves(msgs)]
        x = np.concatenate([np.asarray(v, np.float64).ravel() for v in jax.tree.leaves(tree)])
        samples = np.concatenate(rows, axis=1)
        mse = float(np.mean(np.sum((samples - x) ** 2, axis=1)))
        # the stated variance bound, with 10% for the Monte-Carlo error of the mean square
        assert mse <= 1.1 * omega * float(np.sum(x ** 2)) + 1e-9, (name, mse, omega)
        # each coordinate's mean is within 5 standard errors sqrt(var_i / n) (estimated):
        # for an unbiased compressor, over the 36 coordinates of the three inputs, a failure
        # has probability below 2e-5 (normal tails of the Monte-Carlo mean), plus float32
        # rounding of the messages (a few ulp of the largest entry)
        err = np.abs(samples.mean(axis=0) - x)
        tol = 5.0 * np.sqrt(samples.var(axis=0) / n) + 64 * EPS32 * np.abs(x).max()
        assert np.all(err <= tol), (name, err.max(), tol[np.argmax(err - tol)])


@pytest.mark.parametrize("name", CONTRACTIVE)
def test_contraction_with_the_stated_alpha(name):
    spec, comp = C.COMPRESSORS[name], _build(name)
    for i, tree in enumerate(_inputs()):
        alpha = spec.contraction(C.leaf_sizes(tree), **TABLE[name][0])
        if name == "fp16" and i == 4:
            continue        # fp16's alpha holds in float16's normal range only (docstring)
        for key in jax.random.split(jax.random.PRNGKey(i), 5):
            msg, _ = comp(tree, key)
            # float32 rounding of the message entries: a few ulp of ||x||^2
            assert _sq_err(msg, tree) <= (1 - alpha) * _sq(tree) * (1 + 8 * EPS32) + 1e-30, \
                (name, i, alpha)


def test_top_k_alpha_is_tight_on_a_constant_vector():
    tree = {"v": jnp.ones((8,))}
    comp = C.make_compressor("top_k", density=0.25)
    alpha = C.contraction(comp, tree)
    assert alpha == 0.25
    assert _sq_err(comp(tree, jax.random.PRNGKey(0))[0], tree) == pytest.approx(
        (1 - alpha) * _sq(tree))


# ----------------------------------------------------------------------------- specific claims


@pytest.mark.parametrize("shape", [(6, 7), (7, 6), (3, 4, 5)])
def test_powersgd_at_full_rank_is_exact(shape):
    m = jax.random.normal(jax.random.PRNGKey(1), shape)
    rank = min(int(np.prod(shape[:-1])), shape[-1])
    for warm in (True, False):
        comp = C.powersgd(rank=rank, warm_start=warm, min_compression_rate=0.0)
        out, bits = comp({"w": m}, jax.random.PRNGKey(2))
        # a QR and two matmuls of at most 20 x 5: a few hundred ulp of ||M||
        np.testing.assert_allclose(out["w"], m, atol=300 * EPS32 * float(jnp.linalg.norm(m)),
                                   err_msg="full rank PowerSGD is M up to float32 rounding")
    rank_deficient = jnp.outer(jnp.arange(1.0, 7.0), jnp.ones(7))           # rank 1
    out, _ = C.powersgd(rank=6, min_compression_rate=0.0)({"w": rank_deficient},
                                                          jax.random.PRNGKey(0))
    np.testing.assert_allclose(out["w"], rank_deficient, atol=1e-4)


def test_powersgd_warm_start_is_a_power_iteration():
    """Compressing the same matrix again and again: with warm start, the rank-1 error falls to
    the best rank-1 error (sigma_2^2 + ...); redrawing Q each call does not get there."""
    key = jax.random.PRNGKey(4)
    u, _ = jnp.linalg.qr(jax.random.normal(key, (8, 8)))
    v, _ = jnp.linalg.qr(jax.random.normal(jax.random.fold_in(key, 1), (6, 6)))
    s = jnp.array([3.0, 1.0, 0.5, 0.2, 0.1, 0.05])
    m = (u[:, :6] * s) @ v.T
    best = float(jnp.sum(s[1:] ** 2))
    errs = {}
    for warm in (True, False):
        comp = C.powersgd(rank=1, warm_start=warm, min_compression_rate=0.0)
        state = comp.init({"w": m}, jnp.int32(0))
        for t in range(30):
            out, state, _ = comp.step({"w": m}, state, jax.random.PRNGKey(t))
        errs[warm] = float(jnp.sum((out["w"] - m) ** 2))
    assert errs[True] == pytest.approx(best, rel=1e-4)
    assert errs[False] > errs[True]


def test_powersgd_start_step_and_one_d_leaves_are_sent_whole():
    comp = C.powersgd(rank=1, start_step=2, min_compression_rate=0.0)
    tree = {"b": jnp.arange(4.0), "w": jax.random.normal(jax.random.PRNGKey(0), (5, 6))}
    state = comp.init(tree, jnp.int32(0))
    bits = []
    for t in range(3):
        out, state, b = comp.step(tree, state, jax.random.PRNGKey(t))
        bits.append(float(b))
        np.testing.assert_array_equal(out["b"], tree["b"])
        if t < 2:
            np.testing.assert_array_equal(out["w"], tree["w"])
    assert bits == [32 * 34, 32 * 34, 32 * 4 + 32 * 11]


def _dgc_run(masking, steps=6, lr=0.1, m=0.9):
    """DGC at density 1 in front of plain SGD (one worker) against optax's momentum SGD."""
    params = {"w": jnp.array([1.0, -2.0, 0.5])}
    grads = [{"w": jnp.array([0.3, -0.1, 0.2]) * (t + 1) + params["w"] * 0.01}
             for t in range(steps)]
    comp = C.dgc(density=1.0, momentum=m, masking=masking)
    tx = optax.chain(ja.compress_rows(comp, error_feedback=True, num_workers=1),
                     ja.asgd(learning_rate=lr))
    ref = optax.sgd(lr, momentum=m if not masking else None)
    s, r = tx.init(params), ref.init(params)
    p, q = params, params
    for g in grads:
        u, s = tx.update(jax.tree.map(lambda x: x[None], g), s, p,
                         staleness=jnp.zeros((1,), jnp.int32), key=jax.random.PRNGKey(0))
        p = optax.apply_updates(p, u)
        v, r = ref.update(g, r, q)
        q = optax.apply_updates(q, v)
    return p, q


@pytest.mark.parametrize("masking", [False, True])
def test_dgc_at_density_one_is_momentum_sgd_or_with_masking_sgd(masking):
    p, q = _dgc_run(masking)
    # two programs doing the same float32 arithmetic in a different order: a few ulp
    np.testing.assert_allclose(p["w"], q["w"], rtol=16 * EPS32, atol=16 * EPS32,
                               err_msg="DGC at density 1 vs optax.sgd, float32 ulps")


def test_dgc_warmup_densities_by_hand():
    dgc_density = importlib.import_module("jaxasync.compress.thresholding").dgc_density
    got = [float(dgc_density(0.001, jnp.int32(c), 10, 4)) for c in
           (0, 9, 10, 20, 30, 39, 40, 1000)]
    assert got == pytest.approx([0.25, 0.25, 0.0625, 0.015625, 0.00390625, 0.00390625, 0.001,
                                 0.001])


def test_dgc_local_clipping_rescales_by_the_norm():
    comp = C.dgc(density=1.0, momentum=0.0, masking=False, clip_norm=2.0, num_workers=4)
    g = {"w": jnp.array([3.0, 4.0])}                      # norm 5, local threshold 2/sqrt(4)
    out, _ = comp(g, jax.random.PRNGKey(0))
    np.testing.assert_allclose(out["w"], [0.6, 0.8], rtol=4 * EPS32)


def test_perm_k_blocks_partition_the_coordinates():
    n = 4
    comp = C.perm_k(num_workers=n)
    tree = {"a": jax.random.normal(jax.random.PRNGKey(0), (7,)), "b": jnp.arange(1.0, 7.0)}
    for call in range(3):
        msgs = []
        for w in range(n):
            state = {**comp.init(tree, jnp.int32(w)), "count": jnp.int32(call)}
            msgs.append(comp.step(tree, state, jax.random.PRNGKey(0))[0])
        total = jax.tree.map(lambda *xs: sum(xs), *msgs)
        # disjoint blocks that cover everything: the sum is n x exactly
        for a, b in zip(jax.tree.leaves(total), jax.tree.leaves(tree), strict=True):
            np.testing.assert_array_equal(a, n * b)
        sizes = sorted(_nnz(m) for m in msgs)
        assert sizes == [3, 3, 3, 4]                      # 13 = 4 + 3 + 3 + 3 (KAUST blocks)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 10, 13, 16, 17, 31, 97, 1009, 5120, 401408,
                                  407050])
def test_static_feistel_is_a_permutation_of_any_size(size):
    from jaxasync import _feistel

    a, b = _feistel.mixed_radix(size)
    assert a * b >= size and 2 <= a <= b
    if size in (5120, 401408, 407050):
        assert a * b == size                              # the SASG sizes: no walking
    for seed in range(3):
        pi = np.asarray(jax.jit(lambda k: _feistel.permute_static(k, size, jnp.arange(size)))(
            jax.random.PRNGKey(seed)))
        np.testing.assert_array_equal(np.sort(pi), np.arange(size))


def _inclusion(mask, d, k):
    """Inclusion frequencies of the subsets ``mask`` [N, d] against a uniform k-subset's.

    Each coordinate's, against k/d: within 5 binomial standard errors (over d coordinates a
    false alarm has probability below 1e-5). The pairs', against k(k-1)/(d(d-1)): their mean
    squared z-score (a chi-square over its degrees of freedom, about 1 for uniform subsets,
    its sd below 0.3 for the 45 or more pairs here) at most 2; a 4-round Feistel on 10
    coordinates measured 23, so this fails where the pairs are not uniform."""
    n = mask.shape[0]
    m = np.asarray(mask, np.float32)
    assert np.all(m.sum(axis=1) == k)                     # exactly k distinct coordinates
    p = k / d
    z = (m.mean(axis=0) - p) / np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(z) <= 5), ("coordinate", np.abs(z).max())
    if k > 1:
        p = k * (k - 1) / (d * (d - 1))
        both = np.asarray(m.T @ m, np.float64)[np.triu_indices(d, 1)] / n
        z = (both - p) / np.sqrt(p * (1 - p) / n)
        assert np.mean(z ** 2) <= 2.0, ("pair", np.mean(z ** 2))


@pytest.mark.parametrize("d,k", [(10, 3), (13, 5), (16, 1), (300, 20), (512, 20)])
def test_random_subsets_are_uniform_k_subsets(d, k):
    from jaxasync.compress.sparsify import _image_mask

    keys = jax.random.split(jax.random.PRNGKey(1), 20000)
    _inclusion(jax.jit(jax.vmap(lambda kk: _image_mask(kk, d, k)))(keys), d, k)
    # random_k and rand_k_unbiased send exactly those coordinates, scaled by d / k
    x = {"v": jnp.arange(1.0, d + 1.0)}
    for comp in (C.random_k(k / d), C.rand_k_unbiased(k=k)):
        msg = jax.jit(jax.vmap(lambda kk, c=comp: c(x, kk)[0]["v"]))(keys[:2000])
        sent = np.asarray(msg) != 0
        assert np.all(sent.sum(axis=1) == k)
        np.testing.assert_allclose(np.asarray(msg)[sent], (np.asarray(x["v"]) * d / k)[
            np.nonzero(sent)[1]], rtol=1e-6)


def test_perm_k_blocks_are_uniform_and_partition_every_call():
    n, d = 3, 11                                          # blocks of 4, 4, 3
    comp = C.perm_k(num_workers=n)
    tree = {"a": jnp.ones((2, 3)), "b": jnp.ones((5,))}

    def call(count):
        msgs = [comp.step(tree, {**comp.init(tree, jnp.int32(w)), "count": count},
                          jax.random.PRNGKey(0))[0] for w in range(n)]
        return jnp.stack([jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(m)])
                          for m in msgs])

    sent = np.asarray(jax.jit(jax.vmap(call))(jnp.arange(6000))) != 0     # [calls, n, d]
    np.testing.assert_array_equal(sent.sum(axis=1), 1)   # every coordinate in one block
    assert sorted(sent[0].sum(axis=1)) == [3, 4, 4]
    # worker 0's block is a uniform subset of its size: coordinates 1/n each (unbiased)
    for size_ in (3, 4):
        rows = sent[:, 0][sent[:, 0].sum(axis=1) == size_]
        _inclusion(rows, d, size_)


def test_threshold_is_re_estimated_every_period_calls():
    comp = C.threshold(density=0.25, period=3)
    x = {"v": jnp.arange(1.0, 9.0)}                       # top-2 threshold: 7
    state = comp.init(x, jnp.int32(0))
    kept = []
    for t, scale in enumerate([1.0, 2.0, 2.0, 2.0, 0.5]):
        out, state, bits = comp.step(jax.tree.map(lambda a, s=scale: a * s, x), state,
                                     jax.random.PRNGKey(t))
        kept.append(int(np.count_nonzero(out["v"])))
        assert float(bits) == 64 * kept[-1]
    # call 0 estimates lambda = 7 (keeps 7, 8); calls 1-2 reuse it on 2x (keeps 4..8 -> 2x >= 7:
    # 4, 5, 6, 7, 8); call 3 re-estimates on 2x (top-2); call 4 reuses lambda = 14 on x/2: none
    assert kept == [2, 5, 5, 2, 0]


def _entry_computation(hlo: str) -> str:
    return hlo[hlo.index("\nENTRY"):]


def test_when_is_not_hoisted_out_of_its_loop():
    """``when`` runs ``fn`` inside its loop: the compiled program's entry computation (what
    runs every call) holds no sort, the sort of ``fn`` lives in the loop's body only. An
    operand carried unchanged through the loop let XLA hoist ``fn`` out of it, and the
    threshold compressor ran its exact top-k on every call."""
    when = importlib.import_module("jaxasync.compress.base").when

    def call(need, x):
        return when(need, lambda t: jnp.sort(t), jnp.zeros_like(x), x)

    x = jnp.arange(64.0)[::-1]
    fn = jax.jit(jax.vmap(call))
    hlo = fn.lower(jnp.zeros(3, bool), jnp.stack([x] * 3)).compile().as_text()
    assert " sort(" in hlo and " sort(" not in _entry_computation(hlo), \
        "the sort of fn was hoisted out of when's loop"
    out = fn(jnp.array([True, False, True]), jnp.stack([x] * 3))
    np.testing.assert_array_equal(np.asarray(out), np.stack([np.sort(x), 0 * x, np.sort(x)]))


def test_random_bits_are_uniform_and_uncorrelated():
    """The counter-based draws behind every stochastic compressor, against what independent
    uniform 32-bit words would give, each check as a z-score (or a chi-square's) under that
    null, with a bound of 6 standard deviations (false alarm below 1e-8 per check):

    * the histogram of the top byte and of the low byte (256 bins each): chi-square;
    * each of the 32 bits: its mean;
    * neighbours at lags 1, 2, 3, 32, 1024 within one key, and the same entry under keys
      split from one key (the draws of consecutive calls): Pearson correlation of the
      uniforms, standard deviation 1/sqrt(n)."""
    random_bits = importlib.import_module("jaxasync.compress.base").random_bits
    n = 1 << 20
    keys = jax.random.split(jax.random.PRNGKey(11), 4)
    words = np.asarray(jax.jit(jax.vmap(lambda k: random_bits(k, (n,))))(keys), np.uint64)
    u = (words.astype(np.float64) + 0.5) / 2.0 ** 32
    for row in words:
        for byte in (row >> 24, row & 0xFF):
            counts = np.bincount(byte.astype(np.int64), minlength=256)
            chi2 = float(np.sum((counts - n / 256) ** 2 / (n / 256)))
            assert abs(chi2 - 255) < 6 * math.sqrt(2 * 255), f"byte histogram chi2 {chi2}"
        bits = (row[:, None] >> np.arange(32, dtype=np.uint64)) & 1
        z_bits = (bits.mean(axis=0) - 0.5) / (0.5 / math.sqrt(n))
        assert np.max(np.abs(z_bits)) < 6, f"bit balance z-scores {z_bits}"
    for lag in (1, 2, 3, 32, 1024):
        for row in u:
            r = np.corrcoef(row[:-lag], row[lag:])[0, 1]
            assert abs(r) * math.sqrt(n - lag) < 6, f"lag {lag}: correlation {r}"
    for a in range(len(keys)):
        for b in range(a + 1, len(keys)):
            r = np.corrcoef(u[a], u[b])[0, 1]
            assert abs(r) * math.sqrt(n) < 6, f"keys {a}, {b}: correlation {r}"


@pytest.mark.parametrize("size", [100, 32 * 300, 32 * 300 + 7])
def test_fused_sums_and_onebit_on_leaves_with_and_without_a_tail(size):
    """fused_sums (one pass: 32 rows, the tail of d mod 32 entries apart) against float64
    sums, and 1-bit SGD's class means built on them. Tolerance: a float32 sum of d terms is
    within d * 2^-24 * sum |x_i| of the exact sum (recursive summation's bound)."""
    fused_sums = importlib.import_module("jaxasync.compress.base").fused_sums
    x = jax.random.normal(jax.random.PRNGKey(size), (size,)) + 0.3
    terms = (lambda v: jnp.minimum(v, 0.0), lambda v: jnp.maximum(v, 0.0),
             lambda v: (v < 0).astype(jnp.float32))
    got = [float(s) for s in jax.jit(lambda v: fused_sums(v, terms))(x)]
    xn = np.asarray(x, np.float64)
    neg = xn < 0
    want = [xn[neg].sum(), xn[~neg].sum(), float(neg.sum())]
    tol = size * 2.0 ** -24 * np.abs(xn).sum()
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)
    assert got[2] == want[2]                              # a count below 2^24 is exact
    out, _ = C.onebit()({"v": x}, jax.random.PRNGKey(0))
    expect = np.where(neg, want[0] / want[2], want[1] / (size - want[2]))
    # the sums' error over the class sizes, and the rounding of the division (2^-23 relative)
    np.testing.assert_allclose(np.asarray(out["v"]), expect, rtol=2.0 ** -23,
                               atol=2 * tol / min(want[2], size - want[2]))


def test_onebit_by_hand():
    x = {"v": jnp.array([1.0, 2.0, -3.0, -1.0, 0.0])}
    out, bits = C.onebit()(x, jax.random.PRNGKey(0))
    np.testing.assert_allclose(out["v"], [1.0, 1.0, -2.0, -2.0, 1.0])
    assert float(bits) == 5 + 64
    cols = {"k": jnp.array([[1.0, -1.0], [3.0, -3.0], [-2.0, 5.0]])}
    out, bits = C.onebit(per_column=True)(cols, jax.random.PRNGKey(0))
    np.testing.assert_allclose(out["k"], [[2.0, -2.0], [2.0, -2.0], [-2.0, 5.0]])
    assert float(bits) == 6 + 64 * 2


def test_terngrad_and_natural_take_only_their_values():
    x = {"v": jax.random.normal(jax.random.PRNGKey(2), (1000,))}
    t, _ = C.terngrad()(x, jax.random.PRNGKey(1))
    s = float(jnp.max(jnp.abs(x["v"])))
    assert set(np.unique(np.abs(np.asarray(t["v"])))) <= {0.0, np.float32(s)}
    nat, _ = C.natural()(x, jax.random.PRNGKey(1))
    a, b = np.abs(np.asarray(x["v"])), np.abs(np.asarray(nat["v"]))
    lo = 2.0 ** np.floor(np.log2(a))
    assert np.all((b == lo) | (b == 2 * lo)) and np.all(np.sign(nat["v"]) == np.sign(x["v"]))


def test_fwht_is_the_sylvester_hadamard_matrix():
    from jaxasync.compress.hadamard import _sylvester, fwht

    for p in (0, 1, 3, 8, 11, 15):                     # 11: three blocks (5 + 5 + 1 bits)
        n = 1 << p
        x = jax.random.normal(jax.random.PRNGKey(p), (2, n))
        if p <= 11:
            np.testing.assert_allclose(fwht(x), x @ _sylvester(p), rtol=1e-5,
                                       atol=1e-5 * np.sqrt(n))
        # H H = n I: back to n x, up to float32 rounding of log2(n) levels of sums
        np.testing.assert_allclose(fwht(fwht(x)) / n, x, atol=4 * p * EPS32 * np.sqrt(n))
    with pytest.raises(ValueError, match="power of two"):
        fwht(jnp.zeros(6))


# ----------------------------------------------------------------------------- state per worker


def test_a_stateful_compressors_state_belongs_to_the_worker_that_arrived():
    """signum's momentum in compress_rows: only the arriving worker's advances, with or
    without error feedback (the state lives in the same memories)."""
    for feedback in (False, True):
        tx = ja.compress_rows(C.signum(0.5), error_feedback=feedback, num_workers=3)
        p = {"w": jnp.zeros(2)}
        state = tx.init(p)
        g = {"w": jnp.array([[1.0, -2.0]])}
        _, state = tx.update(g, state, p, worker_ids=jnp.array([2]), key=jax.random.PRNGKey(0))
        _, state = tx.update(g, state, p, worker_ids=jnp.array([2]), key=jax.random.PRNGKey(1))
        momentum = np.asarray(state.memory.state["w"])
        # m = 0.5 m + 0.5 g twice: 0.75 g for worker 2, zero for the others
        np.testing.assert_allclose(momentum, [[0, 0], [0, 0], [0.75, -1.5]])


def test_lazy_upload_carries_a_stateful_compressors_state():
    """The lazy family compresses with the same memories: PowerSGD's warm-start Q advances
    for the workers that upload (all of them in the warm-up)."""
    from jaxasync.lazy import lazy_upload

    comp = C.powersgd(rank=1, min_compression_rate=0.0)
    tx = lazy_upload(0.1, 2, threshold="never", compressor=comp, warmup=5)
    p = {"w": jnp.zeros((4, 3))}
    state = tx.init(p)
    q0 = np.asarray(state.memory.state["q"][0])
    g = {"w": jax.random.normal(jax.random.PRNGKey(0), (2, 4, 3))}
    out, state = tx.update(g, state, p, key=jax.random.PRNGKey(1))
    assert not np.allclose(np.asarray(state.memory.state["q"][0]), q0)
    assert np.asarray(state.memory.state["count"]).tolist() == [1, 1]
    assert float(jnp.sum(out.bits_up)) == 2 * 32 * (4 + 3)
