"""The ``logger`` group: TensorBoard event files and an offline W&B run, read back."""

import json
import struct
import sys

import pytest

from jaxasync.config import ConfigError
from jaxasync.experiment import run_experiment

TINY = {"algorithm": {"name": "asgd", "params": {"learning_rate": 0.05}},
        "workload": {"name": "least_squares", "batch_size": 8, "options": {"n": 256, "d": 8}},
        "delay": {"kind": "event"},
        "run": {"num_workers": 4, "steps": 100, "eval_every": 20, "seeds": [0, 1]}, "plot": False}


def _with_logger(**logger) -> dict:
    return {**TINY, "logger": logger}


def test_tensorboard_events_hold_every_evaluation_the_config_and_the_summary(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rec = run_experiment(_with_logger(name="tensorboard"), tmp_path / "job", progress=False)
    runs = sorted((tmp_path / "job" / "tensorboard").iterdir())
    assert [r.name for r in runs] == ["000_seed0", "001_seed1"]     # one run per member
    for run_dir, member in zip(runs, rec["members"], strict=True):
        acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        tags = acc.Tags()
        assert {"train_gap", "bits_up", "time", "staleness_mean"} <= set(tags["scalars"])
        gap = acc.Scalars("train_gap")
        hist = member["history"][1:]                 # every evaluation after compiling
        assert [e.step for e in gap] == [h["step"] for h in hist] == [20, 40, 60, 80, 100]
        assert [e.value for e in gap] == pytest.approx([h["train_gap"] for h in hist],
                                                       rel=1e-6)  # float32 in the event file
        final = acc.Scalars("final/train_gap")
        assert final[-1].value == pytest.approx(member["final"]["train_gap"], rel=1e-6)
        config = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
        assert "num_workers: 4" in config and "least_squares" in config
        # the hyperparameters: the hparams plugin's session (the config, the member's seed)
        from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

        data = HParamsPluginData.FromString(
            acc.PluginTagToContent("hparams")["_hparams_/session_start_info"])
        hp = data.session_start_info.hparams
        assert hp["run.num_workers"].number_value == 4
        assert hp["algorithm.name"].string_value == "asgd"
        assert hp["seed"].number_value == member["seed"]


def _wandb_records(path):
    """The records of a W&B ``.wandb`` file (a LevelDB-style log of protobuf records: a
    7-byte header, 32 KiB blocks, each record with a 7-byte header; W&B's own format)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunks, part = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        body, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            chunks.append(body)
        elif kind == 2:
            part = body
        elif kind == 3:
            part += body
        elif kind == 4:
            chunks.append(part + body)
    out = []
    for c in chunks:
        r = pb.Record()
        r.ParseFromString(c)
        out.append(r)
    return out


def _finished_wandb_records(path, timeout: float = 60.0):
    """The records once W&B's service process has written the run's ``exit`` record (it
    writes the file on its own, after ``run.finish()`` returns)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        records = _wandb_records(path)
        kinds = [r.WhichOneof("record_type") for r in records]
        if "exit" in kinds or time.monotonic() > deadline:
            assert "exit" in kinds, kinds
            return records
        time.sleep(0.2)


def test_wandb_offline_run_holds_config_history_and_summary(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    rec = run_experiment(_with_logger(name="wandb", mode="offline", project="t"),
                         tmp_path / "job", progress=False)
    files = list((tmp_path / "job" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    records = _finished_wandb_records(files[0])
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["run.num_workers"] == 4 and config["workload.name"] == "least_squares"
    assert run.display_name == "job" and run.project == "t"
    history = [{"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    steps = [h["_step"] for h in history]
    assert steps == [20, 40, 60, 80, 100]
    for m in rec["members"]:
        got = [h[f"seed{m['seed']}/train_gap"] for h in history]
        assert got == pytest.approx([h["train_gap"] for h in m["history"][1:]], rel=1e-6)
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            for u in r.summary.update:
                summary["/".join(u.nested_key) or u.key] = json.loads(u.value_json)
    assert summary["seed0/final/train_gap"] == pytest.approx(
        rec["members"][0]["final"]["train_gap"], rel=1e-6)
    assert summary["seed1/status"] == "ok"


@pytest.mark.parametrize("name, module, extra", [("tensorboard", "tensorboardX", "tensorboard"),
                                                 ("wandb", "wandb", "wandb")])
def test_missing_package_is_a_one_line_error_naming_the_extra(tmp_path, monkeypatch, name,
                                                              module, extra):
    monkeypatch.setitem(sys.modules, module, None)      # import fails as if not installed
    with pytest.raises(ConfigError) as e:
        run_experiment(_with_logger(name=name), tmp_path / "job", progress=False)
    msg = str(e.value)
    assert msg == (f"logger={name}: needs the {module} package; "
                   f"pip install \"jaxasync[{extra}]\"")
    assert not (tmp_path / "job" / "run.json").exists()


def test_unknown_logger_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="logger.name='mlflow': must be one of none, tensorboard, wandb"):
        run_experiment(_with_logger(name="mlflow"), tmp_path / "job", progress=False)
