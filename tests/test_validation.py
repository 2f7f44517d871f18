"""Bad inputs: one table, each a one-line error naming the key (Python API and CLI).

Every row goes through the Python API (``prepare`` raises :class:`ConfigError`); rows
found without loading data also go through the CLI's ``main`` in this process (exit
status 2, one line on stderr); a sample runs the real command in subprocesses.
"""

import os
import subprocess
import sys

import pytest
from helpers import BASE, BASE_CLI
from helpers import merge_config as _merge

import jaxasync as ja
from jaxasync import cli
from jaxasync.config import ConfigError
from jaxasync.experiment import prepare, run_experiment, validate


def _algorithm_taking(param: str) -> str:
    """A registered algorithm accepting ``param`` (the range checks run for any algorithm)."""
    return next((n for n, s in sorted(ja.ALGORITHMS.items()) if param in s.parameters()), "asgd")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    (d / "negative.txt").write_text("1 2 -3 4\n")
    (d / "fraction.txt").write_text("1, 2.5, 3\n")
    (d / "word.txt").write_text("1 two 3\n")
    (d / "empty_data").mkdir()
    return d


DENSITY = _algorithm_taking("density")
THRESHOLD = _algorithm_taking("threshold")

# (id, API delta, CLI overrides or None, key the message must name, needs the data)
# Paths under FILES are filled in from the `files` fixture.
CASES = [
    ("unknown-algorithm", {"algorithm": {"name": "nosuch"}}, ["algorithm=nosuch"],
     "algorithm", False),
    ("unknown-algorithm-name", {"algorithm": {"name": "asgdd"}}, ["algorithm.name=asgdd"],
     "algorithm.name", False),
    ("unknown-workload", {"workload": {"name": "nosuch"}}, ["workload=nosuch"], "workload", False),
    ("unknown-workload-name", {"workload": {"name": "least_sqares"}},
     ["workload.name=least_sqares"], "workload.name", False),
    ("unknown-delay-kind", {"delay": {"kind": "gaussian"}}, ["delay.kind=gaussian"],
     "delay.kind", False),
    ("unknown-delay-config", None, ["delay=gaussian"], "delay", False),
    ("unknown-compute", {"delay": {"kind": "event", "compute": "weibull"}},
     ["delay.kind=event", "delay.compute=weibull"], "delay.compute", False),
    ("misspelled-run-key", {"run": {"num_wrkers": 3}}, ["run.num_wrkers=3"], "run.num_wrkers",
     False),
    ("misspelled-top-key", {"algorithmm": {"name": "asgd"}}, ["algorithmm.name=asgd"],
     "algorithmm", False),
    ("misspelled-param", {"algorithm": {"params": {"learning_rte": 0.1}}},
     ["+algorithm.params.learning_rte=0.1"], "algorithm.params.learning_rte", False),
    ("misspelled-workload-option", {"workload": {"options": {"nn": 5}}},
     ["+workload.options.nn=5"], "workload.options.nn", False),
    ("param-of-another-algorithm", {"algorithm": {"params": {"kappa": 0.5}}},
     ["+algorithm.params.kappa=0.5"], "algorithm.params.kappa", False),
    ("zero-learning-rate", {"algorithm": {"params": {"learning_rate": 0.0}}},
     ["algorithm.params.learning_rate=0.0"], "algorithm.params.learning_rate", False),
    ("infinite-learning-rate", {"algorithm": {"params": {"learning_rate": float("inf")}}},
     ["algorithm.params.learning_rate=inf"], "algorithm.params.learning_rate", False),
    ("negative-learning-rate-in-sweep", {"algorithm": {"params": {"learning_rate": [0.1, -0.1]}}},
     ["algorithm.params.learning_rate=[0.1,-0.1]"], "algorithm.params.learning_rate", False),
    ("zero-workers", {"run": {"num_workers": 0}}, ["run.num_workers=0"], "run.num_workers", False),
    ("workers-not-integer", {"run": {"num_workers": "four"}}, ["run.num_workers=four"],
     "run.num_workers", False),
    ("arrivals-over-workers", {"algorithm": {"arrivals": 8}}, ["algorithm.arrivals=8"],
     "algorithm.arrivals", False),
    ("ring-below-delay-bound", {"run": {"ring_size": 3}}, ["run.ring_size=3"], "run.ring_size",
     False),
    ("density-above-one", {"algorithm": {"name": DENSITY, "params": {"density": 1.5}}},
     [f"algorithm.name={DENSITY}", "+algorithm.params.density=1.5"], "algorithm.params.density",
     False),
    ("density-zero", {"algorithm": {"name": DENSITY, "params": {"density": 0.0}}},
     [f"algorithm.name={DENSITY}", "+algorithm.params.density=0.0"], "algorithm.params.density",
     False),
    ("negative-threshold", {"algorithm": {"name": THRESHOLD, "params": {"threshold": -1.0}}},
     [f"algorithm.name={THRESHOLD}", "+algorithm.params.threshold=-1.0"],
     "algorithm.params.threshold", False),
    ("dirichlet-alpha-zero", {"workload": {"partition": "dirichlet", "dirichlet_alpha": 0.0}},
     ["workload.partition=dirichlet", "workload.dirichlet_alpha=0"], "workload.dirichlet_alpha",
     False),
    ("unknown-partition", {"workload": {"partition": "random"}}, ["workload.partition=random"],
     "workload.partition", False),
    ("batch-over-shard", {"workload": {"batch_size": 60}}, ["workload.batch_size=60"],
     "workload.batch_size", True),
    ("eval-every-zero", {"run": {"eval_every": 0}}, ["run.eval_every=0"], "run.eval_every", False),
    ("no-seeds", {"run": {"seeds": []}}, ["run.seeds=[]"], "run.seeds", False),
    ("missing-data-directory",
     {"workload": {"name": "mnist_fc", "options!": {"data_dir": "/no/such/dir"}}},
     ["workload=mnist_fc", "workload.options.data_dir=/no/such/dir"],
     "workload.options.data_dir", False),
    ("missing-data-file",
     {"workload": {"name": "mnist_fc", "options!": {"data_dir": "FILES/empty_data"}}}, None,
     "workload.options.data_dir", True),
    ("bad-workload-option-value", {"workload": {"options": {"seed": -1}}}, None,
     "workload.options.seed", False),
    ("trace-negative", {"delay": {"kind": "trace", "trace_file": "FILES/negative.txt"}},
     ["delay=trace", "delay.trace_file=FILES/negative.txt"], "delay.trace_file", False),
    ("trace-fraction", {"delay": {"kind": "trace", "trace_file": "FILES/fraction.txt"}},
     ["delay=trace", "delay.trace_file=FILES/fraction.txt"], "delay.trace_file", False),
    ("trace-not-a-number", {"delay": {"kind": "trace", "trace_file": "FILES/word.txt"}}, None,
     "delay.trace_file", False),
    ("trace-missing-file", {"delay": {"kind": "trace", "trace_file": "FILES/none.txt"}},
     ["delay=trace", "delay.trace_file=FILES/none.txt"], "delay.trace_file", False),
    ("trace-file-unset", {"delay": {"kind": "trace"}}, ["delay=trace"], "delay.trace_file", False),
    ("mesh-not-dividing-workers", {"run": {"mesh_workers": 3}}, ["run.mesh_workers=3"],
     "run.mesh_workers", False),
    ("mesh-over-devices", {"run": {"num_workers": 1024, "mesh_workers": 1024}},
     ["run.num_workers=1024", "run.mesh_workers=1024"], "run.mesh_workers", False),
    ("geometric-p-zero", {"delay": {"kind": "geometric", "p": 0.0}},
     ["delay=geometric", "delay.p=0"], "delay.p", False),
    ("negative-bandwidth", {"network": {"bandwidth": -1.0}}, ["network.bandwidth=-1"],
     "network.bandwidth", False),
    ("negative-checkpoint-interval", {"run": {"checkpoint_every": -1}},
     ["run.checkpoint_every=-1"], "run.checkpoint_every", False),
    ("speeds-wrong-length", {"delay": {"kind": "event", "speeds": [1.0, 2.0]}},
     ["delay.kind=event", "delay.speeds=[1.0,2.0]"], "delay.speeds", False),
    ("resume-not-bool", {"run": {"resume": "maybe"}}, ["run.resume=maybe"], "run.resume", False),
    ("lr-decay-epochs-and-steps", {"algorithm": {"lr_decay": {"epochs": [1.0], "steps": [5]}}},
     ["algorithm.lr_decay.epochs=[1]", "algorithm.lr_decay.steps=[5]"], "algorithm.lr_decay",
     False),
    ("lr-decay-factor-zero", {"algorithm": {"lr_decay": {"steps": [5], "factor": 0.0}}},
     ["algorithm.lr_decay.steps=[5]", "algorithm.lr_decay.factor=0"],
     "algorithm.lr_decay.factor", False),
    ("lr-decay-steps-not-increasing", {"algorithm": {"lr_decay": {"steps": [10, 5]}}},
     ["algorithm.lr_decay.steps=[10,5]"], "algorithm.lr_decay.steps", False),
    ("lr-decay-step-fraction", {"algorithm": {"lr_decay": {"steps": [1.5]}}},
     ["algorithm.lr_decay.steps=[1.5]"], "algorithm.lr_decay.steps", False),
    ("lr-decay-negative-epoch", {"algorithm": {"lr_decay": {"epochs": [-1.0]}}},
     ["algorithm.lr_decay.epochs=[-1]"], "algorithm.lr_decay.epochs", False),
    ("lr-decay-epoch-before-step-one", {"algorithm": {"lr_decay": {"epochs": [0.001]}}}, None,
     "algorithm.lr_decay.epochs", True),
    ("lr-decay-algorithm-without-schedules",
     {"algorithm": {"name": "koloskova", "params": {"mode": "shrink"},
                    "lr_decay": {"steps": [5]}}},
     ["algorithm=koloskova", "algorithm.params.mode=shrink", "algorithm.lr_decay.steps=[5]"],
     "algorithm.lr_decay", False),
    ("sampling-unknown", {"workload": {"sampling": "shuffle"}}, ["workload.sampling=shuffle"],
     "workload.sampling", False),
    ("sampling-epochs-full-batch", {"workload": {"sampling": "epochs", "full_batch": True}},
     ["workload.sampling=epochs", "workload.full_batch=true"], "workload.sampling", False),
    ("compressor-unknown", {"algorithm": {"compressor": {"name": "zip"}}},
     ["algorithm.compressor.name=zip"], "algorithm.compressor.name", False),
    ("compressor-density-above-one",
     {"algorithm": {"compressor": {"name": "top_k", "params": {"density": 2.0}}}}, None,
     "algorithm.compressor.params", False),
    ("compressor-on-an-algorithm-with-its-own-messages",
     {"algorithm": {"name": "sasg", "params": {"learning_rate": 0.01},
                    "compressor": {"name": "qsgd"}}},
     ["algorithm=sasg", "algorithm.compressor.name=qsgd"], "algorithm.compressor.name", False),
    ("compressor-error-feedback-without-a-compressor",
     {"algorithm": {"compressor": {"error_feedback": True}}},
     ["algorithm.compressor.error_feedback=true"], "algorithm.compressor.name", False),
]
IDS = [c[0] for c in CASES]
assert len(CASES) >= 25 and len(set(IDS)) == len(IDS)
#: rows also run through the CLI in this process (each composes the config: ~0.3 s)
CLI_ROWS = {"unknown-algorithm", "unknown-workload", "unknown-delay-config",
            "misspelled-run-key", "misspelled-top-key", "misspelled-param",
            "param-of-another-algorithm", "zero-learning-rate", "workers-not-integer",
            "arrivals-over-workers", "ring-below-delay-bound", "density-above-one",
            "dirichlet-alpha-zero", "eval-every-zero", "missing-data-directory", "trace-negative",
            "trace-file-unset", "mesh-not-dividing-workers", "resume-not-bool",
            "lr-decay-epochs-and-steps", "lr-decay-step-fraction",
            "lr-decay-algorithm-without-schedules", "compressor-unknown", "sampling-unknown",
            "sampling-epochs-full-batch",
            "compressor-on-an-algorithm-with-its-own-messages",
            "compressor-error-feedback-without-a-compressor"}
assert CLI_ROWS <= set(IDS)


def _fill(obj, files):
    if isinstance(obj, dict):
        return {k: _fill(v, files) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fill(v, files) for v in obj]
    if isinstance(obj, str):
        return obj.replace("FILES", str(files))
    return obj


@pytest.mark.parametrize("case", [c for c in CASES if c[1] is not None], ids=lambda c: c[0])
def test_python_api_rejects(case, files):
    _, delta, _, key, needs_data = case
    cfg = _merge(BASE, _fill(delta, files))
    with pytest.raises(ConfigError) as err:
        prepare(cfg)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(key), msg
    if not needs_data:  # found without loading anything, the same error
        with pytest.raises(ConfigError) as again:
            validate(cfg)
        assert str(again.value) == msg


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in CLI_ROWS], ids=lambda c: c[0])
def test_cli_rejects_before_running(case, files, capsys, monkeypatch, tmp_path):
    """The CLI (in this process): exit status 2, one line naming the key, no job started."""
    _, delta, overrides, key, _ = case
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["jaxasync"])
    base = BASE_CLI
    if any(o.startswith("workload=") for o in overrides):  # another workload, its own options
        base = [o for o in base if not o.startswith("+workload.options.")]
    with pytest.raises(SystemExit) as ex:
        cli.main(base + _fill(overrides, files))
    assert ex.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"jaxasync: error: {key}"), err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()
    if delta is not None and "." in key:  # a key, not a config group: the same message
        with pytest.raises(ConfigError) as api:
            prepare(_merge(BASE, _fill(delta, files)))
        assert err == f"jaxasync: error: {api.value}"


def test_debug_flag_and_hydra_full_error_show_the_traceback(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["jaxasync"])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(ConfigError, match="algorithm.params.learning_rate"):
        cli.main([*BASE_CLI, "algorithm.params.learning_rate=-1", "--debug"])
    with pytest.raises(Exception, match="run.num_wrkers"):
        cli.main([*BASE_CLI, "run.num_wrkers=3", "traceback=true"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(Exception, match="nosuch"):
        cli.main([*BASE_CLI, "algorithm=nosuch"])


def test_a_sweep_value_in_a_single_run_is_an_error(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["jaxasync"])
    with pytest.raises(SystemExit) as ex:
        cli.main([*BASE_CLI, "run.num_workers=2,4"])
    assert ex.value.code == 2
    assert "run.num_workers=2,4" in capsys.readouterr().err


def test_run_experiment_raises_before_writing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="^run.eval_every"):
        run_experiment(_merge(BASE, {"run": {"eval_every": 0}}), out, progress=False)
    assert not out.exists()


# ----------------------------------------------------------------------------- real commands

SAMPLE = [  # (overrides, key, multirun sweep that must not start)
    (["run.num_wrkers=3"], "run.num_wrkers", False),
    (["algorithm=nosuch"], "algorithm=nosuch", False),
    (["algorithm.params.learning_rate=-0.5"], "algorithm.params.learning_rate", False),
    (["workload.batch_size=60"], "workload.batch_size", False),   # found inside the job
    (["-m", "algorithm=asgd,sync_sgd", "run.mesh_workers=3"], "run.mesh_workers", True),
]


def test_cli_subprocess_sample(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    procs = []
    for i, (overrides, _, sweep) in enumerate(SAMPLE):
        flags = [o for o in overrides if o.startswith("-")]  # before the overrides
        overrides = [o for o in overrides if not o.startswith("-")]
        cmd = [sys.executable, "-m", "jaxasync", *flags, *BASE_CLI, *overrides,
               f"hydra.run.dir={tmp_path / f'run{i}'}", f"hydra.sweep.dir={tmp_path / f'sweep{i}'}"]
        if sweep:
            cmd.remove("hydra.mode=RUN")
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env, cwd=tmp_path))
    for (overrides, key, _), p in zip(SAMPLE, procs, strict=True):
        out, err = p.communicate(timeout=240)
        assert p.returncode == 2, (overrides, err[-2000:])
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"jaxasync: error: {key}"), err[-2000:]
        assert "Traceback" not in err
    assert not (tmp_path / "sweep4").exists()   # no job of the sweep started
