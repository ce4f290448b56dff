r"""A black-box simulator as a Pyro distribution.

`SimulatorDistribution(simulator, theta, estimator)` is a distribution over the
simulator's output `x` whose :meth:`~SimulatorDistribution.sample` runs the real
simulator and whose :meth:`~SimulatorDistribution.log_prob` asks a learned estimator
(for instance :class:`~pyro_sbi.NLE`). It follows Pyro's shape semantics: `theta` of
shape `batch_shape + (D,)`, `event_shape` the simulator's output shape, `expand` and
plates broadcast `theta` lazily, so a `theta` repeated over a plate of i.i.d. trials
stays one parameter vector.

A ratio estimator (:class:`~pyro_sbi.NRE`) gives :math:`\log p(x \mid \theta) - \log
p(x)`, not a density in `x`: its site must be observed. :meth:`log_prob` refuses a value
that requires grad (NUTS, HMC, SVI move it) or that the same distribution drew with
:meth:`sample` (the site ran without `obs=`, as in
`poutine.trace(model).get_trace().log_prob_sum()`; data drawn by one run of the model
and observed in another is accepted), and
:class:`~pyro_sbi.SliceMCMC` refuses such a latent site before it starts.
"""

from __future__ import annotations

__all__ = ["SimulatorDistribution"]

import warnings
import weakref
from collections.abc import Callable

import torch
from pyro.distributions import TorchDistribution
from torch import Size, Tensor
from torch.distributions import constraints

from pyro_sbi.nn import Estimator
from pyro_sbi.simulate import simulate


class SimulatorDistribution(TorchDistribution):
    r"""The output of a black-box simulator at parameters `theta`.

    Arguments:
        simulator: a callable `theta (n, D) -> x (n, *x_shape)` (torch or numpy), or
            `theta (D,) -> x (*x_shape)` with `batched=False`. Never differentiated.
        theta: `(*batch_shape, D)` parameters. It may have fewer batch dimensions than
            the plates around the sample site: it is broadcast lazily.
        estimator: the learned surrogate giving :meth:`log_prob` (e.g. `NLE()`); it may
            be untrained while the model is built, and is trained by
            :func:`pyro_sbi.train`.
        x_shape: the simulator's output shape; needed only when the estimator is
            untrained and the event shape must be known (taken from the estimator
            otherwise).
        batched: whether the simulator takes a batch of parameters.
        numpy: give `theta` to the simulator as a numpy array.
        validate_args: as for any torch distribution.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro_sbi import NLE
        >>> def simulator(theta):
        ...     return theta + 0.1 * torch.randn_like(theta)
        >>> likelihood = NLE()
        >>> def model(x_o=None):
        ...     theta = pyro.sample("theta", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        ...     with pyro.plate("trials", 10):
        ...         return pyro.sample(
        ...             "x", SimulatorDistribution(simulator, theta, likelihood, x_shape=(2,)),
        ...             obs=x_o,
        ...         )
        >>> model().shape  # runs the real simulator
        torch.Size([10, 2])
    """

    arg_constraints = {"theta": constraints.real_vector}
    has_rsample = False
    _drawn: weakref.ref | None = None  # the last sample of a ratio estimator

    def __init__(
        self,
        simulator: Callable,
        theta: Tensor,
        estimator: Estimator,
        *,
        x_shape: tuple[int, ...] | Size | None = None,
        batched: bool = True,
        numpy: bool = False,
        validate_args: bool | None = None,
    ) -> None:
        theta = torch.as_tensor(theta, dtype=torch.get_default_dtype())
        name = _name(simulator)
        if theta.dim() < 1:
            raise ValueError(
                f"SimulatorDistribution({name}): theta must have shape (*batch_shape, D) with "
                f"a parameter dimension D; got a tensor of shape {tuple(theta.shape)}. For a "
                "single parameter use theta.unsqueeze(-1)."
            )
        if not isinstance(estimator, Estimator):
            raise TypeError(
                f"SimulatorDistribution({name}): estimator must be a pyro_sbi estimator such "
                f"as NLE(); got {type(estimator).__name__}"
            )
        if estimator.theta_dim is not None and theta.shape[-1] != estimator.theta_dim:
            raise ValueError(
                f"SimulatorDistribution({name}): theta has {theta.shape[-1]} parameters "
                f"(shape {tuple(theta.shape)}) but the estimator was trained with "
                f"{estimator.theta_dim}"
            )
        if x_shape is not None:
            x_shape = Size(x_shape)
            if estimator.x_shape is not None and x_shape != estimator.x_shape:
                raise ValueError(
                    f"SimulatorDistribution({name}): x_shape={tuple(x_shape)} differs from "
                    f"the shape {tuple(estimator.x_shape)} the estimator was trained on"
                )
        elif estimator.x_shape is not None:
            x_shape = estimator.x_shape
        self.simulator = simulator
        self.theta = theta
        self.estimator = estimator
        self.batched = batched
        self.numpy = numpy
        self.x_shape = x_shape
        event_shape = x_shape if x_shape is not None else Size()
        super().__init__(theta.shape[:-1], event_shape, validate_args=validate_args)

    @property
    def support(self) -> constraints.Constraint:
        """Where `x` lives, as the estimator describes it (real vectors by default)."""
        if self.estimator.x_shape is not None:
            return self.estimator.support
        return constraints.independent(constraints.real, len(self.event_shape))

    @classmethod
    def infer_shapes(cls, theta, **kwargs):
        """Batch shape from `theta`'s shape; the event shape is unknown to the class."""
        raise NotImplementedError("the event shape of a SimulatorDistribution needs its estimator")

    def expand(self, batch_shape, _instance=None) -> SimulatorDistribution:
        """Broadcasts to `batch_shape` without copying or repeating `theta`."""
        new = self._get_checked_instance(SimulatorDistribution, _instance)
        batch_shape = Size(batch_shape)
        theta_batch = self.theta.shape[:-1]
        try:
            compatible = torch.broadcast_shapes(theta_batch, batch_shape) == batch_shape
        except RuntimeError:
            compatible = False
        if not compatible:
            raise ValueError(
                f"SimulatorDistribution({_name(self.simulator)}): cannot expand batch shape "
                f"{tuple(self.batch_shape)} to {tuple(batch_shape)}"
            )
        for key in ("simulator", "theta", "estimator", "batched", "numpy", "x_shape"):
            setattr(new, key, getattr(self, key))
        super(SimulatorDistribution, new).__init__(batch_shape, self.event_shape, False)
        new._validate_args = self._validate_args
        return new

    def sample(self, sample_shape: Size = Size()) -> Tensor:  # noqa: B008
        r"""Runs the real simulator once per element of `sample_shape + batch_shape`.

        A failed simulation (see :func:`pyro_sbi.simulate`) gives a NaN output and a
        warning; more than half of them failing raises a
        :class:`~pyro_sbi.simulate.SimulationError`.

        Returns:
            `(*sample_shape, *batch_shape, *x_shape)` simulator outputs.
        """
        shape = Size(sample_shape) + self.batch_shape
        theta = self.theta.detach().expand(shape + self.theta.shape[-1:])
        simulations = simulate(
            self.simulator,
            theta.reshape(-1, theta.shape[-1]),
            batched=self.batched,
            numpy=self.numpy,
            progress=False,
        )
        if simulations.num_failed:
            row, _, kind, message = simulations.failures()[0]
            warnings.warn(
                f"SimulatorDistribution({_name(self.simulator)}): {simulations.num_failed} of "
                f"{len(simulations)} simulations failed and are NaN; the first ({kind}): "
                f"{message.strip().splitlines()[-1] if message else ''}",
                stacklevel=2,
            )
        x = simulations.x
        if self.x_shape is not None and x.shape[1:] != self.x_shape:
            raise ValueError(
                f"SimulatorDistribution({_name(self.simulator)}): the simulator returned "
                f"outputs of shape {tuple(x.shape[1:])}, expected {tuple(self.x_shape)}"
            )
        x = x.reshape(shape + x.shape[1:])
        if not self.estimator.normalized:
            self._drawn = weakref.ref(x)  # log_prob(x) would mean a latent site
        return x

    def log_prob(self, value: Tensor) -> Tensor:
        r"""The estimator's log-density of `value` at `theta`, differentiable in `theta`.

        When :func:`pyro_sbi.train` saw simulations fail, the estimator carries a
        :class:`~pyro_sbi.validity.ValidityClassifier` and
        :math:`\log P(\text{valid} \mid \theta)` is added (see :mod:`pyro_sbi.validity`).

        Arguments:
            value: `(*, *x_shape)` simulator outputs; `*` broadcasts with `batch_shape`.

        Returns:
            `broadcast(*, batch_shape)` log-densities.

        Raises:
            ValueError: `value` has the wrong event shape or holds NaN or inf, or the
                estimator is a ratio and `value` is latent: it requires grad or was drawn
                by this distribution's :meth:`sample` (Pyro adds the name of the sample
                site to the message).
        """
        estimator = self.estimator
        estimator.check_trained()
        if not estimator.normalized and (
            getattr(value, "requires_grad", False)
            or (self._drawn is not None and self._drawn() is value)
        ):
            raise ValueError(_latent_ratio_message(self))
        event_dim = len(estimator.x_shape)
        value = torch.as_tensor(value)
        if value.dim() < event_dim or value.shape[value.dim() - event_dim :] != estimator.x_shape:
            raise ValueError(
                f"SimulatorDistribution({_name(self.simulator)}): expected x with event shape "
                f"{tuple(estimator.x_shape)} (batch shape {tuple(self.batch_shape)}); got a "
                f"value of shape {tuple(value.shape)}"
            )
        if not bool(torch.isfinite(value).all()):
            raise ValueError(_non_finite_message(_name(self.simulator), value))
        if self._validate_args:
            self._validate_sample(value)
        estimator.warn_if_outside(value)
        log_p = estimator.log_prob(value, self.theta)
        if estimator.validity is not None:  # an observed x is a valid simulation
            log_p = log_p + estimator.validity.log_prob(self.theta)
        return log_p.expand(
            torch.broadcast_shapes(value.shape[: value.dim() - event_dim], self.batch_shape)
        )


def _latent_ratio_message(fn: SimulatorDistribution) -> str:
    return (
        f"SimulatorDistribution({_name(fn.simulator)}): the {type(fn.estimator).__name__} "
        "estimator gives log p(x | theta) - log p(x), which is not a density in x, so "
        "the simulator site cannot be latent; observe it with pyro.sample(..., obs=x_o)"
    )


def refuse_latent_ratio(fn: object, site: str) -> None:
    """Raises if `fn` is (or wraps) a :class:`SimulatorDistribution` with a ratio estimator.

    For samplers that see a latent site's distribution but give its
    :meth:`SimulatorDistribution.log_prob` values it cannot recognise as latent.

    Arguments:
        fn: the distribution of the latent sample site `site`.
        site: the site's name, for the message.

    Raises:
        ValueError: the site's log-density would be a log-ratio, not a density in `x`.
    """
    while not isinstance(fn, SimulatorDistribution) and hasattr(fn, "base_dist"):
        fn = fn.base_dist  # Independent, masked, expanded
    if isinstance(fn, SimulatorDistribution) and not fn.estimator.normalized:
        raise ValueError(f"site {site!r}: {_latent_ratio_message(fn)}")


def _non_finite_message(name: str, value: Tensor, shown: int = 5) -> str:
    """Says how many entries of `value` are NaN or inf, and where the first `shown` are."""
    bad = ~torch.isfinite(value.detach())
    indices = bad.nonzero()[:shown].tolist()
    where = ", ".join(str(tuple(index)) for index in indices)
    more = ", ..." if int(bad.sum()) > shown else ""
    return (
        f"SimulatorDistribution({name}): the value (the observation, for an observed site) "
        f"holds {int(bad.sum())} non-finite entries (NaN or inf) out of {value.numel()}, at "
        f"indices {where}{more} of its shape {tuple(value.shape)}; the learned likelihood "
        "cannot evaluate them. Drop those trials, or replace them by any finite value and "
        "leave them out with poutine.mask(mask=...)"
    )


def _name(simulator: Callable) -> str:
    return getattr(simulator, "__name__", type(simulator).__name__)
