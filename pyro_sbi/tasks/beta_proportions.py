r"""Beta proportions: bounded data in :math:`(0, 1)`.

Prior :math:`a, b \sim \mathcal{U}(1, 10)` independently; the simulator draws ten i.i.d.
proportions

.. math::

    x_j \sim \mathrm{Beta}(a, b), \qquad j = 1, \dots, 10 ,

the standard model of rates and fractions (beta regression, Ferrari & Cribari-Neto,
2004, in its intercept-only form). Flows on the real line must learn a density that
vanishes outside :math:`(0, 1)`. The draws are made in float64 and clamped to
:math:`[10^{-6}, 1 - 10^{-6}]` before they are cast to the parameters' dtype (so float32
never rounds one to 0 or 1); with :math:`a, b \ge 1` a draw is clamped with probability
below :math:`10^{-5}`, which the likelihood below ignores.

**Reference posterior.** The exact likelihood (a product of Beta densities) on the
uniform prior's box, drawn on a zooming grid of 300 × 300 cells with uniform jitter
within each cell (:func:`~pyro_sbi.tasks._reference.grid_posterior`). The posterior is
elongated along the line :math:`a / (a + b) = \bar x` (the mean is better known than
the concentration).

**Observations.** Observation :math:`i` (1 to 10) has true parameters drawn from the
prior with seed :math:`i` and data simulated with seed :math:`1000 + i`.

References:
    | Beta regression for modelling rates and proportions (Ferrari & Cribari-Neto,
      2004), Journal of Applied Statistics 31:799–815
    | https://doi.org/10.1080/0266476042000214501
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_sbi.tasks._common import BROAD_NAMES, Task, uniform_prior
from pyro_sbi.tasks._reference import grid_reference

__all__ = [*BROAD_NAMES]

NAME, DIM, X_DIM, KIND = "beta_proportions", 2, 10, "bounded output"
LOW, HIGH = (1.0, 1.0), (10.0, 10.0)
prior = uniform_prior(LOW, HIGH)
CLAMP = 1e-6


def simulator(theta: Tensor) -> Tensor:
    """`theta (n, 2) -> x (n, 10)`: ten Beta draws per row, inside `(0, 1)`.

    Example:
        >>> x = simulator(prior().sample((3,)))
        >>> x.shape, bool(((x > 0) & (x < 1)).all())
        (torch.Size([3, 10]), True)
    """
    a, b = theta.to(torch.float64).unsqueeze(-1).expand(theta.shape + (X_DIM,)).unbind(-2)
    x = dist.Beta(a, b).sample().clamp(CLAMP, 1 - CLAMP)
    return x.to(theta.dtype)


def log_likelihood(x: Tensor, theta: Tensor) -> Tensor:
    r"""The exact :math:`\log p(x \mid \theta)`, `x (*, 10)` and `theta (*, 2)` broadcast."""
    return dist.Beta(theta[..., :1], theta[..., 1:]).log_prob(x).sum(-1)


sample_posterior = grid_reference(log_likelihood, LOW, HIGH, cells=300)


TASK = Task(NAME, prior, simulator, sample_posterior, log_likelihood=log_likelihood)
model, observation, true_parameters, reference_posterior = TASK.interface()
