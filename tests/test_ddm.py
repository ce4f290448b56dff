import math

import mpmath
import numpy as np
import pyro
import pytest
import torch
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide import init_to_sample
from scipy import integrate, stats

from pyro_sbi import NLE, SimulatorDistribution
from pyro_sbi.tasks import drift_diffusion
from pyro_sbi.tasks.ddm import (
    HIGH,
    LOW,
    NAMES,
    DriftDiffusion,
    ddm_log_prob,
    ddm_upper_prob,
    prior,
    simulate_ddm,
)

# (v, a, w, tau): the prior's centre and corners, a small boundary, large drifts, and
# starting points near the edges
THETAS = [
    (0.0, 1.0, 0.5, 0.3),
    (2.0, 0.5, 0.3, 0.2),
    (-2.0, 2.0, 0.7, 0.5),
    (1.0, 2.0, 0.3, 0.2),
    (-1.5, 0.5, 0.7, 1.0),
    (4.0, 0.3, 0.05, 0.0),
    (-5.0, 3.0, 0.95, 0.1),
]


def density(theta, choice):
    """The density of decision times t >= 0 for one choice, as a float function."""
    theta = torch.tensor(theta, dtype=torch.float64)

    def f(t):
        x = torch.tensor([theta[3] + t, choice], dtype=torch.float64)
        return ddm_log_prob(x, theta).exp().item()

    return f


def reference_log_density(u, w):
    """log f(u | 0, 1, w) at 60 digits, from either series with many terms."""
    mpmath.mp.dps = 60
    u, w, pi = mpmath.mpf(u), mpmath.mpf(w), mpmath.pi
    if u > 0.02:
        terms = (
            k * mpmath.exp(-(k**2) * pi**2 * u / 2) * mpmath.sin(k * pi * w) for k in range(1, 400)
        )
        return float(mpmath.log(pi * mpmath.fsum(terms)))
    terms = ((w + 2 * k) * mpmath.exp(-((w + 2 * k) ** 2) / (2 * u)) for k in range(-30, 31))
    return float(mpmath.log(mpmath.fsum(terms) / mpmath.sqrt(2 * pi * u**3)))


def rt_ks_pvalues(x, theta):
    """Kolmogorov-Smirnov p-values of the decision times given each choice."""
    t = np.linspace(0.0, 30.0, 300_001)
    theta_64 = torch.tensor(theta, dtype=torch.float64)
    pvalues = []
    for choice in (0.0, 1.0):
        x_grid = torch.stack(
            [theta[3] + torch.from_numpy(t), torch.full((len(t),), choice, dtype=torch.float64)],
            dim=-1,
        )
        f = ddm_log_prob(x_grid, theta_64).exp().numpy()
        cdf = integrate.cumulative_trapezoid(f, t, initial=0.0)
        cdf /= cdf[-1]
        rt = x[x[:, 1] == choice, 0].double().numpy() - theta[3]
        pvalues.append(stats.kstest(rt, lambda s, cdf=cdf: np.interp(s, t, cdf)).pvalue)
    return pvalues


# --- the analytic density ------------------------------------------------------------


@pytest.mark.parametrize("theta", THETAS)
def test_density_integrates_to_one_and_to_the_choice_probability(theta):
    upper, _ = integrate.quad(density(theta, 1.0), 0, math.inf, epsabs=1e-13, limit=500)
    lower, _ = integrate.quad(density(theta, 0.0), 0, math.inf, epsabs=1e-13, limit=500)
    assert abs(upper + lower - 1) < 1e-9
    assert abs(upper - ddm_upper_prob(torch.tensor(theta, dtype=torch.float64)).item()) < 1e-9


def test_density_integrates_to_one_on_a_grid():
    t = torch.linspace(0, 40, 400_001, dtype=torch.float64)[1:]
    theta = torch.tensor([0.7, 1.4, 0.4, 0.3], dtype=torch.float64)
    total = 0.0
    for choice in (0.0, 1.0):
        x = torch.stack([theta[3] + t, torch.full_like(t, choice)], dim=-1)
        total += torch.trapezoid(ddm_log_prob(x, theta).exp(), t).item()
    assert abs(total - 1) < 1e-8


def test_density_matches_a_high_precision_reference():
    us = [1e-4, 1e-3, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 20.0, 100.0]
    ws = [0.001, 0.1, 0.5, 0.9, 0.999]
    u = torch.tensor([u for u in us for _ in ws], dtype=torch.float64)
    w = torch.tensor([w for _ in us for w in ws], dtype=torch.float64)
    reference = [reference_log_density(u_i, w_i) for u_i in us for w_i in ws]
    reference = torch.tensor(reference, dtype=torch.float64)
    # theta = (0, 1, w, 0) and lower-boundary times u: log p(x | theta) = log f(u | 0, 1, w)
    x = torch.stack([u, torch.zeros_like(u)], dim=-1)
    theta = torch.stack([torch.zeros_like(u), torch.ones_like(u), w, torch.zeros_like(u)], -1)
    assert torch.allclose(ddm_log_prob(x, theta), reference, rtol=1e-12, atol=1e-12)
    # one element at a time: the number of terms is not helped by the rest of the batch
    single = torch.stack([ddm_log_prob(x[i], theta[i]) for i in range(len(u))])
    assert torch.allclose(single, reference, rtol=1e-12, atol=1e-12)


def test_small_and_large_time_series_agree_where_both_converge():
    u = torch.logspace(-1.5, 0, 50, dtype=torch.float64)
    w = torch.linspace(0.05, 0.95, 50, dtype=torch.float64)
    small = drift_diffusion._log_small_time(u, w, 20)
    large = drift_diffusion._log_large_time(u, w, 20)
    assert torch.allclose(small, large, rtol=0, atol=1e-12)


def test_upper_boundary_is_the_mirror_image():
    theta = torch.tensor([0.8, 1.2, 0.35, 0.25])
    mirror = torch.tensor([-0.8, 1.2, 0.65, 0.25])
    rt = torch.tensor([0.3, 0.6, 1.5])
    upper = ddm_log_prob(torch.stack([rt, torch.ones(3)], -1), theta)
    lower = ddm_log_prob(torch.stack([rt, torch.zeros(3)], -1), mirror)
    assert torch.allclose(upper, lower)


def test_upper_probability_at_zero_drift_and_its_limit():
    theta = torch.tensor([[0.0, 1.3, 0.4, 0.2], [1e-7, 1.3, 0.4, 0.2]], dtype=torch.float64)
    p = ddm_upper_prob(theta)
    assert torch.allclose(p, torch.tensor([0.4, 0.4], dtype=torch.float64), atol=1e-6)


def test_gradcheck():
    theta = torch.tensor(
        [
            [0.5, 1.0, 0.5, 0.3],  # u = 0.05: small-time series
            [-1.5, 0.6, 0.35, 0.2],
            [2.0, 1.9, 0.65, 0.5],
            [0.0, 0.5, 0.3, 1.0],
            [1.0, 1.5, 0.5, 0.3],  # u = 8.8: large-time series
        ],
        dtype=torch.float64,
        requires_grad=True,
    )
    x = torch.tensor(
        [[0.35, 1.0], [0.5, 0.0], [3.0, 1.0], [1.05, 0.0], [20.0, 0.0]], dtype=torch.float64
    )
    assert torch.autograd.gradcheck(lambda theta: ddm_log_prob(x, theta), theta)


def test_times_before_the_non_decision_time():
    theta = torch.tensor([[0.5, 1.0, 0.5, 0.3]], dtype=torch.float64, requires_grad=True)
    x = torch.tensor([[0.1, 1.0], [0.3, 0.0], [0.31, 0.0]], dtype=torch.float64)
    log_p = ddm_log_prob(x, theta)
    assert log_p[:2].eq(-math.inf).all() and log_p[2].isfinite()
    (grad,) = torch.autograd.grad(log_p.sum(), theta)
    assert grad.isfinite().all()
    (grad,) = torch.autograd.grad(ddm_log_prob(x[:2], theta).sum(), theta)
    assert grad.eq(0).all()


def test_missing_and_infinite_values():
    theta = torch.tensor([0.0, 1.0, 0.5, 0.3])
    x = torch.tensor([[math.nan, 1.0], [0.5, math.nan], [math.inf, 0.0]])
    log_p = ddm_log_prob(x, theta)
    assert log_p[:2].isnan().all() and log_p[2] == -math.inf


def test_upper_probability_for_large_drifts():
    theta = torch.tensor([[-200.0, 2.0, 0.3, 0.0], [200.0, 2.0, 0.3, 0.0]], dtype=torch.float64)
    p = ddm_upper_prob(theta)
    # e^{-2 v a (1 - w)} to leading order when v a is large and negative
    assert math.isclose(p[0].log().item(), -2 * 400 * 0.7, rel_tol=1e-12) and p[1] == 1


def test_log_prob_broadcasts():
    x = torch.tensor([0.8, 1.0]).expand(5, 1, 2)
    theta = prior().sample((3,))
    assert ddm_log_prob(x, theta).shape == (5, 3)
    assert ddm_log_prob(x[0, 0], theta).shape == (3,)


# --- the simulator -------------------------------------------------------------------

GOF_THETAS = [(0.0, 1.0, 0.5, 0.3), (1.5, 0.8, 0.35, 0.4), (-1.0, 1.8, 0.65, 0.25)]


@pytest.mark.parametrize("theta", GOF_THETAS)
def test_simulator_matches_the_density(theta):
    n = 20_000
    torch.manual_seed(1)
    x = simulate_ddm(torch.tensor(theta).expand(n, 4)).double()
    assert not x.isnan().any()
    p = ddm_upper_prob(torch.tensor(theta, dtype=torch.float64)).item()
    upper = int(x[:, 1].sum())
    assert stats.binomtest(upper, n, p).pvalue > 0.01
    # reaction times given each choice against the cumulative integral of the density
    assert min(rt_ks_pvalues(x, theta)) > 0.01


@pytest.mark.slow
@pytest.mark.parametrize("theta", GOF_THETAS[:2])
def test_simulator_matches_the_density_with_a_million_trials(theta):
    torch.manual_seed(11)
    x = simulate_ddm(torch.tensor(theta).expand(1_000_000, 4), dt=1e-3)
    assert min(rt_ks_pvalues(x, theta)) > 0.01


@pytest.mark.parametrize("theta", [(2.0, 0.5, 0.3, 0.2), (-1.0, 1.5, 0.6, 0.3)])
def test_bridge_correction_keeps_coarse_steps_unbiased(theta):
    # plain Euler at dt = 0.01 acts as if the boundaries were 0.058 further out
    n = 100_000
    torch.manual_seed(2)
    x = simulate_ddm(torch.tensor(theta, dtype=torch.float64).expand(n, 4), dt=1e-2)
    v, a, w, tau = theta
    p = ddm_upper_prob(torch.tensor(theta, dtype=torch.float64)).item()
    mean_time = a * (p - w) / v
    t = x[:, 0] - tau
    assert abs(x[:, 1].mean() - p) < 4 * math.sqrt(p * (1 - p) / n)
    assert abs(t.mean() - mean_time) < 4 * t.std() / math.sqrt(n)


def test_simulator_is_reproducible():
    theta = prior().sample((200,))
    torch.manual_seed(3)
    first = simulate_ddm(theta)
    torch.manual_seed(3)
    assert torch.equal(simulate_ddm(theta), first)
    torch.manual_seed(4)
    assert not torch.equal(simulate_ddm(theta), first)


def test_simulator_shapes_dtype_and_range():
    theta = prior().sample((2, 3)).double()
    x = simulate_ddm(theta)
    assert x.shape == (2, 3, 2) and x.dtype == torch.float64
    assert (x[..., 0] > theta[..., 3]).all()
    assert set(x[..., 1].flatten().tolist()) <= {0.0, 1.0}


def test_unfinished_and_invalid_rows_are_nan():
    theta = torch.tensor(
        [
            [0.0, 2.0, 0.5, 0.3],  # cannot end within 1 ms
            [0.0, 0.01, 0.5, 0.3],  # ends within 1 ms
            [0.0, -1.0, 0.5, 0.3],  # a <= 0
            [0.0, 1.0, 1.5, 0.3],  # w outside (0, 1)
            [0.0, 1.0, 0.5, -0.1],  # tau < 0
        ]
    )
    x = simulate_ddm(theta, max_time=1e-3)
    assert x.isnan().tolist() == [[True, True], [False, False]] + [[True, True]] * 3


def test_simulator_argument_errors():
    with pytest.raises(ValueError, match=r"\(\*, 4\)"):
        simulate_ddm(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="positive"):
        simulate_ddm(torch.zeros(3, 4), dt=0.0)


def test_simulator_runs_inside_a_simulator_distribution():
    theta = prior().sample((4,))
    x = SimulatorDistribution(simulate_ddm, theta, NLE(), x_shape=(2,)).sample((5,))
    assert x.shape == (5, 4, 2) and not x.isnan().any()


# --- the prior and the distribution ---------------------------------------------------


def test_prior():
    assert NAMES == ("v", "a", "w", "tau") and len(LOW) == len(HIGH) == 4
    theta = prior().sample((1000,))
    assert theta.shape == (1000, 4) and prior().event_shape == (4,)
    assert (theta > torch.tensor(LOW)).all() and (theta < torch.tensor(HIGH)).all()


def test_distribution_shapes_and_expand():
    d = DriftDiffusion(torch.zeros(3, 1), torch.ones(4), 0.5, 0.3)
    assert d.batch_shape == (3, 4) and d.event_shape == (2,)
    assert d.theta.shape == (3, 4, 4)
    value = torch.tensor([0.9, 1.0]).expand(7, 1, 1, 2)
    assert d.log_prob(value).shape == (7, 3, 4)
    assert d.sample((5,)).shape == (5, 3, 4, 2)
    e = d.expand((2, 3, 4))
    assert e.batch_shape == (2, 3, 4) and e.sample().shape == (2, 3, 4, 2)
    assert torch.equal(e.log_prob(value[0]), d.log_prob(value[0]).expand(2, 3, 4))


def test_infer_shapes():
    shapes = DriftDiffusion.infer_shapes(v=(3, 1), a=(4,), w=(), tau=())
    assert shapes == ((3, 4), (2,))


def test_distribution_under_plates():
    def model():
        with pyro.plate("subjects", 3):
            theta = pyro.sample("theta", prior())
            with pyro.plate("trials", 5, dim=-2):
                return pyro.sample("x", DriftDiffusion(*theta.unbind(-1)))

    trace = pyro.poutine.trace(model).get_trace()
    x = trace.nodes["x"]["value"]
    assert x.shape == (5, 3, 2)
    trace.compute_log_prob()
    assert trace.nodes["x"]["log_prob"].shape == (5, 3)
    assert trace.nodes["x"]["log_prob"].isfinite().all()


def test_support_and_arguments_are_validated():
    d = DriftDiffusion(0.5, 1.0, 0.5, 0.3, validate_args=True)
    assert d.log_prob(torch.tensor([0.6, 1.0])).isfinite()
    assert d.log_prob(torch.tensor([0.2, 1.0])) == -math.inf  # rt <= tau is in the support
    for value in ([0.6, 0.5], [-0.1, 1.0]):
        with pytest.raises(ValueError, match="support"):
            d.log_prob(torch.tensor(value))
    with pytest.raises(ValueError, match="a"):
        DriftDiffusion(0.5, -1.0, 0.5, 0.3, validate_args=True)
    assert not d.support.is_discrete and d.support.event_dim == 1


def test_nuts_smoke():
    torch.manual_seed(0)
    x_o = simulate_ddm(torch.tensor([0.5, 1.0, 0.5, 0.3]).expand(20, 4))

    def model(x_o):
        theta = pyro.sample("theta", prior())
        with pyro.plate("trials", len(x_o)):
            pyro.sample("x", DriftDiffusion(*theta.unbind(-1)), obs=x_o)

    # the first state needs tau below the fastest reaction time: start from prior draws
    kernel = NUTS(model, init_strategy=init_to_sample)
    mcmc = MCMC(kernel, num_samples=2, warmup_steps=2, disable_progbar=True)
    mcmc.run(x_o)
    theta = mcmc.get_samples()["theta"]
    assert theta.shape == (2, 4) and theta.isfinite().all()
    assert (theta[:, 3] < x_o[:, 0].min()).all()
