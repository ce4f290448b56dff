r"""Gaussian linear: a 10-D Gaussian posterior known in closed form (sbibm).

Prior :math:`\theta \sim \mathcal{N}(0, 0.1\, I_{10})`, simulator
:math:`x \mid \theta \sim \mathcal{N}(\theta, 0.1\, I_{10})`. For :math:`m` i.i.d.
observations :math:`x_1, \dots, x_m` the posterior is Gaussian with precision
:math:`(1 + m) / 0.1` per coordinate and mean :math:`\sum_j x_j / (1 + m)`.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_sbi.tasks._common import TASK_NAMES, Task, seeded_draws, simulator_site

__all__ = ["DIM", "NAME", "log_likelihood", "posterior", "sample_posterior", *TASK_NAMES]

NAME, DIM, VARIANCE = "gaussian_linear", 10, 0.1


def prior() -> dist.Distribution:
    r"""`N(0, 0.1 I)`, event shape `(10,)`."""
    return dist.Normal(torch.zeros(DIM), math.sqrt(VARIANCE)).to_event(1)


def simulator(theta: Tensor) -> Tensor:
    """`theta (n, 10) -> x (n, 10)`.

    Example:
        >>> simulator(torch.zeros(3, 10)).shape
        torch.Size([3, 10])
    """
    return theta + math.sqrt(VARIANCE) * torch.randn_like(theta)


def posterior(x: Tensor) -> dist.Distribution:
    r"""The exact posterior given `x (m, 10)` i.i.d. observations (or one `x (10,)`)."""
    x = x.reshape(-1, DIM)
    m = len(x)
    return dist.Normal(x.sum(0) / (1 + m), math.sqrt(VARIANCE / (1 + m))).to_event(1)


def log_likelihood(x: Tensor, theta: Tensor) -> Tensor:
    r"""The exact :math:`\log p(x \mid \theta)`, `x (*, 10)` and `theta (*, 10)` broadcast."""
    return dist.Normal(theta, math.sqrt(VARIANCE)).log_prob(x).sum(-1)


def model(estimator, x: Tensor | None = None, trials: int | None = None) -> Tensor:
    """The task as a Pyro model, with a plate of `trials` i.i.d. observations if given.

    With `estimator=None` the likelihood is the exact one (:func:`log_likelihood`).
    """
    theta = pyro.sample("theta", prior())
    site = simulator_site(simulator, theta, estimator, log_likelihood, (DIM,), NAME)
    if trials is None:
        return pyro.sample("x", site, obs=x)
    with pyro.plate("trials", trials):
        return pyro.sample("x", site, obs=x)


def sample_posterior(x: Tensor, num_samples: int, seed: int = 0) -> Tensor:
    """`(num_samples, 10)` draws of the closed-form posterior given `x (10,)`."""
    return seeded_draws(posterior(x), num_samples, seed)


TASK = Task(
    NAME, prior, simulator, sample_posterior, stored=True, model=model,
    log_likelihood=log_likelihood,
)  # fmt: skip
observation, true_parameters = TASK.observation, TASK.true_parameters
reference_posterior = TASK.reference_posterior
