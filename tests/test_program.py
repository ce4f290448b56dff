from concurrent.futures import ProcessPoolExecutor

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_sbi import NLE, NRE, PyroSimulator, SimulatorDistribution, simulate, train
from pyro_sbi.tasks import state_space


def latent_program(theta):
    """z ~ N(theta_0, 1), x ~ N(theta_1 z, 0.5): a latent under a reparameterised site."""
    with pyro.plate("rows", len(theta)):
        z = pyro.sample("z", dist.Normal(theta[:, 0], 1.0))
        return pyro.sample("x", dist.Normal(theta[:, 1] * z, 0.5)).unsqueeze(-1)


def discrete_program(theta):
    """A Bernoulli latent choosing the mean of x: a site with no reparameterisation."""
    with pyro.plate("rows", len(theta)):
        c = pyro.sample("c", dist.Bernoulli(logits=theta[:, 0]))
        return pyro.sample("x", dist.Normal(c * theta[:, 1], 1.0)).unsqueeze(-1)


def test_joint_score_matches_the_hand_derived_gradient():
    """t = (z - theta_0, (x - theta_1 z) z / 0.25) at the values drawn.

    Catches the path derivative: differentiating log p through the rsample'd value of z
    (values not detached) gives 0 for the first coordinate instead of z - theta_0.
    """
    theta = torch.tensor([[0.3, 1.2], [-1.0, 0.5], [2.0, -0.7]])
    pyro.set_rng_seed(1)
    x, log_p, score = PyroSimulator(latent_program).joint(theta)
    pyro.set_rng_seed(1)
    trace = poutine.trace(latent_program).get_trace(theta)
    z, drawn = trace.nodes["z"]["value"].detach(), trace.nodes["x"]["value"].detach()
    expected = torch.stack([z - theta[:, 0], (drawn - theta[:, 1] * z) * z / 0.25], -1)
    assert torch.equal(x[:, 0], drawn)
    torch.testing.assert_close(score, expected)
    exact = dist.Normal(theta[:, 0], 1.0).log_prob(z) + dist.Normal(theta[:, 1] * z, 0.5).log_prob(
        drawn
    )
    torch.testing.assert_close(log_p, exact)


def test_a_discrete_site_contributes_the_score_of_its_probability():
    """d/d logit of log Bernoulli(c | logit) = c - sigmoid(logit): discrete sites need no rsample.

    Catches a score that leaves out sites without a reparameterised sampler.
    """
    theta = torch.tensor([[0.4, 2.0]]).expand(6, 2)
    pyro.set_rng_seed(3)
    x, _, score = PyroSimulator(discrete_program).joint(theta)
    pyro.set_rng_seed(3)
    trace = poutine.trace(discrete_program).get_trace(theta)
    c = trace.nodes["c"]["value"]
    expected = torch.stack([c - torch.sigmoid(theta[:, 0]), (x[:, 0] - c * 2.0) * c], -1)
    torch.testing.assert_close(score, expected)


def test_joint_score_is_an_unbiased_target_for_the_likelihoods_score():
    """E[(t - s(x)) s(x)] = 0 and E[t] = 0, with s the exact score of the state-space model.

    The output is a stack of observation sites (a deterministic function of them). Within
    four standard errors on 20,000 paths. Catches the path derivative (values not
    detached), which biases t.
    """
    torch.manual_seed(0)
    theta = torch.tensor([[0.6, 0.8]]).expand(20_000, 2).contiguous()
    x, _, t = state_space.simulator.joint(theta)
    theta64 = theta.double().requires_grad_(True)
    (s,) = torch.autograd.grad(state_space.log_likelihood(x.double(), theta64).sum(), theta64)
    for values in ((t.double() - s) * s, t.double()):
        z = values.mean(0) / (values.std(0) / len(values) ** 0.5)
        assert z.abs().max() < 4, z


def test_calling_it_runs_the_program_and_hides_its_sites():
    """In a model, the program's sites never reach the model's trace."""
    simulator = PyroSimulator(latent_program)

    def model():
        theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        return pyro.sample("x", SimulatorDistribution(simulator, theta, x_shape=(1,)))

    trace = poutine.trace(model).get_trace()
    assert set(trace.stochastic_nodes) == {"theta", "x"}
    assert trace.nodes["x"]["value"].shape == (1,)


def test_with_score_simulates_the_same_x_as_the_program(tmp_path):
    """Packed rows [x, log p, t] through simulate and a store: the same x, resumable.

    Catches a joint pass that draws other values than a plain call with the same seed,
    and a store that would simulate stored rows again.
    """
    simulator = PyroSimulator(latent_program)
    theta = torch.rand(40, 2)
    plain = simulate(simulator, theta, seed=0, batch_size=8, progress=False)
    store = tmp_path / "sims.zarr"
    simulate(simulator.with_score(), theta[:24], seed=0, batch_size=8, store=store,
             progress=False)  # fmt: skip
    calls = []

    def counted(rows):
        calls.append(len(rows))
        return simulator.with_score()(rows)

    counted.__qualname__ = simulator.with_score().__qualname__
    counted.__module__ = simulator.with_score().__module__
    resumed = simulate(counted, theta, seed=0, batch_size=8, store=store, progress=False)
    assert sum(calls) == 16
    x, log_p, score = PyroSimulator.unpack(resumed.x, 2)
    assert torch.equal(x, plain.x)
    again = simulate(simulator.with_score(), theta, seed=0, batch_size=8, progress=False)
    assert torch.equal(again.x, resumed.x)
    assert log_p.shape == (40,) and score.shape == (40, 2)


def test_with_score_runs_on_a_process_pool_as_in_process():
    """The packed simulator pickles (a program at module level) and is seeded per batch."""
    simulator = PyroSimulator(latent_program).with_score()
    theta = torch.rand(32, 2)
    here = simulate(simulator, theta, seed=5, batch_size=8, progress=False)
    with ProcessPoolExecutor(2) as pool:
        there = simulate(simulator, theta, seed=5, batch_size=8, executor=pool, progress=False)
    assert torch.equal(here.x, there.x) and here.num_failed == 0


def test_an_output_computed_from_theta_is_refused():
    def program(theta):
        with pyro.plate("rows", len(theta)):
            z = pyro.sample("z", dist.Normal(theta[:, 0], 1.0))
        return (z + theta[:, 1]).unsqueeze(-1)

    with pytest.raises(ValueError, match="depends on theta other than through"):
        PyroSimulator(program).joint(torch.zeros(3, 2))


def test_a_site_shared_by_the_rows_is_named():
    def program(theta):
        shared = pyro.sample("shared", dist.Normal(0.0, 1.0))
        with pyro.plate("rows", len(theta)):
            return pyro.sample("x", dist.Normal(theta[:, 0] + shared, 1.0)).unsqueeze(-1)

    with pytest.raises(ValueError, match="site 'shared' has a log-density of shape"):
        PyroSimulator(program).joint(torch.zeros(3, 1))


def test_a_log_density_without_theta_is_reported():
    def program(theta):
        mean = torch.as_tensor(theta.detach().numpy())
        with pyro.plate("rows", len(theta)):
            return pyro.sample("x", dist.Normal(mean[:, 0], 1.0)).unsqueeze(-1)

    with pytest.raises(
        ValueError, match=r"does not depend on theta: none of its sample sites \['x'\]"
    ):
        PyroSimulator(program).joint(torch.zeros(3, 1))


def test_train_with_augment_score_fits_on_the_joint_scores():
    likelihood = NLE()
    simulator = PyroSimulator(latent_program)

    def model():
        theta = pyro.sample("theta", dist.Uniform(torch.tensor([-1.0, 0.5]), 1.5).to_event(1))
        return pyro.sample("x", SimulatorDistribution(simulator, theta, likelihood))

    reports = train(model, num_simulations=300, seed=0, progress=False, augment="score",
                    fit_options={"max_epochs": 2, "score_weight": 0.5})  # fmt: skip
    report = reports["x"]
    assert report.x.shape == (300, 1) and report.score.shape == (300, 2)
    assert likelihood.trained and likelihood.x_shape == (1,)


def test_train_with_augment_score_names_a_site_without_a_program():
    def model():
        theta = pyro.sample("theta", dist.Normal(torch.zeros(1), 1.0).to_event(1))
        return pyro.sample("y", SimulatorDistribution(lambda t: t, theta, NLE()))

    with pytest.raises(
        ValueError, match="site 'y' has the simulator <lambda>, not a PyroSimulator"
    ):
        train(model, num_simulations=10, progress=False, augment="score")


def test_train_refuses_a_score_in_fit_options():
    def model():
        theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        return pyro.sample("x", SimulatorDistribution(PyroSimulator(latent_program), theta, NLE()))

    with pytest.raises(TypeError, match='fit_options cannot hold "score"'):
        train(model, num_simulations=10, progress=False, fit_options={"score": torch.zeros(10, 2)})


def failing_program(theta):
    """x ~ N(theta_0, 1), and no output (NaN) where theta_1 > 0.7: failed simulations."""
    with pyro.plate("rows", len(theta)):
        x = pyro.sample("x", dist.Normal(theta[:, 0], 1.0))
    return torch.where(theta[:, 1] > 0.7, torch.nan, x).unsqueeze(-1)


def test_train_with_augment_score_and_failures_learns_the_validity_without_score_options():
    """The validity classifier is fitted with the score term's options left out.

    Catches passing normalize_score / validate_score on to the classifier's fit, which
    has no scores and refuses them.
    """
    likelihood = NLE()

    def model():
        theta = pyro.sample("theta", dist.Uniform(torch.zeros(2), 1.0).to_event(1))
        return pyro.sample("x", SimulatorDistribution(PyroSimulator(failing_program), theta,
                                                      likelihood))  # fmt: skip

    options = {"max_epochs": 2, "normalize_score": False, "validate_score": True}
    with pytest.warns(UserWarning, match="simulations failed"):
        reports = train(model, num_simulations=200, seed=0, progress=False, augment="score",
                        fit_options=options)  # fmt: skip
    assert reports["x"].num_failed > 0 and likelihood.validity is not None


def mixed_program(theta):
    """z ~ N(theta_0, theta_1), c ~ Bernoulli(sigmoid(theta_0)), x ~ N(z + c, 0.5); returns all."""
    with pyro.plate("rows", len(theta)):
        z = pyro.sample("z", dist.Normal(theta[:, 0], theta[:, 1]))
        c = pyro.sample("c", dist.Bernoulli(logits=theta[:, 0]))
        x = pyro.sample("x", dist.Normal(z + c, 0.5))
        return torch.stack([z, c, x], -1)


def test_joint_ratio_matches_the_hand_computation():
    """log r = log p(z, c, x | theta_1) - log p(z, c, x | theta_0) at the values drawn at theta_0.

    The observation site does not involve theta and cancels. Catches the ratio inverted
    (theta_0 over theta_1), and a path re-simulated at theta_1 instead of replayed (then
    the values are not those returned, and the hand computation disagrees).
    """
    torch.manual_seed(0)
    theta0 = torch.tensor([[0.0, 1.0], [1.0, 0.5], [-0.5, 2.0]])
    theta1 = torch.tensor([[0.3, 0.8], [0.0, 1.5], [-0.5, 2.0]])
    x, log_r = PyroSimulator(mixed_program).joint_ratio(theta0, theta1)
    z, c = x[:, 0], x[:, 1]

    def hand(theta):
        return dist.Normal(theta[:, 0], theta[:, 1]).log_prob(z) + dist.Bernoulli(
            logits=theta[:, 0]
        ).log_prob(c)

    assert log_r.shape == (3,)
    assert torch.allclose(log_r, hand(theta1) - hand(theta0), atol=1e-5)
    assert abs(float(log_r[2])) < 1e-5  # the same point: the same density
    assert not torch.allclose(log_r[:2], torch.zeros(2), atol=1e-2)


def hidden_mean(theta):
    """z ~ N(theta_0, theta_1), x ~ N(z, 0.5): x ~ N(theta_0, sqrt(theta_1^2 + 0.25))."""
    with pyro.plate("rows", len(theta)):
        z = pyro.sample("z", dist.Normal(theta[:, 0], theta[:, 1]))
        return pyro.sample("x", dist.Normal(z, 0.5)).unsqueeze(-1)


def test_joint_ratio_is_unbiased_for_the_likelihood_ratio():
    """E[r f(x)] over runs at theta_0 is E[f(x)] at theta_1, for f the indicators of bins.

    Since E[r | x, theta_0] = p(x | theta_1) / p(x | theta_0), reweighting runs at theta_0
    by their joint ratio gives the probabilities of x at theta_1; checked on six bins,
    against the closed form, within four standard errors (of about 0.002). Catches the
    ratio inverted and the path re-simulated at theta_1 (both off by over 20 standard
    errors in some bin).
    """
    torch.manual_seed(1)
    n = 100_000
    theta0, theta1 = torch.tensor([0.0, 1.0]), torch.tensor([0.4, 0.8])
    x, log_r = PyroSimulator(hidden_mean).joint_ratio(theta0.expand(n, 2), theta1.expand(n, 2))
    r = log_r.double().exp()
    edges = torch.tensor([-torch.inf, -1.0, -0.3, 0.3, 0.8, 1.5, torch.inf], dtype=torch.double)
    marginal = dist.Normal(theta1[0].double(), (theta1[1].double() ** 2 + 0.25).sqrt())
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = ((x[:, 0] > low) & (x[:, 0] <= high)).double()
        weighted = r * inside
        exact = marginal.cdf(high) - marginal.cdf(low)
        error = weighted.std() / n**0.5
        assert abs(float(weighted.mean() - exact)) < 4 * float(error), (low, high)


def test_joint_ratio_refuses_what_it_cannot_replay():
    """Shapes that differ, and a program whose sites depend on theta, are named."""
    simulator = PyroSimulator(hidden_mean)
    with pytest.raises(ValueError, match=r"same shape \(n, D\); got \(3, 2\) and \(2, 2\)"):
        simulator.joint_ratio(torch.zeros(3, 2), torch.zeros(2, 2))

    def branching(theta):
        with pyro.plate("rows", len(theta)):
            if bool((theta[:, 0] > 0).all()):
                pyro.sample("extra", dist.Normal(theta[:, 0], 1.0))
            return pyro.sample("x", dist.Normal(theta[:, 0], 1.0)).unsqueeze(-1)

    with pytest.raises(ValueError, match=r"draws the sites \['extra'\]"):
        PyroSimulator(branching).joint_ratio(-torch.ones(2, 1), torch.ones(2, 1))

    def shared(theta):
        pyro.sample("g", dist.Normal(theta[0, 0], 1.0))
        with pyro.plate("rows", len(theta)):
            return pyro.sample("x", dist.Normal(theta[:, 0], 1.0)).unsqueeze(-1)

    with pytest.raises(ValueError, match="site 'g' has a log-density of shape"):
        PyroSimulator(shared).joint_ratio(torch.zeros(2, 1), torch.ones(2, 1))


def test_with_ratio_pairs_each_row_with_another_and_packs_its_joint_ratio():
    """Rows [x, theta_alt, sigmoid(log r)]: theta_alt another row's theta, log r by hand.

    Over 600 batches of four rows each other row is the partner a third of the time
    (200 of 600, sd 11.5; within 5 sd), so the pairs are as likely either way round.
    Catches a row paired with itself, a fixed partner (theta.roll), and a ratio packed
    at the wrong point (the hand computation disagrees).
    """
    torch.manual_seed(0)
    theta = torch.tensor([[0.0, 1.0], [1.0, 0.5], [-0.5, 2.0], [0.3, 0.8]])
    simulator = PyroSimulator(mixed_program)
    rows = simulator.with_ratio()(theta)
    assert rows.shape == (4, 3 + 2 + 1)
    x, theta_alt, log_r = PyroSimulator.unpack_ratio(rows, 2)
    partner = (theta_alt[:, None] == theta[None]).all(-1).float().argmax(-1)
    assert sorted(partner.tolist()) == [0, 1, 2, 3] and not bool(
        (partner == torch.arange(4)).any()
    )
    z, c = x[:, 0], x[:, 1]

    def hand(theta):
        normal = dist.Normal(theta[:, 0], theta[:, 1]).log_prob(z)
        return normal + dist.Bernoulli(logits=theta[:, 0]).log_prob(c)

    assert torch.allclose(log_r, hand(theta_alt) - hand(theta), atol=1e-4)
    counts = torch.zeros(4)
    for _ in range(600):
        _, theta_alt, _ = PyroSimulator.unpack_ratio(simulator.with_ratio()(theta), 2)
        counts[(theta_alt[0] == theta).all(-1).float().argmax()] += 1
    assert counts[0] == 0 and bool(((counts[1:] - 200).abs() < 58).all()), counts
    single = PyroSimulator.unpack_ratio(simulator.with_ratio()(theta[:1]), 2)
    assert torch.equal(single[1], theta[:1]) and float(single[2][0]) == 0.0


def nre_model(estimator, program=latent_program):
    def model():
        theta = pyro.sample("theta", dist.Uniform(torch.tensor([-1.0, 0.5]), 1.5).to_event(1))
        return pyro.sample("x", SimulatorDistribution(PyroSimulator(program), theta, estimator))

    return model


def test_train_with_augment_ratio_fits_nre_on_the_joint_ratios():
    """At weight 100 the training loss holds the ratio term and validation leaves it out.

    The term is 100 cross-entropies of about 0.5 nats or more, the validation loss only
    NRE-B's (under log 10 = 2.3). Catches the ratios simulated but not passed to fit.
    """
    ratio = NRE()
    options = {"max_epochs": 2, "ratio_weight": 100.0}
    reports = train(nre_model(ratio), num_simulations=300, seed=0, progress=False,
                    augment="ratio", fit_options=options)  # fmt: skip
    report = reports["x"]
    assert report.x.shape == (300, 1) and report.theta_alt.shape == (300, 2)
    assert report.ratio.shape == (300,) and report.score is None
    assert ratio.trained and ratio.x_shape == (1,)
    assert min(report.history.train_loss) > 10 > max(report.history.validation_loss)


def test_train_with_augment_ratio_refuses_what_cannot_use_joint_ratios():
    with pytest.raises(ValueError, match="site 'x' has the estimator NLE, which does not train"):
        train(nre_model(NLE()), num_simulations=10, progress=False, augment="ratio")
    with pytest.raises(TypeError, match='fit_options cannot hold "theta_alt" or "ratio"'):
        train(nre_model(NRE()), num_simulations=10, progress=False,
              fit_options={"ratio": torch.zeros(10)})  # fmt: skip
    with pytest.raises(ValueError, match='augment must be None, "score" or "ratio"'):
        train(nre_model(NRE()), num_simulations=10, progress=False, augment="ratios")

    def model():
        theta = pyro.sample("theta", dist.Normal(torch.zeros(1), 1.0).to_event(1))
        return pyro.sample("y", SimulatorDistribution(lambda t: t, theta, NRE()))

    with pytest.raises(ValueError, match="site 'y' has the simulator <lambda>, not a Pyro"):
        train(model, num_simulations=10, progress=False, augment="ratio")
