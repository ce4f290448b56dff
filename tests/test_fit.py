import torch
import zuko

from pyro_sbi import NLE, fit


def pairs(n):
    theta = torch.randn(n, 1)
    return theta, theta + 0.5 * torch.randn(n, 1)


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
