r"""Many slice-sampling chains of a Pyro model at once.

Pyro's MCMC runs one chain per process, and a learned likelihood costs milliseconds per
call however few points it is given. :class:`SliceMCMC` runs many slice-sampling chains
(Neal 2003) as one batch: every call of the model's log density
(:class:`~pyro_sbi.density.ModelDensity`) evaluates all chains at once, so a hundred
chains cost little more than one. It starts them in every mode with SIR
(:mod:`pyro_sbi.sir`), learns a step width per direction and a linear whitening of the
latent space during warm-up, and returns a result with the interface of
:class:`pyro.infer.MCMC` (``get_samples``, ``summary``, ``diagnostics``) that
:func:`pyro_sbi.to_inference_data` accepts.

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
    | Benchmarking Simulation-Based Inference (Lueckmann et al., 2021)
    | https://arxiv.org/abs/2101.04653
"""

from __future__ import annotations

__all__ = ["SliceMCMC"]

import contextlib
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from pyro.infer.mcmc.util import diagnostics as _diagnostics
from pyro.infer.mcmc.util import print_summary
from torch import Tensor
from tqdm.auto import tqdm

from pyro_sbi import threads
from pyro_sbi._checks import as_count
from pyro_sbi.density import ModelDensity
from pyro_sbi.sir import sir

if TYPE_CHECKING:
    from pyro_sbi.guide import AmortizedGuide


class SliceMCMC:
    r"""Many slice-sampling chains of a Pyro model, vectorised in one process.

    All chains advance together, so each evaluation of the model's log density (a
    learned likelihood included) is one batched call over all chains. Chains start at
    SIR draws (:class:`~pyro_sbi.sir.init_to_sir`), so every mode found by `num_candidates` prior
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
        guide: a trained :class:`~pyro_sbi.AmortizedGuide`: the chains start at
            `num_candidates` of its draws weighted by :math:`p(x, z) / q(z \mid x)` and
            resampled, instead of at prior draws (SIR); for a posterior narrow
            relative to its prior.
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
        guide: AmortizedGuide | None = None,
        seed: int | None = None,
        num_threads: int | None = None,
        progress: bool = True,
    ) -> None:
        num_samples = as_count(num_samples, "SliceMCMC: num_samples")
        num_chains = as_count(num_chains, "SliceMCMC: num_chains")
        thin = as_count(thin, "SliceMCMC: thin")
        warmup_steps = as_count(warmup_steps, "SliceMCMC: warmup_steps", minimum=0)
        self.model = model
        self.num_samples, self.warmup_steps = num_samples, warmup_steps
        self.num_chains = num_chains
        self.thin, self.num_candidates, self.max_steps_out = thin, num_candidates, max_steps_out
        self.seed, self.progress, self.num_threads = seed, progress, num_threads
        self.min_ess = max(1000, num_chains) if min_ess is None else min_ess
        self.max_candidates = max_candidates
        self.guide = guide
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
        density = ModelDensity(self.model, args, kwargs)
        self.evaluations = 0

        def log_density(z: Tensor) -> Tensor:
            self.evaluations += z.shape[0]
            return density(z)

        if self.guide is not None:
            draws = self.guide.importance(self.num_candidates, *args, **kwargs)
            values, self.ess = draws.resample(self.num_chains), draws.ess
        else:
            values, self.ess = sir(
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
