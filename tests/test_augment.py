import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_sbi import MNLE, NLE, NPE, NRE, PyroSimulator, fit, simulate
from pyro_sbi.augment import SCORE_WEIGHT, score_weights

NOISE = 0.5


class ExactFlow(nn.Module):
    """q_z(x_z | theta_z) of x ~ N(theta, NOISE) in the z-scored units of an NLE."""

    def __init__(self, estimator, noise=NOISE):
        super().__init__()
        self.estimator, self.noise = estimator, noise

    def forward(self, theta_z):
        e = self.estimator
        theta = theta_z * e.theta_scale + e.theta_loc
        return dist.Normal((theta - e.x_loc) / e.x_scale, self.noise / e.x_scale).to_event(1)


def exact_nle(theta, x, noise=NOISE):
    estimator = NLE()
    estimator.build(theta, x)
    estimator.flow = ExactFlow(estimator, noise)
    return estimator


def test_score_term_is_zero_for_the_exact_likelihood():
    """With the exact likelihood and its exact score, the score term vanishes.

    x ~ N(theta, 0.5) has no latent, so t is the likelihood's score itself. theta is
    z-scored with a scale far from 1 (sd 3). Catches a residual that forgets the chain
    rule of the z-scoring (comparing grad_{theta_z} log q with t instead of sigma * t).
    """
    torch.set_default_dtype(torch.float64)
    try:
        theta = 3.0 * torch.randn(200, 1) + 1.0
        x = theta + NOISE * torch.randn(200, 1)
        score = (x - theta) / NOISE**2
        estimator = exact_nle(theta, x)
        with torch.no_grad():
            plain = estimator.loss(theta, x)
            augmented = estimator.loss(theta, x, score=score, score_weight=1.0)
            wrong = estimator.loss(theta, x, score=score + 1.0, score_weight=1.0)
        assert abs(float(augmented - plain)) < 1e-10
        assert float(wrong - plain) > 1
    finally:
        torch.set_default_dtype(torch.float32)


def test_score_weight_zero_is_the_plain_loss_and_the_term_is_differentiable():
    """The score term adds nothing at weight 0, and has a gradient in the weights.

    Catches a score gradient taken without create_graph (no gradient reaches the flow).
    """
    theta = torch.randn(64, 2)
    x = theta + torch.randn(64, 2)
    estimator = NLE()
    estimator.build(theta, x)
    score = torch.randn(64, 2)
    assert torch.equal(estimator.loss(theta, x, score=score, score_weight=0.0),
                       estimator.loss(theta, x))  # fmt: skip
    residual = estimator.loss(theta, x, score=score, score_weight=1.0) - estimator.loss(theta, x)
    weights = [p for p in estimator.parameters() if p.requires_grad]
    gradients = torch.autograd.grad(residual, weights, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in gradients)


@pytest.mark.parametrize("estimator", [MNLE(discrete=[1]), NRE()], ids=["mnle", "nre"])
def test_mnle_and_nre_train_on_the_score(estimator):
    """The score term is in MNLE's and NRE's losses (it raises the loss for a wrong score)."""
    theta = torch.rand(300, 2)
    x = torch.cat([theta[:, :1] + torch.randn(300, 1), torch.bernoulli(theta[:, 1:])], -1)
    estimator.build(theta, x)
    plain = estimator.loss(theta, x)
    shifted = estimator.loss(theta, x, score=torch.full((300, 2), 5.0), score_weight=1.0)
    assert shifted.item() > plain.item() + 1
    history = estimator.fit(theta, x, score=torch.zeros(300, 2), max_epochs=2, progress=False)
    assert history.epochs == 2


def test_fit_refuses_scores_it_cannot_use():
    theta, x = torch.randn(50, 2), torch.randn(50, 3)
    with pytest.raises(ValueError, match=r"score must have the shape of theta \(50, 2\)"):
        NLE().fit(theta, x, score=torch.zeros(50, 3), max_epochs=1, progress=False)
    with pytest.raises(TypeError, match="NPE does not train on joint scores"):
        NPE().fit(theta, x, score=torch.zeros(50, 2), max_epochs=1, progress=False)
    with pytest.raises(ValueError, match="score_weight needs score="):
        fit(NLE(), theta, x, score_weight=1.0)
    with pytest.raises(ValueError, match="validate_score need score="):
        fit(NLE(), theta, x, validate_score=True)


def hidden_mean(theta):
    """z ~ N(theta_0, theta_1), x ~ N(z, 0.5): x ~ N(theta_0, sqrt(theta_1^2 + 0.25))."""
    with pyro.plate("rows", len(theta)):
        z = pyro.sample("z", dist.Normal(theta[:, 0], theta[:, 1]))
        return pyro.sample("x", dist.Normal(z, NOISE)).unsqueeze(-1)


def exact_log_likelihood(x, theta):
    return dist.Normal(theta[:, 0], (theta[:, 1] ** 2 + NOISE**2).sqrt()).log_prob(x[:, 0])


def held_out_kl(estimator, seed):
    torch.manual_seed(10_000 + seed)
    theta = prior().sample((4000,))
    x = PyroSimulator(hidden_mean)(theta)
    with torch.no_grad():
        return float((exact_log_likelihood(x, theta) - estimator.log_prob(x, theta)).mean())


def prior():
    return dist.Uniform(torch.tensor([-2.0, 0.2]), torch.tensor([2.0, 1.5])).to_event(1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_augmented_nle_learns_the_likelihood_better_from_few_simulations(seed):
    """Held-out KL to the exact marginal likelihood, 200 simulations of a hidden-mean model.

    Plain NLE against NLE trained on the joint score too, same simulations and seeds;
    the augmented one, with fit's defaults for the score term, must be closer (mean KL
    over five seeds 0.025 against 0.146 plain). Catches the path derivative in the score
    (every seed fails with it; KL 0.57 on seed 0).
    """
    torch.manual_seed(seed)
    theta = prior().sample((200,))
    sims = simulate(PyroSimulator(hidden_mean).with_score(), theta, seed=seed, progress=False)
    x, _, score = PyroSimulator.unpack(sims.x, 2)
    options = {"seed": seed, "progress": False, "max_epochs": 300}
    plain, augmented = NLE(), NLE()
    plain.fit(theta, x, **options)
    augmented.fit(theta, x, score=score, **options)
    kl_plain, kl_augmented = held_out_kl(plain, seed), held_out_kl(augmented, seed)
    assert kl_augmented < kl_plain, (kl_augmented, kl_plain)
    assert math.isfinite(kl_augmented)


@pytest.mark.parametrize("noise", [0.5, 0.01])
def test_normalised_score_term_does_not_depend_on_the_scale_of_the_scores(noise):
    """With score_weights, a score wrong by c sds of its target costs alpha * c^2 per parameter.

    x ~ N(theta, noise) with the exact likelihood: the score (x - theta) / noise^2 has a
    spread of 1 / noise, 2 or 100, and theta is z-scored with sd 3. Shifting the score
    by c times its sd raises the loss by alpha * c^2 whatever the noise. Catches weights
    computed from the variance of t instead of sigma_theta * t (off by sigma_theta^2 = 9).
    """
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        theta = 3.0 * torch.randn(2000, 1) + 1.0
        x = theta + noise * torch.randn(2000, 1)
        score = (x - theta) / noise**2
        estimator = exact_nle(theta, x, noise)
        weight = score_weights(score, estimator.theta_scale, 0.5)
        with torch.no_grad():
            plain = estimator.loss(theta, x)
            wrong = estimator.loss(theta, x, score=score + 2.0 * score.std(0), score_weight=weight)
        assert float(wrong - plain) == pytest.approx(0.5 * 2.0**2, rel=1e-6)
    finally:
        torch.set_default_dtype(torch.float32)


def test_fit_weighs_the_residual_by_the_spread_of_the_score_and_validates_without_it():
    """fit passes alpha / Var(sigma * t) per parameter, and validates on the plain loss.

    Catches fit passing the bare alpha (normalize_score ignored) and early stopping on
    the augmented loss when validate_score=False.
    """
    calls = []

    class Spy(NLE):
        def loss(self, theta, x, score=None, score_weight=SCORE_WEIGHT):
            calls.append((torch.is_grad_enabled(), score is not None, score_weight))
            return super().loss(theta, x, score=score, score_weight=score_weight)

    torch.manual_seed(0)
    theta = torch.rand(400, 2) * torch.tensor([1.0, 10.0])
    x = theta + torch.randn(400, 2)
    score = torch.randn(400, 2) * torch.tensor([1.0, 30.0])
    estimator = Spy()
    estimator.fit(theta, x, score=score, score_weight=0.5, max_epochs=2, progress=False)
    training = [weight for grad, scored, weight in calls if grad]
    validation = [scored for grad, scored, _ in calls if not grad]
    expected = 0.5 / (score * estimator.theta_scale).var(0)
    assert torch.allclose(training[0], expected, rtol=0.2), (training[0], expected)
    assert validation and not any(validation)

    calls.clear()
    Spy().fit(theta, x, score=score, normalize_score=False, validate_score=True, max_epochs=1,
              progress=False)  # fmt: skip
    assert all(weight == SCORE_WEIGHT for _, _, weight in calls)
    assert all(scored for _, scored, _ in calls)
