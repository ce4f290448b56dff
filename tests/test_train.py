import pyro
import pyro.distributions as dist
import pytest
import simulators
import torch
import zuko
from models import Counter, hierarchical

from pyro_sbi import NLE, SimulatorDistribution, train
from pyro_sbi.simulation import SimulationError

FAST = {"max_epochs": 2}


@pytest.mark.parametrize("num_simulations", [2, 7, 1000])
def test_simulates_each_theta_once_in_a_plated_model(num_simulations):
    simulator = Counter()
    reports = train(
        hierarchical(simulator, NLE(zuko.flows.MAF)),
        num_simulations=num_simulations,
        progress=False,
        fit_options=FAST,
    )
    theta = simulator.theta
    assert len(simulator.calls) == 1 and len(theta) == num_simulations
    assert len(torch.unique(theta, dim=0)) == num_simulations  # no theta repeated per trial
    assert torch.equal(reports["x"].theta, theta)
    assert reports["x"].estimator.trained


def test_theta_follows_the_model_prior():
    simulator = Counter()
    train(
        hierarchical(simulator, NLE(zuko.flows.MAF)),
        num_simulations=4000,
        progress=False,
        fit_options=FAST,
        seed=1,
    )
    theta = simulator.theta
    # marginally theta ~ N(0, 1 + 0.5^2) in each coordinate
    assert torch.allclose(theta.mean(0), torch.zeros(2), atol=0.1)
    assert torch.allclose(theta.std(0), torch.full((2,), 1.25**0.5), rtol=0.08)


def test_observations_are_ignored_and_cost_nothing():
    simulator = Counter()
    train(
        hierarchical(simulator, NLE(zuko.flows.MAF)),
        torch.zeros(30, 8, 2),
        num_simulations=50,
        progress=False,
        fit_options=FAST,
    )
    assert len(simulator.theta) == 50


def test_model_that_cannot_be_vectorised_is_run_repeatedly():
    simulator = Counter()
    likelihood = NLE(zuko.flows.MAF)

    def model():
        scale = pyro.sample("scale", dist.LogNormal(0.0, 0.3))
        theta = pyro.sample("theta", dist.Normal(0.0, float(scale)).expand([2]).to_event(1))
        pyro.sample("x", SimulatorDistribution(simulator, theta, likelihood))

    train(model, num_simulations=40, progress=False, fit_options=FAST)
    assert len(simulator.theta) == 40 and len(torch.unique(simulator.theta, dim=0)) == 40


def test_shared_estimator_is_trained_once_on_both_sites(monkeypatch):
    likelihood = NLE(zuko.flows.MAF)
    a, b = Counter(), Counter()
    fits = []
    original = NLE.fit
    monkeypatch.setattr(
        NLE, "fit", lambda self, *args, **kw: fits.append(1) or original(self, *args, **kw)
    )

    def model():
        theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("xa", SimulatorDistribution(a, theta, likelihood))
        pyro.sample("xb", SimulatorDistribution(b, theta + 1.0, likelihood))

    reports = train(model, num_simulations=101, progress=False, fit_options=FAST)
    assert len(fits) == 1 and reports["xa"] is reports["xb"]
    assert len(a.theta) + len(b.theta) == 101 and len(reports["xa"].theta) == 101


def test_separate_estimators_get_the_budget_each():
    a, b = Counter(), Counter()

    def model():
        theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("xa", SimulatorDistribution(a, theta, NLE(zuko.flows.MAF)))
        pyro.sample("xb", SimulatorDistribution(b, theta, NLE(zuko.flows.MAF)))

    reports = train(model, num_simulations=30, progress=False, fit_options=FAST)
    assert len(a.theta) == len(b.theta) == 30 and reports["xa"] is not reports["xb"]


def test_proposal_replaces_the_prior():
    simulator = Counter()
    proposal = dist.Uniform(torch.full((2,), 10.0), 11.0).to_event(1)
    train(
        hierarchical(simulator, NLE(zuko.flows.MAF)),
        num_simulations=64,
        proposal=proposal,
        progress=False,
        fit_options=FAST,
    )
    assert len(simulator.theta) == 64 and (simulator.theta >= 10).all()


def test_proposal_of_the_wrong_dimension_is_refused():
    proposal = dist.Uniform(torch.zeros(3), 1.0).to_event(1)
    with pytest.raises(ValueError, match="site 'x'.*3.*2 parameters"):
        train(
            hierarchical(Counter(), NLE()), num_simulations=10, proposal=proposal, progress=False
        )


def test_non_finite_simulations_are_left_out():
    simulator = Counter(fail=lambda theta: theta[:, 0] > 1.0)
    with pytest.warns(UserWarning, match=r"simulations failed \(\d+ nonfinite\)"):
        reports = train(
            hierarchical(simulator, NLE(zuko.flows.MAF)),
            num_simulations=500,
            progress=False,
            fit_options=FAST,
        )
    report = reports["x"]
    expected = int((simulator.theta[:, 0] > 1.0).sum())
    assert report.num_failed == expected > 0
    assert len(report.x) == 500 - expected and torch.isfinite(report.x).all()
    assert report.validity is not None and report.estimator.validity is report.validity


def test_failures_of_every_kind_are_excluded_from_training():
    likelihood = NLE(zuko.flows.MAF)

    def model(x_o=None):
        theta = pyro.sample("theta", dist.Uniform(-1.0, 1.0).expand([1]).to_event(1))
        with pyro.plate("trials", 4):
            pyro.sample(
                "x", SimulatorDistribution(simulators.troubled, theta, likelihood, batched=False),
                obs=x_o,
            )  # fmt: skip

    with pytest.warns(
        UserWarning,
        match=r"\d+ of 120 simulations failed \(\d+ nonfinite, \d+ error, \d+ timeout\)",
    ):
        report = train(
            model, num_simulations=120, timeout=0.05, seed=3, max_failure_fraction=0.7,
            progress=False, fit_options=FAST, validity=False,
        )["x"]  # fmt: skip
    (record,) = report.simulations
    t = record.theta[:, 0]
    assert record.counts() == {
        "nonfinite": int((t < -0.625).sum()),
        "error": int((t > 0.625).sum()),
        "timeout": int((t.abs() < 0.125).sum()),
    }
    assert torch.equal(report.theta, record.theta[(t.abs() <= 0.625) & (t.abs() >= 0.125)])
    assert report.num_failed == record.num_failed and likelihood.validity is None
    with pytest.raises(SimulationError, match="max_failure_fraction=0.3"):
        train(model, num_simulations=120, timeout=0.05, max_failure_fraction=0.3, progress=False)


def test_a_store_is_reused_across_calls(tmp_path):
    simulator = Counter()
    model = hierarchical(simulator, NLE(zuko.flows.MAF))
    first = train(
        model, num_simulations=100, seed=0, store=tmp_path, progress=False, fit_options=FAST
    )
    again = train(
        model, num_simulations=100, seed=1, store=tmp_path, progress=False, fit_options=FAST
    )
    assert simulator.count == 100  # nothing simulated the second time
    assert torch.equal(first["x"].theta, again["x"].theta) and torch.equal(
        first["x"].x, again["x"].x
    )
    more = train(model, num_simulations=150, store=tmp_path, progress=False, fit_options=FAST)
    assert simulator.count == 150 and torch.equal(more["x"].theta[:100], first["x"].theta)
    with pytest.raises(ValueError, match="made with the simulator"):
        train(
            hierarchical(simulators.noisy, NLE()),
            num_simulations=10,
            store=tmp_path,
            progress=False,
        )


def test_a_store_drawn_from_the_prior_is_not_reused_for_a_proposal(tmp_path):
    model = hierarchical(Counter(), NLE(zuko.flows.MAF))
    train(model, num_simulations=20, store=tmp_path / "a", progress=False, fit_options=FAST)
    proposal = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    with pytest.raises(ValueError, match="drawn from the prior, not from another distribution"):
        train(model, num_simulations=20, proposal=proposal, store=tmp_path / "a", progress=False)
    options = dict(num_simulations=20, store=tmp_path / "b", progress=False, fit_options=FAST)
    train(model, proposal=proposal, **options)
    train(model, proposal=dist.Normal(torch.zeros(2), 1.0).to_event(1), **options)  # the same
    moved = dist.Normal(torch.full((2,), 5.0), 1.0).to_event(1)
    with pytest.raises(ValueError, match="drawn from another distribution"):
        train(model, proposal=moved, **options)


def test_float64_proposal_draws_are_reused_exactly(tmp_path):
    proposal = dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1)
    model = hierarchical(Counter(), NLE(zuko.flows.MAF))
    options = dict(num_simulations=30, proposal=proposal, store=tmp_path, progress=False)
    first = train(model, **options, fit_options=FAST)["x"]
    again = train(model, **options, fit_options=FAST)["x"]
    assert torch.equal(first.theta, again.theta)


def test_model_without_simulator_site_is_refused():
    def model():
        pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="no SimulatorDistribution"):
        train(model, num_simulations=10)


def test_seed_makes_training_reproducible():
    def run():
        likelihood = NLE(zuko.flows.MAF)
        train(
            hierarchical(Counter(), likelihood),
            num_simulations=200,
            seed=3,
            progress=False,
            fit_options=FAST,
        )
        return likelihood.log_prob(torch.zeros(2), torch.zeros(2))

    assert torch.equal(run(), run())


def narrow_model(x_o=None, likelihood=None):
    """theta ~ N(0, 2^2 I_2); 20 trials x ~ N(theta, 0.3^2): a narrow posterior."""
    theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 2.0).to_event(1))
    with pyro.plate("trials", 20):
        pyro.sample("x", SimulatorDistribution(simulators.shift, theta, likelihood), obs=x_o)


def test_sequential_rounds_draw_later_rounds_from_the_posterior():
    likelihood = NLE(zuko.flows.MAF, transforms=2, hidden_features=[32, 32])
    x_o = torch.tensor([1.5, -1.0]) + 0.3 * torch.randn(
        20, 2, generator=torch.Generator().manual_seed(0)
    )
    reports = train(
        narrow_model, x_o, likelihood, num_simulations=1200, rounds=3, seed=0, progress=False,
        fit_options={"max_epochs": 300}, sampler_options={"num_chains": 50, "warmup_steps": 20},
    )  # fmt: skip
    report = reports["x"]
    assert report.theta.shape == (1200, 2)  # all rounds pooled
    assert [len(record.theta) for record in report.simulations] == [400, 400, 400]
    first, last = report.simulations[0].theta, report.simulations[2].theta
    assert first.std(0).min() > 1.5  # the prior, sd 2
    # the posterior: mean x_o.mean(0), sd 0.3 / sqrt(20) = 0.067 (as learned from 800
    # simulations, so with some slack)
    assert (last.mean(0) - x_o.mean(0)).abs().max() < 0.1
    assert last.std(0).max() < 0.12


def test_sequential_rounds_draw_each_subject_from_its_own_posterior():
    likelihood = NLE(zuko.flows.MAF, transforms=2, hidden_features=[32, 32])

    def model(x_o, likelihood):
        mu = pyro.sample("mu", dist.Normal(torch.zeros(2), 3.0).to_event(1))
        with pyro.plate("subjects", 2):
            theta = pyro.sample("theta", dist.Normal(mu, 1.0).to_event(1))
            with pyro.plate("trials", 5, dim=-2):
                pyro.sample("x", SimulatorDistribution(simulators.shift, theta, likelihood),
                            obs=x_o)  # fmt: skip

    centres = torch.tensor([[2.0, 2.0], [-2.0, -2.0]])
    x_o = centres + 0.3 * torch.randn(5, 2, 2, generator=torch.Generator().manual_seed(1))
    reports = train(
        model, x_o, likelihood, num_simulations=800, rounds=2, seed=0, progress=False,
        fit_options={"max_epochs": 300}, sampler_options={"num_chains": 40, "warmup_steps": 20},
    )  # fmt: skip
    last = reports["x"].simulations[1].theta
    assert last.shape == (400, 2)
    near = torch.cdist(last, centres).argmin(-1)
    assert 0.35 < float(near.float().mean()) < 0.65  # both subjects, equally
    distance = torch.cdist(last, centres).min(-1).values  # the subjects are 5.7 apart
    assert distance.median() < 0.6 and (distance < 2.5).all()  # posterior sd 0.13


def test_sequential_rounds_need_observations_and_no_store(tmp_path):
    with pytest.raises(ValueError, match="no simulator site is observed"):
        train(narrow_model, None, NLE(), num_simulations=100, rounds=2, progress=False)
    with pytest.raises(ValueError, match="store"):
        train(narrow_model, torch.zeros(20, 2), NLE(), num_simulations=100, rounds=2,
              store=tmp_path / "s", progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="rounds"):
        train(narrow_model, torch.zeros(20, 2), NLE(), num_simulations=100, rounds=0)


def test_sequential_rounds_with_a_model_that_cannot_be_vectorised():
    likelihood = NLE(zuko.flows.MAF, transforms=1, hidden_features=[16])

    def fixed(x_o, likelihood):  # a fixed reshape: no extra plate possible
        theta = pyro.sample("theta", dist.Normal(0.0, 2.0).expand([2]).to_event(1)).reshape(2)
        with pyro.plate("trials", 5):
            pyro.sample("x", SimulatorDistribution(simulators.shift, theta, likelihood), obs=x_o)

    x_o = torch.full((5, 2), 1.0)
    with pytest.warns(UserWarning, match="once per point"):
        reports = train(
            fixed, x_o, likelihood, num_simulations=120, rounds=2, seed=0, progress=False,
            fit_options={"max_epochs": 5},
            sampler_options={"num_chains": 4, "warmup_steps": 2, "num_candidates": 20},
        )  # fmt: skip
    assert [len(record.theta) for record in reports["x"].simulations] == [60, 60]


def test_num_simulations_written_as_a_float_is_taken_as_that_integer():
    simulator = Counter()
    reports = train(
        hierarchical(simulator, NLE(zuko.flows.MAF)),
        num_simulations=2e2,
        progress=False,
        fit_options=FAST,
    )
    assert simulator.count == 200 and len(reports["x"].theta) == 200


@pytest.mark.parametrize(
    "argument, value, error, message",
    [
        ("num_simulations", 1.5, ValueError, r"num_simulations must be a whole number >= 2.*1\.5"),
        ("num_simulations", 0, ValueError, r"num_simulations must be a whole number >= 2; got 0"),
        ("num_simulations", -10, ValueError, r"num_simulations .* >= 2; got -10"),
        ("num_simulations", float("inf"), ValueError, r"num_simulations .* got inf"),
        ("num_simulations", "1e4", TypeError, r"num_simulations .* got '1e4' of type str"),
        ("num_simulations", True, TypeError, r"num_simulations .* got True of type bool"),
        ("simulation_batch_size", 2.5, ValueError, r"simulation_batch_size .* >= 1.*2\.5"),
        ("rounds", 0, ValueError, r"rounds must be a whole number >= 1; got 0"),
    ],
)
def test_counts_that_are_not_whole_numbers_are_refused_before_simulating(
    argument, value, error, message
):
    simulator = Counter()
    options = {"num_simulations": 100, argument: value}
    with pytest.raises(error, match=rf"train: {message}"):
        train(hierarchical(simulator, NLE()), progress=False, fit_options=FAST, **options)
    assert simulator.count == 0


def test_unknown_fit_options_are_refused_before_simulating():
    simulator = Counter()
    with pytest.raises(
        TypeError,
        match=r"unknown fit_options key 'max_epoch' \(did you mean 'max_epochs'\?\); "
        r"the options of pyro_sbi.fitting.fit are .*batch_size.*max_epochs.*seed",
    ):
        train(
            hierarchical(simulator, NLE()),
            num_simulations=100,
            progress=False,
            fit_options={"max_epoch": 2},
        )
    assert simulator.count == 0


def test_fit_options_are_read_from_the_signature_of_fit(monkeypatch):
    import importlib
    import inspect

    module = importlib.import_module("pyro_sbi.fitting")
    real = module.fit
    seen = {}

    def fit(estimator, theta, x, *, new_option=1, **options):
        seen["new_option"] = new_option
        return real(estimator, theta, x, **options)

    signature = inspect.signature(real)
    extra = inspect.Parameter("new_option", inspect.Parameter.KEYWORD_ONLY, default=1)
    fit.__signature__ = signature.replace(parameters=[*signature.parameters.values(), extra])
    monkeypatch.setattr(module, "fit", fit)
    train(
        hierarchical(Counter(), NLE(zuko.flows.MAF)),
        num_simulations=50,
        progress=False,
        fit_options={"new_option": 2, **FAST},
    )
    assert seen == {"new_option": 2}


def test_report_repr_is_one_short_line_without_tensors():
    reports = train(
        hierarchical(Counter(), NLE(zuko.flows.MAF)),
        num_simulations=300,
        progress=False,
        fit_options=FAST,
    )
    text = repr(reports)
    assert "tensor" not in text and "\n" not in text and len(text) < 300
    report = reports["x"]
    assert repr(report).startswith("SiteReport(sites=['x'], estimator=NLE, num_simulations=300")
    assert "num_failed=0, epochs=2, best_validation_loss=" in repr(report)
    assert "simulation_seconds=" in repr(report) and "training_seconds=" in repr(report)
