"""The runner (jaxasync.running): member layouts, one step program, cheaper compile options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxasync.config import ConfigError
from jaxasync.experiment import prepare, run_experiment
from jaxasync.running import EVAL_OPTIONS, INIT_OPTIONS, member_layout, programs
from jaxasync.sim import put_data, run

TINY = {"workload": {"name": "least_squares", "batch_size": 8, "options": {"n": 256, "d": 8}},
        "delay": {"kind": "event", "compute": "exponential", "mean": 1.0}}


def _cfg(alg: str, seeds=(0, 1), steps=30, every=10, **run_keys) -> dict:
    return {**TINY, "algorithm": {"name": alg},
            "run": {"num_workers": 4, "steps": steps, "eval_every": every, "seeds": list(seeds),
                    **run_keys}, "plot": False}


def test_auto_layout_rule_and_bad_value():
    sync, asyn = prepare(_cfg("sync_sgd")).simulator, prepare(_cfg("asgd")).simulator
    assert member_layout(sync, 1) == "single" and member_layout(asyn, 1) == "single"
    assert member_layout(sync, 3, backend="cpu") == "map"
    assert member_layout(asyn, 3, backend="cpu") == "vmap"
    assert member_layout(sync, 3, backend="gpu") == "vmap"
    assert member_layout(sync, 3, "vmap", backend="cpu") == "vmap"
    assert member_layout(asyn, 3, "map") == "map"
    assert member_layout(sync, 1, mesh=object()) == "vmap"     # a mesh keeps the member axis
    with pytest.raises(ValueError, match=r"run.members='rows': unknown"):
        member_layout(sync, 2, "rows")
    with pytest.raises(ConfigError, match=r"run.members='rows': must be one of auto, vmap, map"):
        prepare(_cfg("asgd", members="rows"))


@pytest.mark.parametrize("alg", ["sync_sgd", "asgd"])
def test_vmap_and_map_layouts_agree(alg):
    """Two programs (a vmapped dot accumulates in another order): float32 rounding apart."""
    records = {m: run_experiment(_cfg(alg, members=m), progress=False) for m in ("vmap", "map")}
    assert {m: r["timing"]["members_layout"] for m, r in records.items()} == {"vmap": "vmap",
                                                                              "map": "map"}
    for a, b in zip(records["vmap"]["members"], records["map"]["members"], strict=True):
        assert [h["step"] for h in a["history"]] == [h["step"] for h in b["history"]]
        for key in ("train_loss", "test_loss", "staleness_mean"):
            # 30 steps of float32 arithmetic (eps 1.2e-7) reordered: well within 1e-5
            np.testing.assert_allclose([h[key] for h in a["history"]],
                                       [h[key] for h in b["history"]], rtol=1e-5,
                                       err_msg=f"{alg} {key}: vmap vs map beyond float32 "
                                               f"rounding of 30 steps")
        assert a["staleness_hist"] == b["staleness_hist"]      # the same events, counted


def test_one_step_program_serves_every_chunk_length():
    """30 steps as 10 + 10 + 10, as 7 + 7 + 7 + 7 + 2, as 30: the same compiled loop body,
    run for the same steps, so the same bits at the steps they share."""
    finals = {}
    for every in (10, 7, 30):
        prep = prepare(_cfg("asgd", seeds=(0,), every=every))
        r = run(prep.simulator, put_data(prep.workload, prep.index, prep.size), prep.keys(),
                prep.hparams())
        steps = [h["step"] for h in r.history[0]]
        assert steps[-1] == 30 and steps == sorted(set(steps))
        finals[every] = r.history[0][-1]
    keys = ("train_loss", "test_loss", "version", "time", "staleness_mean", "bits_up")
    assert {k: finals[7][k] for k in keys} == {k: finals[10][k] for k in keys}
    assert {k: finals[30][k] for k in keys} == {k: finals[10][k] for k in keys}


def _compiled_both(fn, options, *args):
    """``fn`` compiled with the default and with ``options``, on ``args``."""
    outs = []
    for opts in (None, options):
        # a fresh function each time: no compiled program is shared between the two
        outs.append(jax.jit(lambda *a: fn(*a)).lower(*args).compile(opts)(*args))
    return outs


def _same_values(a, b, what: str) -> None:
    """Two compilations (other XLA options): integers and keys exactly, floats within float32
    rounding (XLA promises no order of operations across programs)."""
    from helpers import assert_f32_close

    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        if np.issubdtype(x.dtype, np.floating) and x.size:
            finite = np.isfinite(y)         # inf (idle workers), NaN: the same, exactly
            assert np.array_equal(x[~finite], y[~finite], equal_nan=True), what
            if not finite.any():
                continue
            x, y = x[finite], y[finite]
            assert_f32_close(x, y, roundings=64, why=f"{what}: two compilations of the same "
                             "function; a reduction over a layer (fan-in <= 64 terms) may "
                             "be reordered")
        else:
            assert np.array_equal(x, y), what


def _check_cheap(workload: str, init: str, alg: str) -> None:
    name, _, threshold = alg.partition(":")
    algorithm = {"name": name, "params": {"threshold": float(threshold)} if threshold else {}}
    cfg = {"algorithm": algorithm, "workload": {"name": workload, "init": init},
           "delay": {"kind": "event", "compute": "exponential", "mean": 1.0},
           "run": {"num_workers": 4, "steps": 4, "eval_every": 2}, "plot": False}
    prep = prepare(cfg)
    sim, data = prep.simulator, put_data(prep.workload, prep.index, prep.size)
    fns = programs(sim, "single")
    default, cheap = _compiled_both(fns.init, INIT_OPTIONS, prep.keys(), prep.hparams())
    _same_values(default, cheap, f"{workload} init={init}: initial state")
    # the evaluation of a state that has moved (not only the initial one)
    state = jax.jit(fns.steps)(default, data, prep.hparams(), jnp.int32(3))
    default_m, cheap_m = _compiled_both(fns.evaluate, EVAL_OPTIONS, state, data)
    _same_values(default_m, cheap_m, f"{workload} {alg}: evaluation")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the cheap options are CPU ones")
@pytest.mark.parametrize("workload,init,alg", [("mnist1d_mlp", "flax", "ce_asgd:1.0"),
                                               ("least_squares", "flax", "sasg")])
def test_cheap_compile_options_give_the_same_values(workload, init, alg):
    """The initial state and the evaluation, compiled for speed of compilation, equal those of
    the default options within float32 rounding (two programs: no bitwise promise)."""
    _check_cheap(workload, init, alg)


@pytest.mark.slow
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the cheap options are CPU ones")
@pytest.mark.parametrize("workload", ["logistic", "mishchenko_quadratic", "mnist1d_cnn",
                                      "digits_mlp", "mnist_subset_fc"])
@pytest.mark.parametrize("init", ["flax", "torch"])
def test_cheap_compile_options_give_the_same_values_everywhere(workload, init):
    _check_cheap(workload, init, "asgd")
