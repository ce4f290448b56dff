r"""A trained estimator at fixed parameters, as a torch distribution over `x`.

:class:`EstimatorDistribution` is what `estimator(theta)` returns: `log_prob` asks the
estimator, and the estimators whose density can be sampled (NLE, MNLE, ensembles of
them) subclass it with `sample`.
"""

from __future__ import annotations

__all__ = ["EstimatorDistribution"]

from typing import TYPE_CHECKING

from torch import Tensor
from torch.distributions import Distribution, constraints

if TYPE_CHECKING:
    from pyro_sbi.estimator import Estimator


class EstimatorDistribution(Distribution):
    r"""A trained estimator at fixed `theta`, as a torch distribution over `x`.

    `log_prob` asks the estimator; subclasses add `sample` (and `rsample`).

    Arguments:
        estimator: a trained estimator.
        theta: `(*, D)` parameters: the batch shape is `*`, the event shape `x_shape`.
    """

    arg_constraints = {}

    def __init__(self, estimator: Estimator, theta: Tensor) -> None:
        self.estimator = estimator
        self.theta = theta
        super().__init__(theta.shape[:-1], estimator.x_shape, validate_args=False)

    @property
    def support(self) -> constraints.Constraint:
        """The estimator's support of `x`."""
        return self.estimator.support

    def log_prob(self, value: Tensor) -> Tensor:
        """`(*, *x_shape) -> (*)`: the estimator's log-density at `theta`."""
        return self.estimator.log_prob(value, self.theta)

    def _theta_z(self) -> Tensor:
        """`theta` z-scored with the training statistics, in the estimator's dtype."""
        estimator = self.estimator
        theta = self.theta.to(estimator.theta_loc.dtype)
        return (theta - estimator.theta_loc) / estimator.theta_scale
