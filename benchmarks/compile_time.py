"""Compile seconds of every algorithm on the default job, this checkout against others.

    python benchmarks/compile_time.py                              # every algorithm, this code
    python benchmarks/compile_time.py --trees /path/to/old/checkout,.   # before / after
    python benchmarks/compile_time.py --algorithms asgd,sasg --repeats 3
    python benchmarks/compile_time.py --breakdown --algorithms asgd,sync_sgd   # where it goes

Each measurement is one fresh process (no compiled program is reused: JAX's in-memory cache
is per process, and the persistent compilation cache is switched off) running the default
job of ``conf/config.yaml`` with ``algorithm=<name>`` (the CLI's config, composed by Hydra),
through :func:`jaxasync.experiment.run_experiment`, and reading its record's ``timing``:
``compile_seconds`` (until the first chunk can start: tracing, compiling, the initial state
and its evaluation) and ``run_seconds`` (the chunks). The trees' processes alternate
(algorithm by algorithm, repeat by repeat) so machine load hits them alike; the table shows
the medians and the ratio of each tree to the first one. ``cpu``: the process's CPU seconds
(all threads) from the data's load to the end of the first chunk, compilation and one chunk's
work, less sensitive to other processes than the wall-clock ``compile_seconds``. A tree is a
directory holding a ``jaxasync`` package (a checkout, or ``git archive <commit> | tar -x``),
put first on ``PYTHONPATH``.

``--breakdown`` (this checkout): where one job's compilation goes, one program at a time in
one thread (no overlap): tracing + lowering to StableHLO and XLA's compilation of the initial
state, the evaluation and the step program (the chunked scan of the event model and the
algorithm), each with the options the runner uses and with XLA's defaults, in CPU seconds
(this process, all threads: less sensitive to other processes than wall-clock seconds), and
the step program's size (StableHLO ops).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(algorithm: str, overrides: list[str]) -> None:
    """In the measuring process: one default job, its timing as one JSON line."""
    import time

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from jaxasync import experiment
    from jaxasync.cli import CONF_DIR
    from jaxasync.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"algorithm={algorithm}", "plot=false", *overrides])
    plain = OmegaConf.to_container(cfg, resolve=True)
    # this process's CPU seconds from the data's load to the end of the first chunk (the
    # compilation, all threads, and one chunk's work): less sensitive to other processes
    marks = {}
    prepare = experiment.prepare

    def prepared(*a, **k):
        out = prepare(*a, **k)
        marks["prepared"] = time.process_time()
        return out

    run = experiment.run

    def timed_run(*a, progress=None, **k):
        def seen(done, total, last):   # called once compiled (done = 0), then after each chunk
            if done > 0:
                marks.setdefault("chunk", time.process_time())
            if progress is not None:
                progress(done, total, last)
        return run(*a, progress=seen, **k)

    experiment.prepare, experiment.run = prepared, timed_run
    record = experiment.run_experiment(plain, None, progress=True)
    t = record["timing"]
    print("TIMING" + json.dumps({"compile": t["compile_seconds"], "run": t["run_seconds"],
                                 "wall": t["wall_seconds"],
                                 "cpu": marks["chunk"] - marks["prepared"]}), flush=True)


def breakdown(algorithm: str, overrides: list[str]) -> dict:
    """CPU seconds of tracing/lowering and of compiling each program of one job."""
    import time

    import jax
    import jax.numpy as jnp
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from jaxasync import _threefry, experiment, running
    from jaxasync.cli import CONF_DIR
    from jaxasync.config import register_configs
    from jaxasync.sim import put_data

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"algorithm={algorithm}", "plot=false", *overrides])
    prep = experiment.prepare(OmegaConf.to_container(cfg, resolve=True))
    sim, keys, hp = prep.simulator, prep.keys(), prep.hparams()
    data = put_data(prep.workload, prep.index, prep.size)
    layout = running.member_layout(sim, keys.shape[0], prep.cfg.run.members)
    fns = running.programs(sim, layout)
    shapes = jax.eval_shape(fns.init, keys, hp)
    cpu = jax.default_backend() == "cpu"
    jobs = {"init": (fns.init, (keys, hp), running.INIT_OPTIONS),
            "evaluate": (fns.evaluate, (shapes, data), running.EVAL_OPTIONS),
            "steps": (fns.steps, (shapes, data, hp, jax.ShapeDtypeStruct((), jnp.int32)),
                      running.step_options())}
    out = {"algorithm": algorithm, "layout": layout}
    for name, (fn, args, options) in jobs.items():
        t = time.process_time()
        with _threefry.unrolled() if name == "steps" else contextlib.nullcontext():
            lowered = jax.jit(fn).lower(*args)   # a fresh jit: nothing cached (as the runner)
        out[f"{name}_lower"] = time.process_time() - t
        if name == "steps":
            out["steps_ops"] = lowered.as_text().count(" = ")
        for label, opts in (("runner", options if cpu else None), ("default", None)):
            if label == "default" and options is None:
                continue
            t = time.process_time()
            with _threefry.unrolled() if name == "steps" else contextlib.nullcontext():
                jax.jit(fn).lower(*args).compile(opts)
            out[f"{name}_compile_{label}"] = time.process_time() - t - out[f"{name}_lower"]
    return out


def breakdown_table(rows: list[dict]) -> list[str]:
    cols = ["init_lower", "init_compile_runner", "init_compile_default", "evaluate_lower",
            "evaluate_compile_runner", "evaluate_compile_default", "steps_lower",
            "steps_compile_runner"]
    head = f"{'algorithm':<18} {'layout':>6}" + "".join(f" {c.replace('_compile', ''):>16}"
                                                        for c in cols) + f" {'steps ops':>9}"
    lines = [head]
    for r in rows:
        lines.append(f"{r['algorithm']:<18} {r['layout']:>6}" + "".join(
            f" {r.get(c, float('nan')):>16.2f}" for c in cols) + f" {r['steps_ops']:>9}")
    return lines


def measure(tree: Path, algorithm: str, overrides: list[str], timeout: float) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "JAX_ENABLE_COMPILATION_CACHE": "false", "JAX_PLATFORMS": os.environ.get(
               "JAX_PLATFORMS", "")}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    proc = subprocess.run([sys.executable, str(HERE / "compile_time.py"), "--child", algorithm,
                           *[f"--override={o}" for o in overrides]],
                          capture_output=True, text=True, env=env, cwd=tree, timeout=timeout)
    if proc.returncode != 0 or "TIMING" not in proc.stdout:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": tail[0][:200]}
    return json.loads(proc.stdout.split("TIMING", 1)[1].splitlines()[0])


def algorithms_of(tree: Path) -> list[str]:
    """The algorithms with a config in ``tree``'s ``conf/algorithm``."""
    return sorted(p.stem for p in (tree / "conf" / "algorithm").glob("*.yaml")
                  if p.stem != "schema")


def table(results: dict, trees: list[Path], algorithms: list[str]) -> list[str]:
    names = [t.name or str(t) for t in trees]
    head = f"{'algorithm':<18}" + "".join(f" {n[:12] + ' compile':>20} {'cpu':>6} {'run':>6}"
                                          for n in names)
    if len(trees) > 1:
        head += "".join(f" {'ratio ' + n[:8]:>15} {'cpu':>5}" for n in names[1:])
    lines = [head]
    for alg in algorithms:
        row, comp = f"{alg:<18}", []
        for tree in trees:
            ok = [r for r in results[alg][str(tree)] if "error" not in r]
            if not ok:
                row += f" {'error':>20} {'':>6} {'':>6}"
                comp.append(None)
                continue
            c = statistics.median(r["compile"] for r in ok)
            cpu = statistics.median(r["cpu"] for r in ok)
            row += f" {c:>20.2f} {cpu:>6.2f} {statistics.median(r['run'] for r in ok):>6.2f}"
            comp.append((c, cpu))
        for c in comp[1:]:
            row += (f" {c[0] / comp[0][0]:>15.2f} {c[1] / comp[0][1]:>5.2f}" if c and comp[0]
                    else f" {'-':>15} {'-':>5}")
        lines.append(row)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--override", action="append", default=[],
                    help="a config override for every job (repeatable), e.g. run.gradients=4000")
    ap.add_argument("--trees", default=str(HERE.parent),
                    help="comma-separated directories holding a jaxasync package; the first is "
                         "the reference of the ratios (default: this checkout)")
    ap.add_argument("--algorithms", default=None, help="comma-separated (default: every one "
                    "with a config in the first tree's conf/algorithm)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per job")
    ap.add_argument("--json", default=None, help="also write the measurements to this file")
    ap.add_argument("--breakdown", action="store_true", help="each program's tracing and "
                    "compiling CPU seconds, in this process (this checkout)")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.override)
        return
    if args.breakdown:
        import jax

        jax.config.update("jax_enable_compilation_cache", False)
        names = args.algorithms.split(",") if args.algorithms else algorithms_of(HERE.parent)
        rows = [breakdown(a, args.override) for a in names]
        print(f"# default job{' + ' + ' '.join(args.override) if args.override else ''}: CPU "
              f"seconds per program (lower: trace + StableHLO; runner: XLA with the runner's "
              f"options; default: XLA's defaults); load average {os.getloadavg()[0]:.1f}")
        print("\n".join(breakdown_table(rows)))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        return
    trees = [Path(t).resolve() for t in args.trees.split(",")]
    algorithms = args.algorithms.split(",") if args.algorithms else algorithms_of(trees[0])
    results = {a: {str(t): [] for t in trees} for a in algorithms}
    for alg in algorithms:
        for _ in range(args.repeats):
            for tree in trees:
                r = measure(tree, alg, args.override, args.timeout)
                results[alg][str(tree)].append(r)
                shown = r.get("error") or f"compile {r['compile']:.2f} s, run {r['run']:.2f} s"
                print(f"# {alg} [{tree}]: {shown}", file=sys.stderr, flush=True)
    print(f"# default job{' + ' + ' '.join(args.override) if args.override else ''}: seconds "
          f"(median of {args.repeats}); load average {os.getloadavg()[0]:.1f}")
    print("\n".join(table(results, trees, algorithms)))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
