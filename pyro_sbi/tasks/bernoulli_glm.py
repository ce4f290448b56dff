r"""Bernoulli GLM: binary spikes of a neuron summarised by sufficient statistics (sbibm).

The task ``bernoulli_glm`` of sbibm (Lueckmann et al., 2021), with its prior and
simulator as published. A neuron's spike :math:`y_t \in \{0, 1\}` in each of 100 time
bins is Bernoulli with a logistic link,

.. math::

    P(y_t = 1 \mid \theta) = \sigma(X_t \theta), \qquad X_t = (1, I_t, I_{t-1}, \dots,
    I_{t-8}) ,

where :math:`I` is a fixed white-noise stimulus (``numpy.random.RandomState(42).randn(100)``
in float32, as in sbibm; :math:`I_t = 0` before the first bin), :math:`\theta_1` the
offset and :math:`\theta_{2:10}` a temporal filter. The data are the ten sufficient
statistics :math:`x = X^\top y`: the spike count and the spike-triggered sum of the
stimulus at lags 0 to 8 (sbibm's ``num_spikes`` and ``sta``). The prior is Gaussian with
precision :math:`0.5` on the offset and :math:`F^\top F` on the filter, :math:`F = D^2 +
\mathrm{diag}(\sqrt{k / 9})_{k=0}^{8}`, :math:`D` the first-difference matrix: smooth
filters.

**Exact likelihood, up to a function of x.** For any spike train with :math:`X^\top y =
x`, :math:`p(y \mid \theta) = \exp(\theta^\top x - \sum_t \log(1 + e^{X_t \theta}))`, so
:math:`p(x \mid \theta) = N(x) \exp(\theta^\top x - \sum_t \log(1 + e^{X_t \theta}))`
with :math:`N(x)` the number of such trains, which does not depend on :math:`\theta`:
:func:`log_likelihood` leaves it out, so it is a log-likelihood in :math:`\theta` (for
MCMC), not a normalised density in :math:`x`.

**Reference posterior.** The posterior is log-concave. Rejection sampling from a
multivariate Student-t (5 degrees of freedom) at its mode, with the inverse Hessian there
times 1.5 as covariance (:func:`~pyro_sbi.tasks._reference.rejection_posterior`); sbibm
used Pólya-Gamma Gibbs sampling on the spike train, the same posterior.

**Observations.** Ours, not sbibm's (whose files are not shipped): observation :math:`i`
(1 to 10) has true parameters drawn from the prior with seed :math:`i` and spikes
simulated with seed :math:`1000 + i`.

References:
    | Benchmarking simulation-based inference (Lueckmann, Boelts, Greenberg, Gonçalves &
      Macke, 2021), AISTATS
    | https://proceedings.mlr.press/v130/lueckmann21a.html

    | Bayesian inference for logistic models using Pólya-Gamma latent variables (Polson,
      Scott & Windle, 2013), Journal of the American Statistical Association 108:1339–1349
    | https://doi.org/10.1080/01621459.2013.829001
"""

from __future__ import annotations

import functools

import numpy as np
import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_sbi.tasks._common import BROAD_NAMES, Task
from pyro_sbi.tasks._reference import laplace_proposal, rejection_posterior

__all__ = ["design", "stimulus", *BROAD_NAMES]

NAME, DIM, X_DIM, KIND = "bernoulli_glm", 10, 10, "binary responses"
BINS, SEED = 100, 42


def stimulus() -> Tensor:
    """`(100,)` the white-noise stimulus of sbibm (`RandomState(42)`, float32)."""
    return torch.from_numpy(np.random.RandomState(SEED).randn(BINS).astype(np.float32))


@functools.cache
def _design() -> Tensor:
    current = stimulus().to(torch.float64)
    matrix = torch.zeros(BINS, DIM, dtype=torch.float64)
    matrix[:, 0] = 1.0
    for lag in range(DIM - 1):
        matrix[lag:, lag + 1] = current[: BINS - lag]
    return matrix


def design(dtype: torch.dtype | None = None) -> Tensor:
    """`(100, 10)` design matrix: a column of ones and the stimulus at lags 0 to 8."""
    return _design().to(dtype or torch.get_default_dtype())


def _prior_precision() -> Tensor:
    m = DIM - 1
    difference = torch.eye(m, dtype=torch.float64) - torch.diag(torch.ones(m - 1), -1).double()
    f = difference @ difference + torch.diag(torch.arange(m, dtype=torch.float64) / m).sqrt()
    precision = torch.zeros(DIM, DIM, dtype=torch.float64)
    precision[0, 0] = 0.5
    precision[1:, 1:] = f.T @ f
    return precision


def prior() -> dist.Distribution:
    """The Gaussian prior of sbibm (smooth filters), event shape `(10,)`."""
    dtype = torch.get_default_dtype()
    return dist.MultivariateNormal(torch.zeros(DIM, dtype=dtype),
                                   precision_matrix=_prior_precision().to(dtype))  # fmt: skip


def simulator(theta: Tensor) -> Tensor:
    """`theta (n, 10) -> x (n, 10)`: spike count and spike-triggered stimulus sums.

    Example:
        >>> simulator(prior().sample((3,))).shape
        torch.Size([3, 10])
    """
    x = design(theta.dtype)
    spikes = torch.bernoulli(torch.sigmoid(theta @ x.T))  # (n, 100)
    return spikes @ x


def log_likelihood(x: Tensor, theta: Tensor) -> Tensor:
    r""":math:`\log p(x \mid \theta) - \log N(x)`, `x (*, 10)`, `theta (*, 10)` broadcast.

    Exact in :math:`\theta` for fixed `x` (see the module docs), not normalised in `x`.
    """
    linear = theta @ design(theta.dtype).T
    return (theta * x).sum(-1) - torch.nn.functional.softplus(linear).sum(-1)


def log_posterior(x: Tensor, theta: Tensor) -> Tensor:
    """The unnormalised log posterior in float64, `theta (*, 10)`."""
    precision = _prior_precision()
    theta = theta.to(torch.float64)
    log_prior = -0.5 * ((theta @ precision) * theta).sum(-1)
    return log_prior + log_likelihood(x.to(torch.float64), theta)


def sample_posterior(x: Tensor, num_samples: int, seed: int = 0) -> Tensor:
    """`(num_samples, 10)` exact posterior draws for any `x (10,)`, by rejection."""

    def log_density(theta: Tensor) -> Tensor:
        return log_posterior(x, theta)

    proposal = laplace_proposal(log_density, torch.zeros(DIM, dtype=torch.float64))
    return rejection_posterior(log_density, proposal, num_samples, seed=seed)


TASK = Task(NAME, prior, simulator, sample_posterior, log_likelihood=log_likelihood)
model, observation, true_parameters, reference_posterior = TASK.interface()
