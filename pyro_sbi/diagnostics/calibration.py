r"""Simulation-based calibration of the whole pipeline (Talts et al., 2018)."""

from __future__ import annotations

__all__ = ["SBCResult", "sbc"]

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS
from torch import Tensor
from tqdm.auto import tqdm

from pyro_sbi import threads
from pyro_sbi.distribution import simulator_of
from pyro_sbi.runner import base_trace, model_keywords, sample_sites

if TYPE_CHECKING:
    from pyro_sbi.guide import AmortizedGuide


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
    guide: AmortizedGuide | None = None,
    warmup_steps: int = 200,
    thin: int = 2,
    executor: Executor | None = None,
    seed: int | None = None,
    progress: bool = True,
    model_kwargs: Mapping | None = None,
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
        guide: a trained :class:`~pyro_sbi.AmortizedGuide` giving the draws instead:
            no MCMC, so a thousand data sets take seconds. The HPD shares need every
            observed site's density and are NaN where a simulator site has no
            likelihood estimator.
        warmup_steps: NUTS warm-up steps of the default inference.
        thin: thinning of the default inference.
        executor: a :class:`concurrent.futures.Executor` running data sets in parallel
            (the model and the trained estimators must be picklable, or the workers
            forked after training).
        seed: root seed; data set `i` uses the seed `seed + i`.
        progress: show a progress bar.
        kwargs: the model's keyword arguments.
        model_kwargs: keyword arguments of the model under any name, also one of this
            function's own options (such as `seed`); other keywords this function
            does not take go to the model too.

    Returns:
        An :class:`SBCResult`.
    """
    kwargs = model_keywords(kwargs, model_kwargs)
    start = time.perf_counter()
    if guide is not None:
        if inference is not None:
            raise TypeError("sbc: give inference or guide, not both")

        def inference(conditioned, args, kwargs):
            return guide.sample_given(conditioned, num_draws, args, kwargs)

    if seed is None:
        seed = int(torch.randint(2**31, ()))
    base = _unconditioned_trace(model, args, kwargs)
    if observed is None:
        observed = [
            name for name, site in sample_sites(base_trace(model, args, kwargs))
            if site["is_observed"] or simulator_of(site["fn"]) is not None
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


def _unconditioned_trace(model, args, kwargs):
    return base_trace(poutine.uncondition(model), args, kwargs)


def _sbc_one(model, args, kwargs, seed, **options):
    """Ranks `{site: (P_site,)}` and the HPD share for one simulated data set.

    In a forked worker it runs with one torch thread (:func:`pyro_sbi.threads.fork_safe`).
    """
    with threads.fork_safe():
        return _sbc_data_set(model, args, kwargs, seed, **options)


def _sbc_data_set(model, args, kwargs, seed, *, observed, inference, num_draws, warmup_steps,
                  thin):  # fmt: skip
    from pyro_sbi.inference_data import DrawRunner

    pyro.set_rng_seed(seed)
    truth = _unconditioned_trace(model, args, kwargs)
    data = {name: truth.nodes[name]["value"] for name in observed}
    latent = [
        name for name, site in sample_sites(truth)
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
    if any(
        (simulator := simulator_of(truth.nodes[name]["fn"])) is not None
        and simulator.estimator is None
        for name in observed
    ):  # no density to rank the truth by
        return ranks, float("nan")
    runner = DrawRunner(conditioned, args, kwargs)
    density = _log_joint(runner(draws))
    true_density = _log_joint(runner({name: truth.nodes[name]["value"][None] for name in latent}))
    return ranks, float((density > true_density).float().mean())


def _log_joint(sites: dict) -> Tensor:
    return sum(
        site["log_prob"].reshape(len(site["log_prob"]), -1).sum(-1) for site in sites.values()
    )
