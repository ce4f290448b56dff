from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import zuko
from pyro import poutine

from pyro_sbi import NLE, SimulatorDistribution, c2st, train
from pyro_sbi.diagnostics import sbc
from pyro_sbi.plot import plot_coverage, plot_sbc


def test_c2st_same_distribution_is_chance():
    a, b = torch.randn(2000, 2), torch.randn(2000, 2)
    assert abs(c2st(a, b) - 0.5) < 0.03


def test_c2st_far_apart_is_one():
    a, b = torch.randn(500, 3), torch.randn(500, 3) + 5.0
    assert c2st(a, b) > 0.99


def test_c2st_sees_a_half_sd_shift():
    # The best classifier of N(0, 1) vs N(0.5, 1) is right with probability Phi(0.25) = 0.60.
    a, b = torch.randn(2000, 1), torch.randn(2000, 1) + 0.5
    assert 0.55 < c2st(a, b) < 0.63


def test_c2st_is_seeded_and_leaves_the_global_state_alone():
    a, b = torch.randn(200, 2), torch.randn(300, 2) + 0.3
    state = torch.get_rng_state()
    assert c2st(a, b, steps=50) == c2st(a, b, steps=50)
    assert torch.equal(state, torch.get_rng_state())


def test_c2st_rejects_mismatched_dimensions():
    with pytest.raises(ValueError, match="different sizes"):
        c2st(torch.randn(10, 2), torch.randn(10, 3))


def test_c2st_refuses_non_finite_samples():
    a = torch.randn(100, 2)
    a[5, 1] = float("nan")
    with pytest.raises(ValueError, match="1 samples hold NaN"):
        c2st(a, torch.randn(100, 2) + 5.0)


# simulation-based calibration ------------------------------------------------------------

NOISE, TRIALS = 0.5, 5


def conjugate_model(x=None):
    theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("trials", TRIALS):
        return pyro.sample("x", dist.Normal(theta, NOISE).to_event(1), obs=x)


class exact_posterior:  # noqa: N801 - used like a function
    """Draws from the closed-form posterior of `conjugate_model` (optionally wrong)."""

    def __init__(self, shift=0.0, scale=1.0):
        self.shift, self.scale = shift, scale

    def __call__(self, conditioned, args, kwargs):
        x = poutine.trace(conditioned).get_trace(*args, **kwargs).nodes["x"]["value"]
        precision = 1.0 + TRIALS / NOISE**2
        mean, sd = x.sum(0) / NOISE**2 / precision, precision**-0.5
        return {"theta": mean + self.shift * sd + self.scale * sd * torch.randn(100, 2)}


def test_sbc_of_the_exact_posterior_is_calibrated():
    result = sbc(
        conjugate_model, num_datasets=200, num_draws=100, inference=exact_posterior(),
        observed=["x"], seed=0, progress=False,
    )  # fmt: skip
    assert result.ranks.shape == (200, 2) and result.names == ["theta[0]", "theta[1]"]
    assert 0 <= result.ranks.min() and result.ranks.max() <= 100
    assert not result.rejected(alpha=0.01)  # a false alarm in 1 % of seeds
    coverage = result.coverage([0.5, 0.9])
    for name in ("theta[0]", "theta[1]", "joint"):
        assert np.allclose(coverage[name], [0.5, 0.9], atol=0.1), (name, coverage[name])
    assert len(plot_sbc(result).axes) >= 2 and plot_coverage(result).axes


@pytest.mark.parametrize("shift, scale", [(1.0, 1.0), (0.0, 0.5)])
def test_sbc_rejects_a_biased_or_overconfident_posterior(shift, scale):
    result = sbc(
        conjugate_model, num_datasets=200, num_draws=100,
        inference=exact_posterior(shift, scale), observed=["x"], seed=0, progress=False,
    )  # fmt: skip
    assert result.rejected(alpha=0.001)
    if scale < 1:  # overconfident: the truth falls outside its credible regions too often
        assert result.coverage([0.5])["joint"][0] < 0.35


def test_sbc_is_reproducible_and_runs_on_an_executor():
    options = dict(
        num_datasets=6, num_draws=100, inference=exact_posterior(), observed=["x"], seed=3
    )
    local = sbc(conjugate_model, progress=False, **options)
    with ProcessPoolExecutor(2) as pool:
        parallel = sbc(conjugate_model, executor=pool, progress=False, **options)
    assert np.array_equal(local.ranks, parallel.ranks)


likelihood = NLE(zuko.flows.MAF)
biased = NLE(zuko.flows.MAF)


def simulator(theta):
    return theta + NOISE * torch.randn_like(theta)


def simulator_model(x=None, estimator=likelihood):
    theta = pyro.sample("theta", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
    with pyro.plate("trials", TRIALS):
        return pyro.sample("x", SimulatorDistribution(simulator, theta, estimator), obs=x)


def biased_model(x=None):
    return simulator_model(x, biased)


@pytest.mark.slow
def test_sbc_with_nuts_on_a_learned_likelihood():
    """100 data sets, default NUTS, on two worker processes; a shifted likelihood fails."""
    train(simulator_model, num_simulations=5000, seed=0, progress=False)
    theta = torch.randn(5000, 1)
    biased.fit(theta, simulator(theta) + 0.5, seed=0, progress=False)  # learned on shifted x
    options = dict(
        num_datasets=100, num_draws=100, warmup_steps=100, thin=1, seed=0, progress=False
    )
    with ProcessPoolExecutor(2) as pool:  # forked after training: workers hold the estimators
        good = sbc(simulator_model, executor=pool, **options)
        bad = sbc(biased_model, executor=pool, **options)
    assert not good.rejected(), good.p_values()
    assert bad.rejected(), bad.p_values()


def test_sbc_needs_data_sites():
    with pytest.raises(ValueError, match="observed="):
        sbc(conjugate_model, num_datasets=2, inference=exact_posterior(), progress=False)


def test_plots_of_samples_and_training():
    from pyro_sbi.plot import pair_plot, plot_history

    figure = pair_plot(torch.randn(300, 3), torch.randn(300, 3), truth=torch.zeros(3))
    assert len(figure.axes) == 9
    estimator = NLE(zuko.flows.MAF)
    histories = [estimator.fit(torch.randn(200, 1), torch.randn(200, 1), max_epochs=3,
                               progress=False) for _ in range(2)]  # fmt: skip
    assert len(plot_history(histories).axes[0].lines) == 4
    with pytest.raises(ValueError, match=r"\(n, D\)"):
        pair_plot(torch.randn(10))
