r"""Ensembles: several estimators of one kind, trained on the same simulations, combined.

A learned likelihood or ratio scatters from one training run to the next: the
initialisation, the validation split and the order of the batches all move it, and
with :math:`n` i.i.d. trials its errors add up :math:`n` times. Averaging :math:`M`
members trained with different seeds (hence different initial weights and validation
splits, a form of bagging) shrinks that scatter.

For normalised members (NLE, MNLE) the ensemble is the mixture

.. math::

    q(x \mid \theta) = \frac{1}{M} \sum_{m=1}^{M} q_m(x \mid \theta) ,

itself a normalised density, so it stays valid for pointwise log-likelihoods and LOO.
For ratio estimators (NRE) it is the geometric mean of the ratios,

.. math::

    \log r(x, \theta) = \frac{1}{M} \sum_{m=1}^{M} \log r_m(x, \theta) ,

which keeps the property each member has: correct in :math:`\theta` up to a term in
:math:`x` alone (the members of NRE-B each carry their own such term).

References:
    | Simple and Scalable Predictive Uncertainty Estimation using Deep Ensembles
      (Lakshminarayanan et al., 2017)
    | https://arxiv.org/abs/1612.01474

    | A Trust Crisis In Simulation-Based Inference? Your Posterior Approximations Can
      Be Unfaithful (Hermans et al., 2022)
    | https://arxiv.org/abs/2110.06581
"""

from __future__ import annotations

__all__ = ["Ensemble"]

import math
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import torch
from torch import Size, Tensor, nn
from torch.distributions import Distribution, constraints

from pyro_sbi._checks import as_count
from pyro_sbi.conditional import EstimatorDistribution
from pyro_sbi.estimator import BUFFERS, Estimator, estimator_class
from pyro_sbi.fitting import History
from pyro_sbi.streamed import StoredPairs


class Ensemble(Estimator):
    r"""`size` estimators made by `factory`, trained with different seeds, averaged.

    It is an estimator like its members: lazy until :meth:`fit`, usable in a
    :class:`~pyro_sbi.SimulatorDistribution` and by :func:`~pyro_sbi.train`, saved and
    loaded in one file. Training and evaluation cost `size` times those of one member.

    What averaging members gains is measured on the benchmarks page ("Ensembles").

    Arguments:
        factory: makes one untrained member, e.g. `lambda: NRE("A")`.
        size: the number of members `M`.
        bootstrap: train each member on its own bootstrap resample of the training
            simulations (see :func:`pyro_sbi.fitting.fit`), so that the members disagree as
            much as estimators trained on other simulations would. That disagreement is
            what :func:`pyro_sbi.diagnostics.likelihood_error` turns into an error of the
            posterior; without it, the members share every simulation and their
            disagreement shows only the scatter of training.

    Example:
        >>> from pyro_sbi import NRE
        >>> theta = torch.randn(1000, 2)
        >>> x = theta + 0.1 * torch.randn(1000, 2)
        >>> ratio = Ensemble(lambda: NRE("A"), size=3)
        >>> histories = ratio.fit(theta, x, max_epochs=2, progress=False, seed=0)
        >>> len(histories), ratio.log_prob(torch.zeros(10, 1, 2), torch.zeros(3, 2)).shape
        (3, torch.Size([10, 3]))
    """

    streams: ClassVar[bool] = False  # members are trained on the data in memory

    def __init__(
        self, factory: Callable[[], Estimator], size: int = 5, *, bootstrap: bool = False
    ) -> None:
        super().__init__()
        size = as_count(size, "Ensemble: size")
        self.bootstrap = bool(bootstrap)
        members = [factory() for _ in range(size)]
        kinds = {type(member) for member in members}
        if not all(isinstance(member, Estimator) for member in members) or len(kinds) > 1:
            raise TypeError(
                "Ensemble: factory() must return pyro_sbi estimators of one class, e.g. "
                f"lambda: NLE(); got {sorted(kind.__name__ for kind in kinds)}"
            )
        self.members = nn.ModuleList(members)
        self.normalized = members[0].normalized

    @property
    def size(self) -> int:
        """The number of members."""
        return len(self.members)

    def _build(self) -> None:
        # Members share the ensemble's data, hence its shapes; their own statistics
        # (set by their fit, or read back by load) start as copies of the ensemble's.
        for member in self.members:
            member.theta_dim, member.x_shape = self.theta_dim, self.x_shape
            for name in BUFFERS:
                setattr(member, name, getattr(self, name).clone())
            member._build()

    def fit(self, theta: Tensor, x: Tensor | None = None, **options) -> list[History]:
        r"""Trains every member on `(theta, x)`, member `m` with the seed `seed + m`.

        Arguments:
            theta: `(n, D)` parameters.
            x: `(n, *x_shape)` simulator outputs.
            options: options of :func:`pyro_sbi.fitting.fit`.

        Returns:
            The training :class:`~pyro_sbi.fitting.History` of each member.
        """
        if isinstance(theta, StoredPairs):
            self._check_stored(theta, x)
        theta, x = self._check_pair(theta, x)
        self.build(theta, x)
        seed = options.pop("seed", None)
        options.setdefault("bootstrap", self.bootstrap)
        histories = []
        for m, member in enumerate(self.members):
            member_seed = None if seed is None else seed + m
            try:
                histories.append(member.fit(theta, x, seed=member_seed, **options))
            except KeyboardInterrupt as interrupt:  # the members after m never trained
                raise KeyboardInterrupt(
                    f"training interrupted at member {m + 1} of {self.size}; the ensemble "
                    "is left untrained"
                ) from interrupt
        self.num_simulations = len(theta)
        self.requires_grad_(False)
        self.eval()
        return histories

    def config(self) -> dict:
        """The members' class and options, and the size."""
        member = self.members[0]
        return {
            "member": type(member).__name__,
            "options": member.config(),
            "size": self.size,
            "bootstrap": self.bootstrap,
        }

    @classmethod
    def from_config(cls, config: dict, **overrides) -> Ensemble:
        """An untrained ensemble from :meth:`config`; `overrides` go to the members."""
        kind = estimator_class(config["member"], "Ensemble")
        return cls(
            lambda: kind.from_config(config["options"], **overrides),
            config["size"],
            bootstrap=config.get("bootstrap", False),
        )

    @classmethod
    def load(cls, path: str | Path, **overrides) -> Ensemble:
        """Reads an ensemble written by :meth:`save` (see :meth:`Estimator.load`)."""
        ensemble = super().load(path, **overrides)
        for member in ensemble.members:
            member.num_simulations = ensemble.num_simulations
        return ensemble

    def extra_repr(self) -> str:
        """The size."""
        return f"size={self.size}, bootstrap={self.bootstrap}"

    @property
    def support(self) -> constraints.Constraint:
        """The members' support of `x`."""
        return self.members[0].support

    def check_support(self, x: Tensor) -> None:
        """Raises as the members do for values of `x` outside their support."""
        self.members[0].check_support(x)

    def members_log_prob(self, x: Tensor, theta: Tensor) -> Tensor:
        r"""Every member's log-density (or log-ratio), stacked.

        Arguments:
            x: `(*, *x_shape)` simulator outputs.
            theta: `(*, D)` parameters; broadcast against the batch shape of `x`.

        Returns:
            `(M, *)` one row per member over the broadcast batch shape; :meth:`log_prob`
            is their log-mean-exp (normalised members) or mean (ratios) over the first
            dimension.
        """
        self.check_trained()
        return torch.stack([member.log_prob(x, theta) for member in self.members])

    def combine(self, values: Tensor) -> Tensor:
        r"""The ensemble's value from the members' values.

        Arguments:
            values: `(M, *)` as returned by :meth:`members_log_prob`.

        Returns:
            `(*)` the log-mean-exp (normalised members) or the mean (ratios).
        """
        if self.normalized:
            return values.logsumexp(0) - math.log(self.size)
        return values.mean(0)

    def log_prob(self, x: Tensor, theta: Tensor) -> Tensor:
        r"""The mixture density (normalised members) or the mean log-ratio (NRE members).

        Arguments:
            x: `(*, *x_shape)` simulator outputs.
            theta: `(*, D)` parameters; broadcast against the batch shape of `x`.

        Returns:
            `(*)` log-densities (or log-ratios) over the broadcast batch shape.
        """
        return self.combine(self.members_log_prob(x, theta))

    def forward(self, theta: Tensor) -> Distribution:
        r"""The mixture of the members' likelihoods at `theta` (normalised members only).

        Arguments:
            theta: `(*, D)` parameters.

        Returns:
            A distribution with batch shape `*` and event shape `x_shape`.
        """
        self.check_trained()
        if not self.normalized:
            raise TypeError("an ensemble of ratio estimators is not a distribution over x")
        return _Mixture(self, theta)


class _Mixture(EstimatorDistribution):
    r"""The equally weighted mixture of the members' likelihoods at `theta`."""

    @torch.no_grad()
    def sample(self, sample_shape: Size = Size()) -> Tensor:  # noqa: B008
        members = self.estimator.members
        draws = torch.stack([member(self.theta).sample(sample_shape) for member in members])
        shape = draws.shape[1 : draws.dim() - len(self.event_shape)]
        pick = torch.randint(len(members), shape, device=draws.device)
        pick = pick.reshape((1, *shape) + (1,) * len(self.event_shape))
        return draws.gather(0, pick.expand((1,) + draws.shape[1:])).squeeze(0)
