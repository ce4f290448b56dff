r"""Expected coverage from random reference points (TARP; Lemos et al., 2023).

For simulated data sets :math:`i = 1..n` with true parameters :math:`\theta^*_i` and
posterior draws :math:`\theta_{ij}`, draw a reference point :math:`\theta^r_i` at
random, and let :math:`f_i` be the share of draws closer to :math:`\theta^r_i` than the
truth is. The ball around :math:`\theta^r_i` through :math:`\theta^*_i` is a credible
region of level :math:`f_i`; for a calibrated posterior the truth falls inside the
region of level :math:`\alpha` with probability :math:`\alpha`, so the :math:`f_i` are
uniform and the expected coverage :math:`\mathrm{ECP}(\alpha) = \frac{1}{n} \sum_i
[f_i < \alpha]` is the diagonal. A posterior too narrow lies above it
(:math:`f_i` near 1), one too wide below it, and a biased one bends it. Unlike the
per-parameter ranks of SBC, one test covers the joint posterior, and it needs only
draws (no density).

References:
    | Sampling-Based Accuracy Testing of Posterior Estimators for General Inference
      (Lemos, Coogan, Hezaveh & Perreault-Levasseur, 2023)
    | https://arxiv.org/abs/2302.03026
"""

from __future__ import annotations

__all__ = ["TARPResult", "tarp"]

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class TARPResult:
    r"""The expected coverage of :func:`tarp`.

    Attributes:
        alpha: `(K,)` credibility levels in `[0, 1]`.
        ecp: `(K,)` expected coverage at each level (the diagonal when calibrated).
        f: `(n,)` the credibility level of each truth's region (uniform when calibrated).
        max_deviation: :math:`\max_\alpha |\mathrm{ECP}(\alpha) - \alpha|`.
        p_value: the Kolmogorov–Smirnov p-value of `f` against the uniform.
    """

    alpha: np.ndarray
    ecp: np.ndarray
    f: np.ndarray
    max_deviation: float
    p_value: float

    def plot(self, ax=None):
        """Plots the expected coverage against the credibility level, with the diagonal.

        Arguments:
            ax: a matplotlib `Axes` to draw in; a new figure when `None`.

        Returns:
            The matplotlib `Axes`.
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(4, 4))
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
        ax.plot(self.alpha, self.ecp)
        ax.set_xlabel("credibility level")
        ax.set_ylabel("expected coverage")
        return ax


def tarp(
    draws: Tensor,
    truths: Tensor,
    *,
    references: Tensor | None = None,
    num_levels: int = 101,
    seed: int | None = None,
) -> TARPResult:
    r"""Tests the coverage of a posterior estimator with random reference points.

    Every coordinate is standardised by the sd of the truths before distances are
    taken, so that parameters on different scales weigh alike.

    Arguments:
        draws: `(n, L, D)` posterior draws, `L` for each of `n` data sets.
        truths: `(n, D)` the parameters each data set was simulated at.
        references: `(n, D)` reference points; by default uniform on the box of the
            truths (the choice of Lemos et al.).
        num_levels: the number `K` of credibility levels.
        seed: seeds the reference points.

    Returns:
        A :class:`TARPResult`.

    Example:
        >>> theta = torch.randn(500, 2)  # truths from the prior N(0, 1)
        >>> x = theta + torch.randn(500, 2)  # data with noise sd 1
        >>> exact = x[:, None] / 2 + torch.randn(500, 200, 2) / 2**0.5  # the posterior
        >>> tarp(exact, theta, seed=0).max_deviation < 0.1
        True
        >>> too_narrow = x[:, None] / 2 + torch.randn(500, 200, 2) / 4
        >>> tarp(too_narrow, theta, seed=0).max_deviation > 0.2
        True
    """
    draws, truths = torch.as_tensor(draws), torch.as_tensor(truths)
    if truths.dim() == 1:
        truths = truths[:, None]
    if draws.dim() == 2:
        draws = draws[..., None]
    if draws.dim() != 3 or truths.shape != (draws.shape[0], draws.shape[2]):
        raise ValueError(
            f"tarp expects draws (n, L, D) and truths (n, D); got {tuple(draws.shape)} and "
            f"{tuple(truths.shape)}"
        )
    draws, truths = draws.double(), truths.double()
    scale = truths.std(0).clamp(min=1e-12)
    if references is None:
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        low, high = truths.min(0).values, truths.max(0).values
        u = torch.rand(truths.shape, generator=generator, dtype=truths.dtype)
        references = low + (high - low) * u
    references = torch.as_tensor(references, dtype=truths.dtype)
    to_draws = ((draws - references[:, None]) / scale).norm(dim=-1)  # (n, L)
    to_truth = ((truths - references) / scale).norm(dim=-1)  # (n,)
    f = (to_draws < to_truth[:, None]).double().mean(-1).numpy()
    alpha = np.linspace(0.0, 1.0, num_levels)
    ecp = (f[None, :] < alpha[:, None]).mean(-1)
    from scipy.stats import kstest

    return TARPResult(
        alpha, ecp, f, float(np.abs(ecp - alpha).max()), float(kstest(f, "uniform").pvalue)
    )
