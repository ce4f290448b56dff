r"""Mixed neural likelihood estimation (MNLE) for data with discrete and continuous columns.

Many simulators return a mix: a drift-diffusion model gives a reaction time (continuous,
positive) and a choice (discrete). A flow cannot model the discrete part (a density on
integers is a sum of Dirac masses), so the likelihood is factorised as

.. math::

    q_\phi(x \mid \theta) = q_\phi(c \mid \theta) \, q_\phi(r \mid c, \theta) ,

with :math:`c` the discrete columns and :math:`r` the continuous ones. The discrete
factor is a categorical distribution over the joint values of :math:`c` (column
:math:`j` takes the values :math:`0, \dots, K_j - 1` seen in training), whose logits
come from a residual MLP of :math:`\theta`. The continuous factor is a conditional
normalising flow whose context is :math:`\theta` and the one-hot encoding of :math:`c`.
Both are fitted at once by maximum likelihood on simulated pairs:

.. math::

    \mathcal{L}(\phi) = -\frac{1}{n} \sum_i \Big[ \log q_\phi(c_i \mid \theta_i)
        + \log q_\phi(r_i \mid c_i, \theta_i) \Big] ,

and as for :mod:`~pyro_sbi.nle` the minimiser is the true likelihood wherever the
proposal of :math:`\theta` has mass: the loss is the sum of the cross-entropy of the
categorical head and the negative log-likelihood of the flow, each minimised by its own
true conditional. The product is a normalised mixed density: it sums over :math:`c`
and integrates over :math:`r` to one, so (like NLE) it is valid for MCMC, SVI,
pointwise log-likelihoods, LOO and model comparison.

Positive continuous columns (reaction times) can be modelled on the log scale,
:math:`s = \log r`, which removes the hard boundary at zero and the heavy right tail.
The density of :math:`r` then carries the Jacobian,

.. math::

    \log q(r \mid c, \theta) = \log q_s(\log r \mid c, \theta) - \sum_j \log r_j ,

and z-scoring every continuous column (log-scaled or not) with mean :math:`\mu_j` and
scale :math:`\sigma_j` adds :math:`-\sum_j \log \sigma_j`, so the density of the
original :math:`x` stays exact.

References:
    | Flexible and efficient simulation-based inference for models of decision-making
      (Boelts et al., 2022)
    | https://doi.org/10.7554/eLife.77220

    | Sequential Neural Likelihood (Papamakarios et al., 2019)
    | https://arxiv.org/abs/1805.07226
"""

from __future__ import annotations

__all__ = ["MNLE"]

import itertools
import math
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F  # noqa: N812
import zuko
from torch import Size, Tensor, nn
from torch.distributions import Distribution, Transform, constraints
from zuko.transforms import (
    ComposedTransform,
    DependentTransform,
    MonotonicAffineTransform,
    MonotonicRQSTransform,
)

from pyro_sbi.augment import SCORE_WEIGHT, score_loss
from pyro_sbi.conditional import EstimatorDistribution
from pyro_sbi.estimator import Estimator, distinct, validation_off
from pyro_sbi.networks import ResidualMLP, flow_name

MAX_CATEGORIES = 4096
PER_CATEGORY_MAX = 16  # the most joint categories evaluated at every trial (`_log_r_per_category`)


class MNLE(Estimator):
    r"""Mixed neural likelihood estimator: :math:`q(c \mid \theta) \, q(r \mid c, \theta)`.

    `x` is a vector of `L` columns; the columns listed in `discrete` hold non-negative
    integers (choices, counts of a few values), the others are continuous. The networks
    are built at the first :meth:`fit`, when the sizes and the number of values of each
    discrete column are known.

    Arguments:
        discrete: indices of the discrete columns of `x` (negative indices count from
            the end), e.g. `[1]` for `x = (reaction time, choice)`.
        log_transform: model these continuous columns on the log scale: `True` for
            every continuous column, a sequence of column indices, or `False`. The
            columns must be positive in the training data; the density stays exact
            (the Jacobian is included) and is zero for non-positive values.
        flow: the zuko flow class of the continuous part (`zuko.flows.NSF` default).
        head_hidden_features: width of the categorical head's residual MLP.
        head_num_blocks: residual blocks of that MLP.
        activation: the activation class of that MLP.
        z_score: standardise `theta` and the continuous columns with training statistics.
        flow_options: passed to `flow`, e.g. `transforms=5, hidden_features=(128, 128)`.

    Like :class:`~pyro_sbi.NLE` it trains with a moving average of its weights
    (:attr:`fit_defaults`); the measurements are on the benchmarks page, "MNLE on the
    drift-diffusion task".

    Example:
        >>> theta = torch.rand(2000, 1)
        >>> choice = torch.bernoulli(theta)
        >>> rt = torch.exp(theta + choice + 0.2 * torch.randn(2000, 1))
        >>> likelihood = MNLE(discrete=[1], log_transform=True)
        >>> _ = likelihood.fit(theta, torch.cat([rt, choice], -1), max_epochs=3,
        ...                    progress=False, seed=0)
        >>> likelihood.log_prob(torch.tensor([[1.5, 0.0], [1.5, 1.0]]), torch.tensor([0.5])).shape
        torch.Size([2])
        >>> likelihood(torch.rand(3, 1)).sample((4,)).shape
        torch.Size([4, 3, 2])
    """

    fit_defaults: ClassVar[dict] = {"average": 0.99}
    streams: ClassVar[bool] = False  # its checks of the discrete columns read all of x

    def __init__(
        self,
        discrete: Sequence[int],
        *,
        log_transform: bool | Sequence[int] = False,
        flow: Callable[..., zuko.flows.Flow] = zuko.flows.NSF,
        head_hidden_features: int = 64,
        head_num_blocks: int = 2,
        activation: type[nn.Module] = nn.ELU,
        z_score: bool = True,
        **flow_options,
    ) -> None:
        super().__init__(z_score=z_score)
        discrete = [int(j) for j in discrete]
        if not discrete:
            raise ValueError("MNLE: give at least one discrete column (use NLE otherwise)")
        self.discrete_option = discrete
        self.log_transform = (
            log_transform if isinstance(log_transform, bool) else list(map(int, log_transform))
        )
        self.flow_class, self.flow_options = flow, flow_options
        self.head_hidden_features, self.head_num_blocks = head_hidden_features, head_num_blocks
        self.activation = activation
        self.classifier = self.flow = None

    # columns ------------------------------------------------------------------------

    def _columns(self, length: int) -> tuple[list[int], list[int], list[int]]:
        """Discrete, continuous and log-transformed column indices for `L = length`."""
        if any(not -length <= j < length for j in self.discrete_option):
            raise ValueError(
                f"MNLE: discrete columns {self.discrete_option} are not all within the "
                f"{length} columns of x"
            )
        discrete = sorted({j % length for j in self.discrete_option})
        continuous = [j for j in range(length) if j not in discrete]
        if not continuous:
            raise ValueError(
                "MNLE: every column of x is discrete; at least one must be continuous"
            )
        if self.log_transform is True:
            logged = continuous
        elif self.log_transform is False:
            logged = []
        else:
            logged = sorted({j % length for j in self.log_transform})
            if not set(logged) <= set(continuous) or any(
                not -length <= j < length for j in self.log_transform
            ):
                raise ValueError(
                    f"MNLE: log_transform={self.log_transform} must name continuous columns "
                    f"of x (continuous: {continuous})"
                )
        return discrete, continuous, logged

    @property
    def num_classes(self) -> list[int]:
        """The number of values `K_j` of each discrete column (seen in training)."""
        if self.classifier is None:
            self.check_trained()
        return list(self._classes)

    # construction -------------------------------------------------------------------

    def build(self, theta: Tensor, x: Tensor) -> None:
        r"""Checks the columns, creates the networks and sets z-score statistics.

        Arguments:
            theta: `(n, D)` parameters.
            x: `(n, L)` simulator outputs.
        """
        theta, x = self._check_pair(theta, x)
        finite = torch.isfinite(x.reshape(len(x), -1)).all(-1) & torch.isfinite(theta).all(-1)
        if not bool(finite.all()):
            raise ValueError(
                f"MNLE.fit: {int((~finite).sum())} of {len(x)} simulations hold NaN or inf; "
                "leave them out (pyro_sbi.train does) before fitting"
            )
        if x.dim() != 2:
            raise ValueError(
                f"MNLE expects x of shape (n, L) with one column per output; got {tuple(x.shape)}"
            )
        discrete, continuous, logged = self._columns(x.shape[-1])
        values = x[:, discrete]
        if not torch.equal(values, values.round()) or bool((values < 0).any()):
            raise ValueError(
                f"MNLE: the discrete columns {discrete} must hold non-negative integers; the "
                "training data has other values"
            )
        if bool((x[:, logged] <= 0).any()):
            raise ValueError(
                f"MNLE: log_transform needs positive values, but columns {logged} hold values "
                "<= 0 in the training data"
            )
        num_categories = math.prod(int(values[:, k].max()) + 1 for k in range(len(discrete)))
        if num_categories > MAX_CATEGORIES:
            raise ValueError(
                f"MNLE: the discrete columns take {num_categories} joint values (more than "
                f"{MAX_CATEGORIES}); treat columns with many values as continuous"
            )
        self.discrete, self.continuous, self.logged = discrete, continuous, logged
        super().build(theta, x)
        # The discrete columns reach the networks unchanged (location 0, scale 1).
        self.x_loc[discrete], self.x_scale[discrete] = 0.0, 1.0
        for k, (offset, classes) in enumerate(
            zip(self._offsets.tolist(), self._classes, strict=True)
        ):
            counts = torch.bincount(values[:, k].long(), minlength=classes)
            self.seen[offset : offset + classes] = counts > 0

    def _build(self) -> None:
        self.discrete, self.continuous, self.logged = self._columns(self.x_features)
        # fixed once built: read on every log_prob, so kept as Python integers
        classes = self._classes = [int(self.x_max[j]) + 1 for j in self.discrete]
        self.register_buffer("strides", _strides(classes), persistent=False)
        # the one-hot code of every joint category, in the order of the joint index
        values = torch.arange(math.prod(classes))[:, None] // self.strides % torch.tensor(classes)
        self.register_buffer("_codes", self._one_hot(values), persistent=False)
        # which value of each discrete column the training data holds (set by build), and
        # where each column's values start in it
        self.register_buffer("seen", torch.ones(sum(classes), dtype=torch.bool))
        offsets = torch.tensor([0, *itertools.accumulate(classes)][:-1])
        self.register_buffer("_offsets", offsets, persistent=False)
        self.classifier = ResidualMLP(
            self.theta_dim,
            math.prod(classes),
            hidden_features=self.head_hidden_features,
            num_blocks=self.head_num_blocks,
            activation=self.activation,
        )
        self.flow = self.flow_class(
            features=len(self.continuous),
            context=self.theta_dim + sum(classes),
            **self.flow_options,
        )

    def config(self) -> dict:
        """The constructor's options; flow and activation classes by their names."""
        return {
            "discrete": self.discrete_option,
            "log_transform": self.log_transform,
            "flow": flow_name(self.flow_class),
            "head_hidden_features": self.head_hidden_features,
            "head_num_blocks": self.head_num_blocks,
            "activation": self.activation.__name__,
            "z_score": self.z_score,
            **self.flow_options,
        }

    def extra_repr(self) -> str:
        """Discrete columns, log-transformed columns and the flow class."""
        return (
            f"discrete={self.discrete_option}, log_transform={self.log_transform}, "
            f"flow={getattr(self.flow_class, '__name__', self.flow_class)}"
        )

    # densities ----------------------------------------------------------------------

    @property
    def support(self) -> constraints.Constraint:
        """Integers >= 0 in the discrete columns; reals (positive if log-scaled) elsewhere."""
        if self.x_shape is None:
            return super().support
        return _MixedColumns(self.x_features, self.discrete, self.logged)

    def check_support(self, x: Tensor) -> None:
        r"""Raises a `ValueError` when a discrete column of `x` holds a value never learned.

        The discrete columns must hold integers from 0 to the largest value seen in the
        training simulations; the message names the first value that does not, its
        index in `x` and the values its column may take.

        Arguments:
            x: `(*, L)` simulator outputs.

        Example:
            >>> theta = torch.rand(200, 1)
            >>> x = torch.cat([theta.exp(), torch.bernoulli(theta)], -1)  # (time, choice)
            >>> likelihood = MNLE(discrete=[1])
            >>> _ = likelihood.fit(theta, x, max_epochs=1, progress=False, seed=0)
            >>> likelihood.check_support(torch.tensor([[1.5, 1.0]]))  # a choice seen in training
            >>> likelihood.check_support(torch.tensor([[1.5, 2.0]]))
            Traceback (most recent call last):
            ...
            ValueError: MNLE: a discrete column of x holds a value outside the range seen in ...
        """
        self.check_trained()
        values = x[..., self.discrete]
        integer = values == values.round()
        high = torch.as_tensor(self._classes, dtype=values.dtype, device=values.device) - 1
        bad = ~integer if not bool(integer.all()) else (values < 0) | (values > high)
        if not bool(bad.any()):
            self._check_seen(values, x.shape)
            return
        first = bad.nonzero()[0].tolist()
        column = self.discrete[first[-1]]
        where = tuple(first[:-1] + [column])
        value = values[tuple(first)].item()
        learned = (
            f"the support learned in training is the integers 0 to "
            f"{self._classes[first[-1]] - 1} in column {column}"
        )
        if not bool(integer.all()):
            raise ValueError(
                f"MNLE: the discrete columns {self.discrete} of x must hold integers; got "
                f"{value} at index {where} of x of shape {tuple(x.shape)}; {learned}"
            )
        raise ValueError(
            f"MNLE: a discrete column of x holds a value outside the range seen in the "
            f"training simulations: {value} at index {where} of x of shape "
            f"{tuple(x.shape)}, whose probability was never learned; {learned}"
        )

    def _check_seen(self, values: Tensor, shape: Size) -> None:
        """Raises when an integer in a discrete column's range was absent from training."""
        if bool(self.seen.all()):  # the usual case: nothing to look up
            return
        unseen = ~self.seen[(values.long() + self._offsets).clamp(min=0)]
        if not bool(unseen.any()):
            return
        first = unseen.nonzero()[0].tolist()
        k, column = first[-1], self.discrete[first[-1]]
        start = int(self._offsets[k])
        seen = self.seen[start : start + self._classes[k]].nonzero().squeeze(-1)
        raise ValueError(
            f"MNLE: the discrete column {column} of x holds {values[tuple(first)].item():g} at "
            f"index {tuple(first[:-1] + [column])} of x of shape {tuple(shape)}, a value the "
            f"training simulations never produced (they hold {seen.tolist()}), whose "
            "probability was never learned"
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Reads files written before `seen` was kept: every value in range counts as seen."""
        state_dict.setdefault(prefix + "seen", self.seen)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _transform(self, x: Tensor) -> Tensor:
        """Flat `x (*, L)` with the log-scaled columns replaced by their logarithms."""
        if not self.logged:
            return x
        logged = x[..., self.logged]
        x = x.clone()
        # Values <= 0 (density zero, see log_prob) get a harmless placeholder; NaN stays NaN.
        x[..., self.logged] = torch.where(logged <= 0, torch.ones_like(logged), logged).log()
        return x

    def _log_prob_z(self, x_t: Tensor, theta_z: Tensor) -> Tensor:
        r""":math:`\log q(c \mid \theta) + \log q(s_z \mid c, \theta)` on standardised inputs.

        Whatever depends on `theta` alone runs once per distinct `theta` (a `theta`
        shared by a plate of trials is a stride-0 view, see :func:`~pyro_sbi.estimator.distinct`):
        the discrete head always, and, for one continuous column, the flow's networks,
        whose context is `(theta, c)` with few distinct values (see
        :meth:`_log_r_gathered`).
        """
        c = x_t[..., self.discrete].round().long()
        index = (c * self.strides).sum(-1)
        shared = distinct(theta_z)
        log_q = self.classifier(shared).log_softmax(-1)  # (*', K)
        s_z = x_t[..., self.continuous]
        categories = len(self._codes)
        rows, distinct_rows = index.numel(), shared.shape[:-1].numel()
        if len(self.continuous) == 1 and categories * distinct_rows <= rows // 2:
            # each trial's row of the (distinct theta, c) pairs, ordered as log_q.flatten()
            position = torch.arange(distinct_rows, device=index.device)
            row = position.reshape(shared.shape[:-1]).expand(index.shape) * categories + index
            log_c = _pick(log_q.reshape(-1), row)
            log_r = self._log_r_gathered(s_z, shared, row)
            if log_r is not None:
                return log_c + log_r
            if categories <= PER_CATEGORY_MAX:
                return log_c + self._log_r_per_category(s_z, shared, index)
        index = index.unsqueeze(-1)
        log_c = log_q.expand(index.shape[:-1] + log_q.shape[-1:]).gather(-1, index).squeeze(-1)
        context = torch.cat([theta_z, self._one_hot(c)], dim=-1)
        with validation_off():
            log_r = self.flow(context).log_prob(s_z)
        return log_c + log_r

    def _log_r_gathered(self, s_z: Tensor, shared: Tensor, row: Tensor) -> Tensor | None:
        r""":math:`\log q(s_z \mid c, \theta)` with the flow conditioned once per (θ, c).

        With one continuous column the flow's transforms are element-wise and their
        parameters come from networks of the context alone. The networks run on the
        `K` joint values of `c` at each distinct `theta`, and each trial's transforms
        are evaluated with the parameters of its own row, picked by index: one
        evaluation per trial, whose gradient is added into the rows it was picked from
        (a sum over the trials of each row, not a broadcast reduced afterwards). The
        numbers are those of one context per trial.

        Arguments:
            s_z: `(*, 1)` standardised continuous column.
            shared: `(*', D)` distinct standardised parameters, broadcastable to `*`.
            row: `(*)` each trial's row `position * K + c` among the `(*', K)` pairs of
                distinct `theta` (flattened) and joint category `c`.

        Returns:
            `(*)` log-densities, or `None` when the flow is not a zuko flow of the
            transforms evaluated here (:func:`_element_wise`) with a base free of the
            context; :meth:`_log_r_per_category` then serves.
        """
        flow = self.flow
        if (
            not isinstance(flow, zuko.flows.Flow)
            or type(flow).forward is not zuko.flows.Flow.forward
        ):
            return None
        k, d = self._codes.shape[0], shared.shape[-1]
        pairs = shared.reshape(-1, 1, d).expand(-1, k, d)
        context = torch.cat([pairs, self._codes.expand(len(pairs), -1, -1)], -1)
        context = context.reshape(-1, context.shape[-1])  # (prod(*') K, D + sum K_j)
        with validation_off():
            transform, base = flow.transform(context), flow.base(context)
        if base.batch_shape or base.event_shape != (1,):
            return None
        steps = transform.transforms if isinstance(transform, ComposedTransform) else [transform]
        value, ladj = s_z.reshape(-1), 0.0
        flat = row.reshape(-1)
        for step in steps:
            if not (isinstance(step, DependentTransform) and step.reinterpreted == 1):
                return None
            result = _element_wise(step.base, value, flat, len(context))
            if result is None:
                return None
            value, step_ladj = result
            ladj = ladj + step_ladj
        with validation_off():
            log_r = base.log_prob(value.unsqueeze(-1)) + ladj
        return log_r.reshape(row.shape)

    def _log_r_per_category(self, s_z: Tensor, shared: Tensor, index: Tensor) -> Tensor:
        r""":math:`\log q(s_z \mid c, \theta)` with the flow conditioned once per (θ, c).

        The path of the flows that :meth:`_log_r_gathered` does not evaluate itself. With
        one continuous column the flow's transforms are element-wise and their
        parameters come from networks of the context alone, so the flow is conditioned on
        the `K` joint values of `c` at each distinct `theta` (`K` times the distinct rows,
        instead of one context per trial), evaluated at every trial's `s_z` for each
        value, and the value each trial holds is picked out. Same numbers as one context
        per trial, at the cost of the networks on the distinct contexts plus `K`
        evaluations of the element-wise transforms per trial.

        Arguments:
            s_z: `(*, 1)` standardised continuous column.
            shared: `(*', D)` distinct standardised parameters, broadcastable to `*`.
            index: `(*)` joint category of each row.

        Returns:
            `(*)` log-densities.
        """
        k = len(self._codes)
        batch = s_z.shape[:-1]
        codes = self._codes.reshape((k,) + (1,) * (shared.dim() - 1) + self._codes.shape[-1:])
        context = torch.cat(
            [shared.expand((k,) + shared.shape), codes.expand((k,) + shared.shape[:-1] + (-1,))],
            dim=-1,
        )  # (K, *', D + sum K_j)
        with validation_off():
            log_r = self.flow(context).log_prob(s_z.expand((k,) + s_z.shape))  # (K, *)
        return log_r.gather(0, index.expand(batch).unsqueeze(0)).squeeze(0)

    def _one_hot(self, c: Tensor) -> Tensor:
        """`(*, len(discrete))` integer values to concatenated one-hot codes `(*, sum K_j)`."""
        return torch.cat(
            [F.one_hot(c[..., k], K) for k, K in enumerate(self._classes)], dim=-1
        ).to(self.x_loc.dtype)

    def loss(
        self,
        theta: Tensor,
        x: Tensor,
        score: Tensor | None = None,
        score_weight: float | Tensor = SCORE_WEIGHT,
    ) -> Tensor:
        r"""Negative log-likelihood of a batch, in standardised units, with the score term.

        Arguments:
            theta: `(n, D)` parameters.
            x: `(n, L)` simulator outputs.
            score: `(n, D)` joint scores :math:`\nabla_\theta \log p(x, z \mid \theta)` of
                the simulations; adds the SCANDAL term of :mod:`pyro_sbi.augment`.
            score_weight: the weight :math:`\alpha` of that term: a number, or `(D,)`
                weights of the squared residual per parameter (:func:`~pyro_sbi.fit` passes
                those of :func:`~pyro_sbi.augment.score_weights`).

        Returns:
            The scalar mean of :math:`-\log q(c \mid \theta) - \log q(s_z \mid c, \theta)`,
            plus :math:`\alpha \, \|\nabla_{\theta_z} \log q - \sigma_\theta \odot t\|^2` on
            average with a score.
        """
        x_t, theta_z = self._standardize(x.reshape(len(x), -1), theta)
        if score is None:
            return -self._log_prob_z(x_t, theta_z).mean()
        log_p, residual = score_loss(
            lambda theta_z: self._log_prob_z(x_t, theta_z), theta_z, score, self.theta_scale,
            score_weight,
        )  # fmt: skip
        return -log_p.mean() + residual

    def log_prob(self, x: Tensor, theta: Tensor) -> Tensor:
        r"""Learned log-likelihood :math:`\log q(x \mid \theta)`, differentiable in `theta`.

        A normalised density: a probability mass over the discrete columns times a density
        over the continuous ones. Non-positive values of a log-scaled column have density
        zero (`-inf`).

        Arguments:
            x: `(*, L)` simulator outputs; the discrete columns must hold integers within
                the range seen in training (a `ValueError` otherwise).
            theta: `(*, D)` parameters; broadcast against the batch shape of `x`.

        Returns:
            `(*)` log-densities over the broadcast batch shape.
        """
        x_t, theta_z = self._prepare(x, theta)
        if x_t.numel() == 0:  # no data points: no densities
            return x_t.new_zeros(x_t.shape[:-1])
        self.check_support(x)
        log_p = self._log_prob_z(x_t, theta_z)
        log_s = x_t[..., self.logged] * self.x_scale[self.logged] + self.x_loc[self.logged]
        log_p = log_p - self.x_scale[self.continuous].log().sum() - log_s.sum(-1)
        if self.logged:
            flat = x.reshape(x.shape[: x.dim() - 1] + (self.x_features,))
            positive = ~(flat[..., self.logged] <= 0).any(-1)
            log_p = torch.where(positive, log_p, torch.full_like(log_p, -math.inf))
        return log_p

    def forward(self, theta: Tensor) -> Distribution:
        r"""The learned likelihood at `theta` as a torch distribution over `x`.

        Arguments:
            theta: `(*, D)` parameters.

        Returns:
            A distribution with batch shape `*` and event shape `(L,)`.
        """
        self.check_trained()
        return _MixedLikelihood(self, theta)


def _strides(classes: list[int]) -> Tensor:
    """Mixed-radix strides turning per-column values into one joint category index."""
    strides = [math.prod(classes[k + 1 :]) for k in range(len(classes))]
    return torch.tensor(strides, dtype=torch.long)


def _pick(values: Tensor, row: Tensor) -> Tensor:
    """`values (R, *F)` at the rows `row (*)`: `(*, *F)`, its gradient added into `R` rows."""
    return values.index_select(0, row.reshape(-1)).reshape(row.shape + values.shape[1:])


def _element_wise(
    transform: Transform, x: Tensor, row: Tensor, rows: int
) -> tuple[Tensor, Tensor] | None:
    r"""`transform` at one value per trial, each with the parameters of its row.

    Arguments:
        transform: a one-feature zuko transform with `rows` rows of parameters (one
            per context), of shape `(rows, 1)` or `(rows, 1, B + 1)`.
        x: `(N,)` values.
        row: `(N,)` the row of each value.
        rows: the number `R` of rows.

    Returns:
        `y (N,)` and :math:`\log |\partial y / \partial x|` `(N,)`, the numbers of
        `transform.call_and_ladj` at each value's row; `None` for a transform other
        than :class:`zuko.transforms.MonotonicRQSTransform` and
        :class:`zuko.transforms.MonotonicAffineTransform` or parameters of another shape.
    """
    if isinstance(transform, MonotonicRQSTransform):
        if transform.horizontal.shape[:-1] != (rows, 1):
            return None
        return _spline(transform, x, row)
    if isinstance(transform, MonotonicAffineTransform):
        if transform.shift.shape != (rows, 1) or transform.log_scale.shape != (rows, 1):
            return None
        shift, scale, log_scale = (
            _pick(p.reshape(-1), row)
            for p in (transform.shift, transform.scale, transform.log_scale)
        )
        return x * scale + shift, log_scale
    return None


def _spline(transform: MonotonicRQSTransform, x: Tensor, row: Tensor) -> tuple[Tensor, Tensor]:
    r"""A monotonic rational-quadratic spline at one value per trial, parameters by row.

    The knots of each row are zuko's (`horizontal`, `vertical`, `derivatives`, of
    shape `(R, 1, B + 1)` for `B` bins); each value takes the two knots of its bin from
    its row, so the backward pass adds six numbers per value into the rows' knots.
    Outside the spline's domain the transform is the identity, as in zuko.

    Arguments:
        transform: the spline, with `R` rows of parameters.
        x: `(N,)` values.
        row: `(N,)` the row of each value.

    Returns:
        `y (N,)` and :math:`\log |\partial y / \partial x|` `(N,)`.
    """
    bins = transform.bins
    # (3, B + 1, R): every row's knots along the last dim, so that each pick gives
    # contiguous values and its gradient is one index_add along that dim
    knots = torch.stack([transform.horizontal, transform.vertical, transform.derivatives])
    knots = knots.reshape(3, -1, bins + 1).transpose(1, 2).contiguous()
    with torch.no_grad():  # each value's bin: the knots below it, counted as zuko does
        k = (knots[0].index_select(1, row) < x).sum(0, dtype=torch.int32).long() - 1
    mask = (k >= 0) & (k < bins)
    ends = torch.cat([knots[:, :-1], knots[:, 1:]]).flatten(1)  # (6, B R): a bin's two knots
    x0, y0, d0, x1, y1, d1 = ends.index_select(1, k % bins * knots.shape[-1] + row)
    inside = mask.to(x.dtype)
    width, height = x1 - x0, y1 - y0
    s = height / width
    z = inside * (x - x0) / width
    zz = z * (1 - z)
    denominator = s + (d0 + d1 - 2 * s) * zz
    y = y0 + height * (s * z**2 + d0 * zz) / denominator
    jacobian = s**2 * (2 * s * zz + d0 * (1 - z) ** 2 + d1 * z**2) / denominator**2
    return torch.where(mask, y, x), inside * jacobian.log()


class _MixedColumns(constraints.Constraint):
    """Vectors of `length` columns: integers >= 0, positive or real values per column."""

    event_dim = 1
    is_discrete = False

    def __init__(self, length: int, discrete: list[int], positive: list[int]) -> None:
        super().__init__()
        self.length, self.discrete, self.positive = length, discrete, positive

    def check(self, value: Tensor) -> Tensor:
        """`(*, L) -> (*)`: whether each vector lies in the support."""
        d = value[..., self.discrete]
        ok = ((d == d.round()) & (d >= 0)).all(-1)
        ok = ok & (value[..., self.positive] > 0).all(-1)
        return ok & (value == value).all(-1)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(discrete={self.discrete}, positive={self.positive}, "
            f"length={self.length})"
        )


class _MixedLikelihood(EstimatorDistribution):
    r""":math:`q(x \mid \theta)` of an MNLE for fixed `theta`, as a torch distribution."""

    @torch.no_grad()
    def sample(self, sample_shape: Size = Size()) -> Tensor:  # noqa: B008
        estimator = self.estimator
        shape = Size(sample_shape) + self.batch_shape
        theta_z = self._theta_z()
        logits = estimator.classifier(theta_z).expand(shape + (-1,))
        index = torch.distributions.Categorical(logits=logits).sample()
        classes = torch.as_tensor(estimator.num_classes, device=index.device)
        c = (index.unsqueeze(-1) // estimator.strides) % classes
        context = torch.cat(
            [theta_z.expand(shape + theta_z.shape[-1:]), estimator._one_hot(c)], -1
        )
        with validation_off():
            s_z = estimator.flow(context).sample()
        cont = estimator.continuous
        x = torch.empty(shape + (estimator.x_features,), dtype=s_z.dtype, device=s_z.device)
        x[..., estimator.discrete] = c.to(x.dtype)
        x[..., cont] = s_z * estimator.x_scale[cont] + estimator.x_loc[cont]
        x[..., estimator.logged] = x[..., estimator.logged].exp()
        return x
