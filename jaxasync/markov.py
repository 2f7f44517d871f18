r"""EF21 (the ``ef21`` algorithm): error feedback by a Markov compressor of gradient differences.

Each worker :math:`i` keeps :math:`g_i`, the server keeps :math:`g = \frac1n \sum_i g_i`:

.. math::

   x^{t+1} &= x^t - \gamma g^t \\
   c_i^t &= \mathcal C\bigl(\nabla f_i(x^{t+1}) - g_i^t\bigr), \qquad
   g_i^{t+1} = g_i^t + c_i^t \quad \text{(worker } i \text{ sends } c_i^t) \\
   g^{t+1} &= g^t + \tfrac1n \textstyle\sum_i c_i^t

(Richtárik, Sokolov, Fatkhullin, "EF21: a new, simpler, theoretically better, and practically
faster error feedback", NeurIPS 2021, arXiv 2106.05203, Algorithm 1). Starting from
:math:`g_i = 0` the first round sends :math:`\mathcal C(\nabla f_i(x^0))`, which is the
paper's initialisation :math:`g_i^0 = \mathcal C(\nabla f_i(x^0))` shifted by one round.

Its theoretical step (Theorem 1) is :math:`\gamma = 1/(L + \tilde L \sqrt{\beta/\theta})`
with :math:`\theta = 1 - \sqrt{1-\alpha}`, :math:`\beta = (1-\alpha)/(1 - \sqrt{1-\alpha})`,
:math:`L` the smoothness of :math:`f` and :math:`\tilde L = \sqrt{\frac1n \sum_i L_i^2}` the
quadratic mean of the workers'; :math:`\sqrt{\beta/\theta} \le 2/\alpha - 1` gives the
simpler :math:`\gamma = 1/(L + \tilde L (2/\alpha - 1))` (:func:`ef21_step_size`).

Under delays. The published variants that let only some workers update are EF21-PP (partial
participation: the participating workers update :math:`g_i` as above, the others keep theirs,
the server adds :math:`\frac1n \sum_{i \in S^t} c_i^t`; Fatkhullin, Sokolov, Gorbunov, Li,
Richtárik, "EF21 with bells & whistles: six algorithmic extensions of modern error feedback",
arXiv 2110.03294, Algorithm EF21-PP) and the EF21-W weighting (Richtárik, Gasanov, Burlachenko,
arXiv 2402.10774: EF21-W-PP). None that we found analyses stale gradients: the analyses of
compressed asynchronous SGD (e.g. Yang, Hou, Wu, arXiv 2504.19903, AsynFLC-EF) use classic
EF14 residuals. So :func:`ef21` runs EF21-PP's update with the arrivals of each server step as
its participants (all workers, at the current iterate, in a synchronous run: EF21 itself);
under a delay model an arrival's :math:`\nabla f_i` is taken at its stale iterate, which the
EF21-PP analysis does not cover.
"""

from __future__ import annotations

import math

import jax
import optax

from jaxasync import compress as compress_lib
from jaxasync import hparams as hp
from jaxasync.algorithms import register, required_workers
from jaxasync.transforms import aggregate, compress_rows


def ef21_step_size(alpha: float, smoothness: float, smoothness_qm: float | None = None, *,
                   exact: bool = False) -> float:
    r"""EF21's theoretical step (Theorem 1 of arXiv 2106.05203).

    .. math:: \gamma = \frac{1}{L + \tilde L\,(2/\alpha - 1)} \quad\text{or, with}
              \text{ ``exact``, }\quad \gamma = \frac{1}{L + \tilde L \sqrt{\beta/\theta}},
              \ \sqrt{\beta/\theta} = \frac{\sqrt{1-\alpha}}{1 - \sqrt{1-\alpha}}

    (the second is larger: :math:`\sqrt{\beta/\theta} = s(1+s)/\alpha \le (1+s^2)/\alpha =
    2/\alpha - 1` with :math:`s = \sqrt{1-\alpha}`).

    Args:
      alpha: the compressor's contraction constant :math:`\alpha \in (0, 1]`.
      smoothness: :math:`L` of :math:`f`.
      smoothness_qm: :math:`\tilde L`, the quadratic mean of the workers' :math:`L_i`
        (default :math:`L`, exact when every worker holds the same function).
    """
    if not (isinstance(alpha, int | float) and 0 < alpha <= 1):
        raise ValueError(f"ef21_step_size: alpha={alpha!r}: must be in (0, 1]; the compressor "
                         "must be a contraction (top-k, scaled sign, 1-bit, identity...)")
    lt = smoothness if smoothness_qm is None else smoothness_qm
    s = math.sqrt(1.0 - alpha)
    factor = (s / (1.0 - s) if s < 1 else math.inf) if exact else 2.0 / alpha - 1.0
    return 1.0 / (smoothness + lt * factor)


def _theory_scale(compressor, multiplier, smoothness, smoothness_qm
                  ) -> optax.GradientTransformation:
    """Scales by ``-multiplier`` x the theoretical step, from the compressor's alpha for the
    parameters' leaf sizes (static: computed when traced)."""

    def gamma(tree) -> float:
        alpha = compress_lib.contraction(compressor, tree)
        if alpha is None or alpha <= 0:
            raise ValueError("ef21 theory_step=True: the compressor states no contraction "
                             "constant alpha > 0 (unbiased and merely non-expansive compressors "
                             "state none); give learning_rate instead")
        return multiplier * ef21_step_size(alpha, smoothness, smoothness_qm)

    def init_fn(params):
        gamma(params)                      # a compressor without alpha fails at init
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        step = gamma(updates)
        return jax.tree.map(lambda u: (-step * u).astype(u.dtype), updates), state

    return optax.GradientTransformation(init_fn, update_fn)


@register("ef21", arrivals="all", own_messages=True,
          params={"compressor": hp.Param("any", optional=True, static=True,
                                         doc="the run's algorithm.compressor (default identity)"),
                  "smoothness": hp.positive("L", optional=True, static=True),
                  "smoothness_qm": hp.positive("L_qm", optional=True, static=True),
                  "theory_step": hp.flag("step = learning_rate x the theoretical step")})
def ef21(learning_rate: float = 0.1, num_workers: int | None = None, compressor=None,
         smoothness: float | None = None,
         smoothness_qm: float | None = None, theory_step: bool = False
         ) -> optax.GradientTransformationExtraArgs:
    r"""EF21 (module docstring): workers send :math:`\mathcal C(\nabla f_i - g_i)`, the server
    steps along :math:`g = \frac1n \sum_i g_i`.

    Built from the shared pieces: :func:`jaxasync.transforms.compress_rows` with EF21's memory
    (:func:`jaxasync.compress.error_feedback`, rule ``ef21``: :math:`c = \mathcal C(\nabla f_i
    - h_i)`, :math:`h_i \leftarrow h_i + c`), the sum of the messages over :math:`n`, an
    accumulator :math:`g \leftarrow g + \frac1n\sum_i c_i` (``optax.trace`` with decay 1), and
    the step. Rows that do not arrive keep their :math:`g_i` (EF21-PP). With the identity
    compressor :math:`g_i = \nabla f_i` every round, and this is gradient descent.

    Args:
      learning_rate: :math:`\gamma` (or its multiplier, with ``theory_step``).
      num_workers: :math:`n` (the simulator passes the run's M).
      compressor: the compressor :math:`\mathcal C` (the simulator passes the run's
        ``algorithm.compressor``, which must not ask for error feedback: EF21 is its own);
        default the identity.
      smoothness, smoothness_qm: :math:`L` and :math:`\tilde L` (the runner passes the
        workload's :math:`L` where known; :math:`\tilde L` defaults to it).
      theory_step: the step is ``learning_rate`` :math:`\times`
        :func:`ef21_step_size` (:math:`\alpha` from the compressor's registry entry): the EF21
        paper's experiments tune such multiples (1, 2, 4...).
    """
    n = required_workers("ef21", num_workers)
    if compressor is None:
        compressor = compress_lib.make_compressor("identity")
    if theory_step:
        if smoothness is None:
            raise ValueError("ef21 theory_step=True: needs the smoothness L (this workload has "
                             "none); give learning_rate instead")
        if callable(learning_rate):
            raise ValueError("ef21: learning_rate: with theory_step=True it is a multiplier of "
                             "the theoretical step, a number, not a schedule")
        step = _theory_scale(compressor, learning_rate, smoothness, smoothness_qm)
    else:
        step = optax.scale_by_learning_rate(learning_rate)
    return optax.chain(
        compress_rows(compressor, error_feedback="ef21", num_workers=n),
        aggregate("sum"),
        optax.scale(1.0 / n),
        optax.trace(decay=1.0),        # g <- g + (1/n) sum_i c_i
        step,
    )
