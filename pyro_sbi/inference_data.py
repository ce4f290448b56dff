r"""A complete ArviZ data object for a Pyro model with simulator sites.

With ArviZ 0.x it is an `arviz.InferenceData`; with ArviZ 1.x (Python >= 3.12) an
`xarray.DataTree`, ArviZ's own object there. The groups, dims and coordinates are the
same on both, and `az.summary`, `az.loo`, `az.compare` and ArviZ's plots take either.

`az.from_pyro` drops the pointwise log-likelihood of plated models with event
dimensions and draws posterior predictions from nowhere for a simulator site.
:func:`to_inference_data` builds every group itself from vectorised traces of the
model:

- `posterior`: the latent sites, dims named after the model's plates;
- `sample_stats`: `diverging` per draw and the log joint density `lp` (both for an
  `MCMC` run), and `step_size` for a single chain (Pyro keeps no per-draw tree depth,
  acceptance or energy);
- `log_likelihood`: the log-density of every observed site per draw and per element
  of its plates (per trial under a plate of trials), for tractable sites and for
  simulator sites with a normalised estimator (NLE, MNLE, ensembles of them). A site
  with a ratio estimator (NRE) is left out with a warning: a log-ratio is not a
  normalised likelihood, so LOO and WAIC would be wrong;
- `posterior_predictive`: the observed sites simulated again at each posterior draw,
  with the **real** simulator for simulator sites;
- `prior` and `prior_predictive` (with `prior=`), also from the real simulator;
- `observed_data`.

It also checks, per simulator site, how much of the posterior puts the site's
parameters outside the region its estimator was trained on (see
:func:`pyro_sbi.diagnostics.outside_training`) and warns when that share is not small.
"""

from __future__ import annotations

__all__ = ["to_inference_data"]

import warnings
from collections.abc import Callable, Mapping

import numpy as np
import torch
from pyro import poutine
from pyro.infer import MCMC
from torch import Tensor

from pyro_sbi._arviz import from_dict
from pyro_sbi.distribution import simulator_of
from pyro_sbi.ensemble import Ensemble
from pyro_sbi.infer import SliceMCMC
from pyro_sbi.runner import ModelRunner, model_keywords, sample_sites


def to_inference_data(
    posterior: MCMC | SliceMCMC | Mapping[str, Tensor],
    model: Callable,
    *args,
    prior: int = 0,
    posterior_predictive: bool = True,
    log_likelihood: bool = True,
    chunk_size: int = 500,
    validity_threshold: float = 0.01,
    error_threshold: float = 0.3,
    model_kwargs: Mapping | None = None,
    **kwargs,
):
    r"""Builds ArviZ's data object from posterior draws of `model(*args, **kwargs)`.

    Arguments:
        posterior: a finished :class:`pyro.infer.MCMC` or :class:`~pyro_sbi.SliceMCMC`
            run, or a mapping from latent site names to draws `(num_draws,
            *site_shape)` (one chain, e.g. from SVI and `Predictive`).
        model: the Pyro model.
        args: the model's positional arguments as given to inference (observations
            included).
        prior: number of prior draws for the `prior` and `prior_predictive` groups
            (0: leave them out).
        posterior_predictive: add the `posterior_predictive` group (simulates once per
            posterior draw and observed element).
        log_likelihood: add the pointwise `log_likelihood` group.
        chunk_size: posterior draws per vectorised run of the model.
        validity_threshold: warn when more than this share of a simulator site's
            posterior parameters lie outside its training region.
        error_threshold: for a simulator site with an :class:`~pyro_sbi.Ensemble`
            estimator, warn when the disagreement of its members moves some posterior
            mean by more than this many posterior sds (see
            :func:`pyro_sbi.diagnostics.likelihood_error`).
        kwargs: the model's keyword arguments.
        model_kwargs: keyword arguments of the model under any name, also one of this
            function's own options (such as `seed`); other keywords this function
            does not take go to the model too.

    Returns:
        An `arviz.InferenceData` (ArviZ 0.x) or an `xarray.DataTree` (ArviZ 1.x) with
        dims named after the model's plates. Draws of a run with more chains than draws
        (e.g. :class:`~pyro_sbi.SliceMCMC` with 250 chains of 40 draws) keep their
        `(chain, draw)` layout, so ArviZ's warning about that layout is not raised.

    Example:
        >>> import pyro
        >>> import pyro.distributions as dist
        >>> def model(y=None):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("trials", 3):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> idata = to_inference_data({"mu": torch.randn(100)}, model, torch.zeros(3))
        >>> [group in idata for group in ("posterior", "log_likelihood", "prior")]
        [True, True, False]
        >>> idata.log_likelihood["y"].dims
        ('chain', 'draw', 'trials')
    """
    kwargs = model_keywords(kwargs, model_kwargs)
    samples, stats = posterior_draws(posterior)
    chains, draws = next(iter(samples.values())).shape[:2]
    runner = DrawRunner(model, args, kwargs, members=True)
    base = runner.base
    observed = [name for name, site in sample_sites(base) if site["is_observed"]]
    latent = [name for name in samples if name in base.nodes]
    dims, coords = _dims_and_coords(base)

    flat = {
        name: value.reshape(chains * draws, *value.shape[2:]) for name, value in samples.items()
    }
    lp: list[Tensor] = []
    log_lik: dict[str, list[Tensor]] = {name: [] for name in observed}
    outside: dict[str, list[Tensor]] = {}
    predictions: dict[str, list[Tensor]] = {name: [] for name in observed}
    ratio_sites = [
        name for name in observed if (sim := simulator_of(base.nodes[name]["fn"]))
        and (sim.estimator is None or not sim.estimator.normalized)
    ]  # fmt: skip
    members: dict[str, list[Tensor]] = {}
    for start in range(0, chains * draws, chunk_size):
        chunk = {name: value[start : start + chunk_size] for name, value in flat.items()}
        sites = runner(chunk)
        lp.append(
            sum(
                _per_draw(site["log_prob"])
                for site in sites.values()
                if site["log_prob"] is not None
            )
        )
        for name, site in sites.items():
            if name in log_lik and site["log_prob"] is not None:
                log_lik[name].append(site["log_prob"])
            if "members" in site:
                members.setdefault(name, []).append(site["members"])
            if site["outside"] is not None:
                outside.setdefault(name, []).append(site["outside"])
        if posterior_predictive:
            fresh = runner(chunk, uncondition=True)
            for name in observed:
                predictions[name].append(fresh[name]["value"])

    def grouped(parts: list[Tensor]) -> np.ndarray:
        value = torch.cat(parts)
        return value.reshape(chains, draws, *value.shape[1:]).detach().cpu().numpy()

    groups = {
        "posterior": {name: value.detach().cpu().numpy() for name, value in samples.items()},
        "observed_data": {
            name: base.nodes[name]["value"].detach().cpu().numpy() for name in observed
        },
    }
    sample_stats = {name: value for name, value in stats.items()}
    if isinstance(posterior, MCMC | SliceMCMC):
        sample_stats["lp"] = grouped(lp)
    if sample_stats:
        groups["sample_stats"] = sample_stats
    if log_likelihood:
        for name in ratio_sites:
            estimator = simulator_of(base.nodes[name]["fn"]).estimator
            if estimator is None:
                warnings.warn(
                    f"site {name!r} has no likelihood estimator, so the log_likelihood group "
                    "leaves it out",
                    stacklevel=2,
                )
                continue
            kind = type(estimator).__name__
            warnings.warn(
                f"site {name!r}: its estimator {kind} gives log p(x | theta) - log p(x), not a "
                "normalised likelihood, so the log_likelihood group leaves it out (LOO and "
                "WAIC would be wrong)",
                stacklevel=2,
            )
        kept = {name: grouped(parts) for name, parts in log_lik.items() if name not in ratio_sites}
        if kept:
            groups["log_likelihood"] = kept
    if posterior_predictive:
        groups["posterior_predictive"] = {name: grouped(p) for name, p in predictions.items()}
    if prior:
        groups["prior"], groups["prior_predictive"] = {}, {}
        for name, site in runner({}, uncondition=True, size=prior).items():
            if name in latent or name in observed:
                group = "prior_predictive" if name in observed else "prior"
                groups[group][name] = site["value"].unsqueeze(0).detach().cpu().numpy()

    for name, parts in outside.items():
        share = float(torch.cat(parts).float().mean())
        if share > validity_threshold:
            warnings.warn(
                f"site {name!r}: {share:.1%} of the posterior draws put its parameters outside "
                "the region the estimator was trained on, where its log_prob extrapolates; "
                "see pyro_sbi.diagnostics.outside_training, and train with a prior or "
                "proposal covering the posterior",
                stacklevel=2,
            )
    if members:
        drawn = {name: flat[name] for name in latent}
        for site, errors in member_shifts(drawn, members).items():
            name, error = max(
                ((k, float(v.max(initial=0.0))) for k, v in errors.items()),
                key=lambda item: item[1],
            )
            if error > error_threshold:
                warnings.warn(
                    f"site {site!r}: the members of its ensemble disagree by {error:.2f} "
                    f"posterior sds on {name!r} over the observed data (more than "
                    f"error_threshold={error_threshold}); one more training run would move "
                    "the posterior that much. Simulate more, or see "
                    "pyro_sbi.diagnostics.likelihood_error",
                    stacklevel=2,
                )
    return from_dict(groups, coords, dims)


def posterior_draws(posterior) -> tuple[dict[str, Tensor], dict[str, np.ndarray]]:
    """Draws `(chains, draws, *shape)` per latent site and the sample stats of a run."""
    if isinstance(posterior, SliceMCMC):
        return dict(posterior.get_samples(group_by_chain=True)), {}
    if isinstance(posterior, MCMC):
        samples = posterior.get_samples(group_by_chain=True)
        chains, draws = next(iter(samples.values())).shape[:2]
        stats = {}
        diagnostics = posterior.diagnostics()
        if "divergences" in diagnostics:
            diverging = np.zeros((chains, draws), dtype=bool)
            for chain, key in enumerate(sorted(diagnostics["divergences"])):
                diverging[chain, diagnostics["divergences"][key]] = True
            stats["diverging"] = diverging
        step_size = getattr(posterior.kernel, "step_size", None)
        if chains == 1 and step_size is not None:
            stats["step_size"] = np.full((1, draws), float(step_size))
        return dict(samples), stats
    samples = {name: torch.as_tensor(value).unsqueeze(0) for name, value in posterior.items()}
    sizes = {value.shape[1] for value in samples.values()}
    if len(sizes) != 1:
        raise ValueError(f"the posterior draws have different numbers of draws: {sizes}")
    return samples, {}


def _batch_shape(site) -> torch.Size:
    """The shape of the site's log-density in an ordinary run of the model."""
    fn, value = site["fn"], site["value"]
    return value.shape[: value.dim() - fn.event_dim]


def _dims_and_coords(trace) -> tuple[dict[str, list[str]], dict[str, np.ndarray]]:
    """Dims of every site: plate names where a plate covers a dimension, `<site>_dim_<i>`."""
    dims, coords = {}, {}
    for name, site in sample_sites(trace):
        shape = site["value"].shape
        batch = len(_batch_shape(site))
        frames = {frame.dim: frame for frame in site["cond_indep_stack"] if frame.vectorized}
        names = []
        for i, size in enumerate(shape):
            frame = frames.get(i - batch) if i < batch else None
            if frame is not None and frame.size == size:
                names.append(frame.name)
                coords[frame.name] = np.arange(size)
            else:
                names.append(f"{name}_dim_{i}")
        dims[name] = names
    return dims, coords


def _per_draw(log_prob: Tensor) -> Tensor:
    """`(n, *batch) -> (n,)`: summed over everything but the draws."""
    return log_prob.reshape(len(log_prob), -1).sum(-1)


class DrawRunner:
    """Runs the model at many draws of its latent sites: vectorised, or one draw at a time.

    A call returns, per sample site, `value (n, *shape)`, `log_prob (n, *batch_shape)`
    (the shapes of an ordinary run of the model; `None` for a simulated site of a ratio
    estimator, which has no density in `x`) and, for a simulator site,
    `outside (n,)`: whether any of its parameters in a draw lie outside the training
    region of its estimator. With `members=True`, an observed simulator site whose
    estimator is an :class:`~pyro_sbi.Ensemble` also gives `members (M, n)`: each
    member's log-density minus the ensemble's, summed over the site's elements.

    Arguments:
        model: the Pyro model; args, kwargs: its arguments.
        members: whether to give `members` (see above).
    """

    def __init__(self, model, args, kwargs, *, members=False) -> None:
        self.runner = ModelRunner(model, args, kwargs)
        self.model, self.base, self.nesting = model, self.runner.base, self.runner.nesting
        self.members = members

    def __call__(self, samples, *, uncondition=False, size=None) -> dict:
        model = poutine.uncondition(self.model) if uncondition else self.model
        size = size if size is not None else len(next(iter(samples.values())))
        runs, vectorized = self.runner.run(samples, size, read=self._read, model=model)
        if vectorized:
            return runs[0]
        return {
            name: {
                # per draw along dim 0, but `members (M, n)` along dim 1
                key: None
                if part is None
                else torch.cat([run[name][key] for run in runs], int(key == "members"))
                for key, part in site.items()
            }
            for name, site in runs[0].items()
        }

    def _read(self, trace, size, vectorized) -> dict:
        sites = {}
        for name, site in sample_sites(trace):
            if name not in self.base.nodes:
                continue
            natural = self.base.nodes[name]
            batch = _batch_shape(natural)
            simulator = simulator_of(site["fn"])
            log_p = None
            has_density = simulator is None or (
                simulator.estimator is not None
                and (site["is_observed"] or simulator.estimator.normalized)
            )
            if has_density:
                # a simulated ratio site (a predictive draw) has no density to give
                log_p = site["fn"].log_prob(site["value"])
                log_p = log_p.expand(log_p.shape[: log_p.dim() - len(batch)] + batch)
                log_p = log_p.reshape(size, *batch)
            value = site["value"]
            if value.shape == natural["value"].shape:  # observed data: the same for every draw
                value = value.expand(size, *value.shape)
            result = {
                "value": value.reshape(size, *natural["value"].shape),
                "log_prob": log_p,
                "outside": None,
            }
            ensembled = simulator is not None and isinstance(simulator.estimator, Ensemble)
            if self.members and site["is_observed"] and ensembled:
                result["members"] = self._members(site, simulator, size, vectorized)
            if (
                simulator is not None
                and simulator.estimator is not None
                and simulator.estimator.trained
            ):
                if simulator.condition is None:
                    theta = simulator.theta.reshape(size, -1, simulator.theta.shape[-1])
                    result["outside"] = simulator.estimator.outside(theta).any(-1)
                else:  # [theta, condition] on their distinct rows, then per draw
                    outside = simulator.estimator.outside(simulator.context)
                    if vectorized:  # the draws are dim -nesting - 1, perhaps broadcast
                        pad = (1,) * (self.nesting + 1 - outside.dim())
                        outside = outside.reshape(pad + outside.shape)
                        outside = outside.expand(size, *outside.shape[1:])
                    result["outside"] = outside.reshape(size, -1).any(-1)
            sites[name] = result
        return sites

    def _members(self, site, simulator, size, vectorized) -> Tensor:
        """`(M, size)`: each member's log-density minus the ensemble's, per draw."""
        ensemble = simulator.estimator
        values = ensemble.members_log_prob(site["value"], simulator.context)
        difference = values - ensemble.combine(values)
        mask = site["mask"]
        if mask is not None and mask is not True:
            difference = torch.where(mask, difference, 0.0)
        difference = difference * site["scale"]
        rest = difference.shape[1:]
        if not vectorized:
            return difference.reshape(len(difference), 1, -1).sum(-1)
        # the draws are dim -nesting - 1; a site whose parameters do not depend on them
        # has that dimension broadcast (size 1) or missing
        rest = (1,) * max(0, self.nesting + 1 - len(rest)) + tuple(rest)
        difference = difference.reshape(len(difference), *rest)
        draws = difference.shape[1]
        per_draw = difference.reshape(len(difference), draws, -1).sum(-1)
        return per_draw.expand(len(difference), size)


def member_shifts(
    latent: dict[str, Tensor], members: dict[str, list[Tensor]]
) -> dict[str, dict[str, np.ndarray]]:
    """Per ensemble site, per latent site: the scatter of the members' posterior means.

    `latent` holds draws `(num_draws, *shape)`; `members` the parts of `(M, num_draws)`
    log-weights of each ensemble site. See :func:`pyro_sbi.diagnostics.likelihood_error`.
    """
    num_draws = len(next(iter(latent.values())))
    values = {name: value.reshape(num_draws, -1).double() for name, value in latent.items()}
    result = {}
    for site, parts in members.items():
        weights = torch.softmax(torch.cat(parts, dim=1).double(), dim=1)
        ess = float((1.0 / (weights**2).sum(1)).min())
        if ess < 20:
            warnings.warn(
                f"site {site!r}: the importance weights of a member of its ensemble have an "
                f"effective sample size of {ess:.1f} of {num_draws} draws; the members' "
                "posteriors barely overlap, so their disagreement is larger than the "
                "reported error can show",
                stacklevel=3,
            )
        result[site] = {}
        for name, value in values.items():
            sd = value.std(0).clamp_min(torch.finfo(torch.double).tiny)
            shift = (weights @ value - value.mean(0)) / sd  # (M, elements)
            error = ((shift**2).sum(0) / max(1, len(weights) - 1)).sqrt()
            result[site][name] = error.reshape(latent[name].shape[1:]).numpy()
    return result
