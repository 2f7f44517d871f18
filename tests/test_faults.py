"""Faults: nothing computed is lost (issue 16).

A second run on a locked output directory, a killed holder's stale lock, ``run.resume=false``
moving an earlier result aside (and back when the new run fails), outputs that cannot be
written (a full disk: a fallback directory), checkpoints that cannot be written, a truncated
checkpoint, and the fault soak: a checkpointing run killed with SIGKILL at random moments and
resumed each time ends bitwise identical to an uninterrupted run (the same compiled program
runs each time: bitwise is the right comparison).
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import BASE, merge_config, snapshot

from jaxasync import experiment, outputs_dir, report
from jaxasync.config import ConfigError

RESULT_KEYS = ("seed", "params", "status", "diverged_at_step", "final", "best", "target_reached",
               "staleness_hist", "history")


def _results(record):
    return [{k: m[k] for k in RESULT_KEYS} for m in record["members"]]


def _env():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _other(cfg):
    """The same experiment with another seed (another config hash)."""
    return merge_config(cfg, {"run": {"seeds": [7]}})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "out"
    return out, experiment.run_experiment(BASE, out, progress=False)


@pytest.fixture
def earlier(finished, tmp_path):
    """A copy of a finished run: ``(directory, record, snapshot)``."""
    out = tmp_path / "out"
    shutil.copytree(finished[0], out)
    return out, finished[1], snapshot(out)


# ----------------------------------------------------------------------------- the lock


def _hold_lock(path: Path) -> subprocess.Popen:
    """A process that opens ``path`` as an output directory (locked) and sleeps."""
    code = textwrap.dedent(f"""
        import sys, time
        from jaxasync.outputs_dir import OutputDir
        with OutputDir({str(path)!r}, progress=False):
            print("locked", flush=True)
            time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=_env())
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_on_a_locked_directory_names_the_holder_then_recovers_its_stale_lock(
        earlier):
    out, record, before = earlier
    holder = _hold_lock(out)
    try:
        with pytest.raises(ConfigError) as err:
            experiment.run_experiment(_other(BASE) | {"run": {**_other(BASE)["run"],
                                                             "resume": False}},
                                      out, progress=False)
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(f"out_dir={str(out)!r}: another run (PID "
                                                  f"{holder.pid}")
        assert snapshot(out) == {**before, outputs_dir.PID_FILE: snapshot(out)[
            outputs_dir.PID_FILE]}
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder was killed: its lock (and its PID file) are stale; the next run recovers
    assert (out / outputs_dir.PID_FILE).read_text().split()[0] == str(holder.pid)
    again = experiment.run_experiment(_other(BASE) | {"run": {**_other(BASE)["run"],
                                                             "resume": False}},
                                      out, progress=False)
    assert json.loads((out / "run.json").read_text())["config_hash"] == again["config_hash"]
    assert again["config_hash"] != record["config_hash"]
    assert not (out / outputs_dir.PID_FILE).exists()   # released


# ----------------------------------------------------------------------------- resume=false


def test_resume_false_moves_the_earlier_run_aside_until_the_first_result(earlier, monkeypatch):
    out, record, before = earlier
    seen = {}
    real_run = experiment.run

    def watching_run(*args, **kwargs):
        seen["aside"] = snapshot(out / outputs_dir.ASIDE_DIR)
        seen["in_place"] = (out / "run.json").exists()
        return real_run(*args, **kwargs)

    monkeypatch.setattr(experiment, "run", watching_run)
    cfg = merge_config(_other(BASE), {"run": {"resume": False, "checkpoint_every": 1}})
    new = experiment.run_experiment(cfg, out, progress=False)
    # while it ran, the earlier result was aside, whole; then it was removed
    assert seen["aside"] == {k: v for k, v in before.items() if k != outputs_dir.LOCK_FILE}
    assert not seen["in_place"]
    assert not (out / outputs_dir.ASIDE_DIR).exists()
    assert json.loads((out / "run.json").read_text())["config_hash"] == new["config_hash"]


def test_resume_false_puts_the_earlier_run_back_when_the_new_one_fails(earlier, monkeypatch):
    out, record, before = earlier

    def crash(*args, **kwargs):
        raise RuntimeError("the machine fell over")

    monkeypatch.setattr(experiment, "run", crash)
    with pytest.raises(RuntimeError):
        experiment.run_experiment(merge_config(_other(BASE), {"run": {"resume": False}}), out,
                                  progress=False)
    assert snapshot(out) == before
    # killed before its first result (the aside directory left behind): put back at the start
    target = outputs_dir.OutputDir(out, progress=False)
    target.open()
    target.set_aside()
    target.close()              # as a SIGKILL would leave it: no run.json, .replaced/ full
    assert not (out / "run.json").exists()
    monkeypatch.undo()
    again = experiment.run_experiment(BASE, out, progress=False)   # finished: reused
    assert again["config_hash"] == record["config_hash"]
    assert snapshot(out) == before


# ----------------------------------------------------------------------------- writing fails


def test_outputs_that_cannot_be_written_go_to_a_fallback_directory(tmp_path, monkeypatch,
                                                                    capsys):
    out, rescue = tmp_path / "out", tmp_path / "rescue"
    rescue.mkdir()
    monkeypatch.setenv(outputs_dir.FALLBACK_ENV, str(rescue))
    real = report.atomic_write

    def disk_full(path, text):
        if Path(path).is_relative_to(out):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, text)

    monkeypatch.setattr(report, "atomic_write", disk_full)
    record = experiment.run_experiment(BASE, out, progress=False)
    where = Path(record["written_to"])
    assert where.parent == rescue
    assert json.loads((where / "run.json").read_text())["members"] == \
        json.loads(report.dumps(record))["members"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"could not write to {out}" in err[0] and str(where) in err[0]
    assert "No space left on device" in err[0]


def test_a_checkpoint_that_cannot_be_written_warns_and_the_run_goes_on(tmp_path, monkeypatch,
                                                                      capsys):
    import orbax.checkpoint as ocp

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ocp.CheckpointManager, "save", full)
    out = tmp_path / "out"
    cfg = merge_config(BASE, {"run": {"checkpoint_every": 1}})
    record = experiment.run_experiment(cfg, out, progress=False)
    assert json.loads((out / "run.json").read_text())["config_hash"] == record["config_hash"]
    err = [x for x in capsys.readouterr().err.splitlines() if "checkpoint" in x]
    assert len(err) == 1 and "could not be written" in err[0] and "goes on" in err[0]


def test_an_output_directory_that_cannot_be_written_is_refused_before_running(tmp_path,
                                                                             monkeypatch):
    out = tmp_path / "out"
    real = outputs_dir.tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == out:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(outputs_dir.tempfile, "mkstemp", read_only)
    monkeypatch.setattr(experiment, "run", lambda *a, **k: pytest.fail("ran"))
    with pytest.raises(ConfigError, match=r"^out_dir=.*: cannot be written \(Permission denied\)$"):
        experiment.run_experiment(BASE, out, progress=False)
    assert not (out / outputs_dir.PID_FILE).exists()


# ----------------------------------------------------------------------------- kills

#: a tiny checkpointing run: 40 chunks of 20 steps
SOAK = ["hydra.mode=RUN", "algorithm=delay_adaptive", "workload=least_squares",
        "+workload.options.n=128", "+workload.options.d=4", "workload.batch_size=8",
        "delay=exponential", "run.num_workers=4", "run.steps=800", "run.eval_every=20",
        "run.seeds=[0,1]", "plot=false", "run.checkpoint_every=1"]


def _compose(overrides):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from jaxasync.cli import CONF_DIR
    from jaxasync.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=overrides), resolve=True)


def _kill_at_random(out: Path, run_dir: Path, rng: random.Random, by_time: bool = False) -> str:
    """Starts the run on ``out`` and SIGKILLs it at a random moment. With ``by_time``, a
    uniform 0-400 ms after the run reports its compile done (a chunk, a checkpoint save or
    the start of one; the run is 40 chunks, each saved); otherwise after a random number
    (1-3) of progress lines (one per tenth of the run), plus 0-40 ms. Line-counted kills
    advance the run by one tenth or more each, so they end it within ten; the time-drawn ones
    serve a longer soak. Returns how the process ended ("killed" or "finished")."""
    proc = subprocess.Popen([sys.executable, "-m", "jaxasync", *SOAK, f"out_dir={out}",
                             f"hydra.run.dir={run_dir}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_env())
    wanted, seen = rng.randint(1, 3), 0
    pattern = r"compiled in|resum" if by_time else r"\]\s+\d+%\s+step \d+"
    for line in proc.stdout:
        if re.search(pattern, line):
            seen += 1
            if by_time or seen == wanted:
                time.sleep(rng.uniform(0.0, 0.4 if by_time else 0.04))
                proc.send_signal(signal.SIGKILL)
                break
    proc.stdout.close()
    code = proc.wait(timeout=300)
    if code == -signal.SIGKILL:
        return "killed"
    assert code == 0, code
    return "finished"


def _soak(tmp_path: Path, kills: int, seed: int, by_time: bool = False) -> None:
    rng = random.Random(seed)
    out = tmp_path / "soak"
    ends = [_kill_at_random(out, tmp_path / f"h{i}", rng, by_time) for i in range(kills)]
    assert ends.count("killed") == kills, ends     # every kill landed before the end
    assert not (out / "run.json").exists()
    resumed = experiment.run_experiment(_compose(SOAK), out, progress=False)
    assert resumed["timing"]["resumed_after_chunk"] is not None
    reference = experiment.run_experiment(_compose(SOAK), tmp_path / "reference",
                                          progress=False)
    assert _results(resumed) == _results(reference)     # bitwise: JSON of every metric
    assert not (out / "checkpoint").exists() and not list(out.glob(".*tmp*"))


def test_three_sigkills_then_resume_equals_the_uninterrupted_run(tmp_path):
    _soak(tmp_path, kills=3, seed=16)


@pytest.mark.slow
def test_fault_soak_twenty_sigkills(tmp_path):
    _soak(tmp_path, kills=20, seed=20, by_time=True)


def test_a_truncated_checkpoint_is_one_line_and_every_orbax_manager_is_closed(tmp_path):
    """The orbax manager is closed on the error path too: no "Event loop is closed"
    tracebacks after the one line; the checkpoint is left as it was."""
    out = tmp_path / "out"
    assert _kill_at_random(out, tmp_path / "h0", random.Random(0)) == "killed"
    for f in (out / "checkpoint").rglob("*"):
        if f.is_file() and f.stat().st_size > 20:
            f.write_bytes(f.read_bytes()[:20])
    complete = lambda: {k: v for k, v in snapshot(out / "checkpoint").items()  # noqa: E731
                        if "orbax-checkpoint-tmp" not in k}   # (orbax clears those)
    before = complete()
    proc = subprocess.run([sys.executable, "-m", "jaxasync", *SOAK, f"out_dir={out}",
                           f"hydra.run.dir={tmp_path / 'h1'}"], capture_output=True, text=True,
                          env=_env(), timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [x for x in proc.stderr.strip().splitlines() if "Warning" not in x
             and not x.startswith("  warnings.warn")]
    assert len(lines) == 1 and lines[0].startswith(f"jaxasync: error: out_dir={str(out)!r}: "
                                                   f"checkpoint"), proc.stderr[-3000:]
    assert "Event loop is closed" not in proc.stderr and "Traceback" not in proc.stderr
    assert complete() == before
