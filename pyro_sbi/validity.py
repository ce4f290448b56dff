r"""The probability that a simulation at `theta` succeeds, learned from the failures.

A simulator that fails for some parameters (raises, returns NaN, runs out of time)
trains its likelihood estimator on the successful simulations only, so the estimator
learns :math:`q(x \mid \theta, \text{valid})`. An observed `x` is a valid output, so
its likelihood is

.. math::

    p(x, \text{valid} \mid \theta) = P(\text{valid} \mid \theta)\, p(x \mid \theta, \text{valid}),

and the posterior is :math:`p(\theta \mid x) \propto p(\theta)\, P(\text{valid} \mid
\theta)\, p(x \mid \theta, \text{valid})`. Leaving the first factor out would let the
posterior spread into parameters that cannot produce any data at all, where the
estimator only extrapolates. :func:`~pyro_sbi.train` therefore fits a
:class:`ValidityClassifier` on every simulated `theta` labelled valid or not whenever
simulations failed, attaches it to the estimator (`estimator.validity`), and
:class:`~pyro_sbi.SimulatorDistribution` adds :math:`\log P(\text{valid} \mid \theta)`
to the log-density of each observed value (each i.i.d. trial is a valid simulation).
The same holds for a ratio estimator trained on valid pairs, so the term is added for
NRE too. See also Lueckmann et al., "Flexible statistical inference for mechanistic
models of neural dynamics" (2017), who model failed simulations the same way.
"""

from __future__ import annotations

__all__ = ["ValidityClassifier"]

import torch.nn.functional as F
from torch import Tensor, nn

from pyro_sbi.estimator import Estimator
from pyro_sbi.networks import ResidualMLP


class ValidityClassifier(Estimator):
    r"""A classifier for :math:`P(\text{valid} \mid \theta)`: a residual MLP on z-scored `theta`.

    Trained with :func:`pyro_sbi.fitting.fit` on `theta (n, D)` and labels `(n, 1)` (1 for
    a valid simulation, 0 for a failed one) by binary cross-entropy.

    Arguments:
        hidden_features: width of the hidden layers.
        num_blocks: residual blocks.
        activation: the activation class (e.g. `nn.ELU`).

    Example:
        >>> import torch
        >>> theta = torch.randn(400, 1)
        >>> valid = (theta < 0).float()
        >>> classifier = ValidityClassifier()
        >>> _ = classifier.fit(theta, valid, max_epochs=50, progress=False, seed=0)
        >>> classifier.log_prob(torch.tensor([[-2.0], [2.0]])).exp().round(decimals=1)
        tensor([1., 0.])
    """

    def __init__(
        self,
        *,
        hidden_features: int = 64,
        num_blocks: int = 2,
        activation: type[nn.Module] = nn.ELU,
    ) -> None:
        super().__init__(z_score=True)
        self.hidden_features = hidden_features
        self.num_blocks = num_blocks
        self.activation = activation

    def _build(self) -> None:
        self.net = ResidualMLP(
            self.theta_dim, 1, hidden_features=self.hidden_features, num_blocks=self.num_blocks,
            activation=self.activation,
        )  # fmt: skip

    def config(self) -> dict:
        """The constructor's options."""
        return {
            "hidden_features": self.hidden_features,
            "num_blocks": self.num_blocks,
            "activation": self.activation.__name__,
        }

    def logits(self, theta: Tensor) -> Tensor:
        r"""`theta (*, D) -> (*)`: the logit of :math:`P(\text{valid} \mid \theta)`."""
        theta = theta.to(self.theta_loc.dtype)
        return self.net((theta - self.theta_loc) / self.theta_scale).squeeze(-1)

    def loss(self, theta: Tensor, valid: Tensor) -> Tensor:
        """Binary cross-entropy of `valid (n, 1)` labels at `theta (n, D)`."""
        return F.binary_cross_entropy_with_logits(self.logits(theta), valid[..., 0])

    def log_prob(self, theta: Tensor) -> Tensor:
        r"""`theta (*, D) -> (*)`: :math:`\log P(\text{valid} \mid \theta)`, differentiable."""
        return F.logsigmoid(self.logits(theta))
