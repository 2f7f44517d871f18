"""Vmapped sweeps: members (seeds x numeric hyperparameters) in one program."""

import json

import pytest

from jaxasync.experiment import run_experiment


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
    for m in (members[1], members[2]):  # one per learning rate and seed, to keep it quick
        lr = m["params"]["learning_rate"]
        one = run_experiment(_cfg(lr, [m["seed"]]), None, progress=False)["members"][0]
        for h_sweep, h_one in zip(m["history"], one["history"], strict=True):
            for k in ("train_loss", "bits_up", "staleness_mean", "time"):
                assert h_sweep[k] == pytest.approx(h_one[k], rel=1e-5, abs=1e-8), k
    # a different learning rate gives a different trajectory
    assert members[0]["final"]["train_loss"] != members[2]["final"]["train_loss"]
    # each member is also written as a run of its own
    subs = sorted((tmp_path / "sweep" / "members").iterdir())
    assert len(subs) == 4 and subs[0].name == "000_seed0_learning_rate=0.02"
    single = json.loads((subs[3] / "run.json").read_text())
    assert len(single["members"]) == 1 and single["members"][0]["seed"] == 5
