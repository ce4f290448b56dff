import sys

import pytest
import torch
import zuko
from simulators import pairs

from pyro_sbi import NLE, NRE, fit


def test_constant_learning_rate():
    estimator = NLE(zuko.flows.MAF)
    theta, x = pairs(300)
    estimator.build(theta, x)
    history = fit(estimator, theta, x, lr_decay=1.0, max_epochs=4, progress=False, seed=0)
    assert history.epochs == 4 and not history.stopped_early


def test_early_stopping_keeps_the_best_epoch():
    estimator = NLE(zuko.flows.MAF)
    theta, x = pairs(300)
    estimator.build(theta, x)
    # a tiny patience with a large step size stops early; the kept weights are the best
    history = fit(
        estimator, theta, x, learning_rate=0.05, patience=1, max_epochs=200, progress=False, seed=0
    )
    assert history.stopped_early and history.epochs < 200
    assert history.best_validation_loss == min(history.validation_loss)
    assert history.best_epoch < history.epochs - 1


class _Drift(torch.nn.Module):
    """loss = -w: Adam moves w by exactly the learning rate at every step."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def loss(self, theta, x):
        return -self.w + 0.0 * theta.sum()


def test_average_keeps_the_moving_average_of_the_iterates():
    theta = torch.zeros(110, 1)
    estimator, beta, lr = _Drift(), 0.9, 0.01
    history = fit(
        estimator, theta, theta, average=beta, learning_rate=lr, batch_size=10, max_epochs=3,
        clip_norm=None, lr_decay=1.0, progress=False, seed=0,
    )  # fmt: skip
    steps = 3 * 10  # 100 training pairs in batches of 10, for 3 epochs
    expected = lr  # the first step is copied, then w_bar <- beta_t w_bar + (1 - beta_t) w_t
    for t in range(2, steps + 1):  # a window of min(1 / (1 - beta), 1 + (t - 1) / 4) steps
        weight = 1 / min(1 / (1 - beta), 1 + (t - 1) / 4)
        expected = (1 - weight) * expected + weight * lr * t
    assert history.best_epoch == 2  # the loss falls at every epoch
    assert abs(estimator.w.item() - expected) < 1e-5
    assert estimator.w.item() < lr * steps - 0.05  # not the last iterate


def test_average_must_be_below_one():
    theta, x = pairs(50)
    with pytest.raises(ValueError, match="average"):
        fit(NLE(), theta, x, average=1.0, progress=False)


def test_an_estimators_fit_defaults_yield_to_explicit_options(monkeypatch):
    module = sys.modules["pyro_sbi.fitting"]
    original, seen = module.fit, {}

    def spy(estimator, theta, x, **options):
        seen.update(options)
        return original(estimator, theta, x, **options)

    monkeypatch.setattr(module, "fit", spy)
    theta, x = pairs(100)
    NRE().fit(theta, x, max_epochs=1, progress=False)
    assert seen["average"] == NRE.fit_defaults["average"] > 0
    NRE().fit(theta, x, max_epochs=1, progress=False, average=0.0)
    assert seen["average"] == 0.0


def test_counts_may_be_integral_floats():
    estimator = NLE(zuko.flows.MAF)
    theta, x = pairs(300)
    estimator.build(theta, x)
    history = fit(estimator, theta, x, max_epochs=3.0, batch_size=64.0, progress=False, seed=0)
    assert history.epochs == 3
    with pytest.raises(ValueError, match=r"fit: max_epochs must be a whole number.*2\.5"):
        fit(estimator, theta, x, max_epochs=2.5, progress=False)
    with pytest.raises(TypeError, match=r"fit: batch_size must be a whole number"):
        fit(estimator, theta, x, batch_size="64", progress=False)
