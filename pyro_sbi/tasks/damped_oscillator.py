r"""A damped harmonic oscillator: an ODE observed with noise at ten times.

Parameters :math:`\theta = (\omega, \zeta, y_0)`: the natural frequency, the damping
ratio and the initial displacement, with prior :math:`\omega \sim \mathcal{U}(0.5, 2.5)`,
:math:`\zeta \sim \mathcal{U}(0, 0.5)`, :math:`y_0 \sim \mathcal{U}(0.5, 2)`. The state
:math:`u = (y, \dot y)` solves

.. math::

    \dot u = A u, \qquad A = \begin{pmatrix} 0 & 1 \\ -\omega^2 & -2 \zeta \omega
    \end{pmatrix}, \qquad u(0) = (y_0, 0) ,

the linear oscillator of mechanics and circuits (e.g. Strogatz, 2015, §5.1), integrated
by the classical fourth-order Runge–Kutta scheme with the fixed step :math:`h = 0.05`
(:func:`solve`); the data are the displacements at :math:`t = 1, \dots, 10` with
Gaussian noise, :math:`x_j = y(t_j) + 0.1\, \varepsilon_j`.

**Exact likelihood.** The simulator's ODE solution is the RK4 solution, a deterministic
and differentiable function of :math:`\theta`, so the likelihood is Gaussian around it.
For a linear ODE one RK4 step is the matrix :math:`R = I + hA + (hA)^2/2 + (hA)^3/6 +
(hA)^4/24`, and the solution at :math:`t_j` is :math:`R^{20 j} u(0)`: the likelihood
computes these powers by squaring (:func:`solve_linear`), the same numbers as the
step-by-step scheme up to rounding, 100 times faster.

**Reference posterior.** The solution is proportional to :math:`y_0`, :math:`y(t_j) = y_0
g_j(\omega, \zeta)`, so given :math:`(\omega, \zeta)` the likelihood is Gaussian in
:math:`y_0` with mean :math:`m = g \cdot x / |g|^2` and standard deviation :math:`s =
0.1 / |g|`, and :math:`y_0` integrates out in closed form over its uniform prior:

.. math::

    p(x \mid \omega, \zeta) \propto \frac{s}{|b - a|}
        \exp\Big(-\frac{|x|^2 - (g \cdot x)^2 / |g|^2}{2 \cdot 0.1^2}\Big)
        \Big[\Phi\Big(\frac{b - m}{s}\Big) - \Phi\Big(\frac{a - m}{s}\Big)\Big] ,

with :math:`[a, b] = [0.5, 2]`. :math:`(\omega, \zeta)` are drawn from that marginal on
a grid of 200 × 200 cells refined where the posterior is narrow, with uniform jitter
within each cell (:func:`~pyro_sbi.tasks._reference.grid_posterior`), then :math:`y_0`
from its truncated normal conditional, by inversion. (A 3-D grid over all three needs
more than :math:`10^7` points on some observations: the posterior is thin in
:math:`\omega` and broad in :math:`y_0`.)

**Observations.** Observation :math:`i` (1 to 10) has true parameters drawn from the
prior with seed :math:`i` and data simulated with seed :math:`1000 + i`.

References:
    | Nonlinear Dynamics and Chaos, 2nd edition (Strogatz, 2015), Westview Press, §5.1
    | Solving Ordinary Differential Equations I, 2nd edition (Hairer, Nørsett & Wanner,
      1993), Springer, §II.1
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_sbi.tasks._common import BROAD_NAMES, Task, uniform_prior
from pyro_sbi.tasks._reference import grid_posterior

__all__ = ["solve", "solve_linear", *BROAD_NAMES]

NAME, DIM, X_DIM, KIND = "damped_oscillator", 3, 10, "ODE with observation noise"
LOW, HIGH = (0.5, 0.0, 0.5), (2.5, 0.5, 2.0)
prior = uniform_prior(LOW, HIGH)
STEP, STEPS_PER_TIME, NOISE = 0.05, 20, 0.1


def solve(theta: Tensor) -> Tensor:
    """`theta (*, 3) -> (*, 10)` displacements at t = 1..10, by RK4 step by step."""
    omega, zeta, y0 = theta.unbind(-1)

    def f(y, v):
        return v, -(omega**2) * y - 2 * zeta * omega * v

    y, v = y0, torch.zeros_like(y0)
    h = STEP
    out = []
    for _ in range(X_DIM):
        for _ in range(STEPS_PER_TIME):
            k1 = f(y, v)
            k2 = f(y + h / 2 * k1[0], v + h / 2 * k1[1])
            k3 = f(y + h / 2 * k2[0], v + h / 2 * k2[1])
            k4 = f(y + h * k3[0], v + h * k3[1])
            y = y + h / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
            v = v + h / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
        out.append(y)
    return torch.stack(out, -1)


def solve_linear(theta: Tensor) -> Tensor:
    """The same RK4 solution as :func:`solve`, `(*, 3) -> (*, 10)`, by matrix powers."""
    omega, zeta, y0 = theta.unbind(-1)
    zero, one = torch.zeros_like(omega), torch.ones_like(omega)
    ha = STEP * torch.stack(
        [torch.stack([zero, one], -1), torch.stack([-(omega**2), -2 * zeta * omega], -1)], -2
    )
    eye = torch.eye(2, dtype=theta.dtype).expand(ha.shape)
    ha2 = ha @ ha
    step = eye + ha + ha2 / 2 + ha2 @ ha / 6 + ha2 @ ha2 / 24
    power, jump, n = eye, step, STEPS_PER_TIME  # jump = step ** STEPS_PER_TIME
    while n:
        if n & 1:
            power = power @ jump
        jump, n = jump @ jump, n >> 1
    u = torch.stack([y0, zero], -1).unsqueeze(-1)
    out = []
    for _ in range(X_DIM):
        u = power @ u
        out.append(u[..., 0, 0])
    return torch.stack(out, -1)


def simulator(theta: Tensor) -> Tensor:
    """`theta (n, 3) -> x (n, 10)`: RK4 displacements plus Gaussian noise."""
    y = solve(theta)
    return y + NOISE * torch.randn_like(y)


def log_likelihood(x: Tensor, theta: Tensor) -> Tensor:
    r"""The exact :math:`\log p(x \mid \theta)`, `x (*, 10)` and `theta (*, 3)` broadcast."""
    return dist.Normal(solve_linear(theta), NOISE).log_prob(x).sum(-1)


def _log_normal_mass(alpha: Tensor, beta: Tensor) -> Tensor:
    """log(Phi(beta) - Phi(alpha)) for alpha < beta, accurate in both tails."""
    flip = alpha > 0  # both in the upper tail: use the mirrored, small, probabilities
    lo, hi = torch.where(flip, -beta, alpha), torch.where(flip, -alpha, beta)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log1p(-torch.exp(log_lo - log_hi).clamp(max=1 - 1e-16))


def _displacement_fit(x: Tensor, frequency_damping: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The y0-marginal log-likelihood (up to a constant), and y0's conditional mean and sd."""
    ones = torch.ones_like(frequency_damping[..., :1])
    g = solve_linear(torch.cat([frequency_damping, ones], -1))
    gg, gx = (g * g).sum(-1), (g * x).sum(-1)
    mean, sd = gx / gg, NOISE / gg.sqrt()
    a, b = LOW[2], HIGH[2]
    log_p = -((x * x).sum(-1) - gx**2 / gg) / (2 * NOISE**2) + sd.log()
    return log_p + _log_normal_mass((a - mean) / sd, (b - mean) / sd), mean, sd


def sample_posterior(x: Tensor, num_samples: int, seed: int = 0) -> Tensor:
    """`(num_samples, 3)` exact posterior draws for any `x (10,)` (see the module docs)."""
    x = x.to(torch.float64)
    pairs = grid_posterior(lambda theta: _displacement_fit(x, theta)[0], LOW[:2], HIGH[:2],
                           num_samples, seed=seed, cells=200).to(torch.float64)  # fmt: skip
    _, mean, sd = _displacement_fit(x, pairs)
    normal = torch.distributions.Normal(torch.zeros((), dtype=torch.float64), 1.0)
    low, high = normal.cdf((LOW[2] - mean) / sd), normal.cdf((HIGH[2] - mean) / sd)
    generator = torch.Generator().manual_seed(seed + 1)
    u = low + (high - low) * torch.rand(num_samples, generator=generator, dtype=torch.float64)
    y0 = (mean + sd * torch.special.ndtri(u.clamp(1e-300, 1 - 1e-16))).clamp(LOW[2], HIGH[2])
    return torch.cat([pairs, y0[:, None]], -1).to(torch.get_default_dtype())


TASK = Task(NAME, prior, simulator, sample_posterior, log_likelihood=log_likelihood)
model, observation, true_parameters, reference_posterior = TASK.interface()
