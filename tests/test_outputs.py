"""What a researcher sees: figures (axes, scales, lines, bands), tables (columns, units, ±),
progress lines, the compilation cache switch and ``jaxasync-compare``, on hand-made run
records (no simulation: every number here is known in advance)."""

import logging
import math

import numpy as np
import pytest

from jaxasync import plots, report, tables
from jaxasync.progress import LINES, Progress


def _history(seed: int, lr: float, n: int = 6, diverge: bool = False) -> list[dict]:
    out = []
    for i in range(n):
        loss = 2.0 * (1 - lr) ** i * (1 + 0.01 * seed)
        if diverge and i >= 3:
            loss = 10.0 ** (3 * i)
        out.append({"step": 1000 * i, "grads": 1000 * i, "uploads": 1000 * i,
                    "bits_up": 3.2e7 * i * (1 + 0.001 * seed), "time": 62.5 * i + seed,
                    "test_accuracy": 0.1 + 0.1 * i * (1 - 0.1 * seed), "train_loss": loss,
                    "test_loss": loss, "staleness_mean": 15.0, "staleness_max": 40,
                    "wasted": 0, "skips": 0, "rejections": 0, "finite": True})
    return out


def _record(algorithm="asgd", lrs=(0.05,), seeds=(0, 1, 2), m=16, config_lr=None,
            synchronous=False, diverge=False, **run) -> dict:
    members = []
    for lr in lrs:
        for s in seeds:
            hist = _history(s, lr, diverge=diverge)
            hit = next((h for h in hist if h["test_accuracy"] >= 0.3), None)
            members.append({
                "seed": s, "params": {"learning_rate": lr} if len(lrs) > 1 else {},
                "status": "ok", "diverged_at_step": None, "final": hist[-1], "history": hist,
                "target_reached": hit and {k: hit[k] for k in report.TO_TARGET},
                "staleness_hist": [5, 4, 3, 2, 1]})
    lr_cfg = list(lrs) if len(lrs) > 1 else (config_lr or lrs[0])
    return {
        "algorithm": algorithm, "label": algorithm, "workload": "mnist1d_mlp",
        "config": {"algorithm": {"name": algorithm, "params": {"learning_rate": lr_cfg}},
                   "workload": {"name": "mnist1d_mlp"}, "out_dir": "/somewhere",
                   "run": {"num_workers": m, "seeds": list(seeds), **run}},
        "resolved": {"num_workers": m, "synchronous": synchronous,
                     "delay": {"kind": "event", "compute": "exponential", "mean": 1.0,
                               "straggler_fraction": 0.125, "straggler_slowdown": 10.0}},
        "target": {"metric": "test_accuracy", "value": 0.3, "mode": "max"},
        "members": members, "timing": {"wall_seconds": 1.0, "compile_seconds": 0.5,
                                       "run_seconds": 0.5}}


def _panel(fig, x: str, y: str):
    for ax in fig.axes:
        if ax.get_xlabel() == plots.AXIS[x] and ax.get_ylabel() == plots.AXIS[y]:
            return ax
    raise AssertionError(f"no panel {y} against {x}")


def _count(ax, gid: str) -> int:
    return sum(1 for a in [*ax.lines, *ax.collections] if a.get_gid() == gid)


# ----------------------------------------------------------------------------- figures


def test_figure_has_a_line_and_a_band_per_group_and_a_log_bits_axis_from_the_first_upload():
    records = [_record("asgd", lrs=(0.05, 0.1)), _record("delay_adaptive")]
    fig = plots.records_figure(records)
    title = fig._suptitle.get_text()
    assert "mnist1d_mlp" in title and "M=16" in title and "2 of 16 workers 10× slower" in title
    acc_bits = _panel(fig, "bits_up", "test_accuracy")
    assert acc_bits.get_xscale() == "log"
    first_upload = min(h["bits_up"] for m in records[0]["members"] for h in m["history"]
                       if h["bits_up"] > 0)
    lo, hi = acc_bits.get_xlim()
    # from the first non-zero value (matplotlib pads a log axis by a fraction of a decade)
    assert first_upload / 2 < lo <= first_upload, (lo, first_upload)
    for x in ("grads", "time", "bits_up"):
        ax = _panel(fig, x, "test_accuracy")
        assert _count(ax, "curve") == 3          # asgd lr=0.05, asgd lr=0.1, delay_adaptive
        assert _count(ax, "band") == 3           # 3 seeds each: a min-max band each
        assert _count(ax, "target") == 1         # the target line on the target's metric
        assert ax.xaxis.get_gridlines()[0].get_visible()
        assert _panel(fig, x, "train_loss").get_yscale() == "log"
    assert _panel(fig, "time", "train_loss").get_xlabel() == "simulated time (s)"
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["asgd learning_rate=0.05", "asgd learning_rate=0.1",
                      "delay_adaptive learning_rate=0.05"]
    assert "min–max" in fig.legends[0].get_title().get_text()
    assert "3 seeds" in fig.legends[0].get_title().get_text()
    # readable ticks: 12k, not 12000 next to 10000 (which ran together as 1000012000)
    grads = _panel(fig, "grads", "test_accuracy")
    assert grads.xaxis.get_major_formatter()(12000, 0) == "12k"
    assert grads.xaxis.get_major_formatter()(500, 0) == "500"
    hist = [ax for ax in fig.axes if ax.get_title().startswith("delay histogram")]
    # every run has the same delays here: one line, said so
    assert len(hist) == 1 and _count(hist[0], "curve") == 1 and hist[0].get_yscale() == "log"
    assert "the same in every run with stale arrivals" in hist[0].get_title()
    for m in records[1]["members"]:
        m["staleness_hist"] = [1, 1, 1, 1, 1, 1, 1]
    fig = plots.records_figure(records)
    hist = [ax for ax in fig.axes if ax.get_title() == "delay histogram"][0]
    assert _count(hist, "curve") == 3          # a line per curve where the delays differ


def test_simulated_time_is_logarithmic_only_when_the_runs_end_10x_apart():
    fast, slow = _record("asgd"), _record("sync_sgd", synchronous=True)
    for m in slow["members"]:
        for h in m["history"]:
            h["time"] *= 20.0          # ends 20x later than the asynchronous run
    spread = plots.records_figure([fast, slow])
    assert _panel(spread, "time", "test_accuracy").get_xscale() == "log"
    close = plots.records_figure([fast, _record("delay_adaptive")])
    assert _panel(close, "time", "test_accuracy").get_xscale() == "linear"


def test_diverging_run_leaves_the_top_of_a_log_panel():
    fig = plots.records_figure([_record("asgd"), _record("asgd_big", diverge=True)])
    ax = _panel(fig, "grads", "train_loss")
    start = max(m["history"][0]["train_loss"] for m in _record("asgd_big")["members"])
    assert ax.get_ylim()[1] == pytest.approx(10 * start)


def test_figure_files_are_png_at_150_dpi_and_pdf(tmp_path):
    import matplotlib.image

    rec = _record()
    fig = plots.records_figure([rec])
    width_in = fig.get_size_inches()[0]
    written = plots.save_figure(fig, tmp_path / "metrics.png")
    assert [p.name for p in written] == ["metrics.png", "metrics.pdf"]
    assert (tmp_path / "metrics.pdf").read_bytes()[:5] == b"%PDF-"
    pixels = matplotlib.image.imread(tmp_path / "metrics.png").shape[1]
    assert pixels == pytest.approx(width_in * plots.DPI, abs=2)


def test_single_seed_curves_have_no_band():
    fig = plots.records_figure([_record(seeds=(0,))])
    ax = _panel(fig, "grads", "test_accuracy")
    assert _count(ax, "curve") == 1 and _count(ax, "band") == 0
    assert fig.legends[0].get_title().get_text() == "one seed per line"


def test_more_than_ten_curves_keep_distinct_colour_and_dash_pairs():
    """matplotlib has ten default colours: curves 11-20 get a dashed line, so a table of 23
    compressors (the leaderboard's) keeps every curve distinguishable in the legend."""
    fig = plots.records_figure([_record(algorithm=f"alg{i}", seeds=(0,)) for i in range(23)])
    ax = _panel(fig, "grads", "test_accuracy")
    curves = [ln for ln in ax.lines if ln.get_gid() == "curve"]
    pairs = {(ln.get_color(), ln.get_linestyle()) for ln in curves}
    assert len(curves) == 23 and len(pairs) == 23
    assert [ln.get_linestyle() for ln in curves[:11]] == ["-"] * 10 + ["--"]


# ----------------------------------------------------------------------------- tables


def test_swept_keys_become_columns_and_keys_explained_by_the_algorithm_do_not():
    # a -m sweep over algorithm x run.num_workers: asgd and sync_sgd differ in learning_rate
    # only because they are different algorithms
    records = [_record(a, m=m, config_lr=lr, num_workers=m)
               for a, lr in (("asgd", 0.05), ("sync_sgd", 0.2)) for m in (4, 16)]
    t = tables.build(records)
    assert [(r["algorithm"], r["num_workers"]) for r in t.rows] == [
        ("asgd", "4"), ("asgd", "16"), ("sync_sgd", "4"), ("sync_sgd", "16")]
    assert all("learning_rate" not in r for r in t.rows)
    assert "out_dir" not in t.rows[0]
    assert "learning_rate" in t.full[0]            # every column goes to summary.csv
    assert "M=" not in t.title                     # M differs: a column, not the title


def test_vmapped_hyperparameters_become_rows_with_a_column():
    t = tables.build([_record("asgd", lrs=(0.02, 0.1))])
    assert [r["learning_rate"] for r in t.rows] == ["0.02", "0.1"]
    assert [r["n"] for r in t.rows] == ["3", "3"]


def test_mean_and_sd_over_seeds_and_the_line_that_says_what_plus_minus_is():
    rec = _record("asgd", seeds=(0, 1, 2))
    t = tables.build([rec])
    accs = [100 * m["final"]["test_accuracy"] for m in rec["members"]]  # 60, 55, 50
    sd = float(np.std(accs, ddof=1))
    assert sd == pytest.approx(5.0)
    assert t.rows[0]["test acc (%)"] == "55.0 ± 5.0"
    assert t.full[0]["test_accuracy_pct"] == pytest.approx(55.0)
    assert t.full[0]["test_accuracy_pct_sd"] == pytest.approx(5.0)
    assert "± = sample sd over a row's n seeds" in t.text()
    assert "test_accuracy ≥ 0.3" in t.text()
    assert t.text().count("| algorithm") == 1
    for header in ("sim time (s)", "sim s to target", "mean τ", "test acc (%)"):
        assert header in t.rows[0]


def test_compact_columns_follow_the_kind_of_run():
    async_cols = set(tables.build([_record("asgd")]).rows[0])
    assert "mean τ" in async_cols and "uplink bits" not in async_cols
    lazy = _record("lag_wk", synchronous=True)
    lazy_cols = set(tables.build([lazy]).rows[0])
    assert {"rounds to target", "iters to target", "bits to target", "uplink bits"} <= lazy_cols
    assert "mean τ" not in lazy_cols and "sim s to target" not in lazy_cols
    convex = _record("asgd")
    for m in convex["members"]:
        m["final"] = {**m["final"], "train_gap": 1e-3, "train_grad_norm": 2e-4}
    convex_cols = set(tables.build([convex]).rows[0])
    assert "‖∇F‖" in convex_cols and "test acc (%)" not in convex_cols
    assert "train loss" not in convex_cols


def test_identical_configs_from_two_directories_get_distinct_labels():
    a, b = _record(), _record()
    a["_source"], b["_source"] = "runs/a", "runs/b"
    labels = [g.label for g in tables.groups([a, b])]
    assert labels == ["asgd [runs/a]", "asgd [runs/b]"]


@pytest.mark.parametrize("v, fmt, text", [(0.000287258, "g", "0.000287"), (15997.0, "g", "15997"),
                                          (7.79e9, "g", "7.79e+09"), (64.84, "p", "64.8"),
                                          (1003.4, "g", "1003"),
                                          (None, "g", "-"), (math.nan, "g", "-")])
def test_number_format(v, fmt, text):
    assert tables.number(v, fmt) == text


def test_delay_descriptions():
    assert tables.describe_delay({"kind": "none"}, 4) == "no delays"
    assert tables.describe_delay({"kind": "event", "compute": "lognormal", "mean": 2.0,
                                  "heterogeneity": 0.5}, 8) == \
        "lognormal compute times (mean 2 s), speeds lognormal σ=0.5"


# ----------------------------------------------------------------------------- progress


def _chunks(p: Progress, total: int) -> None:
    row = _history(0, 0.1)[1]
    p(0, total, [row])                              # compiled
    for c in range(1, total + 1):
        p(c, total, [row])


def test_progress_logs_compiling_and_at_most_ten_lines_however_many_chunks(caplog):
    caplog.set_level(logging.INFO, logger="jaxasync")
    seen = []
    p = Progress("asgd", on_chunk=seen.append)
    p.compiling()
    _chunks(p, 300)
    p.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "jaxasync"]
    assert lines[0] == "[asgd] compiling" and lines[1].startswith("[asgd] compiled in ")
    progress = lines[2:]
    assert len(progress) == LINES and progress[-1].startswith("[asgd] 100%")
    assert "ETA" in progress[0] and "acc 0.200" in progress[0]
    assert len(seen) == 300                         # a tracker sees every evaluation


def test_quiet_progress_logs_nothing_but_still_feeds_the_tracker(caplog):
    caplog.set_level(logging.INFO, logger="jaxasync")
    seen = []
    p = Progress("asgd", quiet=True, on_chunk=seen.append)
    p.compiling()
    _chunks(p, 7)
    assert [r for r in caplog.records if r.name == "jaxasync"] == [] and len(seen) == 7


# ----------------------------------------------------------------------------- compile cache


def test_compile_cache_directory_and_switch(tmp_path):
    import os

    import jax

    from jaxasync import compile_cache

    before = jax.config.jax_compilation_cache_dir
    try:
        assert compile_cache.default_dir() == __import__("pathlib").Path(
            os.environ[compile_cache.ENV])      # tests never write the user's cache
        assert compile_cache.configure(True, tmp_path / "xla") == tmp_path / "xla"
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
        jax.jit(lambda x: x * 3.0 + 1.0)(np.float32(2.0)).block_until_ready()
        assert any((tmp_path / "xla").iterdir())          # the program went to the cache
        assert compile_cache.configure(False) is None
        assert not jax.config.jax_enable_compilation_cache
    finally:
        compile_cache.configure(True, before or os.environ[compile_cache.ENV])


# ----------------------------------------------------------------------------- compare


def _write_run(directory, record):
    report.write_outputs(record, directory, plot=False)


def test_compare_labels_runs_by_what_differs_and_writes_one_table_and_plot(tmp_path, capsys):
    from jaxasync import compare

    _write_run(tmp_path / "a", _record("asgd", m=4, num_workers=4))
    sweep = tmp_path / "sweep"
    _write_run(sweep / "0_asgd", _record("asgd", m=16, num_workers=16))
    _write_run(sweep / "1_delay_adaptive", _record("delay_adaptive", m=16, num_workers=16))
    out = tmp_path / "cmp"
    assert compare.main([str(tmp_path / "a"), str(sweep), str(sweep / "0_asgd"),
                         "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("| algorithm") == 1
    md = (out / "summary.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| asgd")
            or line.startswith("| delay_adaptive")]
    assert len(rows) == 3                          # the job given twice counts once
    assert "num_workers" in md
    for name in ("summary.csv", "comparison.png", "comparison.pdf"):
        assert (out / name).stat().st_size > 0
        assert name in text


def test_compare_a_directory_without_runs_is_a_one_line_error(tmp_path, capsys):
    from jaxasync import compare

    (tmp_path / "empty").mkdir()
    assert compare.main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "empty: no runs" in err


# ----------------------------------------------------------------------------- target key


TINY = {"algorithm": {"name": "asgd", "params": {"learning_rate": 0.05}},
        "workload": {"name": "least_squares", "batch_size": 8, "options": {"n": 64, "d": 4}},
        "run": {"num_workers": 2, "steps": 20, "eval_every": 10}, "plot": False}


@pytest.mark.parametrize("target, message", [
    ({"metric": "acc", "value": 1.0}, "target.metric='acc': unknown; choose one of: "),
    ({"metric": "train_loss", "value": 1.0, "mode": "up"}, "target.mode='up': must be one of min, max"),
    ({"metric": "train_loss", "value": float("nan")}, "target.value=nan: must be "),
    ({"metric": "train_grad_norm", "value": 1e-5},
     "target.metric=train_grad_norm: needs run.eval_grad_norm=true")])
def test_target_key_errors_name_the_key(target, message):
    from jaxasync.config import ConfigError
    from jaxasync.experiment import validate

    with pytest.raises(ConfigError) as e:
        validate({**TINY, "target": target})
    assert str(e.value).startswith(message)


def test_target_key_replaces_the_workloads_target(tmp_path):
    from jaxasync.experiment import run_experiment

    rec = run_experiment({**TINY, "target": {"metric": "train_loss", "value": 1e9}}, None,
                         progress=False)
    assert rec["target"] == {"metric": "train_loss", "value": 1e9, "mode": "min"}
    assert rec["members"][0]["target_reached"]["step"] == 0   # met before the first step
