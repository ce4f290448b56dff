import math

import pytest
import torch
import zuko

from pyro_sbi import NLE

CONSTRUCTORS = {
    "nsf": lambda: NLE(zuko.flows.NSF),
    "maf": lambda: NLE(),  # the default
}


def linear_gaussian(n, scale=0.5):
    theta = torch.randn(n, 2)
    return theta, 3.0 + theta + scale * torch.randn(n, 2)


@pytest.fixture(scope="module", params=list(CONSTRUCTORS))
def trained(request):
    torch.manual_seed(0)
    estimator = CONSTRUCTORS[request.param]()
    theta, x = linear_gaussian(4000)
    history = estimator.fit(theta, x, max_epochs=60, progress=False, seed=0)
    return estimator, history


def test_log_prob_is_close_to_truth(trained):
    estimator, _ = trained
    theta, x = linear_gaussian(2000)
    truth = torch.distributions.Normal(3.0 + theta, 0.5).log_prob(x).sum(-1)
    error = estimator.log_prob(x, theta) - truth
    assert error.mean().abs() < 0.1 and error.std() < 0.25


def test_log_prob_is_differentiable_in_theta(trained):
    estimator, _ = trained
    theta = torch.zeros(3, 2, requires_grad=True)
    estimator.log_prob(torch.full((3, 2), 3.5), theta).sum().backward()
    # d/dtheta log N(x; 3 + theta, 0.5) = (x - 3 - theta) / 0.25 = 2
    assert torch.allclose(theta.grad, torch.full((3, 2), 2.0), atol=0.6)


def test_forward_is_a_distribution_over_x(trained):
    estimator, _ = trained
    theta = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    likelihood = estimator(theta)
    assert likelihood.batch_shape == (2,) and likelihood.event_shape == (2,)
    samples = likelihood.sample((4000,))
    assert samples.shape == (4000, 2, 2)
    assert torch.allclose(samples.mean(0), 3.0 + theta, atol=0.06)
    # the samples follow the learned density: its moments on a grid (Riemann sums)
    step = 0.04
    axis = torch.arange(-1.0, 7.0, step) + step / 2
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 1, 2)
    with torch.no_grad():
        density = estimator.log_prob(grid, theta).exp() * step**2  # (cells, 2)
    mean = (density.unsqueeze(-1) * grid).sum(0)
    sd = (density.unsqueeze(-1) * (grid - mean) ** 2).sum(0).sqrt()
    assert torch.allclose(density.sum(0), torch.ones(2), atol=0.01)
    assert torch.allclose(samples.mean(0), mean, atol=0.04)
    assert torch.allclose(samples.std(0), sd, rtol=0.05)
    if estimator.flow_class is zuko.flows.MAF:  # the default is close to the truth too
        assert torch.allclose(samples.std(0), torch.full((2, 2), 0.5), rtol=0.1)
    assert likelihood.log_prob(samples[:3]).shape == (3, 2)


@pytest.mark.parametrize("flow", list(CONSTRUCTORS))
def test_density_integrates_to_one(flow):
    torch.manual_seed(1)
    theta = torch.rand(3000, 1) * 2
    x = theta + 0.3 * torch.randn(3000, 1) ** 2  # skewed, not Gaussian
    estimator = CONSTRUCTORS[flow]()
    estimator.fit(theta, x, max_epochs=20, progress=False, seed=0)
    grid = torch.linspace(-4.0, 8.0, 6001).unsqueeze(-1)
    for value in (0.2, 1.0, 1.8):
        density = estimator.log_prob(grid, torch.tensor([value])).exp()
        assert torch.trapezoid(density, grid.squeeze(-1)).item() == pytest.approx(1.0, abs=0.01)


def test_multidimensional_x_shape():
    theta = torch.randn(500, 3)
    x = theta[:, :, None] + torch.randn(500, 3, 4)
    estimator = NLE(zuko.flows.MAF)
    estimator.fit(theta, x, max_epochs=2, progress=False)
    assert estimator.x_shape == (3, 4)
    assert estimator.log_prob(torch.randn(7, 3, 4), torch.randn(3)).shape == (7,)
    with pytest.raises(ValueError, match=r"output shape \(3, 4\)"):
        estimator.log_prob(torch.randn(7, 4, 3), torch.randn(3))


def test_seeded_fit_is_reproducible():
    theta, x = linear_gaussian(300)
    a, b = NLE(), NLE()
    a.fit(theta, x, max_epochs=3, progress=False, seed=5)
    b.fit(theta, x, max_epochs=3, progress=False, seed=5)
    assert torch.equal(a.log_prob(x[:5], theta[:5]), b.log_prob(x[:5], theta[:5]))


def test_early_stopping_restores_best_epoch():
    theta, x = linear_gaussian(200)
    estimator = NLE()
    history = estimator.fit(theta, x, max_epochs=500, patience=3, progress=False, seed=0)
    assert history.stopped_early and history.epochs < 500
    assert history.best_epoch == history.epochs - 4


def test_warns_outside_training_range(trained):
    estimator, _ = trained
    with pytest.warns(UserWarning, match="extrapolating"):
        assert estimator.warn_if_outside(torch.tensor([100.0, 3.0]))
    assert not estimator.warn_if_outside(torch.tensor([3.0, 3.0]))


def test_constant_feature_does_not_divide_by_zero():
    theta = torch.randn(300, 1)
    x = torch.cat([theta + torch.randn(300, 1), torch.ones(300, 1)], -1)
    estimator = NLE(zuko.flows.MAF)
    estimator.fit(theta, x, max_epochs=2, progress=False)
    assert math.isfinite(estimator.log_prob(torch.tensor([0.0, 1.0]), torch.zeros(1)).item())
