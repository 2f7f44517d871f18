"""The skip test's gradient distance: the MLPs' exact fast form against two formed gradients."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import least_squares

import jaxasync as ja
from jaxasync import delays as dl
from jaxasync import lazy, models, sim
from jaxasync.data import partition
from jaxasync.workloads import get_workload, gradient_pair


def _cross_entropy(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _formed(module, pa, pb, x, y):
    """Loss and gradient at a, and ||grad a - grad b||^2, from the two gradients themselves."""
    loss = lambda p: _cross_entropy(module.apply(p, x), y)
    la, ga = jax.value_and_grad(loss)(pa)
    gb = jax.grad(loss)(pb)
    dist = sum(jnp.sum(jnp.square(u - v)) for u, v in
               zip(jax.tree.leaves(ga), jax.tree.leaves(gb), strict=True))
    return la, ga, dist


def _setup(features, shape, scale=0.05, seed=0):
    module = models.MLP(features, 10)
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    x = jax.random.normal(k[0], (10,) + shape)
    y = jax.random.randint(k[1], (10,), 0, 10)
    pa = module.init(k[2], x[:1])
    leaves, tree = jax.tree.flatten(pa)
    noise = jax.random.split(k[3], len(leaves))
    pb = jax.tree.unflatten(tree, [p + scale * jax.random.normal(n, p.shape)
                                   for p, n in zip(leaves, noise, strict=True)])
    return module, pa, pb, x, y


@pytest.mark.parametrize("features, shape", [
    ((512,), (784,)),          # SASG's FC 784-512-10
    ((100, 100), (40,)),       # MNIST-1D MLP: the differenced tail has two layers
    ((), (64,)),               # no hidden layer: the first layer is the output layer
    ((16,), (8, 8)),           # image input, flattened
])
def test_mlp_pair_equals_two_formed_gradients(features, shape):
    module, pa, pb, x, y = _setup(features, shape)
    reference, pair = models.mlp_grad_pair(module, _cross_entropy)
    la, ga, dist = jax.jit(lambda: pair(pa, reference(pb, x, y), x, y))()
    la2, ga2, dist2 = jax.jit(lambda: _formed(module, pa, pb, x, y))()
    assert float(la) == pytest.approx(float(la2), rel=1e-6)
    assert jax.tree.structure(ga) == jax.tree.structure(ga2)
    for u, v in zip(jax.tree.leaves(ga), jax.tree.leaves(ga2), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-7)
    assert float(dist) == pytest.approx(float(dist2), rel=1e-4)
    assert float(dist) > 0


def test_mlp_pair_is_accurate_where_the_points_nearly_agree():
    """Where the test decides (a ~ b), the Gram form stays accurate: checked against float64."""
    module, pa, pb, x, y = _setup((512,), (784,), scale=1e-5)
    reference, pair = models.mlp_grad_pair(module, _cross_entropy)
    fast = float(pair(pa, reference(pb, x, y), x, y)[2])
    # jax.enable_x64 since JAX 0.8; jax.experimental.enable_x64 before (the lowest JAX we
    # support, 0.7.1, has only that one)
    enable_x64 = jax.enable_x64 if hasattr(jax, "enable_x64") else jax.experimental.enable_x64
    with enable_x64(True):
        f64 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)
        exact = float(_formed(module, f64(pa), f64(pb), jnp.asarray(x, jnp.float64), y)[2])
    assert exact > 0
    assert fast == pytest.approx(exact, rel=1e-3)
    # the same point: exactly zero (nothing is subtracted after a product)
    assert float(pair(pa, reference(pa, x, y), x, y)[2]) == 0.0


def test_workloads_with_an_mlp_carry_the_fast_pair_and_others_the_generic_one():
    assert get_workload("digits_mlp").grad_pair is not None
    assert get_workload("least_squares").grad_pair is None
    wl = least_squares()                       # any object with a loss
    reference, pair = gradient_pair(wl)
    pa, pb = {"w": jnp.ones(8)}, {"w": jnp.arange(8.0)}
    x, y = jnp.asarray(wl.data.x_train[:5]), jnp.asarray(wl.data.y_train[:5])
    ga, gb = jax.grad(wl.loss)(pa, x, y), jax.grad(wl.loss)(pb, x, y)
    la, ga2, dist = pair(pa, reference(pb, x, y), x, y)
    np.testing.assert_allclose(ga2["w"], ga["w"], rtol=1e-6)
    assert float(la) == pytest.approx(float(wl.loss(pa, x, y)))
    assert float(dist) == pytest.approx(float(jnp.sum((ga["w"] - gb["w"]) ** 2)), rel=1e-6)


def test_lazy_upload_takes_the_distance_or_the_gradients_alike():
    tx = lazy.lazy_upload(0.5, 2, history=3, warmup=0)
    p = {"x": jnp.zeros(2)}
    s = ja.transforms.keep_decisions(tx, 2).init(p)._replace(skips=jnp.asarray([1, 1], jnp.int32))
    g = {"x": jnp.asarray([[1.0, 2.0], [3.0, 4.0]])}
    ref = {"x": jnp.asarray([[1.0, 0.0], [3.0, 7.0]])}       # ||g - ref||^2 = 4 and 9
    norms = jnp.asarray([3.0, 4.0, 0.0])
    r1, s1 = tx.update(g, s, p, ref_grads=ref, update_norms=norms)
    r2, s2 = tx.update(g, s, p, ref_grad_dist=jnp.asarray([4.0, 9.0]), update_norms=norms)
    np.testing.assert_array_equal(r1.uploaded, r2.uploaded)
    np.testing.assert_array_equal(r1.uploaded, [False, True])
    for u, v in zip(jax.tree.leaves((r1, s1)), jax.tree.leaves((r2, s2)), strict=True):
        np.testing.assert_array_equal(u, v)


def test_simulated_sasg_takes_the_same_decisions_with_either_form():
    """The simulator's fast path (MLP) against the generic one: same skips, same iterates
    (SASG: the skip test and top-k with error feedback, which amplifies any difference)."""
    algorithm = "sasg"
    wl = get_workload("digits_mlp")
    index, size = partition(np.asarray(wl.data.y_train), 4, "iid")
    data = sim.put_data(wl, index, size)
    cfg = sim.SimConfig(num_workers=4, batch_size=8, ring_size=6, steps=40, eval_every=40,
                        delay=dl.DelayConfig(kind="none"))
    hp = {"learning_rate": jnp.float32(0.05)}
    static = {"history": 5, "density": 0.1}
    out = []
    for w in (wl, dataclasses.replace(wl, grad_pair=None)):
        s = sim.Simulator(ja.get_algorithm(algorithm), static, w, cfg)
        run = jax.jit(lambda st, s=s: jax.lax.scan(
            lambda c, _: (s.step(c, data, hp), None), st, None, length=40)[0])
        out.append(run(s.init(jax.random.PRNGKey(3), hp)))
    fast, generic = out
    c_fast, c_gen = ja.communication(fast.opt_state), ja.communication(generic.opt_state)
    assert int(c_fast["skips"]) == int(c_gen["skips"]) > 0      # the test did skip
    assert int(c_fast["uploads"]) == int(c_gen["uploads"])
    for u, v in zip(jax.tree.leaves(fast.params), jax.tree.leaves(generic.params), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-6)
