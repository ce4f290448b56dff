"""Bad inputs on the observation side: each is refused with an error naming what is wrong.

One parametrised test per row of the matrix. Inside a Pyro model the error is a
`ValueError` raised by `log_prob`, to which Pyro adds the name of the sample site; the
message names what was expected and what was given. The estimators are tiny and barely
trained: only their shapes, supports and kinds matter here. Each docstring names the bug
the test was seen to catch.
"""

import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import zuko
from pyro.infer import HMC, MCMC, NUTS, SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.optim import Adam

from pyro_sbi import MNLE, NLE, NRE, SimulatorDistribution, SliceMCMC

TRIALS = 4


def gaussian(theta):
    """`theta (n, 2) -> x (n, 2)`."""
    return theta + 0.5 * torch.randn_like(theta)


def choice_and_time(theta):
    """`theta (n, 2) -> x (n, 2)`: a positive time, then a binary choice."""
    choice = torch.bernoulli(torch.sigmoid(theta[:, :1]))
    time = torch.exp(0.3 * theta[:, 1:] + 0.3 * choice + 0.3 * torch.randn(len(theta), 1))
    return torch.cat([time, choice], -1)


KINDS = {
    "NLE": (lambda: NLE(zuko.flows.MAF, transforms=1, hidden_features=(8,)), gaussian),
    "MNLE": (
        lambda: MNLE(
            [1],
            log_transform=True,
            transforms=1,
            hidden_features=(8,),
            head_hidden_features=8,
            head_num_blocks=1,
        ),
        choice_and_time,
    ),  # fmt: skip
    "NRE": (lambda: NRE(hidden_features=8, num_blocks=1), gaussian),
}


@pytest.fixture(scope="module")
def estimators():
    """`{kind: (estimator, simulator)}`, each fitted on 300 pairs for 2 epochs."""
    torch.manual_seed(0)
    theta = torch.randn(300, 2)
    trained = {}
    for kind, (build, simulator) in KINDS.items():
        estimator = build()
        estimator.fit(theta, simulator(theta), max_epochs=2, progress=False, seed=0)
        trained[kind] = estimator, simulator
    return trained


def model_of(estimator, simulator, trials=TRIALS):
    def model(x_o=None):
        theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("trials", trials):
            return pyro.sample("x", SimulatorDistribution(simulator, theta, estimator), obs=x_o)

    return model


def valid_x(kind, trials=TRIALS):
    """`(trials, 2)` observations in the support: time 1, choice 0 for the MNLE."""
    return (
        torch.tensor([[1.0, 0.0]]).repeat(trials, 1) if kind == "MNLE" else torch.zeros(trials, 2)
    )


def with_entry(value):
    def bad(kind):
        x = valid_x(kind)
        x[2, 1] = value
        return x

    return bad


def trace_path(estimator, simulator, x):
    """The potential energy of NUTS: the model conditioned on `x`, its log joint."""
    model = pyro.poutine.condition(model_of(estimator, simulator), data={"x": x})
    return pyro.poutine.trace(model).get_trace().log_prob_sum()


def nuts_path(estimator, simulator, x):
    mcmc = MCMC(NUTS(model_of(estimator, simulator)), num_samples=1, warmup_steps=1,
                disable_progbar=True)  # fmt: skip
    mcmc.run(x)


def log_prob_path(estimator, simulator, x):
    return SimulatorDistribution(simulator, torch.zeros(2), estimator).log_prob(x)


PATHS = {"trace": trace_path, "nuts": nuts_path, "log_prob": log_prob_path}
IN_A_MODEL = {"trace", "nuts"}

# name: (the observation for a kind of estimator, what the message must say)
OBSERVATIONS = {
    "nan": (
        with_entry(math.nan),
        r"1 non-finite entries \(NaN or inf\) out of 8, at indices \(2, 1\) of its shape \(4, 2\)",
    ),
    "inf": (
        with_entry(-math.inf),
        r"1 non-finite entries \(NaN or inf\) out of 8, at indices \(2, 1\) of its shape \(4, 2\)",
    ),
    "event-shape": (
        lambda kind: torch.ones(TRIALS, 3),
        r"expected x with event shape \(2,\) \(batch shape \((4,)?\)\); got a value of shape "
        r"\(4, 3\)",
    ),
    "complex": (
        lambda kind: valid_x(kind).to(torch.complex64),
        r"must hold real numbers .*; got complex numbers, a tensor of dtype torch.complex64 "
        r"and shape \(4, 2\)",
    ),
    "bool": (
        lambda kind: valid_x(kind).bool(),
        r"must hold real numbers .*; got booleans \(a mask\?\), a tensor of dtype torch.bool",
    ),
    "strings": (
        lambda kind: np.full((TRIALS, 2), "1.0"),
        r"must hold real numbers .*; got a value of type ndarray and dtype <U3",
    ),
    "objects": (
        lambda kind: valid_x(kind).numpy().astype(object),
        r"must hold real numbers .*; got a value of type ndarray and dtype object\. Convert it",
    ),
}


NUMPY = {"strings", "objects"}  # NUTS needs tensors: Pyro reads `value.dim()` of any array
ROWS = [
    (observation, kind, path)
    for observation in OBSERVATIONS
    for kind in KINDS
    for path in PATHS
    if not (observation in NUMPY and path == "nuts")
]


@pytest.mark.parametrize("observation, kind, path", ROWS)
def test_a_bad_observation_is_refused_naming_the_site_and_what_is_wrong(
    estimators, observation, kind, path
):
    """Catches complex observations silently cast to their real part (NLE, NRE) or failing
    inside torch's rounding (MNLE), booleans taken as 0/1, strings and object arrays
    refused by torch with a `TypeError` that Pyro does not tag with the site, and any
    check of shape or finiteness dropped."""
    estimator, simulator = estimators[kind]
    make, message = OBSERVATIONS[observation]
    site = r"site 'x'.*" if path in IN_A_MODEL else ""
    name = simulator.__name__
    with pytest.raises(
        ValueError, match=rf"(?s){site}SimulatorDistribution\({name}\): .*{message}"
    ):
        PATHS[path](estimator, simulator, make(kind))


def test_a_good_observation_passes_every_path(estimators):
    """The control of the matrix: the same paths accept an observation in the support."""
    for kind, (estimator, simulator) in estimators.items():
        assert math.isfinite(trace_path(estimator, simulator, valid_x(kind)))
        assert log_prob_path(estimator, simulator, valid_x(kind)).isfinite().all()
        assert log_prob_path(estimator, simulator, valid_x(kind).long()).isfinite().all()


# value in the choice column: what the message must say
DISCRETE = {
    "non-integer": (
        0.5,
        r"the discrete columns \[1\] of x must hold integers; got 0.5 at index \(2, 1\) of x of "
        r"shape \(4, 2\); the support learned in training is the integers 0 to 1 in column 1",
    ),
    "unseen": (
        2.0,
        r"outside the range seen in the training simulations: 2.0 at index \(2, 1\) of x of "
        r"shape \(4, 2\), whose probability was never learned; the support learned in training "
        r"is the integers 0 to 1 in column 1",
    ),
    "negative": (-1.0, r"outside the range seen in the training simulations: -1.0 at index"),
}


@pytest.mark.parametrize("validate", [True, False], ids=["validated", "unvalidated"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("value", DISCRETE)
def test_an_mnle_discrete_column_outside_its_learned_support_is_refused(
    estimators, value, path, validate
):
    """Catches torch's generic support message (the whole tensor printed, no column, no
    learned range) taking over when validation is on, and a message without the value's
    index or the values the column may take."""
    estimator, simulator = estimators["MNLE"]
    entry, message = DISCRETE[value]
    site = r"site 'x'.*" if path in IN_A_MODEL else ""
    with (
        pyro.validation_enabled(validate),
        pytest.raises(ValueError, match=rf"(?s){site}{message}"),
    ):
        PATHS[path](estimator, simulator, with_entry(entry)("MNLE"))


# empty plates -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_an_observation_of_no_trials_has_log_density_zero(estimators, kind):
    """The log-density of no data is the empty sum, 0, whatever the estimator: catches
    torch's and zuko's reshapes of empty tensors (`cannot reshape tensor of 0 elements`)
    failing the site, in validation and in the flow."""
    estimator, simulator = estimators[kind]

    def model(x_o):  # a site over the trials without a plate: Pyro has no plate of size 0
        theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        return pyro.sample("x", SimulatorDistribution(simulator, theta, estimator), obs=x_o)

    trace = pyro.poutine.trace(model).get_trace(torch.zeros(0, 2))
    assert trace.log_prob_sum() == trace.nodes["theta"]["fn"].log_prob(
        trace.nodes["theta"]["value"]
    )
    log_p = SimulatorDistribution(simulator, torch.zeros(3, 2), estimator).log_prob(
        torch.zeros(0, 1, 2)
    )
    assert log_p.shape == (0, 3)


def test_a_trials_plate_of_size_zero_is_refused_by_pyro(estimators):
    """Pyro refuses the plate itself, before the site is reached: nothing to evaluate."""
    estimator, simulator = estimators["NLE"]
    with pytest.raises(ZeroDivisionError, match="size cannot be zero"):
        pyro.poutine.trace(model_of(estimator, simulator, trials=0)).get_trace(torch.zeros(0, 2))


@pytest.mark.parametrize("validate", [True, False], ids=["validated", "unvalidated"])
@pytest.mark.parametrize("kind", KINDS)
def test_no_trials_observed_in_a_plate_of_trials_is_refused(estimators, kind, validate):
    """Catches 0 rows against a plate of 4 silently broadcast to an empty log-density (no
    data where the model has 4 trials) and torch's `RuntimeError` from broadcasting, which
    Pyro does not tag with the site."""
    estimator, simulator = estimators[kind]
    with pyro.validation_enabled(validate), pytest.raises(
        ValueError,
        match=r"(?s)site 'x'.*the value of shape \(0, 2\) has batch shape \(0,\), which does not "
        r"broadcast with the distribution's batch shape \(4,\)",
    ):  # fmt: skip
        trace_path(estimator, simulator, torch.zeros(0, 2))


# an estimator trained for other shapes ----------------------------------------------------

OTHER_SHAPES = {
    "x_shape": (
        lambda simulator, estimator: SimulatorDistribution(
            simulator, torch.zeros(2), estimator, x_shape=(3,)
        ),
        r"x_shape=\(3,\) differs from the shape \(2,\) the estimator was trained on",
    ),
    "theta-dimension": (
        lambda simulator, estimator: SimulatorDistribution(
            simulator, torch.zeros(5, 3), estimator
        ),
        r"theta has 3 parameters \(shape \(5, 3\)\) but the estimator was trained with 2",
    ),
    "condition": (
        lambda simulator, estimator: SimulatorDistribution(
            simulator, torch.zeros(2), estimator, condition=torch.zeros(1)
        ),
        r"theta has 2 parameters \(shape \(2,\)\) and the condition 1 columns \(shape \(1,\)\), "
        r"3 in all, but the estimator was trained with 2",
    ),
    "simulator-output": (
        lambda simulator, estimator: SimulatorDistribution(
            lambda theta: torch.zeros(len(theta), 3), torch.zeros(2), estimator
        ).sample(),
        r"the simulator returned outputs of shape \(3,\), expected \(2,\)",
    ),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", OTHER_SHAPES)
def test_an_estimator_trained_for_other_shapes_is_refused(estimators, case, kind):
    """Catches a `SimulatorDistribution` built around an estimator of other `x` or `theta`
    shapes, which would fail later inside the networks (or not at all)."""
    estimator, simulator = estimators[kind]
    build, message = OTHER_SHAPES[case]
    with pytest.raises(ValueError, match=rf"SimulatorDistribution\(\S+\): {message}"):
        build(simulator, estimator)


# a ratio estimator on a latent site -------------------------------------------------------


def _nuts(model):
    MCMC(NUTS(model), num_samples=2, warmup_steps=2, disable_progbar=True).run()


def _hmc(model):
    MCMC(HMC(model, num_steps=2), num_samples=2, warmup_steps=2, disable_progbar=True).run()


def _svi(model):
    """An autoguide: the guide draws `x`, a value that requires grad."""
    SVI(model, AutoNormal(model), Adam({"lr": 0.01}), Trace_ELBO()).step()


def _svi_model_draws(model):
    """A guide of `theta` only: the model draws `x` itself, a value without grad."""

    def guide(x_o=None):
        loc = pyro.param("loc", torch.zeros(2))
        pyro.sample("theta", dist.Normal(loc, 1.0).to_event(1))

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Found vars in model but not guide")
        SVI(model, guide, Adam({"lr": 0.01}), Trace_ELBO()).step()


def _slice(model):
    SliceMCMC(model, num_samples=2, warmup_steps=2, num_chains=4, num_candidates=16,
              seed=0, progress=False).run()  # fmt: skip


def _trace(model):
    pyro.poutine.trace(model).get_trace().log_prob_sum()


def _predictive(model):
    """The vectorised trace of the predictive: `x` simulated, then its log-density."""
    samples = {"theta": torch.randn(3, 1, 2)}
    Predictive(
        model, posterior_samples=samples, parallel=True
    ).get_vectorized_trace().log_prob_sum()


LATENT_PATHS = {
    "nuts": _nuts,
    "hmc": _hmc,
    "svi": _svi,
    "svi-model-draws": _svi_model_draws,
    "slice": _slice,
    "trace": _trace,
    "predictive": _predictive,
}


@pytest.mark.parametrize("path", LATENT_PATHS)
def test_a_ratio_on_a_latent_site_is_refused_on_every_path(estimators, path):
    """Catches a latent NRE site whose log-ratio is used as a density in `x`: the
    requires-grad check (NUTS, HMC, an autoguide), the check of values the distribution
    drew itself (SVI with a guide of `theta` only, a trace, the predictive's trace) and
    `SliceMCMC`'s check before it starts."""
    estimator, simulator = estimators["NRE"]
    message = (
        r"(?s)site 'x'.*SimulatorDistribution\(gaussian\): the NRE estimator gives "
        r"log p\(x \| theta\) - log p\(x\), which is not a density in x, so the simulator "
        r"site cannot be latent; observe it"
    )
    with pytest.raises(ValueError, match=message):
        LATENT_PATHS[path](model_of(estimator, simulator))


def test_predictive_draws_observed_in_another_run_are_accepted(estimators):
    """The boundary of the latent check: draws of the predictive, observed, are data."""
    estimator, simulator = estimators["NRE"]
    model = model_of(estimator, simulator)
    draws = Predictive(model, posterior_samples={"theta": torch.randn(3, 2)})()
    conditioned = pyro.poutine.condition(model, data={"theta": torch.zeros(2)})
    trace = pyro.poutine.trace(conditioned).get_trace(draws["x"][0])
    assert math.isfinite(trace.log_prob_sum())
