r"""Plots of posteriors and diagnostics (matplotlib; ArviZ's own plots where it has one).

- :func:`pair_plot`: pairwise scatter and marginal histograms of posterior draws, with
  an optional reference (e.g. a reference posterior or the true parameters);
- :func:`plot_sbc`: ECDF differences of SBC ranks with simultaneous 95 % bands
  (the bands computed by ArviZ, 0.x or 1.x; Säilynoja et al. 2022);
- :func:`plot_coverage`: expected coverage against the nominal level;
- :func:`plot_ppc`: posterior predictive statistics against the observed ones;
- :func:`plot_history`: training and validation losses.

Each returns the matplotlib `Figure`; save it with `figure.savefig("name.png")`.
"""

from __future__ import annotations

__all__ = ["pair_plot", "plot_coverage", "plot_history", "plot_ppc", "plot_sbc"]

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def _pyplot():
    import matplotlib.pyplot as plt

    return plt


def pair_plot(
    samples: Tensor | np.ndarray,
    reference: Tensor | np.ndarray | None = None,
    *,
    labels: Sequence[str] | None = None,
    truth: Tensor | np.ndarray | None = None,
    max_points: int = 2000,
):
    r"""Pairwise scatter plots and marginal histograms.

    Arguments:
        samples: `(n, D)` posterior draws.
        reference: `(m, D)` draws to compare with (e.g. a reference posterior).
        labels: `D` parameter names.
        truth: `(D,)` true parameters, marked in every panel.
        max_points: at most this many points per scatter plot.

    Returns:
        The matplotlib `Figure`.

    Example:
        >>> figure = pair_plot(torch.randn(100, 2), torch.randn(100, 2), labels=["a", "b"])
        >>> len(figure.axes)
        4
    """
    plt = _pyplot()
    samples = np.asarray(torch.as_tensor(samples).detach().cpu())
    if samples.ndim != 2:
        raise ValueError(f"pair_plot expects samples of shape (n, D); got {samples.shape}")
    d = samples.shape[1]
    labels = list(labels) if labels is not None else [f"theta[{i}]" for i in range(d)]
    sets = [("posterior", samples, "C0")]
    if reference is not None:
        sets.append(("reference", np.asarray(torch.as_tensor(reference).detach().cpu()), "C1"))
    figure, axes = plt.subplots(d, d, figsize=(2.4 * d + 0.6, 2.4 * d + 0.6), squeeze=False)
    for i in range(d):
        for j in range(d):
            ax = axes[i, j]
            if j > i:
                ax.axis("off")
                continue
            for name, values, color in sets:
                if i == j:
                    ax.hist(values[:, i], bins=40, density=True, histtype="step", color=color,
                            label=name)  # fmt: skip
                else:
                    shown = values[:max_points]
                    ax.scatter(shown[:, j], shown[:, i], s=2, alpha=0.3, color=color)
            if truth is not None:
                truth_ = np.asarray(torch.as_tensor(truth).detach().cpu())
                if i == j:
                    ax.axvline(truth_[i], color="k", linestyle="--")
                else:
                    ax.plot(truth_[j], truth_[i], "k+", markersize=12)
            if i == d - 1:
                ax.set_xlabel(labels[j])
            if j == 0 and i > 0:
                ax.set_ylabel(labels[i])
    if len(sets) > 1:
        axes[0, 0].legend(fontsize="small")
    figure.tight_layout()
    return figure


def plot_sbc(result, *, columns: int = 4):
    r"""ECDF of the fractional SBC ranks minus the uniform CDF, with simultaneous 95 % bands.

    A calibrated pipeline stays inside the band; a curve above it in the middle means
    an overdispersed (underconfident) posterior, below means overconfident, and a
    curve that leans to one side means a biased posterior.

    Arguments:
        result: an :class:`~pyro_sbi.diagnostics.SBCResult`.
        columns: panels per row.

    Returns:
        The matplotlib `Figure`.
    """
    from pyro_sbi._arviz import ecdf_band

    plt = _pyplot()
    p = len(result.names)
    columns = min(columns, p)
    rows = math.ceil(p / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), squeeze=False)
    u = (result.ranks + 0.5) / (result.num_draws + 1)
    p_values = result.p_values()
    for j, name in enumerate(result.names):
        ax = axes.flat[j]
        points, ecdf, lower, upper = ecdf_band(u[:, j], 0.95)
        ax.fill_between(points, lower - points, upper - points, step="post", color="C0",
                        alpha=0.2, label="95% band")  # fmt: skip
        ax.step(points, ecdf - points, where="post", color="C0")
        ax.axhline(0.0, color="k", linewidth=0.5)
        ax.set_title(f"{name} (p = {p_values[name]:.2f})", fontsize="small")
        ax.set_xlabel("fractional rank")
        if j % columns == 0:
            ax.set_ylabel("ECDF − uniform CDF")
    for ax in list(axes.flat)[p:]:
        ax.axis("off")
    figure.suptitle(f"SBC: {len(result.ranks)} data sets, {result.num_draws} draws each")
    figure.tight_layout()
    return figure


def plot_coverage(result, levels: Sequence[float] | None = None):
    r"""Empirical against nominal coverage: per parameter and joint (HPD regions).

    Arguments:
        result: an :class:`~pyro_sbi.diagnostics.SBCResult`.
        levels: nominal levels (0.05 to 0.95 by default).

    Returns:
        The matplotlib `Figure`.
    """
    plt = _pyplot()
    coverage = result.coverage(levels)
    level = coverage.pop("level")
    n = len(result.ranks)
    figure, ax = plt.subplots(figsize=(4.2, 4))
    band = 1.96 * np.sqrt(level * (1 - level) / n)
    ax.fill_between(level, level - band, level + band, color="grey", alpha=0.2,
                    label="95% band of a calibrated posterior")  # fmt: skip
    for name, values in coverage.items():
        style = {"color": "k", "linewidth": 2} if name == "joint" else {"alpha": 0.7}
        ax.plot(level, values, label=name, **style)
    ax.plot([0, 1], [0, 1], "k:", linewidth=1)
    ax.set_xlabel("credibility level")
    ax.set_ylabel("expected coverage")
    ax.legend(fontsize="x-small")
    figure.tight_layout()
    return figure


def plot_ppc(values: dict, p_values: dict):
    r"""Histograms of posterior predictive statistics with the observed value.

    Arguments:
        values: statistic name to `(observed value, (n,) replicated values)`.
        p_values: statistic name to its posterior predictive p-value.

    Returns:
        The matplotlib `Figure`.
    """
    plt = _pyplot()
    names = list(values)
    columns = min(4, len(names))
    rows = math.ceil(len(names) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 2.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        observed, replicated = values[name]
        ax.hist(replicated, bins=30, color="C0", alpha=0.7)
        ax.axvline(observed, color="k", linewidth=2)
        ax.set_title(f"{name}: p = {p_values[name]:.2f}", fontsize="small")
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    figure.suptitle("posterior predictive (real simulator) vs observed")
    figure.tight_layout()
    return figure


def plot_history(history):
    r"""Training and validation losses per epoch of one or several training runs.

    Arguments:
        history: a :class:`~pyro_sbi.fitting.History` or a list of them (an ensemble).

    Returns:
        The matplotlib `Figure`.
    """
    plt = _pyplot()
    histories = history if isinstance(history, list) else [history]
    figure, ax = plt.subplots(figsize=(5, 3.5))
    for i, item in enumerate(histories):
        suffix = f" {i}" if len(histories) > 1 else ""
        ax.plot(item.train_loss, color=f"C{i}", label=f"training{suffix}")
        ax.plot(item.validation_loss, color=f"C{i}", linestyle="--", label=f"validation{suffix}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(fontsize="small")
    figure.tight_layout()
    return figure
