r"""Start chains in every mode: sampling-importance-resampling from the prior.

Pyro's MCMC runs one chain per process, and a NUTS chain started from one prior draw
stays in the mode it finds first. Posteriors of simulator models are often multimodal
(two_moons has 2 modes, SLCP 4). :class:`init_to_sir` is a Pyro ``init_strategy``: it
draws many candidates from the model's prior, weights each by its likelihood (every
observed site, learned or not) and resamples (sampling-importance-resampling; Rubin
1988). Chains then start in every mode, in proportion to the mass of the mode as far as
the candidates see it. :class:`~pyro_sbi.infer.SliceMCMC` starts its chains the same
way (:func:`sir`).

References:
    | Using the SIR algorithm to simulate posterior distributions (Rubin, 1988)
"""

from __future__ import annotations

__all__ = ["init_to_sir", "sir"]

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from pyro_sbi.density import ModelDensity
from pyro_sbi.runner import model_keywords


def sir(
    density: ModelDensity, num_candidates: int, num_draws: int, *, min_ess: float = 0.0,
    max_candidates: int | None = None, chunk: int = 10_000,
) -> tuple[dict[str, Tensor], float]:  # fmt: skip
    """Sampling-importance-resampling from the prior.

    Draws `num_candidates` prior draws, weights them by their likelihood and, while the
    effective sample size of the weights is below `min_ess`, doubles the number of
    candidates up to `max_candidates`. Returns `num_draws` latent values `{name:
    (num_draws, *shape)}` resampled by weight, and the effective sample size.

    Arguments:
        density: the model's density (its prior draws and their likelihoods).
        num_candidates: prior draws to weight at first.
        num_draws: draws to resample.
        min_ess: the effective sample size to reach by doubling the candidates.
        max_candidates: the most candidates (default: `num_candidates`).
        chunk: candidates per run of the model.

    Example:
        >>> import pyro
        >>> import pyro.distributions as dist
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 3.0))
        ...     pyro.sample("y", dist.Normal(mu, 0.5), obs=y)
        >>> draws, ess = sir(ModelDensity(model, (torch.tensor(1.0),), {}), 2000, 100)
        >>> draws["mu"].shape, ess > 100
        (torch.Size([100]), True)
    """
    max_candidates = max(max_candidates or num_candidates, num_candidates)
    log_w = torch.empty(0)
    kept: dict[str, Tensor] = {}
    total, target = 0, num_candidates
    while True:
        while total < target:
            size = min(chunk, target - total)
            _, log_lik, values = density.run(None, size)
            total += size
            log_lik = torch.nan_to_num(log_lik, nan=-math.inf, posinf=-math.inf)
            log_w = torch.cat([log_w, log_lik])
            kept = {k: torch.cat([kept[k], v]) if kept else v for k, v in values.items()}
            keep = log_w > log_w.max() - 50.0  # the rest weigh less than e^-50 each
            if not bool(keep.all()) and torch.isfinite(log_w.max()):
                log_w, kept = log_w[keep], {k: v[keep] for k, v in kept.items()}
        if not torch.isfinite(log_w).any():
            raise ValueError(
                f"all {total} prior draws have zero likelihood: the observations are "
                "impossible under the model as far as the candidates see; check the data, "
                "or draw more candidates"
            )
        weights = torch.softmax(log_w, 0)
        ess = float(1.0 / (weights**2).sum())
        if ess >= min_ess or total >= max_candidates or not density.runner.vectorize:
            break
        target = min(2 * total, max_candidates)
    index = torch.multinomial(weights, num_draws, replacement=True)
    return {name: value[index] for name, value in kept.items()}, ess


class init_to_sir:  # noqa: N801 -- named like Pyro's init_to_* strategies
    """A Pyro ``init_strategy`` that starts chains at sampling-importance-resampling draws.

    `num_candidates` prior draws of the latent sites are weighted by the likelihood of
    the observed sites (learned or tractable) and resampled.

    Each run of the model under the strategy (one per chain, or per retry) gets the
    next resampled draw, so the chains of ``MCMC(NUTS(model, init_strategy=...),
    num_chains=4)`` start in different modes, in proportion to their mass.

    Arguments:
        model: the Pyro model, called as ``model(*args, **kwargs)``; observed sites
            carry their data (``obs=``) in these arguments.
        args, kwargs: the model's arguments.
        num_candidates: prior draws to weight. More find narrow modes more surely; the
            cost is one batched run of the model per 1,000 candidates.
        num_draws: resampled starting points kept (one is used per model run).
        model_kwargs: keyword arguments of the model under any name, also
            `num_candidates` or `num_draws`.

    Example:
        >>> import pyro
        >>> import pyro.distributions as dist
        >>> from pyro.infer import MCMC, NUTS
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 3.0))
        ...     pyro.sample("y", dist.Normal(mu.abs(), 0.1), obs=y)  # modes at +1 and -1
        >>> init = init_to_sir(model, torch.tensor(1.0), num_candidates=1000)
        >>> starts = torch.stack([init({"name": "mu"}) for _ in range(200)])
        >>> bool(((starts.abs() - 1).abs() < 0.5).all())  # near a mode
        True
        >>> bool((starts > 0).any() and (starts < 0).any())  # both modes
        True
    """

    def __init__(
        self, model: Callable, *args, num_candidates: int = 10_000, num_draws: int = 1000,
        model_kwargs: Mapping | None = None, **kwargs,
    ) -> None:  # fmt: skip
        self.model, self.args = model, args
        self.kwargs = model_keywords(kwargs, model_kwargs)
        self.num_candidates, self.num_draws = num_candidates, num_draws
        self._draws: dict[str, Tensor] | None = None
        self._next, self._used = 0, set()

    def _starts(self) -> dict[str, Tensor]:
        """`{name: (num_draws, *shape)}` starting points, made at the first call."""
        density = ModelDensity(self.model, self.args, self.kwargs)
        draws, self.ess = sir(density, self.num_candidates, self.num_draws)
        return draws

    def __call__(self, site) -> Tensor:
        """The starting value of `site` (a Pyro message) in the current run of the model."""
        if self._draws is None:
            self._draws = self._starts()
            self._next = -1
        name = site["name"]
        if name in self._used or self._next < 0:  # a new run of the model
            self._next = (self._next + 1) % len(next(iter(self._draws.values())))
            self._used = set()
        self._used.add(name)
        if name in self._draws:
            return self._draws[name][self._next].clone()
        return site["fn"].sample().detach()  # a site that appeared after the first run
