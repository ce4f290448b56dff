r"""Gaussian mixture: a narrow and a broad component around the same mean (sbibm).

Prior :math:`\theta \sim \mathcal{U}([-10, 10]^2)`, simulator

.. math::

    x \mid \theta \sim \tfrac12 \mathcal{N}(\theta, I) + \tfrac12 \mathcal{N}(\theta, 0.01\, I).

The component is drawn independently for every simulation (sbibm's implementation
draws one component per batch of simulations; the model, and the reference posterior,
are the same).

**Reference posterior, exact.** The likelihood is a function of :math:`x - \theta`
symmetric under :math:`x - \theta \mapsto \theta - x`, and the prior is uniform, so the
posterior is the same mixture centred at :math:`x`, truncated to the prior box: draw a
component, draw :math:`\theta` from it, keep it when it lies in the box.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_sbi.tasks._common import TASK_NAMES, Task

__all__ = ["NAME", "log_likelihood", "sample_posterior", *TASK_NAMES]

NAME, BOUND, SCALES = "gaussian_mixture", 10.0, (1.0, 0.1)


def prior() -> dist.Distribution:
    """The uniform prior on :math:`[-10, 10]^2`, event shape `(2,)`."""
    return dist.Uniform(-BOUND * torch.ones(2), BOUND * torch.ones(2)).to_event(1)


def simulator(theta: Tensor) -> Tensor:
    """`theta (n, 2) -> x (n, 2)`.

    Example:
        >>> simulator(torch.zeros(4, 2)).shape
        torch.Size([4, 2])
    """
    narrow = torch.rand(theta.shape[:-1] + (1,), dtype=theta.dtype) < 0.5
    scale = torch.where(narrow, SCALES[1], SCALES[0])
    return theta + scale * torch.randn_like(theta)


def log_likelihood(x: Tensor, theta: Tensor) -> Tensor:
    r"""The exact :math:`\log p(x \mid \theta)`, `x (*, 2)` and `theta (*, 2)` broadcast."""
    parts = [dist.Normal(theta, scale).log_prob(x).sum(-1) + math.log(0.5) for scale in SCALES]
    return torch.logsumexp(torch.stack(parts), 0)


def sample_posterior(x: Tensor, num_samples: int, seed: int = 0) -> Tensor:
    """`(num_samples, 2)` exact posterior draws for any `x (2,)`."""
    generator = torch.Generator().manual_seed(seed)
    kept, total = [], 0
    while total < num_samples:
        m = 2 * num_samples
        narrow = torch.rand(m, 1, generator=generator) < 0.5
        scale = torch.where(narrow, SCALES[1], SCALES[0]).to(x.dtype)
        theta = x + scale * torch.randn(m, 2, generator=generator, dtype=x.dtype)
        inside = (theta.abs() <= BOUND).all(-1)
        kept.append(theta[inside])
        total += int(inside.sum())
    return torch.cat(kept)[:num_samples]


TASK = Task(NAME, prior, simulator, sample_posterior, stored=True, log_likelihood=log_likelihood)
model, observation, true_parameters, reference_posterior = TASK.interface()
