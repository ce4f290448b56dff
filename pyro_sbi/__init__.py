r"""Simulation-based inference inside Pyro.

A black-box simulator becomes an ordinary Pyro distribution,
`pyro.sample("x", SimulatorDistribution(simulator, theta, estimator), obs=x_o)`,
whose `log_prob` is learned from simulations and whose `sample` runs the simulator.

Importing this package changes no global state: the settings of torch's
distributions that `zuko` and Pyro change on import are restored.
"""

__version__ = "0.1.0"

__all__ = [
    "AmortizedGuide",
    "CNN1d",
    "DeepSet",
    "Ensemble",
    "Estimator",
    "FMPE",
    "GRU",
    "History",
    "MNLE",
    "NLE",
    "NPE",
    "NRE",
    "PyroSimulator",
    "SimulationError",
    "Simulations",
    "SimulatorDistribution",
    "SiteReport",
    "SliceMCMC",
    "StoredPairs",
    "UntrainedEstimatorError",
    "__version__",
    "c2st",
    "fit",
    "init_to_guide",
    "init_to_sir",
    "ppc",
    "sbc",
    "simulate",
    "to_inference_data",
    "train",
]

from torch.distributions import Distribution as _Distribution

# zuko (validation off, `arg_constraints` emptied) and Pyro (validation set to
# `__debug__`) change torch's global distribution settings when first imported.
_validate_args = _Distribution._validate_args
_arg_constraints = _Distribution.__dict__["arg_constraints"]

from pyro_sbi.diagnostics import c2st, ppc, sbc  # noqa: E402
from pyro_sbi.distribution import SimulatorDistribution  # noqa: E402
from pyro_sbi.embeddings import GRU, CNN1d, DeepSet  # noqa: E402
from pyro_sbi.ensemble import Ensemble  # noqa: E402
from pyro_sbi.estimator import Estimator, UntrainedEstimatorError  # noqa: E402
from pyro_sbi.fitting import History, fit  # noqa: E402
from pyro_sbi.fmpe import FMPE  # noqa: E402
from pyro_sbi.guide import AmortizedGuide, init_to_guide  # noqa: E402
from pyro_sbi.infer import SliceMCMC  # noqa: E402
from pyro_sbi.inference_data import to_inference_data  # noqa: E402
from pyro_sbi.mnle import MNLE  # noqa: E402
from pyro_sbi.nle import NLE  # noqa: E402
from pyro_sbi.npe import NPE  # noqa: E402
from pyro_sbi.nre import NRE  # noqa: E402
from pyro_sbi.program import PyroSimulator  # noqa: E402
from pyro_sbi.simulation import SimulationError, Simulations, simulate  # noqa: E402
from pyro_sbi.sir import init_to_sir  # noqa: E402
from pyro_sbi.streamed import StoredPairs  # noqa: E402
from pyro_sbi.training import SiteReport, train  # noqa: E402

_Distribution._validate_args = _validate_args
_Distribution.arg_constraints = _arg_constraints
del _validate_args, _arg_constraints
