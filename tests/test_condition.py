"""Trials with known inputs: a `condition` of the simulator that is not a parameter."""

import pickle

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import zuko
from pyro.infer import Predictive

from pyro_sbi import MNLE, NLE, NRE, SimulatorDistribution, train
from pyro_sbi.distribution import _WithCondition

FAST = {"max_epochs": 2}
SUBJECTS, TRIALS = 4, 6


class Recorder:
    """`x = a + b * u + 0.1 noise` for theta = (a, b); records the rows it receives."""

    __name__ = "linear_design"

    def __init__(self, fail=None):
        self.calls = []
        self.fail = fail

    def __call__(self, theta, u):
        self.calls.append((theta.clone(), u.clone()))
        x = theta[:, :1] + theta[:, 1:2] * u[:, :1] + 0.1 * torch.randn(len(theta), 1)
        if self.fail is not None:
            x[self.fail(theta, u)] = float("nan")
        return x

    @property
    def theta(self):
        return torch.cat([theta for theta, _ in self.calls])

    @property
    def u(self):
        return torch.cat([u for _, u in self.calls])


def echo(theta, u):
    """Returns its condition: proves which condition each element was simulated at."""
    return u.clone()


def design_model(simulator, likelihood, u):
    """theta (SUBJECTS, 2) per subject, known inputs u per trial, x (TRIALS, SUBJECTS, 1)."""

    def model(x_o=None):
        with pyro.plate("subjects", SUBJECTS):
            theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            with pyro.plate("trials", TRIALS, dim=-2):
                fn = SimulatorDistribution(simulator, theta, likelihood, condition=u)
                return pyro.sample("x", fn, obs=x_o)

    return model


def per_trial(n=TRIALS):
    return torch.linspace(-1.0, 1.0, n).reshape(n, 1, 1)


@pytest.fixture(scope="module")
def trained():
    """NLE of x | (a, b, u), trained on rows [theta, u]."""
    torch.manual_seed(0)
    theta, u = torch.randn(2000, 2), 2 * torch.rand(2000, 1) - 1
    x = theta[:, :1] + theta[:, 1:] * u + 0.1 * torch.randn(2000, 1)
    estimator = NLE(zuko.flows.MAF)
    estimator.fit(torch.cat([theta, u], -1), x, max_epochs=5, progress=False, seed=0)
    return estimator


# shapes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "theta_shape, u_shape, batch_shape",
    [
        ((2,), (1,), ()),
        ((SUBJECTS, 2), (TRIALS, SUBJECTS, 1), (TRIALS, SUBJECTS)),
        ((SUBJECTS, 2), (TRIALS, 1, 1), (TRIALS, SUBJECTS)),
        ((SUBJECTS, 2), (1,), (SUBJECTS,)),
        ((2,), (TRIALS, 1), (TRIALS,)),
        ((TRIALS, SUBJECTS, 2), (SUBJECTS, 1), (TRIALS, SUBJECTS)),
    ],
)
def test_batch_shape_is_the_broadcast_of_theta_and_condition(
    trained, theta_shape, u_shape, batch_shape
):
    d = SimulatorDistribution(
        echo, torch.zeros(theta_shape), trained, condition=torch.ones(u_shape)
    )
    assert d.batch_shape == batch_shape and d.event_shape == (1,)
    assert d.condition_dim == 1 and d.theta.shape == theta_shape
    x = d.sample((3,))
    assert x.shape == (3, *batch_shape, 1)
    assert d.log_prob(x).shape == (3, *batch_shape)
    assert d.log_prob(torch.zeros(1)).shape == batch_shape


def test_nested_plates_with_a_condition_per_trial(trained):
    model = design_model(Recorder(), trained, per_trial())
    trace = pyro.poutine.trace(model).get_trace()
    site = trace.nodes["x"]
    assert site["value"].shape == (TRIALS, SUBJECTS, 1)
    assert site["fn"].batch_shape == (TRIALS, SUBJECTS) and site["fn"].theta.shape == (SUBJECTS, 2)
    trace.compute_log_prob()
    assert site["log_prob"].shape == (TRIALS, SUBJECTS)
    x = Predictive(model, num_samples=5, parallel=True, return_sites=["x"])()["x"]
    assert x.shape == (5, TRIALS, SUBJECTS, 1)


def test_expand_carries_the_condition(trained):
    u = per_trial()
    d = SimulatorDistribution(echo, torch.zeros(SUBJECTS, 2), trained, condition=u)
    wide = d.expand((3, TRIALS, SUBJECTS))
    assert wide.batch_shape == (3, TRIALS, SUBJECTS) and wide.condition is d.condition
    assert wide.theta.shape == (SUBJECTS, 2) and wide.condition.shape == (TRIALS, 1, 1)
    assert torch.equal(wide.sample(), u.expand(3, TRIALS, SUBJECTS, 1))
    assert wide.log_prob(torch.zeros(1)).shape == (3, TRIALS, SUBJECTS)
    with pytest.raises(ValueError, match="cannot expand"):
        d.expand((TRIALS + 1, SUBJECTS))


def test_shapes_that_do_not_broadcast_name_the_simulator_and_both_shapes(trained):
    with pytest.raises(
        ValueError,
        match=r"linear_design.*condition of shape \(3, 1\) does not broadcast against theta "
        r"of shape \(4, 2\)",
    ):
        SimulatorDistribution(Recorder(), torch.zeros(4, 2), trained, condition=torch.zeros(3, 1))


def test_condition_without_input_dimension_is_refused(trained):
    with pytest.raises(ValueError, match=r"echo.*\(\*batch_shape, d_u\).*shape \(\)"):
        SimulatorDistribution(echo, torch.zeros(2), trained, condition=torch.tensor(0.5))


def test_condition_is_never_differentiated(trained):
    u = torch.zeros(TRIALS, 1, 1, requires_grad=True)
    with pytest.raises(ValueError, match="condition requires grad.*never differentiated"):
        SimulatorDistribution(echo, torch.zeros(SUBJECTS, 2), trained, condition=u)
    theta = torch.zeros(SUBJECTS, 2, requires_grad=True)
    d = SimulatorDistribution(echo, theta, trained, condition=u.detach())
    d.log_prob(torch.zeros(TRIALS, SUBJECTS, 1)).sum().backward()
    assert theta.grad is not None and theta.grad.abs().sum() > 0


def test_condition_becomes_a_float_tensor(trained):
    d = SimulatorDistribution(echo, torch.zeros(2), trained, condition=np.array([1]))
    assert d.condition.dtype == torch.get_default_dtype() and d.condition.shape == (1,)
    d = SimulatorDistribution(echo, torch.zeros(2), trained, condition=torch.tensor([True]))
    assert d.condition.dtype == torch.get_default_dtype() and d.condition.item() == 1.0


def test_non_finite_condition_is_refused(trained):
    u = torch.tensor([[0.0], [float("nan")]])
    with pytest.raises(ValueError, match=r"echo.*condition of shape \(2, 1\) holds 1 non-finite"):
        SimulatorDistribution(echo, torch.zeros(2), trained, condition=u)


def test_context_dimension_is_checked_against_an_estimator_fitted_directly(trained):
    # fitted on 3 columns whose split it does not know: only the total is checked
    with pytest.raises(
        ValueError,
        match=r"theta has 2 parameters \(shape \(2,\)\) and the condition 2 columns "
        r"\(shape \(2,\)\), 4 in all, but the estimator was trained with 3",
    ):
        SimulatorDistribution(echo, torch.zeros(2), trained, condition=torch.zeros(2))
    with pytest.raises(ValueError, match=r"theta has 2 parameters .* trained with 3"):
        SimulatorDistribution(echo, torch.zeros(2), trained)
    SimulatorDistribution(echo, torch.zeros(3), trained)  # a plain 3-parameter site


@pytest.fixture(scope="module")
def design_trained():
    """An NLE trained by `train` with theta (2 parameters) and a condition of 1 column."""
    likelihood = NLE(zuko.flows.MAF)
    pyro.set_rng_seed(0)
    train(design_model(Recorder(), likelihood, per_trial()), num_simulations=240,
          progress=False, fit_options=FAST)  # fmt: skip
    return likelihood


def test_train_stores_the_number_of_condition_columns(design_trained, tmp_path):
    assert design_trained.theta_dim == 3 and design_trained.condition_dim == 1
    design_trained.save(tmp_path / "nle.pt")
    assert NLE.load(tmp_path / "nle.pt").condition_dim == 1


@pytest.mark.parametrize(
    "theta, u, message",
    [
        (torch.zeros(2), torch.zeros(2), r"condition 2 columns .* trained with 2 parameters and "
         r"a condition of 1 columns \(condition=\.\.\. of shape \(\*batch_shape, 1\)\)"),
        (torch.zeros(1), torch.zeros(2), r"theta has 1 parameters .* condition 2 columns "
         r"\(shape \(2,\)\), 3 in all, but .* trained with 2 parameters and a condition of 1"),
        (torch.zeros(3), None, r"theta has 3 parameters \(shape \(3,\)\) but the estimator was "
         r"trained with 2 parameters and a condition of 1 columns"),
    ],
)  # fmt: skip
def test_wrong_condition_columns_against_a_trained_estimator(design_trained, theta, u, message):
    with pytest.raises(ValueError, match=message):
        SimulatorDistribution(echo, theta, design_trained, condition=u)


def test_a_condition_against_an_estimator_trained_without_one():
    likelihood = NLE(zuko.flows.MAF)

    def model():
        theta = pyro.sample("theta", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        pyro.sample("x", SimulatorDistribution(lambda t: t, theta, likelihood))

    train(model, num_simulations=50, progress=False, fit_options=FAST)
    assert likelihood.condition_dim == 0
    with pytest.raises(ValueError, match="trained with 3 parameters and no condition"):
        SimulatorDistribution(echo, torch.zeros(2), likelihood, condition=torch.zeros(1))


# sample -----------------------------------------------------------------------------


def test_sample_passes_the_condition_to_a_batched_simulator(trained):
    u = torch.randn(TRIALS, SUBJECTS, 1)
    d = SimulatorDistribution(echo, torch.zeros(SUBJECTS, 2), trained, condition=u)
    assert torch.equal(d.sample(), u)
    assert torch.equal(d.sample((2,)), u.expand(2, TRIALS, SUBJECTS, 1))
    simulator = Recorder()
    theta = torch.randn(SUBJECTS, 2)
    SimulatorDistribution(simulator, theta, trained, condition=per_trial()).sample()
    ((rows, conditions),) = simulator.calls
    assert rows.shape == (TRIALS * SUBJECTS, 2) and conditions.shape == (TRIALS * SUBJECTS, 1)
    assert torch.equal(rows, theta.repeat(TRIALS, 1))
    assert torch.equal(conditions, per_trial().expand(TRIALS, SUBJECTS, 1).reshape(-1, 1))


def test_sample_passes_one_row_of_each_to_an_unbatched_simulator(trained):
    seen = []

    def one(theta, u):
        assert isinstance(theta, torch.Tensor) and theta.shape == (2,) and u.shape == (1,)
        seen.append((theta.clone(), u.clone()))
        return u * 10.0

    theta = torch.randn(SUBJECTS, 2)
    u = per_trial()
    x = SimulatorDistribution(one, theta, trained, condition=u, batched=False).sample()
    assert len(seen) == TRIALS * SUBJECTS
    assert torch.equal(x, 10.0 * u.expand(TRIALS, SUBJECTS, 1))
    assert torch.equal(seen[SUBJECTS + 1][0], theta[1]) and seen[SUBJECTS + 1][1] == u[1, 0]


@pytest.mark.parametrize("batched", [True, False])
def test_numpy_simulator_gets_both_as_numpy(trained, batched):
    def simulator(theta, u):
        assert isinstance(theta, np.ndarray) and isinstance(u, np.ndarray)
        assert theta.shape[-1] == 2 and u.shape[-1] == 1 and theta.ndim == u.ndim
        return theta[..., :1] + u

    d = SimulatorDistribution(
        simulator, torch.ones(SUBJECTS, 2), trained, condition=per_trial(), numpy=True,
        batched=batched,
    )  # fmt: skip
    assert torch.allclose(d.sample(), 1.0 + per_trial().expand(TRIALS, SUBJECTS, 1))


def test_the_wrapped_simulator_keeps_the_name_seed_and_pickles():
    from pyro_sbi.simulation import simulate
    from pyro_sbi.store import simulator_id

    def with_seed(theta, u, seed=None):
        return theta + u + np.random.default_rng(seed).normal(size=theta.shape)

    wrapped = _WithCondition(with_seed, 1)
    assert wrapped.__name__ == "with_seed" and simulator_id(wrapped) == simulator_id(with_seed)
    recorder = _WithCondition(Recorder(), 2)
    assert simulator_id(recorder) == simulator_id(Recorder())
    rows = torch.cat([torch.zeros(5, 1), torch.arange(5.0)[:, None]], -1)
    options = {"numpy": True, "progress": False}
    first = simulate(wrapped, rows, seed=3, **options).x
    assert torch.equal(first, simulate(wrapped, rows, seed=3, **options).x)
    assert not torch.equal(first, simulate(wrapped, rows, seed=4, **options).x)
    clone = pickle.loads(pickle.dumps(_WithCondition(echo, 1)))
    assert clone.__name__ == "echo" and torch.equal(clone(rows), rows[:, 1:])


# log_prob ---------------------------------------------------------------------------


def mixed(theta, u):
    """(theta (n, 2), u (n, 1)) -> (log-normal time, binary choice) (n, 2)."""
    choice = torch.bernoulli(torch.sigmoid(theta[:, 0] * u[:, 0]))
    rt = torch.exp(0.3 * theta[:, 1] + 0.3 * choice + 0.3 * torch.randn(len(theta)))
    return torch.stack([rt, choice], -1)


ESTIMATORS = {
    "NLE": lambda: NLE(),
    "NLE-NSF": lambda: NLE(zuko.flows.NSF),
    "NRE": lambda: NRE(),
    "MNLE": lambda: MNLE(discrete=[1], log_transform=True),
}


@pytest.fixture(scope="module", params=list(ESTIMATORS))
def any_trained(request):
    torch.manual_seed(1)
    theta, u = torch.randn(600, 2), torch.randn(600, 1)
    x = mixed(theta, u)
    estimator = ESTIMATORS[request.param]()
    estimator.fit(torch.cat([theta, u], -1), x, max_epochs=2, progress=False, seed=0)
    return estimator


@pytest.mark.parametrize(
    "u_shape", [(TRIALS, SUBJECTS, 1), (TRIALS, 1, 1), (1, 1, 1), (SUBJECTS, 1), (1,)]
)
def test_log_prob_is_the_estimator_on_the_concatenated_context(any_trained, u_shape):
    torch.manual_seed(2)
    theta = torch.randn(SUBJECTS, 2, requires_grad=True)
    u = torch.randn(u_shape)
    x = mixed(theta.detach().repeat(TRIALS, 1), torch.randn(TRIALS * SUBJECTS, 1))
    x = x.reshape(TRIALS, SUBJECTS, 2)
    d = SimulatorDistribution(mixed, theta, any_trained, condition=u)
    fast = d.log_prob(x)
    (fast_grad,) = torch.autograd.grad(fast.sum(), theta)
    full = torch.cat(
        [theta.expand(TRIALS, SUBJECTS, 2), u.expand(TRIALS, SUBJECTS, 1)], -1
    ).contiguous()  # a copy per trial: the estimator's general path
    slow = any_trained.log_prob(x, full)
    (slow_grad,) = torch.autograd.grad(slow.sum(), theta)
    assert fast.shape == slow.shape == (TRIALS, SUBJECTS)
    assert torch.allclose(fast, slow, atol=1e-5) and torch.allclose(
        fast_grad, slow_grad, atol=1e-4
    )


def test_a_shared_theta_and_condition_stay_one_row_of_context(trained):
    theta = torch.zeros(SUBJECTS, 2)
    d = SimulatorDistribution(echo, theta, trained, condition=torch.ones(1))
    assert d.expand((TRIALS, SUBJECTS)).context.shape == (SUBJECTS, 3)
    shared = SimulatorDistribution(
        echo, theta.expand(TRIALS, SUBJECTS, 2), trained, condition=torch.ones(1, 1, 1)
    )
    assert shared.batch_shape == (TRIALS, SUBJECTS) and shared.context.shape == (1, SUBJECTS, 3)
    per_trial_u = SimulatorDistribution(echo, theta, trained, condition=per_trial())
    assert per_trial_u.context.shape == (TRIALS, SUBJECTS, 3)


# train ------------------------------------------------------------------------------


@pytest.mark.parametrize("u_shape", [(TRIALS, 1, 1), (TRIALS, SUBJECTS, 1)])
def test_train_simulates_each_theta_at_the_model_design(u_shape):
    simulator = Recorder()
    likelihood = NLE(zuko.flows.MAF)
    u = torch.randn(u_shape)
    per_draw = TRIALS * SUBJECTS
    report = train(design_model(simulator, likelihood, u), num_simulations=10 * per_draw,
                   progress=False, fit_options=FAST)["x"]  # fmt: skip
    theta, conditions = simulator.theta, simulator.u
    assert len(theta) == len(conditions) == 10 * per_draw
    # draw by draw: every subject's theta with every trial's condition, each pair once
    theta = theta.reshape(10, TRIALS, SUBJECTS, 2)
    conditions = conditions.reshape(10, TRIALS, SUBJECTS, 1)
    assert torch.equal(theta, theta[:, :1].expand_as(theta))  # shared by the trials
    assert len(torch.unique(theta[:, 0].reshape(-1, 2), dim=0)) == 10 * SUBJECTS
    assert torch.equal(conditions, u.expand(10, TRIALS, SUBJECTS, 1))
    assert torch.equal(report.theta, torch.cat([simulator.theta, simulator.u], -1))
    assert likelihood.theta_dim == 3 and likelihood.condition_dim == 1
    assert report.theta.shape == (10 * per_draw, 3)


def test_a_partial_last_draw_counts_rows():
    simulator = Recorder()
    train(design_model(simulator, NLE(zuko.flows.MAF), per_trial()), num_simulations=50,
          progress=False, fit_options=FAST)  # fmt: skip
    assert len(simulator.theta) == 50


def test_theta_computed_per_trial_is_simulated_once_per_draw_and_trial():
    coherence = torch.tensor([-0.5, -0.1, 0.0, 0.1, 0.5, 1.0])
    calls = []
    likelihood = NLE(zuko.flows.MAF)

    def simulator(theta):
        calls.append(theta.clone())
        return theta + 0.1 * torch.randn_like(theta)

    def model(x_o=None):
        b = pyro.sample("b", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("trials", len(coherence)):
            v = b[..., :1] + b[..., 1:] * coherence  # drift per trial
            pyro.sample("x", SimulatorDistribution(simulator, v.unsqueeze(-1), likelihood),
                        obs=x_o)  # fmt: skip

    report = train(model, num_simulations=12 * len(coherence), progress=False,
                   fit_options=FAST)["x"]  # fmt: skip
    theta = torch.cat(calls)
    assert theta.shape == (12 * len(coherence), 1) and torch.equal(report.theta, theta)
    v = theta.reshape(12, len(coherence))  # draw by draw: v = b0 + b1 * coherence
    design = torch.stack([torch.ones_like(coherence), coherence], -1)
    b = torch.linalg.lstsq(design, v.T).solution.T
    assert torch.allclose(b @ design.T, v, atol=1e-5)
    assert len(torch.unique(b, dim=0)) == 12 and likelihood.theta_dim == 1
    assert likelihood.condition_dim == 0 and likelihood.trained


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_every_estimator_trains_with_a_condition(name):
    likelihood = ESTIMATORS[name]()

    def model(x_o=None):
        with pyro.plate("subjects", SUBJECTS):
            theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            with pyro.plate("trials", TRIALS, dim=-2):
                fn = SimulatorDistribution(mixed, theta, likelihood, condition=per_trial())
                return pyro.sample("x", fn, obs=x_o)

    train(model, num_simulations=240, progress=False, fit_options=FAST)
    trace = pyro.poutine.trace(model).get_trace(model())
    assert torch.isfinite(trace.log_prob_sum())
    assert likelihood.theta_dim == 3 and likelihood.condition_dim == 1


def test_a_proposal_is_paired_with_the_design():
    simulator = Recorder()
    u = per_trial()
    proposal = dist.Uniform(torch.full((2,), 10.0), 11.0).to_event(1)
    train(design_model(simulator, NLE(zuko.flows.MAF), u), num_simulations=200,
          proposal=proposal, progress=False, fit_options=FAST)  # fmt: skip
    assert len(simulator.theta) == 200 and (simulator.theta >= 10).all()
    assert set(simulator.u.flatten().tolist()) <= set(u.flatten().tolist())
    assert len(set(simulator.u.flatten().tolist())) == TRIALS


def test_sequential_rounds_pair_posterior_draws_with_the_design():
    simulator = Recorder()
    u = per_trial()
    model = design_model(simulator, NLE(zuko.flows.MAF, transforms=1), u)
    x_o = model()
    reports = train(
        model, x_o, num_simulations=480, rounds=2, seed=0, progress=False,
        fit_options={"max_epochs": 5},
        sampler_options={"num_chains": 4, "warmup_steps": 2, "num_candidates": 20},
    )  # fmt: skip
    first, last = reports["x"].simulations
    assert len(first.theta) == len(last.theta) == 240 and last.theta.shape[-1] == 3
    assert set(last.theta[:, 2].tolist()) == set(u.flatten().tolist())


def test_sites_sharing_an_estimator_need_the_same_condition_columns():
    likelihood = NLE()

    def model():
        theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("xa", SimulatorDistribution(echo, theta, likelihood, condition=torch.ones(1)))
        pyro.sample("xb", SimulatorDistribution(lambda t: t[..., :1], theta, likelihood))

    with pytest.raises(ValueError, match=r"share one estimator but have conditions of .*\[0, 1\]"):
        train(model, num_simulations=20, progress=False)


def test_failures_are_learned_as_a_function_of_theta_and_condition():
    simulator = Recorder(fail=lambda theta, u: u[:, 0] > 0.5)
    likelihood = NLE(zuko.flows.MAF)
    with pytest.warns(UserWarning, match="simulations failed"):
        report = train(design_model(simulator, likelihood, per_trial()), num_simulations=240,
                       progress=False, fit_options=FAST)["x"]  # fmt: skip
    assert report.num_failed == 240 // TRIALS * 2  # the two trials with u > 0.5
    assert report.validity.theta_dim == 3
    model = design_model(Recorder(), likelihood, per_trial())
    trace = pyro.poutine.trace(model).get_trace(torch.zeros(TRIALS, SUBJECTS, 1))
    trace.compute_log_prob()
    log_p = trace.nodes["x"]["log_prob"]
    assert log_p.shape == (TRIALS, SUBJECTS) and torch.isfinite(log_p).all()


def test_a_store_with_a_condition_is_reused(tmp_path):
    simulator = Recorder()
    model = design_model(simulator, NLE(zuko.flows.MAF), per_trial())
    first = train(model, num_simulations=120, seed=0, store=tmp_path, progress=False,
                  fit_options=FAST)["x"]  # fmt: skip
    again = train(model, num_simulations=120, seed=1, store=tmp_path, progress=False,
                  fit_options=FAST)["x"]  # fmt: skip
    assert len(simulator.theta) == 120 and torch.equal(first.theta, again.theta)
    assert torch.equal(first.x, again.x) and first.theta.shape == (120, 3)


def test_inference_data_checks_the_training_region_with_the_condition(design_trained):
    from pyro_sbi import to_inference_data
    from pyro_sbi.diagnostics import outside_training

    model = design_model(Recorder(), design_trained, per_trial())
    x_o = model()
    samples = {"theta": torch.zeros(8, SUBJECTS, 2)}  # the prior's centre: inside
    idata = to_inference_data(samples, model, x_o)
    assert idata.posterior["theta"].shape == (1, 8, SUBJECTS, 2)
    assert idata.log_likelihood["x"].shape[:2] == (1, 8)
    assert outside_training(samples, model, x_o) == {"x": 0.0}
    far = {"theta": torch.zeros(8, SUBJECTS, 2)}
    far["theta"][::2, 0, 1] = 50.0  # half the draws: one subject's slope far outside
    assert outside_training(far, model, x_o) == {"x": 0.5}
    elsewhere = design_model(Recorder(), design_trained, 10.0 * per_trial())  # new inputs
    assert outside_training(samples, elsewhere, x_o) == {"x": 1.0}


# accuracy ---------------------------------------------------------------------------

SIGMA = 0.5
DESIGN = torch.linspace(-1.0, 1.0, 40).unsqueeze(-1)  # (40, 1) known inputs, one per trial


def regression(theta, u):
    """x = a + b u + N(0, SIGMA^2) for theta = (a, b): (n, 2), (n, 1) -> (n, 1)."""
    return theta[:, :1] + theta[:, 1:] * u + SIGMA * torch.randn(len(theta), 1)


@pytest.mark.slow
def test_nuts_with_a_condition_matches_the_conjugate_posterior():
    """theta = (a, b) ~ N(0, I); 40 trials at known inputs u_t; NLE() with defaults.

    With X = [1, u] (40, 2), the posterior is N(m, C), C = (I + X^T X / SIGMA^2)^-1,
    m = C X^T x / SIGMA^2 (sds about 0.08 and 0.13). Measured on these seeds: mean
    errors 0.08 and 0.08 posterior sds, sd ratios 0.91 and 0.96 (30,000 simulations,
    750 draws of theta, each at the 40 inputs; 10,000 simulations gave 0.48 sd).
    """
    from pyro.infer import MCMC, NUTS

    likelihood = NLE()

    def model(x_o=None):
        theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("trials", len(DESIGN)):
            fn = SimulatorDistribution(regression, theta, likelihood, condition=DESIGN)
            return pyro.sample("x", fn, obs=x_o)

    generator = torch.Generator().manual_seed(0)
    a, b = 0.4, -0.7
    x_o = a + b * DESIGN + SIGMA * torch.randn(len(DESIGN), 1, generator=generator)
    design = torch.cat([torch.ones_like(DESIGN), DESIGN], -1).double()
    covariance = torch.linalg.inv(torch.eye(2).double() + design.T @ design / SIGMA**2)
    mean = covariance @ design.T @ x_o.double().squeeze(-1) / SIGMA**2
    sd = covariance.diagonal().sqrt()

    report = train(model, num_simulations=30_000, seed=0, progress=False)["x"]
    assert report.theta.shape == (30_000, 3)
    pyro.set_rng_seed(1)
    mcmc = MCMC(NUTS(model), num_samples=1000, warmup_steps=300, disable_progbar=True)
    mcmc.run(x_o)
    samples = mcmc.get_samples()["theta"].double()
    assert ((samples.mean(0) - mean).abs() / sd).max() < 0.3
    assert ((samples.std(0) / sd) - 1).abs().max() < 0.2
