"""`likelihood_error`: the posterior shift an ensemble's disagreement implies, in sds.

Members with analytic Gaussian likelihoods, each shifted by a known amount, give the
answer in closed form: with `n` trials of `x ~ N(mu + delta_m, 1)` and a flat-ish
prior, member `m`'s posterior is `N(mean(x) - delta_m, 1 / n)`, so the members' means
scatter by `sd(delta) * sqrt(n)` posterior sds.
"""

import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_sbi import NLE, Ensemble, SimulatorDistribution, fit, to_inference_data
from pyro_sbi.diagnostics import likelihood_error
from pyro_sbi.estimator import Estimator


class Shifted(Estimator):
    """q(x | mu) = N(x; mu + shift, 1) per column: a likelihood off by `shift`."""

    def __init__(self, shift: float = 0.0) -> None:
        super().__init__(z_score=False)
        self.shift = shift

    def _build(self) -> None:
        pass

    def config(self) -> dict:
        return {"shift": self.shift}

    def log_prob(self, x, theta):
        return dist.Normal(theta + self.shift, 1.0).log_prob(x).sum(-1)


def shifted_ensemble(shifts) -> Ensemble:
    shifts = iter(shifts)
    ensemble = Ensemble(lambda: Shifted(next(shifts)), size=3)
    theta = torch.linspace(-5, 5, 100).unsqueeze(-1)
    ensemble.build(theta, theta)
    ensemble.num_simulations = len(theta)
    for member in ensemble.members:
        member.num_simulations = len(theta)
    return ensemble


def simulator(theta):
    return theta + torch.randn_like(theta)


def one_subject(estimator, n):
    def model(x=None):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("trials", n):
            return pyro.sample(
                "x", SimulatorDistribution(simulator, mu.unsqueeze(-1), estimator), obs=x
            )

    return model


def posterior_draws(x, shift, num_draws=20000, seed=0):
    """Draws of N(mean(x) - shift, 1 / n): close to the ensemble's own posterior."""
    generator = torch.Generator().manual_seed(seed)
    n = len(x)
    return float(x.mean()) - shift + torch.randn(num_draws, generator=generator) / math.sqrt(n)


SHIFTS = (-0.03, 0.0, 0.03)  # sd 0.03


@pytest.mark.parametrize("n", [25, 100, 400])
def test_the_error_grows_like_the_square_root_of_the_trials(n):
    torch.manual_seed(0)
    x = (0.7 + torch.randn(n)).unsqueeze(-1)
    model = one_subject(shifted_ensemble(SHIFTS), n)
    error = likelihood_error({"mu": posterior_draws(x, 0.0)}, model, x)
    assert error["mu"].shape == ()
    expected = 0.03 * math.sqrt(n)  # 0.15, 0.3, 0.6
    assert abs(float(error["mu"]) - expected) < 0.1 * expected + 0.02


def test_identical_members_have_no_error():
    x = torch.randn(50, 1)
    model = one_subject(shifted_ensemble((0.1, 0.1, 0.1)), 50)
    error = likelihood_error({"mu": posterior_draws(x, 0.1)}, model, x)
    assert float(error["mu"]) < 1e-6


def test_one_biased_member_is_found():
    """Two exact members and one whose mean is shifted by 5 % of the noise sd."""
    n = 400
    x = (0.2 + torch.randn(n)).unsqueeze(-1)
    model = one_subject(shifted_ensemble((0.0, 0.0, 0.05)), n)
    error = float(likelihood_error({"mu": posterior_draws(x, 0.05 / 3)}, model, x)["mu"])
    # member shifts of about (1/3, 1/3, -2/3) * 0.05 * sqrt(400) = 0.33, 0.33, -0.67 sd
    expected = math.sqrt((1 / 9 + 1 / 9 + 4 / 9) / 2)  # 0.577
    assert abs(error - expected) < 0.05


def test_subjects_get_one_error_each_and_only_their_own_trials_count():
    trials = torch.tensor([16, 100, 400])
    x = torch.randn(3, 400, 1)
    mask = torch.arange(400) < trials.unsqueeze(-1)  # subject s has trials[s] trials
    estimator = shifted_ensemble(SHIFTS)

    def model(x=None):
        with pyro.plate("subjects", 3, dim=-2):
            mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
            with pyro.plate("trials", 400, dim=-1), pyro.poutine.mask(mask=mask):
                return pyro.sample(
                    "x", SimulatorDistribution(simulator, mu.unsqueeze(-1), estimator), obs=x
                )

    mean = torch.stack([x[s, : trials[s]].mean() for s in range(3)])
    generator = torch.Generator().manual_seed(1)
    draws = mean + torch.randn(20000, 3, generator=generator) / trials.sqrt()
    error = likelihood_error({"mu": draws.unsqueeze(-1)}, model, x)["mu"]
    assert error.shape == (3, 1)
    expected = 0.03 * trials.double().sqrt().numpy()  # 0.12, 0.3, 0.6
    np.testing.assert_allclose(error[:, 0], expected, rtol=0.15, atol=0.02)


def test_a_model_that_cannot_run_vectorised_gives_the_same_answer():
    x = torch.randn(100, 1)
    estimator = shifted_ensemble(SHIFTS)

    def scalar_only(x=None):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        theta = mu.reshape(1)  # fails under an extra plate of draws
        with pyro.plate("trials", 100):
            return pyro.sample("x", SimulatorDistribution(simulator, theta, estimator), obs=x)

    draws = {"mu": posterior_draws(x, 0.0, num_draws=400)}
    vectorised = likelihood_error(draws, one_subject(estimator, 100), x)["mu"]
    one_at_a_time = likelihood_error(draws, scalar_only, x)["mu"]
    np.testing.assert_allclose(one_at_a_time, vectorised, rtol=1e-6)


def test_members_whose_posteriors_do_not_overlap_warn():
    n = 400
    x = torch.randn(n, 1)
    model = one_subject(shifted_ensemble((-1.0, 0.0, 1.0)), n)  # 20 sds apart
    with pytest.warns(UserWarning, match="effective sample size"):
        likelihood_error({"mu": posterior_draws(x, 0.0, num_draws=2000)}, model, x)


def test_a_model_without_an_ensemble_is_refused():
    likelihood = NLE()
    theta = torch.randn(200, 1)
    likelihood.fit(theta, theta + torch.randn(200, 1), max_epochs=1, progress=False, seed=0)
    x = torch.randn(10, 1)
    with pytest.raises(TypeError, match="Ensemble"):
        likelihood_error({"mu": torch.randn(100)}, one_subject(likelihood, 10), x)


def test_to_inference_data_warns_when_the_error_is_large_and_not_when_small():
    n = 400
    x = torch.randn(n, 1)
    draws = {"mu": posterior_draws(x, 0.0, num_draws=4000)}
    options = {"posterior_predictive": False}
    with pytest.warns(UserWarning, match=r"site 'x'.*0\.[5-7]\d posterior sds.*'mu'"):
        to_inference_data(draws, one_subject(shifted_ensemble(SHIFTS), n), x, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        to_inference_data(draws, one_subject(shifted_ensemble((0.0, 0.0, 0.0)), n), x, **options)


def test_bootstrap_resamples_the_training_split_only():
    """The validation rows stay distinct rows that training never sees, not even copies."""
    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))

        def loss(self, theta, x):
            seen.append((self.training, theta[:, 0].clone()))
            return (self.weight - theta).pow(2).mean()

    theta = torch.arange(200.0).unsqueeze(-1)
    fit(
        Recorder(),
        theta,
        theta,
        max_epochs=1,
        batch_size=500,
        bootstrap=True,
        seed=0,
        progress=False,
    )
    (train_rows,), (valid_rows,) = (
        [rows for training, rows in seen if training],
        [rows for training, rows in seen if not training],
    )
    assert len(train_rows) == 180 and len(valid_rows) == 20
    assert len(set(train_rows.tolist())) < 150  # drawn with replacement: about 63 % distinct
    assert not set(train_rows.tolist()) & set(valid_rows.tolist())
    seen.clear()
    fit(Recorder(), theta, theta, max_epochs=1, batch_size=500, seed=0, progress=False)
    assert len(set(seen[0][1].tolist())) == 180


def test_bootstrap_is_saved_with_the_ensemble(tmp_path):
    ensemble = Ensemble(lambda: NLE(), size=2, bootstrap=True)
    theta = torch.randn(300, 1)
    ensemble.fit(theta, theta + torch.randn(300, 1), max_epochs=1, progress=False, seed=0)
    ensemble.save(tmp_path / "e.pt")
    loaded = Ensemble.load(tmp_path / "e.pt")
    assert loaded.bootstrap and "bootstrap=True" in repr(loaded)


@pytest.mark.slow
def test_a_bootstrapped_ensemble_predicts_its_own_error_on_a_linear_gaussian():
    """The error against the closed form, over the diagnostic, is about 1 (RMS over seeds).

    2 parameters, x ~ N(A theta, 0.5^2) with a non-identity A, 20 trials, 5,000
    simulations, `Ensemble(lambda: NLE(), 5, bootstrap=True)`; the posterior of the
    ensemble on a grid. Measured over seeds 0-4 (the how-to's table): RMS 1.06; a
    diagnostic that missed the sum over trials would give about 4.5.
    """
    a = torch.tensor([[1.0, 0.5], [-0.3, 0.8]])
    noise, prior_sd, n = 0.5, 2.0, 20

    def simulate(theta):
        return theta @ a.T + noise * torch.randn(*theta.shape[:-1], 2)

    ratios = []
    for seed in range(3):
        torch.manual_seed(seed)
        x = simulate((prior_sd * torch.randn(2) * 0.5).expand(n, 2))
        precision = torch.eye(2) / prior_sd**2 + n * a.T @ a / noise**2
        covariance = torch.linalg.inv(precision)
        mean = covariance @ (a.T @ x.sum(0) / noise**2)
        sd = covariance.diagonal().sqrt()
        theta = prior_sd * torch.randn(5000, 2)
        likelihood = Ensemble(lambda: NLE(), size=5, bootstrap=True)
        likelihood.fit(theta, simulate(theta), progress=False, seed=100 + seed)

        axes = [
            torch.linspace(float(mean[i] - 7 * sd[i]), float(mean[i] + 7 * sd[i]), 121)
            for i in range(2)
        ]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
        log_p = dist.Normal(0.0, prior_sd).log_prob(grid).sum(-1) + likelihood.log_prob(
            x.unsqueeze(1), grid
        ).sum(0)
        weights = torch.softmax(log_p.double(), 0)
        error = ((weights @ grid.double() - mean.double()) / sd.double()).abs()
        cell = torch.stack([axis[1] - axis[0] for axis in axes])
        draws = grid[torch.multinomial(weights.float(), 4000, replacement=True)]
        draws = draws + (torch.rand(4000, 2) - 0.5) * cell

        def model(x=None, likelihood=likelihood):
            t = pyro.sample("theta", dist.Normal(torch.zeros(2), prior_sd).to_event(1))
            with pyro.plate("trials", n):
                return pyro.sample("x", SimulatorDistribution(simulate, t, likelihood), obs=x)

        predicted = likelihood_error({"theta": draws}, model, x)["theta"]
        ratios.extend((error.numpy() / predicted).tolist())
    rms = float(np.sqrt(np.mean(np.square(ratios))))
    assert 0.4 < rms < 2.5, ratios
