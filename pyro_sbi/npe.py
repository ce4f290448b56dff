r"""Neural posterior estimation (NPE).

A conditional normalising flow :math:`q_\phi(\theta \mid x)` is fitted to pairs drawn
from the joint distribution of the model, :math:`\theta_i \sim p(\theta)` and
:math:`x_i \sim p(x \mid \theta_i)`, by maximum likelihood:

.. math::

    \mathcal{L}(\phi) = -\frac{1}{n} \sum_i \log q_\phi(\theta_i \mid x_i)
    \approx \mathbb{E}_{p(x)} \Big[
        \mathrm{KL}\big(p(\theta \mid x) \,\|\, q_\phi(\theta \mid x)\big) \Big]
    + \mathbb{E}_{p(x)} \big[ \mathrm{H}[p(\theta \mid x)] \big] .

The entropy does not depend on :math:`\phi`, so the objective is minimised when
:math:`q_\phi(\theta \mid x) = p(\theta \mid x)` for every :math:`x` the model
produces: one training serves every observation (the estimator is *amortised*), and a
posterior is then sampled directly, without MCMC. Unlike NLE, the pairs must come from
the prior: a proposal :math:`\tilde p(\theta) \ne p(\theta)` makes the minimiser
:math:`p(\theta \mid x)\, \tilde p(\theta) / p(\theta)` up to normalisation.

:class:`NPE` learns on whatever vector :math:`\theta` it is given;
:class:`~pyro_sbi.AmortizedGuide` hands it the latent sites of a model mapped to their
unconstrained spaces (an interval by a map that is the identity inside it,
:class:`~pyro_sbi.transforms.SmoothClampTransform`), so a bounded prior gets no mass
outside its support.

Both :math:`\theta` and :math:`x` are z-scored with statistics of the training data;
the density of :math:`\theta` adds the Jacobian :math:`-\sum_j \log \sigma_{\theta,j}`.

References:
    | Fast ε-free Inference of Simulation Models with Bayesian Conditional Density
      Estimation (Papamakarios & Murray, 2016)
    | https://arxiv.org/abs/1605.06376

    | Automatic Posterior Transformation for Likelihood-free Inference (Greenberg et
      al., 2019)
    | https://arxiv.org/abs/1905.07488
"""

from __future__ import annotations

__all__ = ["NPE"]

from collections.abc import Callable
from typing import ClassVar

import torch
import zuko
from pyro.distributions import TorchDistribution
from torch import Size, Tensor, nn
from torch.distributions import Distribution, constraints

from pyro_sbi.estimator import Estimator, validation_off
from pyro_sbi.networks import flow_name


class NPE(Estimator):
    r"""Neural posterior estimator: a conditional flow :math:`q(\theta \mid x)`.

    Built at the first :meth:`fit`, when the sizes of :math:`\theta` and :math:`x` are
    known. Its density is over the parameters, so it is not a likelihood: use it through
    :class:`~pyro_sbi.AmortizedGuide`, or directly with :meth:`log_prob` and
    :meth:`sample`.

    Arguments:
        flow: a zuko flow class (or any callable `flow(features, context, **kwargs)`
            returning a `zuko.flows.Flow`): `zuko.flows.MAF` (default), `zuko.flows.NSF`, ...
        z_score: standardise `theta` and `x` with the training statistics.
        embedding: a module mapping z-scored `x (N, *x_shape)` to features `(N, E)` that
            the flow is conditioned on, trained with it (e.g. a CNN for images or time
            series); `None`: the flattened `x`.
        flow_options: passed to `flow`, e.g. `transforms=5, hidden_features=(128, 128)`.

    Example:
        >>> theta = torch.randn(2000, 2)
        >>> x = theta + 0.1 * torch.randn(2000, 2)
        >>> posterior = NPE()
        >>> history = posterior.fit(theta, x, max_epochs=5, progress=False, seed=0)
        >>> posterior.sample(torch.zeros(3, 2), (4,)).shape  # 4 draws for each of 3 x
        torch.Size([4, 3, 2])
        >>> posterior.log_prob(torch.zeros(4, 3, 2), torch.zeros(3, 2)).shape
        torch.Size([4, 3])
    """

    fit_defaults: ClassVar[dict] = {"average": 0.99}
    interval_map: ClassVar[str] = "clamp"  # the logit's tails overfit (benchmarks page)

    def __init__(
        self,
        flow: Callable[..., zuko.flows.Flow] = zuko.flows.MAF,
        *,
        z_score: bool = True,
        embedding: nn.Module | None = None,
        **flow_options,
    ) -> None:
        super().__init__(z_score=z_score)
        self.flow_class, self.flow_options = flow, flow_options
        self.embedding = embedding
        self.flow = None

    def _build(self) -> None:
        context = self.x_features
        if self.embedding is not None:
            with torch.no_grad():
                context = self.embedding(torch.zeros(2, *self.x_shape)).shape[-1]
        self.flow = self.flow_class(features=self.theta_dim, context=context, **self.flow_options)

    def config(self) -> dict:
        """The constructor's options; the flow class by its name in `zuko.flows`."""
        embedding = None if self.embedding is None else type(self.embedding).__name__
        return {"flow": flow_name(self.flow_class), "z_score": self.z_score,
                "embedding": embedding, **self.flow_options}  # fmt: skip

    def extra_repr(self) -> str:
        """Name of the flow class."""
        return f"flow={getattr(self.flow_class, '__name__', self.flow_class)}"

    def loss(self, theta: Tensor, x: Tensor) -> Tensor:
        r"""Negative log-density of a batch of parameters given their data, z-scored.

        Arguments:
            theta: `(n, D)` parameters.
            x: `(n, *x_shape)` simulator outputs.

        Returns:
            The scalar mean of :math:`-\log q(\theta_z \mid x_z)`.
        """
        x_z, theta_z = self._standardize(x.reshape(len(x), -1), theta)
        with validation_off():
            return -self.flow(self._embedded(x_z)).log_prob(theta_z).mean()

    def log_prob(self, theta: Tensor, x: Tensor) -> Tensor:
        r"""Learned log-posterior :math:`\log q(\theta \mid x)`.

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
        r"""Draws from :math:`q(\theta \mid x)`, without gradients.

        Arguments:
            x: `(*, *x_shape)` data.
            sample_shape: the shape of the draws for each `x`.

        Returns:
            `(*sample_shape, *, D)` parameters.
        """
        return self.forward(x).sample(Size(sample_shape))

    def forward(self, x: Tensor) -> Distribution:
        r"""The learned posterior given `x` as a torch distribution over `theta`.

        Arguments:
            x: `(*, *x_shape)` data.

        Returns:
            A distribution with batch shape `*` and event shape `(D,)`.
        """
        self.check_trained()
        return _LearnedPosterior(self, x)


class _LearnedPosterior(TorchDistribution):
    r""":math:`q(\theta \mid x)` for fixed `x`, as a torch distribution."""

    arg_constraints = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, estimator: NPE, x: Tensor) -> None:
        self.estimator, self.x = estimator, x
        batch = x.shape[: x.dim() - len(estimator.x_shape)]
        super().__init__(batch, Size([estimator.theta_dim]), validate_args=False)

    def _flow(self):
        estimator = self.estimator
        x = self.x.to(estimator.x_loc.dtype)
        flat = x.reshape(self.batch_shape + (estimator.x_features,))
        x_z = (estimator._transform(flat) - estimator.x_loc) / estimator.x_scale
        return estimator.flow(estimator._embedded(x_z))

    def rsample(self, sample_shape: Size = Size()) -> Tensor:  # noqa: B008
        estimator = self.estimator
        with validation_off():
            theta_z = self._flow().rsample(sample_shape)
        return theta_z * estimator.theta_scale + estimator.theta_loc

    def sample(self, sample_shape: Size = Size()) -> Tensor:  # noqa: B008
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        """`(*, D) -> (*)`: the learned log-posterior of `value`."""
        return self.estimator.log_prob(value, self.x)
