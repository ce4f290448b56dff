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
- :func:`tarp` tests the coverage of the joint posterior from its draws alone, with
  random reference points (Lemos et al., 2023); cheap with an amortised guide, whose
  draws for a thousand data sets take seconds.
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

    | Sampling-Based Accuracy Testing of Posterior Estimators for General Inference
    | (Lemos et al., 2023) https://arxiv.org/abs/2302.03026

    | Graphical Test for Discrete Uniformity and its Applications in Goodness of Fit
    | Evaluation and Multiple Sample Comparison (Säilynoja et al., 2022)
    | https://arxiv.org/abs/2103.10522
"""

from __future__ import annotations

__all__ = [
    "SBCResult",
    "TARPResult",
    "c2st",
    "likelihood_error",
    "outside_training",
    "ppc",
    "sbc",
    "tarp",
]

from pyro_sbi.diagnostics.calibration import SBCResult, sbc
from pyro_sbi.diagnostics.coverage import TARPResult, tarp
from pyro_sbi.diagnostics.local_validity import likelihood_error, outside_training
from pyro_sbi.diagnostics.predictive import ppc
from pyro_sbi.diagnostics.two_sample import c2st
