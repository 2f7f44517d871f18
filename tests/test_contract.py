"""One conformance table: every registered algorithm and compressor honours optax's contract.

Like optax's ``contrib/_common_test.py``: the registries *are* the table. Each
:class:`~jaxasync.algorithms.AlgorithmSpec` carries its example build arguments
(``register(..., example=...)``), each compressor its own, so a new registration is tested by
adding nothing but its entry. Driven for every entry:

* jit once: no recompilation on the second update;
* ``lax.scan`` over updates from ``tx.init`` (the state's structure, shapes and dtypes never
  change), and a stable state under ``lax.cond``;
* ``optax.inject_hyperparams`` equal to the plain factory;
* bf16 and float32 parameters;
* a masked row's gradient does not change the update;
* counters that add up;
* the declared parameters: bad values raise a one-line ``ValueError`` naming the argument;
* a 20-step simulator run that stays finite.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import least_squares, toy_data

import jaxasync as ja
from jaxasync import delays as dl
from jaxasync import sim
from jaxasync.side_info import SIDE_INFO, offered

ALGS = sorted(ja.ALGORITHMS)
COMPS = sorted(ja.COMPRESSORS)
EPS32 = float(np.finfo(np.float32).eps)
M = 4


def _params(dtype=jnp.float32):
    return {"a": jnp.zeros(5, dtype), "b": jnp.ones((2, 3), dtype)}


def _rows(spec) -> int:
    """Rows per update: all M workers for synchronous rounds, else the default arrivals
    (3 when one: several rows exercise the row logic)."""
    if spec.synchronous:
        return M
    return spec.arrivals if isinstance(spec.arrivals, int) and spec.arrivals > 1 else 3


def _grads(key, w, params):
    leaves, tdef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return tdef.unflatten([jax.random.normal(k, (w,) + p.shape).astype(p.dtype)
                           for k, p in zip(keys, leaves, strict=True)])


def _extra(spec, w, params, key, mask=None):
    """Every extra arg the simulator would offer, generated from the side-information
    table's declared shapes (a new entry of a known shape needs nothing here)."""
    out = {}
    k = jax.random.split(key, len(SIDE_INFO))
    for i, name in enumerate(offered(spec.needs)):
        shape = SIDE_INFO[name].shape
        if name == "mask":
            out[name] = jnp.ones((w,), bool) if mask is None else mask
        elif name == "worker_ids":
            out[name] = None if spec.synchronous else jnp.arange(w, dtype=jnp.int32)
        elif name == "key":
            out[name] = k[i]
        elif shape.startswith("int32[W]"):
            out[name] = jnp.zeros((w,), jnp.int32) if spec.synchronous else \
                jax.random.randint(k[i], (w,), 0, 4)
        elif shape == "[W, ...]":
            out[name] = jax.tree.map(lambda g: 0.01 * g, _grads(k[i], w, params))
        elif shape == "float32[W]":
            out[name] = jax.random.uniform(k[i], (w,), minval=0.0, maxval=0.1)
        elif shape == "float32[D]":
            out[name] = jnp.full((16,), 0.01, jnp.float32)
        elif shape == "int32[M]":
            out[name] = jax.random.randint(k[i], (M,), 0, 4)
        elif shape == "float32[M]":
            out[name] = jax.random.uniform(k[i], (M,), minval=0.5, maxval=1.0)
        else:
            raise AssertionError(f"side information {name!r} of shape {shape!r}: teach "
                                 "_extra how to make one")
    return out


def _build(spec, **over):
    return spec.build(**{**spec.example_kwargs(M), **over})


def _apply(params, updates):
    return jax.tree.map(lambda p, u: (p + u).astype(p.dtype), params, updates)


# ----------------------------------------------------------------------------- algorithms


@pytest.mark.parametrize("name", ALGS)
def test_jit_once_scan_and_cond_from_init(name):
    spec = ja.get_algorithm(name)
    tx, p, w = _build(spec), _params(), _rows(spec)
    state = tx.init(p)
    upd = jax.jit(tx.update)
    for t in range(2):
        key = jax.random.PRNGKey(t)
        u, state = upd(_grads(key, w, p), state, p, **_extra(spec, w, p, key))
    assert upd._cache_size() == 1, "the second update recompiled: the state's shape changed"

    def body(carry, key):
        params, s = carry
        u, s = tx.update(_grads(key, w, params), s, params, **_extra(spec, w, params, key))
        return (_apply(params, u), s), None

    init = tx.init(p)
    (p10, s10), _ = jax.lax.scan(body, (p, init), jax.random.split(jax.random.PRNGKey(9), 10))
    assert jax.tree.structure(s10) == jax.tree.structure(init)
    for a, b in zip(jax.tree.leaves(s10), jax.tree.leaves(init), strict=True):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(p10))

    key = jax.random.PRNGKey(3)
    g, extra = _grads(key, w, p), _extra(spec, w, p, key)
    for pred in (True, False):
        s = jax.lax.cond(pred, lambda s: tx.update(g, s, p, **extra)[1], lambda s: s, init)
        assert jax.tree.structure(s) == jax.tree.structure(init)


@pytest.mark.parametrize("name", ALGS)
def test_inject_hyperparams_equals_the_plain_factory(name):
    spec = ja.get_algorithm(name)
    kwargs = spec.example_kwargs(M)
    # the declared static parameters stay Python values (shapes, branches), the rest become
    # the injected (traced) hyperparameters
    static = tuple(sorted(spec.static() | {k for k, v in kwargs.items()
                                           if not isinstance(v, float)}))
    injected = optax.inject_hyperparams(spec.factory, static_args=static)(**kwargs)
    plain, p, w = spec.build(**kwargs), _params(), _rows(spec)
    s1, s2 = injected.init(p), plain.init(p)
    for t in range(2):
        key = jax.random.PRNGKey(t)
        g, extra = _grads(key, w, p), _extra(spec, w, p, key)
        u1, s1 = jax.jit(injected.update)(g, s1, p, **extra)
        u2, s2 = jax.jit(plain.update)(g, s2, p, **extra)
        for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2), strict=True):
            # two programs: hyperparameters as float32 arrays vs Python constants; the same
            # float32 values, which XLA may fold or order differently: a few ulp
            np.testing.assert_allclose(a, b, rtol=8 * EPS32, atol=8 * EPS32 * 1e-2,
                                       err_msg="inject_hyperparams vs factory, float32 ulps")


@pytest.mark.slow   # one compile per entry: ~2 min in all (.ci/run runs them)
@pytest.mark.parametrize("name", ALGS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_float32_and_bf16_parameters(name, dtype):
    spec = ja.get_algorithm(name)
    tx, p, w = _build(spec), _params(dtype), _rows(spec)
    state = tx.init(p)
    for t in range(3):
        key = jax.random.PRNGKey(t)
        u, state = jax.jit(tx.update)(_grads(key, w, p), state, p, **_extra(spec, w, p, key))
        for leaf, par in zip(jax.tree.leaves(u), jax.tree.leaves(p), strict=True):
            assert leaf.shape == par.shape
            assert np.all(np.isfinite(np.asarray(leaf, np.float32)))
        p = _apply(p, u)
    assert all(x.dtype == dtype for x in jax.tree.leaves(p))


@pytest.mark.parametrize("name", ALGS)
def test_a_masked_row_is_not_applied(name):
    """Whatever the masked (dropped) row's gradient holds, the update is the same: one
    program run twice, so bitwise."""
    spec = ja.get_algorithm(name)
    tx, p, w = _build(spec), _params(), _rows(spec)
    mask = jnp.arange(w) != 1
    upd = jax.jit(tx.update)
    outs = []
    for junk in (0.0, 1e3):
        state = tx.init(p)
        for t in range(3):
            key = jax.random.PRNGKey(t)
            g = jax.tree.map(lambda x, j=junk: x.at[1].add(j), _grads(key, w, p))
            u, state = upd(g, state, p, **_extra(spec, w, p, key, mask=mask))
        outs.append(u)
    for a, b in zip(*(jax.tree.leaves(o) for o in outs), strict=True):
        np.testing.assert_array_equal(a, b)
    comm = ja.communication(state)
    assert int(comm["dropped"]) == 3 and int(comm["arrivals"]) == 3 * (w - 1)


@pytest.mark.parametrize("name", ALGS)
def test_counters_add_up(name):
    spec = ja.get_algorithm(name)
    tx, p, w = _build(spec), _params(), _rows(spec)
    state, steps = tx.init(p), 6
    for t in range(steps):
        key = jax.random.PRNGKey(t)
        _, state = jax.jit(tx.update)(_grads(key, w, p), state, p, **_extra(spec, w, p, key))
    c = {k: float(v) for k, v in ja.communication(state).items()}
    assert c["arrivals"] + c["dropped"] == steps * w
    assert c["applied"] + c["rejections"] == c["arrivals"]
    # a row is uploaded or skipped, unless rejected before its upload (CE-ASGD)
    assert c["arrivals"] - c["rejections"] <= c["uploads"] + c["skips"] <= c["arrivals"]
    assert c["bits_up"] >= 0 and c["bits_down"] >= 0
    assert set(ja.communication(state)) == {"arrivals", "applied", "uploads", "skips",
                                            "rejections", "dropped", "bits_up", "bits_down"}


@pytest.mark.parametrize("name", ALGS)
def test_declared_parameters_are_checked_with_one_line(name):
    spec = ja.get_algorithm(name)
    assert set(spec.params) == set(spec.parameters())
    for arg, decl in spec.params.items():
        bad = {"float": float("nan"), "int": 2.5, "bool": "yes", "str": 3}.get(decl.kind)
        if bad is None:
            continue
        with pytest.raises(ValueError) as err:
            spec.build(**{**spec.example_kwargs(M), arg: bad})
        msg = str(err.value)
        assert "\n" not in msg and arg in msg, msg
    if "learning_rate" in spec.params:
        for bad in (-1.0, 0.0, True, None):
            with pytest.raises(ValueError, match="learning_rate"):
                spec.build(**{**spec.example_kwargs(M), "learning_rate": bad})


@pytest.mark.slow   # one compile per entry: ~2 min in all (.ci/run runs them)
@pytest.mark.parametrize("name", ALGS)
def test_a_short_simulator_run_stays_finite_with_and_without_a_schedule(name):
    spec = ja.get_algorithm(name)
    wl = least_squares(n=64, d=4)
    kw = spec.example_kwargs(M)
    static = {k: v for k, v in kw.items() if k in spec.static() or not isinstance(v, float)}
    hp = {k: jnp.asarray([v], jnp.float32) for k, v in kw.items() if k not in static}
    for boundaries in ((), (10,)) if spec.takes_schedule() else ((),):
        cfg = sim.SimConfig(num_workers=M, arrivals=1 if spec.synchronous else _rows(spec),
                            batch_size=4, ring_size=16, steps=20, eval_every=10,
                            delay=dl.DelayConfig(kind="uniform", low=0, high=3),
                            lr_boundaries=boundaries, lr_factor=0.5)
        s = sim.Simulator(spec, {**static, "smoothness": wl.smoothness}
                          if "smoothness" in spec.params else static, wl, cfg)
        r = sim.run(s, toy_data(wl, M), jax.random.PRNGKey(0)[None], hp)
        assert r.diverged == [None]
        last = r.history[0][-1]
        assert last["step"] == 20 and np.isfinite(last["train_loss"])


# ----------------------------------------------------------------------------- compressors


def _tree():
    """Every layer kind: a vector, a matrix, a scalar."""
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    return {"v": jax.random.normal(k[0], (40,)), "m": jax.random.normal(k[1], (6, 7)),
            "s": jax.random.normal(k[2], ())}


@pytest.mark.parametrize("name", COMPS)
def test_compressor_shapes_bits_determinism_vmap(name):
    spec = ja.COMPRESSORS[name]
    comp = spec.build(**spec.example)
    tree = _tree()
    msg, bits = jax.jit(comp)(tree, jax.random.PRNGKey(1))
    assert jax.tree.structure(msg) == jax.tree.structure(tree)
    for a, b in zip(jax.tree.leaves(msg), jax.tree.leaves(tree), strict=True):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)
    assert jnp.shape(bits) == () and jnp.asarray(bits).dtype == jnp.float32
    assert 0 < float(bits) <= 64 * 83 + 64 * 3
    again, bits2 = jax.jit(comp)(tree, jax.random.PRNGKey(1))
    for a, b in zip(jax.tree.leaves(msg), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)            # same program, same key: bitwise
    rows = jax.tree.map(lambda x: jnp.stack([x, 2 * x, -x]), tree)
    out, b3 = jax.vmap(comp)(rows, jax.random.split(jax.random.PRNGKey(1), 3))
    assert b3.shape == (3,)
    assert jax.tree.structure(out) == jax.tree.structure(tree)


@pytest.mark.slow   # one compile per entry: ~2 min in all (.ci/run runs them)
@pytest.mark.parametrize("name", COMPS)
@pytest.mark.parametrize("error_feedback", [False, True])
def test_compressor_in_front_of_asgd_scans_from_init(name, error_feedback):
    spec = ja.COMPRESSORS[name]
    comp = spec.build(**spec.example)
    tx = optax.chain(ja.compress_rows(comp, error_feedback=error_feedback, num_workers=M),
                     ja.asgd(learning_rate=0.1))
    p = _params()

    def body(carry, key):
        params, s = carry
        ids = jax.random.permutation(key, M)[:2].astype(jnp.int32)
        u, s = tx.update(_grads(key, 2, params), s, params, key=key, worker_ids=ids,
                         staleness=jnp.zeros((2,), jnp.int32))
        return (_apply(params, u), s), None

    init = tx.init(p)
    (_, s), _ = jax.lax.scan(body, (p, init), jax.random.split(jax.random.PRNGKey(0), 10))
    assert jax.tree.structure(s) == jax.tree.structure(init)
    assert 0 < float(ja.communication(s)["bits_up"])


@pytest.mark.parametrize("name", COMPS)
def test_compressor_declarations_are_checked(name):
    spec = ja.COMPRESSORS[name]
    assert all(p.static for p in spec.params.values())
    for arg, decl in spec.params.items():
        bad = {"float": float("nan"), "int": 0.5, "bool": "yes", "str": 3}.get(decl.kind)
        if bad is None:
            continue
        with pytest.raises(ValueError) as err:
            ja.compress.make_compressor(name, **{**spec.example, arg: bad})
        assert arg in str(err.value) and "\n" not in str(err.value)
