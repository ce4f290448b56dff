r"""The one training loop shared by every estimator.

An estimator exposes `loss(theta, x) -> Tensor` (a scalar to minimise on a batch).
:func:`fit` minimises it with Adam on a random training split, watches the loss on a
held-out validation split, stops once the validation loss has not improved for
`patience` epochs, and restores the weights of the best epoch.

With `average > 0` the weights that are validated and kept are an exponential moving
average of the iterates (Polyak averaging; `torch.optim.swa_utils.AveragedModel`):
with decay :math:`\beta`, after step :math:`t`,
:math:`\bar w \leftarrow \beta_t \bar w + (1 - \beta_t) w`, an average over about
:math:`1 / (1 - \beta_t) = \min(1 / (1 - \beta), 1 + t / 4)` steps: the window grows
to :math:`1 / (1 - \beta)` steps, so a short training averages its last quarter rather
than its first, undertrained, iterates. Stochastic gradients leave the last iterate
scattered around the optimum by the step size; the average cancels most of that
scatter (Polyak & Juditsky, 1992), and the scatter is what separates one training seed
from the next when the validation loss is flat near its minimum.
"""

from __future__ import annotations

__all__ = ["History", "TrainingInterrupted", "fit"]

import copy
import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from pyro_sbi import threads
from pyro_sbi._checks import as_count
from pyro_sbi.augment import RATIO_WEIGHT, SCORE_WEIGHT, score_weights
from pyro_sbi.streamed import StoredPairs


@dataclass
class History:
    r"""What happened during training.

    Attributes:
        train_loss: mean training loss per epoch.
        validation_loss: validation loss per epoch.
        best_epoch: the epoch (0-based) whose weights were kept.
        stopped_early: whether training stopped on patience rather than `max_epochs`.
        interrupted: whether a `KeyboardInterrupt` stopped it (see
            :class:`TrainingInterrupted`).
        seconds: wall time of the loop.
    """

    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def epochs(self) -> int:
        """Number of epochs run."""
        return len(self.train_loss)

    @property
    def best_validation_loss(self) -> float:
        """The validation loss of the kept weights."""
        return self.validation_loss[self.best_epoch]

    def plot(self, ax=None):
        """Plots the training and validation losses per epoch.

        Arguments:
            ax: a matplotlib `Axes` to draw in; a new figure when `None`.

        Returns:
            The matplotlib `Axes`.
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(self.train_loss, label="training")
        ax.plot(self.validation_loss, label="validation")
        ax.axvline(self.best_epoch, color="grey", linestyle=":", label="kept")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.legend()
        return ax


class TrainingInterrupted(KeyboardInterrupt):
    r"""A `KeyboardInterrupt` (Ctrl-C) during :func:`fit`, after at least one epoch.

    It is a `KeyboardInterrupt`, so a script still stops; but the estimator is not left
    half-updated: it holds the weights of the best epoch validated before the interrupt,
    and an estimator's :meth:`~pyro_sbi.estimator.Estimator.fit` marks it trained, so it can be
    used or saved. An interrupt during the first epoch raises a plain
    `KeyboardInterrupt` and leaves the estimator untrained.

    Attributes:
        history: the :class:`History` up to the interrupt (`interrupted` is true).
    """

    def __init__(self, history: History) -> None:
        super().__init__(
            f"training interrupted after {history.epochs} epochs; the estimator keeps the "
            f"weights of epoch {history.best_epoch} (validation loss "
            f"{history.best_validation_loss:.4g})"
        )
        self.history = history


def _moving_average(decay: float) -> Callable:
    """The update of an exponential moving average whose window grows to `1 / (1 - decay)`.

    After `t` updates the window is `min(1 / (1 - decay), 1 + t / 4)` steps, so the
    first iterates, far from the optimum, are forgotten in a short training too.
    """

    def update(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        window = min(1.0 / (1.0 - decay), 1.0 + float(num_averaged) / 4.0)
        for mean, value in zip(averaged, current, strict=True):
            mean.lerp_(value, 1.0 / window)

    return update


def fit(
    estimator: nn.Module,
    theta: Tensor | StoredPairs,
    x: Tensor | None = None,
    *,
    score: Tensor | None = None,
    score_weight: float | None = None,
    normalize_score: bool = True,
    validate_score: bool = False,
    theta_alt: Tensor | None = None,
    ratio: Tensor | None = None,
    ratio_weight: float | None = None,
    learning_rate: float = 1e-3,
    batch_size: int = 256,
    max_epochs: int = 1000,
    patience: int = 20,
    validation_fraction: float = 0.1,
    clip_norm: float | None = 5.0,
    lr_decay: float = 0.5,
    average: float = 0.0,
    bootstrap: bool = False,
    seed: int | None = None,
    device: str | torch.device | None = None,
    num_threads: int | None = None,
    progress: bool = True,
) -> History:
    r"""Trains `estimator` on simulated pairs by minimising `estimator.loss(theta, x)`.

    Arguments:
        estimator: a module with a `loss(theta, x)` method returning a scalar.
        theta: `(n, D)` parameters, or a :class:`~pyro_sbi.streamed.StoredPairs` whose
            outputs are read from disk block by block (then `x` is `None`): its
            validation split is whole blocks and its batches come from a shuffle buffer.
        x: `(n, *x_shape)` simulator outputs.
        score: `(n, D)` joint scores :math:`\nabla_\theta \log p(x, z \mid \theta)` of the
            simulations (from a :class:`~pyro_sbi.PyroSimulator`), or any target whose
            mean given `(x, theta)` is the likelihood's score (the less noisy, the more
            it gives; :mod:`pyro_sbi.augment`): the loss becomes
            `estimator.loss(theta, x, score=score, score_weight=score_weight)`, the
            estimator's objective augmented by the regression of its
            :math:`\theta`-gradient onto the joint score (:mod:`pyro_sbi.augment`). NLE,
            MNLE and NRE take it.
        score_weight: the weight :math:`\alpha` of the score term (`None`:
            :data:`pyro_sbi.augment.SCORE_WEIGHT`).
        normalize_score: divide each parameter's squared score residual by the variance
            of its z-scored joint score over the training split
            (:func:`~pyro_sbi.augment.score_weights`), so that :math:`\alpha` does not
            depend on the scale of the scores. `False`: the residual in z-scored units.
        validate_score: early stopping (and the learning-rate decay) on the augmented
            loss of the validation split; `False` (the default): on the estimator's own
            loss alone, the score term then acting as a regulariser of training.
        theta_alt: `(n, D)` alternative parameters :math:`\theta'_i`, drawn from the
            distribution of `theta` independently of it (another prior draw, or `theta`
            permuted), with `ratio`: NRE's loss gets ALICES's cross-entropy term on the
            joint ratios (:mod:`pyro_sbi.augment`); validated without it.
        ratio: `(n,)` joint log-ratios :math:`\log p(x_i, z_i \mid \theta'_i) - \log
            p(x_i, z_i \mid \theta_i)` (:meth:`~pyro_sbi.PyroSimulator.joint_ratio`).
        ratio_weight: the weight :math:`\alpha` of that term (`None`:
            :data:`pyro_sbi.augment.RATIO_WEIGHT`).
        learning_rate: Adam's step size.
        batch_size: pairs per gradient step.
        max_epochs: upper bound on passes over the training split.
        patience: epochs without improvement of the validation loss before stopping.
        validation_fraction: share of the pairs held out for early stopping.
        clip_norm: the gradient norm is clipped to this value (`None`: no clipping).
        lr_decay: the learning rate is multiplied by this factor whenever the validation
            loss has not improved for `patience // 4` epochs (1: constant rate).
        average: decay in `[0, 1)` of an exponential moving average of the weights,
            updated after every step; the average is validated and kept (0: the raw
            weights). About `1 / (1 - average)` steps are averaged.
        bootstrap: train on a bootstrap resample of the training split (as many rows,
            drawn with replacement); the validation split stays the held-out rows, so no
            row is validated on a copy of itself. Members of an
            :class:`~pyro_sbi.Ensemble` trained this way scatter as estimators trained on
            other simulations would, which :func:`pyro_sbi.diagnostics.likelihood_error`
            reads.
        seed: makes the split, the batches and the training reproducible; the global
            random state is left untouched.
        device: where to train (e.g. `"cuda"`); the estimator is moved back to the
            device of `theta` afterwards.
        num_threads: torch threads for the loop; `None`: the count the user chose, or
            else one thread (see :mod:`pyro_sbi.threads`). The caller's count is
            restored afterwards.
        progress: show a progress bar.

    Returns:
        The :class:`History` of losses; the estimator holds the best weights.

    Raises:
        TrainingInterrupted: on Ctrl-C after the first epoch; the estimator then holds
            the best weights validated so far.

    Example:
        >>> from pyro_sbi import NLE
        >>> theta = torch.randn(500, 1)
        >>> x = theta + 0.1 * torch.randn(500, 1)
        >>> history = NLE().fit(theta, x, max_epochs=3, progress=False, seed=0)
        >>> history.epochs
        3
    """
    if not 0.0 <= average < 1.0:
        raise ValueError(f"fit: average must be in [0, 1); got {average}")
    max_epochs = as_count(max_epochs, "fit: max_epochs")
    batch_size = as_count(batch_size, "fit: batch_size")
    patience = as_count(patience, "fit: patience", minimum=0)
    extra = {}
    if score is None and (not normalize_score or validate_score):
        raise ValueError("fit: normalize_score and validate_score need score= (joint scores)")
    if score is not None:
        extra = {"score": _checked_score(estimator, theta, score)}
        extra["score_weight"] = SCORE_WEIGHT if score_weight is None else float(score_weight)
        if not extra["score_weight"] >= 0:
            raise ValueError(f"fit: score_weight must be >= 0; got {score_weight}")
        extra["normalize"], extra["validate"] = bool(normalize_score), bool(validate_score)
    elif score_weight is not None:
        raise ValueError("fit: score_weight needs score= (the joint scores of the simulations)")
    if theta_alt is not None or ratio is not None:
        extra.update(_checked_ratio(estimator, theta, theta_alt, ratio))
        extra["ratio_weight"] = RATIO_WEIGHT if ratio_weight is None else float(ratio_weight)
        if not extra["ratio_weight"] >= 0:
            raise ValueError(f"fit: ratio_weight must be >= 0; got {ratio_weight}")
    elif ratio_weight is not None:
        raise ValueError("fit: ratio_weight needs theta_alt= and ratio= (the joint ratios)")
    with threads.num_threads(num_threads):
        return _fit(
            estimator, theta, x, extra=extra, learning_rate=learning_rate, batch_size=batch_size,
            max_epochs=max_epochs, patience=patience, validation_fraction=validation_fraction,
            clip_norm=clip_norm, lr_decay=lr_decay, average=average, bootstrap=bootstrap,
            seed=seed, device=device, progress=progress,
        )  # fmt: skip


def _fit(
    estimator, theta, x, *, extra, learning_rate, batch_size, max_epochs, patience,
    validation_fraction, clip_norm, lr_decay, average, bootstrap, seed, device, progress,
) -> History:  # fmt: skip
    if isinstance(theta, StoredPairs):
        if x is not None:
            raise TypeError("fit takes StoredPairs alone, without x")
        if bootstrap:
            raise ValueError("fit: bootstrap needs the simulations in memory, not StoredPairs")
        data = theta
    else:
        named = {key: extra[key] for key in ("score", "theta_alt", "ratio") if key in extra}
        data = _InMemory(theta, x, named)
    n = len(data)
    num_validation = max(1, int(round(validation_fraction * n)))
    if n - num_validation < 1:
        raise ValueError(f"fit needs more simulations than {n} for a validation split")
    home = data.theta.device
    device = torch.device(device) if device is not None else home
    history = History()
    start = time.perf_counter()

    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        if isinstance(data, StoredPairs):
            train, valid = data.split(num_validation)
        else:
            train, valid = data.split(num_validation, bootstrap=bootstrap, device=device)

        estimator.to(device)
        estimator.requires_grad_(True)
        weight = {}
        if "ratio" in extra:
            weight["ratio_weight"] = extra["ratio_weight"]
        if "score" in extra:
            weight["score_weight"] = extra["score_weight"]
            if extra["normalize"]:
                scale = getattr(estimator, "theta_scale", torch.ones((), device=device))
                score = train.named["score"]
                weight["score_weight"] = score_weights(score, scale, extra["score_weight"])
        validation_weight = None  # the estimator's own loss, or that and the score term:
        if extra.get("validate"):
            validation_weight = {"score_weight": weight["score_weight"]}
        optimizer = torch.optim.Adam(estimator.parameters(), lr=learning_rate)
        scheduler = None
        if lr_decay < 1.0:
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, factor=lr_decay, patience=max(1, patience // 4), threshold=0.0
            )
        averaged = None
        if average > 0:
            averaged = AveragedModel(estimator, multi_avg_fn=_moving_average(average))
        kept = estimator if averaged is None else averaged.module  # what is validated
        best_loss, best_state, stale = math.inf, None, 0

        bar = tqdm(range(max_epochs), desc="training", unit="epoch", disable=not progress)
        try:
            for epoch in bar:
                estimator.train()
                total = 0.0
                for batch_theta, batch_x, *batch_named in train.batches(batch_size):
                    loss = estimator.loss(
                        batch_theta.to(device), batch_x.to(device),
                        **_named(train, batch_named, device), **weight,
                    )  # fmt: skip
                    optimizer.zero_grad()
                    loss.backward()
                    if clip_norm is not None:
                        nn.utils.clip_grad_norm_(estimator.parameters(), clip_norm)
                    optimizer.step()
                    if averaged is not None:
                        averaged.update_parameters(estimator)
                    total += loss.item() * len(batch_theta)
                history.train_loss.append(total / len(train))

                kept.eval()
                with torch.no_grad():
                    validation = _batched_loss(
                        kept, valid, 4 * batch_size, device, validation_weight
                    )
                history.validation_loss.append(validation)
                if scheduler is not None:
                    scheduler.step(validation)

                if validation < best_loss:
                    best_loss, stale = validation, 0
                    best_state = copy.deepcopy(kept.state_dict())
                    history.best_epoch = epoch
                else:
                    stale += 1
                bar.set_postfix(
                    train=f"{history.train_loss[-1]:.3f}", validation=f"{validation:.3f}"
                )
                if not math.isfinite(history.train_loss[-1]):
                    raise FloatingPointError(
                        f"training loss became {history.train_loss[-1]} at epoch {epoch}; lower "
                        "learning_rate or check the simulations for extreme values"
                    )
                if stale >= patience:
                    history.stopped_early = True
                    break
        except KeyboardInterrupt:
            history.interrupted = True
            del history.train_loss[len(history.validation_loss) :]  # an unfinished epoch
        finally:
            bar.close()

    optimizer.zero_grad(set_to_none=True)
    if best_state is None:  # interrupted before the first validation
        estimator.to(home)
        raise KeyboardInterrupt("training interrupted during its first epoch")
    estimator.load_state_dict(best_state)
    estimator.to(home)
    history.seconds = time.perf_counter() - start
    if history.interrupted:
        raise TrainingInterrupted(history)
    return history


def _batched_loss(
    estimator: nn.Module, data, batch_size: int, device, weight: dict | None
) -> float:
    """The mean loss over `data` (in its order), in batches of `batch_size`.

    `weight`: the score term's `{"score_weight": ...}`, or `None` for the loss without it
    (and always without the joint-ratio term).
    """
    total = 0.0
    for theta, x, *named in data.batches(batch_size, shuffle=False):
        extra = {} if weight is None else {**_named(data, named, device, ("score",)), **weight}
        loss = estimator.loss(theta.to(device), x.to(device), **extra)
        total += loss.item() * len(theta)
    return total / len(data)


def _named(data, batch: list[Tensor], device, keys: tuple[str, ...] | None = None) -> dict:
    """The named extra tensors of a batch of `data` (joint scores, ratios) on `device`.

    `keys`: only those (all when `None`); a batch of `StoredPairs` has none.
    """
    names = list(getattr(data, "named", {}))
    return {
        name: value.to(device)
        for name, value in zip(names, batch, strict=True)
        if keys is None or name in keys
    }


def _checked_score(estimator: nn.Module, theta, score: Tensor) -> Tensor:
    """`score (n, D)` as a tensor, refused when it cannot serve `estimator` and `theta`."""
    name = type(estimator).__name__
    if "score" not in inspect.signature(estimator.loss).parameters:
        raise TypeError(
            f"fit: {name} does not train on joint scores (score=); NLE, MNLE and NRE do"
        )
    if isinstance(theta, StoredPairs):
        raise ValueError("fit: score= needs the simulations in memory, not StoredPairs")
    score = torch.as_tensor(score).to(theta.dtype)
    if score.shape != theta.shape:
        raise ValueError(
            f"fit: score must have the shape of theta {tuple(theta.shape)} (one joint score "
            f"per simulation and parameter); got {tuple(score.shape)}"
        )
    if not bool(torch.isfinite(score).all()):
        raise ValueError(
            f"fit: score holds {int((~torch.isfinite(score)).sum())} non-finite values; leave "
            "out the simulations whose joint score is not finite"
        )
    return score


def _checked_ratio(estimator: nn.Module, theta, theta_alt, ratio) -> dict:
    """`{"theta_alt": (n, D), "ratio": (n,)}` as tensors, refused when they cannot serve."""
    name = type(estimator).__name__
    if theta_alt is None or ratio is None:
        raise ValueError("fit: theta_alt= and ratio= go together (the joint ratios at theta_alt)")
    if "ratio" not in inspect.signature(estimator.loss).parameters:
        raise TypeError(f"fit: {name} does not train on joint ratios (ratio=); NRE does")
    if isinstance(theta, StoredPairs):
        raise ValueError("fit: ratio= needs the simulations in memory, not StoredPairs")
    theta_alt = torch.as_tensor(theta_alt).to(theta.dtype)
    ratio = torch.as_tensor(ratio).to(theta.dtype)
    if theta_alt.shape != theta.shape or ratio.shape != theta.shape[:1]:
        raise ValueError(
            f"fit: theta_alt must have the shape of theta {tuple(theta.shape)} and ratio the "
            f"shape ({len(theta)},) (one joint log-ratio per simulation); got "
            f"{tuple(theta_alt.shape)} and {tuple(ratio.shape)}"
        )
    if not bool(torch.isfinite(theta_alt).all()) or bool(torch.isnan(ratio).any()):
        raise ValueError(
            "fit: theta_alt holds non-finite values or ratio holds NaN; leave out those "
            "simulations (a log-ratio of -inf or inf, a path impossible at one point, is allowed)"
        )
    return {"theta_alt": theta_alt, "ratio": ratio}


class _InMemory:
    """Pairs in memory (with named extras: joint scores, ratios): split once, batched."""

    def __init__(self, theta: Tensor, x: Tensor, named: dict[str, Tensor] | None = None) -> None:
        self.theta, self.x, self.named = theta, x, dict(named or {})

    def __len__(self) -> int:
        return len(self.theta)

    def split(self, num_validation: int, *, bootstrap: bool, device) -> tuple:
        """Random training and validation pairs on `device` (torch's random state)."""
        order = torch.randperm(len(self))
        valid, train = order[:num_validation], order[num_validation:]
        if bootstrap:
            train = train[torch.randint(len(train), (len(train),))]
        theta, x = self.theta.to(device), self.x.to(device)
        named = {key: value.to(device) for key, value in self.named.items()}
        train, valid = train.to(device), valid.to(device)
        return tuple(
            _InMemory(theta[rows], x[rows], {key: value[rows] for key, value in named.items()})
            for rows in (train, valid)
        )

    def batches(self, batch_size: int, *, shuffle: bool = True):
        """Every pair once, as `(theta, x, *named)` batches of `batch_size`."""
        tensors = [self.theta, self.x, *self.named.values()]
        if not shuffle:
            yield from zip(*(tensor.split(batch_size) for tensor in tensors), strict=True)
            return
        permutation = torch.randperm(len(self), device=self.theta.device)
        for batch in permutation.chunk(max(1, math.ceil(len(self) / batch_size))):
            yield tuple(tensor[batch] for tensor in tensors)
