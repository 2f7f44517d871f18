"""The leaderboard: verdicts from hand-made records, rendering from fixed result files,
to-target quantities from known histories, skip reasons, and resume (reuse / rerun)."""

from __future__ import annotations

import csv
import io
import json
import math
import os

import pytest
import yaml

from jaxasync import leaderboard as lb
from jaxasync.checkpoint import code_identity

# ----------------------------------------------------------------------------- records


def history(acc, uploads_per_eval=100, bits_per_upload=64.0, skips_per_eval=0, **extra):
    """One member's history: evaluation i has accuracy acc[i] and i * uploads_per_eval uploads."""
    rows = []
    for i, a in enumerate(acc):
        rows.append({"step": 10 * i, "grads": 20 * i, "uploads": i * uploads_per_eval,
                     "skips": i * skips_per_eval,
                     "arrivals": i * (uploads_per_eval + skips_per_eval),
                     "rejections": 0, "bits_up": i * uploads_per_eval * bits_per_upload,
                     "time": float(i), "test_accuracy": a, "train_loss": 1.0 - a,
                     "staleness_mean": 0.0, "staleness_max": 0, "finite": True, **extra})
    return rows


def record(members, target=(0.9, "max"), algorithm="toy", config_hash="h", wall=12.0,
           code=None):
    return {
        "algorithm": algorithm, "workload": "toy", "config_hash": config_hash, "code": code,
        "target": {"metric": "test_accuracy", "value": target[0], "mode": target[1]},
        "members": [{"seed": i, "params": {}, "status": "ok", "history": h,
                     "staleness_hist": [len(h)], "final": h[-1]} for i, h in enumerate(members)],
        "timing": {"wall_seconds": wall},
        "device": {"platform": "cpu", "kind": "cpu", "processor": "x86_64"},
        "git": {"revision": "0123456789abcdef"},
        "resolved": {"num_workers": 4},
    }


# ----------------------------------------------------------------------------- quantities


def test_rounds_and_bits_to_target_from_a_known_history():
    # first evaluation at or above 0.9: index 3 (0.9 exactly) -> 300 uploads, 300 * 64 bits
    h = history([0.1, 0.5, 0.89, 0.9, 0.95], uploads_per_eval=100, bits_per_upload=64.0)
    rec = record([h])
    assert lb.summarize(rec, "rounds_to_target").values == (300.0,)
    assert lb.summarize(rec, "bits_to_target").values == (300 * 64.0,)
    assert lb.summarize(rec, "grads_to_target").values == (60.0,)
    assert lb.summarize(rec, "final_accuracy").values == (95.0,)
    # the entry's target overrides the record's (workload's) target
    s = lb.summarize(rec, "rounds_to_target", {"metric": "test_accuracy", "value": 0.5,
                                               "mode": "max"})
    assert s.values == (100.0,)
    # a minimisation target
    s = lb.summarize(rec, "rounds_to_target", {"metric": "train_loss", "value": 0.105,
                                               "mode": "min"})
    assert s.values == (300.0,)


def test_summary_of_seeds_and_missing_members():
    hs = [history([0.0, 0.95]), history([0.0, 0.5, 0.95]), history([0.0, 0.5, 0.5])]
    s = lb.summarize(record(hs), "rounds_to_target")
    assert s.values == (100.0, 200.0, None)
    assert not s.complete and s.value == math.inf  # a run reaches only if all seeds do
    assert lb.fmt_summary(s, "count") == "150 ± 71 (100–200); not reached 1/3"
    s2 = lb.summarize(record(hs[:2]), "rounds_to_target")
    assert s2.complete and s2.value == 150.0 and s2.sd == pytest.approx(70.7107, rel=1e-4)
    assert lb.fmt_summary(lb.summarize(record(hs[2:]), "rounds_to_target"),
                          "count") == "not reached (0/1)"


def test_skip_fraction_and_staleness_median():
    h = history([0.1, 0.2], uploads_per_eval=35, skips_per_eval=65)
    rec = record([h])
    assert lb.summarize(rec, "skip_fraction").values == (65.0,)
    rec["members"][0]["staleness_hist"] = [1, 1, 5, 1, 0]
    assert lb.summarize(rec, "staleness_median").values == (2.0,)


def test_diverged_member_counts_as_worst():
    h = history([0.1, 0.5])
    rec = record([h, h])
    rec["members"][1]["status"] = "diverged"
    s = lb.summarize(rec, "final_accuracy")
    assert s.values == (50.0, None) and s.value == -math.inf


# ----------------------------------------------------------------------------- verdicts


def summary(*vals, worst=math.inf):
    return lb.Summary(tuple(vals), worst)


def test_judge_value_tolerances():
    s = summary(23000.0, 25000.0)  # mean 24,000
    assert lb.judge_value(s, "count", published=23775, rel=0.15) == lb.Verdict(True, "✓ (±15%)")
    assert lb.judge_value(s, "count", published=20000, rel=0.15).ok is False  # 20%
    # relative to the published value: |24,000 - 21,000| = 3,000 <= 3,150; 3,200 > 3,120
    assert lb.judge_value(s, "count", published=21000, rel=0.15).ok is True
    assert lb.judge_value(s, "count", published=20800, rel=0.15).ok is False
    acc = summary(98.0, 98.2)  # mean 98.1
    v = lb.judge_value(acc, "percent", published=98.18, abs_=0.3)
    assert v == lb.Verdict(True, "✓ (±0.3 pt)")
    assert lb.judge_value(acc, "percent", published=98.45, abs_=0.3).ok is False
    assert lb.judge_value(acc, "percent", published=98.4, abs_=0.3).ok is True  # edge: 0.3
    assert lb.judge_value(summary(39.0), lo=30, hi=50).text == "✓ (in 30–50)"
    assert lb.judge_value(summary(100.0), "count", lo=120) == lb.Verdict(False, "✗ (≥ 120)")
    assert lb.judge_value(summary(1.0)) == lb.Verdict(None, "-")
    # a seed that never reached the target fails a judged check
    assert lb.judge_value(summary(23775.0, None), published=23775, rel=0.15).ok is False
    with pytest.raises(lb.EntryError):
        lb.judge_value(s, published=1.0)


def test_judge_ordering():
    vals = {"SASG": 23775.0, "LASG": 34269.0, "SGD": 61000.0, "Sparse": 62200.0}
    v, text = lb.judge_ordering("SASG < LASG <= SGD ~ Sparse", vals, "count")
    assert v == lb.Verdict(True, "ordering ✓ (≈: ±15%)")
    assert text == "SASG 23,775 < LASG 34,269 ≤ SGD 61,000 ≈ Sparse 62,200"
    vals2 = {**vals, "LASG": 70000.0}
    v, text = lb.judge_ordering("SASG < LASG <= SGD ~ Sparse", vals2, "count")
    assert v.ok is False and "LASG 70,000 ≰ SGD" in text
    bits = {"SASG": 6.2e9, "Sparse": 1.6e10, "LASG": 4.5e11, "SGD": 7.9e11}
    assert lb.judge_ordering("SASG < Sparse << LASG < SGD", bits, "bits")[0].ok
    assert not lb.judge_ordering("SASG < Sparse << LASG", {**bits, "LASG": 1.0e11}, much=10)[0].ok
    # never reached (inf) is worse than anything; two runs that never reached are not "≈"
    assert lb.judge_ordering("A < B", {"A": 5.0, "B": math.inf})[0].ok
    assert not lb.judge_ordering("A < B", {"A": math.inf, "B": math.inf})[0].ok
    assert not lb.judge_ordering("A ~ B", {"A": math.inf, "B": math.inf})[0].ok
    assert lb.judge_ordering("A < B", {"A": 1.0})[0].ok is None  # a run without result
    with pytest.raises(lb.EntryError):
        lb.parse_chain("A <")


def test_judge_ratio():
    v, r = lb.judge_ratio(7.9e11, 6.2e9, published=128, factor=2)
    assert v == lb.Verdict(True, "ratio ✓ (×/÷ 2)") and r == pytest.approx(127.4, rel=1e-3)
    assert lb.judge_ratio(7.9e11, 6.2e9, published=128, rel=0.3)[0].ok
    assert not lb.judge_ratio(7.9e11, 1.0e10, published=128, rel=0.3)[0].ok
    assert lb.judge_ratio(10.0, 1.0, at_least=10)[0].ok
    assert not lb.judge_ratio(10.0, math.inf, published=1, factor=2)[0].ok


# ----------------------------------------------------------------------------- entries

TOY = ["workload=least_squares", "+workload.options.n=64", "+workload.options.d=4",
       "workload.batch_size=4", "delay=none", "run.num_workers=2", "run.steps=20",
       "run.eval_every=10", "run.seeds=[0,1]", "plot=false"]


def toy_entries(tmp_path, **extra):
    raw = {"entries": [
        {"id": "toy", "title": "Toy", "task": "least squares",
         "source": "Someone et al. (2020); logs",
         "overrides": TOY,
         "target": {"metric": "test_accuracy", "value": 0.9, "mode": "max"},
         "runs": {"Fast": ["algorithm=asgd"], "Slow": ["algorithm=sync_sgd"]},
         "checks": [
             {"kind": "value", "run": "Fast", "quantity": "rounds_to_target",
              "published": 260, "rel": 0.15},
             {"kind": "value", "run": "Slow", "quantity": "final_accuracy",
              "published": 99.0, "abs": 0.3},
             {"kind": "value", "run": "Slow", "quantity": "rounds_to_target",
              "reference": "700 (elsewhere)"},
             {"kind": "ordering", "quantity": "rounds_to_target", "chain": "Fast < Slow"},
             {"kind": "ratio", "quantity": "bits_to_target", "num": "Slow", "den": "Fast",
              "published": 2, "factor": 1.5}],
         "plots": [{"x": "uploads", "y": "test_accuracy"}], **extra},
        {"id": "needs_files", "title": "Files", "task": "MNIST", "source": "Other et al.",
         "overrides": ["workload=mnist_fc"], "data": ["mnist"],
         "runs": {"A": ["algorithm=sgd_sum"]},
         "checks": [{"kind": "value", "run": "A", "quantity": "final_accuracy",
                     "published": 98.2, "abs": 0.3}]},
    ]}
    path = tmp_path / "entries.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    return path


def test_entry_definitions_are_checked(tmp_path):
    base = yaml.safe_load(toy_entries(tmp_path).read_text())
    lb.parse_entries(base)
    bad_cases = [
        ({"kind": "value", "run": "Nope", "quantity": "final_accuracy"}, "not a run"),
        ({"kind": "value", "run": "Fast", "quantity": "accuracy"}, "unknown"),
        ({"kind": "value", "run": "Fast", "quantity": "final_accuracy", "published": 1},
         "exactly one of rel, abs"),
        ({"kind": "ordering", "quantity": "final_accuracy", "chain": "Fast < "}, "chain"),
        ({"kind": "ordering", "quantity": "final_accuracy", "chain": "Fast < X"}, "'X'"),
        ({"kind": "ratio", "quantity": "final_accuracy", "num": "Fast", "den": "Slow"},
         "at_least"),
    ]
    for check, words in bad_cases:
        raw = json.loads(json.dumps(base))
        raw["entries"][0]["checks"] = [check]
        with pytest.raises(lb.EntryError, match=words):
            lb.parse_entries(raw)
    raw = json.loads(json.dumps(base))
    raw["entries"][1]["id"] = "toy"
    with pytest.raises(lb.EntryError, match="duplicate"):
        lb.parse_entries(raw)


def test_shipped_entries_parse_and_compose():
    entries = lb.load_entries()
    ids = [e.id for e in entries]
    for needed in ("sasg_mnist_subset", "sasg_mnist_full", "sasg_cifar10", "sasg_cifar100",
                   "mishchenko_quadratic", "lag_logistic"):
        assert needed in ids
    e = next(e for e in entries if e.id == "mishchenko_quadratic")
    cfgs = lb.compose_configs(e)
    assert cfgs["ASGD"]["run"]["num_workers"] == 40
    assert cfgs["ASGD"]["algorithm"] == {"name": "asgd", "arrivals": None,
                                         "params": {"learning_rate": 0.43},
                                         "lr_decay": {"epochs": [], "steps": [], "factor": 0.1},
                                         "compressor": {"name": "none", "error_feedback": False,
                                                        "params": {}},
                                         "downlink": {"name": "none", "rule": "doublesqueeze",
                                                      "params": {}}}
    assert cfgs["Minibatch SGD"]["run"]["gradients"] == 32000
    # the authors' batch of 256 drawn from all 10,000 examples by every worker
    assert (cfgs["ASGD"]["workload"]["batch_size"], cfgs["ASGD"]["workload"]["partition"]) == \
        (256, "shared")
    # the CIFAR protocols decay alpha x0.1 at epoch 20 (CIFAR-10) and 30 (CIFAR-100)
    for eid, epoch in (("sasg_cifar10", 20.0), ("sasg_cifar100", 30.0)):
        e = next(e for e in entries if e.id == eid)
        for cfg in lb.compose_configs(e, "data").values():
            assert cfg["algorithm"]["lr_decay"] == {"epochs": [epoch], "steps": [], "factor": 0.1}
    e = next(e for e in entries if e.id == "lag_logistic")
    assert e.target["metric"] == "train_grad_norm"
    assert all(c["run"]["eval_grad_norm"] for c in lb.compose_configs(e).values())


def test_gradient_norm_target_and_diverged_runs_in_rows():
    raw = {"entries": [{
        "id": "g", "title": "G", "task": "t", "source": "S",
        "target": {"metric": "train_grad_norm", "value": 1e-3, "mode": "min"},
        "runs": {"A": [], "B": []},
        "checks": [{"kind": "value", "run": "A", "quantity": "rounds_to_target"},
                   {"kind": "value", "run": "A", "quantity": "final_grad_norm"},
                   {"kind": "value", "run": "B", "quantity": "final_gap"}]}]}
    entry = lb.parse_entries(raw)[0]
    norms = [1.0, 1e-2, 9e-4, 1e-4]                       # first <= 1e-3 at evaluation 2
    a = record([history([0.0] * 4, uploads_per_eval=7)])
    for h, g in zip(a["members"][0]["history"], norms, strict=True):
        h["train_grad_norm"] = g
    b = record([history([0.0, 0.0], train_gap=1.0)] * 2)
    for m in b["members"]:
        m["status"] = "diverged"
    rows = lb.entry_rows(entry, {"A": a, "B": b})
    assert [r.measured for r in rows] == ["14", "0.0001", "diverged (0/2)"]


# ----------------------------------------------------------------------------- rendering


def write_results(tmp_path, entries):
    """Hand-written result files for the toy entry, with the configs' real hashes."""
    results = tmp_path / "results"
    toy = entries[0]
    cfgs = lb.compose_configs(toy)
    fast = [history([0.1, 0.5, 0.95, 0.99], uploads_per_eval=100),
            history([0.1, 0.5, 0.8, 0.95], uploads_per_eval=100)]   # 200 and 300 rounds
    slow = [history([0.1, 0.3, 0.5, 0.7, 0.8, 0.95, 0.99], uploads_per_eval=100),
            history([0.1, 0.3, 0.5, 0.7, 0.8, 0.95, 0.99], uploads_per_eval=100)]  # 500
    for run, members in (("Fast", fast), ("Slow", slow)):
        rec = record(members, algorithm=run, config_hash=lb.config_digest(cfgs[run]),
                     code=code_identity(cfgs[run]["algorithm"]["name"]))
        path = results / "toy" / toy.run(run).slug / "run.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(rec))
    (results / "needs_files").mkdir(parents=True)
    (results / "needs_files" / "entry.json").write_text(json.dumps({
        "status": "skipped", "reason": "workload.options.data_dir='data': no such directory"}))
    return results


def test_render_from_fixed_result_files(tmp_path):
    entries = lb.load_entries(toy_entries(tmp_path))
    results = write_results(tmp_path, entries)
    out = tmp_path / "board"
    md, rows = lb.render(entries, results, out, plots=True, quiet=True)
    by = {(r.entry, r.algorithm, r.quantity): r for r in rows}
    r = by[("toy", "Fast", "rounds to target")]
    assert (r.measured, r.published, r.verdict) == ("250 ± 71 (200–300)", "260", "✓ (±15%)")
    assert r.seeds == "2" and r.source == "Someone et al." and r.ok is True
    r = by[("toy", "Slow", "final test accuracy (%)")]
    assert (r.measured, r.verdict, r.ok) == ("99.00 ± 0.00 (99.00–99.00)", "✓ (±0.3 pt)", True)
    r = by[("toy", "Slow", "rounds to target")]
    assert (r.measured, r.published, r.verdict, r.ok) == ("500 ± 0 (500–500)", "700 (elsewhere)",
                                                          "-", None)
    r = by[("toy", "Fast, Slow", "rounds to target (ordering)")]
    assert (r.measured, r.verdict) == ("Fast 250 < Slow 500", "ordering ✓")
    r = by[("toy", "Slow / Fast", "uplink bits to target (ratio)")]
    assert (r.measured, r.published, r.verdict) == ("2×", "2×", "ratio ✓ (×/÷ 1.5)")
    r = by[("needs_files", "A", "final test accuracy (%)")]
    assert (r.verdict, r.measured, r.published) == ("skipped", "- (data files missing)", "98.20")
    assert "no such directory" in r.reason
    # the Markdown: header with device and time, the table, the entries with their status
    text = (out / "LEADERBOARD.md").read_text()
    assert text == md
    assert "cpu (cpu, x86_64)" in text and "24 s in all" in text
    assert "4 ✓, 0 ✗, 1 reported for reference" in text
    assert "| least squares | Fast | 2 | rounds to target | 250 ± 71 (200–300) | 260 |" in text
    assert "| skipped: data files missing |" in text  # the entries table: short reason
    assert "**Status: skipped** — workload.options.data_dir='data': no such directory" in text
    assert "jaxasync workload=least_squares" in text and "![toy](plots/toy.png)" in text
    assert (out / "plots" / "toy.png").stat().st_size > 0
    table = list(csv.DictReader(io.StringIO((out / "leaderboard.csv").read_text())))
    assert len(table) == len(rows) and table[0]["verdict"] == "✓ (±15%)"
    # a result of another config is stale: not counted, marked for a rerun
    path = results / "toy" / "fast" / "run.json"
    rec = json.loads(path.read_text())
    path.write_text(json.dumps({**rec, "config_hash": "0000"}))
    md, rows = lb.render(entries, results, out, plots=False, quiet=True)
    assert "**Status: stale** — result of Fast (another config) is stale" in md
    for r in rows:
        if r.entry == "toy" and "Fast" in r.algorithm:
            assert r.verdict == "stale" and r.ok is None and "another config" in r.reason
    assert by[("toy", "Slow", "final test accuracy (%)")].ok is True
    # older code: another version of jaxasync or another source of the algorithm is stale;
    # another git tree alone is not (every commit changes it)
    code = rec["code"]
    for changed, stale in (({"git": {"tree": "0" * 16, "uncommitted": None}}, None),
                           ({"algorithm": "0" * 16}, "older code: the algorithm's source"),
                           ({"jaxasync": "0.0.0"}, f"older code: jaxasync 0.0.0 -> "
                                                   f"{code['jaxasync']}"),
                           (None, "older code: its code is not recorded")):
        new = {**code, **changed} if changed is not None else None
        path.write_text(json.dumps({**rec, "code": new}))
        md, _ = lb.render(entries, results, out, plots=False, quiet=True)
        if stale is None:
            assert "**Status: stale**" not in md
        else:
            assert f"**Status: stale** — result of Fast ({stale}" in md


def test_failed_verdicts_and_missing_runs(tmp_path):
    entries = lb.load_entries(toy_entries(tmp_path))
    toy = entries[0]
    slow = record([history([0.1, 0.2])])   # never reaches 0.9
    rows = lb.entry_rows(toy, {"Slow": slow})
    by = {(r.algorithm, r.quantity): r for r in rows}
    assert by[("Slow", "final test accuracy (%)")].verdict == "✗ (±0.3 pt)"
    assert by[("Slow", "rounds to target")].measured == "not reached (0/1)"
    assert by[("Fast", "rounds to target")].measured == "not run (Fast)"
    assert by[("Fast", "rounds to target")].verdict == "-"


# ----------------------------------------------------------------------------- running


def test_skip_reasons_missing_files_and_gpu(tmp_path, capsys):
    entries = lb.load_entries(toy_entries(tmp_path))
    status = lb.run_entry(entries[1], tmp_path / "results", data_dir=str(tmp_path / "nowhere"),
                          progress=False, runner=lambda *a, **k: pytest.fail("must not run"))
    assert status["status"] == "skipped"
    assert "nowhere" in status["reason"] and "no such directory" in status["reason"]
    # an empty data directory: the loader names the missing file and the directory
    (tmp_path / "empty").mkdir()
    status = lb.run_entry(entries[1], tmp_path / "results", data_dir=str(tmp_path / "empty"),
                          progress=False)
    assert status["status"] == "skipped"
    assert "train-images-idx3-ubyte" in status["reason"] and "empty" in status["reason"]
    saved = json.loads((tmp_path / "results" / "needs_files" / "entry.json").read_text())
    assert saved["reason"] == status["reason"] and saved["load_start"] is not None
    gpu = lb.parse_entries({"entries": [{
        "id": "big", "title": "Big", "task": "t", "source": "s", "device": "gpu",
        "overrides": TOY, "runs": {"A": ["algorithm=asgd"]}, "checks": []}]})[0]
    status = lb.run_entry(gpu, tmp_path / "results", progress=False,
                          runner=lambda *a, **k: pytest.fail("must not run"))
    assert status["status"] == "skipped" and "meant for a GPU" in status["reason"]
    slow = lb.parse_entries({"entries": [{
        "id": "slow", "title": "S", "task": "t", "source": "s", "minutes": {"cpu": 100},
        "overrides": TOY, "runs": {"A": ["algorithm=asgd"]}, "checks": []}]})[0]
    status = lb.run_entry(slow, tmp_path / "results", budget_minutes=10, progress=False,
                          runner=lambda *a, **k: pytest.fail("must not run"))
    assert status["status"] == "skipped" and "estimated 100 min on this cpu" in status["reason"]
    assert lb.short_reason(status["reason"]) == "over the time budget"
    missing = lb.parse_entries({"entries": [{
        "id": "later", "title": "L", "task": "t", "source": "s", "preset": "no_such_preset",
        "runs": {"A": ["algorithm=asgd"]}, "checks": []}]})[0]
    status = lb.run_entry(missing, tmp_path / "results", progress=False)
    assert status["status"] == "skipped" and "no_such_preset" in status["reason"]


def test_resume_skips_finished_runs_and_reruns_changed_ones(tmp_path, capsys):
    """A rerun reuses results of the same config and reruns changed ones (real tiny runs)."""
    from jaxasync.experiment import run_experiment

    calls = []

    def runner(cfg, out, progress):
        calls.append(out.name)
        return run_experiment(cfg, out, progress=progress)

    entries_path = toy_entries(tmp_path)
    toy = lb.load_entries(entries_path)[0]
    results = tmp_path / "results"
    # "Fast" finished earlier (a result file of its current config): only "Slow" runs
    fast = record([history([0.1, 0.95])], config_hash=lb.config_digest(
        lb.compose_configs(toy)["Fast"]), code=code_identity("asgd"))
    (results / "toy" / "fast").mkdir(parents=True)
    (results / "toy" / "fast" / "run.json").write_text(json.dumps(fast))
    first = lb.run_entry(toy, results, progress=False, runner=runner)
    assert first["status"] == "done" and calls == ["slow"]
    assert first["runs"]["Fast"]["reused"] and not first["runs"]["Slow"]["reused"]
    stamp = (results / "toy" / "slow" / "run.json").stat().st_mtime_ns
    calls.clear()
    again = lb.run_entry(toy, results, progress=False, runner=runner)
    assert all(r["reused"] for r in again["runs"].values())
    # when and under which load a reused result was computed is carried over
    assert again["runs"]["Slow"]["computed"] == first["runs"]["Slow"]["computed"] is not None
    assert again["runs"]["Slow"]["load"] == first["runs"]["Slow"]["load"]
    assert (results / "toy" / "slow" / "run.json").stat().st_mtime_ns == stamp
    assert calls == []
    # change one run's config: only that run is computed again
    raw = yaml.safe_load(entries_path.read_text())
    raw["entries"][0]["runs"]["Fast"] = ["algorithm=asgd", "algorithm.params.learning_rate=0.1"]
    changed = lb.parse_entries(raw)[0]
    calls.clear()
    third = lb.run_entry(changed, results, progress=False, runner=runner)
    assert not third["runs"]["Fast"]["reused"] and third["runs"]["Slow"]["reused"]
    assert third["runs"]["Fast"]["config_hash"] != fast["config_hash"]
    assert (results / "toy" / "slow" / "run.json").stat().st_mtime_ns == stamp
    # the renderer accepts these results as current (hashes match the definitions)
    state = lb.entry_state(changed, results, lb.compose_configs(changed))
    assert state.status == "done" and not state.stale
    # a result of older code (here: another source of sync_sgd's factory) is run again, with
    # the same rule as the renderer's, and the line says why
    slow_json = results / "toy" / "slow" / "run.json"
    old = json.loads(slow_json.read_text())
    slow_json.write_text(json.dumps({**old, "code": {**old["code"], "algorithm": "0" * 16}}))
    assert lb.entry_state(changed, results, lb.compose_configs(changed)).stale == ["Slow"]
    calls.clear()
    fourth = lb.run_entry(changed, results, progress=True, runner=runner)
    assert calls == ["slow"] and fourth["runs"]["Fast"]["reused"]
    assert "toy/slow: older code: the algorithm's source; rerunning" in capsys.readouterr().out
    assert json.loads(slow_json.read_text())["code"] == code_identity("sync_sgd")


def test_command_line(tmp_path, capsys):
    entries_path = toy_entries(tmp_path)
    entries = lb.load_entries(entries_path)
    results = write_results(tmp_path, entries)
    out = tmp_path / "board"
    args = ["--entries-file", str(entries_path), "--results", str(results), "--out", str(out)]
    assert lb.main(["--render-only", "-q", *args]) == 0
    assert (out / "LEADERBOARD.md").is_file() and (out / "leaderboard.csv").is_file()
    assert lb.main(["--list", *args]) == 0
    assert "jaxasync workload=least_squares" in capsys.readouterr().out
    assert lb.main(["nosuch", *args]) == 2
    assert "unknown" in capsys.readouterr().err
    # a run config that does not validate: the entry fails (exit 1), the others still render
    raw = yaml.safe_load(entries_path.read_text())
    raw["entries"][0]["runs"]["Fast"].append("algorithm.params.learning_rate=-1")
    entries_path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    assert lb.main(["toy", "-q", "--no-plots", *args]) == 1
    status = json.loads((results / "toy" / "entry.json").read_text())
    assert status["status"] == "failed" and "learning_rate=-1" in status["reason"]
    assert "failed" in (out / "LEADERBOARD.md").read_text()


def test_large_results_are_stored_xz_compressed_and_read_back(tmp_path, monkeypatch):
    """A run whose run.json is over the limit is stored as run.json.xz and metrics.csv.xz;
    the renderer, a rerun (which reuses it) and jaxasync-compare's loader read it, and a later
    small result of that run drops the compressed copy (real tiny runs)."""
    import lzma

    from jaxasync import report
    from jaxasync.experiment import run_experiment
    from jaxasync.leaderboard import runner as lb_runner

    def runner(cfg, out, progress):
        return run_experiment(cfg, out, progress=progress)

    toy = lb.load_entries(toy_entries(tmp_path))[0]
    results = tmp_path / "results"
    monkeypatch.setattr(lb_runner, "COMPACT_ABOVE_BYTES", 0)
    assert lb.run_entry(toy, results, progress=False, runner=runner)["status"] == "done"
    slow = results / "toy" / "slow"
    assert not (slow / "run.json").exists() and not (slow / "metrics.csv").exists()
    stored = json.loads(lzma.decompress((slow / "run.json.xz").read_bytes()))
    assert "metrics.csv" not in os.listdir(slow) and (slow / "metrics.csv.xz").exists()
    assert lzma.decompress((slow / "metrics.csv.xz").read_bytes()).decode() == \
        report.history_csv(stored)
    state = lb.entry_state(toy, results, lb.compose_configs(toy))
    assert state.status == "done" and not state.stale
    assert state.records["Slow"]["config_hash"] == stored["config_hash"]
    again = lb.run_entry(toy, results, progress=False, runner=runner)
    assert all(r["reused"] for r in again["runs"].values())
    assert {r["_source"] for r in report.load_records(results)} == {
        str(results / "toy" / "fast"), str(slow)}
    # the limit back up: a fresh result is plain again and the compressed copy goes
    monkeypatch.setattr(lb_runner, "COMPACT_ABOVE_BYTES", 10**9)
    assert lb.run_entry(toy, results, progress=False, runner=runner,
                        rerun=True)["status"] == "done"
    assert (slow / "run.json").exists() and not (slow / "run.json.xz").exists()
    assert not (slow / "metrics.csv.xz").exists()
