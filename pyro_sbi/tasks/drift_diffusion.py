r"""The drift-diffusion model (DDM) of two-choice reaction times, exactly: density and simulator.

A decision variable starts at :math:`X_0 = w a` and follows a Wiener process with drift
:math:`v` and unit diffusion,

.. math::

    \mathrm{d}X_t = v \, \mathrm{d}t + \mathrm{d}W_t ,

until it first leaves the interval :math:`(0, a)` at the first-passage time :math:`T`.
The data are :math:`x = (\mathrm{rt}, c)` with :math:`\mathrm{rt} = \tau + T` and the
choice :math:`c = 1` when the upper boundary :math:`a` is hit, :math:`c = 0` for the lower
boundary :math:`0`. The parameters are :math:`\theta = (v, a, w, \tau)`: the drift
:math:`v`, the boundary separation :math:`a > 0`, the relative starting point
:math:`w \in (0, 1)` and the non-decision time :math:`\tau \ge 0`.

**Likelihood.** The density of hitting the lower boundary at time :math:`t` is
(Navarro & Fuss, 2009)

.. math::

    f(t \mid v, a, w) = \frac{1}{a^2} \exp\Big(-v a w - \frac{v^2 t}{2}\Big)
        f\big(u \mid 0, 1, w\big), \qquad u = t / a^2 ,

where the standardised density (no drift, unit boundary) has two series: one that
converges fast for large :math:`u`,

.. math::

    f(u \mid 0, 1, w) = \pi \sum_{k=1}^{\infty} k \, e^{-k^2 \pi^2 u / 2} \sin(k \pi w) ,

and one that converges fast for small :math:`u`,

.. math::

    f(u \mid 0, 1, w) = \frac{1}{\sqrt{2 \pi u^3}} \sum_{k=-\infty}^{\infty}
        (w + 2k) \, e^{-(w + 2k)^2 / (2u)} .

Truncating the large-time series after :math:`K` terms errs by at most :math:`\epsilon`
when :math:`K \ge \sqrt{-2 \log(\pi u \epsilon) / (\pi^2 u)}` and
:math:`K \ge 1 / (\pi \sqrt{u})`; truncating the small-time series to the :math:`K` terms
:math:`k = -\lfloor (K - 1) / 2 \rfloor, \dots, \lceil (K - 1) / 2 \rceil` errs by at
most :math:`\epsilon` when :math:`K \ge 2 + \sqrt{-2 u \log(2 \sqrt{2 \pi u} \, \epsilon)}`
and :math:`K \ge \sqrt{u} + 1`. Each element uses the series that needs fewer terms (at
most 5 for :math:`\epsilon = 10^{-10}`); the small-time sum is taken symmetrically,
:math:`k = -m, \dots, m` with :math:`m = \lceil (K - 1) / 2 \rceil`, one term more than
the bound asks when :math:`K` is even. The upper boundary follows by symmetry,
:math:`v \to -v` and :math:`w \to 1 - w`. Both series are summed in log space with their
leading term factored out, so the density keeps its relative accuracy far in the tails
(the log-density agrees with a 60-digit evaluation to :math:`10^{-12}` for
:math:`u \in [10^{-4}, 100]`, :math:`w \in [0.001, 0.999]`).

Integrated over time, the probability of the upper boundary is

.. math::

    P(c = 1 \mid \theta) = \frac{1 - e^{-2 v a w}}{1 - e^{-2 v a}}
    \quad (= w \text{ when } v = 0) ,

and the mean decision time is :math:`\mathbb{E}[T] = a (P(c = 1) - w) / v`
(:math:`w (1 - w) a^2` when :math:`v = 0`), by optional stopping of :math:`X_t - v t`.

The exact density is :func:`ddm_log_prob` (and :class:`DriftDiffusion`, a Pyro
distribution of `(rt, choice)` pairs); :func:`simulate_ddm` simulates trials. The
benchmark task built on them is :mod:`pyro_sbi.tasks.ddm`.

References:
    | Fast and accurate calculations for first-passage times in Wiener diffusion models
      (Navarro & Fuss, 2009), Journal of Mathematical Psychology 53:222–230
    | https://doi.org/10.1016/j.jmp.2009.02.003

    | A theory of memory retrieval (Ratcliff, 1978), Psychological Review 85:59–108
    | https://doi.org/10.1037/0033-295X.85.2.59

    | A continuity correction for discrete barrier options (Broadie, Glasserman & Kou,
      1997), Mathematical Finance 7:325–348
"""

from __future__ import annotations

__all__ = [
    "NAMES",
    "DriftDiffusion",
    "ddm_log_prob",
    "ddm_upper_prob",
    "simulate_ddm",
]

import math

import torch
from pyro.distributions import TorchDistribution
from torch import Size, Tensor
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all

NAMES = ("v", "a", "w", "tau")
_EPS = 1e-10  # absolute error allowed on the standardised density f(u | 0, 1, w)
_MAX_TERMS = 50
_BLOCK = 8192  # rows simulated together
_CHUNK = 1 << 18  # (rows x steps) simulated per vectorised chunk
_MIN_STEPS, _MAX_STEPS = 16, 4096  # steps per chunk


def simulate_ddm(theta: Tensor, *, dt: float = 1e-4, max_time: float = 20.0) -> Tensor:
    r"""Simulates one trial per parameter vector, by Euler–Maruyama with a bridge correction.

    All rows advance together in chunks of steps, and only the rows still running are
    simulated. For this process (constant drift, unit diffusion) the Euler–Maruyama
    steps are exact at the grid points; what a plain scheme misses are the crossings
    between grid points, which make its boundaries act about :math:`0.58 \sqrt{\mathrm{d}t}`
    wider than they are (Broadie et al., 1997). Here a step whose two endpoints are inside
    :math:`(0, a)` still ends the trial with the Brownian-bridge probability
    :math:`\exp(-2 d_0 d_1 / \mathrm{d}t)`, with :math:`d_0, d_1` the distances of the
    endpoints to the nearer boundary, so the step in which a trial ends is drawn exactly
    (up to crossings less likely than :math:`4 \cdot 10^{-11}` per step, and to steps that
    could reach both boundaries, which need :math:`a` of the order of
    :math:`\sqrt{\mathrm{d}t}`). The decision time is drawn uniformly within that step.

    Measured against the closed forms at 6 parameter vectors across the prior box (its
    centre, corners and edges) with 200,000 trials each, the choice probabilities and
    mean decision times agree within sampling noise (errors below 0.003, and 0.003 s)
    at `dt=1e-3` and even at `dt=1e-2`. The reaction times per choice pass
    Kolmogorov–Smirnov tests against the exact distribution with :math:`10^6` trials at
    `dt=1e-3` (distance below 0.0015); at `dt=1e-2` the fastest decisions are visibly off
    (distance 0.007 when :math:`a = 0.8`). At the default `dt=1e-4`, 100,000 trials from
    the prior take about 3.5 s on one CPU core in float32 (about 2.5 times longer in
    float64). Uses torch's global random number generator, so :func:`torch.manual_seed`
    makes it reproducible.

    Usable as the simulator of a :class:`pyro_sbi.SimulatorDistribution`.

    Arguments:
        theta: `(*, 4)` parameters :math:`(v, a, w, \tau)`.
        dt: the time step.
        max_time: the longest decision time simulated.

    Returns:
        `(*, 2)` reaction times and choices (1.0 for the upper boundary, 0.0 for the
        lower one), in the dtype of `theta`. Rows that have not finished by `max_time`,
        or whose parameters are invalid (:math:`a \le 0`, :math:`w \notin (0, 1)`,
        :math:`\tau < 0` or not finite), are NaN.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> low, high = torch.tensor([-2.0, 0.5, 0.3, 0.2]), torch.tensor([2.0, 2.0, 0.7, 1.8])
        >>> x = simulate_ddm(low + (high - low) * torch.rand(1000, 4))
        >>> x.shape
        torch.Size([1000, 2])
        >>> set(x[:, 1].tolist())
        {0.0, 1.0}
    """
    theta = torch.as_tensor(theta)
    if not theta.is_floating_point():
        theta = theta.to(torch.get_default_dtype())
    if theta.dim() < 1 or theta.shape[-1] != 4:
        raise ValueError(
            f"simulate_ddm: theta must have shape (*, 4) for (v, a, w, tau); got a tensor "
            f"of shape {tuple(theta.shape)}"
        )
    if not (dt > 0 and max_time > 0):
        raise ValueError(f"simulate_ddm: dt and max_time must be positive; got {dt}, {max_time}")
    shape = theta.shape[:-1]
    v, a, w, tau = theta.detach().reshape(-1, 4).unbind(-1)
    x = torch.full((len(v), 2), math.nan, dtype=theta.dtype, device=theta.device)
    valid = torch.isfinite(theta.reshape(-1, 4)).all(-1) & (a > 0) & (w > 0) & (w < 1)
    rows = (valid & (tau >= 0)).nonzero().squeeze(-1)
    for block in rows.split(_BLOCK):
        _simulate_block(x, block, v, a, w, tau, dt, math.ceil(max_time / dt))
    return x.reshape(shape + (2,))


def _simulate_block(
    x: Tensor, rows: Tensor, v: Tensor, a: Tensor, w: Tensor, tau: Tensor, dt: float, steps: int
) -> None:
    """Simulates the trials `rows` until they end or `steps` are done; writes them in `x`."""
    position = (w * a)[rows]
    sqrt_dt = math.sqrt(dt)
    step = 0
    while len(rows) > 0 and step < steps:
        n = len(rows)
        chunk = min(max(_CHUNK // n, _MIN_STEPS), _MAX_STEPS, steps - step)
        a_n = a[rows].unsqueeze(-1)
        increments = torch.randn(n, chunk, dtype=x.dtype, device=x.device)
        increments = increments.mul_(sqrt_dt).add_(v[rows].unsqueeze(-1) * dt)
        path = increments.cumsum(-1).add_(position.unsqueeze(-1))
        before = path - increments
        # Brownian bridge: given its endpoints, a step crosses a boundary at distances
        # d0, d1 with probability exp(-2 d0 d1 / dt) (certainly when d0 d1 <= 0), that is
        # when d0 d1 < E dt / 2 with E ~ Exponential(1); E > 24 is neglected (p < 4e-11)
        lower = before * path
        upper = (a_n - before).mul_(a_n - path)
        closest = torch.minimum(lower, upper)
        near = (closest < 12 * dt).nonzero(as_tuple=True)
        uniform = torch.rand(len(near[0]), dtype=x.dtype, device=x.device)
        hit = torch.zeros_like(closest, dtype=torch.bool)
        hit[near] = closest[near] < -dt / 2 * uniform.log()
        first = hit.byte().argmax(-1, keepdim=True)
        done = hit.gather(-1, first).squeeze(-1)
        first = first[done]
        finished = rows[done]
        within = torch.rand(len(finished), dtype=x.dtype, device=x.device)
        x[finished, 0] = tau[finished] + (step + within + first.squeeze(-1).to(x.dtype)) * dt
        choice = upper[done].gather(-1, first) < lower[done].gather(-1, first)
        x[finished, 1] = choice.squeeze(-1).to(x.dtype)
        position = path[~done, -1]
        rows = rows[~done]
        step += chunk


def ddm_upper_prob(theta: Tensor) -> Tensor:
    r"""Probability :math:`P(c = 1 \mid \theta)` of hitting the upper boundary first.

    Arguments:
        theta: `(*, 4)` parameters :math:`(v, a, w, \tau)`.

    Returns:
        `(*)` probabilities, differentiable in `theta`.

    Example:
        >>> ddm_upper_prob(torch.tensor([[0.0, 1.0, 0.3, 0.5], [1.0, 1.0, 0.5, 0.5]]))
        tensor([0.3000, 0.7311])
    """
    v, a, w, _ = theta.unbind(-1)
    zero = v * a == 0
    # with s = |v a|, written so that nothing overflows for large |v a|
    s = torch.where(zero, torch.ones_like(v), v * a).abs()
    p = torch.expm1(-2 * s * w) / torch.expm1(-2 * s)
    p = torch.where(v * a > 0, p, p * torch.exp(-2 * s * (1 - w)))
    return torch.where(zero, w, p)


def ddm_log_prob(x: Tensor, theta: Tensor) -> Tensor:
    r"""The exact log-density :math:`\log p(\mathrm{rt}, c \mid \theta)` of one trial.

    Navarro & Fuss's series (see the module's description) with an error below
    :math:`10^{-10}` on the standardised density, differentiable in `theta` (and in the
    reaction time). Reaction times at or before :math:`\tau` have density zero: their
    log-density is :math:`-\infty`, with a zero gradient.

    Arguments:
        x: `(*, 2)` reaction times and choices (1 for the upper boundary, 0 for the lower).
        theta: `(*, 4)` parameters :math:`(v, a, w, \tau)`; broadcast against `x`.

    Returns:
        `(*)` log-densities over the broadcast batch shape.

    Example:
        >>> theta = torch.tensor([0.5, 1.0, 0.5, 0.3])
        >>> x = torch.tensor([[0.2, 1.0], [0.6, 1.0], [0.6, 0.0]])
        >>> ddm_log_prob(x, theta)
        tensor([   -inf, -0.1232, -0.6232])
    """
    rt, choice = x.unbind(-1)
    v, a, w, tau = theta.unbind(-1)
    rt, choice, v, a, w, tau = torch.broadcast_tensors(rt, choice, v, a, w, tau)
    upper = choice > 0.5
    v = torch.where(upper, -v, v)
    w = torch.where(upper, 1 - w, w)
    t = rt - tau
    impossible = (t <= 0) | t.isposinf()
    t_safe = torch.where(impossible, torch.ones_like(t), t)
    log_f = -2 * a.log() - v * a * w - v**2 * t_safe / 2 + _log_standard(t_safe / a**2, w)
    log_f = torch.where(impossible, torch.full_like(log_f, -math.inf), log_f)
    return torch.where(choice.isnan(), choice, log_f)


def _log_standard(u: Tensor, w: Tensor) -> Tensor:
    r""":math:`\log f(u \mid 0, 1, w)`, each element by the series with fewer terms."""
    with torch.no_grad():
        k_small, k_large = _small_terms(u), _large_terms(u)
        small = k_small < k_large
        # NaN inputs give NaN densities, through the large-time branch
        n_small = int(k_small[small].max().ceil()) if small.any() else 0
        n_large = (
            int(k_large[~small].nan_to_num(1).max().ceil().clamp(min=1)) if not small.all() else 0
        )
    # each series is evaluated at a harmless u where it is not used, so that no NaN or
    # infinite gradient comes through the unused branch of `torch.where`
    log_f = torch.zeros_like(u)
    if n_small > 0:
        u_small = torch.where(small, u, torch.full_like(u, 0.1))
        log_f = torch.where(small, _log_small_time(u_small, w, min(n_small, _MAX_TERMS)), log_f)
    if n_large > 0:
        u_large = torch.where(small, torch.ones_like(u), u)
        log_f = torch.where(small, log_f, _log_large_time(u_large, w, min(n_large, _MAX_TERMS)))
    return log_f


def _small_terms(u: Tensor, eps: float = _EPS) -> Tensor:
    """Terms needed by the small-time series for an error below `eps` (Navarro & Fuss)."""
    c = 2 * torch.sqrt(2 * math.pi * u) * eps
    k = 2 + torch.sqrt(-2 * u * c.clamp(max=1).log())
    return torch.maximum(k, u.sqrt() + 1)


def _large_terms(u: Tensor, eps: float = _EPS) -> Tensor:
    """Terms needed by the large-time series for an error below `eps` (Navarro & Fuss)."""
    c = math.pi * u * eps
    k = torch.sqrt(-2 * c.clamp(max=1).log() / (math.pi**2 * u))
    return torch.maximum(k, 1 / (math.pi * u.sqrt()))


def _log_small_time(u: Tensor, w: Tensor, n: int) -> Tensor:
    r"""Small-time series with at least `n` terms, :math:`k = 0` factored out.

    The terms :math:`k = -m, \dots, m` with :math:`m = \max(\lceil (n - 1) / 2 \rceil, 1)`:
    the paper's :math:`n` terms and one more when :math:`n` is even, so that the image
    terms :math:`k = \pm 1` are both kept and the error stays small relative to the
    density even where the density itself is far below the absolute bound.
    """
    m = max(n // 2, 1)
    k = torch.arange(-m, m + 1, dtype=u.dtype, device=u.device)
    u_, w_ = u.unsqueeze(-1), w.unsqueeze(-1)
    terms = (w_ + 2 * k) * torch.exp(-2 * k * (k + w_) / u_)
    log_sum = terms.sum(-1).clamp(min=torch.finfo(u.dtype).tiny).log()
    return log_sum - w**2 / (2 * u) - 0.5 * math.log(2 * math.pi) - 1.5 * u.log()


def _log_large_time(u: Tensor, w: Tensor, n: int) -> Tensor:
    r"""Large-time series with `n` terms, :math:`k = 1` factored out."""
    k = torch.arange(1, n + 1, dtype=u.dtype, device=u.device)
    u_, w_ = u.unsqueeze(-1), w.unsqueeze(-1)
    terms = k * torch.exp(-(k**2 - 1) * math.pi**2 * u_ / 2) * torch.sin(k * math.pi * w_)
    log_sum = terms.sum(-1).clamp(min=torch.finfo(u.dtype).tiny).log()
    return log_sum + math.log(math.pi) - math.pi**2 * u / 2


class _ReactionTimeChoice(constraints.Constraint):
    """Pairs `(rt, choice)` with a positive reaction time and a choice in {0, 1}."""

    event_dim = 1
    is_discrete = False

    def check(self, value: Tensor) -> Tensor:
        """Whether each `(*, 2)` pair is in the support; `(*)` booleans."""
        rt, choice = value.unbind(-1)
        return (rt > 0) & ((choice == 0) | (choice == 1))


class DriftDiffusion(TorchDistribution):
    r"""The drift-diffusion model's distribution of `(rt, choice)` pairs, exactly.

    :meth:`log_prob` is the series of Navarro & Fuss (2009), :func:`ddm_log_prob`;
    :meth:`sample` runs :func:`simulate_ddm`. Reaction times at or before :math:`\tau`
    have log-density :math:`-\infty`, so an MCMC chain must start with :math:`\tau` below
    the fastest observed reaction time: Pyro's default initialisation (the middle of the
    prior, jittered) rarely does when reaction times are short; `init_to_sample` or a
    given initial value do.

    Arguments:
        v: `(*)` drifts.
        a: `(*)` boundary separations, positive.
        w: `(*)` relative starting points in :math:`(0, 1)`.
        tau: `(*)` non-decision times, non-negative.
        validate_args: as for any torch distribution.

    Example:
        >>> import pyro
        >>> import pyro.distributions as dist
        >>> def model(x_o=None):
        ...     v = pyro.sample("v", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("trials", 20):
        ...         return pyro.sample("x", DriftDiffusion(v, 1.0, 0.5, 0.3), obs=x_o)
        >>> _ = torch.manual_seed(0)
        >>> model().shape
        torch.Size([20, 2])
        >>> d = DriftDiffusion(torch.zeros(3), 1.0, 0.5, 0.3)
        >>> d.batch_shape, d.event_shape
        (torch.Size([3]), torch.Size([2]))
        >>> d.log_prob(torch.tensor([0.6, 1.0])).shape
        torch.Size([3])
    """

    arg_constraints = {
        "v": constraints.real,
        "a": constraints.positive,
        "w": constraints.unit_interval,
        "tau": constraints.nonnegative,
    }
    support = _ReactionTimeChoice()
    has_rsample = False

    def __init__(self, v, a, w, tau, validate_args: bool | None = None) -> None:
        self.v, self.a, self.w, self.tau = broadcast_all(v, a, w, tau)
        super().__init__(self.v.shape, Size([2]), validate_args=validate_args)

    @classmethod
    def infer_shapes(cls, v, a, w, tau) -> tuple[Size, Size]:
        """Batch shape from the parameters' shapes; the event shape is `(2,)`."""
        return torch.broadcast_shapes(v, a, w, tau), Size([2])

    @property
    def theta(self) -> Tensor:
        r"""`(*batch_shape, 4)` parameters :math:`(v, a, w, \tau)`."""
        return torch.stack([self.v, self.a, self.w, self.tau], dim=-1)

    def expand(self, batch_shape, _instance=None) -> DriftDiffusion:
        """Broadcasts the parameters to `batch_shape` without copying them."""
        new = self._get_checked_instance(DriftDiffusion, _instance)
        batch_shape = Size(batch_shape)
        for name in NAMES:
            setattr(new, name, getattr(self, name).expand(batch_shape))
        super(DriftDiffusion, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value: Tensor) -> Tensor:
        """Exact log-density of `(*, 2)` pairs; `*` broadcasts with `batch_shape`."""
        if self._validate_args:
            self._validate_sample(value)
        return ddm_log_prob(value, self.theta)

    def sample(self, sample_shape: Size = Size()) -> Tensor:  # noqa: B008
        """Simulated `(*sample_shape, *batch_shape, 2)` pairs (NaN past 20 s of decision)."""
        shape = Size(sample_shape) + self.batch_shape
        with torch.no_grad():
            return simulate_ddm(self.theta.expand(shape + (4,)))
