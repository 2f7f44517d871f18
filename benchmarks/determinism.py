"""Run the same experiments in fresh processes and compare their metrics bit for bit.

    python benchmarks/determinism.py                        # 2 runs of each job, this device
    XLA_FLAGS=--xla_gpu_deterministic_ops=true python benchmarks/determinism.py --json d.json
    python benchmarks/determinism.py --small                # tiny jobs (the GPU check's dry run)

Each job (:data:`JOBS`: ASGD on the default workload, SASG on its MNIST protocol: scatters,
top-k and sums over workers, where a GPU's atomics can reorder additions) runs ``--runs`` times,
each in its own process through :func:`jaxasync.experiment.run_experiment`; the script prints,
per job, whether every metric of every evaluation is bitwise the same in all runs, and the
largest relative difference otherwise. The environment (``XLA_FLAGS``...) passes to the runs:
on a GPU, compare with and without ``--xla_gpu_deterministic_ops=true``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys

JOBS = {
    "asgd_mnist1d": {"algorithm": {"name": "asgd"}, "workload": {"name": "mnist1d_mlp"},
                     "delay": {"kind": "event", "compute": "exponential", "mean": 1.0},
                     "run": {"num_workers": 16, "gradients": 4000, "evals": 4, "seeds": [0, 1]}},
    "sasg_mnist_fc": {"algorithm": {"name": "sasg"},
                      "workload": {"name": "mnist_subset_fc", "batch_size": 10},
                      "delay": {"kind": "none"},
                      "run": {"num_workers": 10, "steps": 200, "eval_every": 50,
                              "eval_train_size": 1000, "seeds": [1, 19]}},
}


def _small(cfg: dict) -> dict:
    run = {k: v for k, v in cfg["run"].items() if k not in ("gradients", "evals")}
    run.update(steps=4, eval_every=2, seeds=[0])
    return {**cfg, "run": run}


def child(job: str, small: bool) -> None:
    from jaxasync.experiment import run_experiment

    cfg = {**(_small(JOBS[job]) if small else JOBS[job]), "plot": False}
    record = run_experiment(cfg, None, progress=False)
    print("HISTORY" + json.dumps([m["history"] for m in record["members"]]), flush=True)


def _differences(a, b) -> tuple[int, float]:
    """(number of metric values that differ, largest relative difference)."""
    n, worst = 0, 0.0
    for ma, mb in zip(a, b, strict=True):
        for ha, hb in zip(ma, mb, strict=True):
            for k, va in ha.items():
                vb = hb[k]
                if va == vb or (isinstance(va, float) and math.isnan(va) and math.isnan(vb)):
                    continue
                n += 1
                if isinstance(va, int | float) and isinstance(vb, int | float):
                    worst = max(worst, abs(va - vb) / max(abs(vb), 1e-30))
    return n, worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--small", action="store_true", help="tiny jobs (seconds each)")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--jobs", default=",".join(JOBS))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.small)
        return
    out = {"xla_flags": os.environ.get("XLA_FLAGS", ""), "jobs": {}}
    for job in args.jobs.split(","):
        histories = []
        for _ in range(args.runs):
            cmd = [sys.executable, __file__, "--child", job] + (["--small"] if args.small else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0 or "HISTORY" not in proc.stdout:
                raise SystemExit(f"{job}: run failed: {(proc.stderr or proc.stdout)[-2000:]}")
            histories.append(json.loads(proc.stdout.split("HISTORY", 1)[1].splitlines()[0]))
        diffs = [_differences(histories[0], h) for h in histories[1:]]
        n = sum(d[0] for d in diffs)
        worst = max((d[1] for d in diffs), default=0.0)
        out["jobs"][job] = {"runs": args.runs, "bitwise_identical": n == 0, "values_differing": n,
                            "max_rel_diff": worst}
        print(f"{job:<16} {args.runs} runs: "
              f"{'bitwise identical' if n == 0 else f'{n} values differ, up to {worst:.1e}'}"
              f"  (XLA_FLAGS={out['xla_flags'] or '-'})", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
