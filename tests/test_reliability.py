"""Divergence (stopped, marked, kept; a sweep carries on) and determinism across processes."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ToyData, ToyWorkload

from jaxasync import experiment, report, tables
from jaxasync.sim import put_data, run


def counting_workload(name="counting", **options):
    """One parameter t; the loss -t makes every SGD step add the learning rate to t, and
    the loss is NaN once t > 25.5: with lr 1 from step 26 on, with lr 0.5 from step 52."""
    x = np.zeros((64, 1), np.float32)
    y = np.zeros((64,), np.float32)

    def init(key):
        return {"t": jnp.zeros((), jnp.float32)}

    def loss(params, x, y):
        t = params["t"]
        return -t + jnp.where(t > 25.5, jnp.nan, 0.0)

    def evaluate(params, x, y):
        return {"loss": loss(params, x, y)}

    return ToyWorkload(name, ToyData(x, y, x, y), init, loss, evaluate)


@pytest.mark.filterwarnings("ignore:Data has no positive values")  # the toy loss is -t
def test_divergence_stops_at_the_end_of_its_chunk_and_keeps_the_history(tmp_path):
    cfg = {"algorithm": {"name": "asgd", "params": {"learning_rate": [1.0, 0.5]}},
           "workload": {"name": "counting", "batch_size": 4},
           "delay": {"kind": "none"},
           "run": {"num_workers": 2, "steps": 100, "eval_every": 10}, "plot": True}
    prep = experiment.prepare(cfg, workload_factory=counting_workload)
    assert [m["params"]["learning_rate"] for m in prep.members] == [1.0, 0.5]
    result = run(prep.simulator, put_data(prep.workload, prep.index, prep.size), prep.keys(),
                 prep.hparams())
    assert result.diverged == [30, 60]          # the first evaluation after t > 25.5
    steps = [[h["step"] for h in hist] for hist in result.history]
    assert steps == [[0, 10, 20, 30], [0, 10, 20, 30, 40, 50, 60]]
    for hist in result.history:
        assert all(h["finite"] for h in hist[:-1]) and not hist[-1]["finite"]
        assert np.isnan(hist[-1]["train_loss"]) and np.isfinite(hist[-2]["train_loss"])
    # every member diverged: the run stopped after that chunk, not at step 100
    assert int(np.max(result.final_state.counts.iterations)) == 60

    record = report.make_record(prep, result, {}, 0.0)
    assert [m["status"] for m in record["members"]] == ["diverged", "diverged"]
    assert [m["diverged_at_step"] for m in record["members"]] == [30, 60]
    assert [r["status"] for r in tables.build([record]).rows] == [
        "diverged 1/1 (step 30)", "diverged 1/1 (step 60)"]   # one row per learning rate
    report.write_outputs(record, tmp_path, plot=True)     # NaN histories plot and serialise
    back = json.loads((tmp_path / "run.json").read_text())
    assert back["members"][1]["diverged_at_step"] == 60
    assert np.isnan(back["members"][0]["final"]["train_loss"])
    assert (tmp_path / "metrics.png").stat().st_size > 0


# ----------------------------------------------------------------------------- two processes

COMMON = ["-m", "algorithm=delay_adaptive", "workload=least_squares", "+workload.options.n=256",
          "+workload.options.d=8", "workload.batch_size=8", "delay=exponential",
          "run.num_workers=4", "run.steps=200", "run.eval_every=20", "run.seeds=[0,1]",
          "plot=false"]
#: two jobs, the second diverges
SWEEP = [*COMMON, "algorithm.params.learning_rate=0.02,100.0"]
#: the first job alone
FIRST = [*COMMON, "algorithm.params.learning_rate=0.02"]


def _jaxasync(args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "jaxasync", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory):
    """A two-job sweep (the second job diverges) and, in another process at the same
    time, its first job alone."""
    root = tmp_path_factory.mktemp("sweeps")
    dirs = [root / "a", root / "b"]
    procs = [_jaxasync([*args, f"hydra.sweep.dir={d}"], root)
             for args, d in zip((SWEEP, FIRST), dirs, strict=True)]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    return root, dirs, outs


def _records(sweep_dir):
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/run.json"))}


def test_a_diverging_job_does_not_stop_the_sweep(two_sweeps):
    _, (a, _), _ = two_sweeps
    recs = _records(a)
    assert sorted(recs) == ["0_delay_adaptive", "1_delay_adaptive"]
    ok, bad = recs["0_delay_adaptive"], recs["1_delay_adaptive"]
    assert [m["status"] for m in ok["members"]] == ["ok", "ok"]
    assert [m["status"] for m in bad["members"]] == ["diverged", "diverged"]
    for m in bad["members"]:
        at = m["diverged_at_step"]
        assert at % 20 == 0 and 0 < at <= 200 and m["history"][-1]["step"] == at
        assert not m["history"][-1]["finite"] and m["history"][0]["finite"]
    summary = (a / "summary.md").read_text()
    assert "diverged 2/2 (step" in summary and "| ok " in summary


def test_same_config_and_seed_are_bitwise_identical_across_processes(two_sweeps):
    _, (a, b), _ = two_sweeps
    ra, rb = _records(a)["0_delay_adaptive"], _records(b)["0_delay_adaptive"]
    # JSON text of every metric of every member at every evaluation
    assert json.dumps(ra["members"]) == json.dumps(rb["members"])
    assert ra["config_hash"] == rb["config_hash"]
    hist = ra["members"]
    assert hist[0]["history"][-1]["train_loss"] != hist[1]["history"][-1]["train_loss"]


def test_rerunning_a_sweep_skips_its_finished_jobs(two_sweeps):
    root, (a, _), _ = two_sweeps
    before = {k: (a / k / "run.json").read_text() for k in _records(a)}
    proc = _jaxasync([*SWEEP, f"hydra.sweep.dir={a}"], root)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-3000:]
    assert out.count("finished run of this config") == 2 and "compiling" not in out
    assert {k: (a / k / "run.json").read_text() for k in before} == before
    assert "diverged 2/2 (step" in (a / "summary.md").read_text()
