"""Embedding networks: sets of trials (DeepSet), time series (CNN1d, GRU), the guide's plates."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_sbi import NPE, NRE, AmortizedGuide
from pyro_sbi.embeddings import GRU, CNN1d, DeepSet, ObservationEmbedding

NOISE = 1.0
MAX_TRIALS = 20


# --- DeepSet on its own ----------------------------------------------------------------


def test_deepset_is_invariant_to_the_order_and_leaves_padding_out():
    """Catches padded (NaN) trials counted in the mean (the mask dropped), or pooling that
    depends on the trials' positions: permuted sets give the same features up to float,
    and a set padded with NaN trials gives the features of the set without them."""
    torch.manual_seed(0)
    net = DeepSet(out_features=6)
    x = torch.randn(4, 9, 3)
    permuted = x[:, torch.randperm(9)]
    assert torch.allclose(net(x), net(permuted), atol=1e-6, rtol=0)
    padded = torch.cat([x[:, :5], torch.full((4, 4, 3), math.nan)], 1)
    assert torch.allclose(net(padded), net(x[:, :5]), atol=1e-6, rtol=0)
    assert torch.isfinite(net(padded)).all()


def test_deepset_knows_the_number_of_trials():
    """Catches pooling by the mean alone (the trial count dropped): 2 and 10 copies of one
    trial have the same mean but call for different posteriors, so different features."""
    torch.manual_seed(0)
    net = DeepSet(out_features=6)
    trial = torch.randn(1, 1, 2)
    few, many = net(trial.expand(1, 2, 2)), net(trial.expand(1, 10, 2))
    assert (few - many).abs().max() > 1e-3


def test_deepset_refuses_wrong_shapes():
    net = DeepSet()
    with pytest.raises(ValueError, match=r"shape \(N, T, \*trial_shape\); got \(5,\)"):
        net(torch.randn(5))
    net(torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match=r"built for inputs of shape \(N, \*, 3\)"):
        net(torch.randn(2, 4, 2))  # trials of another size


def test_tied_statistics_are_shared_by_the_trials():
    """Catches z-score statistics kept per trial position (the ties ignored) or NaN padding
    leaking into them: every position gets the mean and sd of all trials present."""
    torch.manual_seed(0)
    theta = torch.randn(500, 1)
    x = theta[:, None, :] + torch.randn(500, 6, 1)
    counts = torch.randint(1, 7, (500,))
    x[torch.arange(6) >= counts[:, None]] = math.nan
    estimator = NPE(embedding=DeepSet(out_features=4))
    estimator.build(theta, x)
    values = x[~torch.isnan(x)]
    assert torch.allclose(estimator.x_loc, values.mean().expand(6), atol=1e-5)
    assert torch.allclose(estimator.x_scale, values.std().expand(6), atol=1e-5)


# --- the guide over a plate of trials ----------------------------------------------------


def gaussian_mean(y=None):
    """y_1..n ~ N(mu, NOISE^2) i.i.d. given mu ~ N(0, 1): the posterior is Gaussian."""
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("trials", len(y)):
        return pyro.sample("y", dist.Normal(mu, NOISE), obs=y)


def _exact(y):
    precision = 1.0 + len(y) / NOISE**2
    return float(y.sum() / NOISE**2 / precision), precision**-0.5


@pytest.fixture(scope="module")
def trials_guide():
    guide = AmortizedGuide(gaussian_mean, min_trials=1)
    guide.fit(4000, torch.zeros(MAX_TRIALS), seed=0, progress=False,
              fit_options={"max_epochs": 40})  # fmt: skip
    return guide


def test_the_default_embedding_of_a_plate_is_a_deepset(trials_guide):
    """Catches a plate of trials not found (a flat MLP over fixed positions) or a plate
    holding a latent site taken for trials."""
    assert trials_guide.trials == {"y": (0, "trials")}
    embedding = trials_guide.estimator.embedding
    assert isinstance(embedding, ObservationEmbedding)
    assert isinstance(embedding.embeddings[0], DeepSet)


@pytest.mark.parametrize("n", [3, MAX_TRIALS])
def test_one_guide_gives_the_closed_form_posterior_for_two_trial_counts(trials_guide, n):
    """Catches the number of trials lost (mean pooling without the count features: the sd
    of mu cannot follow n) or a guide trained on the full sets only. One training on 1..20
    trials, data of 3 and 20 trials. Measured over training seeds 0-2: mean errors at most
    0.072 posterior sds, sd ratios within 0.091 of 1; with the count features dropped
    (seed 0) the sd ratios are off by 0.24 (n=3) and 0.90 (n=20). (Sum pooling without
    the count passes: a constant feature of phi sums to n.)"""
    y = 0.8 + NOISE * torch.linspace(-1.0, 1.0, n)
    mean, sd = _exact(y)
    draws = trials_guide.sample_posterior(4000, y)["mu"]
    assert abs(float(draws.mean()) - mean) / sd < 0.25
    assert abs(float(draws.std()) / sd - 1) < 0.15


def test_the_guide_is_invariant_to_the_order_of_the_trials(trials_guide):
    """Catches z-score statistics per trial position (ties not shared) or any embedding
    that depends on positions: permuted and padded data give the same density."""
    torch.manual_seed(1)
    y = torch.randn(7)
    mu = {"mu": torch.linspace(-2.0, 2.0, 9)}
    log_q = trials_guide.log_prob(mu, y)
    assert torch.allclose(log_q, trials_guide.log_prob(mu, y[torch.randperm(7)]), atol=1e-5)


def test_a_guide_estimator_saved_and_loaded_keeps_its_densities(trials_guide, tmp_path):
    """Catches the guide's embedding (or its tied statistics) lost in the file: the
    estimator loaded with a new ObservationEmbedding of the same layout agrees exactly."""
    trials_guide.estimator.save(tmp_path / "guide.pt")
    layout = ObservationEmbedding([(MAX_TRIALS,)], [DeepSet()])
    clone = NPE.load(tmp_path / "guide.pt", embedding=layout)
    y = torch.full((MAX_TRIALS,), math.nan)
    y[:4] = torch.tensor([0.1, -0.3, 1.2, 0.4])
    u = torch.linspace(-2.0, 2.0, 7)[:, None]
    assert torch.equal(clone.log_prob(u, y), trials_guide.estimator.log_prob(u, y))


def test_trial_counts_outside_the_trained_range_are_refused(trials_guide):
    with pytest.raises(ValueError, match=r"trained on 1 to 20 trials \(plate 'trials', dim 0\)"):
        trials_guide.sample_posterior(5, torch.zeros(MAX_TRIALS + 1))
    with pytest.raises(ValueError, match="NaN as a missing trial"):
        trials_guide.sample_posterior(5, torch.tensor([0.0, math.nan]))


def test_guide_errors():
    with pytest.raises(ValueError, match="min_trials needs an observed site under a plate"):
        AmortizedGuide(_no_plate, min_trials=2).fit(10, torch.zeros(3), progress=False)
    with pytest.raises(ValueError, match="min_trials=5 but site 'y' has 3 trials"):
        AmortizedGuide(gaussian_mean, min_trials=5).fit(10, torch.zeros(3), progress=False)
    with pytest.raises(ValueError, match=r"names \['z'\], which are not observed sites"):
        AmortizedGuide(gaussian_mean, embedding={"z": DeepSet()}).fit(
            10, torch.zeros(3), progress=False
        )
    with pytest.raises(ValueError, match="has an embedding of its own"):
        AmortizedGuide(gaussian_mean, NPE(embedding=DeepSet()), embedding={"y": DeepSet()})
    with pytest.raises(TypeError, match=r"embedding\['y'\] must be a torch.nn.Module"):
        AmortizedGuide(gaussian_mean, embedding={"y": "deepset"})


def _no_plate(y=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
    return pyro.sample("y", dist.Normal(mu, 1.0).to_event(1), obs=y)


def test_a_plate_holding_a_latent_is_not_a_plate_of_trials():
    """Catches every plate of an observed site taken for trials: a subject's data belong to
    that subject's latent, so only the trials plate inside the subjects plate is pooled."""

    def hierarchical(y=None):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("subjects", 3):
            theta = pyro.sample("theta", dist.Normal(mu, 1.0))
            with pyro.plate("trials", 4, dim=-2):
                pyro.sample("y", dist.Normal(theta, 1.0), obs=y)

    per_subject = AmortizedGuide(_per_subject)
    guide = AmortizedGuide(hierarchical)
    guide.fit(50, torch.zeros(4, 3), seed=0, progress=False, fit_options={"max_epochs": 1})
    assert guide.trials == {"y": (0, "trials")}
    per_subject.fit(50, torch.zeros(3), seed=0, progress=False, fit_options={"max_epochs": 1})
    assert per_subject.trials == {} and per_subject.estimator.embedding is None


def _per_subject(y=None):
    with pyro.plate("subjects", 3):
        theta = pyro.sample("theta", dist.Normal(0.0, 1.0))
        return pyro.sample("y", dist.Normal(theta, 1.0), obs=y)


def test_a_site_embedding_gets_the_set_with_the_trials_first():
    """Catches a site's values handed to its network flat or with the plate's dim left in
    place: a (subject, trial) site reaches its network as (N, trial, subject)."""
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(1, 1)

        def forward(self, x):
            seen.append(x.shape[1:])
            return self.linear(x.nan_to_num().mean((1, 2))[:, None])

    def model(y=None):
        with pyro.plate("subjects", 3, dim=-2):
            theta = pyro.sample("theta", dist.Normal(0.0, 1.0))
            with pyro.plate("trials", 5, dim=-1):
                pyro.sample("y", dist.Normal(theta, 1.0), obs=y)

    guide = AmortizedGuide(model, embedding={"y": Spy()})
    guide.fit(40, torch.zeros(3, 5), seed=0, progress=False, fit_options={"max_epochs": 1})
    assert guide.trials == {"y": (1, "trials")}
    assert set(seen) == {torch.Size([5, 3])}
    y = torch.arange(15.0).reshape(3, 5)
    assert torch.equal(guide._data((y,), {}), y.T.reshape(-1))


# --- time series --------------------------------------------------------------------------


@pytest.mark.parametrize("make", [CNN1d, GRU])
@pytest.mark.parametrize("shape", [(40,), (40, 3), (17, 2)])
def test_series_embeddings_shapes(make, shape):
    """Catches time and batch swapped (a GRU not `batch_first`): one feature row per
    series, whatever its length or channels."""
    net = make(out_features=5)
    assert net(torch.randn(6, *shape)).shape == (6, 5)


@pytest.mark.parametrize("make", [CNN1d, GRU])
def test_series_embeddings_refuse_wrong_shapes(make):
    net = make()
    with pytest.raises(ValueError, match=r"time series of shape \(N, L\) or \(N, L, C\)"):
        net(torch.randn(2, 3, 4, 5))
    net(torch.randn(2, 10, 3))
    with pytest.raises(ValueError, match="it was built for inputs"):
        net(torch.randn(2, 10, 4))  # another number of channels


def ar1(rho, length=40):
    """x_t = rho x_{t-1} + e_t from x_0 = 0, e_t ~ N(0, 1): `(n,) -> (n, length)`."""
    x, previous = [], torch.zeros_like(rho)
    for _ in range(length):
        previous = rho * previous + torch.randn_like(rho)
        x.append(previous)
    return torch.stack(x, -1)


def _ar1_posterior_mean(x):
    """The exact posterior mean of rho ~ U(-0.9, 0.9) given a series, on a grid."""
    grid = torch.linspace(-0.9, 0.9, 2001)
    previous = torch.cat([torch.zeros(1), x[:-1]])
    log_p = -0.5 * ((x[None] - grid[:, None] * previous[None]) ** 2).sum(-1)
    weights = (log_p - log_p.max()).exp()
    mean = (weights * grid).sum() / weights.sum()
    sd = ((weights * (grid - mean) ** 2).sum() / weights.sum()).sqrt()
    return float(mean), float(sd)


@pytest.mark.parametrize(
    ("make", "tolerance"),
    [(CNN1d, 0.4), pytest.param(GRU, 0.8, marks=pytest.mark.slow)],
)
def test_series_embeddings_learn_an_ar1_coefficient(make, tolerance):
    """Catches an embedding blind to the order in time: the posterior mean of an AR(1)
    coefficient must follow the exact one, on 20 test series. Measured over seeds 0-2,
    mean absolute errors in exact posterior sds: CNN1d 0.17-0.23 (with kernels of width 1,
    which see no lag: 0.53-0.81); GRU 0.18-0.59 (reading the first output step instead of
    the last hidden state: 3.1)."""
    torch.manual_seed(0)
    rho = torch.rand(3000) * 1.8 - 0.9
    x = ar1(rho)
    estimator = NPE(embedding=make(out_features=16))
    estimator.fit(rho[:, None], x, max_epochs=40, progress=False, seed=0)
    test_rho = torch.linspace(-0.8, 0.8, 20)
    test_x = ar1(test_rho)
    learned = estimator.sample(test_x, (2000,))[..., 0].mean(0)
    errors = []
    for series, value in zip(test_x, learned, strict=True):
        mean, sd = _ar1_posterior_mean(series)
        errors.append(abs(float(value) - mean) / sd)
    assert sum(errors) / len(errors) < tolerance


# --- save / load, and NRE -------------------------------------------------------------------


def _sets(n=400, trials=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    theta = torch.randn(n, 1, generator=generator)
    x = theta[:, None, :] + torch.randn(n, trials, 1, generator=generator)
    counts = torch.randint(1, trials + 1, (n,), generator=generator)
    x[torch.arange(trials) >= counts[:, None]] = math.nan
    return theta, x


@pytest.mark.parametrize("kind", [NPE, NRE])
def test_save_and_load_with_an_embedding(kind, tmp_path):
    """Catches a lazily sized embedding not built before the weights are loaded, or its
    weights or tied statistics not saved: the clone gives the very same densities."""
    theta, x = _sets()
    estimator = kind(embedding=DeepSet(out_features=4, hidden_features=16))
    estimator.fit(theta, x, max_epochs=2, progress=False, seed=0)
    estimator.save(tmp_path / "e.pt")
    clone = kind.load(tmp_path / "e.pt", embedding=DeepSet(out_features=4, hidden_features=16))
    if kind is NPE:
        values = estimator.log_prob(theta[:5], x[:5]), clone.log_prob(theta[:5], x[:5])
    else:
        values = estimator.log_prob(x[:5], theta[:5]), clone.log_prob(x[:5], theta[:5])
    assert torch.isfinite(values[0]).all() and torch.equal(*values)
    with pytest.raises(ValueError, match=r"used an embedding network \(DeepSet\)"):
        kind.load(tmp_path / "e.pt")


def test_nre_with_a_deepset_is_invariant_to_the_order_of_the_trials():
    """Catches NRE's embedding applied to positions rather than to the set: the ratio of a
    set of trials (each set one x) is the same for any order of its trials."""
    theta, x = _sets()
    ratio = NRE(embedding=DeepSet(out_features=4, hidden_features=16))
    ratio.fit(theta, x, max_epochs=2, progress=False, seed=0)
    sets = torch.randn(3, 6, 1)
    log_r = ratio.log_prob(sets, torch.zeros(3, 1))
    assert log_r.shape == (3,)
    assert torch.allclose(log_r, ratio.log_prob(sets[:, torch.randperm(6)], torch.zeros(3, 1)),
                          atol=1e-5)  # fmt: skip
