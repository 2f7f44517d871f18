"""Compile seconds of every algorithm on the default job, this checkout against others.

    python benchmarks/compile_time.py                              # every algorithm, this code
    python benchmarks/compile_time.py --trees /path/to/old/checkout,.   # before / after
    python benchmarks/compile_time.py --algorithms asgd,sasg --repeats 3

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
"""

from __future__ import annotations

import argparse
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

    def first_chunk(*a, **k):
        return lambda *b: marks.setdefault("chunk", time.process_time())

    experiment.prepare, experiment._progress_printer = prepared, first_chunk
    record = experiment.run_experiment(plain, None, progress=True)
    t = record["timing"]
    print("TIMING" + json.dumps({"compile": t["compile_seconds"], "run": t["run_seconds"],
                                 "wall": t["wall_seconds"],
                                 "cpu": marks["chunk"] - marks["prepared"]}), flush=True)


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
    args = ap.parse_args()
    if args.child:
        child(args.child, args.override)
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
