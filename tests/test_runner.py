"""One model at many points: under an extra plate, or one point at a time with one warning."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_sbi.runner import PLATE, ModelRunner, pad, plate_nesting, sample_sites


def broadcasting(y):
    mu = pyro.sample("mu", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("trials", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0).to_event(1), obs=y)


def fixed_shape(y):
    """The same density, but `expand([2])` refuses a batch of points on the left."""
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    with pyro.plate("trials", len(y)):
        pyro.sample("y", dist.Normal(mu.reshape(2), 1.0).to_event(1), obs=y)


def log_joint(trace, points, vectorized):
    trace.compute_log_prob()
    total = torch.zeros(points)
    for _, site in sample_sites(trace):
        total = total + site["log_prob"].reshape(points, -1).sum(-1)
    return total


def test_plate_nesting_counts_plates_and_batch_shapes():
    y = torch.randn(4, 2)
    assert ModelRunner(broadcasting, (y,)).nesting == 1
    assert plate_nesting(ModelRunner(fixed_shape, (y,)).base) == 1


def test_a_model_runs_once_under_the_extra_plate():
    y = torch.randn(4, 2)
    runner = ModelRunner(broadcasting, (y,))
    mu = torch.randn(7, 2)
    [trace], vectorized = runner.run({"mu": mu})
    assert vectorized and runner.vectorize
    frames = {frame.name: frame.dim for frame in trace.nodes["y"]["cond_indep_stack"]}
    assert frames == {PLATE: -2, "trials": -1}
    assert trace.nodes["y"]["fn"].batch_shape == (7, 4)


def test_the_fallback_warns_once_says_why_and_gives_the_same_values():
    y = torch.randn(4, 2)
    mu = torch.randn(7, 2)
    vectorized = ModelRunner(broadcasting, (y,)).run({"mu": mu}, read=log_joint)[0][0]
    runner = ModelRunner(fixed_shape, (y,))
    with pytest.warns(UserWarning, match="cannot run vectorised.*RuntimeError") as caught:
        parts, was_vectorized = runner.run({"mu": mu}, read=log_joint)
    assert len([w for w in caught if "vectorised" in str(w.message)]) == 1
    assert not was_vectorized and not runner.vectorize and len(parts) == 7
    torch.testing.assert_close(torch.cat(parts), vectorized)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second run goes straight to one point at a time
        assert len(runner.run({"mu": mu}, read=log_joint)[0]) == 7


def test_an_error_at_one_point_is_the_models_own():
    def broken(y):
        pyro.sample("mu", dist.Normal(0.0, 1.0))
        raise KeyError("not a shape problem")

    runner = ModelRunner(broken, (torch.zeros(1),), nesting=0)
    with pytest.warns(UserWarning, match="KeyError"), pytest.raises(KeyError, match="shape"):
        runner.run(size=3)


def test_pad_fills_batch_dims_up_to_the_nesting():
    assert pad(torch.zeros(5), 0, 2).shape == (5, 1, 1)
    assert pad(torch.zeros(5, 3, 2), 1, 2).shape == (5, 1, 3, 2)
    assert pad(torch.zeros(5, 4, 3, 2), 1, 2).shape == (5, 4, 3, 2)


def test_model_keywords_may_share_a_name_with_an_option():
    from pyro_sbi import NLE, SimulatorDistribution, to_inference_data, train

    seen = []
    likelihood = NLE()

    def model(x=None, seed=None, prior=1.0):
        seen.append((seed, prior))
        theta = pyro.sample("theta", dist.Normal(0.0, prior).expand([1]).to_event(1))
        with pyro.plate("trials", 3):
            sim = SimulatorDistribution(lambda t: t + torch.randn_like(t), theta, likelihood)
            return pyro.sample("x", sim, obs=x)

    train(model, num_simulations=200, seed=0, progress=False, fit_options={"max_epochs": 2},
          model_kwargs={"seed": 7, "prior": 2.0})  # fmt: skip
    assert seen and set(seen) == {(7, 2.0)}
    seen.clear()
    idata = to_inference_data({"theta": torch.zeros(5, 1)}, model, torch.zeros(3, 1), prior=4,
                              posterior_predictive=False, model_kwargs={"prior": 3.0})  # fmt: skip
    assert "prior" in idata and set(seen) == {(None, 3.0)}
    with pytest.raises(TypeError, match=r"\['seed'\] are given twice"):
        from pyro_sbi.runner import model_keywords

        model_keywords({"seed": 1}, {"seed": 2})
