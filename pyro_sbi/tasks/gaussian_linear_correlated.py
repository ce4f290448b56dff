r"""Linear Gaussian with correlated noise: 25-dimensional data, closed-form posterior.

Prior :math:`\theta \sim \mathcal{N}(0, I_5)`. The simulator returns a smooth curve on
25 points :math:`s_k` evenly spaced in :math:`[0, 1]`, a sum of five Gaussian bumps
weighted by :math:`\theta`, with autocorrelated noise:

.. math::

    x = A \theta + \varepsilon, \qquad A_{kj} = \exp\Big(-\frac{(s_k - c_j)^2}{2 \cdot
    0.15^2}\Big), \qquad \varepsilon \sim \mathcal{N}(0, \Sigma), \quad
    \Sigma_{kl} = 0.3^2 \cdot 0.8^{|k - l|} ,

with the bump centres :math:`c_j` evenly spaced in :math:`[0, 1]` and AR(1) noise. The
overlapping bumps make the parameters correlated in the posterior; the noise makes the
25 outputs correlated given :math:`\theta`. (The linear-Gaussian model of Bayesian
linear regression, e.g. Bishop, 2006, §3.3; a higher-dimensional, correlated relative
of sbibm's gaussian_linear.)

**Reference posterior, closed form.** Gaussian with precision :math:`P = I + A^\top
\Sigma^{-1} A` and mean :math:`P^{-1} A^\top \Sigma^{-1} x` (:func:`posterior`).

**Observations.** Observation :math:`i` (1 to 10) has true parameters drawn from the
prior with seed :math:`i` and data simulated with seed :math:`1000 + i`.

References:
    | Pattern Recognition and Machine Learning (Bishop, 2006), Springer, §3.3
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_sbi.tasks._common import BROAD_NAMES, Task, seeded_draws

__all__ = ["design", "noise_covariance", "posterior", *BROAD_NAMES]

NAME, DIM, X_DIM, KIND = "gaussian_linear_correlated", 5, 25, "20+ dimensional output"
WIDTH, NOISE, RHO = 0.15, 0.3, 0.8


def design(dtype: torch.dtype | None = None) -> Tensor:
    """`(25, 5)` matrix of the five Gaussian bumps at the 25 points."""
    s = torch.linspace(0.0, 1.0, X_DIM, dtype=torch.float64)
    c = torch.linspace(0.0, 1.0, DIM, dtype=torch.float64)
    matrix = torch.exp(-((s[:, None] - c[None, :]) ** 2) / (2 * WIDTH**2))
    return matrix.to(dtype or torch.get_default_dtype())


def noise_covariance(dtype: torch.dtype | None = None) -> Tensor:
    r"""`(25, 25)` AR(1) covariance :math:`0.3^2 \cdot 0.8^{|k - l|}`."""
    k = torch.arange(X_DIM, dtype=torch.float64)
    matrix = NOISE**2 * RHO ** (k[:, None] - k[None, :]).abs()
    return matrix.to(dtype or torch.get_default_dtype())


def prior() -> dist.Distribution:
    r"""`N(0, I_5)`, event shape `(5,)`."""
    return dist.Normal(torch.zeros(DIM), 1.0).to_event(1)


def _noise(dtype: torch.dtype) -> dist.MultivariateNormal:
    return dist.MultivariateNormal(torch.zeros(X_DIM, dtype=dtype),
                                   covariance_matrix=noise_covariance(dtype))  # fmt: skip


def simulator(theta: Tensor) -> Tensor:
    """`theta (n, 5) -> x (n, 25)`.

    Example:
        >>> simulator(torch.zeros(3, 5)).shape
        torch.Size([3, 25])
    """
    return theta @ design(theta.dtype).T + _noise(theta.dtype).sample(theta.shape[:-1])


def log_likelihood(x: Tensor, theta: Tensor) -> Tensor:
    r"""The exact :math:`\log p(x \mid \theta)`, `x (*, 25)` and `theta (*, 5)` broadcast."""
    return _noise(theta.dtype).log_prob(x - theta @ design(theta.dtype).T)


def posterior(x: Tensor) -> dist.MultivariateNormal:
    """The exact posterior given `x (25,)`, in float64."""
    a, sigma = design(torch.float64), noise_covariance(torch.float64)
    weighted = torch.linalg.solve(sigma, a)  # Sigma^-1 A
    precision = torch.eye(DIM, dtype=torch.float64) + a.T @ weighted
    covariance = torch.linalg.inv(precision)
    mean = covariance @ (weighted.T @ x.to(torch.float64))
    return dist.MultivariateNormal(mean, covariance_matrix=0.5 * (covariance + covariance.T))


def sample_posterior(x: Tensor, num_samples: int, seed: int = 0) -> Tensor:
    """`(num_samples, 5)` draws of the closed-form posterior given `x (25,)`."""
    return seeded_draws(posterior(x), num_samples, seed)


TASK = Task(NAME, prior, simulator, sample_posterior, log_likelihood=log_likelihood)
observation, true_parameters = TASK.observation, TASK.true_parameters
model, reference_posterior = TASK.model, TASK.reference_posterior
