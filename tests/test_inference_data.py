"""`to_inference_data`, local validity and posterior predictive checks on simulator models."""

import importlib.util
from pathlib import Path

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import zuko
from pyro.infer import MCMC, NUTS

from pyro_sbi import NLE, NRE, SimulatorDistribution, to_inference_data, train
from pyro_sbi._arviz import ARVIZ_MAJOR, group_names, loo_estimates
from pyro_sbi.diagnostics import outside_training, ppc

EXAMPLES = Path(__file__).parents[1] / "examples"


@pytest.fixture(scope="module")
def quickstart():
    """The README's hierarchical model, trained briefly, with a simulator that records."""
    spec = importlib.util.spec_from_file_location("quickstart", EXAMPLES / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    recorded = []
    simulator = module.simulator

    def recording(theta):
        x = simulator(theta)
        recorded.append(x.clone())
        return x

    module.simulator = recording
    train(
        module.model, num_simulations=2000, seed=0, progress=False, fit_options={"max_epochs": 40}
    )
    pyro.set_rng_seed(1)
    x_obs = module.model()
    mcmc = MCMC(NUTS(module.model), warmup_steps=30, num_samples=40, disable_progbar=True)
    mcmc.run(x_obs)
    recorded.clear()
    idata = to_inference_data(mcmc, module.model, x_obs, prior=25)
    return module, mcmc, x_obs, idata, recorded


def test_every_group_with_plate_dims(quickstart):
    module, mcmc, x_obs, idata, _ = quickstart
    groups = set(group_names(idata))
    assert groups == {
        "posterior", "sample_stats", "log_likelihood", "posterior_predictive",
        "observed_data", "prior", "prior_predictive",
    }  # fmt: skip
    subjects, trials = module.SUBJECTS, module.TRIALS
    assert idata.posterior["theta"].dims == ("chain", "draw", "subjects", "theta_dim_1")
    assert idata.posterior["theta"].shape == (1, 40, subjects, 2)
    assert idata.posterior["mu"].dims == ("chain", "draw", "mu_dim_0")
    assert idata.log_likelihood["x"].dims == ("chain", "draw", "trials", "subjects")
    assert idata.posterior_predictive["x"].shape == (1, 40, trials, subjects, 2)
    assert idata.observed_data["x"].dims == ("trials", "subjects", "x_dim_2")
    assert np.array_equal(idata.observed_data["x"].values, x_obs.numpy())
    assert idata.prior["theta"].shape == (1, 25, subjects, 2)
    assert idata.prior_predictive["x"].shape == (1, 25, trials, subjects, 2)
    assert set(idata.sample_stats.data_vars) >= {"diverging", "lp", "step_size"}
    assert np.array_equal(idata.posterior["mu"].values[0], mcmc.get_samples()["mu"].numpy())


def test_log_likelihood_is_the_estimators_per_trial(quickstart):
    module, mcmc, x_obs, idata, _ = quickstart
    theta = mcmc.get_samples()["theta"][3]
    expected = module.likelihood.log_prob(x_obs, theta)
    assert torch.allclose(
        torch.as_tensor(idata.log_likelihood["x"].values[0, 3]), expected, atol=1e-5
    )


def test_posterior_predictive_comes_from_the_real_simulator(quickstart):
    module, mcmc, x_obs, idata, recorded = quickstart
    simulated = {tuple(row) for row in torch.cat(recorded).numpy().round(6).tolist()}
    predicted = idata.posterior_predictive["x"].values.reshape(-1, 2).round(6).tolist()
    assert all(tuple(row) in simulated for row in predicted)
    theta = torch.as_tensor(idata.posterior["theta"].values[0, 0])
    surrogate = module.likelihood(theta).sample((module.TRIALS,)).numpy().round(6).tolist()
    assert not any(tuple(row) in simulated for row in np.reshape(surrogate, (-1, 2)).tolist())


def test_loo_runs_and_sums_to_the_pointwise_log_likelihood(quickstart):
    *_, idata = quickstart[:4]
    elpd, p_loo, pointwise = loo_estimates(az.loo(idata, pointwise=True))
    # (chain, draw, trials, subjects), in double precision as ArviZ computes
    log_lik = idata.log_likelihood["x"].values.astype(np.float64)
    assert pointwise.shape == log_lik.shape[2:]
    assert np.isclose(pointwise.sum(), elpd)
    # elpd_loo = lppd - p_loo, lppd the log of the posterior mean likelihood per trial
    flat = log_lik.reshape(-1, *log_lik.shape[2:])
    lppd = (np.logaddexp.reduce(flat, axis=0) - np.log(len(flat))).sum()
    assert np.isclose(elpd + p_loo, lppd, rtol=1e-6)


def test_ppc_p_values(quickstart):
    *_, idata = quickstart[:4]
    """Bug caught: p-values of another column or statistic, or with the inequality flipped."""
    p_values = ppc(idata)
    assert set(p_values) == {f"{s}[{c}]" for s in ("mean", "sd", "min", "max") for c in (0, 1)}
    observed = idata.observed_data["x"].values  # (trials, subjects, 2)
    replicated = idata.posterior_predictive["x"].values.reshape(-1, *observed.shape)
    for name, statistic in (("mean", np.mean), ("sd", np.std), ("max", np.max)):
        for column in (0, 1):
            value = statistic(observed[..., column])
            expected = np.mean([statistic(x[..., column]) >= value for x in replicated])
            assert p_values[f"{name}[{column}]"] == pytest.approx(expected)
    p_values, figure = ppc(idata, {"mean": np.mean}, plot=True)
    assert 0.02 < p_values["mean"] < 0.98 and figure.axes


def linear_model(likelihood, trials=5, simulator=None):
    simulator = simulator or (lambda theta: theta + 0.5 * torch.randn_like(theta))

    def model(x=None):
        theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("trials", trials):
            return pyro.sample("x", SimulatorDistribution(simulator, theta, likelihood), obs=x)

    return model


def test_ppc_flags_a_misfit():
    def y_model(y=None):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("trials", 50):
            return pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    y = 3.0 * torch.randn(50)  # far more spread than the model allows
    idata = to_inference_data({"mu": 0.1 * torch.randn(200)}, y_model, y)
    assert ppc(idata, {"sd": np.std})["sd"] < 0.01


def test_nre_site_is_left_out_of_the_log_likelihood_with_a_warning():
    model = linear_model(NRE())
    train(model, num_simulations=300, progress=False, fit_options={"max_epochs": 2})
    x = model()
    with pytest.warns(UserWarning, match="not a normalised likelihood"):
        idata = to_inference_data({"theta": torch.randn(20, 2)}, model, x)
    assert "log_likelihood" not in group_names(idata)
    assert "posterior_predictive" in group_names(idata)


def test_posterior_outside_the_training_region_warns():
    likelihood = NLE(zuko.flows.MAF)
    model = linear_model(likelihood)
    proposal = dist.Uniform(-torch.ones(2), torch.ones(2)).to_event(1)
    train(
        model,
        num_simulations=500,
        proposal=proposal,
        progress=False,
        fit_options={"max_epochs": 2},
    )
    x = model()
    inside = {"theta": 0.5 * torch.rand(100, 2)}
    assert outside_training(inside, model, x) == {"x": 0.0}
    half = {"theta": torch.cat([0.5 * torch.rand(50, 2), 2.0 + torch.rand(50, 2)])}
    assert outside_training(half, model, x) == {"x": 0.5}
    with pytest.warns(
        UserWarning, match="50.0% of the posterior draws put its parameters outside"
    ):
        to_inference_data(half, model, x, posterior_predictive=False)


def test_returns_arvizs_own_object_for_the_installed_version(quickstart):
    *_, idata = quickstart[:4]
    if ARVIZ_MAJOR >= 1:
        import xarray as xr

        assert isinstance(idata, xr.DataTree)
    else:
        assert isinstance(idata, az.InferenceData)


def test_arviz_summary_compare_and_plots_take_it(quickstart):
    import matplotlib.pyplot as plt

    module, mcmc, _, idata, _ = quickstart
    summary = az.summary(idata, var_names=["mu"], kind="stats")
    means = mcmc.get_samples()["mu"].mean(0)  # (2,): one row per component
    assert np.allclose(summary["mean"].to_numpy(dtype=float), means.numpy(), atol=0.01)
    comparison = az.compare({"a": idata, "b": idata})
    assert sorted(comparison.index) == ["a", "b"]  # the same data twice: no difference
    assert np.allclose(comparison.iloc[:, comparison.columns.get_loc("elpd_diff")], 0.0)
    az.plot_trace(idata, var_names=["mu"])
    az.plot_forest(idata, var_names=["mu"])
    plt.close("all")


def tractable_model(y=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("trials", 5):
        return pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def test_many_chains_of_few_draws_keep_their_layout_without_a_warning():
    import warnings

    from pyro_sbi import SliceMCMC

    y = torch.zeros(5)
    run = SliceMCMC(tractable_model, num_samples=4, warmup_steps=5, num_chains=30, seed=0,
                    progress=False)  # fmt: skip
    run.run(y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        idata = to_inference_data(run, tractable_model, y)
    assert idata.posterior["mu"].shape == (30, 4)
    assert idata.posterior["mu"].dims == ("chain", "draw")


def test_a_model_with_observed_plates_runs_vectorised():
    """Observed data carry no dimension of draws; the model still runs for all draws at once."""
    from pyro_sbi.inference_data import DrawRunner

    def model(y=None):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("trials", 3):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    y = torch.tensor([0.1, -0.4, 2.0])
    runner = DrawRunner(model, (y,), {})
    mu = torch.randn(50)
    sites = runner({"mu": mu})
    assert runner.runner.vectorize
    assert sites["y"]["value"].shape == (50, 3) and torch.equal(sites["y"]["value"][7], y)
    expected = dist.Normal(mu.unsqueeze(-1), 1.0).log_prob(y)
    torch.testing.assert_close(sites["y"]["log_prob"], expected)
