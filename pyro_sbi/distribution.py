r"""A black-box simulator as a Pyro distribution.

`SimulatorDistribution(simulator, theta, estimator)` is a distribution over the
simulator's output `x` whose :meth:`~SimulatorDistribution.sample` runs the real
simulator and whose :meth:`~SimulatorDistribution.log_prob` asks a learned estimator
(for instance :class:`~pyro_sbi.NLE`). It follows Pyro's shape semantics: `theta` of
shape `batch_shape + (D,)`, `event_shape` the simulator's output shape, `expand` and
plates broadcast `theta` lazily, so a `theta` repeated over a plate of i.i.d. trials
stays one parameter vector.

A known input per trial that is not a parameter (a stimulus strength, a dose, a
condition of the experimental design) is given as `condition=u`, of shape
`(*batch_shape, d_u)`: the simulator is called `simulator(theta, u)` and the estimator
learns :math:`q(x \mid \theta, u)` with the concatenation `[theta, u]` as its context,
so every estimator takes a condition unchanged (its `theta_dim` is `D + d_u`).

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

import numpy as np
import torch
from pyro.distributions import TorchDistribution
from torch import Size, Tensor
from torch.distributions import constraints

from pyro_sbi.estimator import Estimator, distinct
from pyro_sbi.simulation import simulate
from pyro_sbi.simulation_worker import simulator_name


class SimulatorDistribution(TorchDistribution):
    r"""The output of a black-box simulator at parameters `theta`.

    Arguments:
        simulator: a callable `theta (n, D) -> x (n, *x_shape)` (torch or numpy), or
            `theta (D,) -> x (*x_shape)` with `batched=False`. Never differentiated.
            With a `condition`, it is called `simulator(theta, condition)`: rows
            `theta (n, D)` and `condition (n, d_u)` (or one row of each, `(D,)` and
            `(d_u,)`, with `batched=False`).
        theta: `(*batch_shape, D)` parameters. It may have fewer batch dimensions than
            the plates around the sample site: it is broadcast lazily.
        estimator: the learned surrogate giving :meth:`log_prob` (e.g. `NLE()`); it may
            be untrained while the model is built, and is trained by
            :func:`pyro_sbi.train`. With a `condition` it learns
            :math:`q(x \mid \theta, u)` on the context `[theta, condition]`, so its
            `theta_dim` is `D + d_u`. `None`: no likelihood; the site can be simulated
            (and an :class:`~pyro_sbi.AmortizedGuide` trained on it), but
            :meth:`log_prob` raises an error.
        condition: `(*batch_shape, d_u)` known inputs of the simulator that are not
            parameters (the design of the experiment: a stimulus per trial, a dose per
            subject). Its batch shape and `theta`'s broadcast against each other (the
            distribution's batch shape is their broadcast), and it is never
            differentiated. :func:`pyro_sbi.train` simulates at the conditions the
            model gives.
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

        A stimulus per trial, shared by all subjects (`theta (3, 1)`, `u (10, 1, 1)`):

        >>> def shifted(theta, u):
        ...     return theta + u + 0.1 * torch.randn_like(theta)
        >>> u = torch.linspace(-1.0, 1.0, 10).reshape(10, 1, 1)
        >>> d = SimulatorDistribution(shifted, torch.zeros(3, 1), NLE(), condition=u,
        ...                           x_shape=(1,))
        >>> d.batch_shape, d.sample().shape
        (torch.Size([10, 3]), torch.Size([10, 3, 1]))
    """

    arg_constraints = {"theta": constraints.real_vector}
    has_rsample = False
    _drawn: weakref.ref | None = None  # the last sample of a ratio estimator

    def __init__(
        self,
        simulator: Callable,
        theta: Tensor,
        estimator: Estimator | None = None,
        *,
        condition: Tensor | None = None,
        x_shape: tuple[int, ...] | Size | None = None,
        batched: bool = True,
        numpy: bool = False,
        validate_args: bool | None = None,
    ) -> None:
        theta = torch.as_tensor(theta, dtype=torch.get_default_dtype())
        name = simulator_name(simulator)
        if theta.dim() < 1:
            raise ValueError(
                f"SimulatorDistribution({name}): theta must have shape (*batch_shape, D) with "
                f"a parameter dimension D; got a tensor of shape {tuple(theta.shape)}. For a "
                "single parameter use theta.unsqueeze(-1)."
            )
        if estimator is not None and not isinstance(estimator, Estimator):
            raise TypeError(
                f"SimulatorDistribution({name}): estimator must be a pyro_sbi estimator such "
                f"as NLE(); got {type(estimator).__name__}"
            )
        batch_shape = theta.shape[:-1]
        if condition is not None:
            condition = _checked_condition(name, condition, theta)
            batch_shape = torch.broadcast_shapes(batch_shape, condition.shape[:-1])
        if estimator is not None:
            _check_context_dim(name, estimator, theta, condition)
        learned = None if estimator is None else estimator.x_shape
        if x_shape is not None:
            x_shape = Size(x_shape)
            if learned is not None and x_shape != learned:
                raise ValueError(
                    f"SimulatorDistribution({name}): x_shape={tuple(x_shape)} differs from "
                    f"the shape {tuple(estimator.x_shape)} the estimator was trained on"
                )
        elif learned is not None:
            x_shape = learned
        self.simulator, self.theta, self.condition = simulator, theta, condition
        self.estimator, self.batched, self.numpy = estimator, batched, numpy
        self.x_shape = x_shape
        event_shape = x_shape if x_shape is not None else Size()
        super().__init__(batch_shape, event_shape, validate_args=validate_args)

    @property
    def condition_dim(self) -> int:
        """The number `d_u` of columns of the condition (0 without one)."""
        return 0 if self.condition is None else self.condition.shape[-1]

    @property
    def context(self) -> Tensor:
        r"""What the estimator is conditioned on: `theta`, or `[theta, condition]`.

        Returns:
            `(*, D + d_u)`, broadcastable to `batch_shape + (D + d_u,)`: `theta` itself
            without a condition; with one, `theta` and the condition concatenated on
            the broadcast of their distinct batch shapes (a `theta` shared by a plate of
            trials with one condition for all trials stays one row).
        """
        if self.condition is None:
            return self.theta
        theta, condition = distinct(self.theta), distinct(self.condition)
        batch = torch.broadcast_shapes(theta.shape[:-1], condition.shape[:-1])
        return torch.cat(
            [
                theta.expand(batch + theta.shape[-1:]),
                condition.expand(batch + condition.shape[-1:]),
            ],
            -1,
        )

    @property
    def row_simulator(self) -> Callable:
        """The simulator as the simulation engine calls it: on rows of :attr:`context`.

        The simulator itself without a condition; with one, a wrapper that splits rows
        `[theta, condition] (n, D + d_u)` and calls `simulator(theta, condition)`.
        """
        if self.condition is None:
            return self.simulator
        return _WithCondition(self.simulator, self.theta.shape[-1])

    @property
    def support(self) -> constraints.Constraint:
        """Where `x` lives, as the estimator describes it (real vectors by default)."""
        if self.estimator is not None and self.estimator.x_shape is not None:
            return self.estimator.support
        return constraints.independent(constraints.real, len(self.event_shape))

    @classmethod
    def infer_shapes(cls, theta, **kwargs):
        """Not available: the event shape is the estimator's, which the class cannot know.

        Raises:
            NotImplementedError: always; shapes come from an instance (`batch_shape`,
                `event_shape`).
        """
        raise NotImplementedError("the event shape of a SimulatorDistribution needs its estimator")

    def expand(self, batch_shape, _instance=None) -> SimulatorDistribution:
        """Broadcasts to `batch_shape` without copying or repeating `theta`."""
        new = self._get_checked_instance(SimulatorDistribution, _instance)
        batch_shape = Size(batch_shape)
        own = [self.theta.shape[:-1]]
        if self.condition is not None:
            own.append(self.condition.shape[:-1])
        try:
            compatible = torch.broadcast_shapes(*own, batch_shape) == batch_shape
        except RuntimeError:
            compatible = False
        if not compatible:
            raise ValueError(
                f"SimulatorDistribution({simulator_name(self.simulator)}): cannot expand "
                "batch shape "
                f"{tuple(self.batch_shape)} to {tuple(batch_shape)}"
            )
        keys = ("simulator", "theta", "condition", "estimator", "batched", "numpy", "x_shape")
        for key in keys:
            setattr(new, key, getattr(self, key))
        super(SimulatorDistribution, new).__init__(batch_shape, self.event_shape, False)
        new._validate_args = self._validate_args
        return new

    def sample(self, sample_shape: Size = Size()) -> Tensor:  # noqa: B008
        r"""Runs the real simulator once per element of `sample_shape + batch_shape`.

        With a condition, the simulator gets each element's `theta` and condition.
        A failed simulation (see :func:`pyro_sbi.simulate`) gives a NaN output and a
        warning; more than half of them failing raises a
        :class:`~pyro_sbi.simulation.SimulationError`.

        Returns:
            `(*sample_shape, *batch_shape, *x_shape)` simulator outputs.
        """
        shape = Size(sample_shape) + self.batch_shape
        theta = self.theta.detach().expand(shape + self.theta.shape[-1:])
        if self.condition is not None:  # rows [theta, condition], split again for the call
            condition = self.condition.expand(shape + self.condition.shape[-1:])
            theta = torch.cat([theta, condition.to(theta.dtype)], -1)
        simulator = self.row_simulator
        simulations = simulate(
            simulator,
            theta.reshape(-1, theta.shape[-1]),
            batched=self.batched,
            numpy=self.numpy,
            progress=False,
        )
        if simulations.num_failed:
            row, _, kind, message = simulations.failures()[0]
            warnings.warn(
                f"SimulatorDistribution({simulator_name(self.simulator)}): "
                f"{simulations.num_failed} of "
                f"{len(simulations)} simulations failed and are NaN; the first ({kind}): "
                f"{message.strip().splitlines()[-1] if message else ''}",
                stacklevel=2,
            )
        x = simulations.x
        if self.x_shape is not None and x.shape[1:] != self.x_shape:
            raise ValueError(
                f"SimulatorDistribution({simulator_name(self.simulator)}): the simulator returned "
                f"outputs of shape {tuple(x.shape[1:])}, expected {tuple(self.x_shape)}"
            )
        x = x.reshape(shape + x.shape[1:])
        if self.estimator is not None and not self.estimator.normalized:
            self._drawn = weakref.ref(x)  # log_prob(x) would mean a latent site
        return x

    def log_prob(self, value: Tensor) -> Tensor:
        r"""The estimator's log-density of `value` at `theta`, differentiable in `theta`.

        With a condition, the estimator is evaluated at the context
        `[theta, condition]` (see :attr:`context`).

        When :func:`pyro_sbi.train` saw simulations fail, the estimator carries a
        :class:`~pyro_sbi.validity.ValidityClassifier` and
        :math:`\log P(\text{valid} \mid \theta)` is added (see :mod:`pyro_sbi.validity`).

        Arguments:
            value: `(*, *x_shape)` simulator outputs; `*` broadcasts with `batch_shape`.

        Returns:
            `broadcast(*, batch_shape)` log-densities; zeros (the log-density of no data)
            when that shape is empty, e.g. an observation of 0 trials.

        Raises:
            ValueError: `value` is not real (complex, boolean, strings, objects), has the
                wrong event shape or a batch shape that does not broadcast, holds NaN or
                inf or values outside the estimator's support (an unseen discrete value of
                an MNLE), or the estimator is a ratio and `value` is latent: it requires
                grad or was drawn by this distribution's :meth:`sample` (Pyro adds the name
                of the sample site to the message).
        """
        estimator = self.estimator
        if estimator is None:
            raise ValueError(
                f"SimulatorDistribution({simulator_name(self.simulator)}) has no likelihood "
                "estimator, so it has no log_prob: give it one, "
                "SimulatorDistribution(simulator, theta, NLE()) (or MNLE(), NRE()), and train "
                "it with pyro_sbi.train; an AmortizedGuide samples the posterior without one"
            )
        estimator.check_trained()
        if not estimator.normalized and (
            getattr(value, "requires_grad", False)
            or (self._drawn is not None and self._drawn() is value)
        ):
            raise ValueError(_latent_ratio_message(self))
        name = simulator_name(self.simulator)
        value = _real_tensor(name, value)
        event_dim = len(estimator.x_shape)
        if value.dim() < event_dim or value.shape[value.dim() - event_dim :] != estimator.x_shape:
            raise ValueError(
                f"SimulatorDistribution({name}): expected x with event shape "
                f"{tuple(estimator.x_shape)} (batch shape {tuple(self.batch_shape)}); got a "
                f"value of shape {tuple(value.shape)}"
            )
        value_batch = value.shape[: value.dim() - event_dim]
        try:
            batch = torch.broadcast_shapes(value_batch, self.batch_shape)
        except RuntimeError:
            raise ValueError(
                f"SimulatorDistribution({name}): the value of shape {tuple(value.shape)} has "
                f"batch shape {tuple(value_batch)}, which does not broadcast with the "
                f"distribution's batch shape {tuple(self.batch_shape)} (event shape "
                f"{tuple(estimator.x_shape)}); one row per trial of the plates around the site"
            ) from None
        if not bool(torch.isfinite(value).all()):
            raise ValueError(_non_finite_message(name, value))
        estimator.check_support(value)
        if batch.numel() == 0:  # no data: the empty sum, whatever the estimator
            return self.theta.new_zeros(batch)
        if self._validate_args:
            self._validate_sample(value)
        estimator.warn_if_outside(value)
        context = self.context
        log_p = estimator.log_prob(value, context)
        if estimator.validity is not None:  # an observed x is a valid simulation
            log_p = log_p + estimator.validity.log_prob(context)
        return log_p.expand(batch)


class _WithCondition:
    """`simulator(theta, condition)` as a simulator of rows `[theta, condition]`.

    The simulation engine sees one array of parameters; this splits its columns again,
    so batching, seeds, failures, executors and stores work unchanged. It carries the
    name and module of the wrapped simulator (which a store checks), forwards a `seed`
    keyword when the simulator takes one, and pickles when the simulator does.

    Arguments:
        simulator: `simulator(theta (n, D), condition (n, d_u)) -> x (n, *x_shape)`, or
            one row of each, `(D,)` and `(d_u,)`.
        theta_dim: `D`, the number of leading columns that are parameters.
    """

    def __init__(self, simulator: Callable, theta_dim: int) -> None:
        self.simulator = simulator
        self.theta_dim = theta_dim
        self.__wrapped__ = simulator  # inspect.signature sees its `seed` keyword
        self.__name__ = simulator_name(simulator)
        target = simulator if hasattr(simulator, "__qualname__") else type(simulator)
        self.__module__ = getattr(target, "__module__", "?")
        self.__qualname__ = target.__qualname__

    def __call__(self, rows, **kwargs):
        """`rows (n, D + d_u)` (or `(D + d_u,)`) -> the simulator's output."""
        theta, condition = rows[..., : self.theta_dim], rows[..., self.theta_dim :]
        if isinstance(rows, Tensor):
            theta, condition = theta.contiguous(), condition.contiguous()
        else:
            theta, condition = np.ascontiguousarray(theta), np.ascontiguousarray(condition)
        return self.simulator(theta, condition, **kwargs)


def _checked_condition(name: str, condition: object, theta: Tensor) -> Tensor:
    """`condition` as a float tensor of shape `(*, d_u)` broadcasting against `theta`."""
    if getattr(condition, "requires_grad", False):
        raise ValueError(
            f"SimulatorDistribution({name}): the condition requires grad, but it is a known "
            "input of the simulator and is never differentiated; pass condition.detach(), "
            "or make the quantity a parameter (a column of theta) if it is to be inferred"
        )
    condition = torch.as_tensor(condition)
    if condition.is_complex():
        raise ValueError(f"SimulatorDistribution({name}): the condition must be real")
    condition = condition.to(torch.get_default_dtype())
    if condition.dim() < 1:
        raise ValueError(
            f"SimulatorDistribution({name}): condition must have shape (*batch_shape, d_u) "
            f"with an input dimension d_u; got a tensor of shape {tuple(condition.shape)}. "
            "For a single input use condition.unsqueeze(-1)."
        )
    try:
        torch.broadcast_shapes(theta.shape[:-1], condition.shape[:-1])
    except RuntimeError:
        raise ValueError(
            f"SimulatorDistribution({name}): the condition of shape {tuple(condition.shape)} "
            f"does not broadcast against theta of shape {tuple(theta.shape)}: their batch "
            f"shapes {tuple(condition.shape[:-1])} and {tuple(theta.shape[:-1])} (all but "
            "the last dimension) must broadcast, e.g. theta (subjects, D) with a condition "
            "(trials, subjects, d_u) or (trials, 1, d_u)"
        ) from None
    if not bool(torch.isfinite(condition).all()):
        raise ValueError(
            f"SimulatorDistribution({name}): the condition of shape {tuple(condition.shape)} "
            f"holds {int((~torch.isfinite(condition)).sum())} non-finite entries (NaN or inf)"
        )
    return condition


def _check_context_dim(
    name: str, estimator: Estimator, theta: Tensor, condition: Tensor | None
) -> None:
    """Raises when `theta` and `condition` do not have the columns the estimator learned."""
    if estimator.theta_dim is None:
        return
    dim = theta.shape[-1]
    condition_dim = 0 if condition is None else condition.shape[-1]
    learned = getattr(estimator, "condition_dim", None)  # None: unknown (fitted directly)
    if dim + condition_dim == estimator.theta_dim and learned in (None, condition_dim):
        return
    given = f"theta has {dim} parameters (shape {tuple(theta.shape)})"
    if condition is not None:
        given += (
            f" and the condition {condition_dim} columns (shape {tuple(condition.shape)}), "
            f"{dim + condition_dim} in all,"
        )
    if learned is None:
        trained = str(estimator.theta_dim)
        if condition is not None:
            trained += " (the parameters and the condition together)"
    elif learned == 0:
        trained = f"{estimator.theta_dim} parameters and no condition"
    else:
        trained = (
            f"{estimator.theta_dim - learned} parameters and a condition of {learned} "
            f"columns (condition=... of shape (*batch_shape, {learned}))"
        )
    raise ValueError(
        f"SimulatorDistribution({name}): {given} but the estimator was trained with {trained}"
    )


def _latent_ratio_message(fn: SimulatorDistribution) -> str:
    return (
        f"SimulatorDistribution({simulator_name(fn.simulator)}): the "
        f"{type(fn.estimator).__name__} "
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
    fn = simulator_of(fn)
    if fn is not None and fn.estimator is not None and not fn.estimator.normalized:
        raise ValueError(f"site {site!r}: {_latent_ratio_message(fn)}")


def simulator_of(fn: object) -> SimulatorDistribution | None:
    """The :class:`SimulatorDistribution` that `fn` is or wraps, or `None`.

    Wrappers such as `to_event`, `mask` and `expand` are looked through.
    """
    while not isinstance(fn, SimulatorDistribution) and hasattr(fn, "base_dist"):
        fn = fn.base_dist  # Independent, masked, expanded
    return fn if isinstance(fn, SimulatorDistribution) else None


def _real_tensor(name: str, value: object) -> Tensor:
    """`value` as a tensor of real numbers (integers become floating point), or a ValueError.

    Complex numbers, booleans (a mask given as the observation), strings and Python
    objects are refused by name, with the dtype that was given.
    """
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        dtype = getattr(value, "dtype", None)
        given = f"a value of type {type(value).__name__} " + (
            f"and dtype {dtype}" if dtype is not None else "that torch cannot read as numbers"
        )
        raise ValueError(
            f"SimulatorDistribution({name}): the value (the observation, for an observed "
            f"site) must hold real numbers (a floating-point or integer tensor or array); got "
            f"{given}. Convert it, e.g. torch.as_tensor(np.asarray(x, dtype=float))"
        ) from None
    if tensor.is_complex() or tensor.dtype == torch.bool:
        kind = "complex numbers" if tensor.is_complex() else "booleans (a mask?)"
        raise ValueError(
            f"SimulatorDistribution({name}): the value (the observation, for an observed "
            f"site) must hold real numbers (a floating-point or integer tensor); got "
            f"{kind}, a tensor of dtype {tensor.dtype} and shape {tuple(tensor.shape)}"
        )
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    return tensor


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
