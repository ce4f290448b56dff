r"""A linear-Gaussian state-space model written as a Pyro program: the joint-score task.

A latent AR(1) path observed with noise, ten steps:

.. math::

    z_1 \sim \mathcal{N}\Big(0, \frac{s^2}{1 - a^2}\Big), \qquad
    z_t = a \, z_{t-1} + s \, \epsilon_t, \qquad
    x_t = z_t + \sigma \, \eta_t , \qquad t = 1, \dots, 10,

with :math:`\epsilon_t, \eta_t \sim \mathcal{N}(0, 1)`, :math:`\sigma = 0.5` known and
the parameters :math:`\theta = (a, s)`, the persistence and the size of the innovations,
under the uniform prior on :math:`[0, 0.9] \times [0.2, 1.5]` (the path starts in its
stationary law). The simulator is a :class:`~pyro_sbi.PyroSimulator`: every
:math:`z_t` and :math:`x_t` is a sample site, so each simulation comes with its joint
score :math:`\nabla_\theta \log p(x, z \mid \theta)` (the sum over the steps of the
AR(1) terms; the observation sites do not involve :math:`\theta`). An estimator only sees
:math:`x` and, with `augment="score"`, that score; the path is marginalised by nobody.

**Reference posterior.** The marginal of the path is Gaussian, so the likelihood is
exact: :math:`x \sim \mathcal{N}(0, \Sigma)` with
:math:`\Sigma_{ij} = s^2 a^{|i - j|} / (1 - a^2) + \sigma^2 \delta_{ij}`, the density
the Kalman filter computes step by step (its prediction-error decomposition). The
posterior is drawn on a zooming grid over the prior's box
(:func:`~pyro_sbi.tasks._reference.grid_posterior`).

**Observations.** Observation :math:`i` (1 to 10) has true parameters drawn from the
prior with seed :math:`i` and data simulated with seed :math:`1000 + i`.

References:
    | Time Series Analysis by State Space Methods (Durbin & Koopman, 2012), Oxford
      University Press, ch. 7 (the likelihood by the Kalman filter)

    | Mining gold from implicit models to improve likelihood-free inference
      (Brehmer, Louppe, Pavez & Cranmer, 2020)
    | https://doi.org/10.1073/pnas.1915980117
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_sbi.program import PyroSimulator
from pyro_sbi.tasks._common import BROAD_NAMES, Task, uniform_prior
from pyro_sbi.tasks._reference import grid_reference

__all__ = ["NOISE", "program", *BROAD_NAMES]

NAME, DIM, X_DIM, KIND = "state_space", 2, 10, "latent path, joint score"
LOW, HIGH = (0.0, 0.2), (0.9, 1.5)
NOISE = 0.5
prior = uniform_prior(LOW, HIGH)


def program(theta: Tensor) -> Tensor:
    """The simulator as a Pyro program: `theta (n, 2) -> x (n, 10)`, one path per row.

    Example:
        >>> program(torch.tensor([[0.5, 1.0]])).shape
        torch.Size([1, 10])
    """
    a, s = theta[:, 0], theta[:, 1]
    with pyro.plate("rows", len(theta)):
        z = pyro.sample("z_0", dist.Normal(torch.zeros_like(a), s / (1 - a**2).sqrt()))
        xs = [pyro.sample("x_0", dist.Normal(z, NOISE))]
        for t in range(1, X_DIM):
            z = pyro.sample(f"z_{t}", dist.Normal(a * z, s))
            xs.append(pyro.sample(f"x_{t}", dist.Normal(z, NOISE)))
    return torch.stack(xs, -1)


simulator = PyroSimulator(program)
"""`theta (n, 2) -> x (n, 10)`, the :class:`~pyro_sbi.PyroSimulator` of :func:`program`."""


def log_likelihood(x: Tensor, theta: Tensor) -> Tensor:
    r"""The exact :math:`\log p(x \mid \theta)`, `x (*, 10)` and `theta (*, 2)` broadcast."""
    a, s = theta[..., 0, None, None], theta[..., 1, None, None]
    steps = torch.arange(X_DIM, dtype=theta.dtype)
    lag = (steps[:, None] - steps[None, :]).abs()
    covariance = s**2 * a**lag / (1 - a**2) + NOISE**2 * torch.eye(X_DIM, dtype=theta.dtype)
    zero = torch.zeros(X_DIM, dtype=theta.dtype)
    return dist.MultivariateNormal(zero, covariance).log_prob(x)


sample_posterior = grid_reference(log_likelihood, LOW, HIGH, cells=200)


TASK = Task(NAME, prior, simulator, sample_posterior, log_likelihood=log_likelihood)
model, observation, true_parameters, reference_posterior = TASK.interface()
