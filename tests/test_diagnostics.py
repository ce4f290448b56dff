import pytest
import torch

from pyro_sbi import c2st


def test_c2st_same_distribution_is_chance():
    a, b = torch.randn(2000, 2), torch.randn(2000, 2)
    assert abs(c2st(a, b) - 0.5) < 0.03


def test_c2st_far_apart_is_one():
    a, b = torch.randn(500, 3), torch.randn(500, 3) + 5.0
    assert c2st(a, b) > 0.99


def test_c2st_sees_a_half_sd_shift():
    # The best classifier of N(0, 1) vs N(0.5, 1) is right with probability Phi(0.25) = 0.60.
    a, b = torch.randn(2000, 1), torch.randn(2000, 1) + 0.5
    assert 0.55 < c2st(a, b) < 0.63


def test_c2st_is_seeded_and_leaves_the_global_state_alone():
    a, b = torch.randn(200, 2), torch.randn(300, 2) + 0.3
    state = torch.get_rng_state()
    assert c2st(a, b, steps=50) == c2st(a, b, steps=50)
    assert torch.equal(state, torch.get_rng_state())


def test_c2st_rejects_mismatched_dimensions():
    with pytest.raises(ValueError, match="different sizes"):
        c2st(torch.randn(10, 2), torch.randn(10, 3))


def test_c2st_refuses_non_finite_samples():
    a = torch.randn(100, 2)
    a[5, 1] = float("nan")
    with pytest.raises(ValueError, match="1 samples hold NaN"):
        c2st(a, torch.randn(100, 2) + 5.0)
