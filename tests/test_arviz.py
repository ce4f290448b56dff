"""The ArviZ compatibility layer: the same answers on ArviZ 0.x and 1.x."""

import numpy as np
import pytest

from pyro_sbi._arviz import ecdf_band, from_dict, group_names


def _inside(values: np.ndarray) -> bool:
    _, ecdf, lower, upper = ecdf_band(values, 0.95)
    return bool(np.all((lower <= ecdf) & (ecdf <= upper)))


def test_the_ecdf_band_holds_uniform_values_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    share = np.mean([_inside(rng.uniform(size=100)) for _ in range(100)])
    assert 0.88 <= share <= 1.0  # 95 % nominal; 100 replications: sd 2.2 %


def test_the_ecdf_band_rejects_skewed_values():
    rng = np.random.default_rng(1)
    share = np.mean([_inside(rng.uniform(size=100) ** 1.5) for _ in range(20)])
    assert share <= 0.2


def test_the_ecdf_band_spans_the_unit_interval():
    points, ecdf, lower, upper = ecdf_band(np.linspace(0.01, 0.99, 50))
    assert points[0] == 0.0 and points[-1] == 1.0
    assert ecdf[0] == 0.0 and ecdf[-1] == 1.0
    assert np.all(np.diff(lower) >= 0) and np.all(np.diff(upper) >= 0)


@pytest.mark.parametrize("chains, draws", [(2, 50), (250, 40)])
def test_from_dict_keeps_the_chain_draw_layout(chains, draws):
    idata = from_dict(
        {"posterior": {"mu": np.zeros((chains, draws, 3))}, "observed_data": {"y": np.ones(4)}},
        coords={"k": np.arange(3)},
        dims={"mu": ["k"]},
    )
    assert group_names(idata) == ["posterior", "observed_data"]
    assert idata.posterior["mu"].dims == ("chain", "draw", "k")
    assert idata.posterior["mu"].shape == (chains, draws, 3)
