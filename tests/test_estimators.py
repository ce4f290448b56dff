"""The checks every estimator passes, one constructor per case."""

import math
import pickle
import re

import numpy as np
import pytest
import torch
import zuko
from simulators import gaussian, pairs

from pyro_sbi import MNLE, NLE, NRE, Ensemble, UntrainedEstimatorError


def mixed(theta):
    """x = (N(theta_0, 0.5^2), Bernoulli(sigmoid(3 theta_1))): a continuous and a binary column."""
    return torch.stack(
        [
            theta[:, 0] + 0.5 * torch.randn(len(theta)),
            torch.bernoulli(torch.sigmoid(3 * theta[:, 1])),
        ],
        dim=-1,
    )


# name: (constructor, simulator of its data)
CONSTRUCTORS = {
    "NLE-NSF": (lambda: NLE(zuko.flows.NSF), gaussian),
    "NLE-MAF": (lambda: NLE(), gaussian),
    "NRE-A": (lambda: NRE("A"), gaussian),
    "NRE-B": (lambda: NRE("B", num_atoms=10), gaussian),
    "NRE-C": (lambda: NRE("C", num_atoms=10, gamma=1.0), gaussian),
    "NRE-C-balanced": (lambda: NRE("C", balance=100.0), gaussian),
    "MNLE": (lambda: MNLE(discrete=[1]), mixed),
    "MNLE-MAF": (lambda: MNLE(discrete=[-1], flow=zuko.flows.MAF), mixed),
    "Ensemble-NRE-A": (lambda: Ensemble(lambda: NRE("A"), size=3), gaussian),
    "Ensemble-NLE-MAF": (lambda: Ensemble(lambda: NLE(zuko.flows.MAF), size=2), gaussian),
    "Ensemble-MNLE": (lambda: Ensemble(lambda: MNLE(discrete=[1]), size=2), mixed),
}


@pytest.fixture(scope="module", params=list(CONSTRUCTORS))
def trained(request):
    torch.manual_seed(0)
    constructor, simulator = CONSTRUCTORS[request.param]
    estimator = constructor()
    theta, x = pairs(2000, 2, simulator)
    history = estimator.fit(theta, x, max_epochs=15, progress=False, seed=0)
    estimator.simulator = simulator
    return estimator, history


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
def test_lazy_until_fit(name):
    estimator = CONSTRUCTORS[name][0]()
    assert not estimator.trained and estimator.x_shape is None and estimator.theta_dim is None
    with pytest.raises(UntrainedEstimatorError, match="train"):
        estimator.log_prob(torch.zeros(2), torch.zeros(2))


def test_log_prob_of_no_data_is_empty(trained):
    """Catches an empty batch handed to the networks (zuko cannot reshape 0 rows)."""
    estimator, _ = trained
    assert estimator.log_prob(torch.zeros(0, 2), torch.zeros(2)).shape == (0,)
    assert estimator.log_prob(torch.zeros(3, 0, 2), torch.zeros(3, 1, 2)).shape == (3, 0)


def test_fit_sets_shapes_and_freezes(trained):
    estimator, history = trained
    assert estimator.trained and estimator.theta_dim == 2 and estimator.x_shape == (2,)
    assert not any(p.requires_grad for p in estimator.parameters())
    for member in history if isinstance(history, list) else [history]:
        assert member.epochs == len(member.validation_loss) >= 1
        assert member.best_validation_loss == min(member.validation_loss)


@pytest.mark.parametrize(
    "x_shape, theta_shape, expected",
    [
        ((2,), (2,), ()),
        ((5, 2), (2,), (5,)),
        ((10, 1, 2), (3, 2), (10, 3)),
        ((4, 2), (4, 2), (4,)),
    ],
)
def test_log_prob_broadcasts(trained, x_shape, theta_shape, expected):
    """Catches a broadcast that pairs an x with another theta than its own (x tiled
    instead of repeated, a shared-x or shared-theta path that mixes rows): every entry
    equals the estimator on that one pair alone."""
    estimator, _ = trained
    x = estimator.simulator(torch.randn(x_shape).reshape(-1, 2)).reshape(x_shape)
    theta = torch.randn(theta_shape)
    log_p = estimator.log_prob(x, theta)
    assert log_p.shape == expected
    xs, thetas = torch.broadcast_tensors(x, theta)
    single = [estimator.log_prob(xs[i], thetas[i]) for i in np.ndindex(*expected)]
    assert torch.allclose(log_p, torch.stack(single).reshape(expected), atol=1e-5)


def test_log_prob_prefers_the_true_theta(trained):
    estimator, _ = trained
    theta, x = pairs(500, 2, estimator.simulator)
    joint = estimator.log_prob(x, theta)
    marginal = estimator.log_prob(x, theta.roll(1, 0))
    assert (joint > marginal).float().mean() > 0.8


def test_log_prob_is_differentiable_in_theta(trained):
    estimator, _ = trained
    theta = torch.zeros(3, 2, requires_grad=True)
    estimator.log_prob(torch.tensor([0.5, 1.0]).expand(3, 2), theta).sum().backward()
    # d/dtheta log N(x; theta, 0.5) = (x - theta) / 0.25 > 0 at x = (0.5, 1), theta = 0;
    # d/dtheta_1 log sigmoid(3 theta_1) > 0 for the binary column; log p(x) has no theta
    assert torch.isfinite(theta.grad).all() and (theta.grad > 0).all()
    assert all(p.grad is None for p in estimator.parameters())


def test_rejects_wrong_theta_dimension(trained):
    estimator, _ = trained
    with pytest.raises(ValueError, match=r"theta must have shape \(\*, 2\)"):
        estimator.log_prob(torch.zeros(2), torch.zeros(3))


def test_pickles(trained):
    estimator, _ = trained
    theta, x = pairs(5, 2, estimator.simulator)
    estimator.warn_if_outside(x)  # leaves a weak reference behind
    clone = pickle.loads(pickle.dumps(estimator))
    assert torch.equal(clone.log_prob(x, theta), estimator.log_prob(x, theta))


def test_save_load_round_trip(trained, tmp_path):
    estimator, _ = trained
    estimator.save(tmp_path / "estimator.pt")
    clone = type(estimator).load(tmp_path / "estimator.pt")
    theta, x = pairs(7, 2, estimator.simulator)
    assert torch.equal(clone.log_prob(x, theta), estimator.log_prob(x, theta))
    assert clone.x_shape == estimator.x_shape and clone.trained
    assert not any(p.requires_grad for p in clone.parameters())
    far = torch.cat([0.5 * theta, theta + 100.0])  # the training region travels along
    assert torch.equal(clone.outside(far), estimator.outside(far))
    assert estimator.outside(far).tolist() == [False] * 7 + [True] * 7


class Payload:
    """Stands for arbitrary code that unpickling would run."""


def _refused_quietly(error: BaseException) -> bool:
    """No advice to load unsafely, neither in the message nor in a chained torch error."""
    shown = error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    return shown and "weights_only" not in str(error) and "False" not in str(error)


def test_load_refuses_pickled_objects(tmp_path):
    path = tmp_path / "tampered.pt"
    torch.save({"header": "{}", "state": Payload()}, path)
    with pytest.raises(ValueError, match=r"not a pyro_sbi estimator file: .*pickled.*Payload"):
        NLE.load(path)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The path of a small trained NLE's file."""
    estimator = NLE(zuko.flows.MAF)
    estimator.fit(*pairs(100, 2), max_epochs=1, progress=False, seed=0)
    path = tmp_path_factory.mktemp("saved") / "nle.pt"
    estimator.save(path)
    return path


def random_bytes(path, saved):
    path.write_bytes(torch.randint(256, (2000,), dtype=torch.uint8).numpy().tobytes())


def truncated(path, saved):
    data = saved.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def pickled_object(path, saved):
    torch.save({"header": "{}", "state": Payload()}, path)


def empty(path, saved):
    path.write_bytes(b"")


def text(path, saved):
    path.write_text("hello\n")


def tensors_without_header(path, saved):
    torch.save({"weight": torch.zeros(3)}, path)


@pytest.mark.parametrize(
    "write", [random_bytes, truncated, pickled_object, empty, text, tensors_without_header]
)
def test_load_refuses_files_that_are_not_estimator_files(write, saved, tmp_path):
    path = tmp_path / "file.pt"
    write(path, saved)
    with pytest.raises(ValueError, match="is not a pyro_sbi estimator file") as info:
        NLE.load(path)
    assert str(info.value).startswith(str(path)) and _refused_quietly(info.value)
    if write is not pickled_object:
        assert f"{path} is not a pyro_sbi estimator file (or it is damaged)" in str(info.value)


def test_load_of_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        NLE.load(tmp_path / "missing.pt")


@pytest.mark.parametrize("which", ["all weights", "one weight", "x_scale"])
def test_load_refuses_non_finite_tensors_naming_the_first(which, saved, tmp_path):
    payload = torch.load(saved, weights_only=True)
    state = payload["state"]
    names = [name for name, value in state.items() if value.is_floating_point()]
    weights = [name for name in names if name.endswith("weight")]
    spoiled = {"all weights": weights, "one weight": weights[1:2], "x_scale": ["x_scale"]}[which]
    for name in spoiled:
        state[name] = torch.full_like(state[name], math.inf if which == "x_scale" else math.nan)
    path = tmp_path / "spoiled.pt"
    torch.save(payload, path)
    first = next(name for name in names if name in spoiled)
    with pytest.raises(ValueError, match=rf"the saved tensor '{re.escape(first)}'.*non-finite"):
        NLE.load(path)


def test_load_refuses_another_class(tmp_path):
    estimator = NLE(zuko.flows.MAF)
    theta, x = pairs(100, 2)
    estimator.fit(theta, x, max_epochs=1, progress=False)
    estimator.save(tmp_path / "nle.pt")
    with pytest.raises(ValueError, match="holds a NLE, not a NRE"):
        NRE.load(tmp_path / "nle.pt")


def test_save_needs_a_trained_estimator(tmp_path):
    with pytest.raises(
        UntrainedEstimatorError, match=r"cannot save an untrained NLE: train it first"
    ) as info:
        NLE().save(tmp_path / "nle.pt")
    assert "log_prob" not in str(info.value) and not (tmp_path / "nle.pt").exists()


def test_nre_with_embedding_needs_it_again(tmp_path):
    estimator = NRE(embedding=torch.nn.Linear(2, 3))
    theta, x = pairs(100, 2)
    estimator.fit(theta, x, max_epochs=1, progress=False)
    estimator.save(tmp_path / "nre.pt")
    with pytest.raises(ValueError, match="embedding"):
        NRE.load(tmp_path / "nre.pt")
    clone = NRE.load(tmp_path / "nre.pt", embedding=torch.nn.Linear(2, 3))
    assert torch.equal(clone.log_prob(x[:3], theta[:3]), estimator.log_prob(x[:3], theta[:3]))
