r"""The log joint density of a Pyro model at many points of its latent space at once.

:class:`ModelDensity` maps a point `z` of the unconstrained latent space (every latent
site through `biject_to(support)`, flattened and concatenated) to the model's log joint
density there, Jacobians included, for many points in one run of the model. The slice
sampler (:class:`~pyro_sbi.infer.SliceMCMC`) and the SIR initialisation
(:mod:`pyro_sbi.sir`) run on it.
"""

from __future__ import annotations

__all__ = ["LatentSite", "ModelDensity"]

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from pyro.distributions.transforms import biject_to
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor

from pyro_sbi.distribution import refuse_latent_ratio
from pyro_sbi.runner import ModelRunner, sample_sites


@dataclass(frozen=True)
class LatentSite:
    """One latent sample site of a model, as a block of the unconstrained latent space.

    Attributes:
        name: the site's name.
        shape: the constrained value's shape, as in an ordinary run of the model.
        transform: `biject_to(support)`, unconstrained -> constrained.
        free_shape: the unconstrained value's shape.
        batch_dims: the number of batch dims of the site's distribution.
    """

    name: str
    shape: torch.Size  # constrained value, as in an ordinary run of the model
    transform: torch.distributions.Transform
    free_shape: torch.Size  # unconstrained value
    batch_dims: int  # batch dims of the site's distribution

    @property
    def size(self) -> int:
        """The number of unconstrained coordinates of the site."""
        return math.prod(self.free_shape)


def unconstrain(latents: Sequence[LatentSite], values: Mapping[str, Tensor]) -> Tensor:
    """`z (n, D)`: constrained values `{name: (n, *shape)}` mapped by each site's transform.

    Arguments:
        latents: the sites, in the order of their blocks of `z`.
        values: every site's values.
    """
    parts = []
    for latent in latents:
        value = values[latent.name]
        parts.append(latent.transform.inv(value).reshape(value.shape[0], -1))
    return torch.cat(parts, -1)


class ModelDensity:
    """The log joint density of a model at many points of its latent space in one call.

    Points are rows `z (n, D)` of the unconstrained latent space (every latent site
    mapped through `biject_to(support)` and flattened). The model runs once under an
    extra plate of `n` draws, left of all its own plates; a model that cannot take such
    a plate (fixed `expand` shapes, Python control flow on values) runs once per point
    (see :class:`~pyro_sbi.runner.ModelRunner`, `runner`).

    Arguments:
        model: a Pyro model with continuous latent sites.
        args, kwargs: the model's arguments (observed sites carry their data in them).

    Attributes:
        latents: the latent sites, in the order of their blocks of `z`.
        observed: the names of the observed sites.
        dim: `D`, the size of the unconstrained latent space.

    Example:
        >>> import pyro
        >>> import pyro.distributions as dist
        >>> def model(y):
        ...     sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
        ...     pyro.sample("y", dist.Normal(0.0, sigma), obs=y)
        >>> density = ModelDensity(model, (torch.tensor(0.5),), {})
        >>> density.dim, density(torch.zeros(4, 1)).shape
        (1, torch.Size([4]))
    """

    def __init__(self, model: Callable, args: tuple, kwargs: dict) -> None:
        self.model, self.args, self.kwargs = model, args, kwargs
        self.runner = ModelRunner(model, args, kwargs)
        trace = prune_subsample_sites(self.runner.base)
        self.latents: list[LatentSite] = []
        self.observed: list[str] = []
        for name, site in sample_sites(trace):
            fn, value = site["fn"], site["value"]
            if site["is_observed"]:
                self.observed.append(name)
                continue
            refuse_latent_ratio(fn, name)
            if fn.support.is_discrete:
                raise ValueError(
                    f"site {name!r} is a discrete latent variable; slice sampling and SIR "
                    "here need continuous latent sites (marginalise it out, or use Pyro's "
                    "enumeration with NUTS)"
                )
            transform = biject_to(fn.support)
            free = transform.inv(value)
            self.latents.append(
                LatentSite(name, value.shape, transform, free.shape, len(fn.batch_shape))
            )
        if not self.latents:
            raise ValueError("the model has no latent sample sites to infer")
        self.dim = sum(latent.size for latent in self.latents)

    # unconstrained <-> constrained
    def constrain(self, z: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Constrained values `{name: (n, *shape)}` and `log |det J| (n,)` at `z (n, D)`."""
        n, start = z.shape[0], 0
        values, log_det = {}, torch.zeros(n, dtype=z.dtype)
        for latent in self.latents:
            free = z[:, start : start + latent.size].reshape(n, *latent.free_shape)
            start += latent.size
            value = latent.transform(free)
            ladj = latent.transform.log_abs_det_jacobian(free, value)
            log_det = log_det + ladj.reshape(n, -1).sum(-1)
            values[latent.name] = value
        return values, log_det

    def unconstrain(self, values: dict[str, Tensor]) -> Tensor:
        """`z (n, D)` from constrained values `{name: (n, *shape)}`."""
        return unconstrain(self.latents, values)

    def __call__(self, z: Tensor) -> Tensor:
        """Log joint density `(n,)` at unconstrained points `z (n, D)`.

        The Jacobian of the transforms is included; `-inf` where the density is not finite.
        """
        values, log_det = self.constrain(z)
        log_joint = self.run(values, z.shape[0])[0] + log_det
        return torch.nan_to_num(log_joint, nan=-math.inf, posinf=-math.inf)

    def run(self, values: dict[str, Tensor] | None, n: int) -> tuple[Tensor, Tensor, dict]:
        """Runs the model `n` times at once, conditioned on `values`.

        With `values=None` the latent sites are drawn from their priors. Returns the log
        joint `(n,)`, the log-likelihood of the observed sites `(n,)` and the latent
        values `{name: (n, *shape)}`.
        """
        runs, _ = self.runner.run(values, n, read=self._read, log_prob=True)
        return (
            torch.cat([run[0] for run in runs]),
            torch.cat([run[1] for run in runs]),
            {
                latent.name: torch.cat([run[2][latent.name] for run in runs])
                for latent in self.latents
            },
        )

    def _read(self, trace, n, vectorized) -> tuple[Tensor, Tensor, dict]:
        """The log joint `(n,)`, the log-likelihood `(n,)` and the latent values of a trace."""
        log_joint = torch.zeros(n)
        log_lik = torch.zeros(n)
        nesting = self.runner.nesting
        for _, site in sample_sites(trace):
            log_p = site["log_prob"]
            if vectorized and log_p.dim() > nesting:
                log_p = log_p.reshape(*log_p.shape[: log_p.dim() - nesting], -1).sum(-1)
                log_p = log_p.reshape(-1).expand(n) if log_p.numel() == 1 else log_p.reshape(n)
            else:
                log_p = log_p.sum().expand(n)
            log_joint = log_joint + log_p
            if site["is_observed"]:
                log_lik = log_lik + log_p
        drawn = {}
        for latent in self.latents:
            value = trace.nodes[latent.name]["value"]
            drawn[latent.name] = value.reshape(n, *latent.shape) if vectorized else value[None]
        return log_joint, log_lik, drawn
