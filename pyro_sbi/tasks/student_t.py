r"""Student-t location and scale: heavy-tailed data with infinite variance.

Prior :math:`\mu \sim \mathcal{U}(-5, 5)`, :math:`\sigma \sim \mathcal{U}(0.2, 2)`; the
simulator draws ten i.i.d. points

.. math::

    x_j = \mu + \sigma \, t_j, \qquad t_j \sim t_2 , \quad j = 1, \dots, 10,

from Student's t with 2 degrees of freedom (finite mean, infinite variance), so a data
set often holds a point tens of scales away from :math:`\mu`: a test of estimators that
z-score their inputs and of flows with light tails. The location-scale Student-t is the
textbook robust-regression likelihood (Lange, Little & Taylor, 1989).

**Reference posterior.** The likelihood is exact (a product of Student-t densities) and
the prior uniform, so the posterior is the normalised likelihood on the prior's box:
drawn on a zooming grid of 300 × 300 cells with uniform jitter within each cell
(:func:`~pyro_sbi.tasks._reference.grid_posterior`).

**Observations.** Observation :math:`i` (1 to 10) has true parameters drawn from the
prior with seed :math:`i` and data simulated with seed :math:`1000 + i`.

References:
    | Robust statistical modeling using the t distribution (Lange, Little & Taylor,
      1989), Journal of the American Statistical Association 84:881–896
    | https://doi.org/10.1080/01621459.1989.10478852
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_sbi.tasks._common import BROAD_NAMES, Task, uniform_prior
from pyro_sbi.tasks._reference import grid_reference

__all__ = [*BROAD_NAMES]

NAME, DIM, X_DIM, KIND = "student_t", 2, 10, "heavy-tailed output"
LOW, HIGH = (-5.0, 0.2), (5.0, 2.0)
prior = uniform_prior(LOW, HIGH)
DF = 2.0


def simulator(theta: Tensor) -> Tensor:
    """`theta (n, 2) -> x (n, 10)`: ten Student-t draws per row."""
    t = dist.StudentT(torch.tensor(DF, dtype=theta.dtype)).sample(theta.shape[:-1] + (X_DIM,))
    return theta[..., :1] + theta[..., 1:] * t


def log_likelihood(x: Tensor, theta: Tensor) -> Tensor:
    r"""The exact :math:`\log p(x \mid \theta)`, `x (*, 10)` and `theta (*, 2)` broadcast."""
    loc, scale = theta[..., :1], theta[..., 1:]
    return dist.StudentT(torch.tensor(DF, dtype=theta.dtype), loc, scale).log_prob(x).sum(-1)


sample_posterior = grid_reference(log_likelihood, LOW, HIGH, cells=300)


TASK = Task(NAME, prior, simulator, sample_posterior, log_likelihood=log_likelihood)
model, observation, true_parameters, reference_posterior = TASK.interface()
