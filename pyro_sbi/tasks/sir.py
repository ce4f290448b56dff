r"""A stochastic SIR epidemic (chain binomial): daily counts of infections and recoveries.

Parameters :math:`\theta = (\beta, \gamma)`, the contact rate and the recovery rate per
day, with prior :math:`\beta \sim \mathcal{U}(0.5, 3)`, :math:`\gamma \sim
\mathcal{U}(0.05, 0.5)`. In a population of :math:`N = 1000` that starts with
:math:`I_0 = 10` infected and :math:`S_0 = 990` susceptible, each day :math:`t = 0,
\dots, 9` draws

.. math::

    \Delta I_t \sim \mathrm{Binomial}\big(S_t, 1 - e^{-\beta I_t / N}\big), \qquad
    \Delta R_t \sim \mathrm{Binomial}\big(I_t, 1 - e^{-\gamma}\big),

then :math:`S_{t+1} = S_t - \Delta I_t` and :math:`I_{t+1} = I_t + \Delta I_t - \Delta
R_t`: each susceptible escapes infection by each infected independently, each infected
recovers with a constant daily probability (the chain-binomial, or discrete-time
stochastic SIR, model of Reed–Frost type; Bailey, 1975, ch. 14; Allen, 2008). The data
are the twenty counts :math:`x = (\Delta I_0, \dots, \Delta I_9, \Delta R_0, \dots,
\Delta R_9)`.

**Exact likelihood.** The counts determine :math:`S_t` and :math:`I_t`, so the
likelihood is the product of the twenty binomial probabilities (unlike sbibm's SIR, an
ODE observed through binomial noise, this one has no latent path).

**Reference posterior.** That likelihood on the uniform prior's box, drawn on a zooming
grid of 300 × 300 cells with uniform jitter within each cell
(:func:`~pyro_sbi.tasks._reference.grid_posterior`).

**Observations.** Observation :math:`i` (1 to 10) has true parameters drawn from the
prior with seed :math:`i` and data simulated with seed :math:`1000 + i`.

References:
    | The Mathematical Theory of Infectious Diseases and its Applications, 2nd edition
      (Bailey, 1975), Griffin, chapter 14
    | An introduction to stochastic epidemic models (Allen, 2008), in Mathematical
      Epidemiology, Lecture Notes in Mathematics 1945:81–130
    | https://doi.org/10.1007/978-3-540-78911-6_3
"""

from __future__ import annotations

import torch
from torch import Tensor

from pyro_sbi.tasks._common import BROAD_NAMES, Task, uniform_prior
from pyro_sbi.tasks._reference import grid_reference

__all__ = [*BROAD_NAMES]

NAME, DIM, KIND = "sir", 2, "counts"
LOW, HIGH = (0.5, 0.05), (3.0, 0.5)
prior = uniform_prior(LOW, HIGH)
POPULATION, INFECTED, DAYS = 1000, 10, 10
X_DIM = 2 * DAYS


def simulator(theta: Tensor) -> Tensor:
    """`theta (n, 2) -> x (n, 20)`: daily new infections, then daily recoveries."""
    beta, gamma = theta.to(torch.float64).unbind(-1)
    s = torch.full_like(beta, POPULATION - INFECTED)
    i = torch.full_like(beta, INFECTED)
    recover = -torch.expm1(-gamma)
    infections, recoveries = [], []
    for _ in range(DAYS):
        new = torch.binomial(s, -torch.expm1(-beta * i / POPULATION))
        gone = torch.binomial(i, recover)
        s, i = s - new, i + new - gone
        infections.append(new)
        recoveries.append(gone)
    return torch.stack(infections + recoveries, -1).to(theta.dtype)


def _log_binomial(k: Tensor, n: Tensor, log_p: Tensor, log_q: Tensor) -> Tensor:
    """The log Binomial(k; n, p), given log p and log(1 - p); -inf where k is not in 0..n."""
    terms = torch.where(k > 0, k * log_p, 0.0) + torch.where(n - k > 0, (n - k) * log_q, 0.0)
    log_c = torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
    inside = (k >= 0) & (k <= n)
    return torch.where(inside, log_c + terms, -torch.inf)


def log_likelihood(x: Tensor, theta: Tensor) -> Tensor:
    r"""The exact :math:`\log p(x \mid \theta)`, `x (*, 20)` and `theta (*, 2)` broadcast."""
    new, gone = x[..., :DAYS], x[..., DAYS:]
    s = POPULATION - INFECTED - torch.cumsum(new, -1) + new  # S_t before day t
    i = INFECTED + torch.cumsum(new - gone, -1) - (new - gone)  # I_t before day t
    beta, gamma = theta[..., :1], theta[..., 1:]
    rate = beta * i / POPULATION
    log_infect = _log_binomial(new, s, torch.log(-torch.expm1(-rate)), -rate)
    log_recover = _log_binomial(gone, i, torch.log(-torch.expm1(-gamma)), -gamma)
    return (log_infect + log_recover).sum(-1)


sample_posterior = grid_reference(log_likelihood, LOW, HIGH, cells=300)


TASK = Task(NAME, prior, simulator, sample_posterior, log_likelihood=log_likelihood)
model, observation, true_parameters, reference_posterior = TASK.interface()
