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


def binary_and_counts(n):
    """theta ~ U(0.5, 4.5); x = (Bernoulli(theta / 5) twice, Poisson(theta), theta + noise, 1)."""
    theta = 0.5 + 4.0 * torch.rand(n, 1)
    x = torch.cat(
        [
            torch.bernoulli((theta / 5).expand(-1, 2)),
            torch.poisson(theta),
            theta + 0.3 * torch.randn(n, 1),
            torch.ones(n, 1),
        ],
        dim=-1,
    )
    return theta, x


def log_pmf(x, theta):
    """The exact log-probability of the two binary and the count column of `binary_and_counts`."""
    binary = torch.distributions.Bernoulli(theta / 5).log_prob(x[:, :2]).sum(-1)
    return binary + torch.distributions.Poisson(theta[:, 0]).log_prob(x[:, 2])


@pytest.mark.parametrize("flow", [zuko.flows.MAF, zuko.flows.NSF], ids=["maf", "nsf"])
def test_integer_columns_are_dequantized_to_their_probabilities(flow):
    """Catches a flow fitted to the lattice of binary and count values as if they were
    real numbers: it piles mass onto the lattice points, so its log-density there exceeds
    the log-probability by several nats (measured without dequantization: -6.8 nats for
    the MAF on two binary columns, -1.7 for the spline flow on Poisson counts), and its
    training does not stop before `max_epochs`. With dequantization the error is the
    flow's own (a MAF is affine per column: about -0.23 nats on the binary columns)."""
    torch.manual_seed(0)
    theta, x = binary_and_counts(3000)
    estimator = NLE(flow)
    history = estimator.fit(theta, x[:, :3], max_epochs=300, progress=False, seed=0)
    assert estimator.x_integer.tolist() == [True, True, True]
    assert history.stopped_early
    theta, x = binary_and_counts(4000)
    error = log_pmf(x, theta) - estimator.log_prob(x[:, :3], theta)
    assert error.mean().abs() < 0.5, error.mean()
    draws = estimator(theta[:5]).sample((20,))
    assert torch.equal(draws, draws.round())


def test_only_varying_integer_columns_are_dequantized_and_saved(tmp_path):
    """Catches a continuous or a constant column taken for a count, a mask lost in the
    file, or dequantize=False not honoured (training on the raw lattice again)."""
    torch.manual_seed(0)
    theta, x = binary_and_counts(1000)
    estimator = NLE()
    estimator.fit(theta, x, max_epochs=2, progress=False, seed=0)
    assert estimator.x_integer.tolist() == [True, True, True, False, False]
    draws = estimator(theta[:3]).sample((4,))
    assert torch.equal(draws[..., :3], draws[..., :3].round())
    assert not torch.equal(draws[..., 3], draws[..., 3].round())
    estimator.save(tmp_path / "nle.pt")
    clone = NLE.load(tmp_path / "nle.pt")
    assert clone.dequantize and torch.equal(clone.x_integer, estimator.x_integer)
    assert torch.equal(clone.log_prob(x[:7], theta[:7]), estimator.log_prob(x[:7], theta[:7]))

    raw = NLE(dequantize=False)
    raw.fit(theta, x, max_epochs=2, progress=False, seed=0)
    assert raw._dequantized() is None and NLE.from_config(raw.config()).dequantize is False
    raw.train()
    assert raw.loss(theta[:50], x[:50]) == raw.loss(theta[:50], x[:50])  # no noise
    estimator.train()
    assert estimator.loss(theta[:50], x[:50]) != estimator.loss(theta[:50], x[:50])


def test_nan_padding_leaves_a_count_column_integer():
    """Catches NaN (padding of missing trials) taken for a non-integer value."""
    x = torch.tensor([[1.0, 0.5], [float("nan"), 2.0], [3.0, 1.0]])
    from pyro_sbi.streamed import integer_valued

    assert integer_valued(x).tolist() == [True, False]
