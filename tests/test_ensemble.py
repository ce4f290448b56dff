import copy
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import zuko
from simulators import pairs

from pyro_sbi import NLE, NRE, Ensemble, SimulatorDistribution, train


@pytest.fixture(scope="module")
def likelihoods():
    torch.manual_seed(0)
    ensemble = Ensemble(lambda: NLE(zuko.flows.MAF), size=3)
    ensemble.fit(*pairs(1000), max_epochs=5, progress=False, seed=0)
    return ensemble


def test_members_differ_and_the_mixture_is_their_average(likelihoods):
    theta, x = pairs(50)
    values = torch.stack([member.log_prob(x, theta) for member in likelihoods.members])
    assert not torch.allclose(values[0], values[1])
    expected = values.exp().mean(0).log()
    assert torch.allclose(likelihoods.log_prob(x, theta), expected, atol=1e-5)


def test_mixture_is_normalised(likelihoods):
    grid = torch.linspace(-8, 8, 20_001)[:, None]
    density = likelihoods.log_prob(grid, torch.tensor([0.3])).exp()
    assert abs(torch.trapezoid(density, grid[:, 0]) - 1) < 1e-3


def test_mixture_samples(likelihoods):
    """Catches samples drawn from one member only, or one member picked for a whole batch
    or a whole sample instead of one per draw: the members are moved 10 apart in x."""
    ensemble = copy.deepcopy(likelihoods)
    for k, member in enumerate(ensemble.members):
        member.x_loc += 10.0 * k  # member k's likelihood is N(10 k + theta, 0.5^2), nearly
    x = ensemble(torch.zeros(4, 1)).sample((3000,))
    assert x.shape == (3000, 4, 1)
    member = (x[..., 0] / 10).round().long()  # (3000, 4): which member drew each value
    assert set(member.unique().tolist()) == {0, 1, 2}
    # each draw picks a member with probability 1/3: per batch element, 4 binomial sds
    shares = torch.stack([(member == k).float().mean(0) for k in range(3)])  # (3, 4)
    assert ((shares - 1 / 3).abs() < 4 * math.sqrt(2 / 9 / 3000)).all()
    # and independently of the other batch elements: a pair agrees 1/3 of the time
    agree = (member[:, 0] == member[:, 1]).float().mean()
    assert abs(agree - 1 / 3) < 4 * math.sqrt(2 / 9 / 3000)
    residual = x[..., 0] - 10.0 * member
    assert abs(residual.mean()) < 0.1 and abs(residual.std() - 0.5) < 0.1


def test_ratio_ensemble_averages_log_ratios():
    torch.manual_seed(0)
    ensemble = Ensemble(lambda: NRE("C"), size=2)
    ensemble.fit(*pairs(500), max_epochs=2, progress=False, seed=0)
    theta, x = pairs(20)
    members = [member.log_prob(x, theta) for member in ensemble.members]
    assert torch.allclose(ensemble.log_prob(x, theta), (members[0] + members[1]) / 2)
    assert not ensemble.normalized
    with pytest.raises(TypeError, match="not a distribution"):
        ensemble(theta)


def test_seeded_fit_is_reproducible():
    theta, x = pairs(300)
    a, b = (Ensemble(lambda: NRE("A"), size=2) for _ in range(2))
    a.fit(theta, x, max_epochs=2, progress=False, seed=3)
    b.fit(theta, x, max_epochs=2, progress=False, seed=3)
    assert torch.equal(a.log_prob(x, theta), b.log_prob(x, theta))


def test_train_fits_an_ensemble_site():
    ensemble = Ensemble(lambda: NLE(zuko.flows.MAF), size=2)

    def model(x_o=None):
        theta = pyro.sample("theta", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
        with pyro.plate("trials", 5):
            simulator = lambda t: t + 0.5 * torch.randn_like(t)  # noqa: E731
            pyro.sample("x", SimulatorDistribution(simulator, theta, ensemble), obs=x_o)

    reports = train(
        model, num_simulations=300, seed=0, progress=False, fit_options={"max_epochs": 2}
    )
    assert ensemble.trained and all(member.trained for member in ensemble.members)
    assert len(reports["x"].history) == 2 and "4 epochs" in str(reports["x"])
    trace = pyro.poutine.trace(model).get_trace(torch.zeros(5, 1))
    assert math.isfinite(trace.log_prob_sum().item())


def test_clear_errors():
    with pytest.raises(ValueError, match="size"):
        Ensemble(NLE, size=0)
    with pytest.raises(ValueError, match=r"Ensemble: size must be a whole number.*2\.5"):
        Ensemble(NLE, size=2.5)
    assert Ensemble(NLE, size=2.0).size == 2
    kinds = iter([NLE(), NRE()])
    with pytest.raises(TypeError, match="one class"):
        Ensemble(lambda: next(kinds), size=2)
    with pytest.raises(TypeError, match="pyro_sbi estimators"):
        Ensemble(lambda: torch.nn.Linear(1, 1), size=1)
