r"""Two moons: a bimodal, crescent-shaped posterior (Greenberg et al. 2019; sbibm).

Prior :math:`\theta \sim \mathcal{U}([-1, 1]^2)`. The simulator draws an angle
:math:`a \sim \mathcal{U}(-\pi/2, \pi/2)` and a radius :math:`r \sim \mathcal{N}(0.1,
0.01^2)`, forms the point :math:`p = (r \cos a + 0.25, \; r \sin a)` on a noisy
half-ring and returns

.. math::

    x = p + \Big( -\frac{|\theta_1 + \theta_2|}{\sqrt 2}, \;
                  \frac{-\theta_1 + \theta_2}{\sqrt 2} \Big).

**Exact likelihood.** With :math:`u = x - f(\theta) - (0.25, 0)` (where :math:`f` is the
shift above), the map :math:`(r, a) \mapsto u` is polar coordinates, whose Jacobian is
:math:`r`, so

.. math::

    p(x \mid \theta) = \frac{\mathcal{N}(|u|; 0.1, 0.01^2)}{\pi |u|}
        \mathbb{1}[u_1 > 0].

**Reference posterior, by inversion.** Because the prior is uniform and :math:`f` is
piecewise linear with unit Jacobian, an exact posterior draw is: draw :math:`(a, r)`
from the simulator's distribution, set :math:`f(\theta) = x - p`, solve for the two
:math:`\theta` (one per sign of :math:`\theta_1 + \theta_2`), pick one at random and
keep it when it lies in the prior box. The two modes come out in their exact
proportions.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_sbi.tasks._common import TASK_NAMES, Task

__all__ = ["NAME", "log_likelihood", *TASK_NAMES]

NAME = "two_moons"
_RADIUS, _RADIUS_SD, _OFFSET = 0.1, 0.01, 0.25


def prior() -> dist.Distribution:
    """The uniform prior on :math:`[-1, 1]^2`, event shape `(2,)`."""
    return dist.Uniform(-torch.ones(2), torch.ones(2)).to_event(1)


def _shift(theta: Tensor) -> Tensor:
    s = math.sqrt(2.0)
    return torch.stack(
        [-(theta[..., 0] + theta[..., 1]).abs() / s, (-theta[..., 0] + theta[..., 1]) / s], -1
    )


def simulator(theta: Tensor) -> Tensor:
    """`theta (n, 2) -> x (n, 2)`.

    Example:
        >>> simulator(torch.zeros(5, 2)).shape
        torch.Size([5, 2])
    """
    n = theta.shape[:-1]
    a = math.pi * (torch.rand(n, dtype=theta.dtype) - 0.5)
    r = _RADIUS + _RADIUS_SD * torch.randn(n, dtype=theta.dtype)
    p = torch.stack([r * torch.cos(a) + _OFFSET, r * torch.sin(a)], -1)
    return p + _shift(theta)


def log_likelihood(x: Tensor, theta: Tensor) -> Tensor:
    r"""The exact :math:`\log p(x \mid \theta)`, `x (*, 2)` and `theta (*, 2)` broadcast."""
    u = x - _shift(theta)
    u = torch.stack([u[..., 0] - _OFFSET, u[..., 1]], -1)
    radius = u.norm(dim=-1)
    log_p = dist.Normal(_RADIUS, _RADIUS_SD).log_prob(radius) - math.log(math.pi) - radius.log()
    return torch.where(u[..., 0] > 0, log_p, torch.full_like(log_p, -math.inf))


def sample_posterior(x: Tensor, num_samples: int, seed: int = 0) -> Tensor:
    """`(num_samples, 2)` exact posterior draws for any `x (2,)`, by inversion."""
    generator = torch.Generator().manual_seed(seed)
    kept, total = [], 0
    s = math.sqrt(2.0)
    while total < num_samples:
        m = 4 * num_samples
        a = math.pi * (torch.rand(m, generator=generator, dtype=x.dtype) - 0.5)
        r = _RADIUS + _RADIUS_SD * torch.randn(m, generator=generator, dtype=x.dtype)
        shift = x - torch.stack([r * torch.cos(a) + _OFFSET, r * torch.sin(a)], -1)
        # shift = (-|t1 + t2| / s, (t2 - t1) / s): |t1 + t2| is known, its sign is not.
        total_sum = -shift[:, 0] * s
        difference = shift[:, 1] * s
        valid = total_sum >= 0
        sign = torch.where(torch.rand(m, generator=generator) < 0.5, -1.0, 1.0).to(x.dtype)
        plus = sign * total_sum
        theta = torch.stack([(plus - difference) / 2, (plus + difference) / 2], -1)
        inside = valid & (theta.abs() <= 1).all(-1)
        kept.append(theta[inside])
        total += int(inside.sum())
        if not valid.any():
            raise ValueError(f"two_moons: no parameter explains the observation {x.tolist()}")
    return torch.cat(kept)[:num_samples]


TASK = Task(NAME, prior, simulator, sample_posterior, stored=True, log_likelihood=log_likelihood)
model, observation, true_parameters, reference_posterior = TASK.interface()
