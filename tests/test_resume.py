"""Checkpoint and resume: SIGKILL a run, resume it, get the uninterrupted result bit for bit.

Also: every algorithm's state survives a checkpoint; finished runs are skipped; an output
directory of another config is refused; result files are written atomically.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

import jaxasync as ja
from jaxasync import checkpoint as ckpt
from jaxasync import experiment, report
from jaxasync.cli import CONF_DIR
from jaxasync.config import ConfigError, register_configs, to_config

#: 2 members, 30 chunks of 40 steps: seconds of work, killed after its first checkpoint
OVERRIDES = ["algorithm=delay_adaptive", "workload=least_squares", "+workload.options.n=256",
             "+workload.options.d=16", "workload.batch_size=8", "delay=exponential",
             "run.num_workers=4", "run.steps=1200", "run.eval_every=40", "run.seeds=[0,3]",
             "plot=false"]
RESULT_KEYS = ("seed", "params", "status", "diverged_at_step", "final", "best", "target_reached",
               "staleness_hist", "history")


def _compose(overrides):
    """The plain config the CLI's job receives for ``overrides``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=overrides), resolve=True)


def _results(record):
    return [{k: m[k] for k in RESULT_KEYS} for m in record["members"]]


def _killer(proc, directory, found: dict):
    """SIGKILLs ``proc`` as soon as a complete checkpoint exists under ``directory``."""
    while proc.poll() is None:
        steps = [p for p in directory.glob("*") if re.fullmatch(r"\d+", p.name)]
        if steps:
            found["chunk"] = min(int(p.name) for p in steps)
            proc.send_signal(signal.SIGKILL)
            return
        time.sleep(0.02)


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    killed, fresh = tmp_path / "killed", tmp_path / "fresh"
    cmd = [sys.executable, "-m", "jaxasync", "hydra.mode=RUN", *OVERRIDES,
           "run.checkpoint_every=1", f"out_dir={killed}", f"hydra.run.dir={tmp_path / 'hydra'}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=tmp_path)
    found: dict = {}
    watcher = threading.Thread(target=_killer, args=(proc, killed / "checkpoint", found))
    watcher.start()
    # meanwhile, the same config uninterrupted, in this process
    cfg = _compose(OVERRIDES)
    reference = experiment.run_experiment(cfg, fresh, progress=False)
    watcher.join(timeout=240)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, out[-3000:]
    assert found["chunk"] >= 1
    assert not (killed / "run.json").exists()

    # started again on the same directory (saving no further checkpoints: not in the hash)
    resumed = experiment.run_experiment(cfg, killed, progress=False)
    assert resumed["timing"]["resumed_after_chunk"] >= found["chunk"]
    assert resumed["timing"]["resumed_after_chunk"] < 30
    assert _results(resumed) == _results(reference)
    for member in resumed["members"]:
        assert len(member["history"]) == 31 and member["history"][-1]["step"] == 1200
    assert resumed["config_hash"] == reference["config_hash"]
    assert json.loads((killed / "run.json").read_text())["members"] == resumed["members"]
    assert not (killed / "checkpoint").exists()      # removed once run.json is written
    assert not list(killed.glob(".*tmp*"))           # no temporary files left

    # a rerun (multirun, leaderboard) finds it finished: skipped, record reused
    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished run ran again")

    orig = experiment.run
    experiment.run = must_not_run
    try:
        again = experiment.run_experiment(cfg, killed, progress=False)
    finally:
        experiment.run = orig
    assert _results(again) == _results(reference)


def _prepared(name):
    base = {"workload": {"name": "least_squares", "batch_size": 4, "options": {"n": 64, "d": 3}},
            "run": {"num_workers": 4, "steps": 4, "eval_every": 2, "seeds": [0, 1]},
            "delay": {"kind": "uniform", "high": 2}}
    spec = ja.get_algorithm(name)
    params = {"learning_rate": 0.05, **{k: v for k, v in spec.example.items()}}
    return experiment.prepare({**base, "algorithm": {"name": name, "params": params}})


@pytest.mark.parametrize("name", sorted(ja.ALGORITHMS))
def test_every_algorithm_state_survives_a_checkpoint(name, tmp_path):
    """Params, ring, optimizer state, clocks, counters, keys: all leaves back, bit for bit."""
    prep = _prepared(name)
    keys, hparams = prep.keys(), prep.hparams()
    shapes = jax.eval_shape(jax.vmap(prep.simulator.init), keys, hparams)
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda s: rng.integers(0, 1000, s.shape).astype(s.dtype), shapes)
    history = [[{"step": 0, "finite": True, "train_loss": float("nan")},
                {"step": 2, "finite": False, "train_loss": float("inf")}]] * 2
    saver = ckpt.Checkpoints(tmp_path, "abc", every=1, eval_every=2, n_chunks=5)
    saver.on_chunk(state, history)
    saver.close()
    loader = ckpt.Checkpoints(tmp_path, "abc", every=0, eval_every=2, n_chunks=5)
    got, got_history = loader.restore(prep.simulator, keys, hparams)
    assert jax.tree.structure(got) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(state), strict=True):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), b)
    assert json.dumps(got_history) == json.dumps(history)   # NaN and inf kept
    with pytest.raises(ConfigError, match="different config"):
        ckpt.Checkpoints(tmp_path, "other", 0, 2, 5).restore(prep.simulator, keys, hparams)


TINY = {"algorithm": {"name": "asgd", "params": {"learning_rate": 0.05}},
        "workload": {"name": "least_squares", "batch_size": 8, "options": {"n": 128, "d": 4}},
        "run": {"num_workers": 2, "steps": 20, "eval_every": 10}, "plot": False}


def test_output_directory_of_another_config_is_refused_unless_resume_false(tmp_path, monkeypatch):
    digest = ckpt.config_hash(to_config(TINY))
    other = {**TINY, "run": {**TINY["run"], "seeds": [5]}}
    assert ckpt.config_hash(to_config(other)) != digest
    # not part of the hash: where and how often it saves, plotting
    same = {**TINY, "out_dir": "x", "plot": True, "run": {**TINY["run"], "checkpoint_every": 3}}
    assert ckpt.config_hash(to_config(same)) == digest

    report.atomic_write(tmp_path / "run.json", json.dumps(
        {"config_hash": digest, "code": ckpt.code_identity("asgd"), "members": []}))
    assert experiment.run_experiment(TINY, tmp_path, progress=False)["members"] == []
    with pytest.raises(ConfigError, match=r"^out_dir=.*run\.json of a different config"):
        experiment.run_experiment(other, tmp_path, progress=False)
    (tmp_path / "checkpoint").mkdir()

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):  # the run itself is the ordinary path: stop before compiling
        raise Stop

    before = (tmp_path / "run.json").read_text()
    monkeypatch.setattr(experiment, "prepare", stop)
    with pytest.raises(Stop):  # run.resume=false checks the new config before touching the old
        experiment.run_experiment({**other, "run": {**other["run"], "resume": False}}, tmp_path,
                                  progress=False)
    assert (tmp_path / "run.json").read_text() == before and (tmp_path / "checkpoint").is_dir()
    monkeypatch.undo()
    # a run that passes its checks replaces it (moved aside, removed once it has written)
    record = experiment.run_experiment({**other, "run": {**other["run"], "resume": False}},
                                       tmp_path, progress=False)
    assert json.loads((tmp_path / "run.json").read_text())["config_hash"] == \
        record["config_hash"] != digest
    assert not (tmp_path / "checkpoint").exists() and not (tmp_path / ".replaced").exists()


def test_atomic_write_never_leaves_a_half_written_file(tmp_path, monkeypatch):
    path = tmp_path / "run.json"
    report.atomic_write(path, '{"old": 1}')

    def crash(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        report.atomic_write(path, '{"new": 2}' * 1000)
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_a_finished_run_of_other_code_runs_again_and_says_what_changed(tmp_path, caplog,
                                                                       monkeypatch):
    """The code is part of what a finished run is reused for: the algorithm's source (here a
    user's module, edited between two runs) and jaxasync's version."""
    import importlib
    import logging

    from jaxasync import plugins

    caplog.set_level(logging.INFO, logger="jaxasync")   # the job's lines go through logging

    def said() -> str:
        text = "\n".join(r.getMessage() for r in caplog.records if r.name == "jaxasync")
        caplog.clear()
        return text

    module = tmp_path / "cache_probe_algos.py"
    source = ("import optax\nimport jaxasync as ja\n\n@ja.register('cache_probe')\n"
              "def cache_probe(learning_rate: float = 0.05):\n"
              "    return optax.chain(ja.aggregate('mean'), optax.sgd(learning_rate)){}\n")
    module.write_text(source.format(""))
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.import_modules(["cache_probe_algos"])
    cfg = {**TINY, "algorithm": {"name": "cache_probe", "params": {"learning_rate": 0.05}}}
    out = tmp_path / "out"
    first = experiment.run_experiment(cfg, out)
    assert first["code"] == ckpt.code_identity("cache_probe")
    said()
    again = experiment.run_experiment(cfg, out)             # same code: reused, not run
    assert "finished run of this config (hash" in said()
    assert again["timing"] == first["timing"]
    # the user edits the rule's module: the run is redone, and the line says why
    module.write_text(source.format("  # edited"))
    importlib.reload(importlib.import_module("cache_probe_algos"))
    third = experiment.run_experiment(cfg, out)
    lines = said()
    assert "finished run of this config by other code (the algorithm's source); running it " \
           "again" in lines and "least_squares: M=2" in lines          # and it ran
    assert third["code"]["algorithm"] != first["code"]["algorithm"]
    assert json.loads((out / "run.json").read_text())["code"] == third["code"]
    # a new jaxasync version: redone too
    import jaxasync

    monkeypatch.setattr(jaxasync, "__version__", "99.0")
    experiment.run_experiment(cfg, out)
    assert f"(jaxasync {third['code']['jaxasync']} -> 99.0)" in said()


def test_a_checkpoint_of_other_code_is_discarded_not_resumed(tmp_path):
    prep = _prepared("asgd")
    keys, hparams = prep.keys(), prep.hparams()
    state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                         jax.eval_shape(jax.vmap(prep.simulator.init), keys, hparams))
    history = [[{"step": 2, "finite": True}]] * 2
    old = {**ckpt.code_identity("asgd"), "algorithm": "0123456789abcdef"}
    saver = ckpt.Checkpoints(tmp_path, "abc", every=1, eval_every=2, n_chunks=5, code=old)
    saver.on_chunk(state, history)
    saver.close()
    said = []
    same = ckpt.Checkpoints(tmp_path, "abc", 0, 2, 5, code=old, say=said.append)
    assert same.restore(prep.simulator, keys, hparams)[1] == history and not said
    same.close()
    now = ckpt.code_identity("asgd")
    loader = ckpt.Checkpoints(tmp_path, "abc", 0, 2, 5, code=now, say=said.append)
    assert loader.restore(prep.simulator, keys, hparams) == (None, None)
    assert said == [f"{tmp_path / 'checkpoint'}: a checkpoint of other code (the algorithm's "
                    "source); discarded, the run starts afresh"]
    assert not (tmp_path / "checkpoint").exists() or not list((tmp_path / "checkpoint").iterdir())


def test_code_identity_reads_the_checkout_and_names_each_change():
    import subprocess

    now = ckpt.code_identity("asgd")
    root = CONF_DIR.parent
    if (root / ".git").exists():       # a checkout: the package directory's git tree
        tree = subprocess.run(["git", "rev-parse", "HEAD:jaxasync"], cwd=root, text=True,
                              capture_output=True, check=True).stdout.strip()
        assert now["git"]["tree"] == tree[:16]
    assert ckpt.code_changes(now, now) == []
    old = {"jaxasync": "0.0.1", "git": {"tree": "aaaa", "uncommitted": None},
           "algorithm": "bbbb"}
    new = {"jaxasync": "0.0.1", "git": {"tree": "cccc", "uncommitted": "dddd"},
           "algorithm": "bbbb"}
    assert ckpt.code_changes(old, new) == ["package source: git tree aaaa -> cccc",
                                           "uncommitted changes none -> dddd"]
    assert ckpt.code_changes(old, new, keys=("jaxasync", "algorithm")) == []
    assert ckpt.code_changes(None, new) == [
        "its code is not recorded (a result of an older jaxasync)"]
