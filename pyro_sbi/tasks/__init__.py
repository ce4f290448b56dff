r"""Standard simulation-based inference tasks, one module per task.

Each task gives a simulator, a prior and, where it exists, the exact likelihood as a Pyro
distribution, so that reference posteriors can be computed without a learned surrogate.
A task's model called without an estimator, `model(None, x)`, samples on that exact
likelihood (:class:`~pyro_sbi.tasks._common.ExactLikelihood`), so a sampler can be
checked apart from any estimator (``python -m pyro_sbi.benchmark --methods exact``).
A task module holds only these parts and its reference method, and makes one
:class:`Task` of them (`TASK`), which gives the module's `model`, `observation`,
`true_parameters` and `reference_posterior`.
The benchmark tasks of sbibm (Lueckmann et al. 2021) also give the ten sbibm
observations (`observation(i)`, `true_parameters(i)`) and `reference_posterior(i, n)`,
computed independently of any learned estimator and cached in `~/.cache/pyro_sbi` (or
`$PYRO_SBI_CACHE`):

- :mod:`~pyro_sbi.tasks.gaussian_linear`: 10-D, closed form;
- :mod:`~pyro_sbi.tasks.two_moons`: bimodal crescent, exact sampling by inversion;
- :mod:`~pyro_sbi.tasks.gaussian_mixture`: narrow and broad components, exact;
- :mod:`~pyro_sbi.tasks.slcp`: four symmetric modes, NUTS on the exact likelihood in one
  mode and the symmetry for the others;
- :mod:`~pyro_sbi.tasks.ddm`: the drift-diffusion model (its exact density and simulator
  in :mod:`~pyro_sbi.tasks.drift_diffusion`), 100 i.i.d. trials of a reaction
  time and a choice per observation (for MNLE), many-chain slice sampling on the exact
  first-passage-time density. Its ten observations are ours, made from fixed seeds
  (sbibm has no such task).

The **broad suite** (``BROAD``) holds problems of kinds the sbibm tasks leave out,
for choosing defaults on problems nobody tuned them for; each has an exact likelihood
(`log_likelihood(x, theta)`), ten observations made from seeds (true parameters drawn
from the prior with seed :math:`i`, data simulated with seed :math:`1000 + i`) and a
reference posterior from the exact likelihood: closed form, a refined grid over the
prior's box (at most three parameters) or rejection sampling.

- :mod:`~pyro_sbi.tasks.poisson_glm`: counts, a Poisson GLM (3 parameters, 10 counts);
- :mod:`~pyro_sbi.tasks.sir`: counts, a chain-binomial SIR epidemic (2, 20);
- :mod:`~pyro_sbi.tasks.bernoulli_glm`: binary spikes summarised (sbibm; 10, 10);
- :mod:`~pyro_sbi.tasks.damped_oscillator`: an RK4-solved ODE with noise (3, 10);
- :mod:`~pyro_sbi.tasks.student_t`: heavy-tailed data (2, 10);
- :mod:`~pyro_sbi.tasks.beta_proportions`: bounded data in (0, 1) (2, 10);
- :mod:`~pyro_sbi.tasks.gaussian_linear_correlated`: 25-D data with correlated noise
  (5, 25);
- :mod:`~pyro_sbi.tasks.normal_summaries`: a posterior hundreds of times narrower than
  the prior (2, 2);
- :mod:`~pyro_sbi.tasks.sign_symmetric`: four posterior modes (2, 2);
- :mod:`~pyro_sbi.tasks.product_ridge`: strongly correlated parameters (2, 2);
- :mod:`~pyro_sbi.tasks.gamma_times`: positive, skewed data (2, 10).

:mod:`~pyro_sbi.tasks.state_space` is a linear-Gaussian state-space model written as a
Pyro program (a :class:`~pyro_sbi.PyroSimulator`), whose simulations come with their
joint score (for `augment="score"`); its likelihood is exact through the Gaussian
marginal of the path, which the estimators never see (2 parameters, 10 outputs).
"""

from __future__ import annotations

__all__ = [
    "BROAD",
    "Task",
    "DriftDiffusion",
    "bernoulli_glm",
    "beta_proportions",
    "damped_oscillator",
    "gamma_times",
    "gaussian_linear_correlated",
    "normal_summaries",
    "poisson_glm",
    "product_ridge",
    "sign_symmetric",
    "sir",
    "student_t",
    "ddm",
    "drift_diffusion",
    "gaussian_linear",
    "gaussian_mixture",
    "ddm_log_prob",
    "ddm_upper_prob",
    "simulate_ddm",
    "slcp",
    "state_space",
    "two_moons",
]

from pyro_sbi.tasks import (
    bernoulli_glm,
    beta_proportions,
    damped_oscillator,
    ddm,
    drift_diffusion,
    gamma_times,
    gaussian_linear,
    gaussian_linear_correlated,
    gaussian_mixture,
    normal_summaries,
    poisson_glm,
    product_ridge,
    sign_symmetric,
    sir,
    slcp,
    state_space,
    student_t,
    two_moons,
)
from pyro_sbi.tasks._common import Task
from pyro_sbi.tasks.drift_diffusion import (
    DriftDiffusion,
    ddm_log_prob,
    ddm_upper_prob,
    simulate_ddm,
)

BROAD = (
    "poisson_glm",
    "sir",
    "bernoulli_glm",
    "damped_oscillator",
    "student_t",
    "beta_proportions",
    "gaussian_linear_correlated",
    "normal_summaries",
    "sign_symmetric",
    "product_ridge",
    "gamma_times",
)
"""The tasks of the broad suite (``python -m pyro_sbi.benchmark --suite broad``)."""
