"""Vmapped sweeps: members (seeds x numeric hyperparameters) in one program."""

import json

import numpy as np
from helpers import assert_f32_close, assert_loss_close, sgd_roundings

from jaxasync.experiment import run_experiment
from jaxasync.workloads import get_workload


def _cfg(lr, seeds):
    return {"algorithm": {"name": "staleness_aware", "params": {"learning_rate": lr}},
            "workload": {"name": "least_squares", "batch_size": 8, "options": {"n": 256, "d": 8}},
            "delay": {"kind": "uniform", "low": 0, "high": 6},
            "run": {"num_workers": 4, "steps": 60, "eval_every": 20, "seeds": seeds}, "plot": False}


def test_vmapped_sweep_equals_members_run_one_by_one(tmp_path):
    sweep = run_experiment(_cfg([0.02, 0.08], [0, 5]), tmp_path / "sweep", progress=False)
    members = sweep["members"]
    assert [(m["seed"], m["params"]["learning_rate"]) for m in members] == [
        (0, 0.02), (5, 0.02), (0, 0.08), (5, 0.08)]
    # a vmapped member against a lone run: two programs, equal up to rounding (60 steps)
    rounds = sgd_roundings(60, d=8, batch=8)
    why = "60 steps x (8-term dot, mean of 8, 3 ops), adding up"
    wl = get_workload("least_squares", n=256, d=8)
    # the iterates go from 0 towards the solution: twice its largest entry bounds them
    x, y = np.asarray(wl.data.x_train, np.float64), np.asarray(wl.data.y_train, np.float64)
    w_scale = 2 * float(np.abs(np.linalg.lstsq(x, y, rcond=None)[0]).max())
    for m in (members[1], members[2]):  # one per learning rate and seed, to keep it quick
        lr = m["params"]["learning_rate"]
        one = run_experiment(_cfg(lr, [m["seed"]]), None, progress=False)["members"][0]
        f_max = max(h["train_loss"] for h in one["history"])
        for h_sweep, h_one in zip(m["history"], one["history"], strict=True):
            assert_loss_close(h_sweep["train_loss"], h_one["train_loss"], param_roundings=rounds,
                              smoothness=wl.smoothness, f_max=f_max, d=8, n=256,
                              w_scale=w_scale, why=why)
            for k in ("bits_up", "staleness_mean", "time"):
                assert_f32_close(h_sweep[k], h_one[k], roundings=60,
                                 why=f"{k}: an integer or a sum of at most 60 terms")
    # a different learning rate gives a different trajectory
    assert members[0]["final"]["train_loss"] != members[2]["final"]["train_loss"]
    # each member is also written as a run of its own
    subs = sorted((tmp_path / "sweep" / "members").iterdir())
    assert len(subs) == 4 and subs[0].name == "000_seed0_learning_rate=0.02"
    single = json.loads((subs[3] / "run.json").read_text())
    assert len(single["members"]) == 1 and single["members"][0]["seed"] == 5
