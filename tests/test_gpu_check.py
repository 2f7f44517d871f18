"""benchmarks/gpu_check.sh --dry-run: the GPU check end to end on the CPU at tiny sizes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("device", "tests", "throughput", "sasg", "members", "scaling", "determinism",
         "nondeterminism")


@pytest.mark.slow
def test_gpu_check_dry_run_end_to_end(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run",
                           "--out", str(out)], capture_output=True, text=True, env=env,
                          timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["dry_run"] is True and set(result["steps"]) == set(STEPS)
    steps = result["steps"]
    for name in STEPS:
        assert steps[name]["rc"] == 0, (name, steps[name]["log_tail"])
    assert steps["device"]["figures"]["platform"] == "cpu"
    assert "passed" in steps["tests"]["log_tail"][-1]
    variants = steps["throughput"]["figures"]["variants"]
    assert len(variants) == 5 and all(v["grads_per_s"] > 0 for v in variants.values())
    assert steps["sasg"]["figures"]["it_per_s"]["sasg[exact]"] > 0
    assert {r["algorithm"] for r in steps["members"]["figures"]} == {"asgd", "sync_sgd"}
    assert {p["kind"] for p in steps["scaling"]["figures"]} == {"workers", "members", "width"}
    # the same CPU program twice: bitwise, with or without the (GPU-only) flag
    for name in ("determinism", "nondeterminism"):
        assert all(j["bitwise_identical"] for j in steps[name]["figures"]["jobs"].values())
    assert "gpu_check summary (DRY RUN" in proc.stdout and "every step passed" in proc.stdout
    assert Path(str(out).removesuffix(".json") + "_scaling.png").is_file()
