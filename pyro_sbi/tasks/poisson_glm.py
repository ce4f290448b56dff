r"""Poisson GLM: counts with a log link and a quadratic trend.

Prior :math:`\theta_1 \sim \mathcal{U}(0, 3)`, :math:`\theta_2, \theta_3 \sim
\mathcal{U}(-1, 1)`, independently. At ten fixed design points :math:`t_j` evenly spaced
in :math:`[-1, 1]` the simulator draws counts

.. math::

    x_j \sim \mathrm{Poisson}(\lambda_j), \qquad
    \log \lambda_j = \theta_1 + \theta_2 t_j + \theta_3 (t_j^2 - \overline{t^2}) ,

the generalised linear model for counts (Nelder & Wedderburn, 1972; McCullagh & Nelder,
1989, ch. 6), with rates from about 0.1 to 150. The data are integers, which a flow on
the real line sees as a density made of spikes.

**Reference posterior.** The exact likelihood (a product of Poisson probabilities) on the
uniform prior's box, drawn on a zooming grid of 100 × 100 × 100 cells with uniform
jitter within each cell (:func:`~pyro_sbi.tasks._reference.grid_posterior`).

**Observations.** Observation :math:`i` (1 to 10) has true parameters drawn from the
prior with seed :math:`i` and data simulated with seed :math:`1000 + i`.

References:
    | Generalized linear models (Nelder & Wedderburn, 1972), Journal of the Royal
      Statistical Society A 135:370–384
    | https://doi.org/10.2307/2344614

    | Generalized Linear Models, 2nd edition (McCullagh & Nelder, 1989), Chapman & Hall
"""

from __future__ import annotations

import torch
from torch import Tensor

from pyro_sbi.tasks._common import BROAD_NAMES, Task, uniform_prior
from pyro_sbi.tasks._reference import grid_reference

__all__ = [*BROAD_NAMES]

NAME, DIM, X_DIM, KIND = "poisson_glm", 3, 10, "counts"
LOW, HIGH = (0.0, -1.0, -1.0), (3.0, 1.0, 1.0)
prior = uniform_prior(LOW, HIGH)


def design(dtype: torch.dtype | None = None) -> Tensor:
    r"""`(10, 3)` design matrix: columns :math:`1, t_j, t_j^2 - \overline{t^2}`."""
    t = torch.linspace(-1.0, 1.0, X_DIM, dtype=torch.float64)
    matrix = torch.stack([torch.ones_like(t), t, t**2 - (t**2).mean()], -1)
    return matrix.to(dtype or torch.get_default_dtype())


def simulator(theta: Tensor) -> Tensor:
    """`theta (n, 3) -> x (n, 10)`: counts, as floats."""
    return torch.poisson((theta @ design(theta.dtype).T).exp())


def log_likelihood(x: Tensor, theta: Tensor) -> Tensor:
    r"""The exact :math:`\log p(x \mid \theta)`, `x (*, 10)` and `theta (*, 3)` broadcast."""
    log_rate = theta @ design(theta.dtype).T
    return (x * log_rate - log_rate.exp() - torch.lgamma(x + 1)).sum(-1)


sample_posterior = grid_reference(log_likelihood, LOW, HIGH, cells=100)


TASK = Task(NAME, prior, simulator, sample_posterior, log_likelihood=log_likelihood)
model, observation, true_parameters, reference_posterior = TASK.interface()
