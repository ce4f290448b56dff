r"""SLCP, "simple likelihood, complex posterior" (Papamakarios et al. 2019; sbibm).

Prior :math:`\theta \sim \mathcal{U}([-3, 3]^5)`. The simulator draws four i.i.d. points
:math:`y_k \sim \mathcal{N}(m, S)`, :math:`k = 1, \dots, 4`, and returns them flattened,
:math:`x \in \mathbb{R}^8`, where

.. math::

    m = (\theta_1, \theta_2), \quad s_1 = \theta_3^2, \quad s_2 = \theta_4^2, \quad
    \rho = \tanh \theta_5, \quad
    S = \begin{pmatrix} s_1^2 & \rho s_1 s_2 \\ \rho s_1 s_2 & s_2^2 \end{pmatrix}
        + 10^{-6} I .

The likelihood is Gaussian, but only :math:`\theta_3^2` and :math:`\theta_4^2` enter it,
so the posterior has four modes, one per sign of :math:`\theta_3` and :math:`\theta_4`,
with equal mass (the prior is symmetric too).

**Reference posterior.** NUTS on the exact likelihood, restricted to
:math:`\theta_3, \theta_4 > 0` where the posterior has one mode, with several chains
started by importance resampling of prior draws; each draw is then given random signs
of :math:`\theta_3` and :math:`\theta_4`. The symmetry makes the four modes' weights
exactly equal, instead of leaving them to chains that rarely cross between modes.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_sbi.tasks._common import TASK_NAMES, Task

__all__ = ["NAME", "log_likelihood", "sample_posterior", *TASK_NAMES]

NAME, BOUND, POINTS = "slcp", 3.0, 4


def prior() -> dist.Distribution:
    """The uniform prior on :math:`[-3, 3]^5`, event shape `(5,)`."""
    return dist.Uniform(-BOUND * torch.ones(5), BOUND * torch.ones(5)).to_event(1)


def _gaussian(theta: Tensor) -> dist.MultivariateNormal:
    s1, s2 = theta[..., 2] ** 2, theta[..., 3] ** 2
    rho = torch.tanh(theta[..., 4])
    covariance = torch.stack(
        [torch.stack([s1**2, rho * s1 * s2], -1), torch.stack([rho * s1 * s2, s2**2], -1)], -2
    ) + 1e-6 * torch.eye(2, dtype=theta.dtype)
    return dist.MultivariateNormal(theta[..., :2], covariance_matrix=covariance)


def simulator(theta: Tensor) -> Tensor:
    """`theta (n, 5) -> x (n, 8)`: four 2-D points, flattened.

    Example:
        >>> simulator(torch.ones(3, 5)).shape
        torch.Size([3, 8])
    """
    points = _gaussian(theta).sample((POINTS,))  # (4, n, 2)
    return points.movedim(0, -2).reshape(*theta.shape[:-1], 2 * POINTS)


def log_likelihood(x: Tensor, theta: Tensor) -> Tensor:
    r"""The exact :math:`\log p(x \mid \theta)`, `x (*, 8)` and `theta (*, 5)` broadcast."""
    batch = torch.broadcast_shapes(x.shape[:-1], theta.shape[:-1])
    points = x.expand(batch + x.shape[-1:]).reshape(*batch, POINTS, 2).movedim(-2, 0)
    return _gaussian(theta.expand(batch + theta.shape[-1:])).log_prob(points).sum(0)


def sample_posterior(
    x: Tensor, num_samples: int, *, chains: int = 4, warmup_steps: int = 500, seed: int = 0
) -> Tensor:
    """`(num_samples, 5)` posterior draws for any `x (8,)` (see the module docs)."""
    from pyro.infer import MCMC, NUTS
    from pyro.infer.autoguide.initialization import init_to_value

    low = torch.tensor([-BOUND, -BOUND, 0.0, 0.0, -BOUND], dtype=x.dtype)
    high = torch.full((5,), BOUND, dtype=x.dtype)

    def sector(x):
        theta = pyro.sample("theta", dist.Uniform(low, high).to_event(1))
        pyro.factor("x", log_likelihood(x, theta))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        proposals = low + (high - low) * torch.rand(200_000, 5, dtype=x.dtype)
        weights = torch.softmax(log_likelihood(x, proposals), 0)
        starts = proposals[torch.multinomial(weights, chains, replacement=True)]
        per_chain = -(-num_samples // chains)
        draws = []
        for start in starts:
            kernel = NUTS(sector, init_strategy=init_to_value(values={"theta": start}))
            mcmc = MCMC(kernel, num_samples=per_chain, warmup_steps=warmup_steps,
                        disable_progbar=True)  # fmt: skip
            mcmc.run(x)
            draws.append(mcmc.get_samples()["theta"])
        theta = torch.cat(draws)[:num_samples]
        signs = torch.where(torch.rand(len(theta), 2) < 0.5, -1.0, 1.0).to(x.dtype)
    theta = theta.clone()
    theta[:, 2:4] = theta[:, 2:4] * signs
    return theta


TASK = Task(NAME, prior, simulator, sample_posterior, stored=True, log_likelihood=log_likelihood)
model, observation, true_parameters, reference_posterior = TASK.interface()
