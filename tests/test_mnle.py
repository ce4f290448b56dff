import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import zuko
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide import init_to_value

from pyro_sbi import MNLE, SimulatorDistribution, c2st
from pyro_sbi.tasks import ddm

DDM_SIMULATIONS = 100_000


def log_normal_choice(theta):
    """theta (n, 1) -> x (n, 2): a log-normal time whose scale depends on a binary choice."""
    choice = torch.bernoulli(torch.sigmoid(2 * theta[:, 0]))
    rt = torch.exp(0.5 * theta[:, 0] + 0.3 * choice + 0.3 * torch.randn(len(theta)))
    return torch.stack([rt, choice], dim=-1)


def true_log_prob(x, theta):
    p = torch.sigmoid(2 * theta[..., 0])
    choice = x[..., 1]
    log_c = torch.where(choice == 1, p.log(), (1 - p).log())
    rt = dist.LogNormal(0.5 * theta[..., 0] + 0.3 * choice, 0.3)
    return log_c + rt.log_prob(x[..., 0])


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    theta = 2 * torch.rand(5000, 1) - 1
    estimator = MNLE(discrete=[1], log_transform=True)
    estimator.fit(theta, log_normal_choice(theta), progress=False, seed=0)
    return estimator


@pytest.mark.parametrize("theta", [-0.8, 0.0, 0.7])
def test_normalised_over_choice_and_time(trained, theta):
    rt = torch.linspace(1e-4, 30.0, 300_001)
    total = 0.0
    for choice in (0.0, 1.0):
        x = torch.stack([rt, torch.full_like(rt, choice)], dim=-1)
        total += torch.trapezoid(trained.log_prob(x, torch.tensor([theta])).exp(), rt)
    assert abs(total - 1) < 1e-3


def test_close_to_the_true_likelihood(trained):
    theta = 2 * torch.rand(2000, 1) - 1
    x = log_normal_choice(theta)
    error = trained.log_prob(x, theta) - true_log_prob(x, theta)
    assert error.mean().abs() < 0.05 and error.std() < 0.15


def test_samples_follow_the_choice_probability(trained):
    """Catches a time drawn given another choice than the one drawn (the flow's context of
    the wrong class), or a time left on the log scale: the samples against the estimator's
    own density, choice by choice (grid integrals), within 4 Monte Carlo sds (measured
    with 100,000 draws at theta = 0.4 and -0.5: within 0.8 sds)."""
    theta, n = torch.tensor([[0.4]]), 20_000
    x = trained(theta).sample((n,))
    assert x.shape == (n, 1, 2) and (x[..., 0] > 0).all()
    assert set(x[..., 1].unique().tolist()) == {0.0, 1.0}
    p = torch.sigmoid(torch.tensor(0.8))  # the learned share is 0.666 against p = 0.690
    assert abs(x[:4000, :, 1].mean() - p) < 4 * math.sqrt(p * (1 - p) / 4000) + 0.02
    step = 0.002
    u = torch.arange(-4.0, 4.0, step)  # log times; q(u, c) = q(e^u, c) e^u
    for choice in (0.0, 1.0):
        grid = torch.stack([u.exp(), torch.full_like(u, choice)], -1)
        with torch.no_grad():
            density = (trained.log_prob(grid, theta[0]) + u).exp() * step
        share = float(density.sum())
        mean = float((density * u).sum()) / share
        sd = math.sqrt(float((density * (u - mean) ** 2).sum()) / share)
        drawn = x[x[..., 1] == choice][:, 0].log()
        assert abs(len(drawn) / n - share) < 4 * math.sqrt(share * (1 - share) / n)
        assert abs(float(drawn.mean()) - mean) < 4 * sd / math.sqrt(len(drawn))
        assert abs(float(drawn.std()) / sd - 1) < 4 / math.sqrt(2 * len(drawn))
        # and near the truth, log t | c ~ N(0.2 + 0.3 c, 0.3^2), up to the learning error
        assert abs(mean - (0.2 + 0.3 * choice)) < 0.05 and abs(sd - 0.3) < 0.05


def test_rejects_non_integer_and_unseen_values(trained):
    with pytest.raises(ValueError, match="must hold integers; got 0.5"):
        trained.log_prob(torch.tensor([1.0, 0.5]), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="outside the range seen"):
        trained.log_prob(torch.tensor([1.0, 2.0]), torch.tensor([0.0]))


def test_rejects_a_value_in_range_that_training_never_produced(tmp_path):
    """Catches a support check by range alone: a choice of 1 between the trained 0 and 2
    has no learned probability and must be refused, also after saving and loading."""
    torch.manual_seed(0)
    theta = torch.rand(400, 1)
    x = torch.stack([theta[:, 0].exp(), 2.0 * torch.bernoulli(theta[:, 0])], -1)  # 0 or 2
    estimator = MNLE(discrete=[1])
    estimator.fit(theta, x, max_epochs=1, progress=False, seed=0)
    estimator.save(tmp_path / "mnle.pt")
    for model in (estimator, MNLE.load(tmp_path / "mnle.pt")):
        model.check_support(torch.tensor([[1.0, 0.0], [1.0, 2.0]]))
        with pytest.raises(ValueError, match=r"holds 1 at index \(1, 1\).*never produced "
                           r"\(they hold \[0, 2\]\)"):  # fmt: skip
            model.log_prob(torch.tensor([[1.0, 2.0], [1.0, 1.0]]), torch.tensor([0.5]))


def test_non_positive_log_scaled_value_has_zero_density(trained):
    log_p = trained.log_prob(torch.tensor([[-1.0, 1.0], [0.0, 0.0], [1.0, 0.0]]), torch.zeros(1))
    assert log_p[:2].eq(-math.inf).all() and log_p[2].isfinite()


def test_support_marks_integer_and_positive_columns(trained):
    x = torch.tensor([[1.0, 1.0], [1.0, 0.5], [-1.0, 0.0], [2.0, -1.0]])
    assert trained.support.check(x).tolist() == [True, False, False, False]
    assert trained.support.event_dim == 1


def test_sample_accepts_double_theta(trained):
    x = trained(torch.zeros(3, 1, dtype=torch.float64)).sample((2,))
    assert x.shape == (2, 3, 2) and x.dtype == torch.get_default_dtype()


def test_save_load_with_chosen_log_columns(tmp_path):
    theta = torch.rand(500, 1)
    x = torch.cat([log_normal_choice(theta), theta + torch.randn(500, 1)], dim=-1)
    estimator = MNLE(discrete=[1], log_transform=[0], transforms=2, hidden_features=(16, 16))
    estimator.fit(theta, x, max_epochs=2, progress=False, seed=0)
    assert estimator.logged == [0] and estimator.continuous == [0, 2]
    estimator.save(tmp_path / "mnle.pt")
    clone = MNLE.load(tmp_path / "mnle.pt")
    assert torch.equal(clone.log_prob(x[:5], theta[:5]), estimator.log_prob(x[:5], theta[:5]))


def test_fit_refuses_non_finite_simulations():
    theta = torch.rand(50, 1)
    x = log_normal_choice(theta)
    x[3, 0] = float("nan")
    with pytest.raises(ValueError, match="1 of 50 simulations hold NaN"):
        MNLE(discrete=[1]).fit(theta, x, progress=False)


def test_num_classes_needs_training():
    with pytest.raises(ValueError, match="has not been trained"):
        MNLE(discrete=[1]).num_classes  # noqa: B018


def test_simulator_distribution_checks_the_discrete_column(trained):
    theta = torch.zeros(1)
    d = SimulatorDistribution(log_normal_choice, theta, trained)
    assert d.support.check(torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match="support"):  # validation is on in the tests
        d.log_prob(torch.tensor([1.0, 0.5]))
    with pyro.validation_enabled(False), pytest.raises(ValueError, match="integers"):
        SimulatorDistribution(log_normal_choice, theta, trained).log_prob(torch.tensor([1.0, 0.5]))


def test_plate_of_trials(trained):
    def model(x_o):
        theta = pyro.sample("theta", dist.Uniform(-1.0, 1.0).expand([1]).to_event(1))
        with pyro.plate("trials", len(x_o)):
            pyro.sample("x", SimulatorDistribution(log_normal_choice, theta, trained), obs=x_o)

    x_o = log_normal_choice(torch.full((20, 1), 0.3))
    trace = pyro.poutine.trace(model).get_trace(x_o)
    trace.compute_log_prob()
    assert trace.nodes["x"]["log_prob"].shape == (20,)
    expected = trained.log_prob(x_o, trace.nodes["theta"]["value"])
    assert torch.allclose(trace.nodes["x"]["log_prob"], expected)


def test_several_discrete_columns():
    torch.manual_seed(1)
    theta = torch.rand(3000, 1)
    a = torch.bernoulli(theta)
    b = torch.randint(0, 3, (3000, 1)).float()
    x = torch.cat([a, theta + 0.1 * torch.randn(3000, 1) + b, b], dim=-1)
    estimator = MNLE(discrete=[0, 2])
    estimator.fit(theta, x, max_epochs=3, progress=False, seed=0)
    assert estimator.num_classes == [2, 3] and estimator.continuous == [1]
    grid = torch.linspace(-3, 6, 20_001)
    total = 0.0
    for i in range(2):
        for j in range(3):
            values = torch.stack([torch.full_like(grid, i), grid, torch.full_like(grid, j)], -1)
            total += torch.trapezoid(estimator.log_prob(values, torch.tensor([0.5])).exp(), grid)
    assert abs(total - 1) < 1e-3
    assert estimator(torch.tensor([0.5])).sample((7,)).shape == (7, 3)


@pytest.mark.parametrize(
    "options, x, message",
    [
        ({"discrete": []}, None, "at least one discrete"),
        ({"discrete": [2]}, torch.ones(50, 2), "within the 2 columns"),
        ({"discrete": [0, 1]}, torch.ones(50, 2), "every column of x is discrete"),
        ({"discrete": [1]}, torch.full((50, 2), 0.5), "non-negative integers"),
        (
            {"discrete": [1], "log_transform": True},
            torch.tensor([[-1.0, 1.0]]).repeat(50, 1),
            "positive values",
        ),
        ({"discrete": [1], "log_transform": [1]}, torch.ones(50, 2), "continuous columns"),
    ],
)
def test_clear_errors(options, x, message):
    with pytest.raises(ValueError, match=message):
        estimator = MNLE(**options)
        estimator.fit(torch.randn(len(x), 1), x, max_epochs=1, progress=False)


def test_needs_a_vector_of_columns():
    with pytest.raises(ValueError, match=r"\(n, L\)"):
        MNLE(discrete=[1]).fit(torch.randn(50, 1), torch.ones(50, 2, 2), progress=False)


# Drift-diffusion model: MNLE against the analytic likelihood (Navarro & Fuss, 2009).


@pytest.fixture(scope="module")
def ddm_likelihood():
    torch.manual_seed(0)
    theta = ddm.prior().sample((DDM_SIMULATIONS,))
    estimator = MNLE(discrete=[1], log_transform=True)
    estimator.fit(theta, ddm.simulate_ddm(theta), batch_size=512, progress=False, seed=0)
    return estimator


@pytest.mark.slow
def test_ddm_log_likelihood_correlates_with_the_analytic_one(ddm_likelihood):
    torch.manual_seed(1)  # held out: other parameters and trials than in training
    theta = ddm.prior().sample((5000,))
    x = ddm.simulate_ddm(theta)
    learned, exact = ddm_likelihood.log_prob(x, theta), ddm.ddm_log_prob(x, theta)
    assert torch.corrcoef(torch.stack([learned, exact]))[0, 1] >= 0.95


def _ddm_model(likelihood, trials):
    def model(x_o=None):
        theta = pyro.sample("theta", ddm.prior())
        with pyro.plate("trials", trials):
            if likelihood is None:
                fn = ddm.DriftDiffusion(*theta.unbind(-1))
            else:
                fn = SimulatorDistribution(ddm.simulate_ddm, theta, likelihood)
            return pyro.sample("x", fn, obs=x_o)

    return model


@pytest.mark.slow
def test_ddm_posterior_matches_the_analytic_posterior(ddm_likelihood):
    trials = 100
    torch.manual_seed(2)
    x_o = ddm.simulate_ddm(torch.tensor([0.8, 1.4, 0.45, 0.5]).expand(trials, 4))
    posteriors = []
    for likelihood in (None, ddm_likelihood):
        pyro.set_rng_seed(0)
        init = init_to_value(values={"theta": torch.tensor([0.0, 1.25, 0.5, 0.25])})
        kernel = NUTS(_ddm_model(likelihood, trials), init_strategy=init)
        mcmc = MCMC(kernel, num_samples=1000, warmup_steps=300, disable_progbar=True)
        mcmc.run(x_o)
        posteriors.append(mcmc.get_samples()["theta"])
    assert c2st(*posteriors) <= 0.65


def test_a_theta_shared_by_trials_gives_the_materialised_answer_at_per_theta_cost(trained):
    """Bug caught: the discrete head run once per trial (cost), or the shared-theta path
    giving other values or gradients than the same theta copied to every trial."""
    theta = torch.tensor([[-0.5], [0.2], [0.9]])  # 3 subjects
    x = log_normal_choice(theta.expand(40, 3, 1).reshape(-1, 1)).reshape(40, 3, 2)
    rows = []
    hook = trained.classifier.register_forward_hook(
        lambda module, args, out: rows.append(args[0].shape[:-1].numel())
    )
    try:
        shared = theta.clone().requires_grad_()
        fast = trained.log_prob(x, shared)  # theta (3, 1) broadcast over 40 trials
        copied = theta.clone().requires_grad_()
        slow = trained.log_prob(x, copied.expand(40, 3, 1).contiguous())
    finally:
        hook.remove()
    assert rows == [3, 40 * 3]  # once per subject on the shared path, per trial otherwise
    assert fast.shape == slow.shape == (40, 3)
    assert torch.allclose(fast, slow, atol=1e-5)
    (grad_fast,) = torch.autograd.grad(fast.sum(), shared)
    (grad_slow,) = torch.autograd.grad(slow.sum(), copied)
    assert torch.allclose(grad_fast, grad_slow, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("flow", ["NSF", "MAF"])
def test_the_flow_conditioned_per_theta_and_choice_equals_one_context_per_trial(flow):
    """Bug caught: the per-(theta, choice) path picking another choice's density, a wrong
    one-hot code order, or gradients lost through the pick."""
    import zuko

    torch.manual_seed(1)
    theta = 2 * torch.rand(2000, 2) - 1
    x = log_normal_choice(theta[:, :1])
    x = torch.cat(
        [x[:, :1], x[:, 1:] + torch.bernoulli(0.5 * torch.ones(2000, 1))], -1
    )  # 3 choices
    estimator = MNLE(discrete=[1], log_transform=True, flow=getattr(zuko.flows, flow))
    estimator.fit(theta, x, max_epochs=2, progress=False, seed=0)
    subjects = 2 * torch.rand(4, 2) - 1
    x_o = x[:200].reshape(50, 4, 2)
    shared = subjects.clone().requires_grad_()
    fast = estimator.log_prob(x_o, shared)  # theta (4, 2) broadcast over 50 trials
    copied = subjects.clone().requires_grad_()
    slow = estimator.log_prob(x_o, copied.expand(50, 4, 2).contiguous())
    assert torch.allclose(fast, slow, atol=1e-5)
    (grad_fast,) = torch.autograd.grad(fast.sum(), shared)
    (grad_slow,) = torch.autograd.grad(slow.sum(), copied)
    assert torch.allclose(grad_fast, grad_slow, rtol=1e-4, atol=1e-4)


def test_options_saved_under_their_former_names_still_load():
    # files written before the renames hold "build", "head_features" and "head_blocks"
    old = {"discrete": [1], "log_transform": False, "build": "MAF", "head_features": 16,
           "head_blocks": 1, "activation": "ReLU", "z_score": True}  # fmt: skip
    estimator = MNLE.from_config(old)
    assert estimator.flow_class is zuko.flows.MAF and estimator.activation is torch.nn.ReLU
    assert (estimator.head_hidden_features, estimator.head_num_blocks) == (16, 1)
    assert MNLE.from_config(estimator.config()).config() == estimator.config()


@pytest.mark.parametrize("flow", ["NSF", "MAF", "GF"])
def test_transforms_evaluated_per_trial_by_row_equal_zuko_at_one_context_per_trial(flow):
    """Bug caught: a trial given the spline knots of another row or bin, the identity
    outside the spline's domain lost, gradients not summed back into the shared rows, or
    a flow of other transforms (GF) not falling back to the general evaluation."""
    torch.manual_seed(3)
    theta = 2 * torch.rand(2000, 2) - 1
    x = log_normal_choice(theta[:, :1])
    estimator = MNLE(discrete=[1], flow=getattr(zuko.flows, flow))  # no log transform
    estimator.fit(theta, x, max_epochs=2, progress=False, seed=0)
    x_o = x[:240].reshape(60, 4, 2).clone()
    loc, scale = estimator.x_loc[0], estimator.x_scale[0]
    x_o[0, :, 0], x_o[1, :, 0] = loc + 8 * scale, loc - 8 * scale  # outside [-5, 5] standardised
    subjects = 2 * torch.rand(4, 2) - 1
    shared = subjects.clone().requires_grad_()
    fast = estimator.log_prob(x_o, shared)  # theta (4, 2) broadcast over 60 trials
    copied = subjects.clone().requires_grad_()
    slow = estimator.log_prob(x_o, copied.expand(60, 4, 2).contiguous())
    assert torch.isfinite(fast).all()
    assert torch.allclose(fast, slow, rtol=1e-5, atol=1e-4)
    # a theta broadcast before the call is the same stride-0 view
    assert torch.equal(estimator.log_prob(x_o, shared.expand(60, 4, 2)), fast)
    (grad_fast,) = torch.autograd.grad(fast.sum(), shared)
    (grad_slow,) = torch.autograd.grad(slow.sum(), copied)
    assert torch.allclose(grad_fast, grad_slow, rtol=1e-4, atol=1e-3)
    x_t, theta_z = estimator._prepare(x_o, subjects)
    row = torch.arange(4).expand(60, 4) * 2 + x_t[..., 1].round().long()
    gathered = estimator._log_r_gathered(x_t[..., :1], theta_z[:1], row)
    assert (gathered is None) == (flow == "GF")
