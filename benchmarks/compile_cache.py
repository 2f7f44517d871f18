"""The persistent compilation cache (issue 18): the default job twice, in fresh processes.

    python benchmarks/compile_cache.py                  # the default job: algorithm=asgd
    python benchmarks/compile_cache.py debug=fast       # extra overrides for both runs

Both runs use one fresh cache directory (run.compile_cache_dir) and separate output
directories; the first compiles and fills the cache, the second loads from it. Printed for
both: the compile seconds the job records (chunk + init + first evaluation), the seconds from
process start to the first progress line, and the whole process; then the ratios.
Target: the second compile at most a third of the first.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: a progress line: "[asgd]  10%  step 800 ..."
PROGRESS = re.compile(r"^\[[^\]]+\]\s+\d+%\s+step ")


def timed_job(overrides: list[str], cache: Path, out: Path) -> dict:
    """Runs ``jaxasync <overrides>`` into ``out`` with the cache in ``cache``; returns its
    compile seconds, seconds to the first progress line and whole seconds."""
    cmd = [sys.executable, "-m", "jaxasync", *overrides, f"run.compile_cache_dir={cache}",
           f"hydra.sweep.dir={out}", "run.resume=false"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    first, lines = None, []
    for line in proc.stdout:
        lines.append(line)
        if first is None and PROGRESS.match(line):
            first = time.perf_counter() - t0
    if proc.wait() != 0:
        sys.exit("".join(lines[-30:]))
    whole = time.perf_counter() - t0
    rec = json.loads(next(out.rglob("run.json")).read_text())
    return {"compile": rec["timing"]["compile_seconds"], "first": first, "whole": whole}


def main(argv: list[str]) -> None:
    overrides = argv or ["algorithm=asgd"]
    if not any(o.startswith("algorithm=") for o in overrides):
        overrides = ["algorithm=asgd", *overrides]
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "xla"
        runs = [timed_job(overrides, cache, Path(tmp) / f"run{i}") for i in (1, 2)]
        entries = sum(1 for _ in cache.iterdir())
    print(f"# jaxasync {' '.join(overrides)}: twice, fresh processes, one fresh cache "
          f"({entries} entries after both)")
    print(f"{'':8} {'compile s':>10} {'first line s':>13} {'whole s':>8}")
    for name, r in zip(("cold", "cached"), runs, strict=True):
        first = f"{r['first']:.1f}" if r["first"] is not None else "-"
        print(f"{name:8} {r['compile']:10.2f} {first:>13} {r['whole']:8.1f}")
    cold, warm = runs
    ratio = warm["compile"] / cold["compile"]
    print(f"cached / cold compile: {ratio:.2f} (target <= 0.33: "
          f"{'met' if ratio <= 1 / 3 else 'NOT met'})")
    if cold["first"] and warm["first"]:
        print(f"cached / cold time to the first progress line: {warm['first'] / cold['first']:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
