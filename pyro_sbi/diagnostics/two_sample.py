r"""The classifier two-sample test (C2ST): how different two sets of samples are."""

from __future__ import annotations

__all__ = ["c2st"]


import torch
from torch import Tensor, nn


def c2st(
    a: Tensor,
    b: Tensor,
    *,
    folds: int = 5,
    hidden_features: int | None = None,
    steps: int = 1000,
    learning_rate: float = 1e-2,
    seed: int = 0,
) -> float:
    r"""Classifier two-sample test: cross-validated accuracy of telling `a` from `b`.

    Both sets are z-scored with the statistics of `a` (the reference), labelled, and
    split into `folds` folds; an MLP with two hidden layers of `hidden_features`
    (default `10 D`, as in the SBI benchmark) is trained with full-batch Adam on all
    folds but one and scored on the held-out fold. The larger set is subsampled to the
    size of the smaller one and every fold holds as many samples of `a` as of `b`, so
    that chance is 0.5.

    Arguments:
        a: `(n, D)` samples (e.g. from the reference posterior).
        b: `(m, D)` samples (e.g. from the approximation).
        folds: number of cross-validation folds.
        hidden_features: width of the hidden layers (`10 D` when `None`).
        steps: Adam steps per fold.
        learning_rate: Adam's step size.
        seed: seeds the subsampling, the folds and the networks; the global random
            state is left untouched.

    Returns:
        The mean held-out accuracy, between 0 and 1; about 0.5 when `a` and `b` come
        from the same distribution.

    Example:
        >>> a, b = torch.randn(500, 2), torch.randn(500, 2) + 4.0
        >>> c2st(a, b, steps=200) > 0.95
        True
    """
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    a = a.reshape(len(a), -1).to(torch.get_default_dtype())
    b = b.reshape(len(b), -1).to(torch.get_default_dtype())
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"c2st: samples of different sizes {tuple(a.shape)}, {tuple(b.shape)}")
    bad = int((~a.isfinite()).any(-1).sum() + (~b.isfinite()).any(-1).sum())
    if bad:
        raise ValueError(f"c2st: {bad} samples hold NaN or inf; remove them first")
    n = min(len(a), len(b))
    if n < folds:
        raise ValueError(f"c2st needs at least folds={folds} samples in each set; got {n}")
    dim = a.shape[-1]
    hidden = hidden_features or 10 * dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        a = a[torch.randperm(len(a))[:n]]
        b = b[torch.randperm(len(b))[:n]]
        loc, scale = a.mean(0), a.std(0).clamp_min(1e-12)
        data = (torch.cat([a, b]) - loc) / scale
        labels = torch.cat([torch.zeros(n), torch.ones(n)])
        fold = torch.cat([torch.randperm(n) % folds, torch.randperm(n) % folds])  # balanced
        accuracies = []
        for k in range(folds):
            train, test = fold != k, fold == k
            net = nn.Sequential(
                nn.Linear(dim, hidden),
                nn.ReLU(),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
                nn.Linear(hidden, 1),
            )
            optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate)
            loss_fn = nn.BCEWithLogitsLoss()
            for _ in range(steps):
                optimizer.zero_grad()
                loss_fn(net(data[train]).squeeze(-1), labels[train]).backward()
                optimizer.step()
            with torch.no_grad():
                predicted = net(data[test]).squeeze(-1) > 0
            accuracies.append((predicted == labels[test].bool()).float().mean())
    return float(torch.stack(accuracies).mean())
