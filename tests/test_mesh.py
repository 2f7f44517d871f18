"""The worker axis on 8 forced host CPU devices equals the single-device run (subprocess)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from helpers import assert_f32_close, assert_loss_close, sgd_roundings

SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, numpy as np
    # P(...) as JAX >= 0.8 prints a PartitionSpec (0.7 writes PartitionSpec(...))
    spec_text = lambda s: str(s).replace("PartitionSpec(", "P(")
    from jaxasync.experiment import prepare, run_experiment
    from jaxasync.sim import put_data, run
    from jaxasync.lazy import LazyState
    from jaxasync.transforms import find_states
    out = {}
    lazy = {"history": 3}
    cases = [("asgd", 8, {}), ("asgd", 1, {}), ("sync_sgd", None, {}),
             # the lazy family: per-worker stored messages, error memories and last-upload
             # iterates sharded along M; threshold_scale keeps some skips in 20 steps
             ("sasg", None, {**lazy, "density": 0.25, "threshold_scale": 30.0}),
             ("lasg", None, {**lazy, "threshold_scale": 30.0}),
             ("sparse", None, {"density": 0.25})]
    for alg, k, extra in cases:
        rows = []
        for mesh in (1, 8):
            params = {"learning_rate": 0.05 if k or alg == "sync_sgd" else 0.01, **extra}
            cfg = {"algorithm": {"name": alg, "arrivals": k, "params": params},
                   "workload": {"name": "least_squares", "batch_size": 8, "options": {"n": 512, "d": 16}},
                   "run": {"num_workers": 8, "steps": 20, "eval_every": 10, "seeds": [0, 1],
                           "mesh_workers": mesh}}
            prep = prepare(cfg)
            r = run(prep.simulator, put_data(prep.workload, prep.index, prep.size), prep.keys(),
                    prep.hparams(), mesh=prep.mesh)
            st = r.final_state
            rows.append({"params": np.asarray(jax.tree.leaves(st.params)[0]).tolist(),
                         "loss": [h[-1]["train_loss"] for h in r.history],
                         "f_max": max(x["train_loss"] for h in r.history for x in h),
                         "smoothness": prep.workload.smoothness,
                         "finish_spec": spec_text(getattr(st.finish.sharding, "spec", None)),
                         "ring_spec": spec_text(getattr(
                             jax.tree.leaves(st.ring.versions)[0].sharding, "spec", None)),
                         "devices": len(st.finish.sharding.device_set),
                         "skips": [int(h[-1].get("skips", -1)) for h in r.history],
                         "lazy_spec": {f: [spec_text(getattr(x.sharding, "spec", None))
                                           for x in jax.tree.leaves(v)]
                                       for ls in find_states(st.opt_state, LazyState)
                                       for f, v in ls._asdict().items()}})
        out[f"{alg}-{k}"] = rows
    print("RESULT" + json.dumps(out))
""")


def test_sharded_worker_axis_equals_single_device():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=300, env=env, cwd=Path(__file__).parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    for name, (single, sharded) in out.items():
        assert sharded["devices"] == 8, name
        assert sharded["finish_spec"] == "P(None, 'workers')", name
        if name.startswith("asgd"):  # synchronous runs keep a short ring (2 or history + 1
            # versions), not divisible by 8: replicated
            assert sharded["ring_spec"] == "P(None, 'workers')", name
        assert single["devices"] == 1
        # two programs (the sums over workers split across devices): equal up to rounding
        rounds = sgd_roundings(20, d=16, batch=8, rows=8)
        why = f"{name}: 20 steps x (16-term dot, mean of 8, sum of <= 8 rows, 3 ops), adding up"
        assert_f32_close(sharded["params"], single["params"], roundings=rounds, why=why)
        assert_loss_close(sharded["loss"], single["loss"], param_roundings=rounds,
                          smoothness=single["smoothness"], f_max=single["f_max"], d=16, n=512,
                          w_scale=float(np.abs(single["params"]).max()), why=why)
        assert sharded["skips"] == single["skips"], name
        if name.startswith(("sasg", "lasg")):
            # messages, error memories (or the sent vectors and their selections: SASG's top-k),
            # skip counters (seed axis first): split along M; the scalar counters replicated
            spec = sharded["lazy_spec"]
            per_worker = [x for f in ("messages", "memory", "skips") for x in spec[f]]
            assert per_worker and set(per_worker) == {"P(None, 'workers')"}, spec
            assert {x for f in ("count", "forced", "tested") for x in spec[f]} == {"P()"}, spec
            assert spec["memory" if name.startswith("sasg") else "messages"], spec
    # the lazy runs did skip (else the test would not cover the stored-message path)
    assert out["sasg-None"][0]["skips"][-1] > 0 and out["lasg-None"][0]["skips"][-1] > 0
