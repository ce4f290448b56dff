r"""The networks the estimators share, and the names they are saved under.

:class:`ResidualMLP` is the plain network of the classifiers and of MNLE's discrete head.
A flow class of `zuko.flows` and an activation class of `torch.nn` are saved by name
(:func:`flow_name`) and found again at load (:func:`flow_by_name`,
:func:`activation_by_name`).
"""

from __future__ import annotations

__all__ = ["ResidualMLP", "activation_by_name", "flow_by_name", "flow_name"]

import zuko
from torch import Tensor, nn


def flow_name(flow_class: object) -> str | None:
    """The name of a flow class in `zuko.flows`, or `None` for a class from elsewhere.

    Example:
        >>> flow_name(zuko.flows.MAF), flow_name(object)
        ('MAF', None)
    """
    name = getattr(flow_class, "__name__", None)
    return name if getattr(zuko.flows, name or "", None) is flow_class else None


def flow_by_name(name: str | None, owner: str) -> type[zuko.flows.Flow]:
    """The flow class `zuko.flows.<name>`; a clear error for a custom class (`name=None`).

    Arguments:
        name: a name written by :func:`flow_name`.
        owner: the estimator class reading it, for the message.
    """
    build = getattr(zuko.flows, name, None) if name is not None else None
    if not (isinstance(build, type) and issubclass(build, zuko.flows.Flow)):
        raise ValueError(
            f"the saved {owner} used a flow class outside zuko.flows: pass it again, "
            f"{owner}.load(path, flow=MyFlow)"
        )
    return build


def activation_by_name(name: str, owner: str) -> type[nn.Module]:
    """The activation class `torch.nn.<name>`, or a clear error.

    Example:
        >>> activation_by_name("ELU", "NRE")
        <class 'torch.nn.modules.activation.ELU'>
    """
    activation = getattr(nn, name, None)
    if not (isinstance(activation, type) and issubclass(activation, nn.Module)):
        raise ValueError(f"unknown activation {name!r} in the saved {owner}")
    return activation


class ResidualMLP(nn.Module):
    r"""A residual multi-layer perceptron, `(*, in_features) -> (*, out_features)`.

    A linear layer to `hidden_features`, `num_blocks` residual blocks
    `h + W_2 act(W_1 act(h))` whose last layer starts at zero (so each block starts as
    the identity), then `act` and a linear output layer.

    Arguments:
        in_features: input size.
        out_features: output size.
        hidden_features: width of the hidden layers.
        num_blocks: number of residual blocks.
        activation: the activation class (e.g. `nn.ELU`).

    Example:
        >>> import torch
        >>> net = ResidualMLP(3, 2, hidden_features=16)
        >>> net(torch.zeros(5, 3)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        hidden_features: int = 64,
        num_blocks: int = 2,
        activation: type[nn.Module] = nn.ELU,
    ) -> None:
        super().__init__()
        self.inner = nn.Linear(in_features, hidden_features)
        self.blocks = nn.ModuleList(_Block(hidden_features, activation) for _ in range(num_blocks))
        self.outer = nn.Sequential(activation(), nn.Linear(hidden_features, out_features))

    def forward(self, h: Tensor) -> Tensor:
        """`(*, in_features) -> (*, out_features)`."""
        h = self.inner(h)
        for block in self.blocks:
            h = block(h)
        return self.outer(h)


class _Block(nn.Module):
    """`h + W2 act(W1 act(h))`, with the last layer started at zero (an identity)."""

    def __init__(self, hidden: int, activation: type[nn.Module]) -> None:
        super().__init__()
        last = nn.Linear(hidden, hidden)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(activation(), nn.Linear(hidden, hidden), activation(), last)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.net(h)
