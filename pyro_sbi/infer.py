r"""Inference helpers: start chains in every mode, and run many chains at once.

Pyro's MCMC runs one chain per process, and a NUTS chain started from one prior draw
stays in the mode it finds first. Posteriors of simulator models are often multimodal
(two_moons has 2 modes, SLCP 4), and a learned likelihood costs milliseconds per call
however few points it is given. Two helpers fix both, and leave Pyro's API as it is:

- :class:`init_to_sir` is a Pyro ``init_strategy``: it draws many candidates from the
  model's prior, weights each by its likelihood (every observed site, learned or not)
  and resamples (sampling-importance-resampling; Rubin 1988). Chains then start in
  every mode, in proportion to the mass of the mode as far as the candidates see it.
- :class:`SliceMCMC` runs many slice-sampling chains (Neal 2003) as one batch: every
  call of the model's log density evaluates all chains at once, so a hundred chains
  cost little more than one. It starts them with SIR, learns a step width per
  direction and a linear whitening of the latent space during warm-up, and returns a
  result with the interface of :class:`pyro.infer.MCMC` (``get_samples``,
  ``summary``, ``diagnostics``) that :func:`pyro_sbi.to_inference_data` accepts.

**Slice sampling along a direction.** At the current point :math:`z` with log density
:math:`\ell(z)`, draw a level :math:`y = \ell(z) - E` with :math:`E \sim
\mathrm{Exp}(1)`; the new point is uniform on the slice :math:`\{t : \ell(z + t v) >
y\}` along direction :math:`v`. An interval of width :math:`w` placed at random around
:math:`t = 0` is stepped out by :math:`w` at each end until both ends lie outside the
slice, with at most :math:`m` steps split at random between the two ends (Neal's
procedure, which keeps the update reversible), then shrunk towards :math:`0` at every
rejected proposal. Each update leaves the target invariant; a sweep updates every
direction in turn. The directions are the coordinates of the unconstrained latent
space during the first half of warm-up, then the columns of the Cholesky factor of the
chains' covariance (so correlated posteriors mix as well as uncorrelated ones); the
widths adapt only during warm-up, so the sampling phase is a fixed, valid kernel.

**When to use which.** For a unimodal posterior in many dimensions (hierarchical
models with dozens of latent variables) use Pyro's NUTS (with
``init_strategy=init_to_sir(...)`` when modes are a concern): its gradient-guided
moves scale with dimension. For a posterior of a few to a dozen parameters, possibly
multimodal, with a learned likelihood (the usual SBI case) use :class:`SliceMCMC`: it
needs no gradients, finds the modes, and spends one batched call on all chains.

References:
    | Slice sampling (Neal, 2003) https://doi.org/10.1214/aos/1056562461
    | Using the SIR algorithm to simulate posterior distributions (Rubin, 1988)
    | Benchmarking Simulation-Based Inference (Lueckmann et al., 2021)
    | https://arxiv.org/abs/2101.04653
"""

from __future__ import annotations

__all__ = ["SliceMCMC", "init_to_sir"]

import contextlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from pyro.distributions.transforms import biject_to
from pyro.infer.mcmc.util import diagnostics as _diagnostics
from pyro.infer.mcmc.util import print_summary
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor
from tqdm.auto import tqdm

from pyro_sbi import threads
from pyro_sbi.distribution import refuse_latent_ratio
from pyro_sbi.runner import ModelRunner, model_keywords, sample_sites


@dataclass(frozen=True)
class _Latent:
    name: str
    shape: torch.Size  # constrained value, as in an ordinary run of the model
    transform: torch.distributions.Transform
    free_shape: torch.Size  # unconstrained value
    batch_dims: int  # batch dims of the site's distribution

    @property
    def size(self) -> int:
        return math.prod(self.free_shape)


class _Density:
    """The log joint density of a model at many points of its latent space in one call.

    Points are rows `z (n, D)` of the unconstrained latent space (every latent site
    mapped through `biject_to(support)` and flattened). The model runs once under an
    extra plate of `n` draws, left of all its own plates; a model that cannot take such
    a plate (fixed `expand` shapes, Python control flow on values) runs once per point.
    """

    def __init__(self, model: Callable, args: tuple, kwargs: dict) -> None:
        self.model, self.args, self.kwargs = model, args, kwargs
        self.runner = ModelRunner(model, args, kwargs)
        trace = prune_subsample_sites(self.runner.base)
        self.latents: list[_Latent] = []
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
                _Latent(name, value.shape, transform, free.shape, len(fn.batch_shape))
            )
        if not self.latents:
            raise ValueError("the model has no latent sample sites to infer")
        self.nesting = self.runner.nesting
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
        parts = []
        for latent in self.latents:
            value = values[latent.name]
            parts.append(latent.transform.inv(value).reshape(value.shape[0], -1))
        return torch.cat(parts, -1)

    def __call__(self, z: Tensor) -> Tensor:
        """Log joint density `(n,)` at unconstrained points `z (n, D)`.

        The Jacobian of the transforms is included; `-inf` where the density is not finite.
        """
        values, log_det = self.constrain(z)
        log_joint = self.run(values, z.shape[0])[0] + log_det
        return torch.nan_to_num(log_joint, nan=-math.inf, posinf=-math.inf)

    @property
    def vectorize(self) -> bool:
        """Whether the model still runs vectorised over many points."""
        return self.runner.vectorize

    @vectorize.setter
    def vectorize(self, value: bool) -> None:
        self.runner.vectorize = value

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
        for _, site in sample_sites(trace):
            log_p = site["log_prob"]
            if vectorized and log_p.dim() > self.nesting:
                log_p = log_p.reshape(*log_p.shape[: log_p.dim() - self.nesting], -1).sum(-1)
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


def _sir(
    density: _Density, num_candidates: int, num_draws: int, *, min_ess: float = 0.0,
    max_candidates: int | None = None, chunk: int = 10_000,
) -> tuple[dict[str, Tensor], float]:  # fmt: skip
    """Sampling-importance-resampling from the prior.

    Draws `num_candidates` prior draws, weights them by their likelihood and, while the
    effective sample size of the weights is below `min_ess`, doubles the number of
    candidates up to `max_candidates`. Returns `num_draws` latent values `{name:
    (num_draws, *shape)}` resampled by weight, and the effective sample size.
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
        if ess >= min_ess or total >= max_candidates or not density.vectorize:
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

    def __call__(self, site) -> Tensor:
        """The starting value of `site` (a Pyro message) in the current run of the model."""
        if self._draws is None:
            density = _Density(self.model, self.args, self.kwargs)
            self._draws, self.ess = _sir(density, self.num_candidates, self.num_draws)
            self._next = -1
        name = site["name"]
        if name in self._used or self._next < 0:  # a new run of the model
            self._next = (self._next + 1) % self.num_draws
            self._used = set()
        self._used.add(name)
        if name in self._draws:
            return self._draws[name][self._next].clone()
        return site["fn"].sample().detach()  # a site that appeared after the first run


class SliceMCMC:
    """Many slice-sampling chains of a Pyro model, vectorised in one process.

    All chains advance together, so each evaluation of the model's log density (a
    learned likelihood included) is one batched call over all chains. Chains start at
    SIR draws (:class:`init_to_sir`), so every mode found by `num_candidates` prior
    draws gets chains in proportion to its mass. See the module docstring for the
    algorithm and for when to prefer NUTS.

    After :meth:`run`, `seconds` holds the time spent in initialisation, warm-up and
    sampling, `evaluations` the number of points at which the density was evaluated and
    `ess` the effective sample size of the SIR weights.

    The result mimics :class:`pyro.infer.MCMC`: ``get_samples``, ``summary``,
    ``diagnostics``, ``get_extra_fields`` and ``num_chains``; it can be passed to
    :func:`pyro_sbi.to_inference_data`.

    Arguments:
        model: a Pyro model with continuous latent sites; observed sites carry their
            data in the arguments given to :meth:`run`.
        num_samples: samples kept per chain (after thinning); the total is
            `num_samples * num_chains`.
        warmup_steps: sweeps per chain spent learning the step widths and the whitening
            (discarded).
        num_chains: chains run at once.
        thin: keep every `thin`-th sweep.
        num_candidates: prior draws for the SIR initialisation, doubled while the
            effective sample size of their weights is below `min_ess`, up to
            `max_candidates`. Chains rarely cross between separated modes, so the share
            of chains in each mode is what SIR estimates: its precision is that of
            `min_ess` independent draws.
        min_ess: the effective sample size SIR aims for (default: 1,000 or the number
            of chains, whichever is larger).
        max_candidates: the most prior draws SIR may weight.
        max_steps_out: most width-steps an interval may grow by per update (Neal's
            `m`).
        seed: seeds the initialisation and the sampler (the global generators are
            restored afterwards); `None` draws from the global state.
        num_threads: torch threads for the run (the caller's count is restored
            afterwards); `None`: the caller's count. Unlike training, whose batches are
            small, a run evaluates the model on all chains at once, and more threads
            help (see :mod:`pyro_sbi.threads`).
        progress: show a progress bar.

    Example:
        >>> import pyro
        >>> import pyro.distributions as dist
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 3.0))
        ...     pyro.sample("y", dist.Normal(mu.abs(), 0.1), obs=y)  # modes at +1 and -1
        >>> mcmc = SliceMCMC(model, num_samples=100, num_chains=50, seed=0, progress=False)
        >>> mu = mcmc.run(torch.tensor(1.0)).get_samples()["mu"]
        >>> mu.shape
        torch.Size([5000])
        >>> bool(abs((mu > 0).float().mean() - 0.5) < 0.2)  # both modes, about equally
        True
    """

    def __init__(
        self,
        model: Callable,
        *,
        num_samples: int,
        warmup_steps: int = 100,
        num_chains: int = 100,
        thin: int = 1,
        num_candidates: int = 10_000,
        min_ess: float | None = None,
        max_candidates: int = 1_000_000,
        max_steps_out: int = 32,
        seed: int | None = None,
        num_threads: int | None = None,
        progress: bool = True,
    ) -> None:
        if num_samples < 1 or num_chains < 1 or thin < 1 or warmup_steps < 0:
            raise ValueError(
                "num_samples, num_chains and thin must be positive and warmup_steps "
                f"non-negative; got num_samples={num_samples}, num_chains={num_chains}, "
                f"thin={thin}, warmup_steps={warmup_steps}"
            )
        self.model = model
        self.num_samples, self.warmup_steps = num_samples, warmup_steps
        self.num_chains = num_chains
        self.thin, self.num_candidates, self.max_steps_out = thin, num_candidates, max_steps_out
        self.seed, self.progress, self.num_threads = seed, progress, num_threads
        self.min_ess = max(1000, num_chains) if min_ess is None else min_ess
        self.max_candidates = max_candidates
        self._samples: dict[str, Tensor] | None = None
        self._log_density: Tensor | None = None
        self.seconds: dict[str, float] = {}
        self.evaluations = 0

    def run(self, *args, **kwargs) -> SliceMCMC:
        """Runs the chains on ``model(*args, **kwargs)``; returns `self`."""
        rng = contextlib.nullcontext()
        if self.seed is not None:
            rng = torch.random.fork_rng()
        count = contextlib.nullcontext()
        if self.num_threads is not None:
            count = threads.num_threads(self.num_threads)
        with rng, count:
            if self.seed is not None:
                torch.manual_seed(self.seed)
            self._run(args, kwargs)
        self._args, self._kwargs = args, kwargs
        return self

    def _run(self, args, kwargs) -> None:
        start = time.perf_counter()
        density = _Density(self.model, args, kwargs)
        self.evaluations = 0

        def log_density(z: Tensor) -> Tensor:
            self.evaluations += z.shape[0]
            return density(z)

        values, self.ess = _sir(
            density, self.num_candidates, self.num_chains, min_ess=self.min_ess,
            max_candidates=self.max_candidates,
        )  # fmt: skip
        z = density.unconstrain(values)
        lp = log_density(z)
        self.seconds["init"] = time.perf_counter() - start

        dim, chains = density.dim, self.num_chains
        directions = torch.eye(dim)
        spread = z.std(0) if chains > 1 else torch.ones(dim)
        widths = torch.where(spread > 0, 2.0 * spread, torch.ones(dim))
        sweeps = self.warmup_steps + self.num_samples * self.thin
        history: list[Tensor] = []
        kept_z, kept_lp = [], []
        bar = tqdm(total=sweeps, desc="slice sampling", disable=not self.progress, leave=False)
        start = time.perf_counter()
        for sweep in range(sweeps):
            warmup = sweep < self.warmup_steps
            if sweep == self.warmup_steps // 2 and len(history) > 1 and dim > 1:
                directions, widths = self._whiten(torch.cat(history), directions, widths)
            for k in torch.randperm(dim).tolist():
                z, lp, moved = _slice_update(
                    log_density, z, lp, directions[:, k], float(widths[k]), self.max_steps_out
                )
                if warmup:  # a uniform point on a slice of width s moves s / 3 on average
                    typical = 3.0 * float(moved.abs().mean())
                    if typical > 0 and math.isfinite(typical):
                        widths[k] = 0.7 * widths[k] + 0.3 * typical
            if warmup:
                if sweep >= self.warmup_steps // 4:
                    history.append(z.clone())
                if sweep == self.warmup_steps - 1:
                    self.seconds["warmup"] = time.perf_counter() - start
                    start = time.perf_counter()
            elif (sweep - self.warmup_steps + 1) % self.thin == 0:
                kept_z.append(z.clone())
                kept_lp.append(lp.clone())
            bar.update()
        bar.close()
        self.seconds.setdefault("warmup", 0.0)
        self.seconds["sampling"] = time.perf_counter() - start
        self.widths, self.directions = widths, directions

        flat = torch.stack(kept_z, 1)  # (chains, draws, D)
        draws = flat.shape[1]
        values, _ = density.constrain(flat.reshape(chains * draws, dim))
        self._samples = {
            name: value.reshape(chains, draws, *value.shape[1:]) for name, value in values.items()
        }
        self._log_density = torch.stack(kept_lp, 1)

    @staticmethod
    def _whiten(points: Tensor, directions: Tensor, widths: Tensor) -> tuple[Tensor, Tensor]:
        """Directions: the columns of the Cholesky factor of the points' covariance."""
        centred = points - points.mean(0)
        cov = centred.T @ centred / max(len(points) - 1, 1)
        cov = cov + 1e-6 * torch.diag(cov).mean().clamp_min(1e-12) * torch.eye(len(cov))
        try:
            factor = torch.linalg.cholesky(cov)
        except RuntimeError:  # degenerate: keep the coordinate directions
            return directions, widths
        return factor, torch.full_like(widths, 2.0)  # a Gaussian slice is ~2-3 sd wide

    # the MCMC interface
    def _check(self) -> dict[str, Tensor]:
        if self._samples is None:
            raise RuntimeError("SliceMCMC has no samples yet: call run(*args) first")
        return self._samples

    def get_samples(self, num_samples: int | None = None, group_by_chain: bool = False):
        """Samples per latent site, `(num_chains * num_samples, *shape)`.

        With `group_by_chain=True`, `(num_chains, num_samples, *shape)`; with
        `num_samples`, that many draws at random from the pooled chains.
        """
        samples = self._check()
        if group_by_chain:
            return dict(samples)
        pooled = {k: v.reshape(-1, *v.shape[2:]) for k, v in samples.items()}
        if num_samples is not None:
            total = len(next(iter(pooled.values())))
            index = torch.randint(total, (num_samples,))
            pooled = {k: v[index] for k, v in pooled.items()}
        return pooled

    def get_extra_fields(self, group_by_chain: bool = False) -> dict[str, Tensor]:
        """`potential_energy`: minus the log joint density of each kept draw.

        The density is that of the unconstrained space, as in Pyro's kernels.
        """
        self._check()
        energy = -self._log_density
        return {"potential_energy": energy if group_by_chain else energy.reshape(-1)}

    def diagnostics(self) -> dict[str, dict[str, Tensor]]:
        """Split R-hat and effective sample size per site (Pyro's estimators)."""
        return _diagnostics(self._check(), group_by_chain=True)

    def summary(self, prob: float = 0.9) -> None:
        """Prints mean, sd, quantiles, effective sample size and R-hat per site."""
        print_summary(self._check(), prob=prob, group_by_chain=True)


def _slice_update(
    log_density: Callable[[Tensor], Tensor],
    z: Tensor,
    lp: Tensor,
    direction: Tensor,
    width: float,
    max_steps: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """One slice-sampling update of every chain along `direction`.

    Arguments:
        log_density: the target, `(n, D) -> (n,)`.
        z: (C, D) current points.
        lp: (C,) their log densities.
        direction: (D,) the line to move along.
        width: the initial interval width, in units of `direction`.
        max_steps: Neal's `m`: most steps the interval may grow by.

    Returns:
        new points `(C, D)`, their log densities `(C,)` and the distance moved `(C,)`
        in units of `direction`.
    """
    chains = z.shape[0]
    level = lp - torch.empty(chains).exponential_()
    left = -width * torch.rand(chains)
    right = left + width
    budget_left = torch.floor(max_steps * torch.rand(chains))
    budget_right = max_steps - 1 - budget_left

    def at(rows: Tensor, t: Tensor) -> Tensor:
        return z[rows] + t[:, None] * direction

    grow_left = budget_left > 0
    grow_right = budget_right > 0
    # ends inside the slice grow (both ends of all chains in one call)
    rows = torch.arange(chains)
    inside = log_density(torch.cat([at(rows, left), at(rows, right)])) > level.repeat(2)
    grow_left &= inside[:chains]
    grow_right &= inside[chains:]
    while grow_left.any() or grow_right.any():
        left = torch.where(grow_left, left - width, left)
        right = torch.where(grow_right, right + width, right)
        budget_left -= grow_left.to(budget_left.dtype)
        budget_right -= grow_right.to(budget_right.dtype)
        rows_l, rows_r = grow_left.nonzero().squeeze(-1), grow_right.nonzero().squeeze(-1)
        values = log_density(torch.cat([at(rows_l, left[rows_l]), at(rows_r, right[rows_r])]))
        grow_left[rows_l] = (values[: len(rows_l)] > level[rows_l]) & (budget_left[rows_l] > 0)
        grow_right[rows_r] = (values[len(rows_l) :] > level[rows_r]) & (budget_right[rows_r] > 0)
    # shrink towards the current point until a proposal lies in the slice
    new_z, new_lp, moved = z.clone(), lp.clone(), torch.zeros(chains)
    todo = torch.ones(chains, dtype=torch.bool)
    for _ in range(100):  # the interval halves on average at each rejection
        if not todo.any():
            break
        rows = todo.nonzero().squeeze(-1)
        t = left[rows] + (right[rows] - left[rows]) * torch.rand(len(rows))
        points = at(rows, t)
        values = log_density(points)
        accept = values > level[rows]
        done = rows[accept]
        new_z[done], new_lp[done], moved[done] = points[accept], values[accept], t[accept]
        todo[done] = False
        rejected = ~accept
        left[rows[rejected & (t < 0)]] = t[rejected & (t < 0)]
        right[rows[rejected & (t >= 0)]] = t[rejected & (t >= 0)]
    return new_z, new_lp, moved
