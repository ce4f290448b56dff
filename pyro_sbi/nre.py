r"""Neural ratio estimation (NRE): a classifier whose logit is a likelihood-to-evidence ratio.

A classifier :math:`d_\phi(x, \theta)` is trained to tell pairs drawn jointly,
:math:`(\theta, x) \sim \tilde p(\theta) p(x \mid \theta)`, from pairs drawn from the
product of the marginals, :math:`\tilde p(\theta) \tilde p(x)`, where :math:`\tilde p`
is the prior or any proposal. Its logit then estimates the log-ratio

.. math::

    \log r(x, \theta) = \log \frac{p(x \mid \theta)}{\tilde p(x)}
    = \log p(x \mid \theta) - \log \tilde p(x) ,

which equals the log-likelihood up to a term that depends on :math:`x` only. For a
fixed observation it is the log-likelihood up to a constant in :math:`\theta`: enough for
MCMC and for gradients of SVI, but not a density in :math:`x` (no evidence, ELBO values,
LOO or model comparison, and no latent simulator sites). In a batch of :math:`n` joint
pairs, marginal pairs are formed without new simulations by pairing :math:`x_i` with the
parameters :math:`\theta_{i+k}` of other rows (the batches are shuffled every epoch).

**NRE-A** (Hermans et al., 2020). Binary cross-entropy between joint pairs (label 1)
and marginal pairs (label 0), with :math:`\sigma` the logistic function:

.. math::

    \mathcal{L}_A = -\mathbb{E}_{p(\theta, x)} \log \sigma(d(x, \theta))
    - \mathbb{E}_{p(\theta) p(x)} \log \sigma(-d(x, \theta)) .

For each :math:`(x, \theta)` the integrand :math:`-a \log \sigma(d) - b \log(1 - \sigma(d))`
with :math:`a = p(\theta, x)`, :math:`b = p(\theta) p(x)` is minimised at
:math:`\sigma(d) = a / (a + b)`, that is :math:`d = \log(a / b) = \log r(x, \theta)`.
The second expectation is estimated with :math:`K` marginal pairs per joint pair,
:math:`(x_i, \theta_{i+1}), \dots, (x_i, \theta_{i+K})`, each weighted :math:`1 / K`:
the same objective, with less variance than one marginal pair.

**NRE-B** (Durkan et al., 2020). For each :math:`x_i`, :math:`K` candidate parameters
:math:`\Theta = (\theta_i, \theta_{i+1}, \dots, \theta_{i+K-1})`, the first one joint with
:math:`x_i`; a softmax over the candidates must find it:

.. math::

    \mathcal{L}_B = -\mathbb{E} \log
    \frac{\exp d(x, \theta_1)}{\sum_{k=1}^{K} \exp d(x, \theta_k)} .

The Bayes-optimal classifier puts probability
:math:`r(x, \theta_1) / \sum_k r(x, \theta_k)` on the first candidate, and a softmax is
unchanged by adding :math:`c(x)` to every logit, so the optimum is
:math:`d = \log r(x, \theta) + c(x)`: the ratio only up to a constant in :math:`\theta`,
which MCMC does not see.

**NRE-C** (Miller et al., 2022). :math:`K` candidates as in NRE-B, plus a class
:math:`y = 0` "all candidates are marginal", drawn with odds :math:`\gamma` of a joint set
(:math:`y = 1`) against a marginal set (:math:`y = 0`). With
:math:`Z = K + \gamma \sum_k \exp d(x, \theta_k)`, the classifier predicts
:math:`q(y = 1) = \gamma \exp d(x, \theta_1) / Z` and :math:`q(y = 0) = K / Z`, and

.. math::

    \mathcal{L}_C = -\frac{\gamma}{1 + \gamma}
        \mathbb{E}_{p(x, \theta_1) p(\theta_{2:K})} \log q(y = 1 \mid x, \Theta)
    - \frac{1}{1 + \gamma}
        \mathbb{E}_{p(x) p(\theta_{1:K})} \log q(y = 0 \mid x, \Theta) .

The Bayes-optimal posterior over :math:`y` is :math:`\gamma r(x, \theta_1) / (K + \gamma
\sum_k r(x, \theta_k))` for a joint set and :math:`K / (\ldots)` for a marginal one, since
the joint density of a set is :math:`r(x, \theta_k)` times its marginal density, averaged
over the :math:`K` positions. Matching it gives :math:`d = \log r(x, \theta)` exactly: the
marginal class pins the constant that NRE-B leaves free. :math:`K = 1, \gamma = 1` is
NRE-A (halved).

**Balancing** (BNRE, Delaunoy et al., 2022). An optional penalty
:math:`\lambda \big(\mathbb{E}_{p(\theta, x)} \sigma(d) + \mathbb{E}_{p(\theta) p(x)}
\sigma(d) - 1\big)^2` is added, computed on the joint pairs and on marginal pairs
:math:`(x_i, \theta_{i+1})`. The Bayes-optimal classifier satisfies the balance (the
penalty is zero at the optimum of NRE-A and NRE-C), and enforcing it on a finite
budget makes the classifier less overconfident, hence the posterior more conservative.

Both :math:`\theta` and :math:`x` are z-scored with statistics of the training data;
z-scoring :math:`x` changes the ratio by nothing (it is a ratio of two densities of the
same :math:`x`). For :math:`n` i.i.d. trials the log-ratio of the trials is the sum of
the single-trial log-ratios, again up to a constant in :math:`\theta`.

References:
    | Likelihood-free MCMC with Amortized Approximate Ratio Estimators
      (Hermans et al., 2020)
    | https://arxiv.org/abs/1903.04057

    | On Contrastive Learning for Likelihood-free Inference (Durkan et al., 2020)
    | https://arxiv.org/abs/2002.03712

    | Contrastive Neural Ratio Estimation (Miller et al., 2022)
    | https://arxiv.org/abs/2210.06170

    | Towards Reliable Simulation-Based Inference with Balanced Neural Ratio
      Estimation (Delaunoy et al., 2022)
    | https://arxiv.org/abs/2208.13624
"""

from __future__ import annotations

__all__ = ["NRE"]

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from pyro_sbi.augment import RATIO_WEIGHT, SCORE_WEIGHT, ratio_loss, score_loss
from pyro_sbi.estimator import Estimator, distinct
from pyro_sbi.networks import ResidualMLP

_VARIANTS = ("A", "B", "C")


class NRE(Estimator):
    r"""Neural ratio estimator: a classifier whose logit is :math:`\log r(x, \theta)`.

    The classifier is a residual MLP on the concatenation of the z-scored, flattened
    `x` (or its embedding) and the z-scored `theta`. It is built at the first
    :meth:`fit`, when the sizes are known, so it is constructed without dimensions.
    Its :meth:`log_prob` is :math:`\log p(x \mid \theta) - \log \tilde p(x)`: valid for
    NUTS, HMC and SVI on observed simulator sites only (see the module documentation).

    NRE-B is the default: as accurate as NRE-C at about half its training time. It
    trains with a moving average of the weights and Adam's step size at `3e-3`, three
    times the loop's default (:attr:`fit_defaults`, see :func:`pyro_sbi.fitting.fit`):
    the averaged weights cancel most of the scatter a larger step adds, and the
    classifier's validation loss falls for hundreds of epochs at `1e-3`. The
    measurements behind these choices are on the benchmarks page, "NRE variants and
    weight averaging" and "NRE's step size".

    Arguments:
        variant: the objective: `"A"` (binary, Hermans et al.), `"B"` (contrastive over
            `num_atoms` candidates, ratio up to a constant in `theta`, Durkan et al.) or
            `"C"` (contrastive with a marginal class, Miller et al.).
        num_atoms: the number `K` of candidate parameters per `x` for `"B"` and `"C"`,
            of marginal pairs per joint pair for `"A"` (at most the batch size minus
            one; fewer are used on smaller batches).
        gamma: the odds `γ` of a joint against a marginal set for `"C"`.
        balance: the weight `λ` of the balancing penalty of BNRE (0: none).
        hidden_features: width of the residual MLP.
        num_blocks: residual blocks of the MLP.
        activation: the activation class of the MLP (e.g. `nn.ELU`, `nn.ReLU`).
        embedding: a module mapping z-scored `x (N, *x_shape)` to features `(N, E)`
            (e.g. a CNN for images); `None` uses the flattened `x`. It is trained with
            the classifier and not re-initialised by a new :meth:`fit`.
        z_score: standardise `theta` and `x` with the training statistics.

    Example:
        >>> theta = torch.randn(1000, 2)
        >>> x = theta + 0.1 * torch.randn(1000, 2)
        >>> ratio = NRE()  # NRE-B with 10 atoms
        >>> history = ratio.fit(theta, x, max_epochs=3, progress=False, seed=0)
        >>> ratio.log_prob(torch.zeros(10, 1, 2), torch.zeros(3, 2)).shape
        torch.Size([10, 3])
    """

    normalized = False
    fit_defaults: ClassVar[dict] = {"average": 0.99, "learning_rate": 3e-3}

    def __init__(
        self,
        variant: Literal["A", "B", "C"] = "B",
        *,
        num_atoms: int = 10,
        gamma: float = 1.0,
        balance: float = 0.0,
        hidden_features: int = 64,
        num_blocks: int = 2,
        activation: type[nn.Module] = nn.ELU,
        embedding: nn.Module | None = None,
        z_score: bool = True,
    ) -> None:
        super().__init__(z_score=z_score)
        if variant not in _VARIANTS:
            raise ValueError(f"NRE: variant must be one of {_VARIANTS}; got {variant!r}")
        if num_atoms < 1 or (variant == "B" and num_atoms < 2):
            raise ValueError(
                f"NRE: num_atoms must be >= 2 for variant 'B' and >= 1 for 'C'; got {num_atoms}"
            )
        if gamma <= 0 or balance < 0:
            raise ValueError(f"NRE: need gamma > 0 and balance >= 0; got {gamma}, {balance}")
        self.variant, self.num_atoms, self.gamma, self.balance = variant, num_atoms, gamma, balance
        self.hidden_features, self.num_blocks = hidden_features, num_blocks
        self.activation, self.embedding = activation, embedding
        self.classifier = None

    def _build(self) -> None:
        features = self.x_features
        if self.embedding is not None:
            with torch.no_grad():
                features = self._embedded(torch.zeros(1, features)).shape[-1]
        self.classifier = ResidualMLP(
            features + self.theta_dim,
            1,
            hidden_features=self.hidden_features,
            num_blocks=self.num_blocks,
            activation=self.activation,
        )

    def config(self) -> dict:
        """The constructor's options; the activation by its name in `torch.nn`."""
        return {
            "variant": self.variant,
            "num_atoms": self.num_atoms,
            "gamma": self.gamma,
            "balance": self.balance,
            "hidden_features": self.hidden_features,
            "num_blocks": self.num_blocks,
            "activation": self.activation.__name__,
            "embedding": None if self.embedding is None else type(self.embedding).__name__,
            "z_score": self.z_score,
        }

    def extra_repr(self) -> str:
        """Variant and its hyper-parameters."""
        return (
            f"variant={self.variant!r}, num_atoms={self.num_atoms}, gamma={self.gamma}, "
            f"balance={self.balance}"
        )

    def _logit(self, e: Tensor, theta_z: Tensor) -> Tensor:
        """The classifier's logit on embedded `x (*, E)` and `theta_z (*, D)`: `(*)`."""
        return self.classifier(torch.cat([e, theta_z], dim=-1)).squeeze(-1)

    def loss(
        self,
        theta: Tensor,
        x: Tensor,
        score: Tensor | None = None,
        score_weight: float | Tensor = SCORE_WEIGHT,
        theta_alt: Tensor | None = None,
        ratio: Tensor | None = None,
        ratio_weight: float = RATIO_WEIGHT,
    ) -> Tensor:
        r"""The objective of :attr:`variant` (plus the balancing penalty) on a batch.

        Row `i` pairs `x_i` with `theta_{i+k}` (indices modulo the batch size) for
        contrastive and marginal pairs, so no new simulation is needed.

        Arguments:
            theta: `(n, D)` parameters.
            x: `(n, *x_shape)` simulator outputs.
            score: `(n, D)` joint scores :math:`\nabla_\theta \log p(x, z \mid \theta)` of
                the simulations; adds the regression of the log-ratio's
                :math:`\theta`-gradient on the joint pairs onto them
                (:mod:`pyro_sbi.augment`).
            score_weight: the weight :math:`\alpha` of that term: a number, or `(D,)`
                weights of the squared residual per parameter (:func:`~pyro_sbi.fit` passes
                those of :func:`~pyro_sbi.augment.score_weights`).
            theta_alt: `(n, D)` alternative parameters :math:`\theta'_i`, drawn as `theta`
                is and independently of it; with `ratio`, adds ALICES's cross-entropy
                between :math:`d(x_i, \theta'_i) - d(x_i, \theta_i)` and the joint
                log-ratios (:func:`~pyro_sbi.augment.ratio_loss`).
            ratio: `(n,)` joint log-ratios :math:`\log p(x_i, z_i \mid \theta'_i) - \log
                p(x_i, z_i \mid \theta_i)` (:meth:`~pyro_sbi.PyroSimulator.joint_ratio`).
            ratio_weight: the weight :math:`\alpha` of that term.

        Returns:
            The scalar loss.
        """
        x_z, theta_z = self._standardize(x.reshape(len(x), -1), theta)
        n = len(x_z)
        atoms = max(1, min(self.num_atoms, n - 1))
        shifts = atoms + (self.variant != "B")  # "A" and "C" need a marginal set
        e = self._embedded(x_z).unsqueeze(1).expand(-1, shifts, -1)
        residual = 0.0
        if score is None:  # (n, shifts); column 0 is the joint pair
            d = self._logit(e, torch.stack([theta_z.roll(k, 0) for k in range(shifts)], dim=1))
        else:
            # The joint pairs go through the classifier apart from the contrastive ones:
            # the score term differentiates their logits in theta, and a backward through
            # the n joint rows costs 1 / shifts of one through all n * shifts rows (whose
            # other theta-gradients are not needed).
            joint, residual = score_loss(
                lambda theta_z: self._logit(e[:, 0], theta_z), theta_z, score,
                self.theta_scale, score_weight,
            )  # fmt: skip
            d = joint.unsqueeze(1)
            if shifts > 1:
                thetas = torch.stack([theta_z.roll(k, 0) for k in range(1, shifts)], dim=1)
                d = torch.cat([d, self._logit(e[:, 1:], thetas)], dim=1)
        if self.variant == "A":
            loss = -(F.logsigmoid(d[:, 0]) + F.logsigmoid(-d[:, 1:]).mean(-1)).mean()
        elif self.variant == "B":
            loss = -(d[:, 0] - d.logsumexp(-1)).mean()
        else:
            loss = self._contrastive_with_marginal(d, atoms)
        if self.balance > 0:
            p = torch.sigmoid(d[:, :2])
            loss = loss + self.balance * (p[:, 0].mean() + p[:, 1].mean() - 1) ** 2
        if (theta_alt is None) != (ratio is None):
            raise ValueError("NRE.loss: theta_alt and ratio go together (joint ratios at them)")
        if ratio is not None:
            theta_alt_z = (theta_alt.to(theta_z.dtype) - self.theta_loc) / self.theta_scale
            delta = self._logit(e[:, 0], theta_alt_z) - d[:, 0]
            residual = residual + ratio_weight * ratio_loss(delta, ratio)
        return loss + residual

    def _contrastive_with_marginal(self, d: Tensor, atoms: int) -> Tensor:
        """NRE-C on logits `d (n, K + 1)`: columns `0..K-1` joint set, `1..K` marginal."""
        log_k = torch.full_like(d[:, :1], math.log(atoms))
        log_gamma = math.log(self.gamma)
        joint = torch.cat([log_k, log_gamma + d[:, :atoms]], dim=-1)
        marginal = torch.cat([log_k, log_gamma + d[:, 1:]], dim=-1)
        log_q_joint = log_gamma + d[:, 0] - joint.logsumexp(-1)
        log_q_marginal = log_k[:, 0] - marginal.logsumexp(-1)
        weight = self.gamma / (1 + self.gamma)
        return -(weight * log_q_joint.mean() + (1 - weight) * log_q_marginal.mean())

    def log_prob(self, x: Tensor, theta: Tensor) -> Tensor:
        r"""Learned log-ratio :math:`\log p(x \mid \theta) - \log \tilde p(x)`.

        This is not a density in `x`. For a fixed `x` it equals the log-likelihood up to
        a constant in `theta` (for variant `"B"` that constant is also not learned),
        so it is valid for MCMC (NUTS, HMC) and for SVI gradients in `theta`, and
        **not** for the evidence, ELBO values, pointwise log-likelihoods, LOO or model
        comparison. Use it on observed sites only. Differentiable in `theta`.

        Arguments:
            x: `(*, *x_shape)` simulator outputs.
            theta: `(*, D)` parameters; broadcast against the batch shape of `x`.

        Returns:
            `(*)` log-ratios over the broadcast batch shape.
        """
        x_z, theta_z = self._prepare(x, theta)
        if x_z.numel() == 0:  # no data points: no densities
            return x_z.new_zeros(x_z.shape[:-1])
        if self.embedding is None:
            return self._logit(x_z, theta_z)
        e = self._embedded(distinct(x_z))  # once per distinct x, e.g. not once per chain
        return self._logit(e.expand(x_z.shape[:-1] + e.shape[-1:]), theta_z)
