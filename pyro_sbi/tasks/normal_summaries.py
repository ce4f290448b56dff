r"""Normal summaries: a posterior far narrower than the prior.

Prior :math:`\mu \sim \mathcal{U}(-5, 5)`, :math:`\sigma \sim \mathcal{U}(0.5, 2)`; the
simulator draws :math:`n = 1000` i.i.d. points :math:`y_k \sim \mathcal{N}(\mu,
\sigma^2)` and returns their mean and standard deviation,

.. math::

    x = \big(\bar y, \; s\big), \qquad
    \bar y = \frac1n \sum_k y_k, \quad s^2 = \frac{1}{n - 1} \sum_k (y_k - \bar y)^2 ,

so the posterior's standard deviations (about :math:`\sigma / \sqrt n` and
:math:`\sigma / \sqrt{2 n}`) are 45 to 180 times smaller than the prior's for
:math:`\mu` and 10 to 40 times for :math:`\sigma`: the posterior covers a part in
:math:`10^3` to :math:`10^4` of the prior's box, and an estimator must be accurate
there.

**Exact likelihood.** :math:`\bar y` and :math:`s` are independent (Cochran's theorem),
:math:`\bar y \sim \mathcal{N}(\mu, \sigma^2 / n)` and :math:`(n - 1) s^2 / \sigma^2 \sim
\chi^2_{n - 1}`, so

.. math::

    p(x \mid \theta) = \mathcal{N}(\bar y; \mu, \sigma^2 / n) \,
        \chi^2_{n-1}\big((n - 1) s^2 / \sigma^2\big) \, \frac{2 (n - 1) s}{\sigma^2} .

**Reference posterior.** That likelihood on the uniform prior's box, drawn on a zooming
grid of 300 × 300 cells with uniform jitter within each cell
(:func:`~pyro_sbi.tasks._reference.grid_posterior`), which zooms onto the posterior's
small region of the box.

**Observations.** Observation :math:`i` (1 to 10) has true parameters drawn from the
prior with seed :math:`i` and data simulated with seed :math:`1000 + i`.

References:
    | The distribution of quadratic forms in a normal system, with applications to the
      analysis of covariance (Cochran, 1934), Mathematical Proceedings of the Cambridge
      Philosophical Society 30:178–191
    | https://doi.org/10.1017/S0305004100016595
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_sbi.tasks._common import BROAD_NAMES, Task, uniform_prior
from pyro_sbi.tasks._reference import grid_reference

__all__ = [*BROAD_NAMES]

NAME, DIM, X_DIM, KIND = "normal_summaries", 2, 2, "narrow posterior"
LOW, HIGH = (-5.0, 0.5), (5.0, 2.0)
prior = uniform_prior(LOW, HIGH)
DRAWS = 1000  # i.i.d. points summarised per simulation
_CHUNK = 1000  # rows simulated together


def simulator(theta: Tensor) -> Tensor:
    """`theta (n, 2) -> x (n, 2)`: the mean and standard deviation of 1000 normal draws."""
    rows = theta.reshape(-1, DIM)
    out = []
    for part in rows.split(_CHUNK):
        y = part[:, :1] + part[:, 1:] * torch.randn(len(part), DRAWS, dtype=theta.dtype)
        out.append(torch.stack([y.mean(-1), y.std(-1)], -1))
    return torch.cat(out).reshape(theta.shape[:-1] + (X_DIM,))


def log_likelihood(x: Tensor, theta: Tensor) -> Tensor:
    r"""The exact :math:`\log p(x \mid \theta)`, `x (*, 2)` and `theta (*, 2)` broadcast."""
    mean, sd = x[..., 0], x[..., 1]
    mu, sigma = theta[..., 0], theta[..., 1]
    n = DRAWS
    log_mean = dist.Normal(mu, sigma / math.sqrt(n)).log_prob(mean)
    scaled = (n - 1) * sd**2 / sigma**2
    chi2 = dist.Chi2(torch.tensor(n - 1.0, dtype=scaled.dtype)).log_prob(scaled)
    return log_mean + chi2 + torch.log(2 * (n - 1) * sd / sigma**2)


sample_posterior = grid_reference(log_likelihood, LOW, HIGH, cells=300)


TASK = Task(NAME, prior, simulator, sample_posterior, log_likelihood=log_likelihood)
model, observation, true_parameters, reference_posterior = TASK.interface()
