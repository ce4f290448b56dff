r"""Posterior predictive checks: statistics of the observed data against simulated data."""

from __future__ import annotations

__all__ = ["ppc"]

from collections.abc import Callable, Mapping

import numpy as np


def ppc(
    idata,
    statistics: Mapping[str, Callable] | None = None,
    *,
    var_name: str | None = None,
    plot: bool = False,
):
    r"""Posterior predictive p-values: observed statistics against simulated ones.

    For each statistic `T`, the p-value is the share of posterior predictive data sets
    (simulated by the real simulator, see :func:`~pyro_sbi.to_inference_data`) with
    `T(x_rep) >= T(x_obs)`; values near 0 or 1 flag a misfit.

    Arguments:
        idata: an `InferenceData` with `observed_data` and `posterior_predictive`.
        statistics: name to function `x (*shape) -> scalar` of a numpy array with the
            observed site's shape; by default the mean, standard deviation, minimum
            and maximum of every column of the last dimension.
        var_name: the observed site (the only one by default).
        plot: also draw a histogram of each statistic with the observed value.

    Returns:
        A dict from statistic name to p-value (and the matplotlib figure as
        `(p_values, figure)` when `plot`).
    """
    names = list(idata.observed_data.data_vars)
    var_name = var_name or names[0]
    if var_name not in names:
        raise ValueError(f"no observed site {var_name!r}; the observed sites are {names}")
    observed = idata.observed_data[var_name].values
    simulated = idata.posterior_predictive[var_name].values
    simulated = simulated.reshape(-1, *observed.shape)
    if statistics is None:
        statistics = _default_statistics(observed)
    p_values, values = {}, {}
    for name, statistic in statistics.items():
        reference = float(statistic(observed))
        replicated = np.array([float(statistic(x)) for x in simulated])
        values[name] = (reference, replicated)
        p_values[name] = float(np.mean(replicated >= reference))
    if not plot:
        return p_values
    from pyro_sbi.plot import plot_ppc

    return p_values, plot_ppc(values, p_values)


def _default_statistics(observed: np.ndarray) -> dict[str, Callable]:
    columns = observed.shape[-1] if observed.ndim > 1 else 1
    statistics = {}
    for column in range(columns):

        def part(x, column=column):
            return x[..., column] if x.ndim > 1 else x

        suffix = f"[{column}]" if columns > 1 else ""
        statistics[f"mean{suffix}"] = lambda x, part=part: np.nanmean(part(x))
        statistics[f"sd{suffix}"] = lambda x, part=part: np.nanstd(part(x))
        statistics[f"min{suffix}"] = lambda x, part=part: np.nanmin(part(x))
        statistics[f"max{suffix}"] = lambda x, part=part: np.nanmax(part(x))
    return statistics
