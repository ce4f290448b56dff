import torch

from pyro_sbi import PyroSimulator
from pyro_sbi.tasks import state_space


def test_the_simulator_has_the_exact_marginal_covariance():
    """The covariance of x is s^2 a^|i-j| / (1 - a^2) + 0.25 I, the likelihood's own."""
    torch.manual_seed(0)
    theta = torch.tensor([[0.7, 0.5]]).expand(40_000, 2)
    x = state_space.simulator(theta).double()
    lag = (torch.arange(10)[:, None] - torch.arange(10)[None, :]).abs().double()
    expected = 0.25 * 0.7**lag / (1 - 0.49) + 0.25 * torch.eye(10, dtype=torch.float64)
    assert (torch.cov(x.T) - expected).abs().max() < 0.05
    assert x.mean(0).abs().max() < 0.03


def test_observations_are_seeded_and_the_simulator_is_a_program():
    assert isinstance(state_space.simulator, PyroSimulator)
    x, theta = state_space.observation(1), state_space.true_parameters(1)
    assert x.shape == (10,) and theta.shape == (2,)
    assert torch.equal(x, state_space.observation(1))
    low, high = torch.tensor(state_space.LOW), torch.tensor(state_space.HIGH)
    assert ((theta >= low) & (theta <= high)).all()


def test_reference_matches_importance_sampling(isolated_cache):
    """Grid draws against prior draws weighted by the exact likelihood (within 0.1 sd)."""
    x = state_space.observation(1).double()
    reference = state_space.reference_posterior(1, 4000).double()
    torch.manual_seed(0)
    theta = state_space.prior().sample((200_000,)).double()
    w = torch.softmax(state_space.log_likelihood(x, theta), 0)
    mean = (w[:, None] * theta).sum(0)
    sd = (w[:, None] * (theta - mean) ** 2).sum(0).sqrt()
    assert float(1 / (w**2).sum()) > 1000
    assert ((reference.mean(0) - mean).abs() / sd).max() < 0.1
    assert ((reference.std(0) / sd - 1).abs()).max() < 0.1
