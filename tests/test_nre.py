import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import HMC, MCMC, NUTS, SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.optim import Adam
from simulators import pairs
from torch import nn

from pyro_sbi import NRE, SimulatorDistribution, SliceMCMC, train

NOISE, TRIALS = 0.5, 10


def linear_gaussian(theta):
    return theta + NOISE * torch.randn_like(theta)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    estimator = NRE()
    theta, x = pairs(2000, 2)
    estimator.fit(theta, x, max_epochs=15, progress=False, seed=0)
    return estimator


def test_default_is_contrastive_and_unnormalised():
    estimator = NRE()
    assert estimator.variant == "B" and not estimator.normalized and estimator.classifier is None


def test_balance_changes_the_loss():
    theta, x = pairs(300, 2)
    plain, balanced = NRE("A"), NRE("A", balance=10.0)
    plain.build(theta, x)
    balanced.build(theta, x)
    balanced.load_state_dict(plain.state_dict())
    with torch.no_grad():
        plain.classifier.outer[-1].bias.fill_(3.0)  # far from balanced: sigma(d) ~ 0.95
        balanced.classifier.outer[-1].bias.fill_(3.0)
    assert balanced.loss(theta, x) > plain.loss(theta, x) + 1.0


def test_contrastive_with_one_atom_is_half_the_binary_loss():
    theta, x = pairs(64, 2)
    binary, contrastive = NRE("A", num_atoms=1), NRE("C", num_atoms=1, gamma=1.0)
    binary.build(theta, x)
    contrastive.build(theta, x)
    contrastive.load_state_dict(binary.state_dict())
    assert torch.allclose(contrastive.loss(theta, x), binary.loss(theta, x) / 2)


def test_contrastive_loss_ignores_a_constant_in_x():
    theta, x = pairs(64, 2)
    estimator = NRE("B", num_atoms=8)
    estimator.build(theta, x)
    before = estimator.loss(theta, x)
    with torch.no_grad():
        estimator.classifier.outer[-1].bias.add_(5.0)
    assert torch.allclose(estimator.loss(theta, x), before)


def test_small_batches_use_fewer_atoms():
    theta, x = pairs(3, 2)
    estimator = NRE("C", num_atoms=10)
    estimator.build(theta, x)
    assert math.isfinite(estimator.loss(theta, x).item())


def test_embedding_sees_x_shape():
    theta = torch.randn(300, 2)
    x = theta[:, :, None] + torch.randn(300, 2, 3)
    embedding = nn.Sequential(nn.Flatten(), nn.Linear(6, 4))
    estimator = NRE("C", embedding=embedding)
    estimator.fit(theta, x, max_epochs=2, progress=False, seed=0)
    assert estimator.classifier.inner.in_features == 4 + 2
    assert estimator.log_prob(torch.randn(7, 2, 3), torch.randn(2)).shape == (7,)


def test_an_x_shared_by_many_parameters_is_embedded_once():
    """Bug caught: the embedding run once per chain (cost), or the shared-x path giving
    other log-ratios or gradients than x copied to every parameter."""
    theta = torch.randn(300, 2)
    x = theta[:, :, None] + torch.randn(300, 2, 3)
    estimator = NRE("C", embedding=nn.Sequential(nn.Flatten(), nn.Linear(6, 4)))
    estimator.fit(theta, x, max_epochs=2, progress=False, seed=0)
    rows = []
    hook = estimator.embedding.register_forward_hook(lambda m, args, out: rows.append(len(out)))
    x_o = torch.randn(5, 2, 3)  # 5 trials
    chains = torch.randn(30, 1, 2)  # 30 chains, broadcast over the trials
    try:
        shared = chains.clone().requires_grad_()
        fast = estimator.log_prob(x_o, shared)
        copied = chains.clone().requires_grad_()
        slow = estimator.log_prob(x_o.expand(30, 5, 2, 3).contiguous(), copied)
    finally:
        hook.remove()
    assert rows == [5, 30 * 5]
    assert fast.shape == slow.shape == (30, 5)
    assert torch.allclose(fast, slow, atol=1e-5)
    (grad_fast,) = torch.autograd.grad(fast.sum(), shared)
    (grad_slow,) = torch.autograd.grad(slow.sum(), copied)
    assert torch.allclose(grad_fast, grad_slow, rtol=1e-4, atol=1e-5)


def test_rejects_bad_options():
    with pytest.raises(ValueError, match="variant"):
        NRE("D")
    with pytest.raises(ValueError, match="num_atoms"):
        NRE("B", num_atoms=1)


def _model(estimator):
    def model(x_o=None):
        theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("trials", TRIALS):
            return pyro.sample(
                "x", SimulatorDistribution(linear_gaussian, theta, estimator), obs=x_o
            )

    return model


def _nuts(model):
    MCMC(NUTS(model), num_samples=2, warmup_steps=2, disable_progbar=True).run()


def _hmc(model):
    MCMC(HMC(model, num_steps=2), num_samples=2, warmup_steps=2, disable_progbar=True).run()


def _svi(model):
    SVI(model, AutoNormal(model), Adam({"lr": 0.01}), Trace_ELBO()).step()


def _slice(model):
    SliceMCMC(model, num_samples=2, warmup_steps=2, num_chains=4, num_candidates=16,
              seed=0, progress=False).run()  # fmt: skip


def _trace(model):
    pyro.poutine.trace(model).get_trace().log_prob_sum()


LATENT_PATHS = {"nuts": _nuts, "hmc": _hmc, "svi": _svi, "slice": _slice, "trace": _trace}


@pytest.mark.parametrize("path", LATENT_PATHS)
def test_latent_site_is_refused_on_every_path(trained, path):
    """Catches a latent NRE site whose log-ratio is used as a density in x (no obs=)."""
    with pytest.raises(ValueError, match=r"not a density in x.*cannot be latent.*obs="):
        LATENT_PATHS[path](_model(trained))


def test_latent_site_can_be_simulated(trained):
    """Predictive evaluates no log_prob: a latent NRE site is simulated by the simulator."""
    theta = torch.randn(6, 2)
    draws = Predictive(_model(trained), posterior_samples={"theta": theta})()
    assert draws["x"].shape == (6, TRIALS, 2)
    # the real simulator: x = theta + N(0, NOISE^2), not a surrogate
    residual = (draws["x"] - theta[:, None]) / NOISE
    assert residual.abs().max() < 6 and 0.7 < float(residual.std()) < 1.3


def test_observed_site_is_accepted(trained):
    """Catches an observed site refused because its data were drawn by the model itself."""
    model = _model(trained)
    x_o = model()  # drawn by one run of the model, observed in the others
    trace = pyro.poutine.trace(model).get_trace(x_o)
    assert math.isfinite(trace.log_prob_sum().item())
    samples = SliceMCMC(model, num_samples=2, warmup_steps=2, num_chains=4, num_candidates=16,
                        seed=0, progress=False).run(x_o).get_samples()  # fmt: skip
    assert samples["theta"].shape == (8, 2)


def _nuts_errors(estimator, seed=0):
    """Worst-dimension |mean error| / sd and |sd ratio - 1| of NUTS vs the closed form."""
    model = _model(estimator)
    train(model, num_simulations=10_000, seed=seed, progress=False)
    torch.manual_seed(123)
    x_o = linear_gaussian(torch.tensor([0.6, -0.9]).expand(TRIALS, 2))
    pyro.set_rng_seed(0)
    mcmc = MCMC(NUTS(model), num_samples=1000, warmup_steps=300, disable_progbar=True)
    mcmc.run(x_o)
    samples = mcmc.get_samples()["theta"]
    precision = 1.0 + TRIALS / NOISE**2
    mean, sd = x_o.sum(0) / NOISE**2 / precision, precision**-0.5
    return ((samples.mean(0) - mean).abs() / sd).max(), ((samples.std(0) / sd - 1).abs()).max()


# The worst-dimension posterior-mean error of one training, in posterior sds, over
# training seeds 0-4: A 0.154, 0.211, 0.065, 0.140, 0.200; B 0.252, 0.152, 0.079, 0.184,
# 0.086; C 0.113, 0.137, 0.081, 0.110, 0.042 (sd errors at most 0.123). One training's
# error scatters by about 0.06, so one seed against a fixed bound passes or fails by luck
# (B's seed 0 is 0.252); the mean of three trainings has a scatter of about 0.035, and its
# largest value over the variants (0.161) sits 1.1 of those below the bound.
@pytest.mark.slow
@pytest.mark.parametrize("variant", ["A", "B", "C"])
def test_nuts_matches_closed_form(variant):
    errors = torch.tensor([_nuts_errors(NRE(variant), seed) for seed in range(3)])
    mean_errors, sd_errors = errors[:, 0], errors[:, 1]
    assert mean_errors.mean() < 0.2 and mean_errors.max() < 0.3
    assert sd_errors.max() < 0.25


# 1-D linear Gaussian: theta ~ N(0, 1), x = theta + N(0, NOISE^2). The posterior on a grid
# is prior * exp(log_r), normalised; the closed form is N(x/NOISE^2/P, P^-1/2), P = 1 +
# 1/NOISE^2. Measured over seeds 0-4 and the three observations (3000 simulations, 40
# epochs): total variation 0.010-0.034, |mean error| <= 0.08 sd, |sd ratio - 1| <= 0.045.
# The bounds leave about twice that margin.


@pytest.fixture(scope="module")
def trained_1d():
    torch.manual_seed(0)
    theta = torch.randn(3000, 1)
    estimator = NRE()
    estimator.fit(theta, linear_gaussian(theta), max_epochs=40, progress=False, seed=0)
    return estimator


@pytest.mark.parametrize("x_o", [-1.0, 0.3, 1.5])
def test_learned_ratio_gives_the_closed_form_posterior(trained_1d, x_o):
    """Catches a loss or log-ratio that does not learn p(theta | x) / p(theta), e.g. the
    marginal term's sign flipped or theta shuffled against x."""
    estimator = trained_1d
    grid = torch.linspace(-4.0, 4.0, 801)
    with torch.no_grad():
        log_r = estimator.log_prob(torch.tensor([x_o]), grid.unsqueeze(-1))
    learned = torch.softmax(log_r + dist.Normal(0.0, 1.0).log_prob(grid), 0)
    precision = 1.0 + 1.0 / NOISE**2
    mean, sd = x_o / NOISE**2 / precision, precision**-0.5
    exact = torch.softmax(dist.Normal(mean, sd).log_prob(grid), 0)
    learned_mean = (learned * grid).sum()
    learned_sd = (learned * (grid - learned_mean) ** 2).sum().sqrt()
    assert 0.5 * (learned - exact).abs().sum() < 0.08
    assert abs(learned_mean - mean) / sd < 0.2 and abs(learned_sd / sd - 1) < 0.12
