"""Pyro's own NUTS and SVI on simulator models, against closed-form posteriors."""

import pyro
import pyro.distributions as dist
import pytest
import torch
import zuko
from models import hierarchical
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_sbi import NLE, NRE, SimulatorDistribution, train

NOISE, TRIALS = 0.5, 10


def linear_gaussian(theta):
    return theta + NOISE * torch.randn_like(theta)


def closed_form(x_o):
    """Posterior of theta ~ N(0, I), x_i ~ N(theta, NOISE^2 I), i = 1..TRIALS."""
    precision = 1.0 + TRIALS / NOISE**2
    return x_o.sum(0) / NOISE**2 / precision, torch.full((2,), precision**-0.5)


def trials_model(likelihood):
    """`theta (2,)` from N(0, I), then `TRIALS` i.i.d. trials of `linear_gaussian`."""

    def model(x_o=None):
        theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("trials", TRIALS):
            pyro.sample("x", SimulatorDistribution(linear_gaussian, theta, likelihood), obs=x_o)

    return model


@pytest.fixture(scope="module")
def linear_model():
    likelihood = NLE(zuko.flows.MAF)
    model = trials_model(likelihood)
    train(model, num_simulations=20_000, seed=0, progress=False)
    torch.manual_seed(123)
    x_o = linear_gaussian(torch.tensor([0.6, -0.9]).expand(TRIALS, 2))
    return model, x_o, learned_posterior(likelihood, x_o)


def learned_posterior(likelihood, x_o):
    """Mean and sd of the posterior under the learned likelihood, on a fine grid (exact)."""
    grid = torch.linspace(-3.0, 3.0, 301)
    theta = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        log_p = likelihood.log_prob(x_o[:, None], theta).sum(0)
    log_p = log_p + dist.Normal(0.0, 1.0).log_prob(theta).sum(-1)
    weights = (log_p - log_p.max()).exp()
    weights = weights / weights.sum()
    mean = (weights[:, None] * theta).sum(0)
    return mean, (weights[:, None] * (theta - mean) ** 2).sum(0).sqrt()


# How far a likelihood learned from 20,000 simulations puts this 10-trial posterior from
# the closed form depends on the training draw: with NLE()'s defaults (a MAF, weight
# averaging 0.99) the largest error of the posterior mean, in posterior sds, over training
# seeds 0..5 was 0.197, 0.159, 0.123, 0.187, 0.091, 0.122 (sd errors at most 0.043); raw
# weights gave 0.37 for seed 0. Training longer (patience 60) or averaging more (0.998)
# leaves them as they are: the scatter comes from the simulations. The samplers are held
# to the exact posterior of the learned likelihood tightly, and the learned posterior to
# the closed form within that measured scatter.
LEARNED_MEAN_ERROR, LEARNED_SD_ERROR = 0.25, 0.1


def close_to_closed_form(x_o, mean, sd, mean_error=LEARNED_MEAN_ERROR):
    """Whether a posterior's `mean (2,)` and `sd (2,)` are within `mean_error` posterior
    sds and `LEARNED_SD_ERROR` of the closed form."""
    true_mean, true_sd = closed_form(x_o)
    return bool(((mean - true_mean).abs() / true_sd).max() < mean_error) and bool(
        ((sd / true_sd - 1).abs()).max() < LEARNED_SD_ERROR
    )


@pytest.mark.slow
def test_learned_posterior_is_close_to_the_closed_form(linear_model):
    _, x_o, (mean, sd) = linear_model
    assert close_to_closed_form(x_o, mean, sd)


class ShiftedLikelihood:
    """The exact likelihood of `linear_gaussian`, its mean `theta` scaled by `scale`."""

    def __init__(self, scale):
        self.scale = scale

    def log_prob(self, x, theta):
        return dist.Normal(self.scale * theta, NOISE).log_prob(x).sum(-1)


# The bound a learned likelihood should meet: 0.15 posterior sds. A likelihood whose mean
# is 5 % off moves this posterior by 0.21-0.28 sds (five data sets), so 0.15 sees it and
# LEARNED_MEAN_ERROR (0.25, what NLE() from 20,000 simulations meets today) does not always.
TARGET_MEAN_ERROR = 0.15


@pytest.mark.parametrize("seed", range(5))
def test_the_target_bound_rejects_a_likelihood_biased_by_five_percent(seed):
    """The 0.15-sd bound passes the exact likelihood and fails one whose mean is 5 % off
    (`theta` scaled by 1.05 or 0.95), on five data sets of the slow test's shape: a bound
    loosened until it cannot see such a bias (0.25 does not, on four of the five) fails
    here."""
    torch.manual_seed(seed)
    x_o = linear_gaussian(torch.tensor([0.6, -0.9]).expand(TRIALS, 2))
    exact = learned_posterior(ShiftedLikelihood(1.0), x_o)
    assert close_to_closed_form(x_o, *exact, mean_error=TARGET_MEAN_ERROR)
    for scale in (1.05, 0.95):
        shifted = learned_posterior(ShiftedLikelihood(scale), x_o)
        assert not close_to_closed_form(x_o, *shifted, mean_error=TARGET_MEAN_ERROR)


# Errors of NLE() from 20,000 prior simulations in the test above, data sets 123 + seed,
# seeds 0-4: 0.197, 0.150, 0.060, 0.212, 0.085 (three of five above 0.15). Two rounds
# of 10,000 (the second from the posterior given the 10 trials): 0.030, 0.037, 0.085,
# 0.056, 0.092. NRE() from the prior: 0.069, 0.122, 0.031, 0.106, 0.096.
@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("estimator", "rounds"), [(NLE, 2), (NRE, 1)], ids=["nle-2", "nre-1"])
def test_the_posterior_meets_the_target_bound_on_every_seed(estimator, rounds, seed):
    """NLE trained in two rounds, and NRE from the prior, put the 10-trial posterior within
    0.15 posterior sds of the closed form on each of five simulation and training seeds."""
    likelihood = estimator()
    torch.manual_seed(123 + seed)
    x_o = linear_gaussian(torch.tensor([0.6, -0.9]).expand(TRIALS, 2))
    model = trials_model(likelihood)
    train(model, x_o, num_simulations=20_000, rounds=rounds, seed=seed, progress=False)
    mean, sd = learned_posterior(likelihood, x_o)
    assert close_to_closed_form(x_o, mean, sd, mean_error=TARGET_MEAN_ERROR)


@pytest.mark.slow
def test_nuts_matches_the_learned_posterior(linear_model):
    model, x_o, (mean, sd) = linear_model
    mcmc = MCMC(NUTS(model), num_samples=2000, warmup_steps=500, disable_progbar=True)
    mcmc.run(x_o)
    samples = mcmc.get_samples()["theta"]
    assert ((samples.mean(0) - mean).abs() / sd).max() < 0.15
    assert ((samples.std(0) / sd - 1).abs()).max() < 0.15


@pytest.mark.slow
def test_svi_autonormal_matches_the_learned_posterior(linear_model):
    model, x_o, (mean, sd) = linear_model
    guide = AutoNormal(model)
    optim = pyro.optim.ClippedAdam({"lr": 0.02, "lrd": 0.999})
    svi = SVI(model, guide, optim, Trace_ELBO(num_particles=4))
    for _ in range(1500):
        svi.step(x_o)
    loc = pyro.param("AutoNormal.locs.theta").detach()
    assert ((loc - mean).abs() / sd).max() < 0.25


@pytest.mark.slow
def test_hierarchical_group_mean_is_covered():
    likelihood = NLE(zuko.flows.MAF)
    subjects, trials = 8, 30
    model = hierarchical(linear_gaussian, likelihood, subjects, trials)
    train(model, num_simulations=5000, seed=0, progress=False)
    mu_true = torch.tensor([0.8, -0.5])
    torch.manual_seed(7)
    theta_true = mu_true + 0.5 * torch.randn(subjects, 2)
    x_o = linear_gaussian(theta_true.expand(trials, subjects, 2))
    mcmc = MCMC(NUTS(model), num_samples=600, warmup_steps=400, disable_progbar=True)
    mcmc.run(x_o)
    mu = mcmc.get_samples()["mu"]
    low, high = mu.quantile(0.025, 0), mu.quantile(0.975, 0)
    assert ((low < mu_true) & (mu_true < high)).all()
    theta = mcmc.get_samples()["theta"].mean(0)
    assert (theta - theta_true).abs().max() < 0.3  # 30 trials: posterior sd ~ 0.09
