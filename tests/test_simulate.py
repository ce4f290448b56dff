import numpy as np
import pytest
import torch

from pyro_sbi import simulate


def batched(theta):
    return torch.stack([theta.sum(-1), theta.prod(-1)], -1)


def test_batched_in_batches_keeps_order():
    theta = torch.arange(20.0).reshape(10, 2)
    calls = []

    def recording(t):
        calls.append(len(t))
        return batched(t)

    x = simulate(recording, theta, batch_size=4, progress=False)
    assert calls == [4, 4, 2]
    assert torch.equal(x, batched(theta))


def test_one_at_a_time_and_numpy():
    theta = torch.randn(7, 3)

    def single(t):
        assert isinstance(t, np.ndarray) and t.shape == (3,)
        return np.array([[t.sum(), 1.0], [0.0, t.max()]])

    x = simulate(single, theta, batched=False, numpy=True, progress=False)
    assert x.shape == (7, 2, 2)
    assert x.dtype == torch.get_default_dtype()
    assert torch.allclose(x[:, 0, 0], theta.sum(-1))


def test_accepts_numpy_theta():
    x = simulate(batched, np.ones((5, 2)), progress=False)
    assert torch.equal(x, torch.tensor([[2.0, 1.0]] * 5))


def test_detaches_theta():
    theta = torch.randn(4, 2, requires_grad=True)
    assert not simulate(batched, theta, progress=False).requires_grad


@pytest.mark.parametrize("theta", [torch.zeros(3), torch.zeros(2, 3, 4)])
def test_rejects_theta_without_batch_and_parameter_dims(theta):
    with pytest.raises(ValueError, match=r"theta of shape \(n, D\)"):
        simulate(batched, theta, progress=False)


def test_rejects_simulator_returning_wrong_batch():
    with pytest.raises(ValueError, match="batched=False"):
        simulate(lambda t: t[0], torch.zeros(3, 2), progress=False)
