"""FMPE: closed-form posteriors, a normalised density, shapes, files, errors, the guide."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_sbi import FMPE, AmortizedGuide, UntrainedEstimatorError
from pyro_sbi.estimator import validation_off

PRIOR, NOISE = 2.0, 0.5  # theta ~ N(0, PRIOR^2 I_2), x ~ N(theta, NOISE^2 I_2)
PRECISION = 1 / PRIOR**2 + 1 / NOISE**2
SD = PRECISION**-0.5  # the posterior sd, 0.485


def _posterior_mean(x_o):
    return x_o / NOISE**2 / PRECISION


@pytest.fixture(scope="module")
def fmpe_2d():
    torch.manual_seed(0)
    theta = PRIOR * torch.randn(2000, 2)
    estimator = FMPE()
    estimator.fit(theta, theta + NOISE * torch.randn(2000, 2), max_epochs=30, progress=False,
                  seed=0)  # fmt: skip
    return estimator


X_O = [torch.tensor([1.5, -1.0]), torch.tensor([-3.0, 0.5])]


@pytest.mark.parametrize("x_o", X_O, ids=["near", "far"])
def test_fmpe_draws_follow_the_closed_form_posterior(fmpe_2d, x_o):
    """Catches theta paired with another row's x (the draws then ignore x), the path's
    time reversed in the loss (t = 1 taken as the data end), or draws left z-scored.
    Measured over training seeds 0-2 with 20,000 draws: mean errors at most 0.042
    posterior sds, sd ratios within 0.084 of 1; the Monte Carlo error of 2000 draws
    adds 4 / sqrt(2000) = 0.09 sd to the mean and 4 / sqrt(2 * 2000) = 0.063 to the sd
    ratio at four standard errors."""
    torch.manual_seed(1)
    draws = fmpe_2d.sample(x_o, (2000,))
    assert draws.shape == (2000, 2)
    mean_error = ((draws.mean(0) - _posterior_mean(x_o)) / SD).abs().max()
    sd_error = (draws.std(0) / SD - 1).abs().max()
    assert mean_error < 0.05 + 0.09 and sd_error < 0.09 + 0.063


def test_fmpe_log_prob_is_normalised_and_matches_its_draws(fmpe_2d):
    """Catches a density without the divergence term, with the divergence of the wrong
    sign, or with the z-scoring's Jacobian of the wrong sign (theta's scale is 2: a
    factor 16 in mass); the density's mean is the closed form's. Measured over training
    seeds 0-2: mass on the +-3.5 sd grid 0.9986-0.9989 (the exact Gaussian's 0.9994 on
    it), the mean of the density within 0.042 sd of the closed form."""
    x_o = X_O[0]
    mean = _posterior_mean(x_o)
    axis = torch.linspace(-3.5, 3.5, 36)
    grid = torch.cartesian_prod(axis, axis) * SD + mean
    with torch.no_grad():
        q = fmpe_2d.log_prob(grid, x_o).exp() * ((axis[1] - axis[0]) * SD) ** 2
    assert abs(q.sum() - 0.9994) < 0.005
    density_mean = (q[:, None] * grid).sum(0) / q.sum()
    assert ((density_mean - mean) / SD).abs().max() < 0.1


def test_fmpe_log_prob_is_the_closed_form_at_its_draws(fmpe_2d):
    """Catches log-densities evaluated at another x (the field's context zeroed): at the
    estimator's own draws, log q - log p (p the exact posterior) has mean and sd near 0.
    Measured over training seeds 0-2: mean 0.017-0.028, sd 0.115-0.186; four standard
    errors of the mean of 300 draws are 0.043."""
    x_o = X_O[1]
    torch.manual_seed(2)
    draws = fmpe_2d.sample(x_o, (300,))
    with torch.no_grad():
        log_q = fmpe_2d.log_prob(draws, x_o)
    exact = torch.distributions.Normal(_posterior_mean(x_o), SD).log_prob(draws).sum(-1)
    difference = log_q - exact
    assert abs(difference.mean()) < 0.1 and difference.std() < 0.3


@pytest.mark.parametrize("x_o", X_O, ids=["near", "far"])
def test_fmpe_fixed_step_draws_match_the_adaptive_solve(fmpe_2d, x_o):
    """Catches the fixed-step sampler run the wrong way in time (from the data end
    t = 0 towards the base: distances of 41-53 sds), the middle Runge-Kutta stages
    evaluated at t rather than t + h / 2 (0.10-0.14 sds, which the moments of the draws
    above miss for the near x), or the context's part of the first layer dropped (3.7-5.9
    sds): the same base noise mapped by the default sampler (RK4, 10 steps) and by the
    adaptive solve of `log_prob` (rtol 1e-4) lands at the same draws. Measured over
    training seeds 0-2: the largest distance of 2000 draws 0.0008-0.0012 posterior sds,
    the mean 0.0004-0.0005 (4 steps: 0.014-0.022 and 0.006-0.014)."""
    posterior = fmpe_2d(x_o)
    c = posterior.context()
    torch.manual_seed(3)
    z = torch.randn(2000, 2)
    with torch.no_grad(), validation_off():
        adaptive = fmpe_2d.flow(c).transform.inv(z)
        fixed = fmpe_2d.flow.transport(z, c, fmpe_2d.steps)
    distance = ((fixed - adaptive) * fmpe_2d.theta_scale / SD).norm(dim=-1)
    assert distance.max() < 0.005 and distance.mean() < 0.002


def test_fmpe_validation_loss_is_a_fixed_number():
    """Catches validation noise drawn afresh at each call (early stopping then compares
    noise): in evaluation mode the loss of fixed pairs repeats exactly; in training
    mode it is random."""
    torch.manual_seed(0)
    theta = torch.randn(200, 2)
    estimator = FMPE(hidden_features=16, num_blocks=1)
    estimator.fit(theta, theta, max_epochs=1, progress=False, seed=0)
    with torch.no_grad():
        assert estimator.loss(theta, theta) == estimator.loss(theta, theta)
        estimator.train()
        assert estimator.loss(theta, theta) != estimator.loss(theta, theta)


@pytest.fixture(scope="module")
def small():
    """A small FMPE with options other than the defaults, trained for a few epochs."""
    torch.manual_seed(0)
    theta = torch.randn(300, 3)
    x = torch.cat([theta, theta[:, :1] ** 2], -1)  # x_shape (4,)
    estimator = FMPE(hidden_features=32, num_blocks=1, freqs=2, activation=torch.nn.GELU,
                     rtol=1e-3)  # fmt: skip
    estimator.fit(theta, x, max_epochs=3, progress=False, seed=0)
    return estimator


def test_fmpe_shapes(small):
    """Catches theta and x not broadcast to one batch shape before the solve (the
    divergence's accumulator then takes theta's shape), and checks the shapes of draws,
    densities and the posterior distribution."""
    x = torch.randn(5, 4)
    assert small.sample(x, (6, 2)).shape == (6, 2, 5, 3)
    assert small.sample(x[0]).shape == (3,)
    assert small.log_prob(torch.zeros(7, 5, 3), x).shape == (7, 5)
    assert small.log_prob(torch.zeros(3), x).shape == (5,)
    assert small.log_prob(torch.zeros(0, 3), x[0]).shape == (0,)
    posterior = small(x)
    assert posterior.batch_shape == (5,) and posterior.event_shape == (3,)
    draws = posterior.sample((2,))
    assert torch.allclose(posterior.log_prob(draws), small.log_prob(draws, x))


def test_fmpe_bound_field_is_the_field(small):
    """Catches the context's part of the first layer left out of the bound field (its
    bias alone kept), or the layer's weight split at the wrong columns: the field bound
    to a context, as the sampler evaluates it, is the field itself, for a batch of
    contexts and draws; `steps` below 1 is refused."""
    field = small.flow.field
    c, theta, t = torch.randn(5, 4), torch.randn(6, 5, 3), torch.tensor(0.3)
    with torch.no_grad():
        expected = field(t, theta, c)
        assert torch.allclose(field.bind(c)(t, theta), expected, atol=1e-6)
    with pytest.raises(ValueError, match="steps"):
        FMPE(steps=0)


def test_fmpe_log_prob_is_differentiable_in_theta(small):
    """Catches a density cut from theta's graph (NUTS and SVI need its gradient)."""
    theta = torch.zeros(2, 3, requires_grad=True)
    small.log_prob(theta, torch.zeros(2, 4)).sum().backward()
    assert theta.grad is not None and torch.isfinite(theta.grad).all()
    assert theta.grad.abs().sum() > 0


def test_fmpe_save_load_round_trip(small, tmp_path):
    """Catches an option left out of the file (the loaded field would have another
    architecture or tolerance): the clone gives the same densities and draws."""
    small.save(tmp_path / "fmpe.pt")
    clone = FMPE.load(tmp_path / "fmpe.pt")
    assert clone.config() == small.config()
    assert clone.activation is torch.nn.GELU and clone.rtol == 1e-3
    theta, x = torch.randn(4, 3), torch.randn(4, 4)
    assert torch.allclose(clone.log_prob(theta, x), small.log_prob(theta, x))
    torch.manual_seed(0)
    first = small.sample(x)
    torch.manual_seed(0)
    assert torch.allclose(clone.sample(x), first)


def test_fmpe_with_embedding_trains_and_needs_it_again(tmp_path):
    """Catches an embedding network left out of the loss's context (the field then
    trains on the raw x and the embedding keeps its initial weights) and a file loaded
    without it."""
    torch.manual_seed(0)
    theta = torch.randn(200, 2)
    embedding = torch.nn.Linear(2, 2)
    before = embedding.weight.detach().clone()
    estimator = FMPE(embedding=embedding, hidden_features=16, num_blocks=1)
    estimator.fit(theta, theta, max_epochs=2, progress=False, seed=0)
    assert not torch.equal(embedding.weight, before)
    assert estimator.sample(torch.zeros(2), (3,)).shape == (3, 2)
    estimator.save(tmp_path / "fmpe.pt")
    with pytest.raises(ValueError, match=r"embedding network \(Linear\).*embedding=\.\.\."):
        FMPE.load(tmp_path / "fmpe.pt")
    clone = FMPE.load(tmp_path / "fmpe.pt", embedding=torch.nn.Linear(2, 2))
    x = torch.randn(3, 2)
    assert torch.allclose(clone.log_prob(theta[:3], x), estimator.log_prob(theta[:3], x))


def test_fmpe_errors(small, tmp_path):
    """Catches data of the wrong shape reaching a reshape (a bare RuntimeError) and an
    untrained estimator asked for draws."""
    untrained = FMPE()
    with pytest.raises(UntrainedEstimatorError, match=r"FMPE has not been trained.*fit"):
        untrained.sample(torch.zeros(2), (3,))
    with pytest.raises(UntrainedEstimatorError, match="has not been trained"):
        untrained.log_prob(torch.zeros(2), torch.zeros(2))
    with pytest.raises(UntrainedEstimatorError, match="cannot save an untrained FMPE"):
        untrained.save(tmp_path / "fmpe.pt")
    with pytest.raises(ValueError, match=r"output shape \(4,\); got x of shape \(3,\)"):
        small.sample(torch.zeros(3), (2,))
    with pytest.raises(ValueError, match=r"output shape \(4,\); got x of shape \(3,\)"):
        small.log_prob(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"theta must have shape \(\*, 3\); got \(2,\)"):
        small.log_prob(torch.zeros(2), torch.zeros(4))
    with pytest.raises(ValueError, match=r"theta of shape \(n, D\)"):
        FMPE().fit(torch.zeros(10), torch.zeros(10, 1))


# --- as the estimator of an amortised guide ---------------------------------------------

TRIALS_P, TRIALS_MU = 20, 5


def two_sites(y=None, z=None):
    """Two conjugate posteriors, one of them on (0, 1)."""
    p = pyro.sample("p", dist.Beta(2.0, 2.0))
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("flips", TRIALS_P):
        pyro.sample("y", dist.Bernoulli(p), obs=y)
    with pyro.plate("trials", TRIALS_MU):
        pyro.sample("z", dist.Normal(mu, NOISE), obs=z)


@pytest.fixture(scope="module")
def fmpe_guide():
    guide = AmortizedGuide(two_sites, FMPE())
    guide.fit(
        3000, torch.zeros(TRIALS_P), torch.zeros(TRIALS_MU), seed=0, progress=False,
        fit_options={"max_epochs": 30},
    )  # fmt: skip
    return guide


def _data(k, z_mean):
    y = torch.zeros(TRIALS_P)
    y[:k] = 1.0
    return y, z_mean + NOISE * torch.linspace(-1.0, 1.0, TRIALS_MU)


def _closed_form(k, z):
    beta = torch.distributions.Beta(2.0 + k, 2.0 + TRIALS_P - k)
    precision = 1.0 + TRIALS_MU / NOISE**2
    return (beta.mean, beta.stddev), (z.sum() / NOISE**2 / precision, precision**-0.5)


def test_guide_with_fmpe_gives_both_closed_form_posteriors(fmpe_guide):
    """Catches FMPE's posterior distribution built for another x (the guide's draws then
    ignore the data) and draws outside (0, 1); one draw through the guide's trace takes
    its blocks from the FMPE draw.
    Measured over training seeds 0-2 with 20,000 draws: mean errors at most 0.342
    posterior sds (mu, seed 2), sd ratios within 0.087 of 1; four standard errors of
    2000 draws add 0.09 and 0.063."""
    y, z = _data(15, 0.6)
    draws = fmpe_guide.sample_posterior(2000, y, z)
    assert ((draws["p"] > 0) & (draws["p"] < 1)).all()
    for value, (mean, sd) in zip((draws["p"], draws["mu"]), _closed_form(15, z), strict=True):
        assert abs(value.mean() - mean) / sd < 0.35 + 0.09
        assert abs(value.std() / sd - 1) < 0.09 + 0.063
    trace = pyro.poutine.trace(fmpe_guide).get_trace(y, z)  # one draw through the guide
    u = trace.nodes["_amortized_guide_latent"]["value"]
    assert u.shape == (2,) and abs(float(trace.nodes["mu"]["value"]) - float(u[1])) == 0


def test_guide_with_fmpe_log_prob_and_importance(fmpe_guide):
    """Catches a guide density evaluated for other data than its draws were (importance
    weights then degenerate), and checks that the guide's trace density is its
    `log_prob`. A divergence of the wrong sign is not caught here (for a near-Gaussian
    posterior it shifts log q by a near constant): the normalisation test catches it.
    Measured over training seeds 0-2: ESS 816-966 of 1000, corrected mu within 0.074
    posterior sds; four standard errors of the weighted mean of 816 effective draws
    are 0.14."""
    y, z = _data(8, -0.4)
    trace = pyro.poutine.trace(fmpe_guide).get_trace(y, z)
    trace.compute_log_prob()
    total = sum(site["log_prob"].sum() for site in trace.nodes.values()
                if site["type"] == "sample")  # fmt: skip
    draw = {name: trace.nodes[name]["value"][None] for name in ("p", "mu")}
    assert torch.allclose(total, fmpe_guide.log_prob(draw, y, z)[0], atol=1e-3)
    torch.manual_seed(0)
    draws = fmpe_guide.importance(1000, y, z)
    assert 0.6 * 1000 < draws.ess <= 1000
    _, (mu_mean, mu_sd) = _closed_form(8, z)
    corrected = float((draws.log_weights.exp() * draws.samples["mu"]).sum())
    assert abs(corrected - float(mu_mean)) < (0.074 + 0.14) * mu_sd


def test_svi_fine_tunes_an_fmpe_guide():
    """Catches the solver's adjoint left without the field's weights once training is
    over (zuko's own `FFJTransform` passes them in training mode only): SVI's gradient
    through the guide's draws and densities must move them."""
    guide = AmortizedGuide(two_sites, FMPE(hidden_features=16, num_blocks=1, rtol=1e-3))
    guide.fit(300, torch.zeros(TRIALS_P), torch.zeros(TRIALS_MU), seed=1, progress=False,
              fit_options={"max_epochs": 2})  # fmt: skip
    guide.estimator.requires_grad_(True)
    before = [p.detach().clone() for p in guide.estimator.parameters()]
    pyro.clear_param_store()
    svi = SVI(two_sites, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(*_data(10, 0.0)) for _ in range(2)]
    assert all(math.isfinite(loss) for loss in losses)
    moved = [not torch.equal(a, b) for a, b in zip(before, guide.estimator.parameters(),
                                                   strict=True)]  # fmt: skip
    assert all(moved)
