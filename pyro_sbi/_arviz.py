r"""The one place that knows which ArviZ is installed.

ArviZ 0.x (Python 3.11 resolves 0.23) keeps data in `arviz.InferenceData`; ArviZ 1.x
(Python >= 3.12) keeps it in xarray's `DataTree` (built by `arviz_base`), renames or
drops several functions (`plot_ecdf` is gone; the ECDF bands live in `arviz_stats`)
and returns `PlotCollection`s from its plots. Everything in `pyro_sbi` that touches
ArviZ goes through the functions here, so the rest of the package reads the same on
both lines:

- :func:`from_dict`: ArviZ's own object for the installed version;
- :func:`group_names`: the groups of either object;
- :func:`loo_estimates`: the numbers of an `az.loo` result, whose names differ;
- :func:`ecdf_band`: the ECDF of values on `[0, 1]` with simultaneous bands for the
  uniform distribution (Säilynoja, Bürkner & Vehtari 2022), computed by ArviZ.
"""

from __future__ import annotations

__all__ = ["ARVIZ_MAJOR", "ecdf_band", "from_dict", "group_names", "loo_estimates"]

import warnings
from importlib.metadata import version

import numpy as np

ARVIZ_MAJOR = int(version("arviz").split(".")[0])

# ArviZ guesses the layout of (chain, draw, ...) arrays and warns when chains outnumber
# draws (250 chains of 40 draws is a normal SliceMCMC run); our arrays are always laid
# out as (chain, draw, ...), so the guess is not needed.
_LAYOUT_WARNINGS = (
    r"More chains \(\d+\) than draws \(\d+\)",
    r"Found chain dimension to be longer than draw dimension",
)


def from_dict(groups: dict[str, dict[str, np.ndarray]], coords: dict, dims: dict):
    r"""ArviZ's data object from arrays laid out as `(chain, draw, *shape)`.

    Arguments:
        groups: group name (`"posterior"`, `"observed_data"`, ...) to a mapping from
            variable name to array; arrays of every group but `observed_data` are
            `(chain, draw, *shape)`.
        coords: dimension name to coordinate values.
        dims: variable name to the names of its dimensions after `chain` and `draw`.

    Returns:
        An `arviz.InferenceData` with ArviZ 0.x, an `xarray.DataTree` with ArviZ 1.x.

    Example:
        >>> idata = from_dict({"posterior": {"mu": np.zeros((2, 5))}}, {}, {})
        >>> group_names(idata)
        ['posterior']
    """
    with warnings.catch_warnings():
        for message in _LAYOUT_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        if ARVIZ_MAJOR >= 1:
            from arviz_base import from_dict as from_dict_1

            return from_dict_1(groups, coords=coords, dims=dims)
        import arviz as az

        return az.from_dict(**groups, coords=coords, dims=dims)


def group_names(idata) -> list[str]:
    r"""The names of the groups of an `InferenceData` or a `DataTree`, in their order.

    Example:
        >>> idata = from_dict({"posterior": {"mu": np.zeros((1, 3))},
        ...                    "observed_data": {"y": np.zeros(2)}}, {}, {})
        >>> group_names(idata)
        ['posterior', 'observed_data']
    """
    if hasattr(idata, "children"):  # a DataTree
        return list(idata.children)
    return list(idata.groups())


def loo_estimates(loo) -> tuple[float, float, np.ndarray]:
    r"""`(elpd_loo, p_loo, pointwise elpd)` of the result of `az.loo(..., pointwise=True)`.

    ArviZ 0.x names them `elpd_loo`, `p_loo` and `loo_i`; 1.x `elpd`, `p` and `elpd_i`.

    Returns:
        The expected log pointwise predictive density, the effective number of
        parameters, and the `(*observations)` pointwise elpd values.
    """
    if hasattr(loo, "elpd_loo"):
        return float(loo.elpd_loo), float(loo.p_loo), np.asarray(loo.loo_i)
    return float(loo.elpd), float(loo.p), np.asarray(loo.elpd_i)


def ecdf_band(
    values: np.ndarray, prob: float = 0.95, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    r"""The ECDF of `values` on `[0, 1]` and a simultaneous `prob` band for uniform values.

    The band holds the whole ECDF of `n` uniform values with probability `prob`
    (ArviZ's optimised band on 0.x, its simulated band on 1.x; both follow Säilynoja,
    Bürkner & Vehtari 2022, "Graphical test for discrete uniformity").

    Arguments:
        values: `(n,)` values in `[0, 1]`, e.g. fractional SBC ranks.
        prob: probability that the ECDF of `n` uniform values lies inside the band.
        seed: seeds the simulation of the band (1.x).

    Returns:
        `(points, ecdf, lower, upper)`, each `(m,)`: evaluation points in `[0, 1]`, the
        ECDF there, and the band's lower and upper edges (CDF values, not differences).

    Example:
        >>> points, ecdf, lower, upper = ecdf_band(np.random.default_rng(0).uniform(size=50))
        >>> bool(np.all(lower <= upper)) and bool(np.all((lower <= ecdf) & (ecdf <= upper)))
        True
    """
    values = np.asarray(values, dtype=float).ravel()
    n = len(values)
    if ARVIZ_MAJOR >= 1:
        from arviz_stats.ecdf_utils import ecdf_pit

        points, ecdf, lower, upper = ecdf_pit(values, prob, 1000, rng=np.random.default_rng(seed))
        return (np.asarray(points), np.asarray(ecdf), np.asarray(lower), np.asarray(upper))
    from arviz.stats.ecdf_utils import compute_ecdf, ecdf_confidence_band

    points = np.linspace(0.0, 1.0, min(n, 100) + 1)
    ecdf = compute_ecdf(np.sort(values), points)
    lower, upper = ecdf_confidence_band(n, points, points, prob=prob, method="optimized")
    return points, ecdf, np.asarray(lower), np.asarray(upper)
