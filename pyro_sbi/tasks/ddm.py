r"""The drift-diffusion benchmark task: 100 i.i.d. trials of a reaction time and a choice.

The model, its exact density and its simulator are those of
:mod:`pyro_sbi.tasks.drift_diffusion` (:class:`DriftDiffusion`, :func:`simulate_ddm`).

**Prior.** The task's prior is the box of Boelts et al. (2022):
:math:`v \sim \mathcal{U}(-2, 2)`, :math:`a \sim \mathcal{U}(0.5, 2)`,
:math:`w \sim \mathcal{U}(0.3, 0.7)`, :math:`\tau \sim \mathcal{U}(0.2, 1.8)`.

**As a benchmark task.** An observation is :data:`TRIALS` i.i.d. trials of one
:math:`\theta`; estimators learn the single-trial likelihood from `simulator` (one
trial per parameter vector) and the task's Pyro :func:`model` puts the trials in a
plate. The ten observations are fixed (stored with the package, like the sbibm ones):
observation :math:`i` has true parameters drawn from the prior with seed :math:`i` and
its trials simulated with seed :math:`1000 + i`. The reference posterior of
observation :math:`i` is drawn by :class:`~pyro_sbi.SliceMCMC` on the **exact**
likelihood (:class:`DriftDiffusion`), 250 chains started by sampling-importance-
resampling from 10⁵ prior draws, 300 warm-up sweeps each; the posterior is unimodal.

References:
    | Flexible and efficient simulation-based inference for models of decision-making
      (Boelts et al., 2022), eLife 11:e77220
    | https://doi.org/10.7554/eLife.77220
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_sbi.tasks._common import TASK_NAMES, Task
from pyro_sbi.tasks.drift_diffusion import (  # noqa: F401 - re-exported for older imports
    NAMES,
    DriftDiffusion,
    ddm_log_prob,
    ddm_upper_prob,
    simulate_ddm,
)

__all__ = ["HIGH", "LOW", "NAME", "TRIALS", "log_likelihood", "sample_posterior", *TASK_NAMES]

NAME = "ddm"
TRIALS = 100  # i.i.d. trials per benchmark observation
MIXED = True  # (continuous reaction time, discrete choice): for MNLE, not NLE
SIR_CANDIDATES = 100_000  # at most, for samplers' SIR starts: each draw costs TRIALS terms
LOW = (-2.0, 0.5, 0.3, 0.2)
HIGH = (2.0, 2.0, 0.7, 1.8)


def prior() -> dist.Distribution:
    r"""The task's prior over :math:`\theta = (v, a, w, \tau)`: a box of uniforms.

    Returns:
        `Uniform(LOW, HIGH).to_event(1)`, a distribution with event shape `(4,)` in the
        default dtype.

    Example:
        >>> prior().sample((3,)).shape
        torch.Size([3, 4])
    """
    dtype = torch.get_default_dtype()
    low = torch.tensor(LOW, dtype=dtype)
    high = torch.tensor(HIGH, dtype=dtype)
    return dist.Uniform(low, high).to_event(1)


def simulator(theta: Tensor) -> Tensor:
    """`theta (n, 4) -> x (n, 2)`: one `(rt, choice)` trial per parameter vector.

    Example:
        >>> simulator(prior().sample((3,))).shape
        torch.Size([3, 2])
    """
    return simulate_ddm(theta)


def log_likelihood(x: Tensor, theta: Tensor) -> Tensor:
    r"""The exact single-trial :math:`\log p(x \mid \theta)`, `x (*, 2)`, `theta (*, 4)`."""
    return ddm_log_prob(x, theta)


def model(estimator, x: Tensor | None = None) -> Tensor:
    """The task as a Pyro model: `theta` from the prior, `x (TRIALS, 2)` i.i.d. trials.

    The trials' likelihood is `estimator`'s; with `estimator=None` it is the exact
    first-passage-time density (:class:`DriftDiffusion`).
    """
    import pyro

    from pyro_sbi import SimulatorDistribution

    theta = pyro.sample("theta", prior())
    with pyro.plate("trials", TRIALS if x is None else len(x), dim=-1):
        if estimator is None:
            fn = DriftDiffusion(*theta.unbind(-1))
        else:
            fn = SimulatorDistribution(simulator, theta, estimator)
        return pyro.sample("x", fn, obs=x)


def sample_posterior(x: Tensor, num_samples: int, *, seed: int = 0) -> Tensor:
    """`(num_samples, 4)` posterior draws for trials `x (n, 2)`, on the exact likelihood."""
    from pyro_sbi.infer import SliceMCMC

    chains = 250
    mcmc = SliceMCMC(
        model, num_samples=-(-num_samples // chains), num_chains=chains,
        warmup_steps=300, seed=seed, progress=False, max_candidates=SIR_CANDIDATES,
    )  # fmt: skip
    return mcmc.run(None, x).get_samples()["theta"][:num_samples]


TASK = Task(
    NAME,
    prior,
    simulator,
    sample_posterior,
    stored=True,
    model=model,
    log_likelihood=log_likelihood,
)
observation, true_parameters = TASK.observation, TASK.true_parameters
reference_posterior = TASK.reference_posterior


def _make_observations() -> dict:
    """The stored observations: how `observations.json["ddm"]` was made."""
    thetas, trials = [], []
    for i in range(1, 11):
        torch.manual_seed(i)
        theta = prior().sample()
        torch.manual_seed(1000 + i)
        thetas.append(theta.tolist())
        trials.append(simulate_ddm(theta.expand(TRIALS, 4)).tolist())
    return {"observations": trials, "true_parameters": thetas}
