r"""Exact top-k selection on CPU: a sample-bracket radix select (private to
:mod:`jaxasync.compress`).

:func:`top_k_threshold` finds the :class:`jaxasync.compress.MaskCompressor` selection
``(v, cut)`` of the ``k`` entries of largest :math:`|x|` of a 1-D array: exactly the set
``jax.lax.top_k(jnp.abs(x), k)`` keeps, ties included. :func:`jaxasync.compress.top_k` and
:func:`jaxasync.compress.top_k_select` apply it. The comment below says why it is written this
way and how it works; it is long because one algorithm (five passes and two fallbacks) needs it.
"""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache

import jax.numpy as jnp
import numpy as np
from jax import Array, lax

_I32_MAX = int(np.iinfo(np.int32).max)


def _sel_bits(x: Array, dtype) -> Array:
    """The order key of |x| in the integer type of a selection (int32: float32 bits)."""
    if jnp.dtype(dtype) == jnp.int64:
        return lax.bitcast_convert_type(jnp.abs(x.astype(jnp.float64)), jnp.int64)
    return _abs_bits(x)


# ----------------------------------------------------------------------------- exact selection
#
# Why not jax.lax.top_k: on CPU it is a heap-based partial sort with an indirect comparator,
# about 2-10 ns per entry, single-threaded (about 4 ms for one 401,408-entry layer at k = 4,014).
# XLA's CPU backend is fast at exactly two things here: elementwise loops and reductions
# over a short (<= 32) non-minor axis. Gathers, scatters, sorts and cumsums cost 10-100x more
# per element, and a reduction over a long axis is rewritten into a slow reduce-window. So
# the selection below touches the full vector in three elementwise/short-reduction passes
# (key pass, radix counts, output) and does everything else on a few hundred candidates:
#
# 1. Sample bracket. A fixed, evenly spread sample of S ~ 2048 entries gives two order stats
#    t_lo <= v <= t_hi of the k-th largest |x| (v), each missing with probability <= 1e-6
#    (binomial tails, computed at trace time; this treats the data as in random order with
#    respect to the sample, which is why a miss is handled rather than assumed away).
# 2. Key pass. Every entry gets a 7-bit key: 0 below t_lo, 127 above the bracket, and
#    1..126 for 126 equal-width buckets of the float32 bit pattern of |x| over the bracket
#    (|x| as int32 is order-preserving for non-negative floats). Four keys pack into an int32.
# 3. Radix select. Seven SWAR counts ("how many bytes >= t", 4 per word, guard bits) find
#    the bucket B holding the k-th largest key and the rank r of v inside it.
# 4. Enumerate the ~100 entries of bucket B through a three-level count tree (32 x 32 x n)
#    into M slots, gather their bit patterns and bisect for v exactly; ties at v are cut at
#    the lower flat positions, as jax.lax.top_k does.
# 5. Output pass: keep |x| > v and the first ties, elementwise.
#
# Where the bucket overflows (clustered outliers stretch the bracket) or the bracket missed
# v, steps 2-4 run once more on the refined bracket; what still fails (heavy exact ties) falls
# back to jax.lax.top_k. Both are while loops whose predicate is "some row needs it", so
# under vmap they cost nothing unless needed.

_KEY_BUCKETS = 126                  # keys 1..126 inside the bracket; 0 below; 127 above
_SWAR_HI = np.int32(-0x7F7F7F80)    # 0x80808080: the guard bit of every byte
_SWAR_LO = np.int32(0x01010101)
_SAMPLE = 2048
_TAIL = 1e-6                        # per-side probability that the sample bracket misses v
_FAST_MIN_SIZE = 1 << 15            # below this, jax.lax.top_k is already cheap
_MAX_SLOTS = 4096
_GROUP = 32                         # fan-out of the enumeration count tree


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Static (trace-time) parameters of the fast exact selection of k out of d."""

    sample: tuple[int, ...] = dataclasses.field(repr=False)   # S sorted sample positions
    j_lo: int       # t_lo = j_lo-th largest sample (1-based)
    j_hi: int       # t_hi = j_hi-th largest sample; 0: no upper bound
    slots: int      # M candidate slots for the selected bucket
    words: int      # R: int32 words of 4 keys each, a multiple of GROUP**2


def _binomial_pmf(n: int, p: float) -> np.ndarray:
    i = np.arange(n + 1, dtype=np.float64)
    log_pmf = (math.lgamma(n + 1) - np.vectorize(math.lgamma)(i + 1)
               - np.vectorize(math.lgamma)(n - i + 1) + i * math.log(p) + (n - i) * math.log1p(-p))
    return np.exp(log_pmf)


@lru_cache(maxsize=256)
def _plan(d: int, k: int) -> _Plan | None:
    """Chooses the sample and the slot count, or None where jax.lax.top_k is the better tool."""
    if d < _FAST_MIN_SIZE or k >= d:
        return None
    # Golden-ratio (Weyl) positions: evenly spread like a strided sample, but without a fixed
    # period that data with a periodic structure (rows of a weight matrix) could alias with.
    golden = (math.sqrt(5) - 1) / 2
    fractions = (np.arange(_SAMPLE) + 0.5) * golden % 1.0
    positions = np.unique(np.floor(fractions * d).astype(np.int64))
    sample = positions.size
    pmf = _binomial_pmf(sample, k / d)
    # #sample entries > v ~ Bin(S, <= k/d): t_lo misses (t_lo > v) iff it is >= j_lo.
    upper_tail = np.cumsum(pmf[::-1])[::-1]           # P(X >= j)
    j_lo = int(np.argmax(upper_tail <= _TAIL)) if (upper_tail <= _TAIL).any() else sample + 1
    # #sample entries >= v ~ Bin(S, >= k/d): t_hi misses (t_hi < v) iff it is < j_hi.
    lower_tail = np.concatenate([[0.0], np.cumsum(pmf)])  # P(X <= j - 1)
    j_hi = int(np.nonzero(lower_tail <= _TAIL)[0].max())
    if j_lo > sample:
        return None
    if j_hi >= 1:
        # The bracket holds ~(j_lo - j_hi) d / S entries over 126 buckets; 4x the mean covers
        # the density varying across the bracket, +64 the small-count noise. Error feedback
        # piles entries up just below the cut, and a bucket that overflows sends the whole
        # vmapped batch through a second round: on SASG's MNIST layer (401,408 entries,
        # k = 4,014) 10% of the rows overflowed 4x (384 slots; up to 696 entries in the bucket
        # of v), so in most iterations some worker did. Up to 10x where that still fits.
        mean = (j_lo - j_hi) * d / sample / _KEY_BUCKETS
        bound = 4 * mean + 64
        roomy = min(10 * mean + 64, _MAX_SLOTS)
    else:
        # No upper order statistic (k below ~d/S): the buckets span up to +inf, so all of the
        # ~j_lo d / S entries above t_lo can share one bucket; bound that count instead.
        bound = roomy = (j_lo + 5 * math.sqrt(j_lo) + 5) * d / sample
    if bound > _MAX_SLOTS:
        return None
    slots = int(math.ceil(max(bound, roomy) / 64) * 64)
    words = -(-d // 4)
    words = -(-words // _GROUP**2) * _GROUP**2
    return _Plan(tuple(int(i) for i in positions), j_lo, j_hi, slots, words)


def _abs_bits(x: Array) -> Array:
    """Order key of |x|: the float32 bit pattern of |x| as int32 (monotone for |x| >= 0).

    NaN (any payload, sign cleared) sorts above +inf, as in ``jax.lax.top_k``.
    """
    return lax.bitcast_convert_type(jnp.abs(x.astype(jnp.float32)), jnp.int32)


def _kth_largest(values: Array, ranks, low_bits: int = 0, dynamic: bool = False) -> Array:
    """j-th largest of int32 ``values`` (non-negative; -1 = absent) for each j in ``ranks``,
    with its ``low_bits`` lowest bits cleared (so never above the exact value).

    Bit-by-bit bisection from bit 30 down to bit ``low_bits``. (A small ``jax.lax.top_k``
    whose indices are unused is rewritten by XLA into a full comparator sort, 10x slower.)
    ``ranks`` is a tuple of ints, or with ``dynamic=True`` a tuple of traced int32 scalars.
    """
    n = values.shape[0]
    cols = -(-n // 32)
    # [32, cols] layout: the count is a sum over a leading axis of 32, XLA's fast reduction.
    grid = jnp.pad(values, (0, 32 * cols - n), constant_values=-1).reshape(1, 32, cols)
    js = jnp.stack([jnp.asarray(j, jnp.int32) for j in ranks]) if dynamic else jnp.asarray(
        ranks, jnp.int32)

    def step(i, v):
        t = v | (jnp.int32(1 << 30) >> i)
        per_col = jnp.sum((grid >= t[:, None, None]).astype(jnp.int32), axis=1)
        return jnp.where(jnp.sum(per_col, axis=1) >= js, t, v)

    return lax.fori_loop(0, 31 - low_bits, step, jnp.zeros((len(ranks),), jnp.int32))


def _swar_count_ge(words: Array, t: Array) -> Array:
    """How many of the 7-bit byte fields of ``words`` (int32, 4 per word) are >= t (1..127)."""
    # Per byte: byte + (128 - t) reaches the guard bit 0x80 iff byte >= t, and stays below
    # 0x100 (byte, t <= 127), so nothing carries into the next byte.
    guard = (words + (128 - t) * _SWAR_LO) & _SWAR_HI
    ones = lax.shift_right_logical(guard, 7)
    per_byte = jnp.sum(ones.reshape(32, -1), axis=0)          # <= 32 per byte, no carry
    # Summing the four bytes is elementwise work between the two reductions; without it
    # XLA merges them into one long (and slow) tree reduction.
    return jnp.sum(lax.shift_right_logical(per_byte * _SWAR_LO, 24))


def _locate(counts: Array, rank: Array) -> tuple[Array, Array]:
    """Row-wise: which entry of ``counts`` [M, G] holds item ``rank`` [M] (0-based), and the
    item's rank inside that entry."""
    group = counts.shape[1]
    tri = np.triu(np.ones((group, group), np.float32))
    # A tiny matmul is XLA's cheapest prefix sum (counts <= 4 * 32**2, exact in float32).
    inclusive = jnp.dot(counts.astype(jnp.float32), tri).astype(jnp.int32)
    index = jnp.minimum(jnp.sum(inclusive <= rank[:, None], axis=1, dtype=jnp.int32), group - 1)
    col = lax.broadcasted_iota(jnp.int32, counts.shape, 1)
    before = jnp.sum(jnp.where(col < index[:, None], counts, 0), axis=1)
    return index, rank - before


def _bucket_candidates(words: Array, bucket: Array, bits: Array, plan: _Plan):
    """Positions and bit patterns of the entries whose key equals ``bucket`` (up to M)."""
    r, m, g = plan.words, plan.slots, _GROUP
    n1, n2 = r // g, r // (g * g)

    def equal(w):
        # Exact zero-byte test of w ^ bucket (bytes <= 0x7F): guard bit set iff byte == bucket.
        diff = w ^ (bucket * _SWAR_LO)
        return ~(((diff & 0x7F7F7F7F) + 0x7F7F7F7F) | diff) & _SWAR_HI

    # Count tree: group j of level 2 holds words j + i*n1, group j of level 3 holds level-2
    # groups j + i*n2 (i < 32); summing over a leading axis of 32 is the fast reduction. The
    # per-word counts are recomputed from the few gathered words below rather than stored.
    level2 = jnp.sum(lax.population_count(equal(words)).reshape(g, n1), axis=0)   # [n1]
    level3 = jnp.sum(level2.reshape(g, n2), axis=0)            # [n2]
    slot = jnp.arange(m, dtype=jnp.int32)
    inclusive3 = jnp.cumsum(level3)
    # The total from the prefix sum, not jnp.sum(level3): XLA would fuse that sum of sums
    # back into one slow long reduction over all the words.
    total = inclusive3[-1]
    top = jnp.minimum(jnp.searchsorted(inclusive3, slot, side="right").astype(jnp.int32), n2 - 1)
    rank = slot - (inclusive3[top] - level3[top])
    i2, rank = _locate(level2.reshape(g, n2)[:, top].T, rank)
    mid = top + i2 * n2
    i1, rank = _locate(lax.population_count(equal(words.reshape(g, n1)[:, mid].T)), rank)
    word = mid + i1 * n1
    # Which byte of the word: the one whose guard bit is set with exactly `rank` set below it.
    mask = equal(words[word])
    byte = lax.broadcasted_iota(jnp.int32, (1, 4), 1)
    below = lax.population_count(mask[:, None] & ((jnp.int32(1) << (8 * byte)) - 1))
    is_set = ((mask[:, None] >> (8 * byte + 7)) & 1) == 1
    row = jnp.sum(jnp.where(is_set & (below == rank[:, None]), byte, 0), axis=1)
    pos = row * r + word
    valid = slot < total
    pos = jnp.where(valid, pos, _I32_MAX)
    cand = jnp.where(valid, bits[jnp.minimum(pos, bits.shape[0] - 1)], -1)
    return cand, pos, total


def _select_in_bracket(bits: Array, padded: Array, k: int, plan: _Plan, t_lo: Array,
                       t_hi: Array):
    """Steps 2-4 for the bracket [t_lo, t_hi]: (v, cut, ok, bucket, overflow, scale)."""
    # 126 equal buckets over [t_lo, t_hi]: key = 1 + floor((bits - t_lo) * 126 / (span + 1)).
    # The float product is monotone in bits (rounding included), which is all the selection
    # needs: each bucket is a contiguous range of bit patterns.
    scale = _KEY_BUCKETS / ((t_hi - t_lo).astype(jnp.float32) + 1.0)

    # ---- key pass: 4 keys per int32, entry (row, w) of the [4, R] layout at row*R + w.
    rel = padded - t_lo
    # Clamped before the int conversion, which must not overflow: keys stay monotone in bits.
    bucket_of = jnp.floor(jnp.minimum(rel.astype(jnp.float32) * scale, float(_KEY_BUCKETS)))
    bucket_of = bucket_of.astype(jnp.int32)
    # Exact zeros always go below the bracket: a mostly-zero row (a worker that skipped, dead
    # units) must not pile its zeros into one bucket.
    key = jnp.where((rel < 0) | (padded == 0), 0, jnp.minimum(bucket_of + 1, _KEY_BUCKETS + 1))
    row = lax.broadcasted_iota(jnp.int32, (4, 1), 0)
    words = jnp.sum(key << (8 * row), axis=0)

    # ---- radix select over the keys: largest bucket b with count(key >= b) >= k.
    def radix_step(i, state):
        bucket, n_ge = state
        t = bucket | (jnp.int32(64) >> i)
        n = _swar_count_ge(words, t)
        take = n >= k
        return jnp.where(take, t, bucket), jnp.where(take, n, n_ge)

    bucket, n_ge = lax.fori_loop(0, 7, radix_step, (jnp.int32(0), jnp.int32(4 * plan.words)))
    in_bracket = (bucket >= 1) & (bucket <= _KEY_BUCKETS)
    found = jnp.clip(bucket, 1, _KEY_BUCKETS)

    # ---- the bucket's entries; v = their r-th largest.
    cand, pos, n_eq = _bucket_candidates(words, found, bits, plan)
    overflow = n_eq > plan.slots
    r = k - (n_ge - n_eq)
    # v bit by bit (31 tiny counting steps over the M slots).
    v = _kth_largest(cand, (r,), dynamic=True)[0]

    # ---- ties at v: keep the first `need` in flat order (up to the cut position), as
    # lax.top_k does. The loop runs only if some row has more ties than it may keep.
    need = r - jnp.sum(cand > v)
    tied = cand == v
    n_tied = jnp.sum(tied)
    pos_bits = max(1, (4 * plan.words).bit_length())

    def cut_step(state):
        i, c = state
        t = c | (jnp.int32(1) << i)
        return i - 1, jnp.where(jnp.sum(tied & (pos < t)) < need, t, c)

    _, cut = lax.while_loop(lambda state: (state[0] >= 0) & (need < n_tied), cut_step,
                            (jnp.int32(pos_bits - 1), jnp.int32(0)))
    cut = jnp.where(need < n_tied, cut, _I32_MAX)
    return v, cut, in_bracket & ~overflow, bucket, overflow, scale


def _sample_bracket(bits: Array, plan: _Plan) -> tuple[Array, Array]:
    """Step 1: (t_lo, t_hi), bit patterns bracketing the k-th largest with high probability."""
    sample = bits[np.asarray(plan.sample, np.int32)]
    ranks = (plan.j_lo, plan.j_hi) if plan.j_hi >= 1 else (plan.j_lo,)
    # The bracket only needs to be safe, not sharp: 16 fewer bisection steps, then t_lo rounded
    # down and t_hi rounded up to the 2**16 grid (1/128 of a binade).
    order = _kth_largest(sample, ranks, low_bits=16)
    # (saturating: a NaN sample must not wrap t_hi negative)
    t_hi = jnp.minimum(order[1], _I32_MAX - 0xFFFF) + 0xFFFF if plan.j_hi >= 1 else jnp.int32(
        _I32_MAX)
    return order[0], t_hi


def _fast_threshold(x: Array, k: int, plan: _Plan) -> tuple[Array, Array, Array]:
    """(v, cut, ok): keep |x|-bits > v, and == v at flat positions <= cut; ok=False: unusable."""
    d = x.shape[0]
    bits = _abs_bits(x)
    padded = jnp.pad(bits, (0, 4 * plan.words - d), constant_values=-1).reshape(4, plan.words)
    t_lo, t_hi = _sample_bracket(bits, plan)

    def attempt(lo, hi, bits, padded):
        v, cut, ok, bucket, overflow, scale = _select_in_bracket(bits, padded, k, plan, lo, hi)
        # Fewer than k nonzero entries (t_lo = 0, no bucket reaches k): the k-th largest |x|
        # is 0, every nonzero entry is kept and the zeros "kept" with them change nothing.
        few_nonzeros = (bucket == 0) & (lo == 0)
        v = jnp.where(few_nonzeros, 0, v)
        cut = jnp.where(few_nonzeros, _I32_MAX, cut)
        ok = ok | few_nonzeros
        # Next bracket: the overflowing bucket widened by one bucket each side (float
        # rounding of the bounds is far below a bucket width), else the side v lies on.
        width = 1.0 / scale
        b = jnp.clip(bucket, 1, _KEY_BUCKETS).astype(jnp.float32)
        span = (hi - lo).astype(jnp.float32)
        lo_off = jnp.floor(jnp.maximum(b - 2.0, 0.0) * width)
        hi_off = jnp.minimum(jnp.ceil((b + 1.0) * width), span)
        next_lo = jnp.where(bucket == 0, 0, jnp.where(bucket > _KEY_BUCKETS, hi,
                                                      lo + lo_off.astype(jnp.int32)))
        next_hi = jnp.where(bucket == 0, lo, jnp.where(bucket > _KEY_BUCKETS, _I32_MAX,
                                                       lo + hi_off.astype(jnp.int32)))
        return v, cut, ok, next_lo, next_hi

    v, cut, ok, next_lo, next_hi = attempt(t_lo, t_hi, bits, padded)

    # A second round on the refined bracket where the first one's bucket overflowed (a
    # cluster of far outliers stretches the bracket, so the bulk lands in a few buckets) or
    # the sample bracket missed v. Written as a while loop so that under vmap it runs only if
    # some row needs it (lax.cond would run it always). The body recomputes the bit patterns
    # behind a select on the loop's changing "done" flag: work that depends only on loop
    # invariants (x, the bracket) is hoisted out of the loop by XLA and would always run.
    def second(state):
        done, lo, hi, _, _, _ = state
        bits2 = _abs_bits(jnp.where(done, jnp.zeros_like(x), x))
        padded2 = jnp.pad(bits2, (0, 4 * plan.words - d), constant_values=-1).reshape(
            4, plan.words)
        v2, cut2, ok2, _, _ = attempt(lo, hi, bits2, padded2)
        # "done" is not the constant True, lest XLA bound the loop to one trip and inline it;
        # v2 >= 0 always holds.
        return v2 >= 0, lo, hi, v2, cut2, ok2

    _, _, _, v, cut, ok = lax.while_loop(lambda state: ~state[0], second,
                                         (ok, next_lo, next_hi, v, cut, ok))
    return v, cut, ok


def _lax_threshold(x: Array, k: int) -> tuple[Array, Array]:
    """(v, cut) of jax.lax.top_k's choice: its k-th magnitude and its last kept tie position."""
    bits = _sel_bits(x, jnp.int64 if x.dtype == jnp.float64 else jnp.int32)
    # Only the indices of lax.top_k are used: when its values are used too, XLA's CPU backend
    # lowers it to a full comparator sort (0.8 s for 10 x 401,408) instead of the TopK call.
    magnitude = jnp.abs(x) if x.dtype == jnp.float64 else jnp.abs(x.astype(jnp.float32))
    _, idx = lax.top_k(magnitude, k)
    kept = bits[idx]
    v = jnp.min(kept)
    # lax.top_k breaks ties by the lower index, so the kept ties end at their largest index.
    cut = jnp.max(jnp.where(kept == v, idx, -1)).astype(bits.dtype)
    return v, cut


def top_k_threshold(x: Array, k: int, *, use_lax: bool = False) -> tuple[Array, Array]:
    r"""The exact top-k of a 1-D array as a :class:`~jaxasync.compress.MaskCompressor`
    selection ``(v, cut)``.

    Keeping :math:`b_i > v` and the ties :math:`b_i = v` at positions :math:`i \le` ``cut``
    (:math:`b` the order bits of :math:`|x|`) keeps exactly ``min(k, d)`` entries, the set of
    ``jax.lax.top_k(jnp.abs(x), k)``; :func:`jaxasync.compress.top_k_select` applies it.
    ``k >= d`` keeps all. Pure, jittable, vmappable; ``k`` static. Integer type: int32 (int64
    for float64 input). ``use_lax=True`` finds the same selection with ``jax.lax.top_k`` (slow
    on CPU: the reference a straightforward port runs).
    """
    if x.ndim != 1:
        raise ValueError(f"top_k_threshold expects a 1-D array, got shape {x.shape}")
    d = x.shape[0]
    int_type = jnp.int64 if x.dtype == jnp.float64 else jnp.int32
    if k >= d:
        return jnp.asarray(-1, int_type), jnp.asarray(-1, int_type)
    plan = None if x.dtype == jnp.float64 or use_lax else _plan(d, k)
    if plan is None:
        return _lax_threshold(x, k)
    v, cut, ok = _fast_threshold(x, k, plan)

    # A while loop as a vmappable "if": zero iterations unless some worker's bracket missed,
    # then one iteration of the slow exact path (lax.cond would run both under vmap). The
    # body reads x through the loop state (a body of x alone would be hoisted out of the loop
    # by XLA's invariant code motion and run every time), and the state is three scalars, not
    # the output, which the loop would copy.
    def fallback(state):
        _, _, done = state
        v_slow, cut_slow = _lax_threshold(jnp.where(done, jnp.zeros_like(x), x), k)
        return v_slow, cut_slow, v_slow >= 0     # always true, but not a constant (see above)

    v, cut, _ = lax.while_loop(lambda state: ~state[2], fallback, (v, cut, ok))
    return v, cut

