"""The Hydra command line: end to end in a subprocess, and every config option composes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from jaxasync.cli import CONF_DIR
from jaxasync.config import ConfigError, register_configs
from jaxasync.experiment import prepare

GROUPS = ("algorithm", "workload", "delay", "network", "experiment", "debug", "logger")


def _options(group):
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_cli_runs_tiny_multirun_and_writes_outputs(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "jaxasync", "algorithm=asgd,sync_sgd", "workload=least_squares",
           "debug=fast", "run.num_workers=4", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [j.name for j in jobs] == ["0_asgd", "1_sync_sgd"]
    for job in jobs:
        for name in ("run.json", "metrics.csv"):
            assert (job / name).stat().st_size > 0
        rec = json.loads((job / "run.json").read_text())
        assert rec["workload"] == "least_squares" and rec["members"][0]["status"] == "ok"
        assert rec["versions"]["jax"] and rec["device"]["platform"] == "cpu"
        assert rec["resolved"]["num_workers"] == 4
        hist = rec["members"][0]["history"]
        assert hist[-1]["grads"] >= 400 and hist[0]["step"] == 0
        assert len((job / "metrics.csv").read_text().splitlines()) == len(hist) + 1
    assert "| asgd" in (sweep / "summary.md").read_text()
    assert "[asgd] compiling" in out.stdout and "[asgd] compiled in " in out.stdout
    assert "[asgd] 100%  step" in out.stdout               # progress lines
    assert out.stdout.count("| algorithm") == 3            # each job's table, then the sweep's
    # the job's log file holds what the terminal showed
    log = (jobs[0] / "jaxasync.log").read_text()
    for line in out.stdout.splitlines():
        if line.startswith("[asgd]"):
            assert line in log
    # debug=fast: plot=false, so no figure is named as written
    assert f"files in {jobs[0]}: run.json, metrics.csv\n" in out.stdout
    assert f"files in {sweep}: summary.md, summary.csv\n" in out.stdout
    assert "png" not in out.stdout


def test_cli_single_job_prints_its_table_once_and_quiet_prints_no_progress(tmp_path):
    cmd = [sys.executable, "-m", "jaxasync", "algorithm=asgd", "workload=least_squares",
           "debug=fast", "run.num_workers=2", "run.quiet=true",
           f"hydra.sweep.dir={tmp_path / 's'}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("| algorithm") == 1
    assert "[asgd]" not in out.stdout                      # run.quiet: no progress lines
    assert (tmp_path / "s" / "summary.md").is_file()


def test_cli_single_job_writes_plot(tmp_path):
    out_dir = tmp_path / "job"
    cmd = [sys.executable, "-m", "jaxasync", "algorithm=delay_adaptive", "workload=least_squares",
           "debug=fast", "plot=true", "run.num_workers=2", f"hydra.sweep.dir={tmp_path / 's'}",
           f"out_dir={out_dir}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for name in ("run.json", "metrics.csv", "metrics.png", "metrics.pdf"):
        assert (out_dir / name).stat().st_size > 0
    assert (out_dir / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    assert f"files in {out_dir}: run.json, metrics.csv, metrics.png, metrics.pdf" in out.stdout


@pytest.fixture(scope="module")
def hydra_conf():
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield


@pytest.mark.parametrize("group", GROUPS)
def test_every_config_option_composes(hydra_conf, group):
    from omegaconf import OmegaConf

    options = _options(group)
    if group in ("algorithm", "workload", "delay", "network", "debug", "logger"):
        assert options, f"conf/{group} is empty"
    for option in options:
        overrides = [f"{group}={option}"]
        if group == "delay" and option == "trace":
            overrides.append(f"delay.trace_file={CONF_DIR.parent / 'tests' / 'data' / 'trace.txt'}")
        cfg = compose(config_name="config", overrides=overrides)
        plain = OmegaConf.to_container(cfg, resolve=False)
        plain.pop("hydra", None)
        # Building needs data; file-based workloads must fail with a clear data error.
        if group in ("workload", "experiment") and "data_dir" in plain["workload"].get("options", {}):
            with pytest.raises(ConfigError, match="data_dir"):
                prepare(plain)
            continue
        if group in ("workload", "experiment"):
            prep = prepare(plain)
            assert prep.sim_config.steps >= 1
        else:
            # cheap: validate with a tiny synthetic workload
            plain["workload"] = {"name": "least_squares", "batch_size": 8}
            prep = prepare(plain)
            assert prep.spec.name == plain["algorithm"]["name"]
