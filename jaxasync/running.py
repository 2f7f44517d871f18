"""Running a :class:`~jaxasync.sim.Simulator`: the members' programs, compiled once, called
chunk by chunk.

A run of ``S`` members (seeds x hyperparameter values) is three compiled programs:

* ``init``: the members' initial states ``[S, ...]``;
* ``steps``: ``n`` server steps of every member (donating the state), ``n`` a traced count,
  so one program serves every chunk, the shorter last one included;
* ``evaluate``: every member's metrics, after each chunk.

How the members share a program is their *layout* (:func:`member_layout`): one member runs
the unbatched program; several run ``jax.vmap``-ed (``"vmap"``: each operation once over all
members) or with ``jax.lax.map`` (``"map"``: the one-member step program, members one after
another inside one loop). The state is ``[S, ...]`` either way, so checkpoints do not depend on
it. The two layouts are different programs: a vmapped dot accumulates in another order than a
lone one, so their results agree to float32 rounding, not bit for bit.

Compile time (issue 22: the default job spent 16.9 s compiling and 0.44 s running). Measured
on that job (mnist1d_mlp, ASGD, 16 event-driven workers; CPU seconds of XLA compilation on a
loaded 2-core machine): the initial state 4.8 s (the model's random initialisation, threefry
and truncated normals, is most of it), the step loop 3.1 s, the evaluation 1.2 s, and the
evaluation again inside the chunk program 1.6 s. So:

* the evaluation is its own program, compiled once (not once alone and once in every chunk
  program);
* one step program for every chunk length (the last chunk's own compilation is gone);
* on the CPU the initial-state and evaluation programs, whose speed does not matter, are
  compiled with cheaper options (:data:`INIT_OPTIONS`, :data:`EVAL_OPTIONS`): the initial
  state 3x faster, the same bits (checked for every offline workload in
  ``tests/test_running.py``);
* the step and evaluation programs compile in background threads (XLA compiles without
  holding Python's GIL) while the initial state is compiled and computed.

``benchmarks/compile_time.py`` prints compile seconds for every algorithm, this code against
another checkout's.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxasync import _threefry

#: how the members of a run share its program (``run.members``)
MEMBER_LAYOUTS = ("auto", "vmap", "map")

#: XLA options (CPU) of the programs whose speed does not matter: the initial state (run once)
#: and the evaluation (once per chunk). XLA's classic fusion emitters instead of the MLIR ones
#: (both), and LLVM's optimisation level 1 instead of 2 (the initial state): compiling
#: mnist1d_mlp's initial state takes 1.1 CPU seconds instead of 3.5, its evaluation 0.65
#: instead of 0.8. The values are bitwise those of the default options
#: (``tests/test_running.py`` checks every offline workload). Level 1 is not for the
#: evaluation (it sums the losses in another order: a last-bit difference) and neither is for
#: the step program (the classic emitters run it up to 20% slower on SASG's MNIST FC, and
#: round some elementwise functions differently).
INIT_OPTIONS = {"xla_backend_optimization_level": 1, "xla_cpu_use_fusion_emitters": False}
EVAL_OPTIONS = {"xla_cpu_use_fusion_emitters": False}

#: XLA option (CPU) of the step program: YNNPACK for dots only, not for reductions. jaxlib 0.8+
#: hands small reductions to YNNPACK, whose call costs tens of microseconds where XLA's own
#: loop takes one: on the 2-core CPU the worst-case quadratic's 21-member grid spent 57 of its
#: ~75 us per step in one such reduction (the loss's inner product; ``benchmarks/
#: async_bench.py``). On MNIST FC (``benchmarks/throughput.py``, M = K = 16) it makes no
#: difference on quiet cores (runner 1.00 and 0.93 of the bare vmapped-gradient limit with it,
#: 1.04 and 0.94 without, alternated). Older jaxlibs have no YNNPACK and no such option
#: (:func:`step_options` then gives none).
STEP_YNN = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


@functools.cache
def step_options() -> dict | None:
    """The step program's XLA options on this backend (:data:`STEP_YNN` on a CPU whose XLA
    knows it; None elsewhere)."""
    if jax.default_backend() != "cpu":
        return None
    try:
        jax.jit(lambda x: x.sum()).lower(jnp.zeros(2)).compile(STEP_YNN)
    except Exception:  # noqa: BLE001  (an XLA without the option rejects it)
        return None
    return dict(STEP_YNN)


def member_layout(sim, members: int, requested: str = "auto", mesh=None,
                  backend: str | None = None) -> str:
    """How ``members`` members run in one program: ``"single"``, ``"vmap"`` or ``"map"``.

    ``"auto"`` is a rule, never a timing, so that a run's results do not depend on the
    machine's load: on the CPU, ``map`` for synchronous algorithms (all M workers compute at
    the same iterate) and ``vmap`` for the others; ``vmap`` on other backends and on a mesh.
    Measured on a 2-core CPU (``benchmarks/member_map.py``; ms per member-step, vmap / map):
    ASGD with 16 event-driven workers 0.40 (mnist1d_mlp), 0.37 (MNIST FC 784-512-10), 0.46
    (mnist1d_cnn); synchronous SGD 1.60 (mnist1d_mlp, M = 16), SASG's SGD 1.54 and SASG 1.36
    (MNIST FC, M = 10). A vmapped synchronous step computes each worker's gradient of the
    shared parameters as a dot with two batch axes (members, workers), which XLA's CPU
    backend lays out transposed and copies back, the whole [S, M, P] gradient block every
    step; members one after another skip that copy. Set ``run.members`` to override.
    """
    if requested not in MEMBER_LAYOUTS:
        raise ValueError(f"run.members={requested!r}: unknown; choose one of: "
                         f"{', '.join(MEMBER_LAYOUTS)}")
    if members == 1 and mesh is None:
        return "single"
    if requested != "auto":
        return requested
    if mesh is None and (backend or jax.default_backend()) == "cpu" and sim.spec.synchronous:
        return "map"
    return "vmap"


class Programs(NamedTuple):
    """A run's functions over stacked members, before jit."""

    init: Callable       # (keys[S], hparams[S]) -> state[S]
    evaluate: Callable   # (state[S], data) -> metrics[S]
    steps: Callable      # (state[S], data, hparams[S], n) -> state[S]


def programs(sim, layout: str) -> Programs:
    """The functions of :func:`member_layout`'s ``layout`` (every one keeps the leading S)."""
    if layout == "single":
        # The unbatched functions on the state without its member axis (a bitcast in and out).
        # Under a vmap of size 1 XLA lays some autodiff gradient dots out transposed and
        # copies them back: on the MNIST FC net a 16 MB transpose per step, SGD 5.9 vs 3.7 ms.
        one = lambda tree: jax.tree.map(lambda x: x[0], tree)          # noqa: E731
        stack = lambda tree: jax.tree.map(lambda x: x[None], tree)     # noqa: E731
        return Programs(
            init=lambda k, hp: stack(sim.init(k[0], one(hp))),
            evaluate=lambda s, dd: stack(sim.evaluate(one(s), dd)),
            steps=lambda s, dd, hp, n: stack(sim.steps(one(s), dd, one(hp), n)))
    init, evaluate = jax.vmap(sim.init), jax.vmap(sim.evaluate, in_axes=(0, None))
    if layout == "vmap":
        steps = jax.vmap(sim.steps, in_axes=(0, None, 0, None))
    elif layout == "map":
        def steps(s, dd, hp, n):
            return jax.lax.map(lambda a: sim.steps(a[0], dd, a[1], n), (s, hp))
    else:
        raise ValueError(f"layout={layout!r}: one of single, vmap, map")
    return Programs(init, evaluate, steps)


@dataclasses.dataclass
class RunResult:
    """What one run of S members produced, on the host.

    ``history[s]`` is a list of metric dicts (one per evaluation point) of member s;
    ``diverged[s]`` is the server step at which member s became non-finite, or None.
    ``compile_seconds``: from the call until the first chunk could start (tracing, compiling,
    the initial state and its evaluation); ``run_seconds``: the chunks. ``layout``: how the
    members shared the program (:func:`member_layout`).
    """

    history: list[list[dict]]
    diverged: list[int | None]
    final_state: Any
    compile_seconds: float
    run_seconds: float
    staleness_hist: np.ndarray  # [S, D + 1]
    layout: str = "vmap"


def _to_host(metrics: dict) -> list[dict]:
    """Stacked per-member metrics -> one plain dict per member."""
    host = jax.device_get(metrics)
    n = np.shape(next(iter(host.values())))[0]
    rows = []
    for i in range(n):
        row = {k: np.asarray(v[i]).item() for k, v in host.items() if not k.endswith("_lo")}
        for k in host:
            if k.endswith("_lo"):  # Kahan low-order parts of the bit counters
                row[k[:-3]] = float(np.float64(host[k[:-3]][i]) + np.float64(host[k][i]))
        rows.append(row)
    return rows


def run(sim, data, keys, hparams: dict,
        progress: Callable[[int, int, list[dict]], None] | None = None,
        state=None, history: list[list[dict]] | None = None,
        on_chunk: Callable[[Any, list[list[dict]]], None] | None = None,
        mesh=None, members: str = "auto") -> RunResult:
    """Runs ``S`` members (``keys[S]``, ``hparams`` leaves ``[S]``) of ``sim`` on ``data``.

    The whole run is ``steps / eval_every`` calls of one compiled step program (donating the
    state), each followed by the evaluation program; metrics come back to the host once per
    chunk. A member whose loss or parameters become non-finite is marked diverged at that
    chunk; the run stops early when every member has diverged.

    ``progress(done, total, last)`` is called once when the programs are compiled (``done``:
    the chunks already done, 0 unless resuming) and after every chunk, with each member's
    last metrics. ``state``/``history`` resume a run; ``on_chunk`` is called after each
    chunk (for checkpoints). With a ``mesh`` (see :mod:`jaxasync.mesh`) the worker axis of the state
    and of the per-step computation is sharded over the mesh axis ``"workers"``; with
    several processes (``jax.distributed``) every process calls this with the same arguments.
    ``members``: the members' layout, ``"auto"``, ``"vmap"`` or ``"map"`` (:func:`member_layout`).
    """
    layout = member_layout(sim, keys.shape[0], members, mesh)
    if mesh is not None:
        with jax.set_mesh(mesh):
            return _run(sim, data, keys, hparams, progress, state, history, on_chunk, mesh,
                        layout)
    return _run(sim, data, keys, hparams, progress, state, history, on_chunk, None, layout)


def _jitted(sim, layout: str, mesh, data, keys, hparams, state):
    """The jitted programs, and the arguments placed where they run (sharded on a mesh)."""
    fns = programs(sim, layout)
    if mesh is None:
        return (jax.jit(fns.init), jax.jit(fns.evaluate),
                jax.jit(fns.steps, donate_argnums=(0,)), data, keys, hparams, state,
                lambda n: jnp.int32(n))
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jaxasync.mesh import data_shardings, put_global, state_shardings

    rep = NamedSharding(mesh, P())
    state_sh = state_shardings(jax.eval_shape(fns.init, keys, hparams), mesh,
                               sim.cfg.num_workers)
    data_sh = data_shardings(data, mesh)
    data = put_global(data, data_sh)
    keys, hparams = put_global((keys, hparams), rep)
    if state is not None:
        state = put_global(state, state_sh)
    init = jax.jit(fns.init, out_shardings=state_sh)
    evaluate = jax.jit(fns.evaluate, in_shardings=(state_sh, data_sh), out_shardings=rep)
    steps = jax.jit(fns.steps, donate_argnums=(0,), in_shardings=(state_sh, data_sh, rep, rep),
                    out_shardings=state_sh)
    return (init, evaluate, steps, data, keys, hparams, state,
            lambda n: put_global(np.int32(n), rep))


def _compile(init, evaluate, steps, data, keys, hparams, state, history):
    """Compiles the three programs: the step and evaluation programs in background threads
    (XLA compiles without holding the GIL) while this one compiles and computes the initial
    state; then the first evaluation.

    Returns ``(evaluate, steps, state, history)``: the compiled programs, the initial (or
    given) state and the history with its first evaluation.
    """
    shapes = state if state is not None else jax.eval_shape(init, keys, hparams)
    with _threefry.unrolled():      # the step's small draws: one kernel each (same bits)
        lowered_steps = steps.lower(shapes, data, hparams, jax.ShapeDtypeStruct((), jnp.int32))
    with concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="jaxasync-compile") as pool:
        steps_done = pool.submit(lowered_steps.compile, step_options())
        cpu = jax.default_backend() == "cpu"
        evaluate_done = pool.submit(evaluate.lower(shapes, data).compile,
                                    EVAL_OPTIONS if cpu else None)
        if state is None:
            state = init.lower(keys, hparams).compile(INIT_OPTIONS if cpu else None)(keys,
                                                                                    hparams)
        evaluate = evaluate_done.result()
        if history is None:
            history = [[m] for m in _to_host(evaluate(state, data))]
        return evaluate, steps_done.result(), state, history


def _run(sim, data, keys, hparams, progress, state, history, on_chunk, mesh,
         layout: str) -> RunResult:
    cfg = sim.cfg
    n_chunks = math.ceil(cfg.steps / cfg.eval_every)
    length = cfg.eval_every
    members = keys.shape[0]

    t0 = time.perf_counter()
    init, evaluate, steps, data, keys, hparams, state, count = _jitted(
        sim, layout, mesh, data, keys, hparams, state)
    evaluate, steps, state, history = _compile(init, evaluate, steps, data, keys, hparams,
                                               state, history)
    compile_s = time.perf_counter() - t0

    diverged: list[int | None] = [None] * members
    for hist_s, i in zip(history, range(members), strict=True):
        bad = [h["step"] for h in hist_s if not h["finite"]]
        diverged[i] = bad[0] if bad else None
    t1 = time.perf_counter()
    done = max(h[-1]["step"] for h in history) // length
    if progress is not None:   # compiled: the progress display's "compiling" phase ends
        progress(done, n_chunks, [h[-1] for h in history])
    counts = {}
    for c in range(done, n_chunks):
        n = min(length, cfg.steps - c * length)   # the last chunk is shorter when eval_every
        if n not in counts:                        # does not divide the steps (same program)
            counts[n] = count(n)
        state = steps(state, data, hparams, counts[n])
        rows = _to_host(evaluate(state, data))
        for i, row in enumerate(rows):
            if diverged[i] is None:
                history[i].append(row)
                if not row["finite"]:
                    diverged[i] = row["step"]
        if progress is not None:
            progress(c + 1, n_chunks, [h[-1] for h in history])
        if on_chunk is not None:
            on_chunk(state, history)
        if all(dv is not None for dv in diverged):
            break
    run_s = time.perf_counter() - t1
    hist = np.asarray(jax.device_get(state.counts.staleness_hist))
    return RunResult(history, diverged, state, compile_s, run_s, hist, layout)
