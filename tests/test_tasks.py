"""The benchmark tasks and their reference posteriors."""

import math

import pytest
import torch

from pyro_sbi import c2st
from pyro_sbi.tasks import ddm, gaussian_linear, gaussian_mixture, slcp, two_moons


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_SBI_CACHE", str(tmp_path))


def test_two_moons_likelihood_is_a_normalised_density():
    theta = torch.tensor([0.3, -0.5])
    grid = torch.linspace(-1.5, 1.5, 1201)
    x = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    mass = two_moons.log_likelihood(x, theta).exp().sum() * (grid[1] - grid[0]) ** 2
    assert abs(float(mass) - 1.0) < 0.01


def test_two_moons_simulator_follows_the_likelihood():
    theta = torch.tensor([[0.3, -0.5]])
    x = two_moons.simulator(theta.expand(20000, 2))
    assert torch.isfinite(two_moons.log_likelihood(x, theta)).all()
    far = x + torch.tensor([0.0, 0.5])
    assert (two_moons.log_likelihood(far, theta) < -50).all()


def rejection(x, n, seed=0):
    """Exact posterior draws by rejection from the prior, independent of the inversion."""
    generator = torch.Generator().manual_seed(seed)
    bound = math.log(1 / (math.sqrt(2 * math.pi) * 0.01) / (math.pi * 0.05))  # r >= 0.05
    kept = []
    while sum(map(len, kept)) < n:
        theta = 2 * torch.rand(200_000, 2, generator=generator) - 1
        log_p = two_moons.log_likelihood(x, theta)
        accept = torch.rand(200_000, generator=generator).log() < log_p - bound
        kept.append(theta[accept])
    return torch.cat(kept)[:n]


def test_two_moons_reference_matches_rejection_sampling():
    torch.manual_seed(0)
    x = two_moons.simulator(torch.tensor([[0.2, 0.4]]))[0]
    reference = two_moons.sample_posterior(x, 2000, seed=1)
    exact = rejection(x, 2000)
    assert reference.shape == (2000, 2) and (reference.abs() <= 1).all()
    assert c2st(exact, reference) < 0.56
    # two modes, one per sign of theta_1 + theta_2, in equal proportions here
    share = float((reference.sum(-1) > 0).float().mean())
    assert abs(share - 0.5) < 0.05


def test_gaussian_linear_reference_has_the_closed_form_moments():
    x = gaussian_linear.observation(1)
    samples = gaussian_linear.reference_posterior(1, 20_000)
    assert samples.shape == (20_000, 10)
    assert torch.allclose(samples.mean(0), x / 2, atol=4 * math.sqrt(0.05 / 20_000))
    assert torch.allclose(samples.var(0), torch.full((10,), 0.05), rtol=0.05)
    again = gaussian_linear.reference_posterior(1, 20_000)  # from the cache
    assert torch.equal(samples, again)


def test_gaussian_linear_posterior_with_trials():
    theta = torch.zeros(10)
    x = gaussian_linear.simulator(theta.expand(9, 10))
    posterior = gaussian_linear.posterior(x)
    assert torch.allclose(posterior.mean, x.sum(0) / 10)
    assert torch.allclose(posterior.variance, torch.full((10,), 0.01))


@pytest.mark.parametrize("task", [two_moons, gaussian_linear])
def test_observations_and_true_parameters(task):
    for i in (1, 10):
        x, theta = task.observation(i), task.true_parameters(i)
        assert x.shape == theta.shape and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="observations 1 to 10"):
        task.observation(11)


def test_two_moons_observations_are_explained_by_their_true_parameters():
    for i in range(1, 11):
        x, theta = two_moons.observation(i), two_moons.true_parameters(i)
        assert torch.isfinite(two_moons.log_likelihood(x, theta))


def test_gaussian_linear_observations_are_plausible_under_their_parameters():
    residuals = torch.stack(
        [gaussian_linear.observation(i) - gaussian_linear.true_parameters(i) for i in range(1, 11)]
    )
    chi2 = float((residuals**2).sum() / 0.1)  # chi-square with 100 degrees of freedom
    assert 60 < chi2 < 150


def test_gaussian_mixture_reference_matches_the_exact_posterior():
    assert (gaussian_mixture.reference_posterior(1, 1000).abs() <= 10).all()  # x near the edge
    x = torch.tensor([2.0, -3.0])  # far from the edges of the prior: no truncation
    samples = gaussian_mixture.sample_posterior(x, 20_000)
    # the narrow component holds half of the mass within 0.3 of x, the broad one little
    near = float(((samples - x).norm(dim=-1) < 0.3).float().mean())
    expected = 0.5 * (1 - math.exp(-(0.3**2) / (2 * 0.01))) + 0.5 * (1 - math.exp(-(0.3**2) / 2))
    assert abs(near - expected) < 0.015
    simulated = gaussian_mixture.simulator(x.expand(20_000, 2))  # the likelihood is symmetric
    assert c2st(samples[:2000], simulated[:2000]) < 0.56


def test_gaussian_mixture_likelihood_and_observations():
    theta = torch.tensor([1.0, -2.0])
    grid = torch.linspace(-5, 5, 1001)
    x = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2) + theta
    mass = gaussian_mixture.log_likelihood(x, theta).exp().sum() * (grid[1] - grid[0]) ** 2
    assert abs(float(mass) - 1.0) < 0.01
    distances = torch.stack(
        [
            gaussian_mixture.observation(i) - gaussian_mixture.true_parameters(i)
            for i in range(1, 11)
        ]
    ).norm(dim=-1)
    assert (distances < 5).all()


def test_slcp_likelihood_matches_its_simulator():
    theta = slcp.true_parameters(1)
    x = slcp.simulator(theta.expand(20_000, 5))
    points = x.reshape(-1, 2)
    s1, s2 = theta[2] ** 2, theta[3] ** 2
    assert torch.allclose(points.mean(0), theta[:2], atol=4 * max(s1, s2) / math.sqrt(80_000))
    assert torch.allclose(points.std(0), torch.stack([s1, s2]), rtol=0.02)
    assert torch.isfinite(slcp.log_likelihood(slcp.observation(1), theta))
    for i in range(1, 11):  # every observation is plausible under its true parameters
        assert slcp.log_likelihood(slcp.observation(i), slcp.true_parameters(i)) > -60


@pytest.mark.slow
def test_slcp_reference_has_four_equal_modes_and_the_importance_moments():
    x = slcp.observation(1)
    reference = slcp.sample_posterior(x, 600, chains=2, warmup_steps=150, seed=0)
    signs = (reference[:, 2:4] > 0).long()
    shares = torch.bincount(2 * signs[:, 0] + signs[:, 1], minlength=4).float() / 600
    assert (shares - 0.25).abs().max() < 0.06
    # importance sampling from the prior, folded onto theta_3, theta_4 > 0
    torch.manual_seed(0)
    folded = reference.clone()
    folded[:, 2:4] = folded[:, 2:4].abs()
    proposals = slcp.prior().sample((5_000_000,))
    proposals[:, 2:4] = proposals[:, 2:4].abs()
    log_w = torch.cat([slcp.log_likelihood(x, part) for part in proposals.split(250_000)])
    w = torch.softmax(log_w, 0)[:, None]
    mean = (w * proposals).sum(0)
    sd = (w * (proposals - mean) ** 2).sum(0).sqrt()
    assert ((folded.mean(0) - mean).abs() / sd).max() < 0.2
    assert ((folded.std(0) / sd - 1).abs()).max() < 0.2


def test_ddm_observations_are_trials_explained_by_their_true_parameters():
    for i in range(1, 11):
        x, theta = ddm.observation(i), ddm.true_parameters(i)
        assert x.shape == (ddm.TRIALS, 2) and theta.shape == (4,)
        assert ddm.prior().support.check(theta)
        rt, choice = x.unbind(-1)
        assert ((choice == 0) | (choice == 1)).all() and (rt > theta[3]).all()
        assert torch.isfinite(ddm.log_likelihood(x, theta)).all()
        p = ddm.ddm_upper_prob(theta)  # binomial check of the share of upper choices
        z = (choice.sum() - ddm.TRIALS * p) / (ddm.TRIALS * p * (1 - p)).sqrt()
        assert abs(float(z)) < 4
    with pytest.raises(ValueError, match="observations 1 to 10"):
        ddm.observation(0)


def test_ddm_observations_come_from_their_seeds():
    made = ddm._make_observations()
    for i in (1, 10):
        assert torch.allclose(torch.tensor(made["true_parameters"][i - 1]), ddm.true_parameters(i))
        assert torch.allclose(torch.tensor(made["observations"][i - 1]), ddm.observation(i))


def test_ddm_model_puts_the_trials_in_a_plate():
    import pyro

    from pyro_sbi import MNLE

    trace = pyro.poutine.trace(ddm.model).get_trace(MNLE(discrete=[1]), ddm.observation(2))
    assert trace.nodes["x"]["value"].shape == (ddm.TRIALS, 2)
    assert trace.nodes["x"]["fn"].batch_shape == (ddm.TRIALS,)


@pytest.mark.slow
def test_ddm_reference_matches_nuts_on_the_exact_likelihood():
    import pyro
    from pyro.infer import MCMC, NUTS
    from pyro.infer.autoguide.initialization import init_to_value

    reference = ddm.reference_posterior(1, 2000)
    assert reference.shape == (2000, 4)
    pyro.set_rng_seed(0)
    start = {"theta": ddm.true_parameters(1)}
    kernel = NUTS(ddm.model, init_strategy=init_to_value(values=start))
    mcmc = MCMC(kernel, num_samples=1000, warmup_steps=500, disable_progbar=True)
    mcmc.run(None, ddm.observation(1))  # estimator None: the exact likelihood
    assert c2st(reference, mcmc.get_samples()["theta"], seed=1) < 0.56
