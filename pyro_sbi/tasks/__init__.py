r"""Standard simulation-based inference tasks, one module per task.

Each task gives a simulator, a prior and, where it exists, the exact likelihood as a Pyro
distribution, so that reference posteriors can be computed without a learned surrogate.
The benchmark tasks of sbibm (Lueckmann et al. 2021) also give the ten sbibm
observations (`observation(i)`, `true_parameters(i)`) and `reference_posterior(i, n)`,
computed independently of any learned estimator and cached in `~/.cache/pyro_sbi` (or
`$PYRO_SBI_CACHE`):

- :mod:`~pyro_sbi.tasks.gaussian_linear`: 10-D, closed form;
- :mod:`~pyro_sbi.tasks.two_moons`: bimodal crescent, exact sampling by inversion;
- :mod:`~pyro_sbi.tasks.gaussian_mixture`: narrow and broad components, exact;
- :mod:`~pyro_sbi.tasks.slcp`: four symmetric modes, NUTS on the exact likelihood in one
  mode and the symmetry for the others;
- :mod:`~pyro_sbi.tasks.ddm`: the drift-diffusion model, 100 i.i.d. trials of a reaction
  time and a choice per observation (for MNLE), many-chain slice sampling on the exact
  first-passage-time density. Its ten observations are ours, made from fixed seeds
  (sbibm has no such task).
"""

from __future__ import annotations

__all__ = [
    "DriftDiffusion",
    "ddm",
    "gaussian_linear",
    "gaussian_mixture",
    "ddm_log_prob",
    "ddm_upper_prob",
    "simulate_ddm",
    "slcp",
    "two_moons",
]

from pyro_sbi.tasks import ddm, gaussian_linear, gaussian_mixture, slcp, two_moons
from pyro_sbi.tasks.ddm import DriftDiffusion, ddm_log_prob, ddm_upper_prob, simulate_ddm
