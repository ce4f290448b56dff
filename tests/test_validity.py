import pyro
import pyro.distributions as dist
import pytest
import torch
import zuko
from pyro.infer import MCMC, NUTS

from pyro_sbi import NLE, SimulatorDistribution, train
from pyro_sbi.validity import ValidityClassifier

TRIALS = 10


def fails_for_positive_theta1(theta):
    x = theta + 0.5 * torch.randn_like(theta)
    x[theta[:, 0] > 0] = float("nan")
    return x


def test_classifier_learns_a_failure_boundary():
    torch.manual_seed(0)
    theta = torch.randn(2000, 2)
    valid = (theta[:, :1] + theta[:, 1:] < 0.5).float()
    classifier = ValidityClassifier()
    classifier.fit(theta, valid, progress=False, seed=0)
    inside, outside = torch.tensor([[-1.0, -1.0]]), torch.tensor([[1.5, 1.0]])
    assert classifier.log_prob(inside).exp() > 0.95
    assert classifier.log_prob(outside).exp() < 0.05
    assert classifier.log_prob(torch.zeros(4, 3, 2)).shape == (4, 3)


def test_saved_and_loaded_with_its_estimator(tmp_path):
    likelihood = NLE(zuko.flows.MAF)

    def model(x_o=None):
        theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("trials", 3):
            pyro.sample(
                "x", SimulatorDistribution(fails_for_positive_theta1, theta, likelihood), obs=x_o
            )

    with pytest.warns(UserWarning, match="P\\(valid \\| theta\\) is learned"):
        report = train(
            model, num_simulations=300, seed=0, progress=False, max_failure_fraction=0.8,
            fit_options={"max_epochs": 3},
        )["x"]  # fmt: skip
    assert report.validity is likelihood.validity is not None
    likelihood.save(tmp_path / "nle.pt")
    clone = NLE.load(tmp_path / "nle.pt")
    theta, x = torch.randn(7, 2), torch.randn(7, 2)
    site = SimulatorDistribution(fails_for_positive_theta1, theta, likelihood)
    copy = SimulatorDistribution(fails_for_positive_theta1, theta, clone)
    assert torch.equal(site.log_prob(x), copy.log_prob(x))
    assert torch.equal(
        site.log_prob(x), likelihood.log_prob(x, theta) + likelihood.validity.log_prob(theta)
    )
    likelihood.fit(theta.repeat(10, 1), x.repeat(10, 1), max_epochs=1, progress=False)
    assert likelihood.validity is None  # refitted on other data


def posterior_mass_above_zero(validity):
    likelihood = NLE(zuko.flows.MAF)

    def model(x_o=None):
        theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("trials", TRIALS):
            pyro.sample(
                "x", SimulatorDistribution(fails_for_positive_theta1, theta, likelihood), obs=x_o
            )

    train(
        model, num_simulations=4000, seed=0, progress=False, max_failure_fraction=0.8,
        validity=validity,
    )  # fmt: skip
    mcmc = MCMC(NUTS(model), warmup_steps=300, num_samples=600, disable_progbar=True)
    mcmc.run(observation())
    return float((mcmc.get_samples()["theta"][:, 0] > 0).float().mean())


def observation():
    torch.manual_seed(1)
    return torch.tensor([-0.1, 0.3]) + 0.5 * torch.randn(TRIALS, 2)


@pytest.mark.slow  # two trainings and two NUTS runs: minutes on 2 cores
@pytest.mark.filterwarnings("ignore:x.*simulations failed")
def test_validity_keeps_the_posterior_where_simulations_succeed():
    # Without the failures, theta_0 | x is Normal(sum(x_0) / 0.25 / precision, precision^-1/2)
    precision = 1.0 + TRIALS / 0.5**2
    mean = float(observation()[:, 0].sum()) / 0.5**2 / precision
    exact = 1.0 - float(dist.Normal(mean, precision**-0.5).cdf(torch.tensor(0.0)))  # 0.17
    assert posterior_mass_above_zero(validity=True) < 0.05  # the failing region is cut off
    # the likelihood alone keeps the mass of the posterior without failures there
    assert abs(posterior_mass_above_zero(validity=False) - exact) < 0.07
