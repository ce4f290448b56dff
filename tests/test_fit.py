import sys

import pytest
import torch
import zuko
from simulators import pairs

from pyro_sbi import NLE, NRE, fit


class _Valley(torch.nn.Module):
    """Training loss -w, so Adam moves w up by the learning rate at every step; validation
    loss (w - centre)^2, so the validation loss falls, reaches its minimum, then rises."""

    def __init__(self, centre):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.centre, self.steps = centre, []

    def loss(self, theta, x):
        if not self.training:
            return (self.w - self.centre) ** 2 + 0.0 * theta.sum()
        self.steps.append(self.w.item())
        return -self.w + 0.0 * theta.sum()


VALLEY = dict(batch_size=10, clip_norm=None, average=0.0, progress=False, seed=0)


def test_constant_learning_rate():
    """Catches `lr_decay=1.0` not passed on (the default 0.5 used): the learning rate halved
    once the validation loss rises. With the decay, it is halved where expected."""
    theta = torch.zeros(110, 1)  # 100 training pairs, 10 steps an epoch
    constant = _Valley(centre=0.12)
    history = fit(constant, theta, theta, learning_rate=0.01, lr_decay=1.0, max_epochs=6,
                  patience=8, **VALLEY)  # fmt: skip
    assert history.epochs == 6 and not history.stopped_early
    steps = torch.tensor(constant.steps).diff()
    assert len(steps) == 59 and torch.allclose(steps, torch.full((59,), 0.01), atol=1e-6)
    # epochs 0-5 end at w = 0.1, ..., 0.6: the validation loss is lowest after epoch 0;
    # the scheduler's patience is max(1, 8 // 4) = 2 epochs, so after epoch 3 (its third
    # without improvement) the rate is halved for epochs 4 and 5
    decayed = _Valley(centre=0.12)
    fit(decayed, theta, theta, learning_rate=0.01, lr_decay=0.5, max_epochs=6, patience=8,
        **VALLEY)  # fmt: skip
    expected = torch.tensor([0.01] * 40 + [0.005] * 19)
    assert torch.allclose(torch.tensor(decayed.steps).diff(), expected, atol=1e-6)


def test_early_stopping_keeps_the_best_epoch():
    """Catches the weights of the last epoch kept instead of those of the best one."""
    theta = torch.zeros(110, 1)
    estimator = _Valley(centre=0.32)  # w = 0.1 (e + 1) after epoch e: the best is epoch 2
    history = fit(estimator, theta, theta, learning_rate=0.01, lr_decay=1.0, patience=2,
                  max_epochs=200, **VALLEY)  # fmt: skip
    assert history.stopped_early and history.epochs == 5 and history.best_epoch == 2
    assert history.best_validation_loss == min(history.validation_loss)
    assert estimator.w.item() == pytest.approx(0.3, abs=1e-5)  # not 0.5, the last epoch's
    assert history.best_validation_loss == pytest.approx((0.3 - 0.32) ** 2, abs=1e-6)
    estimator.eval()
    assert estimator.loss(theta, theta).item() == pytest.approx(history.best_validation_loss)


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


def test_nre_takes_a_larger_adam_step_than_the_loop_and_yields_to_an_explicit_one(monkeypatch):
    original, steps = torch.optim.Adam, []

    def spy(params, lr, **options):
        steps.append(lr)
        return original(params, lr=lr, **options)

    monkeypatch.setattr(torch.optim, "Adam", spy)
    theta, x = pairs(100)
    NRE().fit(theta, x, max_epochs=1, progress=False)
    NLE().fit(theta, x, max_epochs=1, progress=False)
    NRE().fit(theta, x, max_epochs=1, progress=False, learning_rate=1e-3)
    assert steps == [3e-3, 1e-3, 1e-3]


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
