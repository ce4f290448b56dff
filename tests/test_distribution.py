import pyro
import pyro.distributions as dist
import pytest
import torch
import zuko
from models import Counter, hierarchical
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_sbi import NLE, SimulatorDistribution, UntrainedEstimatorError


@pytest.fixture(scope="module")
def likelihood():
    torch.manual_seed(0)
    theta = 2 * torch.randn(3000, 2)
    estimator = NLE()
    estimator.fit(theta, theta + 0.5 * torch.randn(3000, 2), max_epochs=30, progress=False, seed=0)
    return estimator


@pytest.mark.parametrize("batch_shape", [(), (5,), (2, 3)])
def test_shapes(likelihood, batch_shape):
    """Catches values paired with the wrong parameters when broadcasting: each entry of
    `log_prob` is the estimator's density of that entry's x at that entry's theta."""
    simulator = Counter()
    theta = torch.randn(batch_shape + (2,))
    d = SimulatorDistribution(simulator, theta, likelihood)
    assert d.batch_shape == batch_shape and d.event_shape == (2,)
    x = d.sample((4,))
    assert x.shape == (4,) + batch_shape + (2,)
    assert simulator.count == 4 * max(1, torch.Size(batch_shape).numel())
    log_p = d.log_prob(x)
    assert log_p.shape == (4,) + batch_shape
    flat_x, flat_theta = x.reshape(-1, 2), theta.expand(x.shape).reshape(-1, 2)
    pairs = zip(flat_x, flat_theta, strict=True)
    one_by_one = torch.stack([likelihood.log_prob(a, b) for a, b in pairs])
    assert torch.allclose(log_p.reshape(-1), one_by_one, atol=1e-5)
    assert torch.allclose(d.log_prob(x[0]), log_p[0], atol=1e-6)


def test_sample_runs_the_real_simulator(likelihood):
    d = SimulatorDistribution(lambda t: t * 100.0, torch.ones(3, 2), likelihood)
    assert torch.equal(d.sample(), torch.full((3, 2), 100.0))


def test_expand_keeps_theta_unrepeated(likelihood):
    theta = torch.randn(4, 2)
    d = SimulatorDistribution(Counter(), theta, likelihood).expand((6, 4))
    assert d.batch_shape == (6, 4) and d.theta.shape == (4, 2)
    log_p = d.log_prob(torch.zeros(2))  # catches the expanded rows given other parameters
    assert log_p.shape == (6, 4)
    expected = likelihood.log_prob(torch.zeros(4, 2), theta)
    assert torch.allclose(log_p, expected.expand(6, 4), atol=1e-6)
    with pytest.raises(ValueError, match="cannot expand"):
        d.expand((6, 5))


def test_x_shape_given_before_training():
    d = SimulatorDistribution(Counter(), torch.zeros(3, 2), NLE(), x_shape=(2,))
    assert d.event_shape == (2,) and d.sample().shape == (3, 2)
    with pytest.raises(UntrainedEstimatorError, match="call pyro_sbi.train"):
        d.log_prob(torch.zeros(3, 2))


def test_nested_plates_broadcast_theta_over_trials(likelihood):
    simulator = Counter()
    model = hierarchical(simulator, likelihood, subjects=4, trials=6)
    trace = pyro.poutine.trace(model).get_trace()
    site = trace.nodes["x"]
    assert site["value"].shape == (6, 4, 2)
    assert site["fn"].batch_shape == (6, 4) and site["fn"].theta.shape == (4, 2)
    assert simulator.count == 24  # one simulation per (trial, subject) when sampling
    trace.compute_log_prob()
    assert site["log_prob"].shape == (6, 4)


def test_gradient_reaches_theta_and_not_the_estimator(likelihood):
    theta = torch.zeros(4, 2, requires_grad=True)
    d = SimulatorDistribution(Counter(), theta, likelihood)
    d.log_prob(torch.ones(6, 4, 2)).sum().backward()
    assert theta.grad is not None and (theta.grad > 0).all()
    assert all(p.grad is None for p in likelihood.parameters())


def test_vectorised_predictive_uses_the_simulator(likelihood):
    simulator = Counter()
    model = hierarchical(simulator, likelihood, subjects=4, trials=6)
    x_o = torch.zeros(6, 4, 2)
    samples = {"mu": torch.randn(10, 1, 1, 2), "theta": torch.full((10, 1, 4, 2), 50.0)}
    predictive = Predictive(model, posterior_samples=samples, parallel=True, return_sites=["x"])
    x = predictive()["x"]
    assert x.shape == (10, 6, 4, 2)
    assert (x - 50.0).abs().mean() < 1.0  # simulated at theta = 50, not the observation
    # with the observation given, Pyro returns it; uncondition asks for fresh simulations
    fresh = Predictive(pyro.poutine.uncondition(model), posterior_samples=samples, parallel=True)
    assert (fresh(x_o)["x"] - 50.0).abs().mean() < 1.0


def test_svi_step_does_not_train_the_estimator(likelihood):
    model = hierarchical(Counter(), likelihood, subjects=4, trials=6)
    x_o = torch.randn(6, 4, 2)
    before = [p.clone() for p in likelihood.parameters()]
    svi = SVI(model, AutoNormal(model), pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    assert torch.isfinite(torch.tensor(svi.step(x_o)))
    assert all(torch.equal(a, b) for a, b in zip(before, likelihood.parameters(), strict=True))
    assert not any(name.startswith("x") for name in pyro.get_param_store().keys())


def test_untrained_estimator_error_names_the_site():
    model = hierarchical(Counter(), NLE(), subjects=4, trials=6)
    with pytest.raises(ValueError, match=r"(?s)site 'x'.*has not been trained.*pyro_sbi.train"):
        pyro.poutine.trace(model).get_trace(torch.zeros(6, 4, 2)).log_prob_sum()


def test_wrong_observation_shape_names_the_site_and_shapes(likelihood):
    model = hierarchical(Counter(), likelihood, subjects=4, trials=6)
    with pytest.raises(ValueError, match=r"(?s)site 'x'.*event shape \(2,\).*shape \(6, 4, 3\)"):
        pyro.poutine.trace(model).get_trace(torch.zeros(6, 4, 3)).log_prob_sum()


def test_theta_without_parameter_dimension_is_refused(likelihood):
    with pytest.raises(ValueError, match=r"linear_gaussian.*parameter dimension.*shape \(\)"):
        SimulatorDistribution(Counter(), torch.tensor(0.0), likelihood)


def test_theta_dimension_must_match_the_trained_estimator(likelihood):
    with pytest.raises(ValueError, match="3 parameters.*trained with 2"):
        SimulatorDistribution(Counter(), torch.zeros(5, 3), likelihood)


def test_estimator_type_is_checked():
    with pytest.raises(TypeError, match="NLE"):
        SimulatorDistribution(Counter(), torch.zeros(2), dist.Normal(0, 1))


def test_shape_checks_do_not_depend_on_validation(likelihood):
    d = SimulatorDistribution(Counter(), torch.zeros(2), likelihood, validate_args=False)
    with pytest.raises(ValueError, match="event shape"):
        d.log_prob(torch.zeros(3))


def test_non_finite_observation_under_nuts_names_the_site_and_the_entries():
    from pyro.infer import MCMC, NUTS

    from pyro_sbi import train

    estimator = NLE(zuko.flows.MAF)

    def model(x_o=None):
        theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("trials", 6):
            return pyro.sample("x", SimulatorDistribution(Counter(), theta, estimator), obs=x_o)

    train(model, num_simulations=200, progress=False, fit_options={"max_epochs": 2}, seed=0)
    x_o = torch.zeros(6, 2)
    x_o[2, 1], x_o[4, 0] = float("nan"), float("inf")
    mcmc = MCMC(NUTS(model), num_samples=2, warmup_steps=2, disable_progbar=True)
    with pytest.raises(
        ValueError,
        match=r"(?s)site 'x'.*2 non-finite entries \(NaN or inf\) out of 12, at indices "
        r"\(2, 1\), \(4, 0\) of its shape \(6, 2\)",
    ) as info:
        mcmc.run(x_o)
    assert "cannot find valid initial params" not in str(info.value)


def test_many_non_finite_entries_show_the_first_five(likelihood):
    d = SimulatorDistribution(Counter(), torch.zeros(2), likelihood)
    x = torch.zeros(10, 2)
    x[3:] = float("nan")
    first = r"\(3, 0\), \(3, 1\), \(4, 0\), \(4, 1\), \(5, 0\), \.\.\. of its shape"
    with pytest.raises(ValueError, match=rf"14 non-finite entries .* at indices {first}"):
        d.log_prob(x)
    assert d.log_prob(torch.zeros(10, 2)).isfinite().all()
