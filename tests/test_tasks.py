"""The benchmark tasks and their reference posteriors."""

import importlib
import math

import pytest
import torch

from pyro_sbi import c2st, tasks
from pyro_sbi.tasks import (
    bernoulli_glm,
    damped_oscillator,
    ddm,
    gaussian_linear,
    gaussian_linear_correlated,
    gaussian_mixture,
    normal_summaries,
    sign_symmetric,
    sir,
    slcp,
    two_moons,
)
from pyro_sbi.tasks._common import seeded_observation

pytestmark = pytest.mark.usefixtures("isolated_cache")


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


# The broad suite: shapes, supports, deterministic observations, and each reference
# against something computed without the grid or the sampler that made it.

BROAD = {name: importlib.import_module(f"pyro_sbi.tasks.{name}") for name in tasks.BROAD}


@pytest.mark.parametrize("name", tasks.BROAD)
def test_broad_task_shapes_and_support(name):
    task = BROAD[name]
    theta = task.prior().sample((7,))
    assert theta.shape == (7, task.DIM)
    x = task.simulator(theta)
    assert x.shape == (7, task.X_DIM) and torch.isfinite(x).all()
    assert task.log_likelihood(x, theta).shape == (7,)
    x_o, theta_o = task.observation(1), task.true_parameters(1)
    assert x_o.shape == (task.X_DIM,) and theta_o.shape == (task.DIM,)
    for i in range(1, 11):  # each observation is plausible under its true parameters
        assert task.prior().support.check(task.true_parameters(i)).all()
        assert torch.isfinite(task.log_likelihood(task.observation(i), task.true_parameters(i)))
    with pytest.raises(ValueError, match="observations 1 to 10"):
        task.observation(11)


@pytest.mark.parametrize("name", tasks.BROAD)
def test_broad_task_model_has_the_simulator_site(name):
    import pyro

    from pyro_sbi import NLE

    task = BROAD[name]
    trace = pyro.poutine.trace(task.model).get_trace(NLE(), task.observation(2))
    assert trace.nodes["theta"]["value"].shape == (task.DIM,)
    assert torch.equal(trace.nodes["x"]["value"], task.observation(2))


@pytest.mark.parametrize("name", tasks.BROAD)
def test_broad_observations_are_deterministic(name):
    task = BROAD[name]

    def make(i):  # past the task's cache
        return seeded_observation(task.NAME, task.prior(), task.simulator, i)

    state = torch.get_rng_state()
    torch.manual_seed(123)
    x, theta = make(3)
    torch.manual_seed(456)
    again = make(3)
    assert torch.equal(x, again[0]) and torch.equal(theta, again[1])
    assert torch.equal(x, task.observation(3)) and torch.equal(theta, task.true_parameters(3))
    torch.set_rng_state(state)
    make(4)
    assert torch.equal(state, torch.get_rng_state())  # the global generator is left alone
    assert not torch.equal(task.observation(1), task.observation(2))


@pytest.mark.parametrize("name", tasks.BROAD)
def test_broad_reference_is_cached_and_in_the_support(name):
    task = BROAD[name]
    reference = task.reference_posterior(1, 2000)
    assert reference.shape == (2000, task.DIM) and torch.isfinite(reference).all()
    assert reference.dtype == torch.get_default_dtype()
    assert task.prior().support.check(reference).all()
    assert torch.equal(reference, task.reference_posterior(1, 2000))


def importance_moments(task, x, n, seed=0):
    """Posterior mean and sd by self-normalised importance sampling from the prior."""
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    theta = task.prior().sample((n,)).double()
    torch.set_rng_state(generator_state)
    log_w = torch.cat([task.log_likelihood(x.double(), part) for part in theta.split(100_000)])
    w = torch.softmax(log_w, 0)
    mean = (w[:, None] * theta).sum(0)
    sd = (w[:, None] * (theta - mean) ** 2).sum(0).sqrt()
    return mean, sd, float(1 / (w**2).sum())


GRID_CHECKS = {  # task: (observation, prior draws for importance sampling)
    "poisson_glm": (1, 1_000_000),
    "sir": (1, 1_000_000),
    "damped_oscillator": (1, 1_000_000),
    "student_t": (1, 200_000),
    "beta_proportions": (1, 200_000),
    "sign_symmetric": (1, 200_000),
    "product_ridge": (1, 200_000),
    "gamma_times": (1, 200_000),
}


@pytest.mark.parametrize("name", sorted(GRID_CHECKS))
def test_broad_grid_reference_matches_importance_sampling(name):
    """The grid's draws against moments of prior draws weighted by the exact likelihood."""
    task = BROAD[name]
    i, n = GRID_CHECKS[name]
    reference = task.reference_posterior(i, 4000).double()
    mean, sd, ess = importance_moments(task, task.observation(i), n)
    assert ess > 1000
    assert ((reference.mean(0) - mean).abs() / sd).max() < 0.1
    assert ((reference.std(0) / sd - 1).abs()).max() < 0.1


def test_sign_symmetric_reference_has_four_equal_modes():
    x = sign_symmetric.observation(1)
    assert (x > 0.5).all()  # far enough from 0 that the modes are apart
    reference = sign_symmetric.reference_posterior(1, 4000)
    quadrant = 2 * (reference[:, 0] > 0).long() + (reference[:, 1] > 0).long()
    shares = torch.bincount(quadrant, minlength=4).float() / 4000
    assert (shares - 0.25).abs().max() < 0.03


def test_normal_summaries_reference_matches_the_closed_form_marginals():
    x = normal_summaries.observation(1)
    mean, sd = float(x[0]), float(x[1])
    reference = normal_summaries.reference_posterior(1, 10_000).double()
    n = normal_summaries.DRAWS
    # sigma's marginal: the mean integrates out (the prior box is wide), leaving
    # sigma^-(n-1) exp(-(n-1) s^2 / (2 sigma^2)) on [0.5, 2], integrated numerically
    sigma = torch.linspace(0.5, 2.0, 200_001, dtype=torch.float64)
    log_p = -(n - 1) * sigma.log() - (n - 1) * sd**2 / (2 * sigma**2)
    p = torch.softmax(log_p, 0)
    sigma_mean = float((p * sigma).sum())
    sigma_sd = float((p * (sigma - sigma_mean) ** 2).sum().sqrt())
    assert abs(float(reference[:, 1].mean()) - sigma_mean) < 0.05 * sigma_sd
    assert abs(float(reference[:, 1].std()) / sigma_sd - 1) < 0.05
    # the mean given sigma is N(x_bar, sigma^2 / n): marginally its sd is E[sigma^2]^0.5 / sqrt(n)
    mu_sd = math.sqrt(float((p * sigma**2).sum()) / n)
    assert abs(float(reference[:, 0].mean()) - mean) < 0.05 * mu_sd
    assert abs(float(reference[:, 0].std()) / mu_sd - 1) < 0.05
    # the posterior is more than ten times narrower than the prior (sd 10 / 12^0.5, 1.5 / 12^0.5)
    assert (reference.std(0) < torch.tensor([10.0, 1.5]) / math.sqrt(12) / 10).all()


def test_normal_summaries_likelihood_matches_the_simulator():
    theta = torch.tensor([0.5, 1.5])
    x = normal_summaries.simulator(theta.expand(4000, 2)).double()
    n = normal_summaries.DRAWS
    assert abs(float(x[:, 0].std()) / (1.5 / math.sqrt(n)) - 1) < 0.05
    chi2 = (n - 1) * x[:, 1] ** 2 / 1.5**2  # chi-square with n - 1 degrees of freedom
    assert abs(float(chi2.mean()) - (n - 1)) < 4 * math.sqrt(2 * (n - 1) / 4000)
    grid = torch.linspace(1.3, 1.7, 4001, dtype=torch.float64)
    points = torch.stack([torch.full_like(grid, 0.5), grid], -1)
    density = normal_summaries.log_likelihood(points, theta.double()).exp()
    # integrates to the mean's density at its mode, sqrt(n / (2 pi)) / sigma
    mass = float(density.sum() * (grid[1] - grid[0]))
    assert abs(mass / (math.sqrt(n / (2 * math.pi)) / 1.5) - 1) < 1e-3


def test_gaussian_linear_correlated_posterior_is_prior_times_likelihood():
    x = gaussian_linear_correlated.observation(1).double()
    posterior = gaussian_linear_correlated.posterior(x)
    theta = 0.3 * torch.randn(50, 5, dtype=torch.float64) + posterior.mean
    prior = torch.distributions.Normal(torch.zeros(5, dtype=torch.float64), 1.0)
    joint = prior.log_prob(theta).sum(-1) + gaussian_linear_correlated.log_likelihood(x, theta)
    difference = posterior.log_prob(theta) - joint  # the log evidence, the same for every theta
    assert float(difference.std()) < 1e-8
    reference = gaussian_linear_correlated.reference_posterior(1, 20_000).double()
    mean, sd, ess = importance_moments(gaussian_linear_correlated, x, 1_000_000)
    assert ess > 1000
    assert ((reference.mean(0) - mean).abs() / sd).max() < 0.1
    assert torch.allclose(reference.mean(0), posterior.mean, atol=0.02)
    assert torch.allclose(reference.std(0), posterior.variance.sqrt(), rtol=0.05)


def test_gaussian_linear_correlated_simulator_has_the_noise_covariance():
    x = gaussian_linear_correlated.simulator(torch.zeros(20_000, 5)).double()
    covariance = x.T @ x / len(x)
    expected = gaussian_linear_correlated.noise_covariance(torch.float64)
    assert (covariance - expected).abs().max() < 0.01


def test_bernoulli_glm_statistics_are_sbibms():
    """X^T y is sbibm's spike count and its convolution-based spike-triggered sums."""
    y = torch.bernoulli(torch.full((100,), 0.3))
    stimulus = bernoulli_glm.stimulus()
    sta = torch.nn.functional.conv1d(y.reshape(1, 1, -1), stimulus.reshape(1, 1, -1), padding=8)
    published = torch.cat([y.sum()[None], sta.squeeze()[-9:]])
    assert torch.allclose(y @ bernoulli_glm.design(), published, atol=1e-5)
    assert abs(float(stimulus[0]) - 0.4967141530112327) < 1e-6  # RandomState(42).randn


def test_bernoulli_glm_reference_matches_importance_sampling():
    """Rejection draws against moments weighted from a Gaussian proposal of another width."""
    x = bernoulli_glm.observation(1)
    reference = bernoulli_glm.reference_posterior(1, 4000).double()
    proposal = torch.distributions.MultivariateNormal(
        reference.mean(0), covariance_matrix=2.0 * torch.cov(reference.T)
    )
    theta = proposal.sample((200_000,))
    log_w = bernoulli_glm.log_posterior(x, theta) - proposal.log_prob(theta)
    w = torch.softmax(log_w, 0)[:, None]
    mean = (w * theta).sum(0)
    sd = (w * (theta - mean) ** 2).sum(0).sqrt()
    assert float(1 / (w**2).sum()) > 5000
    assert ((reference.mean(0) - mean).abs() / sd).max() < 0.1
    assert ((reference.std(0) / sd - 1).abs()).max() < 0.1


def test_damped_oscillator_matrix_powers_are_the_rk4_steps():
    theta = damped_oscillator.prior().sample((500,)).double()
    steps, powers = damped_oscillator.solve(theta), damped_oscillator.solve_linear(theta)
    assert torch.allclose(steps, powers, atol=1e-10)
    # and RK4 with h = 0.05 is close to the exact solution of the underdamped oscillator
    omega, zeta, y0 = theta.unbind(-1)
    t = torch.arange(1, 11, dtype=torch.float64)
    damped = omega * (1 - zeta**2).sqrt()
    exact = (
        y0[:, None]
        * torch.exp(-zeta[:, None] * omega[:, None] * t)
        * (
            torch.cos(damped[:, None] * t)
            + zeta[:, None] / (1 - zeta[:, None] ** 2).sqrt() * torch.sin(damped[:, None] * t)
        )
    )
    assert (steps - exact).abs().max() < 1e-3


def test_sir_likelihood_is_the_product_of_the_daily_binomials():
    theta, x = sir.true_parameters(1).double(), sir.observation(1).double()
    beta, gamma = theta.tolist()
    s, i, total = float(sir.POPULATION - sir.INFECTED), float(sir.INFECTED), 0.0
    for day in range(sir.DAYS):
        new, gone = x[day], x[sir.DAYS + day]
        infect = 1 - math.exp(-beta * i / sir.POPULATION)
        total += float(
            torch.distributions.Binomial(s, torch.tensor(infect, dtype=torch.float64)).log_prob(
                new
            )
        )
        recover = 1 - math.exp(-gamma)
        total += float(
            torch.distributions.Binomial(i, torch.tensor(recover, dtype=torch.float64)).log_prob(
                gone
            )
        )
        s, i = s - float(new), i + float(new - gone)
    assert abs(float(sir.log_likelihood(x, theta)) - total) < 1e-6
    impossible = x.clone()
    impossible[sir.DAYS] = sir.INFECTED + 1  # more recoveries than infected on day 0
    assert sir.log_likelihood(impossible, theta) == -math.inf


EXACT = [*tasks.BROAD, "gaussian_linear", "two_moons", "slcp", "gaussian_mixture", "ddm",
         "state_space"]  # fmt: skip


@pytest.mark.parametrize("name", EXACT)
def test_model_without_an_estimator_has_the_exact_likelihood(name):
    """Catches `model(None, x)` whose log density at theta is not the task's exact
    log-likelihood plus the log prior (another likelihood, or the observation dropped)."""
    import pyro

    task = importlib.import_module(f"pyro_sbi.tasks.{name}")
    assert task.TASK.exact
    x = task.observation(1)
    theta = task.prior().sample((3,))
    for t in [*theta, task.true_parameters(1)]:
        model = pyro.poutine.condition(task.model, {"theta": t})
        log_joint = pyro.poutine.trace(model).get_trace(None, x).log_prob_sum()
        expected = task.log_likelihood(x, t).sum() + task.prior().log_prob(t)
        assert torch.allclose(log_joint, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", ["sign_symmetric", "gaussian_linear"])
def test_exact_site_samples_the_simulator_and_broadcasts(name):
    """The exact site draws from the real simulator and follows Pyro's shapes."""
    import pyro

    task = importlib.import_module(f"pyro_sbi.tasks.{name}")
    theta = task.prior().sample((4,))
    trace = pyro.poutine.trace(pyro.poutine.condition(task.model, {"theta": theta})).get_trace(
        None
    )
    site = trace.nodes["x"]["fn"]
    assert site.batch_shape == (4,) and site.event_shape == task.observation(1).shape
    assert trace.nodes["x"]["value"].shape == (4, *site.event_shape)
    wide = site.expand((5, 4))
    x = task.observation(1)
    assert wide.log_prob(x).shape == (5, 4)
    assert torch.allclose(wide.log_prob(x)[2], task.log_likelihood(x, theta))
    with pytest.raises(ValueError, match="event shape"):
        site.log_prob(torch.zeros(3, 7))


def test_task_without_an_exact_likelihood_says_so():
    import pyro
    import pyro.distributions as dist

    from pyro_sbi.tasks import Task

    def prior():
        return dist.Normal(torch.zeros(1), 1.0).to_event(1)

    def simulator(theta):
        return theta + torch.randn_like(theta)

    task = Task("toy", prior, simulator, lambda x, n, seed=0: prior().sample((n,)))
    assert not task.exact
    trace = pyro.poutine.trace(task.model).get_trace(None, torch.zeros(1))
    with pytest.raises(ValueError, match="toy has no exact likelihood.*needs an estimator"):
        trace.log_prob_sum()
