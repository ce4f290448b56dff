r"""Where the learned likelihood can be trusted, read on the user's own posterior.

The training region of each simulator site's estimator, and the scatter of an
ensemble's members.
"""

from __future__ import annotations

__all__ = ["likelihood_error", "outside_training"]

from collections.abc import Callable, Mapping

import numpy as np
from torch import Tensor

from pyro_sbi.runner import model_keywords


def outside_training(
    posterior, model: Callable, *args, model_kwargs: Mapping | None = None, **kwargs
) -> dict[str, float]:
    r"""The share of posterior draws that put a simulator site's parameters outside training.

    For each :class:`~pyro_sbi.SimulatorDistribution` site, the model is run at every
    posterior draw and the site's parameters are checked with
    :meth:`pyro_sbi.estimator.Estimator.outside` (outside the range of the training parameters,
    or farther from their mean than any of them in Mahalanobis distance). A draw counts
    as outside when any of the site's parameter vectors (e.g. any subject's) is.

    Arguments:
        posterior: a finished :class:`pyro.infer.MCMC` run or a mapping from latent site
            names to draws `(num_draws, *site_shape)`.
        model: the Pyro model.
        args: its positional arguments (with the observations).
        kwargs: its keyword arguments.
        model_kwargs: keyword arguments of the model under any name, also one of this
            function's own options (such as `seed`); other keywords this function
            does not take go to the model too.

    Returns:
        The share in [0, 1] per simulator site name.
    """
    kwargs = model_keywords(kwargs, model_kwargs)
    from pyro_sbi.inference_data import DrawRunner, posterior_draws

    samples, _ = posterior_draws(posterior)
    flat = {name: value.reshape(-1, *value.shape[2:]) for name, value in samples.items()}
    sites = DrawRunner(model, args, kwargs)(flat)
    return {
        name: float(site["outside"].float().mean())
        for name, site in sites.items()
        if site["outside"] is not None
    }


def likelihood_error(
    posterior,
    model: Callable,
    *args,
    chunk_size: int = 500,
    model_kwargs: Mapping | None = None,
    **kwargs,
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
        model_kwargs: keyword arguments of the model under any name, also one of this
            function's own options (such as `seed`); other keywords this function
            does not take go to the model too.

    Returns:
        Per latent site, a `site_shape` array of errors in posterior sds (one per
        element, e.g. per subject); errors of several ensemble sites add in quadrature.

    Example:
        >>> import pyro
        >>> import pyro.distributions as dist
        >>> import torch
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
    kwargs = model_keywords(kwargs, model_kwargs)
    from pyro_sbi.inference_data import DrawRunner, member_shifts, posterior_draws

    samples, _ = posterior_draws(posterior)
    flat = {name: value.reshape(-1, *value.shape[2:]) for name, value in samples.items()}
    num_draws = len(next(iter(flat.values())))
    runner = DrawRunner(model, args, kwargs, members=True)
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
    latent = {name: value for name, value in flat.items() if name in runner.base.nodes}
    by_site = member_shifts(latent, members)
    return {
        name: np.sqrt(sum(errors[name] ** 2 for errors in by_site.values())) for name in latent
    }
