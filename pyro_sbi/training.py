r"""Training the simulator sites of a Pyro model from the model's own prior.

:func:`train` runs the model with its simulator sites intercepted (no simulator call,
observations ignored), so every :class:`~pyro_sbi.SimulatorDistribution` reveals the
parameters `theta` it would be simulated at. Parameters broadcast over plates are
counted once: a `theta` shared by 100 i.i.d. trials is one simulation, and the
estimator learns the single-trial likelihood. The model is run vectorised under an
extra outer plate (as Pyro's `Predictive(parallel=True)` does), falling back to
repeated runs when the model cannot be vectorised. Each site's simulator then runs
once per drawn `theta`, and the site's estimator is fitted to the pairs. A parameter
computed per trial (`v = b0 + b1 * coherence` inside a plate of trials) differs from
trial to trial, so each (draw, trial) row is simulated once.

A site with a `condition` (known inputs of the simulator, such as a stimulus per
trial) is simulated at the model's own design: each drawn `theta` with each condition
it meets in the model (broadcast as the site broadcasts them), every distinct pair
once, and the estimator learns :math:`q(x \mid \theta, u)` from rows
`[theta, condition]`. `num_simulations` counts these pairs.

Simulations run through :func:`~pyro_sbi.simulate`: on an executor, seeded, with
failures recorded and left out of training. When some failed, a
:class:`~pyro_sbi.validity.ValidityClassifier` learns :math:`P(\text{valid} \mid
\theta)` and the site's log-density includes it. With `store=`, each site's
simulations are kept on disk under the site's name and reused by later calls.
"""

from __future__ import annotations

__all__ = ["SiteReport", "train"]

import difflib
import inspect
import math
import time
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from torch import Tensor
from torch.distributions import Distribution

from pyro_sbi._checks import as_count
from pyro_sbi.distribution import SimulatorDistribution, simulator_of
from pyro_sbi.estimator import Estimator
from pyro_sbi.fitting import History
from pyro_sbi.guide import AmortizedGuide
from pyro_sbi.program import PyroSimulator
from pyro_sbi.runner import ModelRunner, model_keywords
from pyro_sbi.seeds import derive
from pyro_sbi.simulation import Simulations, simulate
from pyro_sbi.simulation_worker import NONFINITE, OK, simulator_name
from pyro_sbi.store import TrainingStore
from pyro_sbi.validity import ValidityClassifier


@dataclass
class SiteReport:
    r"""What :func:`train` did for one estimator.

    Attributes:
        sites: the sample sites that share the estimator.
        estimator: the trained estimator.
        theta: `(n, D)` parameters of the successful simulations (all rounds); for a
            site with a condition, `(n, D + d_u)` rows `[theta, condition]`.
        x: `(n, *x_shape)` their simulator outputs.
        num_failed: simulations left out because they failed.
        history: the training history (one per member for an
            :class:`~pyro_sbi.Ensemble`).
        simulation_seconds: wall time spent simulating.
        simulations: the full record of each site's :func:`~pyro_sbi.simulate` call,
            failures included.
        validity: the classifier of :math:`P(\text{valid} \mid \theta)` attached to
            the estimator, when simulations failed.
        score: `(n, D)` the joint scores the estimator was trained on, with
            `augment="score"` (`None` otherwise).
        theta_alt: `(n, D)` the alternative points of the joint ratios the estimator was
            trained on, with `augment="ratio"` (`None` otherwise).
        ratio: `(n,)` those joint log-ratios (:meth:`~pyro_sbi.PyroSimulator.unpack_ratio`).
    """

    sites: list[str]
    estimator: Estimator
    theta: Tensor
    x: Tensor
    num_failed: int
    history: History | list[History]
    simulation_seconds: float
    simulations: list[Simulations] = field(default_factory=list)
    validity: ValidityClassifier | None = None
    score: Tensor | None = None
    theta_alt: Tensor | None = None
    ratio: Tensor | None = None

    def _figures(self) -> dict:
        """The figures of both summaries; epochs summed and the loss averaged over members."""
        histories = self.history if isinstance(self.history, list) else [self.history]
        return {
            "sites": self.sites,
            "estimator": type(self.estimator).__name__,
            "num_simulations": len(self.theta),
            "num_failed": self.num_failed,
            "epochs": sum(history.epochs for history in histories),
            "best_validation_loss": float(
                sum(history.best_validation_loss for history in histories) / len(histories)
            ),
            "simulation_seconds": round(self.simulation_seconds, 1),
            "training_seconds": round(sum(history.seconds for history in histories), 1),
        }

    def __str__(self) -> str:
        """One line: sites, counts, seconds and the kept validation loss."""
        f = self._figures()
        return (
            f"{', '.join(f['sites'])}: {f['num_simulations']} simulations ({f['num_failed']} "
            f"failed) in {f['simulation_seconds']} s; {f['estimator']} trained for "
            f"{f['epochs']} epochs in {f['training_seconds']} s, validation loss "
            f"{f['best_validation_loss']:.3f}"
        )

    def __repr__(self) -> str:
        """The sites, the estimator's class and the figures of :meth:`__str__`; no tensors."""
        f = self._figures()
        f["best_validation_loss"] = float(f"{f['best_validation_loss']:.4g}")
        shown = (
            f"{key}={value if isinstance(value, str) else repr(value)}" for key, value in f.items()
        )
        return f"SiteReport({', '.join(shown)})"


def train(
    model: Callable,
    *args,
    num_simulations: int | float,
    proposal: Distribution | Mapping[str, Distribution] | None = None,
    simulation_batch_size: int | None = None,
    fit_options: Mapping | None = None,
    seed: int | None = None,
    progress: bool = True,
    executor: Executor | None = None,
    store: str | Path | None = None,
    timeout: float | None = None,
    max_failure_fraction: float = 0.5,
    validity: bool = True,
    rounds: int = 1,
    sampler_options: Mapping | None = None,
    model_kwargs: Mapping | None = None,
    guide: AmortizedGuide | None = None,
    augment: str | None = None,
    **kwargs,
) -> dict[str, SiteReport]:
    r"""Simulates from the model's prior and trains the estimator of every simulator site.

    Arguments:
        model: a Pyro model containing :class:`~pyro_sbi.SimulatorDistribution` sites.
        args: positional arguments of the model (observations are ignored).
        num_simulations: simulations per estimator (split evenly over the sites that
            share one estimator object); a float with an integral value, such as `1e4`,
            is taken as that integer.
        proposal: draw `theta (num_simulations, D)` from this distribution instead of
            the prior (a mapping from site name to distribution for several sites). At a
            site with a condition, each draw is paired with a condition row of the
            model's design, chosen at random.
        simulation_batch_size: parameters per simulator call (all at once by default).
        fit_options: options of :func:`pyro_sbi.fitting.fit`, e.g.
            `{"max_epochs": 200, "batch_size": 512}`; an unknown key is refused before
            anything is simulated.
        seed: seeds torch, numpy and `random` (via `pyro.set_rng_seed`) before drawing,
            roots the seeds of the simulations (one root per site) and seeds the training.
        progress: show progress bars and a summary line per estimator.
        executor: a :class:`concurrent.futures.Executor` running the simulations (see
            :func:`~pyro_sbi.simulate`).
        store: a directory holding a zarr store with one group per site: simulations
            are saved as they finish; a later call reuses the stored parameters and
            outputs and simulates only what is missing. A site's stored parameters are
            kept (so a different `seed` still reuses them); more simulations than
            stored are appended.
        timeout: seconds allowed for one simulator call.
        max_failure_fraction: stop once more than this fraction of a site's
            simulations failed.
        validity: when simulations failed, learn :math:`P(\text{valid} \mid \theta)`
            and add its logarithm to the site's log-density (see
            :mod:`pyro_sbi.validity`).
        rounds: sequential rounds (SNLE / SNRE). Round 1 draws from the prior (or
            `proposal`); each later round draws the parameters of every simulator site
            from the current posterior of the **whole** model given the observations in
            `args`/`kwargs` (so each subject's `theta` comes from its own posterior),
            simulates them, and refits each estimator on all simulations so far.
            `num_simulations` is the total over rounds, split evenly.
        sampler_options: options of :class:`~pyro_sbi.SliceMCMC`, which draws the
            posterior of rounds 2 and later (`num_chains`, `warmup_steps`, ...).
        kwargs: keyword arguments of the model.
        model_kwargs: keyword arguments of the model under any name, also one of this
            function's own options (such as `seed`); other keywords this function
            does not take go to the model too.
        guide: an :class:`~pyro_sbi.AmortizedGuide` of the model, trained on
            `num_simulations` draws of the model's prior predictive distribution; the
            model's arguments mark which sites are observed. One budget: the rows a
            simulator site runs in those draws (each trial of each subject) also train
            the site's likelihood estimator, so nothing is simulated twice; it trains on
            `num_simulations` of them drawn at random (all, if there are fewer), so its
            training costs what it would without a guide. With
            `store=`, `proposal=` or `augment=` the estimators get simulations of their
            own instead (`num_simulations` rows per site, as without a guide; the store
            keeps those only). Simulator sites without an estimator
            (`SimulatorDistribution(simulator, theta)`) are only simulated. Not with
            `rounds > 1`.
        augment: `"score"` trains every estimator on the joint score of its
            simulations besides the pairs (:mod:`pyro_sbi.augment`): each simulator site
            must have a :class:`~pyro_sbi.PyroSimulator`, whose joint score
            :math:`\nabla_\theta \log p(x, z \mid \theta)` is simulated (and stored)
            with `x`; `fit_options={"score_weight": ...}` sets the weight of the score
            term. `"ratio"` trains every estimator, which must be an
            :class:`~pyro_sbi.NRE`, on joint ratios besides the pairs (ALICES,
            :mod:`pyro_sbi.augment`): each run at :math:`\theta_i` is compared at the
            parameters :math:`\theta'_i` of another simulation of its batch
            (:meth:`~pyro_sbi.PyroSimulator.with_ratio`);
            `fit_options={"ratio_weight": ...}` sets the weight of that term. `None`: the
            pairs only.

    Sequential rounds concentrate simulations where the posterior is, so the same
    budget buys a more accurate likelihood there (and a less accurate one elsewhere:
    the estimator is then valid for these observations only, not amortised). For NLE
    the learned likelihood stays a likelihood whatever the proposal, so rounds are
    always valid. For NRE the learned ratio's denominator becomes the marginal of `x`
    under the pooled proposals; it is still constant in `theta`, so MCMC and SVI on the
    parameters remain valid, and the log-ratio was never a normalised likelihood anyway.

    Returns:
        A :class:`SiteReport` per site name (sites sharing an estimator share a report).

    Example:
        >>> import pyro.distributions as dist
        >>> from pyro_sbi import NLE, SimulatorDistribution
        >>> likelihood = NLE()
        >>> def model(x_o=None):
        ...     theta = pyro.sample("theta", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
        ...     sim = lambda t: t + 0.1 * torch.randn_like(t)
        ...     with pyro.plate("trials", 5):
        ...         pyro.sample("x", SimulatorDistribution(sim, theta, likelihood), obs=x_o)
        >>> reports = train(model, num_simulations=200, seed=0, progress=False,
        ...                 fit_options={"max_epochs": 2})
        >>> reports["x"].theta.shape, likelihood.trained
        (torch.Size([200, 1]), True)
    """
    kwargs = model_keywords(kwargs, model_kwargs)
    num_simulations = as_count(num_simulations, "train: num_simulations", minimum=2)
    rounds = as_count(rounds, "train: rounds")
    if simulation_batch_size is not None:
        simulation_batch_size = as_count(simulation_batch_size, "train: simulation_batch_size")
    if num_simulations < 2 * rounds:
        raise ValueError(
            f"train needs at least 2 simulations per round; got rounds={rounds}, "
            f"num_simulations={num_simulations}"
        )
    if rounds > 1 and store is not None:
        raise ValueError(
            "train: store= keeps simulations of one proposal; it cannot be combined with "
            "rounds > 1, whose proposals are posteriors"
        )
    if seed is not None:
        pyro.set_rng_seed(seed)
    fit_options = _checked_fit_options(fit_options)
    fit_options.setdefault("progress", progress)
    if seed is not None:
        fit_options.setdefault("seed", seed)

    if augment not in (None, "score", "ratio"):
        raise ValueError(f'train: augment must be None, "score" or "ratio"; got {augment!r}')
    if guide is not None and rounds > 1:
        raise ValueError(
            "train: an amortised guide learns from the prior; rounds > 1 would draw from "
            "posteriors, which it cannot correct for"
        )

    collector = _Collector()
    with poutine.block(), collector:
        model(*args, **kwargs)
    collector.sites = {
        name: site for name, site in collector.sites.items() if site.estimator is not None
    }
    if not collector.sites and guide is None:
        raise ValueError(
            "train found no SimulatorDistribution sample site with an estimator in the "
            "model; wrap the simulator as pyro.sample(name, SimulatorDistribution(simulator, "
            "theta, estimator)), or pass guide=AmortizedGuide(model)"
        )
    if rounds > 1 and not collector.observed:
        raise ValueError(
            "train: rounds > 1 draw from the posterior given the observations, but no "
            "simulator site is observed; pass the data to the model (obs=...)"
        )
    if augment is not None:
        _check_augmentable(collector.sites, augment)
    groups = _group_by_estimator(collector.sites)
    if (
        guide is not None
        and collector.sites
        and all(option is None for option in (store, proposal, augment))
    ):
        return _train_with_guide(  # one budget: the guide's draws train the estimators too
            guide, args, kwargs, collector, groups, num_simulations, seed, fit_options,
            validity, progress,
        )  # fmt: skip
    stored = TrainingStore(store) if store is not None else None
    records: dict[str, list[Simulations]] = {name: [] for name in collector.sites}
    reports: dict[str, SiteReport] = {}
    for round_index, budget in enumerate(_split(num_simulations, rounds)):
        shares = {
            name: count
            for names in groups.values()
            for name, count in zip(names, _split(budget, len(names)), strict=True)
        }
        if round_index == 0:
            thetas = _draw_theta(model, args, kwargs, collector, shares, proposal)
        else:
            round_seed = None if seed is None else seed + round_index
            thetas = _posterior_theta(
                model, args, kwargs, collector, shares, sampler_options, round_seed, progress
            )
        for names in groups.values():
            for name in names:
                site = collector.sites[name]
                theta = thetas[name]
                group, site_seed = None, None
                if seed is not None:
                    site_seed = derive(seed + round_index, name)
                if stored is not None:
                    site_proposal = (
                        proposal.get(name) if isinstance(proposal, Mapping) else proposal
                    )
                    group, theta, resumed = stored.site(name, site.simulator, theta, site_proposal)
                    if resumed:
                        site_seed = None  # the stored root seed goes on
                records[name].append(
                    simulate(
                        _simulator(site, augment),
                        theta,
                        batch_size=simulation_batch_size,
                        batched=site.batched,
                        numpy=site.numpy,
                        executor=executor,
                        seed=site_seed,
                        timeout=timeout,
                        max_failure_fraction=max_failure_fraction,
                        store=group,
                        progress=progress,
                    )
                )
            pooled = [record for name in names for record in records[name]]
            report = _fit_site(names, collector, pooled, fit_options, validity, augment)
            if progress:
                prefix = f"round {round_index + 1}/{rounds}: " if rounds > 1 else ""
                print(prefix + str(report))
            reports.update(dict.fromkeys(names, report))
    if guide is not None:
        guide.fit(
            num_simulations, *args, seed=seed, fit_options=fit_options, progress=progress,
            **kwargs,
        )  # fmt: skip
        if progress:
            print(_guide_summary(guide))
    return reports


def _train_with_guide(
    guide, args, kwargs, collector, groups, num_simulations, seed, fit_options, validity, progress
) -> dict[str, SiteReport]:
    """Fits the guide and every likelihood estimator on one set of prior predictive draws."""
    if seed is not None:
        pyro.set_rng_seed(seed)
    start = time.perf_counter()
    u, x, rows = guide.simulate_sites(num_simulations, list(collector.sites), *args, **kwargs)
    seconds = time.perf_counter() - start
    total = sum(len(context) for context, _ in rows.values())
    reports: dict[str, SiteReport] = {}
    for names in groups.values():
        records = []
        for name in names:
            context, values = rows[name]
            if len(context) > num_simulations:  # what a separate simulation would train on
                keep = torch.randperm(len(context))[:num_simulations]
                context, values = context[keep], values[keep]
            finite = torch.isfinite(values.reshape(len(values), -1)).all(-1)
            status = torch.where(finite, OK, NONFINITE).to(torch.int8)
            share = seconds * len(context) / max(total, 1)
            seeds = torch.full((len(context),), -1, dtype=torch.int64)
            records.append(Simulations(context, values, status, seeds, seconds=share))
        report = _fit_site(names, collector, records, fit_options, validity)
        if progress:
            print(report)
        reports.update(dict.fromkeys(names, report))
    guide.fit_draws(u, x, seed=seed, fit_options=fit_options, progress=progress)
    if progress:
        print(_guide_summary(guide))
    return reports


def _guide_summary(guide: AmortizedGuide) -> str:
    history = guide.history
    return (
        f"guide {type(guide.estimator).__name__} of "
        f"{[latent.name for latent in guide.latents]}: "
        f"{guide.estimator.num_simulations} simulations, {history.epochs} epochs, "
        f"validation loss {history.best_validation_loss:.3f}"
    )


def _checked_fit_options(fit_options: Mapping | None) -> dict:
    """A copy of `fit_options`, refused before any simulation if a key is not an option.

    The options are the keyword arguments of :func:`pyro_sbi.fitting.fit` after
    `(estimator, theta, x)`, read from its signature.
    """
    from pyro_sbi.fitting import fit

    if fit_options is None:
        return {}
    if not isinstance(fit_options, Mapping):
        raise TypeError(
            "train: fit_options must be a mapping of options of pyro_sbi.fitting.fit, e.g. "
            f'{{"max_epochs": 200}}; got {type(fit_options).__name__}'
        )
    if "score" in fit_options:
        raise TypeError(
            'train: fit_options cannot hold "score"; train(..., augment="score") simulates the '
            "joint scores of a PyroSimulator and trains on them"
        )
    if "theta_alt" in fit_options or "ratio" in fit_options:
        raise TypeError(
            'train: fit_options cannot hold "theta_alt" or "ratio"; train(..., augment="ratio") '
            "simulates the joint ratios of a PyroSimulator and trains on them"
        )
    parameters = list(inspect.signature(fit).parameters.values())
    if any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters):
        return dict(fit_options)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    valid = sorted(parameter.name for parameter in parameters[3:] if parameter.kind in kinds)
    unknown = [key for key in fit_options if key not in valid]
    if unknown:
        hints = [
            f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key)
            for key in unknown
            for close in [difflib.get_close_matches(str(key), valid, n=1)]
        ]
        raise TypeError(
            f"train: unknown fit_options key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(hints)}; the options of pyro_sbi.fitting.fit are {', '.join(valid)}"
        )
    return dict(fit_options)


def _fit_site(names, collector, records, fit_options, validity, augment=None) -> SiteReport:
    """Fits the estimator shared by `names` on all their simulations so far."""
    site = collector.sites[names[0]]
    estimator = site.estimator
    theta_all = torch.cat([record.theta for record in records]).to(torch.get_default_dtype())
    ok = torch.cat([record.ok for record in records])
    theta, x = theta_all[ok], torch.cat([record.x for record in records])[ok]
    augmented = {}
    if augment == "score":  # rows [x, log p(x, z | theta), score] of PyroSimulator.with_score
        x, _, augmented["score"] = PyroSimulator.unpack(x, theta.shape[-1], site.x_shape)
    elif augment == "ratio":  # rows [x, theta_alt, sigmoid(log r)] of PyroSimulator.with_ratio
        x, theta_alt, ratio = PyroSimulator.unpack_ratio(x, theta.shape[-1], site.x_shape)
        augmented = {"theta_alt": theta_alt, "ratio": ratio}
    num_failed = int((~ok).sum())
    classifier = None
    if num_failed:
        counts = {
            kind: sum(record.counts()[kind] for record in records) for kind in records[0].counts()
        }
        kinds = ", ".join(f"{count} {kind}" for kind, count in counts.items() if count)
        warnings.warn(
            f"{', '.join(names)}: {num_failed} of {len(ok)} simulations failed ({kinds}) "
            "and are left out of training"
            + ("; P(valid | theta) is learned and added to the likelihood" if validity else ""),
            stacklevel=3,
        )
    history = estimator.fit(theta, x, **fit_options, **augmented)
    own = ("score_weight", "normalize_score", "validate_score", "ratio_weight")
    fit_options = {key: value for key, value in fit_options.items() if key not in own}  # validity
    estimator.condition_dim = collector.sites[names[0]].condition_dim  # columns of theta
    if num_failed and validity:
        classifier = ValidityClassifier()
        classifier.fit(theta_all, ok.to(theta_all.dtype).unsqueeze(-1), **fit_options)
        estimator.validity = classifier
    seconds = sum(record.seconds for record in records)
    return SiteReport(
        names, estimator, theta, x, num_failed, history, seconds, records, classifier,
        **augmented,
    )  # fmt: skip


def _simulator(site: SimulatorDistribution, augment: str | None) -> Callable:
    """What `train` simulates at `site`: its rows, or the packed rows of `augment`."""
    if augment == "score":
        return site.simulator.with_score()
    if augment == "ratio":
        return site.simulator.with_ratio()
    return site.row_simulator


def _check_augmentable(sites: Mapping[str, SimulatorDistribution], augment: str) -> None:
    """Raises naming every site that cannot give joint scores or ratios (`augment=`)."""
    what = {"score": "joint score", "ratio": "joint ratio"}[augment]
    for name, site in sites.items():
        if not isinstance(site.simulator, PyroSimulator):
            raise ValueError(
                f"train(augment={augment!r}): site {name!r} has the simulator "
                f"{simulator_name(site.simulator)}, not a PyroSimulator, so it has no {what}; "
                "write the simulator as a Pyro program fn(theta) -> x and pass "
                "SimulatorDistribution(PyroSimulator(fn), theta, estimator)"
            )
        if site.condition is not None or not site.batched or site.numpy:
            raise ValueError(
                f"train(augment={augment!r}): site {name!r} has a condition, batched=False or "
                "numpy=True; a PyroSimulator takes a batch of theta as a tensor, without a "
                "condition"
            )
        members = getattr(site.estimator, "members", [site.estimator])
        if augment == "ratio" and not all(
            "ratio" in inspect.signature(member.loss).parameters for member in members
        ):
            raise ValueError(
                f'train(augment="ratio"): site {name!r} has the estimator '
                f"{type(site.estimator).__name__}, which does not train on joint ratios; NRE does"
            )


def _posterior_theta(
    model, args, kwargs, collector, shares, sampler_options, seed, progress
) -> dict[str, Tensor]:
    """`(share, D)` parameters per site, from the model's current posterior."""
    from pyro_sbi.infer import SliceMCMC

    per_draw = {name: _count(collector.sites[name]) for name in shares}
    draws = max(math.ceil(shares[name] / per_draw[name]) for name in shares)
    options = {"num_chains": min(draws, 200), "warmup_steps": 50, **(sampler_options or {})}
    options.setdefault("num_samples", math.ceil(draws / options["num_chains"]))
    mcmc = SliceMCMC(model, seed=seed, progress=progress, **options).run(*args, **kwargs)
    samples = mcmc.get_samples()
    size = len(next(iter(samples.values())))
    runner = ModelRunner(model, args, kwargs)

    def step(points, index):
        run = _Collector()
        with run, runner.plate(points, index):
            runner.condition(samples, index)(*args, **kwargs)
        if index is None and set(run.sites) != set(shares):
            missing = sorted(set(shares) - set(run.sites))
            raise ValueError(f"the simulator sites {missing} were not reached")
        return run

    runs, _ = runner.map(size, step)
    thetas = {name: [] for name in shares}
    for run in runs:
        _extend(thetas, run, set(shares))
    joined = {name: torch.cat(parts) for name, parts in thetas.items()}
    out = {}
    for name, share in shares.items():
        theta = joined[name]
        index = torch.randperm(len(theta))[:share] if len(theta) >= share else None
        out[name] = theta[index] if index is not None else theta
    return out


class _Collector(Messenger):
    """Intercepts simulator sites: records their distribution, never simulates."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: dict[str, SimulatorDistribution] = {}
        self.observed: set[str] = set()
        self.max_batch_dims = 0

    def _pyro_sample(self, msg) -> None:
        frames = [frame.dim for frame in msg["cond_indep_stack"] if frame.vectorized]
        depth = max([-dim for dim in frames] + [len(getattr(msg["fn"], "batch_shape", ()))])
        self.max_batch_dims = max(self.max_batch_dims, depth)
        fn = simulator_of(msg["fn"])
        if fn is None:
            return
        self.sites[msg["name"]] = fn
        if msg["is_observed"]:
            self.observed.add(msg["name"])
        if msg["value"] is None:
            msg["value"] = torch.zeros(msg["fn"].shape())
        msg["done"] = True


def _draw_theta(model, args, kwargs, collector, shares, proposal) -> dict[str, Tensor]:
    """`(share, D)` parameters per site, from the proposal or the model's prior."""
    thetas: dict[str, list[Tensor]] = {name: [] for name in shares}
    for name in shares:
        site_proposal = proposal.get(name) if isinstance(proposal, Mapping) else proposal
        if site_proposal is not None:
            theta = site_proposal.sample((shares[name],))
            dim = collector.sites[name].theta.shape[-1]
            if theta.shape != (shares[name], dim):
                raise ValueError(
                    f"site {name!r}: the proposal gives theta of shape "
                    f"{tuple(theta.shape[1:])}; the site has {dim} parameters"
                )
            thetas[name] = [_with_design(collector.sites[name], theta.detach())]
    missing = {name for name in shares if not thetas[name]}
    _extend(thetas, collector, missing)  # the first run is used too

    runner = ModelRunner(model, args, kwargs, nesting=collector.max_batch_dims)

    def step(points, index):
        run = _Collector()
        with run, runner.plate(points, index):
            model(*args, **kwargs)
        return run

    while missing := {n for n in missing if sum(map(len, thetas[n])) < shares[n]}:
        per_run = min(_count(collector.sites[n]) for n in missing)
        need = max(shares[n] - sum(map(len, thetas[n])) for n in missing)
        for run in runner.map(math.ceil(need / max(per_run, 1)), step)[0]:
            _extend(thetas, run, missing)
    return {name: torch.cat(thetas[name])[: shares[name]] for name in shares}


def _extend(thetas: dict[str, list[Tensor]], run: _Collector, names: set[str]) -> None:
    for name in names:
        if name in run.sites:
            thetas[name].append(_rows(run.sites[name]))


def _rows(site: SimulatorDistribution) -> Tensor:
    """`(n, D + d_u)` distinct rows to simulate: `theta`, or `[theta, condition]`."""
    return _distinct(site.context)


def _with_design(site: SimulatorDistribution, theta: Tensor) -> Tensor:
    """`(n, D)` proposal draws, each with a condition row of the site's design at random."""
    if site.condition is None:
        return theta
    design = _distinct(site.condition)
    chosen = design[torch.randint(len(design), (len(theta),))]
    return torch.cat([theta.to(chosen.dtype), chosen], -1)


def _distinct(theta: Tensor) -> Tensor:
    """`(n, D)` parameters of a `(*batch, D)` tensor, counting broadcast copies once."""
    index = tuple(
        slice(0, 1) if stride == 0 and size > 1 else slice(None)
        for size, stride in zip(theta.shape[:-1], theta.stride()[:-1], strict=True)
    )
    return theta[index].detach().reshape(-1, theta.shape[-1])


def _count(site: SimulatorDistribution) -> int:
    return len(_rows(site))


def _group_by_estimator(sites: Mapping[str, SimulatorDistribution]) -> dict[int, list[str]]:
    groups: dict[int, list[str]] = {}
    for name, site in sites.items():
        groups.setdefault(id(site.estimator), []).append(name)
    for names in groups.values():
        dims = {_theta_dim(sites[name]) for name in names}
        if len(dims) > 1:
            raise ValueError(
                f"sites {names} share one estimator but have different numbers of "
                f"parameters {sorted(dims)}; give each its own estimator"
            )
        columns = {sites[name].condition_dim for name in names}
        if len(columns) > 1:
            raise ValueError(
                f"sites {names} share one estimator but have conditions of different "
                f"numbers of columns {sorted(columns)} (0: no condition); give each its own "
                "estimator"
            )
    return groups


def _theta_dim(site: SimulatorDistribution) -> int:
    """The parameter dimension `D` of a simulator site."""
    return site.theta.shape[-1]


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]
