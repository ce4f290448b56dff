"""A Hodgkin-Huxley neuron: which ion-channel densities produce this voltage trace?

A single-compartment neuron (Pospischil et al. 2008, the model of the SBI study by
Goncalves et al. 2020) is driven by a step current, and its membrane voltage V obeys

    C dV/dt = - g_Na m^3 h (V - E_Na) - g_K n^4 (V - E_K) - g_M p (V - E_K)
              - g_leak (V - E_leak) + I(t) + sigma xi(t),

with gating variables m, h, n (fast sodium and delayed-rectifier potassium) and p (a
slow potassium current) relaxing towards voltage-dependent steady states, and xi(t)
white noise (channel noise). The maximal conductances g_Na and g_K are unknown. The
simulator is easy to run but its likelihood is intractable: the noise passes through
a stiff nonlinear ODE and a spike threshold. The voltage trace is reduced to seven
summary features (spike count, resting potential mean and sd, and the mean, sd,
skewness and kurtosis of the voltage during the stimulus), as in the sbi tutorial.
At this noise level the features are nearly deterministic functions of the
conductances, so the posterior is narrow; it is tilted, because more sodium current
can be compensated by more potassium current.

The script

1. simulates the neuron in torch, vectorised over many (g_Na, g_K) at once
   (exponential Euler, dt = 0.01 ms, 120 ms; a trace that leaves the physiological
   range is a failed simulation, NaN);
2. learns the likelihood of the features with NLE (`train`, simulating from the
   model's uniform prior over conductances);
3. simulates a synthetic observation at known conductances and samples the posterior
   with `SliceMCMC` (many vectorised slice-sampling chains started by SIR);
4. prints the posterior against the truth, checks the posterior predictive features
   with the real simulator, and plots the pair plot and the observed voltage trace next
   to traces simulated at posterior draws.

    python examples/hodgkin_huxley.py               # about 5 minutes on 2 CPU cores
    python examples/hodgkin_huxley.py --smoke-test  # seconds, for the tests
"""

import argparse
import math
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no OpenMP spin-waiting

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
import zuko  # noqa: E402

from pyro_sbi import NLE, SimulatorDistribution, SliceMCMC, train  # noqa: E402
from pyro_sbi.plot import pair_plot  # noqa: E402

# Membrane and channel constants (Pospischil et al. 2008; units mV, ms, mS/cm^2, uA/cm^2).
E_NA, E_K, E_LEAK, V_T = 53.0, -107.0, -70.0, -60.0
G_LEAK, G_M, TAU_MAX, CAPACITANCE, NOISE = 0.1, 0.07, 600.0, 1.0, 0.1
# Protocol: a 3.25 uA/cm^2 step (0.5 nA on a 70 um soma) from 10 to 110 ms of 120 ms.
DT, DURATION, T_ON, T_OFF, CURRENT, V_0 = 0.01, 120.0, 10.0, 110.0, 3.25, -70.0
RECORD_EVERY = 5  # the trace is recorded every 0.05 ms
SPIKE_THRESHOLD = -10.0  # mV
LOW, HIGH = torch.tensor([0.5, 1e-4]), torch.tensor([80.0, 15.0])  # prior box of (g_Na, g_K)
THETA_TRUE = torch.tensor([50.0, 5.0])
NAMES = ["g_Na", "g_K"]
FEATURES = ["spikes", "rest mean", "rest sd", "mean", "log sd", "skewness", "log kurtosis"]


def _exprel(z: torch.Tensor) -> torch.Tensor:
    """z / (exp(z) - 1), finite at z = 0."""
    small = z.abs() < 1e-4
    safe = torch.where(small, torch.ones_like(z), z)
    return torch.where(small, 1.0 - z / 2.0, safe / torch.expm1(safe))


def _gates(v: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Steady states and rates of m, h, n and p at voltage `v (n,)`.

    Returns:
        `(m_inf, m_rate, h_inf, h_rate, n_inf, n_rate, p_inf, p_rate)`, each `(n,)`;
        a rate is the inverse time constant (1/ms).
    """
    u = v - V_T
    alpha_m = 1.28 * _exprel(-0.25 * (u - 13.0))
    beta_m = 1.4 * _exprel(0.2 * (u - 40.0))
    alpha_h = 0.128 * torch.exp(-(u - 17.0) / 18.0)
    beta_h = 4.0 / (1.0 + torch.exp(-0.2 * (u - 40.0)))
    alpha_n = 0.16 * _exprel(-0.2 * (u - 15.0))
    beta_n = 0.5 * torch.exp(-(u - 10.0) / 40.0)
    p_inf = torch.sigmoid(0.1 * (v + 35.0))
    p_rate = (3.3 * torch.exp(0.05 * (v + 35.0)) + torch.exp(-0.05 * (v + 35.0))) / TAU_MAX
    m_rate, h_rate, n_rate = alpha_m + beta_m, alpha_h + beta_h, alpha_n + beta_n
    return (
        alpha_m / m_rate, m_rate, alpha_h / h_rate, h_rate, alpha_n / n_rate, n_rate,
        p_inf, p_rate,
    )  # fmt: skip


def record_times() -> torch.Tensor:
    """Times (ms) of the recorded samples, `(DURATION / DT / RECORD_EVERY,)`."""
    steps = round(DURATION / DT)
    return torch.arange(0, steps, RECORD_EVERY) * DT


def hodgkin_huxley(theta: torch.Tensor) -> torch.Tensor:
    """Membrane voltage of the neuron under the step current, for many conductances at once.

    Exponential Euler: each of V, m, h, n, p relaxes exactly towards its momentary
    steady state over a step, which stays stable at conductances where forward Euler
    blows up. The channel noise enters as a current of sd `NOISE / sqrt(DT)`.

    Args:
        theta: (n, 2) maximal conductances (g_Na, g_K) in mS/cm^2.

    Returns:
        (n, T) voltage in mV, recorded every `RECORD_EVERY` steps (`record_times()`);
        rows of a trace that left the physiological range are NaN.
    """
    n = theta.shape[0]
    g_na, g_k = theta[:, 0], theta[:, 1]
    steps = round(DURATION / DT)
    v = torch.full((n,), V_0)
    m, _, h, _, k, _, p, _ = _gates(v)  # start at the steady state of V_0
    trace = torch.empty(n, math.ceil(steps / RECORD_EVERY))
    noise = NOISE / math.sqrt(DT)
    for i in range(steps):
        if i % RECORD_EVERY == 0:
            trace[:, i // RECORD_EVERY] = v
        current = CURRENT if T_ON <= i * DT < T_OFF else 0.0
        sodium, potassium = g_na * m**3 * h, g_k * k**4 + G_M * p
        g_total = sodium + potassium + G_LEAK
        drive = sodium * E_NA + potassium * E_K + G_LEAK * E_LEAK + current
        v_inf = (drive + noise * torch.randn(n)) / g_total
        v = v_inf + (v - v_inf) * torch.exp(-DT * g_total / CAPACITANCE)
        m_inf, m_rate, h_inf, h_rate, n_inf, n_rate, p_inf, p_rate = _gates(v)
        m = m_inf + (m - m_inf) * torch.exp(-DT * m_rate)
        h = h_inf + (h - h_inf) * torch.exp(-DT * h_rate)
        k = n_inf + (k - n_inf) * torch.exp(-DT * n_rate)
        p = p_inf + (p - p_inf) * torch.exp(-DT * p_rate)
    failed = ~torch.isfinite(trace).all(-1) | (trace.abs() > 200.0).any(-1)
    return torch.where(failed[:, None], torch.nan, trace)


def summarise(trace: torch.Tensor) -> torch.Tensor:
    """Seven summary features of voltage traces.

    The spike count (upward crossings of -10 mV) is dequantised with uniform noise in
    [0, 1) so that NLE models a density: the density of count + U is P(count) on each
    unit interval. The sd and kurtosis are on the log scale (heavy tails).

    Args:
        trace: (n, T) voltages recorded at `record_times()`.

    Returns:
        (n, 7) features, in the order of `FEATURES`.
    """
    t = record_times()
    above = trace >= SPIKE_THRESHOLD
    spikes = (above[:, 1:] & ~above[:, :-1]).sum(-1).to(trace.dtype)
    rest, stim = trace[:, t < T_ON], trace[:, (t >= T_ON) & (t < T_OFF)]
    mean, sd = stim.mean(-1), stim.std(-1)
    z = (stim - mean[:, None]) / sd[:, None]
    return torch.stack(
        [
            spikes + torch.rand_like(spikes),
            rest.mean(-1),
            rest.std(-1),
            mean,
            sd.log(),
            (z**3).mean(-1),
            (z**4).mean(-1).log(),
        ],
        dim=-1,
    )


def simulator(theta: torch.Tensor) -> torch.Tensor:
    """The black box of the model: conductances (n, 2) -> features (n, 7)."""
    return summarise(hodgkin_huxley(theta))


likelihood = NLE(zuko.flows.NSF)  # learned p(features | g_Na, g_K), a neural spline flow


def model(x_obs=None):
    theta = pyro.sample("theta", dist.Uniform(LOW, HIGH).to_event(1))
    return pyro.sample("x", SimulatorDistribution(simulator, theta, likelihood), obs=x_obs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny budgets, seconds")
    parser.add_argument("--output", type=Path, default=Path("examples/output"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    smoke = args.smoke_test
    num_simulations, epochs = (400, 3) if smoke else (20_000, 150)
    warmup, samples, chains = (5, 5, 20) if smoke else (100, 50, 100)
    num_predictive = 20 if smoke else 200
    start = time.perf_counter()

    # A synthetic observation at known conductances, from the real simulator.
    pyro.set_rng_seed(0)
    trace_obs = hodgkin_huxley(THETA_TRUE[None])
    x_obs = summarise(trace_obs)[0]

    # Learn the likelihood of the features from simulations drawn from the prior.
    reports = train(
        model, num_simulations=num_simulations, simulation_batch_size=10_000, seed=1,
        progress=False, fit_options={"max_epochs": epochs},
    )  # fmt: skip
    for report in reports.values():
        print(report)
    trained = time.perf_counter()

    # The posterior: 100 slice-sampling chains, vectorised, started by SIR.
    mcmc = SliceMCMC(model, num_samples=samples, warmup_steps=warmup, num_chains=chains, seed=2,
                     progress=False)  # fmt: skip
    mcmc.run(x_obs)
    theta = mcmc.get_samples()["theta"]
    sampled = time.perf_counter()
    print(f"training {trained - start:.1f} s (simulations included), "
          f"slice sampling {sampled - trained:.1f} s")  # fmt: skip
    mcmc.summary()

    low, high = theta.quantile(0.05, 0), theta.quantile(0.95, 0)
    print("parameter  true    posterior mean  sd     90% interval")
    for d, name in enumerate(NAMES):
        print(f"{name:9s}  {THETA_TRUE[d]:6.2f}  {theta[:, d].mean():14.2f}  "
              f"{theta[:, d].std():5.2f}  [{low[d]:5.2f}, {high[d]:5.2f}]")  # fmt: skip

    # Posterior predictive check with the real simulator, at 200 posterior draws.
    pyro.set_rng_seed(3)
    draws = theta[torch.randint(len(theta), (num_predictive,))]
    traces = hodgkin_huxley(draws)
    predicted = summarise(traces)
    print("\nfeature       observed  posterior predictive median  [5%, 95%]")
    for j, name in enumerate(FEATURES):
        column = predicted[:, j][torch.isfinite(predicted[:, j])]
        q = column.quantile(torch.tensor([0.05, 0.5, 0.95]))
        print(f"{name:12s}  {x_obs[j]:8.2f}  {q[1]:27.2f}  [{q[0]:.2f}, {q[2]:.2f}]")

    # Figures: the posterior, and traces simulated at posterior draws.
    args.output.mkdir(parents=True, exist_ok=True)
    figure = pair_plot(theta, labels=[f"{n} (mS/cm$^2$)" for n in NAMES], truth=THETA_TRUE)
    figure.savefig(args.output / "hodgkin_huxley_posterior.png", dpi=100)
    t = record_times()
    figure, axes = plt.subplots(4, 1, figsize=(8, 7), sharex=True, sharey=True)
    axes[0].plot(t, trace_obs[0], color="k", linewidth=0.8)
    axes[0].set_title(f"observed: g_Na = {THETA_TRUE[0]:.1f}, g_K = {THETA_TRUE[1]:.1f}",
                      fontsize="small")  # fmt: skip
    for ax, trace, draw in zip(axes[1:], traces, draws, strict=False):
        ax.plot(t, trace, color="C0", linewidth=0.8)
        ax.set_title(f"posterior draw: g_Na = {draw[0]:.1f}, g_K = {draw[1]:.1f}",
                     fontsize="small")  # fmt: skip
    for ax in axes:
        ax.axvspan(T_ON, T_OFF, color="grey", alpha=0.1, linewidth=0)
        ax.set_ylabel("V (mV)")
    axes[-1].set_xlabel("time (ms); shaded: step current on")
    figure.tight_layout()
    figure.savefig(args.output / "hodgkin_huxley_traces.png", dpi=100)
    print(f"\ntotal {time.perf_counter() - start:.1f} s; figures written to "
          f"{args.output}/hodgkin_huxley_*.png")  # fmt: skip


if __name__ == "__main__":
    main()
