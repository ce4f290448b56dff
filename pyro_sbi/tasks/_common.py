"""What every benchmark task shares: the :class:`Task` type, the observations, a disk cache.

A task file holds only what is its own (the prior, the simulator, the exact likelihood
and the reference method) and makes one :class:`Task` of them, which gives the model,
the observations and the cached reference posteriors. The sbibm tasks read their
observations from `observations.json`; the tasks of the broad suite make theirs from
seeds (:func:`seeded_observation`).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path

import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_sbi.distribution import SimulatorDistribution

_DATA = Path(__file__).with_name("observations.json")

# the names every task module offers (each adds its own: DIM, X_DIM, log_likelihood, ...)
TASK_NAMES = ["model", "observation", "prior", "reference_posterior", "simulator",
              "true_parameters"]  # fmt: skip
# and those every task of the broad suite offers besides
BROAD_NAMES = ["DIM", "KIND", "NAME", "X_DIM", "log_likelihood", "sample_posterior", *TASK_NAMES]


def uniform_box(low, high) -> dist.Distribution:
    """`Uniform(low, high).to_event(1)` in the default dtype: a prior of event shape `(D,)`.

    Example:
        >>> uniform_box((0.0, -1.0), (1.0, 1.0)).sample((4,)).shape
        torch.Size([4, 2])
    """
    dtype = torch.get_default_dtype()
    low, high = torch.tensor(low, dtype=dtype), torch.tensor(high, dtype=dtype)
    return dist.Uniform(low, high).to_event(1)


def uniform_prior(low, high) -> Callable[[], dist.Distribution]:
    """The `prior()` of a task whose prior is a box of uniforms (:func:`uniform_box`).

    Example:
        >>> prior = uniform_prior((0.0, -1.0), (1.0, 1.0))
        >>> prior().sample((4,)).shape, prior.__doc__
        (torch.Size([4, 2]), 'Uniform on [0.0, 1.0] × [-1.0, 1.0], event shape `(2,)`.')
    """

    def prior() -> dist.Distribution:
        return uniform_box(low, high)

    box = " × ".join(f"[{a}, {b}]" for a, b in zip(low, high, strict=True))
    prior.__doc__ = f"Uniform on {box}, event shape `({len(low)},)`."
    return prior


@functools.cache
def _table() -> dict:
    return json.loads(_DATA.read_text())


def observations(task: str, i: int) -> tuple[Tensor, Tensor]:
    """Observation `i` (1 to 10) of the sbibm benchmark and its true parameters."""
    rows = _table()[task]
    if not 1 <= i <= len(rows["observations"]):
        raise ValueError(f"{task} has observations 1 to {len(rows['observations'])}; got {i}")
    dtype = torch.get_default_dtype()
    return (
        torch.tensor(rows["observations"][i - 1], dtype=dtype),
        torch.tensor(rows["true_parameters"][i - 1], dtype=dtype),
    )


def seeded_observation(
    task: str, prior, simulator: Callable, i: int, count: int = 10
) -> tuple[Tensor, Tensor]:
    """Observation `i` (1 to `count`) made from seeds, and its true parameters.

    The true parameters are one prior draw with torch's seed `i`, the observation one
    simulation of them with seed `1000 + i`; torch's global generator is restored
    afterwards.
    """
    if not 1 <= i <= count:
        raise ValueError(f"{task} has observations 1 to {count}; got {i}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(i)
        theta = prior.sample()
        torch.manual_seed(1000 + i)
        x = simulator(theta[None])[0]
    return x, theta


def seeded_draws(distribution, num_samples: int, seed: int) -> Tensor:
    """`(num_samples, *event)` draws of `distribution` with torch's seed `seed`.

    The draws are in the default dtype; torch's global generator is restored afterwards.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        draws = distribution.sample((num_samples,))
    return draws.to(torch.get_default_dtype())


def cache_folder() -> Path:
    """`$PYRO_SBI_CACHE`, or `~/.cache/pyro_sbi`."""
    return Path(os.environ.get("PYRO_SBI_CACHE", Path.home() / ".cache" / "pyro_sbi"))


def cached_reference(task: str, i: int, num_samples: int, compute: Callable[[], Tensor]) -> Tensor:
    """Reference posterior draws, computed once and kept in the cache folder."""
    path = cache_folder() / task / f"reference_{i}_{num_samples}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    samples = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".partial")
    torch.save(samples, temporary)
    temporary.replace(path)  # never a half-written file under the final name
    return samples


class ExactLikelihood(SimulatorDistribution):
    r"""A simulator site whose `log_prob` is a task's exact likelihood, not an estimator's.

    `sample` runs the real simulator, as for any :class:`~pyro_sbi.SimulatorDistribution`;
    `log_prob(x)` is `log_likelihood(x, theta)`. A task's model uses it in place of a
    learned likelihood when it is called with `estimator=None`, so the same sampler can
    run on the exact and on the learned likelihood.

    Arguments:
        simulator: `theta (n, D) -> x (n, *X)`.
        theta: `(*batch_shape, D)` parameters.
        log_likelihood: `log_likelihood(x, theta) -> (*)`, `x (*, *X)` and `theta (*, D)`
            broadcast; `None` for a task without an exact likelihood (`log_prob` then
            raises).
        x_shape: `X`, the event shape.
        task: the task's name, for error messages.

    Example:
        >>> import pyro.distributions as dist
        >>> def log_likelihood(x, theta):
        ...     return dist.Normal(theta, 1.0).log_prob(x).sum(-1)
        >>> site = ExactLikelihood(lambda t: t + torch.randn_like(t), torch.zeros(3, 2),
        ...                        log_likelihood, (2,))
        >>> site.sample().shape, site.log_prob(torch.zeros(2)).shape
        (torch.Size([3, 2]), torch.Size([3]))
    """

    def __init__(
        self,
        simulator: Callable,
        theta: Tensor,
        log_likelihood: Callable[[Tensor, Tensor], Tensor] | None,
        x_shape,
        *,
        task: str = "task",
        validate_args: bool | None = None,
    ) -> None:
        super().__init__(simulator, theta, x_shape=x_shape, validate_args=validate_args)
        self.log_likelihood, self.task = log_likelihood, task

    def expand(self, batch_shape, _instance=None) -> ExactLikelihood:
        """Broadcasts to `batch_shape` without copying `theta`."""
        new = self._get_checked_instance(ExactLikelihood, _instance)
        new = super().expand(batch_shape, new)
        new.log_likelihood, new.task = self.log_likelihood, self.task
        return new

    def log_prob(self, value: Tensor) -> Tensor:
        """`log_likelihood(value, theta)`: `value (*, *X)` -> `broadcast(*, batch_shape)`.

        Raises:
            ValueError: the task has no exact likelihood, or `value` has the wrong event
                shape.
        """
        if self.log_likelihood is None:
            raise ValueError(
                f"{self.task} has no exact likelihood, so its model needs an estimator: "
                f"model(NLE(), x) (or NRE(), MNLE()), trained with pyro_sbi.train"
            )
        event = len(self.event_shape)
        if value.dim() < event or value.shape[value.dim() - event :] != self.event_shape:
            raise ValueError(
                f"{self.task}: expected x with event shape {tuple(self.event_shape)}; got a "
                f"value of shape {tuple(value.shape)}"
            )
        batch = torch.broadcast_shapes(value.shape[: value.dim() - event], self.batch_shape)
        return self.log_likelihood(value, self.theta).expand(batch)


def simulator_site(
    simulator: Callable,
    theta: Tensor,
    estimator,
    log_likelihood: Callable | None,
    x_shape,
    task: str = "task",
) -> SimulatorDistribution:
    """The distribution of a task's site `"x"`: learned with `estimator`, exact without one.

    Arguments:
        simulator: `theta (n, D) -> x (n, *X)`.
        theta: `(*batch_shape, D)` parameters.
        estimator: a likelihood estimator, or `None` for the exact likelihood
            (:class:`ExactLikelihood`).
        log_likelihood: the task's exact `log_likelihood(x, theta)`, or `None`.
        x_shape: `X`.
        task: the task's name, for error messages.
    """
    if estimator is None:
        return ExactLikelihood(simulator, theta, log_likelihood, x_shape, task=task)
    return SimulatorDistribution(simulator, theta, estimator, x_shape=x_shape)


def simulator_model(
    prior, simulator: Callable, estimator, x: Tensor | None, log_likelihood=None,
    x_shape=None, task: str = "task",
) -> Tensor:  # fmt: skip
    """`theta` from `prior`, then `x` from a simulator site with `estimator` (one draw).

    With `estimator=None` the site's likelihood is the exact `log_likelihood`
    (:func:`simulator_site`).
    """
    import pyro

    theta = pyro.sample("theta", prior)
    site = simulator_site(simulator, theta, estimator, log_likelihood, x_shape, task)
    return pyro.sample("x", site, obs=x)


class Task:
    r"""A benchmark task made of its own parts; the model, observations and references follow.

    Arguments:
        name: the task's name: its cache folder and, for stored observations, its key in
            `observations.json`.
        prior: `prior() -> Distribution` of event shape `(D,)`.
        simulator: `theta (n, D) -> x (n, *X)`.
        sample_posterior: `sample_posterior(x, num_samples, seed=...) -> (num_samples, D)`
            posterior draws given `x (*X)`, computed without a learned estimator (closed
            form, exact likelihood, rejection).
        stored: the observations are the stored ones of `observations.json` (the sbibm
            tasks); otherwise observation `i` is made from seeds (:func:`seeded_observation`).
        model: `model(estimator, x=None)` when the task's Pyro model is not one draw of
            `theta` from the prior and one simulator site `x`.
        log_likelihood: the exact `log_likelihood(x, theta)`, `x (*, *X)` and
            `theta (*, D)` broadcast, where the task has one: `model(None, x)` then
            samples on it (:class:`ExactLikelihood`); without it, `model(None, x)` has a
            site `"x"` whose `log_prob` raises.

    Example:
        >>> import pyro.distributions as dist
        >>> prior = lambda: dist.Normal(torch.zeros(1), 1.0).to_event(1)
        >>> simulator = lambda theta: theta + torch.randn_like(theta)
        >>> def sample_posterior(x, num_samples, seed=0):
        ...     z = torch.randn(num_samples, 1, generator=torch.Generator().manual_seed(seed))
        ...     return x / 2 + z / 2**0.5
        >>> task = Task("toy", prior, simulator, sample_posterior)
        >>> task.observation(1).shape, task.true_parameters(1).shape
        (torch.Size([1]), torch.Size([1]))
    """

    def __init__(
        self,
        name: str,
        prior: Callable,
        simulator: Callable[[Tensor], Tensor],
        sample_posterior: Callable[..., Tensor],
        *,
        stored: bool = False,
        model: Callable | None = None,
        log_likelihood: Callable[[Tensor, Tensor], Tensor] | None = None,
    ):
        self.name, self.prior, self.simulator = name, prior, simulator
        self.sample_posterior, self.stored, self._model = sample_posterior, stored, model
        self.log_likelihood = log_likelihood
        self._seeded: dict[int, tuple[Tensor, Tensor]] = {}

    def __repr__(self) -> str:
        return f"Task({self.name!r})"

    def model(self, estimator, x: Tensor | None = None) -> Tensor:
        """The task as a Pyro model: `theta (D,)` from the prior, then the site `"x"`.

        Site `"x"` is a simulator site with `estimator`, observed when `x` is given; with
        `estimator=None` its likelihood is the task's exact one (:class:`ExactLikelihood`).
        """
        if self._model is not None:
            return self._model(estimator, x)
        x_shape = self.observation(1).shape if x is None else x.shape
        return simulator_model(self.prior(), self.simulator, estimator, x,
                               self.log_likelihood, x_shape, self.name)  # fmt: skip

    @property
    def exact(self) -> bool:
        """Whether the task has an exact likelihood (`model(None, x)` samples on it)."""
        return self.log_likelihood is not None

    def interface(self) -> tuple[Callable, ...]:
        """`(model, observation, true_parameters, reference_posterior)`, a task module's own.

        Example:
            >>> from pyro_sbi.tasks import student_t
            >>> student_t.TASK.interface()[1] == student_t.observation
            True
        """
        return self.model, self.observation, self.true_parameters, self.reference_posterior

    def _pair(self, i: int) -> tuple[Tensor, Tensor]:
        if self.stored:
            return observations(self.name, i)
        if i not in self._seeded:
            self._seeded[i] = seeded_observation(self.name, self.prior(), self.simulator, i)
        return self._seeded[i]

    def observation(self, i: int) -> Tensor:
        """Observation `i` (1 to 10), shape `X` (see the task's module docs)."""
        return self._pair(i)[0].clone()

    def true_parameters(self, i: int) -> Tensor:
        """The parameters that generated observation `i`, shape `(D,)`."""
        return self._pair(i)[1].clone()

    def reference_posterior(self, i: int, num_samples: int = 10_000) -> Tensor:
        """`(num_samples, D)` reference posterior draws for observation `i`, cached.

        Drawn once with seed `i` and kept in the cache folder (:func:`cache_folder`).
        """

        def compute() -> Tensor:
            draws = self.sample_posterior(self.observation(i), num_samples, seed=i)
            return draws.to(torch.get_default_dtype())

        return cached_reference(self.name, i, num_samples, compute)
