r"""Reference posteriors from an exact (unnormalised) log posterior density.

Two samplers, neither of which involves a learned surrogate:

- :func:`grid_posterior`, for a few parameters (:math:`D \le 3`): the log density at the
  centres of a regular grid over a box, a cell drawn with its probability and a point
  drawn uniformly within the cell. The grid first covers the prior's box, then zooms
  onto the region within `threshold` nats of the largest value and refines the axes
  along which neighbouring cells still differ by more than `roughness` nats on average
  (cells of about an eighth of a standard deviation); it raises when that needs more
  points than it may evaluate.
- :func:`rejection_posterior`, for more parameters: rejection sampling from a proposal
  (a multivariate Student-t at the Laplace approximation, :func:`laplace_proposal`),
  with the largest importance weight seen so far as the bound; a weight above the
  bound restarts the draws with the new bound, so the accepted draws are exact
  whenever the bound holds.
"""

from __future__ import annotations

__all__ = ["grid_posterior", "grid_reference", "laplace_proposal", "rejection_posterior"]

import math
from collections.abc import Callable, Sequence

import pyro.distributions as dist
import torch
from torch import Tensor

LogDensity = Callable[[Tensor], Tensor]  # theta (m, D) -> (m,), -inf outside the support


def _evaluate(log_density: LogDensity, low: Tensor, high: Tensor, cells: list[int], chunk: int):
    width = (high - low) / torch.tensor(cells, dtype=low.dtype)
    axes = [low[d] + width[d] * (torch.arange(n, dtype=low.dtype) + 0.5)
            for d, n in enumerate(cells)]  # fmt: skip
    mesh = torch.cartesian_prod(*axes).reshape(-1, len(low))
    with torch.no_grad():
        log_p = torch.cat([log_density(part).to(low.dtype) for part in mesh.split(chunk)])
    return mesh, width, torch.nan_to_num(log_p, nan=-math.inf)


def _roughness(log_p: Tensor, cells: list[int]) -> list[float]:
    """Per axis, the mass-weighted mean change of the log density between neighbours."""
    grid = log_p.reshape(cells)
    probs = torch.softmax(log_p, 0).reshape(cells)
    out = []
    for d in range(len(cells)):
        if cells[d] < 2:
            out.append(math.inf)
            continue
        step = grid.diff(dim=d).abs()
        weight = probs.narrow(d, 0, cells[d] - 1) + probs.narrow(d, 1, cells[d] - 1)
        step = torch.where(weight > 0, step, 0.0)  # pairs of two impossible cells
        step = torch.nan_to_num(step, posinf=50.0).clamp(max=50.0)  # an edge of the support
        out.append(float((weight * step).sum() / weight.sum()))
    return out


def grid_reference(
    log_likelihood: Callable[[Tensor, Tensor], Tensor], low: Sequence[float],
    high: Sequence[float], *, cells: int,
) -> Callable[..., Tensor]:  # fmt: skip
    """A task's reference method on a grid: `sample_posterior(x, num_samples, seed=0)`.

    Arguments:
        log_likelihood: the exact `log p(x | theta)`, `x (*, d)` and `theta (*, D)`
            broadcast; under the task's uniform prior on the box `low, high` it is the
            unnormalised log posterior.
        low: the lower corner of the prior's box, `D` numbers.
        high: its upper corner.
        cells: the first grid's cells per dimension (see :func:`grid_posterior`).

    Returns:
        `sample_posterior(x, num_samples, seed=0) -> (num_samples, D)` draws, computed in
        float64.
    """

    def sample_posterior(x: Tensor, num_samples: int, seed: int = 0) -> Tensor:
        x = x.to(torch.float64)
        return grid_posterior(lambda theta: log_likelihood(x, theta), low, high, num_samples,
                              seed=seed, cells=cells)  # fmt: skip

    sample_posterior.__doc__ = (
        f"`(num_samples, {len(low)})` posterior draws for any `x`, on a grid of {cells} "
        "cells per parameter at first."
    )
    return sample_posterior


def grid_posterior(
    log_density: LogDensity,
    low: Sequence[float],
    high: Sequence[float],
    num_samples: int,
    *,
    seed: int,
    cells: int,
    threshold: float = 30.0,
    roughness: float = 0.1,
    levels: int = 8,
    max_points: int = 1 << 23,
    chunk: int = 1 << 17,
) -> Tensor:
    r"""Draws from the density :math:`\propto \exp(\text{log\_density})` on a refined grid.

    The grid starts with `cells` cells per dimension over the box `low, high`. At each
    level it zooms onto the bounding box (with a margin of 1.5 cells) of the cells within
    `threshold` nats of the largest when that halves a side; otherwise, along each axis
    where neighbouring cells' log densities differ on average (weighted by their mass) by
    more than `roughness` nats, it makes the cells proportionally smaller. A Gaussian with
    standard deviation :math:`\sigma` along an axis meets `roughness=0.1` with cells of
    about :math:`\sigma / 8`. A cell is drawn with its probability and a point uniformly
    within it.

    Arguments:
        log_density: the unnormalised log posterior, `theta (m, D) -> (m,)`, evaluated in
            float64; -inf outside the support.
        low: the box's lower corner (the prior's support), `D` numbers.
        high: its upper corner.
        num_samples: draws returned.
        seed: seeds the draws.
        cells: cells per dimension at the start.
        threshold: cells more than this many nats below the largest are left out of the
            zoomed box.
        roughness: the largest mean change of the log density between neighbouring cells.
        levels: grids evaluated at most.
        max_points: the most grid points evaluated at once.
        chunk: rows evaluated together.

    Returns:
        `(num_samples, D)` draws in the default dtype.

    Example:
        >>> normal = lambda theta: -0.5 * (theta**2).sum(-1)
        >>> draws = grid_posterior(normal, [-5.0, -5.0], [5.0, 5.0], 1000, seed=0, cells=100)
        >>> draws.shape
        torch.Size([1000, 2])
    """
    prior_low = torch.tensor(low, dtype=torch.float64)
    prior_high = torch.tensor(high, dtype=torch.float64)
    box_low, box_high = prior_low, prior_high
    dim = len(prior_low)
    sizes = [cells] * dim
    for level in range(levels):
        mesh, width, log_p = _evaluate(log_density, box_low, box_high, sizes, chunk)
        if not torch.isfinite(log_p).any():
            raise ValueError("grid_posterior: the log density is -inf on every grid point")
        kept = mesh[log_p > log_p.max() - threshold]
        new_low = torch.maximum(kept.min(0).values - 1.5 * width, prior_low)
        new_high = torch.minimum(kept.max(0).values + 1.5 * width, prior_high)
        if bool(((new_high - new_low) < 0.5 * (box_high - box_low)).any()):
            box_low, box_high = new_low, new_high
            continue
        rough = _roughness(log_p, sizes)
        if max(rough) <= roughness:
            break
        sizes = [n if r <= roughness else n * min(4, math.ceil(r / roughness))
                 for n, r in zip(sizes, rough, strict=True)]  # fmt: skip
        if math.prod(sizes) > max_points or level == levels - 1:
            raise RuntimeError(
                f"grid_posterior: neighbouring cells' log densities differ by {rough} nats "
                f"on average with {list(mesh.shape)} points over [{box_low.tolist()}, "
                f"{box_high.tolist()}] (at most {roughness} wanted)"
            )
    probs = torch.softmax(log_p, 0)
    generator = torch.Generator().manual_seed(seed)
    index = torch.multinomial(probs, num_samples, replacement=True, generator=generator)
    jitter = torch.rand(num_samples, dim, generator=generator, dtype=torch.float64) - 0.5
    return (mesh[index] + jitter * width).to(torch.get_default_dtype())


def laplace_proposal(
    log_density: LogDensity, start: Tensor, *, df: float = 5.0, inflate: float = 1.5
) -> dist.MultivariateStudentT:
    r"""A multivariate Student-t at the mode of `log_density`.

    Its covariance is the inverse Hessian of `-log_density` at the mode times `inflate`.

    Arguments:
        log_density: the unnormalised log posterior, `theta (m, D) -> (m,)`, smooth.
        start: `(D,)` where the search for the mode starts.
        df: the Student-t's degrees of freedom (heavier tails than the posterior's).
        inflate: the covariance's factor.

    Returns:
        A float64 distribution with event shape `(D,)`.
    """
    theta = start.detach().to(torch.float64).clone().requires_grad_(True)
    optimiser = torch.optim.LBFGS([theta], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = -log_density(theta[None])[0]
        loss.backward()
        return loss

    for _ in range(5):
        optimiser.step(closure)
    mode = theta.detach()
    hessian = torch.autograd.functional.hessian(lambda t: log_density(t[None])[0], mode)
    covariance = torch.linalg.inv(-hessian) * inflate
    covariance = 0.5 * (covariance + covariance.T)
    return dist.MultivariateStudentT(
        torch.tensor(df, dtype=torch.float64), mode, torch.linalg.cholesky(covariance)
    )


def rejection_posterior(
    log_density: LogDensity,
    proposal: dist.Distribution,
    num_samples: int,
    *,
    seed: int,
    batch: int = 100_000,
    max_draws: int = 50_000_000,
) -> Tensor:
    r"""Exact draws by rejection from `proposal`, bounded by the largest weight seen.

    Each proposal :math:`\theta` is kept with probability :math:`w(\theta) / M`, where
    :math:`w = \exp(\text{log\_density} - \log q)` and :math:`M` is the largest weight of
    every proposal drawn so far. When a new proposal's weight exceeds :math:`M`, the draws
    kept so far are discarded and the sampling restarts with the new bound, so that every
    returned draw was accepted under one bound that held for all proposals drawn.

    Arguments:
        log_density: the unnormalised log posterior, `theta (m, D) -> (m,)`.
        proposal: a distribution with event shape `(D,)` whose tails are heavier than
            the posterior's.
        num_samples: draws returned.
        seed: seeds the draws (torch's global generator, restored afterwards).
        batch: proposals drawn together.
        max_draws: proposals drawn at most before giving up.

    Returns:
        `(num_samples, D)` draws in the default dtype.
    """
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        theta = proposal.sample((batch,))
        bound = float((log_density(theta) - proposal.log_prob(theta)).max())
        kept, total, drawn = [], 0, 0
        while total < num_samples:
            if drawn >= max_draws:
                raise RuntimeError(
                    f"rejection_posterior: {total} of {num_samples} draws accepted after "
                    f"{drawn} proposals"
                )
            theta = proposal.sample((batch,))
            log_w = log_density(theta) - proposal.log_prob(theta)
            drawn += batch
            if float(log_w.max()) > bound:
                bound = float(log_w.max())
                kept, total = [], 0
                continue
            accept = torch.rand(batch, dtype=log_w.dtype).log() < log_w - bound
            kept.append(theta[accept])
            total += int(accept.sum())
    return torch.cat(kept)[:num_samples].to(torch.get_default_dtype())
