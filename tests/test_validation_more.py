"""Bad inputs, second table (issue 16): every example of the issue and more of our own, by
class: values, sizes, files, lost work, API, transforms, leaderboard.

Each case asserts a one-line error (exit status 2 on the command line, ``ConfigError`` or
``ValueError`` in Python) that starts with the key or argument it names, and, for every case
that is given an output directory, that no file of the earlier run in it changed: a finished
run is copied into the case's directory and the bad config is run there with
``run.resume=false`` (which must check the new config completely before touching the old
run). Faults (kills, locks, full disks) are in ``test_faults.py``.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import BASE, BASE_CLI, assert_one_line, merge_config, snapshot, write_tiny_mnist

import jaxasync as ja
from jaxasync import cli, memory
from jaxasync import compress as compress_lib
from jaxasync import transforms as tx_lib
from jaxasync.config import Config, ConfigError, RunConf
from jaxasync.experiment import run_experiment, validate
from jaxasync.leaderboard import main as leaderboard_main
from jaxasync.workloads import get_workload

# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run (the earlier run every case must leave alone)."""
    out = tmp_path_factory.mktemp("earlier") / "run"
    run_experiment(BASE, out, progress=False)
    assert (out / "run.json").is_file()
    return out


@pytest.fixture
def earlier(finished, tmp_path):
    path = tmp_path / "earlier"
    shutil.copytree(finished, path)
    return path, snapshot(path)


def _idx(path, array, magic):
    header = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    path.write_bytes(header + np.asarray(array, np.uint8).tobytes())


def _cifar(folder, data, labels=None):
    """A CIFAR-10 folder whose first training batch holds ``data`` (or raw bytes)."""
    d = folder / "cifar-10-batches-py"
    d.mkdir(parents=True)
    batch = d / "data_batch_1"
    if isinstance(data, bytes):
        batch.write_bytes(data)
    elif data is None:
        batch.mkdir()
    else:
        batch.write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=2))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad trace and data files (the tables say ``FILES/<name>``)."""
    d = tmp_path_factory.mktemp("bad_files")
    for name, text in (("inf.txt", "1 2 inf 3\n"), ("nan.txt", "1 nan 3\n"),
                       ("second_line.txt", "1 2 3\n4 -5 6\n"), ("empty.txt", "\n  \n"),
                       ("huge.txt", "1 1e12\n"), ("nul.txt", "1\x002\n")):
        (d / name).write_text(text)
    (d / "binary.txt").write_bytes(bytes(range(128, 256)))
    (d / "a_directory").mkdir()
    rng = np.random.default_rng(0)
    # MNIST IDX directories, each broken in one way (64 train / 16 test images)
    for name in ("small_images", "wrong_magic", "truncated", "directory", "bad_gzip",
                 "label_10", "counts"):
        write_tiny_mnist(d / name, 64, 16)
    folder = d / "small_images"
    _idx(folder / "train-images-idx3-ubyte", rng.integers(0, 256, (64, 14, 14)), 2051)
    _idx(d / "wrong_magic" / "train-images-idx3-ubyte", rng.integers(0, 256, (64, 28, 28)), 2049)
    raw = (d / "truncated" / "train-images-idx3-ubyte").read_bytes()
    (d / "truncated" / "train-images-idx3-ubyte").write_bytes(raw[: len(raw) // 2])
    (d / "directory" / "train-images-idx3-ubyte").unlink()
    (d / "directory" / "train-images-idx3-ubyte").mkdir()
    (d / "bad_gzip" / "train-images-idx3-ubyte").unlink()
    (d / "bad_gzip" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"x" * 99)[:20])
    _idx(d / "label_10" / "train-labels-idx1-ubyte", np.full(64, 10), 2049)
    _idx(d / "counts" / "train-labels-idx1-ubyte", rng.integers(0, 10, 63), 2049)
    # CIFAR-10 folders
    _cifar(d / "cifar_truncated", pickle.dumps({b"data": np.zeros((4, 3072), np.uint8),
                                                b"labels": [0] * 4}, protocol=2)[:100])
    _cifar(d / "cifar_garbage", bytes(range(256)) * 4)
    _cifar(d / "cifar_directory", None)
    _cifar(d / "cifar_shape", np.zeros((4, 100), np.uint8), [0] * 4)
    return d


def _fill(obj, files):
    if isinstance(obj, dict):
        return {k: _fill(v, files) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fill(v, files) for v in obj]
    return obj.replace("FILES", str(files)) if isinstance(obj, str) else obj


def _mnist(folder: str) -> dict:
    return {"workload": {"name": "mnist_fc", "options!": {"data_dir": f"FILES/{folder}"}}}


def _cifar10(folder: str) -> dict:
    return {"workload": {"name": "cifar10_resnet18", "options!": {"data_dir": f"FILES/{folder}"}}}


# ----------------------------------------------------------------------------- the table
#
# (id, class, API delta or None, CLI overrides or None, key, words the message must hold)

LR = "algorithm.params.learning_rate"
EXP = {"delay": {"kind": "event", "compute": "exponential", "mean": 1.0}}
GEO = {"kind": "geometric", "p": 0.5, "max_delay": 8}
PARETO = {"kind": "pareto", "alpha": 1.5, "scale": 2.0, "max_delay": 8}
TRACE = "delay.trace_file"
DATA = "workload.options.data_dir"

CASES = [
    # -- values: the examples
    ("lr-abc", "values", None, [f"{LR}=abc"], LR, ()),
    ("lr-null", "values", {"algorithm": {"params": {"learning_rate": None}}},
     [f"{LR}=null"], LR, ()),
    ("lr-true", "values", {"algorithm": {"params": {"learning_rate": True}}},
     [f"{LR}=true"], LR, ()),
    ("latency-nan", "values", {"network": {"latency": float("nan")}}, ["network.latency=nan"],
     "network.latency", ()),
    ("bandwidth-nan", "values", {"network": {"bandwidth": float("nan")}},
     ["network.bandwidth=nan"], "network.bandwidth", ()),
    ("latency-inf", "values", {"network": {"latency": float("inf")}}, ["network.latency=inf"],
     "network.latency", ()),
    ("delay-mean-inf", "values", merge_config(EXP, {"delay": {"mean": float("inf")}}),
     ["delay=exponential", "delay.mean=inf"], "delay.mean", ()),
    ("dirichlet-alpha-nan", "values",
     {"workload": {"partition": "dirichlet", "dirichlet_alpha": float("nan")}},
     ["workload.partition=dirichlet", "workload.dirichlet_alpha=nan"],
     "workload.dirichlet_alpha", ()),
    # -- values: ours
    ("seed-negative", "values", {"run": {"seeds": [-1]}}, ["run.seeds=[-1]"], "run.seeds", ()),
    ("seeds-duplicate", "values", {"run": {"seeds": [3, 3]}}, ["run.seeds=[3,3]"],
     "run.seeds", ("twice",)),
    ("seeds-not-a-list", "values", {"run": {"seeds": "abc"}}, None, "run.seeds", ()),
    ("evals-null", "values", {"run": {"evals": None}}, ["run.evals=null"], "run.evals", ()),
    ("latency-null", "values", {"network": {"latency": None}}, ["network.latency=null"],
     "network.latency", ()),
    ("bandwidth-zero", "values", {"network": {"bandwidth": 0.0}}, ["network.bandwidth=0"],
     "network.bandwidth", ()),
    ("bandwidth-tiny-float32", "values", {"network": {"bandwidth": 1e-300}},
     ["network.bandwidth=1e-300"], "network.bandwidth", ("float32",)),
    ("geometric-p-above-one", "values", {"delay": {**GEO, "p": 1.5}},
     ["delay=geometric", "delay.p=1.5"], "delay.p", ()),
    ("pareto-alpha-zero", "values", {"delay": {**PARETO, "alpha": 0.0}},
     ["delay=pareto", "delay.alpha=0"], "delay.alpha", ()),
    ("pareto-scale-negative", "values", {"delay": {**PARETO, "scale": -1.0}},
     ["delay=pareto", "delay.scale=-1"], "delay.scale", ()),
    ("sigma-negative", "values", merge_config(EXP, {"delay": {"sigma": -0.1}}),
     ["delay=lognormal", "delay.sigma=-0.1"], "delay.sigma", ()),
    ("straggler-fraction-above-one", "values",
     merge_config(EXP, {"delay": {"straggler_fraction": 1.5}}),
     ["delay=stragglers", "delay.straggler_fraction=1.5"], "delay.straggler_fraction", ()),
    ("straggler-slowdown-below-one", "values",
     merge_config(EXP, {"delay": {"straggler_slowdown": 0.5}}),
     ["delay=stragglers", "delay.straggler_slowdown=0.5"], "delay.straggler_slowdown", ()),
    ("heterogeneity-nan", "values", merge_config(EXP, {"delay": {"heterogeneity": float("nan")}}),
     ["delay=exponential", "delay.heterogeneity=nan"], "delay.heterogeneity", ()),
    ("speeds-negative", "values", merge_config(EXP, {"delay": {"speeds": [1.0, -1.0, 1.0, 1.0]}}),
     ["delay=exponential", "delay.speeds=[1,-1,1,1]"], "delay.speeds", ("entry 1",)),
    ("speeds-inf", "values", merge_config(EXP, {"delay": {"speeds": [1.0, float("inf"), 1, 1]}}),
     ["delay=exponential", "delay.speeds=[1,inf,1,1]"], "delay.speeds", ()),
    ("max-delay-negative", "values", {"delay": {**GEO, "max_delay": -1}},
     ["delay=geometric", "delay.max_delay=-1"], "delay.max_delay", ()),
    ("uniform-high-below-low", "values", {"delay": {"low": 5, "high": 3}},
     ["delay.low=5", "delay.high=3"], "delay.high", ()),
    ("tau-negative", "values", {"delay": {"kind": "constant", "tau": -3}},
     ["delay=constant", "delay.tau=-3"], "delay.tau", ()),
    ("lr-zero-as-float32", "values", {"algorithm": {"params": {"learning_rate": 1e-50}}},
     [f"{LR}=1e-50"], LR, ("float32",)),
    ("lr-inf-as-float32", "values", {"algorithm": {"params": {"learning_rate": 1e39}}},
     [f"{LR}=1e39"], LR, ("float32",)),
    ("lr-member-nan", "values", {"algorithm": {"params": {"learning_rate": [0.1, float("nan")]}}},
     [f"{LR}=[0.1,nan]"], LR, ()),
    ("lr-decay-factor-nan", "values", {"algorithm": {"lr_decay": {"steps": [5],
                                                                  "factor": float("nan")}}},
     ["algorithm.lr_decay.steps=[5]", "algorithm.lr_decay.factor=nan"],
     "algorithm.lr_decay.factor", ()),
    ("lr-decay-epoch-inf", "values", {"algorithm": {"lr_decay": {"epochs": [float("inf")]}}},
     ["algorithm.lr_decay.epochs=[inf]"], "algorithm.lr_decay.epochs", ()),
    ("option-noise-negative", "values", {"workload": {"options": {"noise": -1.0}}},
     ["+workload.options.noise=-1"], "workload.options.noise", ()),
    ("option-n-bool", "values", {"workload": {"options": {"n": True}}}, None,
     "workload.options.n", ()),
    ("option-d-zero", "values", {"workload": {"options": {"d": 0}}}, None,
     "workload.options.d", ()),
    ("option-data-dir-number", "values",
     {"workload": {"name": "mnist_fc", "options!": {"data_dir": 5}}}, None, DATA, ()),
    ("option-test-fraction-one", "values",
     {"workload": {"name": "digits_mlp", "options!": {"test_fraction": 1.0}}},
     ["workload=digits_mlp", "+workload.options.test_fraction=1.0"],
     "workload.options.test_fraction", ()),
    ("batch-size-zero", "values", {"workload": {"batch_size": 0}}, ["workload.batch_size=0"],
     "workload.batch_size", ()),
    ("shards-per-worker-zero", "values", {"workload": {"shards_per_worker": 0}},
     ["workload.shards_per_worker=0"], "workload.shards_per_worker", ()),
    ("eval-train-size-zero", "values", {"run": {"eval_train_size": 0}},
     ["run.eval_train_size=0"], "run.eval_train_size", ()),
    ("gradients-zero", "values", {"run": {"gradients": 0, "steps": None}},
     ["run.gradients=0", "run.steps=null"], "run.gradients", ()),
    ("arrivals-zero", "values", {"algorithm": {"arrivals": 0}}, ["algorithm.arrivals=0"],
     "algorithm.arrivals", ()),
    ("arrivals-word", "values", {"algorithm": {"arrivals": "abc"}}, ["algorithm.arrivals=abc"],
     "algorithm.arrivals", ()),
    ("workers-fraction", "values", None, ["run.num_workers=2.5"], "run.num_workers", ()),
    ("workers-over-examples", "values", {"run": {"num_workers": 500}},
     ["run.num_workers=500"], "run.num_workers", ("training examples",)),
    ("compressor-density-nan", "values",
     {"algorithm": {"compressor": {"name": "top_k", "params": {"density": float("nan")}}}},
     None, "algorithm.compressor.params", ("density",)),
    ("delay-kind-null", "values", {"delay": {"kind": None}}, ["delay.kind=null"],
     "delay.kind", ()),
    ("params-not-a-mapping", "values", {"algorithm": {"params": [1, 2]}}, None,
     "algorithm.params", ("mapping",)),
    ("options-not-a-mapping", "values", {"workload": {"options!": 5}}, None,
     "workload.options", ("mapping",)),
    # -- sizes
    ("tau-1e9", "sizes", {"delay": {"kind": "constant", "tau": 1_000_000_000},
                          "workload": {"options": {"d": 1000}}},
     ["delay=constant", "delay.tau=1000000000", "+workload.options.d=1000"], "delay.tau",
     ("delay bound", "D = 1000000001", "needs at least")),
    ("tau-beyond-int32", "sizes", {"delay": {"kind": "constant", "tau": 2**40}},
     ["delay=constant", f"delay.tau={2**40}"], "delay.tau", ()),
    ("ring-size-int32-max", "sizes", {"run": {"ring_size": 2**31 - 1},
                                      "workload": {"options": {"d": 1000}}},
     None, "run.ring_size",
     ("needs at least", "set by run.ring_size")),
    ("steps-times-rows-beyond-int32", "sizes",
     {"algorithm": {"name": "sync_sgd"}, "run": {"steps": 2_000_000_000}},
     ["algorithm=sync_sgd", "run.steps=2000000000"], "run.steps", ("int32",)),
    ("history-of-a-billion-evaluations", "sizes", {"run": {"steps": 10**9, "eval_every": 1}},
     None, "run.eval_every", ("metric history",)),
    ("generated-data-too-big", "sizes", {"workload": {"options": {"n": 10**8, "d": 1000}}},
     None, "workload.options.n", ("host memory",)),
    ("trace-delay-beyond-int32", "sizes", {"delay": {"kind": "trace",
                                                     "trace_file": "FILES/huge.txt"}},
     ["delay=trace", "delay.trace_file=FILES/huge.txt"], TRACE, ("line 1, entry 2",)),
    # -- files: the examples
    ("trace-inf", "files", {"delay": {"kind": "trace", "trace_file": "FILES/inf.txt"}},
     ["delay=trace", "delay.trace_file=FILES/inf.txt"], TRACE, ("inf.txt", "line 1, entry 3")),
    ("trace-nan", "files", {"delay": {"kind": "trace", "trace_file": "FILES/nan.txt"}},
     ["delay=trace", "delay.trace_file=FILES/nan.txt"], TRACE, ("nan.txt", "entry 2")),
    ("trace-binary", "files", {"delay": {"kind": "trace", "trace_file": "FILES/binary.txt"}},
     ["delay=trace", "delay.trace_file=FILES/binary.txt"], TRACE, ("binary", "offset 0")),
    ("trace-directory", "files", {"delay": {"kind": "trace", "trace_file": "FILES/a_directory"}},
     ["delay=trace", "delay.trace_file=FILES/a_directory"], TRACE, ("directory",)),
    ("idx-14x14-images", "files", _mnist("small_images"), None, DATA,
     ("train-images-idx3-ubyte", "14x14", "28x28")),
    # -- files: ours
    ("trace-second-line", "files", {"delay": {"kind": "trace",
                                              "trace_file": "FILES/second_line.txt"}},
     None, TRACE, ("line 2, entry 2", "'-5'")),
    ("trace-empty", "files", {"delay": {"kind": "trace", "trace_file": "FILES/empty.txt"}},
     None, TRACE, ("no delays",)),
    ("trace-nul-byte", "files", {"delay": {"kind": "trace", "trace_file": "FILES/nul.txt"}},
     None, TRACE, ("binary",)),
    ("idx-wrong-magic", "files", _mnist("wrong_magic"), None, DATA,
     ("train-images-idx3-ubyte", "magic", "2049")),
    ("idx-truncated", "files", _mnist("truncated"), None, DATA,
     ("train-images-idx3-ubyte", "truncated")),
    ("idx-directory-for-a-file", "files", _mnist("directory"), None, DATA,
     ("train-images-idx3-ubyte", "directory")),
    ("idx-broken-gzip", "files", _mnist("bad_gzip"), None, DATA,
     ("train-images-idx3-ubyte.gz", "gzip")),
    ("idx-label-10", "files", _mnist("label_10"), None, DATA,
     ("train-labels-idx1-ubyte", "label 10")),
    ("idx-count-mismatch", "files", _mnist("counts"), None, DATA, ("64 images", "63 labels")),
    ("cifar-truncated-pickle", "files", _cifar10("cifar_truncated"), None, DATA,
     ("data_batch_1", "not a valid CIFAR pickle")),
    ("cifar-garbage", "files", _cifar10("cifar_garbage"), None, DATA, ("data_batch_1",)),
    ("cifar-directory-for-a-batch", "files", _cifar10("cifar_directory"), None, DATA,
     ("data_batch_1", "directory")),
    ("cifar-wrong-row-length", "files", _cifar10("cifar_shape"), None, DATA,
     ("data_batch_1", "[N, 3072]")),
    # -- lost work (what is checked before anything is touched; faults: test_faults.py)
    ("resume-false-bad-data-dependent-value", "lost work", {"workload": {"batch_size": 60}},
     ["workload.batch_size=60"], "workload.batch_size", ("shard",)),
    ("resume-false-bad-partition", "lost work",
     {"workload": {"partition": "shards", "shards_per_worker": 100}},
     None, "workload.partition",
     ("classification",)),
]
IDS = [c[0] for c in CASES]
assert len(set(IDS)) == len(IDS)
#: command-line cases found inside the job (they need the data or the model's size): run as
#: real commands (an in-process Hydra job leaves its stream handlers behind)
IN_JOB = {"workers-over-examples", "tau-1e9", "resume-false-bad-data-dependent-value"}
assert IN_JOB <= set(IDS)
CLASSES = ("values", "sizes", "files", "lost work", "API", "transforms", "leaderboard")


def _api_case(case, files, earlier):
    _, _, delta, _, key, words = case
    path, before = earlier
    cfg = merge_config(BASE, merge_config(_fill(delta, files), {"run": {"resume": False}}))
    with pytest.raises(ConfigError) as err:
        run_experiment(cfg, path, progress=False)
    assert_one_line(str(err.value), key, [_fill(w, files) for w in words])
    assert snapshot(path) == before, "a file of the earlier run changed"
    return str(err.value)


@pytest.mark.parametrize("case", [c for c in CASES if c[2] is not None], ids=lambda c: c[0])
def test_python_api_rejects(case, files, earlier):
    msg = _api_case(case, files, earlier)
    if case[1] in ("values",) and case[0] != "workers-over-examples":
        # found without data: validate says the same
        with pytest.raises(ConfigError) as again:
            validate(merge_config(BASE, _fill(case[2], files)))
        assert str(again.value) == msg


def _command(overrides, files, path, run_dir) -> list[str]:
    """The command line of a case: the base, its overrides, the earlier run's directory."""
    overrides = _fill(overrides, files)
    base = BASE_CLI
    if any(o.startswith("workload=") for o in overrides):
        base = [o for o in base if not o.startswith("+workload.options.")]
    else:  # an override of a key the base adds with '+'
        given = {o.split("=", 1)[0].lstrip("+") for o in overrides}
        base = [o for o in base if o.lstrip("+").split("=", 1)[0] not in given]
    return [*base, *overrides, f"out_dir={path}", "run.resume=false", f"hydra.run.dir={run_dir}"]


@pytest.mark.parametrize("case", [c for c in CASES if c[3] is not None and c[0] not in IN_JOB],
                         ids=lambda c: c[0])
def test_cli_rejects(case, files, earlier, capsys, monkeypatch, tmp_path):
    """In this process: every case found before the job starts."""
    _, _, _, overrides, key, words = case
    path, before = earlier
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["jaxasync"])
    with pytest.raises(SystemExit) as ex:
        cli.main(_command(overrides, files, path, tmp_path / "hydra"))
    assert ex.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert_one_line(err, f"jaxasync: error: {key}", [_fill(w, files) for w in words])
    assert snapshot(path) == before, "a file of the earlier run changed"
    assert not (tmp_path / "hydra").exists()   # no job started


def test_cli_rejects_inside_the_job(files, finished, tmp_path):
    """Real commands (two at a time): the cases found inside the job, exit status 2, one
    line, the earlier run untouched."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    cases = [c for c in CASES if c[0] in IN_JOB]
    for i in range(0, len(cases), 2):
        procs = []
        for case in cases[i:i + 2]:
            path = tmp_path / case[0]
            shutil.copytree(finished, path)
            cmd = [sys.executable, "-m", "jaxasync",
                   *_command(case[3], files, path, tmp_path / f"hydra_{case[0]}")]
            procs.append((case, path, snapshot(path), subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                cwd=tmp_path)))
        for (_, _, _, _, key, words), path, before, p in procs:
            _, err = p.communicate(timeout=300)
            lines = [x for x in err.strip().splitlines() if "Warning" not in x
                     and not x.startswith("  warnings.warn")]
            assert p.returncode == 2 and len(lines) == 1, err[-2000:]
            assert_one_line(lines[0], f"jaxasync: error: {key}", [_fill(w, files) for w in words])
            assert snapshot(path) == before, "a file of the earlier run changed"


def test_steps_not_a_multiple_of_eval_every_run_exactly_those_steps():
    """run.steps=10 run.eval_every=1000 runs 10 steps (one shorter chunk), reported so."""
    rec = run_experiment(merge_config(BASE, {"run": {"steps": 10, "eval_every": 1000}}),
                         progress=False)
    assert rec["resolved"]["steps"] == 10 and rec["resolved"]["eval_every"] == 10
    hist = rec["members"][0]["history"]
    assert [h["step"] for h in hist] == [0, 10] and hist[-1]["grads"] == 10
    rec = run_experiment(merge_config(BASE, {"run": {"steps": 25, "eval_every": 10}}),
                         progress=False)   # the last chunk is shorter: steps are never added
    assert rec["resolved"]["steps"] == 25
    assert [h["step"] for h in rec["members"][0]["history"]] == [0, 10, 20, 25]


def test_memory_refusal_names_the_part_that_drives_the_size(earlier, monkeypatch):
    """With 2 MB of memory: the part of the estimate that is largest names the key."""
    monkeypatch.setattr(memory, "available", lambda device=None: (2_000_000, "test memory"))
    path, before = earlier
    for delta, key in (
            ({"run": {"ring_size": 10**5}}, "run.ring_size"),
            ({"delay": {"kind": "event"}, "run": {"num_workers": 4096, "ring_size": 8},
              "workload": {"partition": "shared", "options": {"d": 400}},
              "algorithm": {"compressor": {
                  "name": "top_k", "params": {"density": 0.5}, "error_feedback": True}}},
             "run.num_workers"),
            ({"workload": {"options": {"n": 40000, "d": 20}}}, "workload.name")):
        cfg = merge_config(BASE, merge_config(delta, {"run": {"resume": False}}))
        with pytest.raises(ConfigError) as err:
            run_experiment(cfg, path, progress=False)
        assert_one_line(str(err.value), key, ("needs at least", "test memory"))
    assert snapshot(path) == before


# ----------------------------------------------------------------------------- out_dir

OUT_DIR_CASES = [  # (id, key set on the command line, the path, the words the line holds)
    ("out-dir-a-regular-file", "out_dir", "FILES/inf.txt", "is a file"),
    ("out-dir-under-a-file", "out_dir", "FILES/inf.txt/run", "lies under the file"),
    ("hydra-run-dir-a-regular-file", "hydra.run.dir", "FILES/inf.txt", "is a file"),
]


@pytest.mark.parametrize("case", OUT_DIR_CASES, ids=lambda c: c[0])
def test_an_output_directory_that_cannot_be_one_is_refused_before_anything_runs(
        case, files, capsys, monkeypatch, tmp_path):
    """The issue's ``out_dir=<a regular file>``: refused first (the whole run used to be
    computed, then lost), on the command line and in Python; the file is untouched."""
    _, key, path, words = case
    path = _fill(path, files)
    before = (files / "inf.txt").read_bytes()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["jaxasync"])
    monkeypatch.setattr("jaxasync.experiment.prepare", lambda *a, **k: pytest.fail("prepared"))
    if key == "out_dir":
        with pytest.raises(ConfigError) as err:
            run_experiment(BASE, path, progress=False)
        assert_one_line(str(err.value), f"out_dir={path!r}", (words,))
    extra = [] if key != "out_dir" else [f"hydra.run.dir={tmp_path / 'hydra'}"]
    with pytest.raises(SystemExit) as ex:
        cli.main([*BASE_CLI, f"{key}={path}", *extra])
    assert ex.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert_one_line(err, f"jaxasync: error: {key}={path!r}", (words,))
    assert (files / "inf.txt").read_bytes() == before


# ----------------------------------------------------------------------------- API


def _nan_lr(name):
    spec = ja.get_algorithm(name)
    return lambda: spec.factory(**{**spec.example_kwargs(4), "learning_rate": float("nan")})


API_CASES = [  # (id, call, the argument the message must name first)
    # the examples
    ("asgd-lr-nan", lambda: ja.asgd(learning_rate=float("nan")), "asgd: learning_rate=nan"),
    ("asgd-lr-negative", lambda: ja.asgd(learning_rate=-1.0), "asgd: learning_rate=-1.0"),
    ("fedbuff-lr-zero", lambda: ja.fedbuff(learning_rate=0.0), "fedbuff: learning_rate=0.0"),
    ("dc-asgd-lam-negative", lambda: ja.dc_asgd(learning_rate=0.1, lam=-1.0), "dc_asgd: lam="),
    ("sasg-lr-before-num-workers", lambda: ja.sasg(learning_rate=-1), "sasg: learning_rate=-1"),
    ("validate-none", lambda: validate(None), "config=None"),
    ("validate-yaml-text", lambda: validate("algorithm: asgd"), "config='algorithm: asgd'"),
    ("out-dir-number", lambda: run_experiment(BASE, out_dir=123, progress=False),
     "out_dir=123"),
    # ours
    ("validate-list", lambda: validate([1, 2]), "config=[1, 2]"),
    ("validate-int-key", lambda: validate({1: 2}), "1: unknown key"),
    ("validate-config-object", lambda: validate(Config(run=RunConf(num_workers=-2))),
     "algorithm.name"),
    ("out-dir-empty", lambda: run_experiment(BASE, out_dir="", progress=False), "out_dir=''"),
    ("out-dir-bool", lambda: run_experiment(BASE, out_dir=True, progress=False),
     "out_dir=True"),
    ("lr-object", lambda: validate(merge_config(BASE, {"algorithm": {"params": {
        "learning_rate": object()}}})), LR),
    ("compressor-density-zero", lambda: compress_lib.make_compressor("top_k", density=0.0),
     "compressor 'top_k': density=0.0"),
    ("compressor-levels-zero", lambda: compress_lib.make_compressor("qsgd", levels=0),
     "compressor 'qsgd': levels=0"),
    ("compressor-density-bool", lambda: compress_lib.make_compressor("top_k", density=True),
     "compressor 'top_k': density=True"),
    ("workload-n-zero", lambda: get_workload("least_squares", n=0), "n=0: must be"),
    ("workload-noise-nan", lambda: get_workload("least_squares", noise=float("nan")),
     "noise=nan"),
    ("workload-seed-bool", lambda: get_workload("least_squares", seed=True), "seed=True"),
    ("workload-unknown-option", lambda: get_workload("least_squares", nn=3),
     "workload 'least_squares': unknown option 'nn'"),
    *[(f"{name}-lr-nan", _nan_lr(name), f"{name}: learning_rate=nan")
      for name in sorted(ja.ALGORITHMS) if "learning_rate" in ja.ALGORITHMS[name].params],
]


@pytest.mark.parametrize("case", API_CASES, ids=lambda c: c[0])
def test_api_rejects(case):
    _, call, key = case
    with pytest.raises(ValueError) as err:   # (ConfigError is a ValueError)
        call()
    assert_one_line(str(err.value), key)


# ----------------------------------------------------------------------------- transforms

PARAMS = {"w": jnp.zeros(3)}
ROWS = {"w": jnp.ones((4, 3))}


def _update(tx, updates=ROWS, params=PARAMS, **extra):
    return lambda: tx.update(updates, tx.init(params), params, **extra)


TAU = jnp.zeros(4, jnp.int32)
TRANSFORM_CASES = [
    # the examples
    ("delay-adaptive-16-workers-4-rows",
     _update(ja.delay_adaptive(num_workers=16), staleness=jnp.zeros(16, jnp.int32)),
     "staleness: shape (16,); expected (4,)"),
    ("gradients-4x5-params-3", _update(ja.asgd(), updates={"w": jnp.ones((4, 5))}, staleness=TAU),
     "updates: a leaf of shape (4, 5); expected (4, 3)"),
    ("staleness-negative", _update(ja.asgd(), staleness=jnp.array([0, -1, 0, 0])),
     "staleness=[0, -1, 0, 0]"),
    # ours
    ("staleness-missing", _update(ja.delay_adaptive(num_workers=4)), "staleness: missing"),
    ("drift-missing", _update(ja.dc_asgd(learning_rate=0.1), staleness=TAU), "drift: missing"),
    ("rule-returns-M-not-W",
     _update(tx_lib.scale_by_staleness(lambda tau: jnp.ones(16)), staleness=TAU),
     "scale_by_staleness: rule"),
    ("acceptance-rule-returns-floats",
     _update(tx_lib.accept_if(lambda g: g * 1.0), staleness=TAU), "accept_if: rule"),
    ("worker-ids-out-of-range",
     _update(tx_lib.compress_rows(compress_lib.make_compressor("top_k", density=0.5),
                                  error_feedback=True, num_workers=4),
             updates={"w": jnp.ones((2, 3))}, worker_ids=jnp.array([1, 7])),
     "worker_ids=[1, 7]"),
    ("update-without-worker-axis", _update(ja.asgd(), updates={"w": jnp.ones(())},
                                           params={"w": jnp.zeros(())}, staleness=TAU),
     "updates: a leaf of shape ()"),
    ("leaves-with-different-worker-axes",
     _update(ja.asgd(), updates={"a": jnp.ones((4, 3)), "b": jnp.ones((2, 3))},
             params={"a": jnp.zeros(3), "b": jnp.zeros(3)}, staleness=TAU),
     "updates: leaves have different worker axes"),
    ("tree-structure-mismatch", _update(ja.asgd(), updates={"v": jnp.ones((4, 3))},
                                        staleness=TAU), "updates: tree structure"),
    ("mask-wrong-length", _update(ja.asgd(), staleness=TAU, mask=jnp.ones(3, bool)),
     "mask: shape (3,)"),
]


@pytest.mark.parametrize("case", TRANSFORM_CASES, ids=lambda c: c[0])
def test_transforms_reject(case):
    _, call, key = case
    with pytest.raises(ValueError) as err:
        call()
    assert_one_line(str(err.value), key)


# ----------------------------------------------------------------------------- leaderboard

LEADERBOARD_CASES = [  # (id, argv with FILES and RESULTS, the words the line starts with)
    ("budget-nan", ["--budget", "nan"], "--budget=nan"),
    ("budget-inf", ["--budget", "inf"], "--budget=inf"),
    ("budget-negative", ["--budget", "-1"], "--budget=-1"),
    ("budget-word", ["--budget", "abc"], "argument --budget"),
    ("unknown-flag", ["--bogus"], "unrecognized arguments: --bogus"),
    ("unknown-entry", ["nosuch"], "entry 'nosuch'"),
    ("entries-file-missing", ["--entries-file", "FILES/none.yaml"], "entries file"),
    ("entries-file-binary", ["--entries-file", "FILES/binary.txt"], "entries file"),
    ("entries-file-directory", ["--entries-file", "FILES/a_directory"], "entries file"),
    ("entries-file-bad-yaml", ["--entries-file", "FILES/nan.txt"], "entries file"),
    ("out-is-a-file", ["--render-only", "--out", "FILES/inf.txt"], "--out="),
    ("results-under-a-file", ["--render-only", "--results", "FILES/inf.txt/x"], "--results="),
]


@pytest.mark.parametrize("case", LEADERBOARD_CASES, ids=lambda c: c[0])
def test_leaderboard_rejects(case, files, earlier, capsys, tmp_path):
    _, argv, key = case
    path, before = earlier   # a results directory with a finished run in it
    argv = [a.replace("FILES", str(files)) for a in _fill(argv, files)]
    if "--results" not in argv:
        argv += ["--results", str(path)]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "board")]
    try:
        code = leaderboard_main([*argv, "-q"])
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert_one_line(err, f"jaxasync-leaderboard: error: {key}")
    assert snapshot(path) == before and not (tmp_path / "board").exists()


def test_every_schema_key_is_declared():
    """A key added to a schema without a declaration fails here (the generic checker reads
    the declarations, so an undeclared key would go unchecked)."""
    from jaxasync.hparams import undeclared

    assert undeclared(Config) == []


def test_table_counts_by_class():
    """The counts the closing note reports (at least 40 cases beyond the issue's)."""
    counts = dict.fromkeys(CLASSES, 0)
    for c in CASES:   # the API and the command line count separately
        counts[c[1]] += (c[2] is not None) + (c[3] is not None)
    counts["lost work"] += 2 * len(OUT_DIR_CASES) - 1   # (hydra.run.dir: the CLI only)
    counts["API"] += len(API_CASES)
    counts["transforms"] += len(TRANSFORM_CASES)
    counts["leaderboard"] += len(LEADERBOARD_CASES)
    print("bad-input cases by class:", counts)
    assert sum(counts.values()) >= 31 + 40
