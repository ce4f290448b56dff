"""The map from the real line onto an interval that guides learn bounded sites on."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions.transforms import IndependentTransform

from pyro_sbi import AmortizedGuide
from pyro_sbi.transforms import SmoothClampTransform, guide_transform


def test_it_is_the_identity_inside_and_stays_inside_outside():
    """Catches a map that bends the interior (as the logit does) or leaves the interval."""
    t = SmoothClampTransform(-2.0, 3.0)
    inside = torch.linspace(-1.9, 2.9, 97)
    assert torch.allclose(t(inside), inside, atol=1e-6)
    far = torch.tensor([-1e6, -10.0, -2.5, 3.5, 40.0, 1e6])
    value = t(far)
    assert ((value > -2.0) & (value < 3.0)).all()
    assert (torch.diff(t(torch.linspace(-2.1, 3.1, 10001, dtype=torch.float64))) > 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inverse_and_jacobian(dtype):
    """Catches an inverse or a log-Jacobian off the map, near the ends above all, where
    the map bends: checked against autograd on a grid crossing both ends."""
    t = SmoothClampTransform(torch.tensor(0.0, dtype=dtype), torch.tensor(1.0, dtype=dtype))
    u = torch.linspace(-0.008, 1.008, 2001, dtype=dtype).requires_grad_(True)
    value = t(u)
    (slope,) = torch.autograd.grad(value.sum(), u)
    ladj = t.log_abs_det_jacobian(u, value)
    # torch's softplus is linear past 20, so float64 agrees to 1e-8, not 1e-12
    assert torch.allclose(ladj, slope.log(), atol=1e-4 if dtype == torch.float32 else 1e-8)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    assert torch.allclose(t.inv(value.detach()), u.detach(), atol=tol)
    theta = torch.rand(10000, dtype=dtype)
    assert torch.allclose(t(t.inv(theta)), theta, atol=1e-6 if dtype == torch.float32 else 1e-12)
    assert torch.isfinite(t.inv(torch.tensor([0.0, 1.0], dtype=dtype))).all()  # the closed ends


def test_sharpness_sets_how_near_the_ends_it_bends():
    """Catches a sharpness that is ignored: a blunt map bends the interior visibly."""
    blunt, sharp = SmoothClampTransform(0.0, 1.0, sharpness=10.0), SmoothClampTransform(0.0, 1.0)
    u = torch.tensor([0.1, 0.5, 0.9])
    assert (blunt(u) - u).abs().max() > 1e-2
    assert (sharp(u) - u).abs().max() < 1e-6
    with pytest.raises(ValueError, match="sharpness must be positive"):
        SmoothClampTransform(0.0, 1.0, sharpness=0.0)


def test_guides_use_it_for_intervals_and_biject_to_for_the_rest():
    """Catches bounded sites left on the logit, or the map given to a support it does not
    fit (the positive reals keep Pyro's exp)."""
    assert isinstance(guide_transform(dist.Uniform(-1.0, 1.0).support), SmoothClampTransform)
    assert isinstance(guide_transform(dist.Beta(2.0, 2.0).support), SmoothClampTransform)
    boxed = guide_transform(dist.Uniform(torch.zeros(3), torch.ones(3)).to_event(1).support)
    assert isinstance(boxed, IndependentTransform)
    assert isinstance(boxed.base_transform, SmoothClampTransform)
    positive = guide_transform(dist.HalfNormal(1.0).support)
    assert torch.allclose(positive(torch.tensor([0.0, 1.0])), torch.tensor([1.0, 2.718282]))
    assert guide_transform(dist.Normal(0.0, 1.0).support)(torch.tensor(5.0)) == 5.0

    def model(y=None):
        p = pyro.sample("p", dist.Uniform(0.0, 1.0))
        with pyro.plate("n", 4):
            pyro.sample("y", dist.Bernoulli(p), obs=y)

    guide = AmortizedGuide(model)
    pyro.set_rng_seed(0)
    u, _ = guide.simulate(500, torch.zeros(4))
    assert isinstance(guide.latents[0].transform, SmoothClampTransform)
    # prior draws keep their coordinates: almost all of u lies in (0, 1), uniform there
    inside = ((u > 0) & (u < 1)).float().mean()
    assert inside > 0.98
    assert abs(float(u.mean()) - 0.5) < 0.05


def test_each_estimator_gets_its_own_map_unless_the_guide_names_one():
    """Catches the guide ignoring the estimator's `interval_map` or its own `interval`."""
    from pyro_sbi import FMPE, NPE

    def model(y=None):
        p = pyro.sample("p", dist.Beta(2.0, 2.0))
        pyro.sample("y", dist.Normal(p, 0.1), obs=y)

    kinds = {}
    for key, guide in {
        "npe": AmortizedGuide(model, NPE()),
        "fmpe": AmortizedGuide(model, FMPE()),
        "npe, logit": AmortizedGuide(model, NPE(), interval="logit"),
    }.items():
        guide.simulate(10, torch.zeros(()))
        kinds[key] = isinstance(guide.latents[0].transform, SmoothClampTransform)
    assert kinds == {"npe": True, "fmpe": False, "npe, logit": False}
    with pytest.raises(ValueError, match="interval must be one of"):
        AmortizedGuide(model, interval="probit")
