r"""Training augmented by the joint score (SCANDAL, score regression) and the joint ratio (ALICES).

When the simulator is a Pyro program (:class:`~pyro_sbi.PyroSimulator`), each simulation
comes with the joint score :math:`t_i = \nabla_\theta \log p(x_i, z_i \mid \theta_i)` of
its latent path :math:`z_i` (:mod:`pyro_sbi.program`). The likelihood's own score
:math:`\nabla_\theta \log p(x \mid \theta)` is intractable, but the joint score is an
unbiased target for it. Differentiating :math:`p(x \mid \theta) = \int p(x, z \mid \theta)
\, dz` under the integral,

.. math::

    \nabla_\theta \log p(x \mid \theta)
    = \frac{\int p(x, z \mid \theta) \, \nabla_\theta \log p(x, z \mid \theta) \, dz}
           {p(x \mid \theta)}
    = \int p(z \mid x, \theta) \, t(x, z \mid \theta) \, dz
    = \mathbb{E}\big[ t(x, z \mid \theta) \mid x, \theta \big] .

Hence for any function :math:`g(x, \theta)`, with :math:`(x, z) \sim p(x, z \mid \theta)`,

.. math::

    \mathbb{E} \big\| g(x, \theta) - t \big\|^2
    = \mathbb{E} \big\| g(x, \theta) - \nabla_\theta \log p(x \mid \theta) \big\|^2
    + \mathbb{E} \big\| t - \nabla_\theta \log p(x \mid \theta) \big\|^2 ,

(the cross term vanishes by the tower rule) and the last term does not depend on
:math:`g`: regressing on :math:`t` is regressing on the true score, plus noise that no
:math:`g` can reduce. The augmented objective of NLE (SCANDAL) is

.. math::

    \mathcal{L}(\phi) = \frac{1}{n} \sum_i \Big[ -\log q_\phi(x_i \mid \theta_i)
    + \alpha \, \big\| \sigma_\theta \odot \big( \nabla_\theta \log q_\phi(x_i \mid \theta_i)
    - t_i \big) \big\|^2 \Big] .

The true likelihood minimises both terms at once (the first by Gibbs' inequality, the
second by the decomposition above), so adding the second leaves the minimiser unchanged
whenever the flow can represent the likelihood; what it adds is information on how the
density changes with :math:`\theta` at every simulated pair, which maximum likelihood
only sees through the differences between neighbouring pairs. The same holds for MNLE
(its log-density is a sum of a categorical and a flow term, both differentiable in
:math:`\theta`) and, for NRE, for the log-ratio :math:`\log r(x, \theta) = \log p(x \mid
\theta) - \log p(x)`, whose :math:`\theta`-gradient is the likelihood's score: the
classifier's loss plus :math:`\alpha \| \sigma_\theta \odot (\nabla_\theta \log r - t)
\|^2` on the joint pairs (the score regression of RASCAL).

**Units.** The networks see :math:`\theta_z = (\theta - \mu_\theta) / \sigma_\theta`; by
the chain rule :math:`\nabla_{\theta_z} \log q = \sigma_\theta \odot \nabla_\theta \log
q`, and the z-scoring of :math:`x` adds :math:`-\sum_j \log \sigma_{x,j}` (and MNLE's
log-scale a Jacobian in :math:`x`), constant in :math:`\theta`. The residual is therefore
computed as :math:`\nabla_{\theta_z} \log q_z(x_z \mid \theta_z) - \sigma_\theta \odot t`:
the score term is in the units of the z-scored parameters, and the weight
:math:`\alpha` means the same whatever the units of :math:`\theta`. The gradient of the
network's output in :math:`\theta_z` is taken with `create_graph=True`, so the loss can be
differentiated again in the weights :math:`\phi`.

**The weight, relative to the spread of the target.** The residual of each parameter
is divided by the variance of its z-scored joint score over the training pairs
(:func:`score_weights`; `fit(normalize_score=True)`, the default): the term is

.. math::

    \alpha \sum_d \frac{\big( \partial_{\theta_{z,d}} \log q_\phi(x_i \mid \theta_i)
    - \sigma_{\theta,d} t_{i,d} \big)^2}{\mathrm{Var}_j(\sigma_{\theta,d} t_{j,d})} ,

so :math:`\alpha` does not depend on how large the scores are. Without it the weight
follows the information in one simulation: the twenty counts of the chain-binomial SIR
(:mod:`pyro_sbi.tasks.sir`) give z-scored scores of variance 225 and 259, so that
:math:`\alpha = 0.1` put a weight of about 25 on the residual, the score term drowned
the likelihood term and the held-out KL from the exact likelihood rose from 3.63 nats
(plain NLE, 1,000 simulations) to 5.90; the ten-output state-space task has variances
1.0 and 11.

**Early stopping on the likelihood alone.** The validation loss that stops training
(and lowers the learning rate) is the estimator's own loss, without the score term
(`fit(validate_score=False)`, the default): the score term is a regulariser of
training, and what is kept is the best likelihood. The noise of the individual joint
scores (their variance given :math:`x` is no part of what the estimator can learn)
then does not decide when to stop.

**The default** :data:`SCORE_WEIGHT` :math:`= 1`, with both of the above, measured by
the held-out KL divergence from the exact likelihood (benchmarks page, "Training with
the joint score"): on a model with one output and a latent mean, 200 simulations, five
seeds, 0.146 nats plain, 0.051 with the former default (:math:`\alpha = 0.1` on the
raw residual, early stopping on the augmented loss) and 0.025 now (every seed better
than plain); on the state-space task, 1,000 simulations, three seeds, 0.542 plain,
0.500 former, 0.432 now (every seed better; 0.467 at :math:`\alpha = 0.1`, 0.434 at 0.3,
0.46 at 3); on the SIR written as a Pyro program (the epidemic tutorial), two seeds,
3.62 plain, 3.16 now. A better likelihood on average over the prior is not always a
more accurate posterior: on the state-space task the posterior's C2ST barely moved
(benchmarks page). Trained on the likelihood's exact score instead (which that task
has), the same 1,000 simulations gave the posterior of 10,000: what limits the joint
score there is its noise given :math:`x`, and any lower-variance target with the same
conditional mean (part of the latent path integrated out analytically) can be passed
as `score=`.

**Training on the joint ratio (ALICES, for NRE).** A :class:`~pyro_sbi.PyroSimulator`
also gives, for a run :math:`(x_i, z_i)` at :math:`\theta_i`, its joint log-ratio
:math:`\ell_i = \log p(x_i, z_i \mid \theta'_i) - \log p(x_i, z_i \mid \theta_i)` at
another point :math:`\theta'_i` (:meth:`~pyro_sbi.PyroSimulator.joint_ratio`). NRE's
log-ratio differences :math:`\Delta_i = d(x_i, \theta'_i) - d(x_i, \theta_i)` estimate
:math:`\log p(x_i \mid \theta'_i) - \log p(x_i \mid \theta_i)` (the free constant
:math:`c(x)` of NRE-B cancels in them). Two ways to regress them:

- RASCAL's squared error on the ratio, :math:`(e^{\Delta_i} - e^{\ell_i})^2`: unbiased,
  since :math:`\mathbb{E}[e^{\ell} \mid x, \theta] = p(x \mid \theta') / p(x \mid \theta)`
  (:mod:`pyro_sbi.program`), but the joint ratio has heavy tails (on the state-space
  task, at two parameters drawn from the prior, it spans many orders of magnitude), and
  one large ratio dominates a batch;
- ALICES's cross-entropy (Stoye et al., 2018) with the soft label
  :math:`s_i = \sigma(\ell_i) = r_i / (1 + r_i)` of ":math:`x` came from
  :math:`\theta'`", :math:`\sigma` the logistic function,

  .. math::

      \ell_{\mathrm{CE}}(\Delta_i, s_i) = -s_i \log \sigma(\Delta_i)
      - (1 - s_i) \log \sigma(-\Delta_i) ,

  whose labels lie in :math:`[0, 1]` and whose gradient in :math:`\Delta`,
  :math:`\sigma(\Delta) - s`, in :math:`[-1, 1]`: a bounded term, the one used here
  (:func:`ratio_loss`).

*Why the cross-entropy is minimal at the true ratio.* Its minimiser in :math:`\Delta` is
the logit of the label's conditional mean, but :math:`\mathbb{E}[\sigma(\ell) \mid x,
\theta]` is not :math:`\sigma` of the log of the ratio's mean. What makes it right is the
symmetry of the pairs: :math:`\theta'_i` must be drawn from the **same distribution as**
:math:`\theta_i`, **independently** of it (another draw from the prior or proposal, or
the parameters of another simulation). Then, since :math:`\ell_{\mathrm{CE}}(\Delta, s)
= \ell_{\mathrm{CE}}(-\Delta, 1 - s)`, the loss of a row is the same with the roles of
:math:`\theta_i` and :math:`\theta'_i` swapped, and for an unordered pair :math:`\{a,
b\}` the runs come in equal measure from :math:`a` and from :math:`b`: from the mixture
:math:`m(x, z) = \frac12 p(x, z \mid a) + \frac12 p(x, z \mid b)`. Under it the label of
"from :math:`b`" is the joint posterior of the class,
:math:`s = p(x, z \mid b) / (p(x, z \mid a) + p(x, z \mid b))`, and

.. math::

    \mathbb{E}_m[s \mid x] = \int \frac{m(x, z)}{m(x)}
    \frac{p(x, z \mid b)}{2 \, m(x, z)} \, dz
    = \frac{p(x \mid b)}{p(x \mid a) + p(x \mid b)} ,

so the expected cross-entropy is minimised at :math:`\sigma(\Delta) = p(x \mid b) / (p(x
\mid a) + p(x \mid b))`, :math:`\Delta = \log p(x \mid b) - \log p(x \mid a)`: the
classifier's own optimum. The swap needs :math:`\Delta` antisymmetric,
:math:`\Delta(x; b, a) = -\Delta(x; a, b)`, which NRE's difference of one function at two
points is (a free function of the ordered pair would be fitted to each orientation from
the runs of one point only, and be biased). What is needed is that
the joint density of :math:`(\theta, \theta')` be symmetric; drawn otherwise
(:math:`\theta'` from another proposal, or :math:`\theta + \epsilon` under a prior
that is not flat) the term is in general biased when there is a latent path.
`fit(..., theta_alt=, ratio=)` adds :math:`\alpha \, \frac{1}{n} \sum_i
\ell_{\mathrm{CE}}(\Delta_i, \sigma(\ell_i))` to NRE's loss; as with the score, early
stopping watches the classifier's own loss.

**The default** :data:`RATIO_WEIGHT` :math:`= 1`: the term is a cross-entropy in nats
per pair, like the classifier's loss. Measured by the held-out error of the learned
log-ratio differences against the exact ones, at pairs of prior draws (benchmarks page,
"Training with the joint ratio"): on the state-space task, 1,000 simulations, five
seeds, mean absolute error 2.53 nats plain, 2.47 at :math:`\alpha = 0.3`, 2.34 at 1
(every seed better), 2.29 at 3, 2.27 at 10, while the median error went 0.824, 0.814,
0.816, 0.833, 0.848: larger weights improve the far-apart pairs and worsen the typical
one. On a one-output model with a latent mean, 200 simulations, ten seeds, 1.267 plain
and 1.189 at 1 (eight seeds better, two worse by 0.005).

References:
    | Mining gold from implicit models to improve likelihood-free inference
      (Brehmer, Louppe, Pavez & Cranmer, 2020)
    | https://doi.org/10.1073/pnas.1915980117

    | Constraining Effective Field Theories with Machine Learning
      (Brehmer, Cranmer, Louppe & Pavez, 2018)
    | https://arxiv.org/abs/1805.00013

    | Likelihood-free inference with an improved cross-entropy estimator
      (Stoye, Brehmer, Louppe, Pavez & Cranmer, 2018)
    | https://arxiv.org/abs/1808.00973
"""

from __future__ import annotations

__all__ = ["RATIO_WEIGHT", "SCORE_WEIGHT", "ratio_loss", "score_loss", "score_weights"]

from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

SCORE_WEIGHT = 1.0
"""The default weight :math:`\\alpha` of the score term, relative to the variance of its target."""

RATIO_WEIGHT = 1.0
"""The default weight :math:`\\alpha` of the joint-ratio (ALICES) term of NRE."""


def score_loss(
    log_q: Callable[[Tensor], Tensor],
    theta_z: Tensor,
    score: Tensor,
    theta_scale: Tensor,
    weight: Tensor | float = 1.0,
) -> tuple[Tensor, Tensor]:
    r"""The log-density and the mean squared score residual of a batch, in z-scored units.

    Arguments:
        log_q: `log_q(theta_z (n, D)) -> (n,)`, the estimator's log-density (or
            log-ratio) of the batch's `x` at z-scored parameters.
        theta_z: `(n, D)` z-scored parameters.
        score: `(n, D)` joint scores :math:`t_i` in the units of :math:`\theta`.
        theta_scale: `(D,)` the z-score scale :math:`\sigma_\theta`.
        weight: the weight of each dimension's squared residual, a number or `(D,)`
            (:func:`score_weights`).

    Returns:
        `log_q (n,)` at `theta_z`, and the scalar mean over the batch of
        :math:`\sum_d w_d \, (\partial_{\theta_{z,d}} \log q - \sigma_{\theta,d} t_d)^2`,
        differentiable in the estimator's weights when gradients are enabled.

    Example:
        >>> log_q = lambda theta_z: -0.5 * ((1.0 - theta_z) ** 2).sum(-1)
        >>> theta_z = torch.zeros(3, 1)
        >>> _, residual = score_loss(log_q, theta_z, torch.ones(3, 1), torch.ones(1))
        >>> residual.item()
        0.0
    """
    create_graph = torch.is_grad_enabled()  # training; in validation only the value counts
    with torch.enable_grad():
        theta_z = theta_z.detach().requires_grad_(True)
        log_p = log_q(theta_z)
        (gradient,) = torch.autograd.grad(log_p.sum(), theta_z, create_graph=create_graph)
    target = score.to(gradient.dtype) * theta_scale
    weight = torch.as_tensor(weight, dtype=gradient.dtype, device=gradient.device)
    residual = (weight * (gradient - target) ** 2).sum(-1).mean()
    return (log_p, residual) if create_graph else (log_p.detach(), residual.detach())


def score_weights(score: Tensor, theta_scale: Tensor, weight: float = SCORE_WEIGHT) -> Tensor:
    r"""Per-parameter weights of the squared score residual: alpha over the spread of the target.

    The residual of parameter :math:`d` is compared with the variance of its target over
    the training pairs, :math:`w_d = \alpha / \mathrm{Var}_i(\sigma_{\theta,d} t_{i,d})`,
    so that :math:`\alpha` weighs the score term the same whatever the scale of the
    scores: a likelihood whose score in z-scored units has a spread of 30 (a parameter
    that the data pin to a thirtieth of its prior width) would otherwise put a weight of
    about 900 on its residual, and the score term would drown the likelihood term. A
    dimension whose target does not vary gets :math:`\alpha`.

    Arguments:
        score: `(n, D)` joint scores of the training pairs, in the units of `theta`.
        theta_scale: `(D,)` the z-score scale :math:`\sigma_\theta`.
        weight: :math:`\alpha`.

    Returns:
        `(D,)` weights :math:`w_d`.

    Example:
        >>> score = torch.tensor([[1.0, 10.0], [-1.0, -10.0]])
        >>> score_weights(score, torch.ones(2), 1.0)
        tensor([0.5000, 0.0050])
    """
    variance = (score * theta_scale).var(0) if len(score) > 1 else torch.zeros_like(theta_scale)
    return torch.where(variance > 0, weight / variance, torch.full_like(variance, weight))


def ratio_loss(delta: Tensor, log_ratio: Tensor) -> Tensor:
    r"""ALICES's cross-entropy between learned and joint log-ratios, the mean over a batch.

    Arguments:
        delta: `(n,)` learned log-ratios :math:`\Delta_i = \log \hat r(x_i, \theta'_i) -
            \log \hat r(x_i, \theta_i)`, at the alternative point minus at the point of
            the simulation.
        log_ratio: `(n,)` joint log-ratios :math:`\ell_i = \log p(x_i, z_i \mid \theta'_i)
            - \log p(x_i, z_i \mid \theta_i)` (:meth:`~pyro_sbi.PyroSimulator.joint_ratio`);
            `-inf` and `inf` are allowed (labels 0 and 1).

    Returns:
        The scalar mean of :math:`-\sigma(\ell_i) \log \sigma(\Delta_i) - \sigma(-\ell_i)
        \log \sigma(-\Delta_i)`, differentiable in `delta`; for a fixed label it is
        minimal at :math:`\Delta = \ell` (the derivation, and why :math:`\theta'` must be
        drawn as :math:`\theta` is, are in :mod:`pyro_sbi.augment`).

    Example:
        >>> round(ratio_loss(torch.zeros(2), torch.zeros(2)).item(), 4)  # log 2
        0.6931
    """
    label = torch.sigmoid(log_ratio.to(delta.dtype))
    return (F.softplus(delta) - label * delta).mean()  # -s log sig(D) - (1 - s) log sig(-D)
