r"""Calling a black-box simulator over many parameters.

A simulator is any callable. By default it is *batched*: it maps parameters
`theta (n, D)` to outputs `x (n, *x_shape)`, torch tensors or numpy arrays in and out.
With `batched=False` it maps one `theta (D,)` to one `x (*x_shape)` and
:func:`simulate` loops over the rows.
"""

from __future__ import annotations

__all__ = ["simulate"]

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm


def simulate(
    simulator: Callable,
    theta: Tensor | np.ndarray,
    *,
    batch_size: int | None = None,
    batched: bool = True,
    numpy: bool = False,
    progress: bool = True,
) -> Tensor:
    r"""Runs `simulator` once for each row of `theta`.

    Arguments:
        simulator: a callable `theta (n, D) -> x (n, *x_shape)`, or with
            `batched=False`, `theta (D,) -> x (*x_shape)`.
        theta: `(n, D)` parameters.
        batch_size: rows per call of a batched simulator (all at once when `None`).
        batched: whether `simulator` takes a batch of parameters.
        numpy: give `theta` to the simulator as a numpy array instead of a tensor.
        progress: show a progress bar.

    Returns:
        `(n, *x_shape)` simulator outputs, a tensor of torch's default dtype.

    Example:
        >>> simulator = lambda theta: theta + torch.randn_like(theta)
        >>> simulate(simulator, torch.zeros(10, 2), batch_size=4, progress=False).shape
        torch.Size([10, 2])
    """
    theta = torch.as_tensor(theta).detach()
    if theta.dim() != 2:
        raise ValueError(f"simulate expects theta of shape (n, D); got {tuple(theta.shape)}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size}")
    n = len(theta)
    if not batched:
        batch_size = 1
    elif batch_size is None:
        batch_size = max(n, 1)

    outputs = []
    name = getattr(simulator, "__name__", type(simulator).__name__)
    with tqdm(total=n, desc=f"simulating {name}", unit="sim", disable=not progress) as bar:
        for start in range(0, n, batch_size):
            chunk = theta[start : start + batch_size]
            outputs.append(_call(simulator, chunk, batched=batched, numpy=numpy))
            bar.update(len(chunk))

    shapes = {tuple(x.shape[1:]) for x in outputs}
    if len(shapes) > 1:
        raise ValueError(f"simulator {name} returned outputs of different shapes: {shapes}")
    if not outputs:
        return torch.empty(0)
    return torch.cat(outputs)


def _call(simulator: Callable, theta: Tensor, *, batched: bool, numpy: bool) -> Tensor:
    """One call of the simulator on `theta (b, D)`, returning `x (b, *x_shape)`."""
    name = getattr(simulator, "__name__", type(simulator).__name__)
    if batched:
        x = _as_tensor(simulator(theta.numpy() if numpy else theta))
        if x.dim() == 0 or x.shape[0] != len(theta):
            raise ValueError(
                f"batched simulator {name} returned shape {tuple(x.shape)} for theta of shape "
                f"{tuple(theta.shape)}; it must return (n, *x_shape) with n = {len(theta)}. "
                "Pass batched=False for a simulator that takes one parameter vector at a time."
            )
        return x
    row = theta[0]
    return _as_tensor(simulator(row.numpy() if numpy else row)).unsqueeze(0)


def _as_tensor(x) -> Tensor:
    x = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    return x.detach().to(torch.get_default_dtype())
