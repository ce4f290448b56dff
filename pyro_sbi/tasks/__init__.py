r"""Standard simulation-based inference tasks, one module per task.

Each task gives a simulator, a prior and, where it exists, the exact likelihood as a Pyro
distribution, so that reference posteriors can be computed without a learned surrogate.
"""

from __future__ import annotations

__all__ = [
    "DriftDiffusion",
    "ddm",
    "ddm_log_prob",
    "ddm_upper_prob",
    "simulate_ddm",
]

from pyro_sbi.tasks import ddm
from pyro_sbi.tasks.ddm import DriftDiffusion, ddm_log_prob, ddm_upper_prob, simulate_ddm
