r"""Lazy aggregation and sparsification: SASG, LASG-WK2, LAG-WK/PS, top-k with error feedback.

Synchronous rounds of :math:`M` workers at the current iterate :math:`x_k`; the server keeps
each worker's last uploaded message :math:`\hat g_m` and sums the stored messages, stale
ones included, with the step size folded into the messages (as the SASG authors' code):

.. math::

   x_{k+1} = x_k - \sum_{m=1}^{M} \hat g_m .

A worker *skips* its upload (:math:`\hat g_m` is reused) when its gradient barely changed
since its last upload:

.. math::

   \text{upload}_m \iff k < D_{warm}\ \lor\ \|g_m(x_k;\xi) - g_m(\hat x_m;\xi)\|^2 > \text{thr}_k
   \ \lor\ \tau_m > D,
   \qquad \text{thr}_k = s \sum_{j=0}^{w-1} \|x_{k-j} - x_{k-j-1}\|^2 ,

where :math:`\hat x_m` is the iterate of :math:`m`'s last upload, both gradients are taken on
the *same* minibatch :math:`\xi`, and :math:`\tau_m` counts :math:`m`'s consecutive skips
(reset to 1 on an upload; the warm-up leaves it alone, as the authors' code does). The
threshold forms (``threshold=``), with :math:`\alpha` the step size and :math:`D` the
``history``:

============ ======== =============================== =============================================
form         window w scale s                         where
============ ======== =============================== =============================================
``"2alpha"`` D - 1    :math:`1/(2\alpha M^2)`          SASG MNIST notebook (the default)
``"alpha"``  D - 1    :math:`1/(\alpha M^2)`           SASG CIFAR notebooks, ``sasg-dis`` code
``"wk2"``    D - 1    :math:`4/(D\alpha^2 M^2)`        older SASG VGG notebook (LASG-WK2, xi = 4/D)
``"lag"``    D        :math:`1/(D\alpha^2 M^2)`        LAG-WK/PS paper (xi_d = 1/D)
``"never"``  -        :math:`\text{thr} = -\infty`     never skip (equivalence tests, baselines)
============ ======== =============================== =============================================

(The SASG code stores the last :math:`D` iterates and sums their :math:`D-1` differences.)
``threshold_scale`` multiplies any form (a traced number: sweepable).

On upload, SASG sends the per-layer top-k of the error-corrected step,

.. math::

   v = \alpha g_m(x_k) + e_m,\quad \hat g_m = \mathrm{TopK}(v),\quad e_m \leftarrow v - \hat g_m,

with :math:`k_l = \max(1, \lfloor h d_l\rfloor)` per layer (``density`` :math:`h`) and
:math:`64 \sum_l k_l` bits (a float32 value and an int32 index per entry); :math:`e_m` changes
only when :math:`m` uploads. LASG and LAG send :math:`\alpha g_m` dense (:math:`32d` bits).
Every worker receives the dense model, :math:`32d` bits per round. Rounds = uploads.

Siblings, all in the same harness (server sums :math:`\alpha`-scaled messages):

* :func:`sgd_sum` -- every worker uploads :math:`\alpha g_m` dense ("SGD" in the paper);
* :func:`sparse` -- every worker uploads :math:`\mathrm{TopK}(\alpha g_m + e_m)` ("Sparse");
* :func:`lasg` -- SASG's skip rule, dense :math:`\alpha g_m`, no memory;
* :func:`lag` -- deterministic LAG: full local gradients (``workload.full_batch=true``),
  worker-side (``"wk"``) or server-side (``"ps"``:
  :math:`L_m^2\|\hat x_m - x_k\|^2` on the left) test.

The counters: uploads (rounds), skips and bits are kept by :func:`jaxasync.aggregate` from
the per-row flags; forced uploads are kept in :class:`LazyState` (read them with
:func:`lazy_counters`; the simulator reports ``forced_uploads`` through
:meth:`LazyState.metrics`).

In an own training loop (``grads_w``, ``ref_w``: ``[M, ...]`` stacked per-worker gradients
at :math:`x_k` and at each worker's last-upload iterate, on the same minibatches;
``norms``: the last update norms, newest first)::

    tx = ja.keep_decisions(ja.sasg(learning_rate=0.005, num_workers=10), rows=10)
    state = tx.init(params)
    updates, state = tx.update(grads_w, state, params, ref_grads=ref_w, update_norms=norms)
    params = optax.apply_updates(params, updates)
    uploaded = ja.last_decisions(state).uploaded      # who sent (their x_hat becomes x_k)

The test reads only :math:`\|g_m - g_m^{ref}\|^2`: pass it as ``ref_grad_dist`` (float32[M])
instead of ``ref_grads`` when you have it. The simulator does (the algorithms declare the need
``ref_grad_dist``), with :func:`jaxasync.workloads.gradient_pair`, which for the MLPs
never forms the second gradient.

References:
  Deng, Li, Sun, Lu, "SASG: sparse communication with adaptive aggregated stochastic
  gradients for distributed learning", arXiv 2112.04088; code github.com/xiaogdeng/SASG.
  Chen, Sun, Yin, "LASG: lazily aggregated stochastic gradients for communication-efficient
  distributed learning", arXiv 2002.11360 (IEEE TSP 2021).
  Chen, Giannakis, Sun, Yin, "LAG: lazily aggregated gradient for communication-efficient
  distributed learning", NeurIPS 2018, arXiv 1805.09965.
  Stich, Cordonnier, Jaggi, "Sparsified SGD with memory", NeurIPS 2018, arXiv 1809.07599.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import Array

from jaxasync import compress as compress_lib
from jaxasync import rules
from jaxasync.algorithms import required_workers
from jaxasync.transforms import aggregate, as_rows, dense_bits, find_states
from jaxasync.trees import repeat_rows, row_sq_dist, select_rows, zeros_rows

PyTree = Any
Compressor = Callable[[PyTree, Array], tuple[PyTree, Array]]

#: threshold forms (see the module docstring)
THRESHOLDS = ("2alpha", "alpha", "wk2", "lag", "never")
#: what the skip test compares: gradients on the same minibatch (worker side, LAG-WK, LASG,
#: SASG) or parameters (server side, LAG-PS)
RULES = ("gradient", "parameter")

_LAZY_NEEDS = ("ref_grad_dist", "update_norms")


# ----------------------------------------------------------------------------- pure pieces


def threshold_form(form: str, learning_rate: float | Array, num_workers: int,
                   history: int) -> tuple[int, Array | float]:
    r"""The window :math:`w` and scale :math:`s` of a threshold form (module docstring table).

    Returns ``(window, scale)`` for :func:`jaxasync.rules.lazy_threshold`;
    ``"never"`` returns ``(0, -inf)``.
    """
    if form not in THRESHOLDS:
        raise ValueError(f"threshold={form!r}: unknown; choose one of {', '.join(THRESHOLDS)}")
    if history < 1:
        raise ValueError(f"history={history!r}: must be >= 1")
    a, m2, d = learning_rate, float(num_workers) ** 2, float(history)
    if form == "2alpha":
        return history - 1, 1.0 / (2.0 * a * m2)
    if form == "alpha":
        return history - 1, 1.0 / (a * m2)
    if form == "wk2":
        return history - 1, 4.0 / (d * a * a * m2)
    if form == "lag":
        return history, 1.0 / (d * a * a * m2)
    return 0, -math.inf


def lr_at(learning_rate: float | Array | Callable[[Array], Array], count: Array) -> Array:
    """The step size at iteration ``count``: ``learning_rate(count)`` for an optax schedule,
    else the number itself (the lazy family takes either, as ``optax.sgd`` does)."""
    return learning_rate(count) if callable(learning_rate) else learning_rate


# ----------------------------------------------------------------------------- the transform


class LazyState(NamedTuple):
    """State of :func:`lazy_upload` (leading ``M`` = workers, in order).

    Attributes:
      messages: pytree ``[M, ...]``, :math:`\\hat g_m`, each worker's last uploaded
        message (step size folded in), summed by the server every round; ``()`` where the
        memory holds them.
      memory: the error-feedback memories :math:`e_m` (a :class:`jaxasync.compress.Memory`,
        leading axis ``M``; None without error feedback). With a
        :class:`jaxasync.compress.MaskCompressor` (top-k) it keeps the vector :math:`v` each
        worker compressed at its last upload and its selection: the message and the memory
        are its kept and dropped entries, :math:`\\hat g_m + e_m = v`. Read both with
        :meth:`stored`.
      reference: pytree ``[M, ...]``, :math:`\\hat x_m` for the parameter rule (LAG-PS;
        ``()`` otherwise: the gradient rule gets ``ref_grad_dist`` from the simulator).
      skips: int32[M], :math:`\\tau_m`, consecutive skips (1 right after an upload).
      count: int32, the iteration :math:`k` (warm-up while :math:`k <` ``warmup``).
      forced: int32, cumulative forced uploads (the test alone would have skipped).
      tested: int32, cumulative skip tests taken (rows after the warm-up).
    """

    messages: PyTree
    memory: Any
    reference: PyTree
    skips: Array
    count: Array
    forced: Array
    tested: Array

    def stored(self) -> tuple[PyTree, PyTree]:
        """``(messages, error)``: the stored messages :math:`\\hat g_m` and the memories
        :math:`e_m` (``()`` without error feedback), however they are kept."""
        if self.memory is None:
            return self.messages, ()
        if self.memory.masked:
            return jax.vmap(compress_lib.apply_selection)(self.memory.sent,
                                                          self.memory.selection)
        return self.messages, self.memory.error

    def metrics(self) -> dict[str, Array]:
        """``forced_uploads`` and ``skip_tests`` (the simulator reports every state's metrics)."""
        return {"forced_uploads": self.forced, "skip_tests": self.tested}


def lazy_upload(
    learning_rate: float | Array | Callable[[Array], Array],
    num_workers: int,
    *,
    rule: str = "gradient",
    threshold: str = "2alpha",
    threshold_scale: float | Array = 1.0,
    history: int = 10,
    max_skips: int | None = None,
    warmup: int | None = None,
    compressor: Compressor | None = None,
    error_feedback: bool = False,
    smoothness: float | Array | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Worker-axis transform: the lazy upload decision, the messages and the stored ones.

    Rows are the :math:`M` workers in order, all at the current iterate (a synchronous
    round). Per worker :math:`m`:

    .. math::

       \text{upload}_m = k < D_{warm} \lor \Delta_m > \text{thr}_k \lor \tau_m > D_{skip},
       \qquad \hat g_m \leftarrow
       \begin{cases} C(\alpha g_m + e_m) & \text{upload} \\ \hat g_m & \text{skip}\end{cases}

    with :math:`\Delta_m = \|g_m - g_m^{ref}\|^2` (``rule="gradient"``: the ``ref_grad_dist``
    extra arg, or computed from :math:`g^{ref}` = the ``ref_grads`` extra arg) or
    :math:`L^2\|\hat x_m - x_k\|^2` (``rule="parameter"``),
    :math:`\text{thr}_k` from :func:`threshold_form` and the ``update_norms`` extra arg, and
    :math:`C` the compressor (identity: dense :math:`\alpha g_m`). Error feedback
    :math:`e_m \leftarrow v - C(v)` happens only on upload. The output rows carry every
    stored message (applied, so the server sums them all), with ``uploaded``/``skipped``
    set and ``bits_up`` = the compressor's size (dense :math:`32d`) on upload, 0 on a skip.
    Follow it with ``aggregate("sum")`` and ``optax.scale(-1.0)``.

    Args:
      learning_rate: :math:`\alpha`, folded into the messages; a number or an optax schedule
        (a function of the iteration :math:`k`): new messages and the threshold use
        :math:`\alpha_k`, stored messages and memories keep the step they were made with.
      num_workers: :math:`M` (the number of rows).
      rule: ``"gradient"`` (needs ``ref_grad_dist`` or ``ref_grads``) or ``"parameter"``
        (needs ``smoothness``).
      threshold: a form of :data:`THRESHOLDS`.
      threshold_scale: multiplies the threshold.
      history: :math:`D`, the window of iterate differences (the simulator's ring must
        hold at least ``history + 1`` versions; :mod:`jaxasync.experiment` sees to it).
      max_skips: :math:`D_{skip}`; default ``history``. A worker skips at most this many
        times in a row after an upload; the next would-be skip is a forced upload.
      warmup: :math:`D_{warm}` iterations in which every worker uploads; default ``history``.
      compressor: ``(tree, key) -> (message_tree, bits)`` for one worker, or None (dense).
      error_feedback: keep :math:`e_m` (with a compressor).
      smoothness: :math:`L` for ``rule="parameter"``.

    Extra args: ``ref_grad_dist`` (float32[M]) or ``ref_grads`` (pytree ``[M, ...]``; gradient
    rule), ``update_norms``
    (float32[D'] newest first, :math:`D' \ge` window), ``key`` (compressor randomness),
    ``mask`` (bool[M], optional).

    References: Deng, Li, Sun, Lu, SASG, arXiv 2112.04088; Chen, Sun, Yin, LASG, arXiv
    2002.11360; Chen, Giannakis, Sun, Yin, LAG, NeurIPS 2018, arXiv 1805.09965.
    """
    num_workers, window, max_skips, warmup = _checked(
        rule, num_workers, threshold, history, max_skips, warmup, smoothness, compressor,
        error_feedback)
    never = threshold == "never"
    m = num_workers
    # top-k with error feedback: the memory stores the compressed vector and its selection,
    # which give the message too (no dense message and dense memory: one array less)
    masked = error_feedback and isinstance(compressor, compress_lib.MaskCompressor)
    # memories: error feedback's, or only a stateful compressor's per-worker state
    keeps = error_feedback or (compressor is not None and compress_lib.is_stateful(compressor))

    def init_fn(params):
        z = jnp.zeros((), jnp.int32)
        return LazyState(
            messages=() if masked else zeros_rows(params, m),
            memory=compress_lib.init_memory(compressor, params, m,
                                            "ef14" if error_feedback else None)
            if keeps else None,
            reference=repeat_rows(params, m) if rule == "parameter" else (),
            skips=jnp.zeros((m,), jnp.int32), count=z, forced=z, tested=z,
        )

    def update_fn(updates, state, params=None, *, mask=None, ref_grads=None, ref_grad_dist=None,
                  update_norms=None, key=None, **extra):
        rows = as_rows(updates, mask, params, {**extra, "ref_grads": ref_grads,
                                               "ref_grad_dist": ref_grad_dist})
        w = rows.scale.shape[0]
        if w != m:
            raise ValueError(f"lazy_upload: got {w} rows for num_workers={m}; the lazy "
                             "algorithms take all M workers in order every round")
        live = rows.applied
        warm = state.count < warmup
        lr = lr_at(learning_rate, state.count)
        if never:
            diff_sq = jnp.zeros((m,), jnp.float32)
            thr = jnp.asarray(-jnp.inf, jnp.float32)
        else:
            _, scale = threshold_form(threshold, lr, m, history)
            thr = _threshold(update_norms, window, history, scale) * threshold_scale
            diff_sq = _change(rule, rows.grads, ref_grads, ref_grad_dist, state.reference,
                              params, smoothness, m)
        upload, skipped, forced, skips = _decide(live, warm, diff_sq, thr, state.skips,
                                                 max_skips)

        scaled = jax.tree.map(lambda g: (lr * g).astype(g.dtype), rows.grads)
        keys = jax.random.split(jax.random.PRNGKey(0) if key is None else key, m)
        messages, memory, bits = _messages(compressor, keeps, masked, scaled,
                                           state, keys, upload)
        reference = state.reference
        if rule == "parameter":
            reference = select_rows(upload, repeat_rows(params, m), state.reference)
        count_i = lambda b: jnp.sum(b.astype(jnp.int32))
        new_state = LazyState(
            messages=() if masked else messages, memory=memory, reference=reference,
            skips=skips, count=state.count + 1, forced=state.forced + count_i(forced),
            tested=state.tested + jnp.where(warm, 0, count_i(live)),
        )
        out = rows._replace(
            grads=messages, uploaded=upload, skipped=rows.skipped | skipped,
            bits_up=jnp.where(upload, bits, 0.0).astype(jnp.float32),
        )
        return out, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _checked(rule: str, num_workers: int, threshold: str, history: int,
             max_skips: int | None, warmup: int | None, smoothness, compressor,
             error_feedback: bool) -> tuple[int, int, int, int]:
    """:func:`lazy_upload`'s arguments checked: ``(M, window, max_skips, warmup)`` with the
    defaults filled in (``history`` for both)."""
    if rule not in RULES:
        raise ValueError(f"lazy_upload rule={rule!r}: unknown; choose one of {', '.join(RULES)}")
    num_workers = required_workers("lazy_upload", num_workers)
    window, _ = threshold_form(threshold, 1.0, num_workers, history)   # validates the form
    never = threshold == "never"
    max_skips = history if max_skips is None else max_skips
    warmup = history if warmup is None else warmup
    if max_skips < 0 or warmup < 0:
        raise ValueError(f"max_skips={max_skips!r}, warmup={warmup!r}: must be >= 0")
    if rule == "parameter" and smoothness is None and not never:
        raise ValueError("lazy_upload(rule='parameter') needs smoothness (L_m of LAG-PS)")
    if error_feedback and compressor is None:
        raise ValueError("lazy_upload(error_feedback=True) needs a compressor")
    return num_workers, window, max_skips, warmup


def _decide(live: Array, warm: Array, diff_sq: Array, thr: Array, skips: Array,
            max_skips: int) -> tuple[Array, Array, Array, Array]:
    """Each worker's decision: ``(upload, skipped, forced, skips)`` (forced: an upload only
    because the worker skipped ``max_skips`` times in a row; skips: the new counters)."""
    passes = rules.lazy_upload(diff_sq, thr, skips, max_skips)
    upload = live & (warm | passes)
    skipped = live & ~upload
    forced = live & ~warm & ~(diff_sq > thr) & (skips > max_skips)
    skips = jnp.where(warm | ~live, skips, jnp.where(upload, 1, skips + 1))
    return upload, skipped, forced, skips


def _threshold(update_norms: Array | None, window: int, history: int, scale: Array) -> Array:
    """The lazy threshold from the ``update_norms`` extra arg (newest first)."""
    if update_norms is None:
        raise ValueError("lazy_upload needs the update_norms extra arg")
    if update_norms.shape[0] < window:
        raise ValueError(f"lazy_upload: update_norms holds {update_norms.shape[0]} "
                         f"differences, the threshold sums {window} (history={history})")
    return rules.lazy_threshold(update_norms, window, scale)


def _change(rule: str, grads: PyTree, ref_grads: PyTree | None, ref_grad_dist: Array | None,
            reference: PyTree, params: PyTree, smoothness, m: int) -> Array:
    """float32[M]: the change each worker's upload rule compares with the threshold:
    ``||g_m - g_m^ref||^2`` (gradient rule) or ``L^2 ||x_hat_m - x_k||^2`` (parameter rule)."""
    if rule == "parameter":
        return (jnp.asarray(smoothness, jnp.float32) ** 2
                * row_sq_dist(reference, repeat_rows(params, m)))
    if ref_grad_dist is not None:
        return jnp.asarray(ref_grad_dist, jnp.float32)
    if ref_grads is not None:
        return row_sq_dist(grads, ref_grads)
    raise ValueError("lazy_upload(rule='gradient') needs the ref_grad_dist (or ref_grads) "
                     "extra arg")


def _messages(compressor, keeps: bool, masked: bool, scaled: PyTree,
              state: LazyState, keys: Array, upload: Array):
    """Every worker's stored message after this round (the fresh one where it uploads), the
    memory (``keeps``: error feedback's, or a stateful compressor's per-worker state) and the
    bits of a fresh message per row.

    Every row is compressed, skipped ones too, and their results discarded: the runner vmaps
    members, which turns any per-row branch into the same select."""
    memory = state.memory
    if compressor is None:
        fresh = scaled
        bits = jnp.full((upload.shape[0],), float(dense_bits(scaled, leading_axes=1)),
                        jnp.float32)
    elif keeps:
        fresh, memory, bits = compress_lib.error_feedback(compressor, scaled, memory, keys,
                                                          upload)
    else:
        fresh, bits = jax.vmap(compressor)(scaled, keys)
        bits = jnp.asarray(bits, jnp.float32)
    # (the mask layout gives every row its stored message: the fresh one where it sent)
    messages = fresh if masked else select_rows(upload, fresh, state.messages)
    return messages, memory, bits


# ----------------------------------------------------------------------------- small pieces


def scale_rows(factor: float | Array | Callable[[Array], Array]
               ) -> optax.GradientTransformationExtraArgs:
    r"""Multiplies every row's gradient by ``factor`` before compression: :math:`g_i \to a g_i`.

    Unlike ``WorkerRows.scale`` (a weight applied at aggregation), this changes the
    message itself, so error feedback sees :math:`v = a g_i + e_i` as in the SASG code.
    ``factor`` may be an optax schedule: :math:`a_k` at this transform's ``k``-th update.
    """

    def init_fn(params):
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None, *, mask=None, **extra):
        rows = as_rows(updates, mask, params, extra)
        a = lr_at(factor, state.count)
        grads = jax.tree.map(lambda g: (a * g).astype(g.dtype), rows.grads)
        return rows._replace(grads=grads), optax.ScaleByScheduleState(
            count=optax.safe_int32_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _server_sum(fuse_rows: bool = False) -> optax.GradientTransformation:
    """The SASG server: :math:`x \\leftarrow x - \\sum_m \\hat g_m` (messages carry the step).

    ``fuse_rows`` where the messages are mask-form top-k messages (exact copies of stored
    entries): the sum then reads the stored vectors once (:func:`jaxasync.transforms.row_sum`).
    """
    return optax.chain(aggregate("sum", fuse_rows=fuse_rows), optax.scale(-1.0))


def lazy_state(opt_state: PyTree) -> LazyState:
    """The :class:`LazyState` inside an algorithm's state (stored messages, memories...).

    Raises:
      ValueError: the chain has no :func:`lazy_upload`.
    """
    states = find_states(opt_state, LazyState)
    if len(states) != 1:
        raise ValueError(f"expected exactly one lazy_upload() in the chain, found {len(states)}")
    return states[0]


def lazy_counters(opt_state: PyTree) -> dict[str, Array]:
    """The lazy counters of a state from :func:`lazy_upload`: forced uploads, skip tests.

    Keys: ``forced_uploads`` (uploads made only because the worker had skipped
    ``max_skips`` times in a row), ``skip_tests`` (rows that took the test, i.e. after the
    warm-up). Uploads, skips and bits are in :func:`jaxasync.communication`. Works on a
    single or a stacked (leading seed axis) state.

    Raises:
      ValueError: the chain has no :func:`lazy_upload`.
    """
    return lazy_state(opt_state).metrics()


#: ``topk_method`` values: the fast exact selection and DGC's sampled threshold of
#: :func:`jaxasync.compress.top_k`, and ``"lax"``: ``jax.lax.top_k`` itself (the reference
#: a straightforward port uses; the same set as ``"exact"``)
TOPK_METHODS = ("exact", "approx", "lax")


def top_k_compressor(density: float, *, per_layer: bool = True, method: str = "exact"
                     ) -> Compressor:
    r"""The top-k compressor of SASG and Sparse (:func:`jaxasync.compress.top_k`).

    Exact per-layer top-k keeps :math:`k_l = \max(1, \lfloor h d_l \rfloor)` entries of
    largest magnitude per leaf (globally: :math:`k = \max(1, \lfloor h d \rfloor)`) and
    costs :math:`64 k_l` bits (value + index). ``method`` is one of :data:`TOPK_METHODS`;
    ``"lax"`` selects with ``jax.lax.top_k`` (same set, ties to the lower index).
    """
    if method not in TOPK_METHODS:
        raise ValueError(f"topk_method={method!r}: unknown; choose one of "
                         f"{', '.join(TOPK_METHODS)}")
    return compress_lib.top_k(density, per_layer=per_layer, method=method)
