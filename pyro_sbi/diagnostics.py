r"""Diagnostics: can the learned likelihood and the posterior be trusted?

- :func:`c2st` is the classifier two-sample test: a classifier is trained to tell two
  sets of samples apart, and its held-out accuracy measures how different they are
  (0.5: indistinguishable; 1: disjoint). It is the accuracy metric of the SBI
  benchmark, comparing a posterior approximation to a reference posterior.
- :func:`sbc` is simulation-based calibration (Talts et al., 2018): parameters drawn
  from the prior, data simulated with the real simulator, inference run on each data
  set; the rank of the true parameter among the posterior draws is uniform when the
  whole pipeline (learned likelihood and sampler) is calibrated. Its
  :class:`SBCResult` also gives the expected coverage of central credible intervals per
  parameter and of joint highest-posterior-density regions.
- :func:`outside_training` measures how much of a posterior lies where a simulator
  site's estimator never saw training parameters (local validity).
- :func:`likelihood_error` estimates, without an exact likelihood, how far the
  learned likelihood's error moves the posterior of the user's own model and data, in
  posterior sds, from the disagreement of an ensemble's members.
- :func:`ppc` compares statistics of the observed data with the same statistics of
  data simulated at posterior draws (posterior predictive p-values).

References:
    | Revisiting Classifier Two-Sample Tests (Lopez-Paz & Oquab, 2017)
    | https://arxiv.org/abs/1610.06545

    | Benchmarking Simulation-Based Inference (Lueckmann et al., 2021)
    | https://arxiv.org/abs/2101.04653

    | Validating Bayesian Inference Algorithms with Simulation-Based Calibration
    | (Talts et al., 2018) https://arxiv.org/abs/1804.06788

    | Graphical Test for Discrete Uniformity and its Applications in Goodness of Fit
    | Evaluation and Multiple Sample Comparison (Säilynoja et al., 2022)
    | https://arxiv.org/abs/2103.10522
"""

from __future__ import annotations

__all__ = ["SBCResult", "c2st", "likelihood_error", "outside_training", "ppc", "sbc"]

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS
from torch import Tensor, nn
from tqdm.auto import tqdm

from pyro_sbi import threads


def c2st(
    a: Tensor,
    b: Tensor,
    *,
    folds: int = 5,
    hidden_features: int | None = None,
    steps: int = 1000,
    learning_rate: float = 1e-2,
    seed: int = 0,
) -> float:
    r"""Classifier two-sample test: cross-validated accuracy of telling `a` from `b`.

    Both sets are z-scored with the statistics of `a` (the reference), labelled, and
    split into `folds` folds; an MLP with two hidden layers of `hidden_features`
    (default `10 D`, as in the SBI benchmark) is trained with full-batch Adam on all
    folds but one and scored on the held-out fold. The larger set is subsampled to the
    size of the smaller one and every fold holds as many samples of `a` as of `b`, so
    that chance is 0.5.

    Arguments:
        a: `(n, D)` samples (e.g. from the reference posterior).
        b: `(m, D)` samples (e.g. from the approximation).
        folds: number of cross-validation folds.
        hidden_features: width of the hidden layers (`10 D` when `None`).
        steps: Adam steps per fold.
        learning_rate: Adam's step size.
        seed: seeds the subsampling, the folds and the networks; the global random
            state is left untouched.

    Returns:
        The mean held-out accuracy, between 0 and 1; about 0.5 when `a` and `b` come
        from the same distribution.

    Example:
        >>> a, b = torch.randn(500, 2), torch.randn(500, 2) + 4.0
        >>> c2st(a, b, steps=200) > 0.95
        True
    """
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    a = a.reshape(len(a), -1).to(torch.get_default_dtype())
    b = b.reshape(len(b), -1).to(torch.get_default_dtype())
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"c2st: samples of different sizes {tuple(a.shape)}, {tuple(b.shape)}")
    bad = int((~a.isfinite()).any(-1).sum() + (~b.isfinite()).any(-1).sum())
    if bad:
        raise ValueError(f"c2st: {bad} samples hold NaN or inf; remove them first")
    n = min(len(a), len(b))
    if n < folds:
        raise ValueError(f"c2st needs at least folds={folds} samples in each set; got {n}")
    dim = a.shape[-1]
    hidden = hidden_features or 10 * dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        a = a[torch.randperm(len(a))[:n]]
        b = b[torch.randperm(len(b))[:n]]
        loc, scale = a.mean(0), a.std(0).clamp_min(1e-12)
        data = (torch.cat([a, b]) - loc) / scale
        labels = torch.cat([torch.zeros(n), torch.ones(n)])
        fold = torch.cat([torch.randperm(n) % folds, torch.randperm(n) % folds])  # balanced
        accuracies = []
        for k in range(folds):
            train, test = fold != k, fold == k
            net = nn.Sequential(
                nn.Linear(dim, hidden),
                nn.ReLU(),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
                nn.Linear(hidden, 1),
            )
            optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate)
            loss_fn = nn.BCEWithLogitsLoss()
            for _ in range(steps):
                optimizer.zero_grad()
                loss_fn(net(data[train]).squeeze(-1), labels[train]).backward()
                optimizer.step()
            with torch.no_grad():
                predicted = net(data[test]).squeeze(-1) > 0
            accuracies.append((predicted == labels[test].bool()).float().mean())
    return float(torch.stack(accuracies).mean())


# local validity ---------------------------------------------------------------------


def outside_training(posterior, model: Callable, *args, **kwargs) -> dict[str, float]:
    r"""The share of posterior draws that put a simulator site's parameters outside training.

    For each :class:`~pyro_sbi.SimulatorDistribution` site, the model is run at every
    posterior draw and the site's parameters are checked with
    :meth:`pyro_sbi.nn.Estimator.outside` (outside the range of the training parameters,
    or farther from their mean than any of them in Mahalanobis distance). A draw counts
    as outside when any of the site's parameter vectors (e.g. any subject's) is.

    Arguments:
        posterior: a finished :class:`pyro.infer.MCMC` run or a mapping from latent site
            names to draws `(num_draws, *site_shape)`.
        model: the Pyro model.
        args: its positional arguments (with the observations).
        kwargs: its keyword arguments.

    Returns:
        The share in [0, 1] per simulator site name.
    """
    from pyro_sbi.inference_data import _base_trace, _max_plate_nesting, _posterior_draws, _Runner

    samples, _ = _posterior_draws(posterior)
    flat = {name: value.reshape(-1, *value.shape[2:]) for name, value in samples.items()}
    base = _base_trace(model, args, kwargs)
    sites = _Runner(model, base, _max_plate_nesting(base), args, kwargs)(flat)
    return {
        name: float(site["outside"].float().mean())
        for name, site in sites.items()
        if site["outside"] is not None
    }


def likelihood_error(
    posterior, model: Callable, *args, chunk_size: int = 500, **kwargs
) -> dict[str, np.ndarray]:
    r"""How far the learned likelihood's own scatter may move the posterior, in posterior sds.

    No exact likelihood is needed: the members of an :class:`~pyro_sbi.Ensemble` are
    estimators that could each have been trained, and each one's posterior differs from
    the sampled one (the ensemble's) by the importance weights

    .. math::

        w_m(\theta) \propto \prod_t \frac{q_m(x_t \mid \theta)}{q(x_t \mid \theta)}

    over every observed element :math:`x_t` of the ensemble's sites (the trials of the
    user's own data, at their own count). For each latent element, the shift of its
    posterior mean under member :math:`m`,
    :math:`z_m = (\mathbb{E}_{w_m}[\theta] - \mathbb{E}[\theta]) / \mathrm{sd}[\theta]`,
    is computed from the posterior draws alone, and the result is their spread
    :math:`\sqrt{\sum_m z_m^2 / (M - 1)}`: the error, in posterior sds, that one more
    training run would make. Per-trial errors that add up over hundreds of trials show
    here, because the weights multiply over the trials.

    When to trust it: it measures how much estimators trained like these *disagree*.
    With :class:`~pyro_sbi.Ensemble`\ `(..., bootstrap=True)` the members are trained on
    different resamples of the simulations and the number includes the error that comes
    from having only `N` simulations; without it, the members share every simulation
    and it shows only the scatter of training. It cannot see an error all members share
    (a flow family that cannot represent the likelihood, or a simulation budget that
    misses a region entirely); :func:`c2st` against an exact posterior, where one
    exists, and :func:`sbc` remain the tests of that. The numbers come from importance
    weights of the draws: when a member's weights have an effective sample size below
    about 20 draws, the posteriors barely overlap, the shift is larger than the draws
    can show, and a warning says so.

    Arguments:
        posterior: a finished :class:`pyro.infer.MCMC` or :class:`~pyro_sbi.SliceMCMC`
            run, or a mapping from latent site names to draws `(num_draws, *site_shape)`.
        model: the Pyro model; at least one observed simulator site must have an
            :class:`~pyro_sbi.Ensemble` estimator.
        args: its positional arguments (with the observations).
        chunk_size: posterior draws per vectorised run of the model.
        kwargs: its keyword arguments.

    Returns:
        Per latent site, a `site_shape` array of errors in posterior sds (one per
        element, e.g. per subject); errors of several ensemble sites add in quadrature.

    Example:
        >>> import pyro.distributions as dist
        >>> from pyro_sbi import NLE, Ensemble, SimulatorDistribution
        >>> theta = torch.randn(2000, 1)
        >>> likelihood = Ensemble(lambda: NLE(), size=3, bootstrap=True)
        >>> _ = likelihood.fit(theta, theta + torch.randn(2000, 1), max_epochs=5,
        ...                    progress=False, seed=0)
        >>> def model(x=None):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("trials", 50):
        ...         return pyro.sample("x", SimulatorDistribution(
        ...             lambda t: t + torch.randn_like(t), mu.unsqueeze(-1), likelihood), obs=x)
        >>> error = likelihood_error({"mu": 0.3 + 0.14 * torch.randn(1000)}, model,
        ...                          torch.randn(50, 1) + 0.3)
        >>> error["mu"].shape
        ()
    """
    from pyro_sbi.inference_data import (
        _base_trace,
        _max_plate_nesting,
        _member_shifts,
        _posterior_draws,
        _Runner,
    )

    samples, _ = _posterior_draws(posterior)
    flat = {name: value.reshape(-1, *value.shape[2:]) for name, value in samples.items()}
    num_draws = len(next(iter(flat.values())))
    base = _base_trace(model, args, kwargs)
    runner = _Runner(model, base, _max_plate_nesting(base), args, kwargs, members=True)
    members: dict[str, list[Tensor]] = {}
    for start in range(0, num_draws, chunk_size):
        chunk = {name: value[start : start + chunk_size] for name, value in flat.items()}
        for name, site in runner(chunk).items():
            if "members" in site:
                members.setdefault(name, []).append(site["members"])
    if not members:
        raise TypeError(
            "likelihood_error needs an observed simulator site whose estimator is an "
            "Ensemble, e.g. SimulatorDistribution(simulator, theta, Ensemble(lambda: NLE(), "
            "size=5, bootstrap=True)); the model has none"
        )
    latent = {name: value for name, value in flat.items() if name in base.nodes}
    by_site = _member_shifts(latent, members)
    return {
        name: np.sqrt(sum(errors[name] ** 2 for errors in by_site.values())) for name in latent
    }


# posterior predictive checks -----------------------------------------------------------


def ppc(
    idata,
    statistics: Mapping[str, Callable] | None = None,
    *,
    var_name: str | None = None,
    plot: bool = False,
):
    r"""Posterior predictive p-values: observed statistics against simulated ones.

    For each statistic `T`, the p-value is the share of posterior predictive data sets
    (simulated by the real simulator, see :func:`~pyro_sbi.to_inference_data`) with
    `T(x_rep) >= T(x_obs)`; values near 0 or 1 flag a misfit.

    Arguments:
        idata: an `InferenceData` with `observed_data` and `posterior_predictive`.
        statistics: name to function `x (*shape) -> scalar` of a numpy array with the
            observed site's shape; by default the mean, standard deviation, minimum
            and maximum of every column of the last dimension.
        var_name: the observed site (the only one by default).
        plot: also draw a histogram of each statistic with the observed value.

    Returns:
        A dict from statistic name to p-value (and the matplotlib figure as
        `(p_values, figure)` when `plot`).
    """
    names = list(idata.observed_data.data_vars)
    var_name = var_name or names[0]
    if var_name not in names:
        raise ValueError(f"no observed site {var_name!r}; the observed sites are {names}")
    observed = idata.observed_data[var_name].values
    simulated = idata.posterior_predictive[var_name].values
    simulated = simulated.reshape(-1, *observed.shape)
    if statistics is None:
        statistics = _default_statistics(observed)
    p_values, values = {}, {}
    for name, statistic in statistics.items():
        reference = float(statistic(observed))
        replicated = np.array([float(statistic(x)) for x in simulated])
        values[name] = (reference, replicated)
        p_values[name] = float(np.mean(replicated >= reference))
    if not plot:
        return p_values
    from pyro_sbi.plot import plot_ppc

    return p_values, plot_ppc(values, p_values)


def _default_statistics(observed: np.ndarray) -> dict[str, Callable]:
    columns = observed.shape[-1] if observed.ndim > 1 else 1
    statistics = {}
    for column in range(columns):

        def part(x, column=column):
            return x[..., column] if x.ndim > 1 else x

        suffix = f"[{column}]" if columns > 1 else ""
        statistics[f"mean{suffix}"] = lambda x, part=part: np.nanmean(part(x))
        statistics[f"sd{suffix}"] = lambda x, part=part: np.nanstd(part(x))
        statistics[f"min{suffix}"] = lambda x, part=part: np.nanmin(part(x))
        statistics[f"max{suffix}"] = lambda x, part=part: np.nanmax(part(x))
    return statistics


# simulation-based calibration -----------------------------------------------------------


@dataclass
class SBCResult:
    r"""Ranks of simulation-based calibration.

    Attributes:
        ranks: `(num_datasets, P)` rank of each true scalar parameter among the
            `num_draws` posterior draws (an integer in `[0, num_draws]`).
        names: the `P` parameter labels, e.g. `"theta[1]"`.
        num_draws: posterior draws per data set `L`.
        hpd: `(num_datasets,)` share of posterior draws with a higher posterior density
            than the true parameters: the truth lies in the `q` highest-density region
            when `hpd < q`.
        seconds: wall time.
    """

    ranks: np.ndarray
    names: list[str]
    num_draws: int
    hpd: np.ndarray
    seconds: float

    def p_values(self, bins: int | None = None) -> dict[str, float]:
        r"""A chi-square test of uniform ranks per parameter.

        Arguments:
            bins: number of bins (`min(20, num_datasets // 5)` by default). The expected
                count of each bin is exact for the discrete uniform on `0..num_draws`.

        Returns:
            The p-value per parameter label.
        """
        from scipy.stats import chisquare

        n = len(self.ranks)
        bins = bins or max(2, min(20, n // 5))
        edges = np.linspace(0, self.num_draws + 1, bins + 1)
        support = np.arange(self.num_draws + 1)
        expected = np.histogram(support, edges)[0] / (self.num_draws + 1) * n
        return {
            name: float(chisquare(np.histogram(self.ranks[:, j], edges)[0], expected).pvalue)
            for j, name in enumerate(self.names)
        }

    def rejected(self, alpha: float = 0.05) -> bool:
        """Whether uniformity is rejected at level `alpha` (Bonferroni over parameters)."""
        return min(self.p_values().values()) < alpha / len(self.names)

    def coverage(
        self, levels: Sequence[float] | np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        r"""Expected coverage of credible regions against their nominal level.

        Arguments:
            levels: nominal levels in (0, 1) (by default 0.05, 0.10, ..., 0.95).

        Returns:
            `"level"`, then per parameter the share of data sets whose true value lies in
            the central credible interval of each level, and `"joint"`: the share whose
            true parameters lie in the highest-posterior-density region of each level.
            A calibrated posterior gives coverage equal to the level; below means
            overconfident.
        """
        levels = np.linspace(0.05, 0.95, 19) if levels is None else np.asarray(levels)
        u = (self.ranks + 0.5) / (self.num_draws + 1)
        result = {"level": levels}
        for j, name in enumerate(self.names):
            inside = np.abs(u[:, j, None] - 0.5) <= levels[None] / 2
            result[name] = inside.mean(0)
        result["joint"] = (self.hpd[:, None] < levels[None]).mean(0)
        return result

    def plot(self, **options):
        """ECDF-difference plots of the ranks with bands (:func:`pyro_sbi.plot.plot_sbc`)."""
        from pyro_sbi.plot import plot_sbc

        return plot_sbc(self, **options)


def sbc(
    model: Callable,
    *args,
    num_datasets: int = 100,
    num_draws: int = 100,
    observed: Sequence[str] | None = None,
    inference: Callable | None = None,
    warmup_steps: int = 200,
    thin: int = 2,
    executor: Executor | None = None,
    seed: int | None = None,
    progress: bool = True,
    **kwargs,
) -> SBCResult:
    r"""Simulation-based calibration of the whole pipeline: learned likelihood and sampler.

    For each of `num_datasets` data sets: latent parameters are drawn from the model's
    prior, the observed sites are simulated (simulator sites by the real simulator),
    and inference conditioned on that data gives `num_draws` posterior draws; the rank
    of each true scalar parameter among its draws is recorded.

    Arguments:
        model: a Pyro model; `args` and `kwargs` are its arguments (observations given
            there are ignored: each data set replaces them).
        args: the model's positional arguments.
        num_datasets: number of simulated data sets.
        num_draws: posterior draws `L` per data set (ranks lie in `0..L`).
        observed: the sites that are data (by default the sites observed in
            `model(*args, **kwargs)` and every simulator site).
        inference: `inference(conditioned_model, args, kwargs) -> {site: (L, *shape)}`;
            by default NUTS with `warmup_steps` and `thin * num_draws` draws thinned by
            `thin` (fewer autocorrelated draws, as SBC needs).
        warmup_steps: NUTS warm-up steps of the default inference.
        thin: thinning of the default inference.
        executor: a :class:`concurrent.futures.Executor` running data sets in parallel
            (the model and the trained estimators must be picklable, or the workers
            forked after training).
        seed: root seed; data set `i` uses the seed `seed + i`.
        progress: show a progress bar.
        kwargs: the model's keyword arguments.

    Returns:
        An :class:`SBCResult`.
    """
    start = time.perf_counter()
    if seed is None:
        seed = int(torch.randint(2**31, ()))
    base = _unconditioned_trace(model, args, kwargs)
    if observed is None:
        from pyro_sbi.inference_data import _sample_sites, _simulator_site

        observed = [
            name for name, site in _sample_sites(_traced(model, args, kwargs))
            if site["is_observed"] or _simulator_site(site) is not None
        ]  # fmt: skip
    observed = list(observed)
    if not observed:
        raise ValueError(
            "sbc found no data sites: the model has no simulator site and observes nothing "
            "when called with these arguments; name them with observed=[...]"
        )
    options = dict(
        observed=observed, inference=inference, num_draws=num_draws,
        warmup_steps=warmup_steps, thin=thin,
    )  # fmt: skip
    bar = tqdm(total=num_datasets, desc="SBC", unit="data set", disable=not progress)
    if executor is None:
        results = []
        for i in range(num_datasets):
            results.append(_sbc_one(model, args, kwargs, seed + i, **options))
            bar.update()
    else:
        futures = [
            executor.submit(_sbc_one, model, args, kwargs, seed + i, **options)
            for i in range(num_datasets)
        ]
        results = []
        for future in futures:
            results.append(future.result())
            bar.update()
    bar.close()
    latent = [name for name in results[0][0]]
    names = [label for name in latent for label in _labels(name, base.nodes[name]["value"].shape)]
    ranks = np.stack([np.concatenate([r[0][name] for name in latent]) for r in results])
    hpd = np.array([r[1] for r in results])
    return SBCResult(ranks, names, num_draws, hpd, time.perf_counter() - start)


def _labels(name: str, shape) -> list[str]:
    if len(shape) == 0:
        return [name]
    return [f"{name}[{', '.join(map(str, index))}]" for index in np.ndindex(*shape)]


def _traced(model, args, kwargs):
    with torch.no_grad(), poutine.block():
        return poutine.trace(model).get_trace(*args, **kwargs)


def _unconditioned_trace(model, args, kwargs):
    return _traced(poutine.uncondition(model), args, kwargs)


def _sbc_one(model, args, kwargs, seed, **options):
    """Ranks `{site: (P_site,)}` and the HPD share for one simulated data set.

    In a forked worker it runs with one torch thread (:func:`pyro_sbi.threads.fork_safe`).
    """
    with threads.fork_safe():
        return _sbc_data_set(model, args, kwargs, seed, **options)


def _sbc_data_set(model, args, kwargs, seed, *, observed, inference, num_draws, warmup_steps,
                  thin):  # fmt: skip
    from pyro_sbi.inference_data import _max_plate_nesting, _Runner, _sample_sites

    pyro.set_rng_seed(seed)
    truth = _unconditioned_trace(model, args, kwargs)
    data = {name: truth.nodes[name]["value"] for name in observed}
    latent = [
        name for name, site in _sample_sites(truth)
        if name not in observed and not site["is_observed"]
    ]  # fmt: skip
    conditioned = poutine.condition(poutine.uncondition(model), data=data)
    if inference is None:
        kernel = NUTS(conditioned)
        mcmc = MCMC(
            kernel, num_samples=num_draws * thin, warmup_steps=warmup_steps,
            disable_progbar=True,
        )  # fmt: skip
        mcmc.run(*args, **kwargs)
        draws = {name: value[::thin] for name, value in mcmc.get_samples().items()}
    else:
        draws = inference(conditioned, args, kwargs)
    draws = {name: torch.as_tensor(draws[name])[:num_draws] for name in latent}
    if any(len(value) != num_draws for value in draws.values()):
        raise ValueError(f"the inference returned fewer than num_draws={num_draws} draws")
    ranks = {
        name: (draws[name].reshape(num_draws, -1) < truth.nodes[name]["value"].reshape(1, -1))
        .sum(0)
        .numpy()
        for name in latent
    }
    base = _traced(conditioned, args, kwargs)
    runner = _Runner(conditioned, base, _max_plate_nesting(base), args, kwargs)
    density = _log_joint(runner(draws))
    true_density = _log_joint(runner({name: truth.nodes[name]["value"][None] for name in latent}))
    return ranks, float((density > true_density).float().mean())


def _log_joint(sites: dict) -> Tensor:
    return sum(
        site["log_prob"].reshape(len(site["log_prob"]), -1).sum(-1) for site in sites.values()
    )
