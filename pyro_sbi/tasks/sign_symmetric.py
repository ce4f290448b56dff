r"""Sign-symmetric: a posterior with four modes of equal mass.

Prior :math:`\theta \sim \mathcal{U}([-2, 2]^2)`; the simulator observes the absolute
values with Gaussian noise,

.. math::

    x = |\theta| + 0.1\, \varepsilon, \qquad \varepsilon \sim \mathcal{N}(0, I_2) ,

so the sign of each parameter is not identified and the posterior has a mode at each
:math:`(\pm|\theta_1|, \pm|\theta_2|)`; modes merge when a :math:`|\theta_j|` is within
a few noise scales of 0. A sampler started in one mode, or an initialisation that finds
one, gets a C2ST near 0.75 or worse; this is the toy multimodal problem used for
mode-finding in SBI (the same sign symmetry makes SLCP's four modes, Papamakarios et al.,
2019).

**Reference posterior.** The exact Gaussian likelihood on the uniform prior's box, drawn
on a zooming grid of 400 × 400 cells with uniform jitter within each cell
(:func:`~pyro_sbi.tasks._reference.grid_posterior`); the four modes come out with their
exact masses.

**Observations.** Observation :math:`i` (1 to 10) has true parameters drawn from the
prior with seed :math:`i` and data simulated with seed :math:`1000 + i`.

References:
    | Sequential neural likelihood: fast likelihood-free inference with autoregressive
      flows (Papamakarios, Sterratt & Murray, 2019), AISTATS
    | https://proceedings.mlr.press/v89/papamakarios19a.html
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_sbi.tasks._common import BROAD_NAMES, Task
from pyro_sbi.tasks._reference import grid_reference

__all__ = [*BROAD_NAMES]

NAME, DIM, X_DIM, KIND = "sign_symmetric", 2, 2, "multimodal posterior"
BOUND, NOISE = 2.0, 0.1


def prior() -> dist.Distribution:
    """Uniform on :math:`[-2, 2]^2`, event shape `(2,)`."""
    return dist.Uniform(-BOUND * torch.ones(DIM), BOUND * torch.ones(DIM)).to_event(1)


def simulator(theta: Tensor) -> Tensor:
    """`theta (n, 2) -> x (n, 2)`.

    Example:
        >>> simulator(prior().sample((3,))).shape
        torch.Size([3, 2])
    """
    return theta.abs() + NOISE * torch.randn_like(theta)


def log_likelihood(x: Tensor, theta: Tensor) -> Tensor:
    r"""The exact :math:`\log p(x \mid \theta)`, `x (*, 2)` and `theta (*, 2)` broadcast."""
    return dist.Normal(theta.abs(), NOISE).log_prob(x).sum(-1)


sample_posterior = grid_reference(log_likelihood, (-BOUND, -BOUND), (BOUND, BOUND), cells=400)


TASK = Task(NAME, prior, simulator, sample_posterior, log_likelihood=log_likelihood)
model, observation, true_parameters, reference_posterior = TASK.interface()
