#!/usr/bin/env bash
# The GPU check (issue 22): one script, under 8 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh                     # on a machine with a GPU
#   bash benchmarks/gpu_check.sh --dry-run           # CPU, tiny sizes, end to end (~5 min)
#   bash benchmarks/gpu_check.sh --out results.json  # where the figures go (gpu_check.json)
#
# Steps, each under its own time limit (their sum, 450 s, bounds the whole check):
#   device       what JAX sees (platform, device kind, count, versions)
#   tests        the test suite's fast subset on the device (core, contract, runner, resume)
#   throughput   benchmarks/throughput.py: simulator gradients/s against the bare vmapped
#                gradient (MNIST FC, M = 16), the runner's program included
#   sasg         benchmarks/sasg_bench.py: SASG iterations/s on its MNIST protocol, with SGD,
#                LASG and Sparse in the same harness
#   members      benchmarks/member_map.py: members vmapped against lax.map (whether run.members=auto
#                picks the faster layout on this device)
#   scaling      benchmarks/scaling.py chart --sizes medium: gradients/s, memory (the device's
#                peak bytes in use) and compile seconds against workers, members, model size
#   determinism  benchmarks/determinism.py twice: ASGD and SASG, each run twice in fresh
#                processes, with XLA_FLAGS=--xla_gpu_deterministic_ops=true (must be bitwise
#                identical) and without it (may differ: atomics)
# Everything lands in one JSON file (each step: exit status, seconds, its figures) and a
# summary is printed. A step that fails or runs out of time is reported as such; the others
# still run. Exit status: 0 when every step passed, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DRY=0
OUT=gpu_check.json
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT=$2; shift ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (--dry-run, --out FILE)" >&2; exit 2 ;;
  esac
  shift
done
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # several processes may share the device
SCALE=1
if [ "$DRY" = 1 ]; then
  export JAX_PLATFORMS=cpu
  SCALE=${GPU_CHECK_DRY_SCALE:-4}   # the CPU compiles slowly: the limits x4 in a dry run
else
  if ! "$PY" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
    echo "gpu_check.sh: JAX sees no GPU (jax.default_backend() != 'gpu'); --dry-run runs on the CPU" >&2
    exit 2
  fi
fi

step() {  # step NAME SECONDS COMMAND...: runs it, records exit status and seconds
  local name=$1 limit=$(( $2 * SCALE )); shift 2
  local t0=$(date +%s%N)
  timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  local dt="$((ms / 1000)).$(printf %03d $((ms % 1000)))"
  echo "{\"rc\": $rc, \"seconds\": $dt, \"limit\": $limit}" > "$WORK/$name.status"
  printf '%-14s rc=%-3s %8s s  (limit %s s)\n' "$name" "$rc" "$dt" "$limit"
}

if [ "$DRY" = 1 ]; then
  TESTS=(tests/test_running.py -k "auto_layout or one_step_program")
  THROUGHPUT=(--workload mnist1d_mlp --workers 4 --steps 2 --repeats 1)
  SASG=(--methods exact --family "" --no-dense-memory --no-formed --steps 2 --warmup 2 --repeats 1)
  MEMBERS=(--cases mnist1d_mlp:asgd,mnist1d_mlp:sync_sgd --members 2 --steps 2 --repeats 1)
  SIZES=small; DET=(--small)
else
  TESTS=(tests/test_core.py tests/test_contract.py tests/test_running.py tests/test_resume.py)
  THROUGHPUT=(--repeats 5)
  SASG=(--methods exact,lax --family sgd_sum,lasg,sparse --no-dense-memory --no-formed --repeats 5)
  MEMBERS=(--members 4 --steps 20 --repeats 3)
  SIZES=medium; DET=()
fi

echo "# gpu_check: dry run ${DRY}, figures to $OUT"
step device 60 "$PY" -c "
import json, jax, jaxlib, platform
d = jax.devices()
json.dump({'platform': d[0].platform, 'kind': d[0].device_kind, 'count': len(d),
           'jax': jax.__version__, 'jaxlib': jaxlib.__version__, 'host': platform.node()},
          open('$WORK/device.json', 'w'))"
step tests 150 "$PY" -m pytest -q -x -m "not slow" -p no:cacheprovider "${TESTS[@]}"
step throughput 45 "$PY" benchmarks/throughput.py "${THROUGHPUT[@]}" --json "$WORK/throughput.json"
step sasg 60 "$PY" benchmarks/sasg_bench.py "${SASG[@]}" --json "$WORK/sasg.json"
step members 45 "$PY" benchmarks/member_map.py "${MEMBERS[@]}" --json "$WORK/members.json"
step scaling 120 "$PY" benchmarks/scaling.py chart --sizes "$SIZES" --out "$WORK/scaling.png" \
  --json "$WORK/scaling.json"
step determinism 30 env XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_deterministic_ops=true" \
  "$PY" benchmarks/determinism.py "${DET[@]}" --json "$WORK/determinism.json"
step nondeterminism 30 "$PY" benchmarks/determinism.py "${DET[@]}" --json "$WORK/nondeterminism.json"
[ -f "$WORK/scaling.png" ] && cp "$WORK/scaling.png" "${OUT%.json}_scaling.png"

"$PY" - "$WORK" "$OUT" "$DRY" <<'PYEOF'
import json, sys
from pathlib import Path

work, out, dry = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
steps = ("device", "tests", "throughput", "sasg", "members", "scaling", "determinism",
         "nondeterminism")
result = {"dry_run": dry, "steps": {}}
for name in steps:
    status = json.loads((work / f"{name}.status").read_text())
    figures = work / f"{name}.json"
    log = (work / f"{name}.log").read_text(errors="replace").strip().splitlines()
    result["steps"][name] = {**status, "figures": json.loads(figures.read_text())
                             if figures.is_file() else None, "log_tail": log[-15:]}
out.write_text(json.dumps(result, indent=1))

s = result["steps"]
dev = s["device"]["figures"] or {}
print(f"\n# gpu_check summary ({'DRY RUN, CPU, tiny sizes' if dry else 'GPU'}): "
      f"{dev.get('kind', '?')} x {dev.get('count', '?')}, jax {dev.get('jax', '?')}")
tail = s["tests"]["log_tail"]
print(f"tests:        {tail[-1] if tail else '-'}")
if s["throughput"]["figures"]:
    for k, v in s["throughput"]["figures"]["variants"].items():
        print(f"throughput:   {k:<28} {v['grads_per_s']:>12.0f} grads/s  {v['ratio']:.2f} of the limit")
if s["sasg"]["figures"]:
    for k, v in s["sasg"]["figures"]["it_per_s"].items():
        print(f"sasg:         {k:<28} {v:>8.1f} it/s")
for r in s["members"]["figures"] or []:
    print(f"members:      {r['workload']}:{r['algorithm']:<10} vmap/map {r['vmap_over_map']:.2f}, "
          f"auto picks {r['auto']} ({'faster' if r['faster'] == r['auto'] else 'SLOWER'})")
for p in s["scaling"]["figures"] or []:
    print(f"scaling:      {p['kind']:>7}={p['value']:<6} {p['grads_per_s']:>11.0f} grads/s  "
          f"memory {p['memory'] / 2**20:>8.1f} MB (state {p['state'] / 2**20:.1f} MB)  "
          f"compile {p['compile_s']:.1f} s")
for name in ("determinism", "nondeterminism"):
    for job, v in ((s[name]["figures"] or {}).get("jobs") or {}).items():
        flag = "deterministic ops" if name == "determinism" else "default flags    "
        print(f"{name[:13]:<13} {flag} {job:<14} "
              f"{'bitwise identical' if v['bitwise_identical'] else 'DIFFERENT: %d values, up to %.1e' % (v['values_differing'], v['max_rel_diff'])}")
failed = [n for n in steps if s[n]["rc"] != 0]
det = (s["determinism"]["figures"] or {}).get("jobs") or {}
if det and not all(v["bitwise_identical"] for v in det.values()):
    failed.append("determinism (not bitwise with --xla_gpu_deterministic_ops)")
print(f"total {sum(s[n]['seconds'] for n in steps):.0f} s; "
      f"{'every step passed' if not failed else 'FAILED: ' + ', '.join(failed)}; wrote {out}")
sys.exit(1 if failed else 0)
PYEOF
