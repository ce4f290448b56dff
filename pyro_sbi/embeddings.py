r"""Embedding networks: data of many values summarised into a few learned features.

An estimator given `embedding=` (:class:`~pyro_sbi.NPE`, :class:`~pyro_sbi.NRE`) maps
the z-scored data `x (N, *x_shape)` to features `(N, E)` with it and trains both
networks together. Each network here is sized lazily, at its first call (the estimator
makes that call when it is built, with the shape of the training data), so it is
constructed without dimensions, like the estimators.

- :class:`DeepSet` summarises a set of i.i.d. trials `(N, T, *trial_shape)`:
  :math:`\rho\big(\frac{1}{n}\sum_{t} \phi(x_t),\, \log n,\, n^{-1/2}\big)` over the
  :math:`n` trials present. The mean is invariant to the order of the trials; the count
  is given beside it because a posterior from :math:`n` trials depends on :math:`n`
  (with a Gaussian mean, :math:`\bar x` and :math:`n` are sufficient; :math:`\bar x`
  alone is not). Trials whose values are NaN are missing, so sets of different sizes
  share one padded tensor.
- :class:`CNN1d` and :class:`GRU` summarise time series `(N, L)` or `(N, L, C)`.
- :class:`ObservationEmbedding` is what :class:`~pyro_sbi.AmortizedGuide` builds: the
  flat observation of several sites, each site's block given to its own network.

An embedding may tell the estimator which features of `x` are exchangeable copies of
one another (:meth:`DeepSet.tied_features`); the estimator then z-scores them with one
shared location and scale, so the order of the trials changes nothing at all.

References:
    | Deep Sets (Zaheer et al., 2017)
    | https://arxiv.org/abs/1703.06114

    | Neural Approximate Sufficient Statistics for Implicit Models (Chen et al., 2021)
    | https://arxiv.org/abs/2010.10079
"""

from __future__ import annotations

__all__ = ["CNN1d", "DeepSet", "GRU", "ObservationEmbedding", "tied_features"]

import math
from collections.abc import Sequence

import torch
from torch import Size, Tensor, nn

from pyro_sbi.networks import ResidualMLP


def tied_features(embedding: nn.Module | None, x_shape: Size) -> Tensor | None:
    """The group of each flat feature of `x` whose features share z-score statistics.

    Arguments:
        embedding: an estimator's embedding network, or `None`.
        x_shape: the shape of one `x`.

    Returns:
        `(L,)` integer group ids (features with one id are exchangeable), or `None`
        when the embedding declares none (every feature its own statistics).

    Example:
        >>> tied_features(DeepSet(), Size([3, 2]))
        tensor([0, 1, 0, 1, 0, 1])
    """
    ties = getattr(embedding, "tied_features", None)
    return None if ties is None else ties(Size(x_shape))


class _Lazy(nn.Module):
    """Builds its layers at the first call, from the size of the data it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.in_shape: Size | None = None

    def _ensure(self, shape: Size) -> None:
        shape = Size(shape)
        if self.in_shape is None:
            self.in_shape = shape
            self._make(shape)
        elif shape != self.in_shape:
            raise ValueError(
                f"{type(self).__name__}: it was built for inputs of shape (N, *, "
                f"{', '.join(map(str, self.in_shape))}); got (..., "
                f"{', '.join(map(str, shape))}). Give each estimator a new instance"
            )

    def _make(self, shape: Size) -> None:
        raise NotImplementedError


class DeepSet(_Lazy):
    r"""A permutation-invariant embedding of a set of trials, `(N, T, *trial) -> (N, E)`.

    Each trial goes through the network :math:`\phi`; the mean over the trials present,
    with :math:`\log n` and :math:`n^{-1/2}` of their number :math:`n`, goes through
    :math:`\rho`. A trial holding a NaN is missing (padding), so a batch holds sets of
    different sizes; each set needs at least one trial.

    Arguments:
        out_features: the number `E` of features.
        hidden_features: width of :math:`\phi`, :math:`\rho`, and of the pooled features.
        num_blocks: residual blocks of each of :math:`\phi` and :math:`\rho`.
        activation: the activation class.

    Example:
        >>> net = DeepSet(out_features=8)
        >>> x = torch.randn(5, 10, 2)  # 5 sets of 10 trials of 2 values
        >>> net(x).shape
        torch.Size([5, 8])
        >>> torch.allclose(net(x), net(x[:, torch.randperm(10)]), atol=1e-6)
        True
        >>> x[0, 4:] = float("nan")  # the first set has 4 trials
        >>> torch.allclose(net(x)[0], net(x[:1, :4])[0], atol=1e-6)
        True
    """

    def __init__(
        self,
        out_features: int = 32,
        *,
        hidden_features: int = 64,
        num_blocks: int = 2,
        activation: type[nn.Module] = nn.ELU,
    ) -> None:
        super().__init__()
        self.out_features, self.hidden_features = out_features, hidden_features
        self.num_blocks, self.activation = num_blocks, activation
        self.phi = self.rho = None

    def _make(self, shape: Size) -> None:
        options = {"hidden_features": self.hidden_features, "num_blocks": self.num_blocks,
                   "activation": self.activation}  # fmt: skip
        self.phi = ResidualMLP(math.prod(shape), self.hidden_features, **options)
        self.rho = ResidualMLP(self.hidden_features + 2, self.out_features, **options)

    def tied_features(self, x_shape: Size) -> Tensor:
        """`(L,)`: trial `t`'s feature `j` of `x (T, *trial)` shares group `j` with all trials."""
        size = math.prod(x_shape[1:])
        return torch.arange(size).repeat(x_shape[0])

    def forward(self, x: Tensor) -> Tensor:
        """`(N, T, *trial) -> (N, E)`; trials holding a NaN are left out."""
        if x.dim() < 2:
            raise ValueError(
                f"DeepSet: x must have shape (N, T, *trial_shape); got {tuple(x.shape)}"
            )
        self._ensure(x.shape[2:])
        flat = x.reshape(x.shape[:2] + (-1,))
        present = ~torch.isnan(flat).any(-1)  # (N, T)
        h = self.phi(torch.where(present.unsqueeze(-1), flat, torch.zeros_like(flat)))
        n = present.sum(-1, keepdim=True).to(h.dtype)
        pooled = (h * present.unsqueeze(-1).to(h.dtype)).sum(1) / n.clamp(min=1.0)
        counts = torch.cat([n.clamp(min=1.0).log(), n.clamp(min=1.0).rsqrt()], -1)
        return self.rho(torch.cat([pooled, counts], -1))


class CNN1d(_Lazy):
    r"""A 1-D convolutional embedding of time series, `(N, L)` or `(N, L, C) -> (N, E)`.

    Convolutions with `channels[i]` output channels each (ReLU, then max-pooling by 2),
    then the mean over time of the last layer (so series of any length map to features
    of one size) and a linear layer to `E` features.

    Arguments:
        out_features: the number `E` of features.
        channels: output channels of each convolution.
        kernel_size: the width of each convolution (odd; the series keeps its length).

    Example:
        >>> net = CNN1d(out_features=8)
        >>> net(torch.randn(5, 100)).shape, net(torch.randn(5, 100)).dtype
        (torch.Size([5, 8]), torch.float32)
        >>> CNN1d()(torch.randn(5, 100, 3)).shape  # 3 channels
        torch.Size([5, 32])
    """

    def __init__(
        self, out_features: int = 32, *, channels: Sequence[int] = (16, 32), kernel_size: int = 5
    ) -> None:
        super().__init__()
        self.out_features, self.kernel_size = out_features, kernel_size
        self.channels = tuple(channels)
        self.net = None

    def _make(self, shape: Size) -> None:
        layers, previous = [], shape[0]
        for width in self.channels:
            pad = self.kernel_size // 2
            layers += [nn.Conv1d(previous, width, self.kernel_size, padding=pad), nn.ReLU(),
                       nn.MaxPool1d(2, ceil_mode=True)]  # fmt: skip
            previous = width
        self.net = nn.Sequential(*layers)
        self.head = nn.Linear(previous, self.out_features)

    def forward(self, x: Tensor) -> Tensor:
        """`(N, L)` or `(N, L, C)` -> `(N, E)`."""
        x = _series(x, "CNN1d").transpose(1, 2)  # (N, C, L)
        self._ensure(x.shape[1:2])
        return self.head(self.net(x).mean(-1))


class GRU(_Lazy):
    r"""A recurrent embedding of time series, `(N, L)` or `(N, L, C) -> (N, E)`.

    A gated recurrent unit runs over time; its last hidden state goes through a linear
    layer to `E` features. Series of any length map to features of one size.

    Arguments:
        out_features: the number `E` of features.
        hidden_features: the size of the hidden state.
        num_layers: stacked recurrent layers.

    Example:
        >>> GRU(out_features=8)(torch.randn(5, 100)).shape
        torch.Size([5, 8])
    """

    def __init__(
        self, out_features: int = 32, *, hidden_features: int = 32, num_layers: int = 1
    ) -> None:
        super().__init__()
        self.out_features, self.hidden_features = out_features, hidden_features
        self.num_layers = num_layers
        self.gru = None

    def _make(self, shape: Size) -> None:
        self.gru = nn.GRU(shape[0], self.hidden_features, self.num_layers, batch_first=True)
        self.head = nn.Linear(self.hidden_features, self.out_features)

    def forward(self, x: Tensor) -> Tensor:
        """`(N, L)` or `(N, L, C)` -> `(N, E)`."""
        x = _series(x, "GRU")
        self._ensure(x.shape[2:])
        _, h = self.gru(x)
        return self.head(h[-1])


def _series(x: Tensor, owner: str) -> Tensor:
    """`(N, L)` or `(N, L, C)` as `(N, L, C)`, or a clear error."""
    if x.dim() == 2:
        return x.unsqueeze(-1)
    if x.dim() != 3:
        raise ValueError(
            f"{owner}: x must be time series of shape (N, L) or (N, L, C); got {tuple(x.shape)}"
        )
    return x


class ObservationEmbedding(nn.Module):
    r"""Embeds a flat observation of several blocks, each with its own network.

    :class:`~pyro_sbi.AmortizedGuide` concatenates its observed sites into one flat
    vector; this module cuts it into the sites' blocks, reshapes each to its own shape,
    embeds it with its network (`None`: the block's values as they are) and
    concatenates the results.

    An estimator saved from a guide loads with a new one of the same layout:
    `NPE.load(path, embedding=ObservationEmbedding(shapes, networks))`.

    Arguments:
        shapes: the shape of each block, in order (a set of trials: `(T, *trial)`).
        embeddings: a network or `None` for each block.

    Example:
        >>> net = ObservationEmbedding([(4, 2), (3,)], [DeepSet(out_features=8), None])
        >>> net(torch.randn(5, 4 * 2 + 3)).shape
        torch.Size([5, 11])
        >>> net.tied_features(Size([11]))
        tensor([0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 4])
    """

    def __init__(
        self, shapes: Sequence[Sequence[int]], embeddings: Sequence[nn.Module | None]
    ) -> None:
        super().__init__()
        if len(shapes) != len(embeddings):
            raise ValueError("ObservationEmbedding: one embedding (or None) for each block")
        self.shapes = [Size(shape) for shape in shapes]
        self.embeddings = nn.ModuleList(nn.Identity() if e is None else e for e in embeddings)

    @property
    def features(self) -> int:
        """The flat size `L` of the observation."""
        return sum(math.prod(shape) for shape in self.shapes)

    def tied_features(self, x_shape: Size) -> Tensor:
        """`(L,)` group ids: each block's own ties (if its network has any), offset."""
        groups, offset = [], 0
        for shape, embedding in zip(self.shapes, self.embeddings, strict=True):
            ties = tied_features(embedding, shape)
            if ties is None:
                ties = torch.arange(math.prod(shape))
            groups.append(ties + offset)
            offset += int(ties.max()) + 1 if len(ties) else 0
        return torch.cat(groups)

    def forward(self, x: Tensor) -> Tensor:
        """`(N, L) -> (N, E)`: the concatenated features of the blocks."""
        if x.dim() != 2 or x.shape[-1] != self.features:
            raise ValueError(
                f"ObservationEmbedding: x must have shape (N, {self.features}); "
                f"got {tuple(x.shape)}"
            )
        parts, start = [], 0
        for shape, embedding in zip(self.shapes, self.embeddings, strict=True):
            size = math.prod(shape)
            block = x[:, start : start + size].reshape((len(x), *shape))
            features = embedding(block)
            parts.append(features.reshape(len(x), -1))
            start += size
        return torch.cat(parts, -1)
