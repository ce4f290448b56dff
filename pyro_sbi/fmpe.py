r"""Flow-matching posterior estimation (FMPE).

A conditional vector field :math:`v_\phi(\theta_t, t, x)` defines, for each :math:`x`,
an ordinary differential equation :math:`\mathrm{d}\theta_t / \mathrm{d}t =
v_\phi(\theta_t, t, x)` on :math:`t \in [0, 1]`, whose flow carries the base
:math:`\mathcal{N}(0, I)` at :math:`t = 1` to the posterior at :math:`t = 0`. It is
trained by regression, without solving the equation.

**The path.** For a pair :math:`\theta \sim p(\theta)`, :math:`x \sim p(x \mid \theta)`
and noise :math:`\epsilon \sim \mathcal{N}(0, I)`, the conditional optimal-transport
path (Lipman et al., 2023) is the straight line

.. math::

    \theta_t = (1 - t)\, \theta + (\sigma + (1 - \sigma)\, t)\, \epsilon ,
    \qquad u = \frac{\mathrm{d}\theta_t}{\mathrm{d}t} = (1 - \sigma)\, \epsilon - \theta ,

from :math:`\theta_0 \sim \mathcal{N}(\theta, \sigma^2 I)` to :math:`\theta_1 =
\epsilon`, with a small :math:`\sigma` (:data:`SIGMA_MIN`). Given :math:`x`, the
marginal :math:`p_t(\theta_t \mid x) = \int \mathcal{N}(\theta_t; (1 - t)\theta,
\beta_t^2 I)\, p(\theta \mid x)\, \mathrm{d}\theta` (:math:`\beta_t = \sigma + (1 -
\sigma) t`) runs from :math:`p(\theta \mid x) * \mathcal{N}(0, \sigma^2 I)` at
:math:`t = 0` to :math:`\mathcal{N}(0, I)` at :math:`t = 1`.

**The marginal field moves the marginal path.** Given :math:`\theta`, the conditional
path :math:`p_t(\theta_t \mid \theta) = \mathcal{N}((1 - t)\theta, \beta_t^2 I)` is
moved by the field :math:`u_t(\theta_t \mid \theta) = (1 - \sigma)(\theta_t - (1 - t)
\theta) / \beta_t - \theta` (the velocity :math:`u` above, with :math:`\epsilon` read
off :math:`\theta_t`): it satisfies the continuity equation :math:`\partial_t p_t(\cdot
\mid \theta) + \nabla \cdot \big(p_t(\cdot \mid \theta)\, u_t(\cdot \mid \theta)\big) =
0`. The equation is linear in :math:`p_t` and in the flux :math:`p_t u_t`, so
integrating it against :math:`p(\theta \mid x)\, \mathrm{d}\theta` shows that the
marginal path satisfies it with the *marginal* field

.. math::

    u_t(\theta_t \mid x) = \frac{\int u_t(\theta_t \mid \theta)\,
    p_t(\theta_t \mid \theta)\, p(\theta \mid x)\, \mathrm{d}\theta}
    {p_t(\theta_t \mid x)}
    = \mathbb{E}\big[ (1 - \sigma)\, \epsilon - \theta \,\big|\, \theta_t, x \big] ,

the mean velocity of the straight lines through :math:`\theta_t` at time :math:`t`.
Integrating :math:`u_t(\cdot \mid x)` backwards from :math:`t = 1` thus transports
:math:`\mathcal{N}(0, I)` to :math:`p(\theta \mid x) * \mathcal{N}(0, \sigma^2 I)`.

**The loss's minimiser is that field.** The flow-matching loss

.. math::

    \mathcal{L}(\phi) = \mathbb{E}_{t \sim U(0, 1),\, p(\theta)\, p(x \mid \theta),\,
    \epsilon} \big\| v_\phi(\theta_t, t, x) - u \big\|^2
    = \mathbb{E} \big\| v_\phi(\theta_t, t, x) - u_t(\theta_t \mid x) \big\|^2
    + \mathbb{E}\, \mathrm{Var}[u \mid \theta_t, x, t]

splits as for any regression: the conditional mean is the best predictor in squared
error, and the residual variance does not depend on :math:`\phi` (Lipman et al., 2023,
Theorem 2). It is minimised by :math:`v_\phi = u_t(\cdot \mid x)` for every :math:`t`
and every :math:`x` the model produces: one training serves every observation (Dax et
al., 2023). As for NPE the pairs must come from the prior; a proposal would make the
flow carry the base to the proposal's posterior. The loss stays positive at its
minimum (the residual variance), so its value is comparable between trainings on the
same data only; early stopping reads its decrease on held-out pairs, at noise and
times drawn once (:meth:`FMPE.loss` in evaluation mode), so that one epoch's validation
loss is comparable with the next.

**Density.** Along a solution :math:`\theta_t` of the equation, the instantaneous
change of variables (Chen et al., 2018) gives :math:`\mathrm{d} \log p_t(\theta_t) /
\mathrm{d}t = -\nabla \cdot v(\theta_t, t, x)`, hence

.. math::

    \log q(\theta \mid x) = \log \mathcal{N}(\theta_1; 0, I)
    + \int_0^1 \nabla \cdot v_\phi(\theta_t, t, x)\, \mathrm{d}t ,
    \qquad \theta_0 = \theta ,

an exact, normalised density (up to the solver's tolerance). The equation and the
divergence are integrated together by `zuko.transforms.FreeFormJacobianTransform`
(adaptive Dormand-Prince, `zuko.utils.odeint`, gradients by the adaptive checkpoint
adjoint). The exact divergence takes :math:`D` vector-Jacobian products per evaluation
of the field: a density costs about :math:`D + 1` times the plain solve, fine for the
few parameters (:math:`D \lesssim 20`) of SBI.

**Draws.** A draw needs no density: :meth:`FMPE.sample` carries base noise from
:math:`t = 1` to :math:`t = 0` by the plain equation, with a fixed number of classical
Runge-Kutta steps (`steps`, 10 by default: 40 evaluations of the field, the context's
part of the first layer computed once for all draws), rather than the adaptive solve,
whose step is set by the worst of the batch's draws. The paths of the optimal-transport
field are nearly straight, so few steps suffice; `steps=None` samples by the adaptive
solve of the density.

Both :math:`\theta` and :math:`x` are z-scored with statistics of the training data;
the density of :math:`\theta` adds the Jacobian :math:`-\sum_j \log \sigma_{\theta,j}`.

**When rather than NPE.** The field is an unconstrained network, not an invertible
map, so it is cheap to make expressive and trains quickly; each draw and each density
solves an ODE, so sampling is slower than NPE's flows and densities much slower.

References:
    | Flow Matching for Generative Modeling (Lipman et al., 2023)
    | https://arxiv.org/abs/2210.02747

    | Flow Matching for Scalable Simulation-Based Inference (Dax et al., 2023)
    | https://arxiv.org/abs/2305.17161

    | Neural Ordinary Differential Equations (Chen et al., 2018)
    | https://arxiv.org/abs/1806.07366

    | FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models
      (Grathwohl et al., 2019)
    | https://arxiv.org/abs/1810.01367
"""

from __future__ import annotations

__all__ = ["FMPE", "SIGMA_MIN"]

import math
from typing import ClassVar

import torch
from torch import Size, Tensor, nn
from torch.distributions import Distribution
from zuko.distributions import DiagNormal, NormalizingFlow
from zuko.lazy import LazyDistribution
from zuko.transforms import FreeFormJacobianTransform
from zuko.utils import broadcast

from pyro_sbi.estimator import Estimator, validation_off
from pyro_sbi.networks import ResidualMLP
from pyro_sbi.npe import _LearnedPosterior

SIGMA_MIN = 1e-3  # the width of the path at the data end, in z-scored units
_VALIDATION_SEED = 0  # the noise and times of the validation loss, drawn once


class FMPE(Estimator):
    r"""Flow-matching posterior estimator: a vector field whose flow is :math:`q(\theta \mid x)`.

    Built at the first :meth:`fit`, when the sizes of :math:`\theta` and :math:`x` are
    known, and used like :class:`~pyro_sbi.NPE`: through
    :class:`~pyro_sbi.AmortizedGuide`, or directly with :meth:`log_prob` and
    :meth:`sample`; calling it with `x` gives the posterior as a torch distribution.

    The field is a residual network (:class:`~pyro_sbi.networks.ResidualMLP`) of
    :math:`[\theta_t, \gamma(t), x]`, with the time embedding :math:`\gamma(t) = (t,
    \cos k \pi t, \sin k \pi t)_{k = 1..K}`. The defaults were measured on two_moons
    at 1,000 simulations (C2ST of 5,000 draws against the reference; benchmarks page,
    "FMPE"): 128 features and 3 blocks scored 0.766; 64 and 2 blocks 0.947 (too small);
    256 and 3 blocks 0.755 at twice the training and several times the sampling time; 128
    and 5 blocks 0.849. One frequency scored as four (0.772); four are kept, at no
    measurable cost. The solver's tolerances `rtol = 1e-3, 1e-4, 1e-5` gave C2ST within
    0.02 of each other (the noise of the score); on a 2-D Gaussian posterior a solve
    took 35, 84 and 126 evaluations of the field; at `1e-3` a log-density moves by up
    to 0.06 nats against a tight solve (`1e-6`), at `1e-4` by 0.004: hence
    `rtol = 1e-4`, `atol = 1e-5`.

    Draws take 10 fixed Runge-Kutta steps (`steps`), densities the adaptive solve. The
    same base noise lands, on a 2-D Gaussian posterior, within 0.0012 posterior sds of
    the adaptive solve's draw at 10 steps, 0.022 at 4. On the benchmark (1,000
    simulations, 10,000 draws; benchmarks page, "FMPE") the fixed steps sampled
    two_moons in 1.6 s against 10.2 s and gaussian_linear in 1.7 s against 4.6 s, at C2ST
    0.724 and 0.580 (adaptive: 0.721 and 0.577); on one two_moons field, 4, 6, 8, 10 and
    16 steps scored 0.724, 0.727, 0.735, 0.724 and 0.711 (adaptive 0.721).

    It trains with a moving average of its weights and a patience of 50 epochs
    (:attr:`fit_defaults`): the flow-matching loss keeps falling slowly long after a
    patience of 20 stops. On two_moons at 10,000 simulations, patience 20, 50 and 100
    stopped at epochs 94, 199 and 362 with C2ST 0.722, 0.610 and 0.539; at 1,000
    simulations patience 50 scored 0.730 against 0.766. Pass `patience=100` for the
    more accurate fit at about twice the training time.

    In an :class:`~pyro_sbi.AmortizedGuide` an interval-valued site is learned on Pyro's
    logit (:attr:`interval_map`), unlike :class:`~pyro_sbi.NPE`: on the identity-inside
    map (:class:`~pyro_sbi.transforms.SmoothClampTransform`) FMPE was less accurate on
    two_moons at 10,000 simulations (C2ST 0.700 against 0.651; with another training
    seed 0.750 against 0.736) and on slcp at 1,000 (0.984 against 0.977), more accurate
    on slcp at 10,000 (0.877 against 0.907) and even on two_moons at 1,000.

    Arguments:
        z_score: standardise `theta` and `x` with the training statistics.
        embedding: a module mapping z-scored `x (N, *x_shape)` to features `(N, E)` that
            the field is conditioned on, trained with it; `None`: the flattened `x`.
        hidden_features: width of the field's hidden layers.
        num_blocks: residual blocks of the field.
        freqs: frequencies :math:`K` of the time embedding.
        activation: the activation class of the field.
        atol: absolute tolerance of the ODE solver (the ODE runs in z-scored units).
        rtol: relative tolerance of the ODE solver.
        steps: fixed fourth-order Runge-Kutta steps of :meth:`sample`; `None`: draws by
            the adaptive solve at `atol`, `rtol` (densities always take it).

    Example:
        >>> theta = torch.randn(1000, 2)
        >>> x = theta + 0.1 * torch.randn(1000, 2)
        >>> posterior = FMPE()
        >>> history = posterior.fit(theta, x, max_epochs=5, progress=False, seed=0)
        >>> posterior.sample(torch.zeros(3, 2), (4,)).shape  # 4 draws for each of 3 x
        torch.Size([4, 3, 2])
        >>> posterior.log_prob(torch.zeros(4, 3, 2), torch.zeros(3, 2)).shape
        torch.Size([4, 3])
    """

    fit_defaults: ClassVar[dict] = {"average": 0.99, "patience": 50}
    interval_map: ClassVar[str] = "logit"

    def __init__(
        self,
        *,
        z_score: bool = True,
        embedding: nn.Module | None = None,
        hidden_features: int = 128,
        num_blocks: int = 3,
        freqs: int = 4,
        activation: type[nn.Module] = nn.ELU,
        atol: float = 1e-5,
        rtol: float = 1e-4,
        steps: int | None = 10,
    ) -> None:
        super().__init__(z_score=z_score)
        if steps is not None and steps < 1:
            raise ValueError(f"FMPE: steps must be a positive number or None; got {steps}")
        self.embedding = embedding
        self.hidden_features, self.num_blocks, self.freqs = hidden_features, num_blocks, freqs
        self.activation, self.atol, self.rtol, self.steps = activation, atol, rtol, steps
        self.flow = None

    def _build(self) -> None:
        context = self.x_features
        if self.embedding is not None:
            with torch.no_grad():
                context = self.embedding(torch.zeros(2, *self.x_shape)).shape[-1]
        field = _VectorField(
            self.theta_dim, context, hidden_features=self.hidden_features,
            num_blocks=self.num_blocks, freqs=self.freqs, activation=self.activation,
        )  # fmt: skip
        self.flow = _ConditionalCNF(field, atol=self.atol, rtol=self.rtol)

    def config(self) -> dict:
        """The constructor's options; the activation by its name in `torch.nn`."""
        embedding = None if self.embedding is None else type(self.embedding).__name__
        return {"z_score": self.z_score, "embedding": embedding,
                "hidden_features": self.hidden_features, "num_blocks": self.num_blocks,
                "freqs": self.freqs, "activation": self.activation.__name__,
                "atol": self.atol, "rtol": self.rtol, "steps": self.steps}  # fmt: skip

    def extra_repr(self) -> str:
        """Size of the field and the solver's tolerances."""
        return (
            f"hidden_features={self.hidden_features}, num_blocks={self.num_blocks}, "
            f"atol={self.atol}, rtol={self.rtol}, steps={self.steps}"
        )

    def loss(self, theta: Tensor, x: Tensor) -> Tensor:
        r"""The flow-matching loss of a batch of parameters given their data, z-scored.

        In training mode the times :math:`t \sim U(0, 1)` and the noise
        :math:`\epsilon` are drawn afresh; in evaluation mode (validation) from a
        generator seeded the same way at each call, so that the loss of fixed pairs
        is a fixed number.

        Arguments:
            theta: `(n, D)` parameters.
            x: `(n, *x_shape)` simulator outputs.

        Returns:
            The scalar mean of :math:`\| v(\theta_t, t, x) - u \|^2`.
        """
        x_z, theta_z = self._standardize(x.reshape(len(x), -1), theta)
        generator = None
        if not self.training:
            generator = torch.Generator(theta_z.device).manual_seed(_VALIDATION_SEED)
        t = torch.rand(theta_z.shape[:-1] + (1,), generator=generator, device=theta_z.device,
                       dtype=theta_z.dtype)  # fmt: skip
        noise = torch.randn(theta_z.shape, generator=generator, device=theta_z.device,
                            dtype=theta_z.dtype)  # fmt: skip
        theta_t = (1 - t) * theta_z + (SIGMA_MIN + (1 - SIGMA_MIN) * t) * noise
        target = (1 - SIGMA_MIN) * noise - theta_z
        velocity = self.flow.field(t[..., 0], theta_t, self._embedded(x_z))
        return (velocity - target).square().sum(-1).mean()

    def log_prob(self, theta: Tensor, x: Tensor) -> Tensor:
        r"""Learned log-posterior :math:`\log q(\theta \mid x)`, by an ODE solve.

        Arguments:
            theta: `(*, D)` parameters.
            x: `(*, *x_shape)` data; broadcast against the batch shape of `theta`.

        Returns:
            `(*)` log-densities over the broadcast batch shape.
        """
        x_z, theta_z = self._prepare(x, theta)
        if x_z.numel() == 0:  # no data points: no densities
            return x_z.new_zeros(x_z.shape[:-1])
        with validation_off():
            log_q = self.flow(self._embedded(x_z)).log_prob(theta_z)
        return log_q - self.theta_scale.log().sum()

    def sample(self, x: Tensor, sample_shape: Size | tuple = ()) -> Tensor:
        r"""Draws from :math:`q(\theta \mid x)` by fixed Runge-Kutta steps, without gradients.

        By the adaptive solve when `steps` is `None`.

        Arguments:
            x: `(*, *x_shape)` data.
            sample_shape: the shape of the draws for each `x`.

        Returns:
            `(*sample_shape, *, D)` parameters.
        """
        return self.forward(x).sample(Size(sample_shape))

    def forward(self, x: Tensor) -> Distribution:
        r"""The learned posterior given `x` as a torch distribution over `theta`.

        Its `rsample` is differentiable in the field's weights when they require
        gradients (by autograd through the fixed steps; through the adaptive solver's
        adjoint when `steps` is `None`).

        Arguments:
            x: `(*, *x_shape)` data.

        Returns:
            A distribution with batch shape `*` and event shape `(D,)`.
        """
        self.check_trained()
        event_dim = len(self.x_shape)
        if tuple(x.shape[x.dim() - event_dim :]) != tuple(self.x_shape) or x.dim() < event_dim:
            raise ValueError(
                f"FMPE: x must end in the simulator's output shape {tuple(self.x_shape)}; "
                f"got x of shape {tuple(x.shape)}"
            )
        return _FlowPosterior(self, x)


class _FlowPosterior(_LearnedPosterior):
    r""":math:`q(\theta \mid x)` for fixed `x`; draws by the fixed-step solve if `steps` is set."""

    def rsample(self, sample_shape: Size = Size()) -> Tensor:  # noqa: B008
        estimator = self.estimator
        if estimator.steps is None:
            return super().rsample(sample_shape)
        c = self.context()
        z = torch.randn(Size(sample_shape) + self.batch_shape + self.event_shape,
                        dtype=c.dtype, device=c.device)  # fmt: skip
        theta_z = estimator.flow.transport(z, c, estimator.steps)
        return theta_z * estimator.theta_scale + estimator.theta_loc

    def context(self) -> Tensor:
        """The field's context `(*, C)` of `x`, computed once for all the draws."""
        estimator = self.estimator
        x = self.x.to(estimator.x_loc.dtype)
        flat = x.reshape(self.batch_shape + (estimator.x_features,))
        x_z = (estimator._transform(flat) - estimator.x_loc) / estimator.x_scale
        return estimator._embedded(x_z)


class _VectorField(nn.Module):
    r"""`v(t (*), theta_t (*, D), c (*, C)) -> (*, D)`, broadcasting the batch shapes."""

    def __init__(self, features: int, context: int, *, hidden_features: int, num_blocks: int,
                 freqs: int, activation: type[nn.Module]) -> None:  # fmt: skip
        super().__init__()
        self.register_buffer("frequencies", torch.arange(1, freqs + 1) * math.pi)
        self.net = ResidualMLP(
            features + context + 1 + 2 * freqs, features, hidden_features=hidden_features,
            num_blocks=num_blocks, activation=activation,
        )  # fmt: skip

    def _embed(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        t = t.to(dtype)[..., None]
        angle = self.frequencies.to(dtype) * t
        return torch.cat((t, angle.cos(), angle.sin()), dim=-1)

    def forward(self, t: Tensor, theta: Tensor, c: Tensor) -> Tensor:
        embedded = self._embed(t, theta.dtype)
        return self.net(torch.cat(broadcast(theta, embedded, c, ignore=1), dim=-1))

    def bind(self, c: Tensor):
        r"""`c (*, C) ->` the field `(t (), theta (..., *, D)) -> (..., *, D)` at that context.

        The same function as :meth:`forward`, with the first layer split by its inputs
        so that the context's part, :math:`W_c c + b`, is computed once rather than at
        each evaluation, and no concatenation of the broadcast inputs is built.
        """
        inner, features = self.net.inner, self.net.outer[-1].out_features
        w_theta = inner.weight[:, :features]
        w_time = inner.weight[:, features : inner.in_features - c.shape[-1]]
        w_context = inner.weight[:, inner.in_features - c.shape[-1] :]
        fixed = nn.functional.linear(c, w_context, inner.bias)

        def field(t: Tensor, theta: Tensor) -> Tensor:
            h = nn.functional.linear(theta, w_theta) + fixed
            h = h + nn.functional.linear(self._embed(t, theta.dtype), w_time)
            for block in self.net.blocks:
                h = block(h)
            return self.net.outer(h)

        return field


class _ConditionalCNF(LazyDistribution):
    r"""`c (*, C) ->` the flow of the field from `N(0, I)` at `t = 1` to `t = 0`.

    Its transform maps `theta` (at `t = 0`) to the base (at `t = 1`), as zuko's
    flows do, so its `log_prob` adds the integral of the divergence.
    """

    def __init__(self, field: _VectorField, *, atol: float, rtol: float) -> None:
        super().__init__()
        self.field, self.atol, self.rtol = field, atol, rtol

    def forward(self, c: Tensor) -> NormalizingFlow:
        # the transform keeps those of phi that require gradients: the weights while
        # trained or fine-tuned, the context when an embedding learns through it
        phi = (c, *self.field.parameters())
        transform = FreeFormJacobianTransform(
            lambda t, theta: self.field(t, theta, c), 0.0, 1.0, phi=phi, atol=self.atol,
            rtol=self.rtol, exact=True,
        )  # fmt: skip
        features = self.field.net.outer[-1].out_features
        loc = c.new_zeros(c.shape[:-1] + (features,))
        return NormalizingFlow(transform, DiagNormal(loc, torch.ones_like(loc)))

    def transport(self, z: Tensor, c: Tensor, steps: int) -> Tensor:
        r"""Base points `z (..., *, D)` carried from `t = 1` to `t = 0` given `c (*, C)`.

        The classical fourth-order Runge-Kutta scheme with `steps` equal steps of
        :math:`-1 / \text{steps}` (four evaluations of the field each), without the
        divergence; differentiable by autograd through the steps.
        """
        field, h = self.field.bind(c), -1.0 / steps
        theta = z
        for i in range(steps):
            t = torch.tensor(1.0 - i / steps, dtype=z.dtype, device=z.device)
            k1 = field(t, theta)
            k2 = field(t + h / 2, theta + (h / 2) * k1)
            k3 = field(t + h / 2, theta + (h / 2) * k2)
            k4 = field(t + h, theta + h * k3)
            theta = theta + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
        return theta
