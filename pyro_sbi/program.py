r"""Simulators written as Pyro programs: their joint log-density and joint score.

A simulator is often a stochastic program whose random choices are known: a latent path
:math:`z` drawn step by step, then observations :math:`x` given the path. Written as a
batched Pyro program `fn(theta) -> x`, every random choice is a sample site, and
although the likelihood :math:`p(x \mid \theta) = \int p(x, z \mid \theta) \, dz` is
intractable, the **joint** log-density of one run is a sum over its sites,

.. math::

    \log p(x, z \mid \theta) = \sum_{s} \log p_s\big(v_s \mid \mathrm{pa}(v_s), \theta\big),

where :math:`v_s` is the value site :math:`s` took and :math:`\mathrm{pa}(v_s)` the
values it was drawn given. :class:`PyroSimulator` records it with `poutine.trace` and
differentiates it in :math:`\theta` to give the **joint score**

.. math::

    t(x, z \mid \theta) = \nabla_\theta \log p(x, z \mid \theta)
    = \sum_s \nabla_\theta \log p_s\big(v_s \mid \mathrm{pa}(v_s), \theta\big)
      \Big|_{v \text{ fixed}} ,

the gradient of the *density* at the values that were drawn, every value held fixed.
:mod:`pyro_sbi.augment` explains why this is an unbiased regression target for the
score of the likelihood, :math:`E[t \mid x, \theta] = \nabla_\theta \log p(x \mid \theta)`.

**Why the values are detached.** A site drawn by `rsample` (a reparameterised
distribution) returns :math:`v = g(\theta, \epsilon)`, a value that depends on
:math:`\theta`. Differentiating :math:`\log p(v(\theta) \mid \theta)` through it gives the
*total* derivative

.. math::

    \frac{d}{d\theta} \log p_s(v(\theta) \mid \theta)
    = \nabla_\theta \log p_s(v \mid \theta)
    + \nabla_v \log p_s(v \mid \theta) \, \frac{\partial v}{\partial \theta} ,

whose second term, the path derivative, is no part of the score. For
:math:`v = \theta + \epsilon` under :math:`\mathcal{N}(\theta, 1)` the log-density
:math:`-\epsilon^2 / 2` does not change along the path at all, so the total derivative is
0, while the score is :math:`v - \theta = \epsilon`; and the path derivative also leaks
into every later site whose parameters depend on :math:`v`. So every value is detached as
it is drawn, and only the log-densities are differentiated. Discrete sites (Bernoulli,
Categorical, Poisson) then need nothing special: their values have no derivative to
begin with, and their log-probabilities are differentiable in their parameters. No site
needs to be reparameterisable.

**Joint ratios.** The same trace, replayed at another parameter point, gives the
**joint log-ratio** of one run between two points,

.. math::

    \log r(x, z \mid \theta_1, \theta_0)
    = \log p(x, z \mid \theta_1) - \log p(x, z \mid \theta_0) ,

every site's value held at what was drawn at :math:`\theta_0` (`poutine.replay`). For
:math:`(x, z) \sim p(x, z \mid \theta_0)` it is an unbiased target for the likelihood
ratio: with :math:`p(z \mid x, \theta_0) = p(x, z \mid \theta_0) / p(x \mid \theta_0)`,

.. math::

    \mathbb{E}\big[ r(x, z \mid \theta_1, \theta_0) \mid x, \theta_0 \big]
    = \int \frac{p(x, z \mid \theta_0)}{p(x \mid \theta_0)}
      \frac{p(x, z \mid \theta_1)}{p(x, z \mid \theta_0)} \, dz
    = \frac{p(x \mid \theta_1)}{p(x \mid \theta_0)} ,

wherever :math:`p(x, z \mid \theta_0) > 0` when :math:`p(x, z \mid \theta_1) > 0` (a path
impossible at :math:`\theta_0` but possible at :math:`\theta_1` is never drawn, and its
mass is missing). :mod:`pyro_sbi.augment` turns it into a training term for NRE (ALICES).

**What the program must do.** It takes `theta (n, D)` and returns `x (n, *x_shape)`:
either the value of a sample site (the observations) or a deterministic function of site
values that does not involve `theta` itself (`torch.stack` of the observation sites, a
summary of them). Each row is one independent simulation: every site's log-density
has the row as its leftmost dimension, shape `(n, *)`: a `pyro.plate` over the rows
is the outermost plate of the program. All its randomness goes through
`pyro.sample`, since randomness elsewhere (a `torch.randn` in the program) is not in
the joint density.

The errors name the site: a site whose log-density is not `(n, *)` (a value shared by
all rows), a program whose log-density does not depend on `theta` at all (`theta`
detached or used through numpy), an output `x` that depends on `theta` other than
through the sites (then :math:`p(x, z \mid \theta)` is not the density of the sites and
the target is biased).

References:
    | Mining gold from implicit models to improve likelihood-free inference
      (Brehmer, Louppe, Pavez & Cranmer, 2020)
    | https://doi.org/10.1073/pnas.1915980117
"""

from __future__ import annotations

__all__ = ["PyroSimulator"]

from collections.abc import Callable

import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import Size, Tensor


class PyroSimulator:
    r"""A batched Pyro program `fn(theta) -> x` as a simulator that knows its joint score.

    Called like any simulator, `simulator(theta)` runs the program and returns `x`; its
    sample sites stay inside (they never reach an enclosing model's trace).
    :meth:`joint` also returns, per row, the joint log-density
    :math:`\log p(x, z \mid \theta)` and the joint score
    :math:`t = \nabla_\theta \log p(x, z \mid \theta)` (the derivation is in
    :mod:`pyro_sbi.program`). :meth:`with_score` is a simulator of the three packed in
    one row, so that :func:`~pyro_sbi.simulate` runs it with its executors, seeds and
    store (the scores are stored beside `x`, and a run resumes); :meth:`unpack` splits
    them again.

    It is picklable (for a process pool) when `fn` is defined at module level, and
    seeded as any simulator: Pyro draws from torch's global generator.

    Arguments:
        fn: a Pyro program `fn(theta (n, D)) -> x (n, *x_shape)` (see the module docs).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def program(theta):
        ...     with pyro.plate("rows", len(theta)):
        ...         z = pyro.sample("z", dist.Normal(theta[:, 0], 1.0))
        ...         return pyro.sample("x", dist.Normal(z, 0.5)).unsqueeze(-1)
        >>> simulator = PyroSimulator(program)
        >>> simulator(torch.zeros(4, 1)).shape
        torch.Size([4, 1])
        >>> x, log_p, score = simulator.joint(torch.zeros(4, 1))
        >>> x.shape, log_p.shape, score.shape
        (torch.Size([4, 1]), torch.Size([4]), torch.Size([4, 1]))
    """

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        if not callable(fn):
            raise TypeError(f"PyroSimulator takes a Pyro program; got {type(fn).__name__}")
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)
        self.__qualname__ = getattr(fn, "__qualname__", self.__name__)
        self.__module__ = getattr(fn, "__module__", __name__)

    def __repr__(self) -> str:
        """`PyroSimulator(name of the program)`."""
        return f"PyroSimulator({self.__name__})"

    def __call__(self, theta: Tensor) -> Tensor:
        r"""Runs the program once per row.

        Arguments:
            theta: `(n, D)` parameters (a tensor or an array).

        Returns:
            `(n, *x_shape)` outputs.
        """
        theta = _as_theta(theta, self.__name__)
        with poutine.block(), torch.no_grad():
            return torch.as_tensor(self.fn(theta)).detach()

    def joint(self, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r"""Runs the program and returns `x`, its joint log-density and joint score per row.

        Arguments:
            theta: `(n, D)` parameters.

        Returns:
            `x (n, *x_shape)`; `log_p (n,)`, :math:`\log p(x, z \mid \theta)` summed over
            the sites of each row (with their `poutine.scale` and `mask`); `score (n, D)`,
            :math:`\nabla_\theta \log p(x, z \mid \theta)` with every site's value held
            at what was drawn.

        Raises:
            ValueError: a site's log-density is not of shape `(n, *)`; the log-density
                does not depend on `theta`; the output depends on `theta` other than
                through the sites. Each message names the program and the site.
        """
        name = self.__name__
        theta = _as_theta(theta, name).detach().clone().requires_grad_(True)
        n = len(theta)
        with poutine.block(), torch.enable_grad():
            with _DetachValues():
                trace = poutine.trace(self.fn).get_trace(theta)
            x = trace.nodes["_RETURN"]["value"]
            x = torch.as_tensor(x)
            if x.requires_grad:
                raise ValueError(
                    f"PyroSimulator({name}): the output x depends on theta other than through "
                    "the program's sample sites, so the joint density of the sites is not "
                    "a density of x and its score is a biased target. Return the value of a "
                    "sample site (x = pyro.sample('x', dist.Normal(mean(theta, z), s))), or a "
                    "function of site values that does not involve theta"
                )
            if x.dim() < 1 or len(x) != n:
                raise ValueError(
                    f"PyroSimulator({name}) returned x of shape {tuple(x.shape)} for theta of "
                    f"shape {tuple(theta.shape)}; it must return (n, *x_shape) with n = {n}"
                )
            trace.compute_log_prob()
            log_p = theta.new_zeros(n)
            depends = False
            for site_name, site in _sample_sites(trace):
                site_log_p = site["log_prob"]
                if site_log_p.dim() < 1 or site_log_p.shape[0] != n:
                    raise ValueError(
                        f"PyroSimulator({name}): site {site_name!r} has a log-density of shape "
                        f"{tuple(site_log_p.shape)}, not (n, *) with n = {n} rows: each row "
                        "must be its own simulation, with the rows as the leftmost dimension "
                        "of every site (put the program under pyro.plate('rows', len(theta)) "
                        "as its outermost plate, and draw no value shared by the rows)"
                    )
                depends = depends or site_log_p.requires_grad
                log_p = log_p + site_log_p.reshape(n, -1).sum(-1)
            if not depends:
                sites = [key for key, _ in _sample_sites(trace)]
                raise ValueError(
                    f"PyroSimulator({name}): the log-density of the program does not depend on "
                    f"theta: none of its sample sites {sites} has a distribution whose "
                    "parameters are computed from theta with torch (theta detached, used "
                    "through numpy or .item(), or not used at all), so it has no score"
                )
            (score,) = torch.autograd.grad(log_p.sum(), theta)
        return x.detach(), log_p.detach(), score

    def joint_ratio(self, theta0: Tensor, theta1: Tensor) -> tuple[Tensor, Tensor]:
        r"""Runs the program at `theta0`; the joint log-ratio of each run at `theta1`.

        The trace of the run at `theta0` is replayed at `theta1` (`poutine.replay`): every
        site keeps the value drawn at `theta0`, and only the log-densities are evaluated
        again, so that :math:`\log r = \log p(x, z \mid \theta_1) - \log p(x, z \mid
        \theta_0)`, whose exponential has the likelihood ratio
        :math:`p(x \mid \theta_1) / p(x \mid \theta_0)` as its mean given `x` (the
        derivation is in :mod:`pyro_sbi.program`).

        Arguments:
            theta0: `(n, D)` the parameters the runs are simulated at.
            theta1: `(n, D)` the parameters each run's joint density is compared at.

        Returns:
            `x (n, *x_shape)` simulated at `theta0`, and `log_r (n,)`, with the sites'
            `poutine.scale` and `mask`; `-inf` where a value is impossible at `theta1`.

        Raises:
            ValueError: `theta0` and `theta1` differ in shape; a site's log-density is
                not `(n, *)`; the program at `theta1` draws a site that the run at
                `theta0` did not (a program whose sites depend on `theta`), or returns
                another `x`.

        Example:
            >>> import pyro, pyro.distributions as dist
            >>> def program(theta):
            ...     with pyro.plate("rows", len(theta)):
            ...         return pyro.sample("x", dist.Normal(theta[:, 0], 1.0)).unsqueeze(-1)
            >>> x, log_r = PyroSimulator(program).joint_ratio(torch.zeros(3, 1), torch.ones(3, 1))
            >>> torch.allclose(log_r, x[:, 0] - 0.5)
            True
        """
        name = self.__name__
        theta0, theta1 = _as_theta(theta0, name), _as_theta(theta1, name)
        if theta0.shape != theta1.shape:
            raise ValueError(
                f"PyroSimulator({name}).joint_ratio: theta0 and theta1 must have the same shape "
                f"(n, D); got {tuple(theta0.shape)} and {tuple(theta1.shape)}"
            )
        n = len(theta0)
        with poutine.block(), torch.no_grad():
            trace0 = poutine.trace(self.fn).get_trace(theta0)
            trace1 = poutine.trace(poutine.replay(self.fn, trace=trace0)).get_trace(theta1)
            x = torch.as_tensor(trace0.nodes["_RETURN"]["value"])
            if x.dim() < 1 or len(x) != n:
                raise ValueError(
                    f"PyroSimulator({name}) returned x of shape {tuple(x.shape)} for theta of "
                    f"shape {tuple(theta0.shape)}; it must return (n, *x_shape) with n = {n}"
                )
            sites0 = dict(_sample_sites(trace0))
            new = [key for key, _ in _sample_sites(trace1) if key not in sites0]
            x1 = torch.as_tensor(trace1.nodes["_RETURN"]["value"])
            if new or x1.shape != x.shape or not bool((x1 == x).all()):
                reason = f"draws the sites {new}" if new else "returns another x"
                raise ValueError(
                    f"PyroSimulator({name}).joint_ratio: replayed at theta1 with the values "
                    f"drawn at theta0, the program {reason}: which sites it draws and how x is "
                    "computed from them must not depend on theta"
                )
            log_r = theta0.new_zeros(n)
            for trace, sign in ((trace1, 1.0), (trace0, -1.0)):
                trace.compute_log_prob()
                for site_name, site in _sample_sites(trace):
                    site_log_p = site["log_prob"]
                    if site_log_p.dim() < 1 or site_log_p.shape[0] != n:
                        raise ValueError(
                            f"PyroSimulator({name}): site {site_name!r} has a log-density of "
                            f"shape {tuple(site_log_p.shape)}, not (n, *) with n = {n} rows "
                            "(put the program under pyro.plate('rows', len(theta)))"
                        )
                    log_r = log_r + sign * site_log_p.reshape(n, -1).sum(-1)
        return x.detach(), log_r

    def with_score(self) -> Callable[[Tensor], Tensor]:
        r"""A simulator of packed rows `[x (flattened), log p(x, z | theta), score]`.

        Give it to :func:`~pyro_sbi.simulate` in place of this simulator to simulate
        the scores with everything else that the engine does (executors, seeds,
        failures, a store); a row whose log-density or score is not finite fails as a
        non-finite output does. :meth:`unpack` splits the rows.

        Returns:
            A simulator `theta (n, D) -> (n, L + 1 + D)` rows, `L` the size of one `x`.
        """
        return _WithScore(self)

    def with_ratio(self) -> Callable[[Tensor], Tensor]:
        r"""A simulator of packed rows `[x (flattened), theta_alt, sigmoid(log r)]`.

        Each batch of parameters is paired by a random cyclic permutation of its rows:
        row `i` gets as its alternative point :math:`\theta'_i` the parameters of another
        row of the batch, every other row equally likely, and its run at :math:`\theta_i`
        gets the joint log-ratio :math:`\log r_i` at :math:`\theta'_i`
        (:meth:`joint_ratio`). The pairs :math:`(\theta_i, \theta'_i)` are then as
        likely as :math:`(\theta'_i, \theta_i)`, however the batch was drawn, which is
        the symmetry the ratio term of :mod:`pyro_sbi.augment` needs. A batch of one row
        is paired with itself (:math:`\log r = 0`: the term is then a constant). The
        ratio is packed as the label :math:`\sigma(\log r) \in [0, 1]` that the term
        uses, finite where a run is impossible at :math:`\theta'` (label 0), so such a
        row is kept. Give it to :func:`~pyro_sbi.simulate` in place of this simulator;
        :meth:`unpack_ratio` splits the rows.

        Returns:
            A simulator `theta (n, D) -> (n, L + D + 1)` rows, `L` the size of one `x`.

        Example:
            >>> import pyro, pyro.distributions as dist
            >>> def program(theta):
            ...     with pyro.plate("rows", len(theta)):
            ...         return pyro.sample("x", dist.Normal(theta[:, 0], 1.0)).unsqueeze(-1)
            >>> theta = torch.arange(4.0).unsqueeze(-1)
            >>> rows = PyroSimulator(program).with_ratio()(theta)
            >>> x, theta_alt, log_r = PyroSimulator.unpack_ratio(rows, 1)
            >>> bool((theta_alt != theta).all()), sorted(theta_alt[:, 0].tolist())
            (True, [0.0, 1.0, 2.0, 3.0])
        """
        return _WithRatio(self)

    @staticmethod
    def unpack_ratio(
        rows: Tensor, theta_dim: int, x_shape: Size | tuple[int, ...] | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        r"""Splits rows of :meth:`with_ratio` into `x`, the alternative points and log-ratios.

        Arguments:
            rows: `(n, L + D + 1)` packed rows (the `x` of their simulations).
            theta_dim: the number of parameters `D`.
            x_shape: the shape of one `x` (`(L,)` by default).

        Returns:
            `x (n, *x_shape)`, `theta_alt (n, D)` and `log_r (n,)`, the logit of the packed
            label: the joint log-ratio to the precision of the label (`inf` where the
            label rounds to 1, `-inf` where it is 0).
        """
        if rows.dim() != 2 or rows.shape[-1] < theta_dim + 2:
            raise ValueError(
                f"PyroSimulator.unpack_ratio expects rows of shape (n, L + {theta_dim} + 1); got "
                f"{tuple(rows.shape)}"
            )
        length = rows.shape[-1] - 1 - theta_dim
        x_shape = Size((length,) if x_shape is None else x_shape)
        x = rows[:, :length].reshape(len(rows), *x_shape)
        return x, rows[:, length:-1], torch.logit(rows[:, -1])

    @staticmethod
    def unpack(
        rows: Tensor, theta_dim: int, x_shape: Size | tuple[int, ...] | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        r"""Splits rows of :meth:`with_score` into `x`, the log-density and the score.

        Arguments:
            rows: `(n, L + 1 + D)` packed rows (the `x` of their simulations).
            theta_dim: the number of parameters `D`.
            x_shape: the shape of one `x` (`(L,)` by default).

        Returns:
            `x (n, *x_shape)`, `log_p (n,)` and `score (n, D)`.
        """
        if rows.dim() != 2 or rows.shape[-1] < theta_dim + 2:
            raise ValueError(
                f"PyroSimulator.unpack expects rows of shape (n, L + 1 + {theta_dim}); got "
                f"{tuple(rows.shape)}"
            )
        length = rows.shape[-1] - 1 - theta_dim
        x = rows[:, :length]
        x_shape = Size((length,) if x_shape is None else x_shape)
        return x.reshape(len(rows), *x_shape), rows[:, length], rows[:, length + 1 :]


class _WithScore:
    """`PyroSimulator.with_score()`: packed rows, named after the program (for the store)."""

    def __init__(self, program: PyroSimulator) -> None:
        self.program = program
        self.__name__ = f"{program.__name__}.with_score"
        self.__qualname__ = f"{program.__qualname__}.with_score"
        self.__module__ = program.__module__

    def __call__(self, theta: Tensor) -> Tensor:
        x, log_p, score = self.program.joint(theta)
        return torch.cat([x.reshape(len(x), -1).to(score.dtype), log_p[:, None], score], -1)


class _WithRatio:
    """`PyroSimulator.with_ratio()`: packed rows, named after the program (for the store)."""

    def __init__(self, program: PyroSimulator) -> None:
        self.program = program
        self.__name__ = f"{program.__name__}.with_ratio"
        self.__qualname__ = f"{program.__qualname__}.with_ratio"
        self.__module__ = program.__module__

    def __call__(self, theta: Tensor) -> Tensor:
        theta = _as_theta(theta, self.program.__name__)
        order = torch.randperm(len(theta))  # a random cycle: no row is its own partner
        theta_alt = torch.empty_like(theta)
        theta_alt[order] = theta[order.roll(1)]
        x, log_r = self.program.joint_ratio(theta, theta_alt)
        label = torch.sigmoid(log_r)
        rows = [x.reshape(len(x), -1).to(theta.dtype), theta_alt, label[:, None].to(theta.dtype)]
        return torch.cat(rows, -1)


class _DetachValues(Messenger):
    """Detaches every sample site's value once drawn: no path derivative through `rsample`."""

    def _pyro_post_sample(self, msg) -> None:
        value = msg["value"]
        if isinstance(value, Tensor) and value.requires_grad:
            msg["value"] = value.detach()


def _sample_sites(trace) -> list[tuple[str, dict]]:
    """The `(name, site)` of every sample site of `trace` (not the plates)."""
    return [
        (name, site)
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site_is_subsample(site)
    ]


def _as_theta(theta, name: str) -> Tensor:
    theta = torch.as_tensor(theta)
    if not theta.is_floating_point():
        theta = theta.to(torch.get_default_dtype())
    if theta.dim() != 2:
        raise ValueError(
            f"PyroSimulator({name}) expects theta of shape (n, D); got {tuple(theta.shape)}"
        )
    return theta
