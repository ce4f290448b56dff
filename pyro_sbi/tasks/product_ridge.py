r"""Product ridge: strongly and nonlinearly correlated parameters.

Prior :math:`\theta \sim \mathcal{U}([0.2, 2]^2)`; the simulator measures the product
of the parameters precisely and the first one coarsely,

.. math::

    x_1 = \theta_1 \theta_2 + 0.05\, \varepsilon_1, \qquad
    x_2 = \theta_1 + 0.5\, \varepsilon_2, \qquad \varepsilon \sim \mathcal{N}(0, I_2) ,

so the posterior is a thin curved band along the hyperbola
:math:`\theta_1 \theta_2 = x_1`, located along it by :math:`x_2`: the two parameters are
almost functions of each other, as for a rate and a duration of which only the product
is observed (the "banana" posteriors of Haario, Saksman & Tamminen, 1999, made by a
product instead of a square).

**Reference posterior.** The exact Gaussian likelihood on the uniform prior's box, drawn
on a zooming grid of 400 × 400 cells with uniform jitter within each cell
(:func:`~pyro_sbi.tasks._reference.grid_posterior`).

**Observations.** Observation :math:`i` (1 to 10) has true parameters drawn from the
prior with seed :math:`i` and data simulated with seed :math:`1000 + i`.

References:
    | Adaptive proposal distribution for random walk Metropolis algorithm (Haario,
      Saksman & Tamminen, 1999), Computational Statistics 14:375–395
    | https://doi.org/10.1007/s001800050022
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_sbi.tasks._common import BROAD_NAMES, Task, uniform_prior
from pyro_sbi.tasks._reference import grid_reference

__all__ = [*BROAD_NAMES]

NAME, DIM, X_DIM, KIND = "product_ridge", 2, 2, "strongly correlated parameters"
LOW, HIGH = (0.2, 0.2), (2.0, 2.0)
prior = uniform_prior(LOW, HIGH)
NOISE = (0.05, 0.5)


def _mean(theta: Tensor) -> Tensor:
    return torch.stack([theta[..., 0] * theta[..., 1], theta[..., 0]], -1)


def simulator(theta: Tensor) -> Tensor:
    """`theta (n, 2) -> x (n, 2)`."""
    noise = torch.tensor(NOISE, dtype=theta.dtype)
    return _mean(theta) + noise * torch.randn_like(theta)


def log_likelihood(x: Tensor, theta: Tensor) -> Tensor:
    r"""The exact :math:`\log p(x \mid \theta)`, `x (*, 2)` and `theta (*, 2)` broadcast."""
    noise = torch.tensor(NOISE, dtype=theta.dtype)
    return dist.Normal(_mean(theta), noise).log_prob(x).sum(-1)


sample_posterior = grid_reference(log_likelihood, LOW, HIGH, cells=400)


TASK = Task(NAME, prior, simulator, sample_posterior, log_likelihood=log_likelihood)
model, observation, true_parameters, reference_posterior = TASK.interface()
