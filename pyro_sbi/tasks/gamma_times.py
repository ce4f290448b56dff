r"""Gamma waiting times: positive, right-skewed data.

Prior :math:`k \sim \mathcal{U}(0.5, 5)` (shape) and :math:`\lambda \sim
\mathcal{U}(0.5, 5)` (rate), independently; the simulator draws ten i.i.d. waiting times

.. math::

    x_j \sim \mathrm{Gamma}(k, \lambda), \qquad j = 1, \dots, 10 ,

the waiting time until the :math:`k`-th event of a Poisson process of rate
:math:`\lambda` when :math:`k` is an integer (Johnson, Kotz & Balakrishnan, 1994,
ch. 17). With :math:`k < 1` the density is infinite at 0 and most draws are near it,
with a long right tail: a positive, skewed output. (A queue such as the M/G/1 of
Papamakarios et al. has no tractable likelihood; this model does.)

**Reference posterior.** The exact likelihood (a product of Gamma densities) on the
uniform prior's box, drawn on a zooming grid of 300 × 300 cells with uniform jitter
within each cell (:func:`~pyro_sbi.tasks._reference.grid_posterior`). The shape and the
rate are strongly correlated in the posterior (the mean :math:`k / \lambda` is better
known than either).

**Observations.** Observation :math:`i` (1 to 10) has true parameters drawn from the
prior with seed :math:`i` and data simulated with seed :math:`1000 + i`.

References:
    | Continuous Univariate Distributions, volume 1, 2nd edition (Johnson, Kotz &
      Balakrishnan, 1994), Wiley, chapter 17
"""

from __future__ import annotations

import pyro.distributions as dist
from torch import Tensor

from pyro_sbi.tasks._common import BROAD_NAMES, Task, uniform_prior
from pyro_sbi.tasks._reference import grid_reference

__all__ = [*BROAD_NAMES]

NAME, DIM, X_DIM, KIND = "gamma_times", 2, 10, "positive skewed output"
LOW, HIGH = (0.5, 0.5), (5.0, 5.0)
prior = uniform_prior(LOW, HIGH)


def simulator(theta: Tensor) -> Tensor:
    """`theta (n, 2) -> x (n, 10)`: ten Gamma draws per row.

    Example:
        >>> x = simulator(prior().sample((3,)))
        >>> x.shape, bool((x > 0).all())
        (torch.Size([3, 10]), True)
    """
    k, rate = theta.unsqueeze(-1).expand(theta.shape + (X_DIM,)).unbind(-2)
    return dist.Gamma(k, rate).sample()


def log_likelihood(x: Tensor, theta: Tensor) -> Tensor:
    r"""The exact :math:`\log p(x \mid \theta)`, `x (*, 10)` and `theta (*, 2)` broadcast."""
    return dist.Gamma(theta[..., :1], theta[..., 1:]).log_prob(x).sum(-1)


sample_posterior = grid_reference(log_likelihood, LOW, HIGH, cells=300)


TASK = Task(NAME, prior, simulator, sample_posterior, log_likelihood=log_likelihood)
model, observation, true_parameters, reference_posterior = TASK.interface()
