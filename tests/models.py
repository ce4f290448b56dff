"""Small simulators and Pyro models shared by the tests."""

import pyro
import pyro.distributions as dist
import torch

from pyro_sbi import SimulatorDistribution


class Counter:
    """A linear-Gaussian simulator that records the parameter vectors it receives.

    `fail(theta) -> bool mask` marks simulations that return NaN.
    """

    __name__ = "linear_gaussian"

    def __init__(self, fail=None):
        self.calls = []
        self.fail = fail

    def __call__(self, theta):
        self.calls.append(theta.clone())
        x = theta + 0.5 * torch.randn_like(theta)
        if self.fail is not None:
            x[self.fail(theta)] = float("nan")
        return x

    @property
    def theta(self):
        return torch.cat(self.calls)

    @property
    def count(self):
        return sum(len(t) for t in self.calls)


def hierarchical(simulator, likelihood, subjects=8, trials=30):
    """Group mean mu (2,), subjects' theta (subjects, 2), x (trials, subjects, 2)."""

    def model(x_o=None):
        mu = pyro.sample("mu", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("subjects", subjects):
            theta = pyro.sample("theta", dist.Normal(mu, 0.5).to_event(1))
            with pyro.plate("trials", trials, dim=-2):
                return pyro.sample(
                    "x", SimulatorDistribution(simulator, theta, likelihood), obs=x_o
                )

    return model
