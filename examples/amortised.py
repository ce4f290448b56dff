"""Amortised inference over a population of neurons, checked by SBC and TARP.

A leaky integrate-and-fire (LIF) neuron is driven by a noisy input current; from a
one-second recording we keep six summaries (the spike count, the mean and the
coefficient of variation of the inter-spike intervals, the mean, the sd and the 10 ms
autocorrelation of the membrane potential) and want the posterior of the neuron's
input drive, input noise and membrane time constant. One amortised guide
(`AmortizedGuide(model, NPE())`), trained once on simulations from the prior, gives the
posterior of every neuron of a recorded population in milliseconds each, without MCMC;
simulation-based calibration and TARP, cheap for the same reason, check that its
credible regions cover the truth as often as they claim.

    python examples/amortised.py               # about 3 minutes on 2 CPU cores
    python examples/amortised.py --smoke-test  # seconds, for the tests
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

from pyro_sbi import NPE, AmortizedGuide, SimulatorDistribution, sbc, train  # noqa: E402
from pyro_sbi.diagnostics import tarp  # noqa: E402

DT, DURATION = 5e-4, 1.0  # Euler step and recording length, seconds
LAG = 0.01  # autocorrelation lag of the membrane potential, seconds


def simulator(theta: torch.Tensor) -> torch.Tensor:
    """A black box: theta (n, 3) = (drive, noise, tau in ms) -> six summaries x (n, 6).

    tau dV/dt = drive - V + noise sqrt(2 tau) xi(t); a spike and a reset to 0 when V
    reaches the threshold 1 (potentials in units of the threshold).
    """
    drive, noise, tau = theta[:, 0], theta[:, 1], theta[:, 2] * 1e-3
    n, steps = len(theta), round(DURATION / DT)
    lag, every = round(LAG / DT), 2  # the potential is recorded every 1 ms
    v = torch.zeros(n)
    last = torch.full((n,), math.nan)  # time of the last spike
    count, isi_sum, isi_sq = torch.zeros(n), torch.zeros(n), torch.zeros(n)
    trace = []
    decay, kick = DT / tau, noise * torch.sqrt(2 * DT / tau)
    for step in range(steps):
        v = v + decay * (drive - v) + kick * torch.randn(n)
        spiked = v >= 1.0
        if spiked.any():
            t = step * DT
            isi = t - last
            seen = spiked & ~torch.isnan(last)
            isi_sum = isi_sum + torch.where(seen, isi, 0.0)
            isi_sq = isi_sq + torch.where(seen, isi**2, 0.0)
            count = count + spiked
            last = torch.where(spiked, torch.full_like(last, t), last)
            v = torch.where(spiked, torch.zeros_like(v), v)
        if step % every == 0:
            trace.append(v)
    trace = torch.stack(trace, -1)  # (n, 1000)
    intervals = (count - 1).clamp(min=1)
    mean_isi = torch.where(count >= 2, isi_sum / intervals, DURATION)
    var_isi = (isi_sq / intervals - mean_isi**2).clamp(min=0.0)
    cv = torch.where(count >= 3, var_isi.sqrt() / mean_isi, 0.0)
    centred = trace - trace.mean(-1, keepdim=True)
    sd = centred.pow(2).mean(-1).sqrt()
    k = lag // every
    acf = (centred[:, k:] * centred[:, :-k]).mean(-1) / sd.pow(2).clamp(min=1e-12)
    return torch.stack([count, mean_isi, cv, trace.mean(-1), sd, acf], -1)


PRIORS = {
    "drive": dist.Uniform(0.6, 2.0),  # mean input, in units of the threshold
    "noise": dist.LogNormal(math.log(0.2), 0.5),  # sd of the input noise
    "tau": dist.Uniform(5.0, 30.0),  # membrane time constant, ms
}


def model(x=None):
    theta = torch.stack([pyro.sample(name, prior) for name, prior in PRIORS.items()], -1)
    # no likelihood estimator: the amortised guide needs only simulations
    return pyro.sample("x", SimulatorDistribution(simulator, theta), obs=x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny budgets, seconds")
    parser.add_argument("--output", type=Path, default=Path("examples/output"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    num_simulations, epochs = (500, 3) if args.smoke_test else (10_000, 1000)
    neurons, draws = (20, 50) if args.smoke_test else (500, 1000)

    # Train one guide on simulations from the prior; x_example only marks the data's shape.
    x_example = simulator(torch.tensor([[1.2, 0.2, 15.0]]))[0]
    guide = AmortizedGuide(model, NPE())
    start = time.perf_counter()
    train(model, x_example, num_simulations=num_simulations, guide=guide, seed=0,
          progress=False, fit_options={"max_epochs": epochs})  # fmt: skip
    print(f"simulating and training: {time.perf_counter() - start:.1f} s "
          f"({num_simulations} simulations, {guide.history.epochs} epochs)")  # fmt: skip

    # A recorded population: neurons whose parameters we pretend not to know.
    pyro.set_rng_seed(1)
    truth = torch.stack([prior.sample((neurons,)) for prior in PRIORS.values()], -1)
    recordings = simulator(truth)
    start = time.perf_counter()
    posterior = [guide.sample_posterior(draws, x) for x in recordings]  # one call per neuron
    seconds = time.perf_counter() - start
    print(f"posterior draws for {neurons} neurons ({draws} each): {seconds:.2f} s")
    samples = torch.stack([torch.stack([p[n] for n in PRIORS], -1) for p in posterior])
    low, high = samples.quantile(0.05, 1), samples.quantile(0.95, 1)
    inside = ((low <= truth) & (truth <= high)).float().mean(0)
    width = (high - low).mean(0)
    print("parameter  prior range     mean 90% width  truth in 90% interval")
    for j, name in enumerate(PRIORS):
        span = f"{truth[:, j].min():.2f}-{truth[:, j].max():.2f}"
        print(f"{name:9s}  {span:14s}  {width[j]:14.3f}  {inside[j]:.0%}")

    # Calibration: SBC ranks over fresh data sets, and TARP over the recorded population
    # (its neurons were drawn from the prior, so a calibrated posterior covers them).
    result = sbc(model, x_example, guide=guide, num_datasets=min(neurons, 200), num_draws=200,
                 seed=2, progress=False)  # fmt: skip
    p_values = ", ".join(f"{name} {p:.2f}" for name, p in result.p_values().items())
    print(f"SBC over {len(result.ranks)} data sets ({result.seconds:.1f} s): rank "
          f"uniformity p-values {p_values}; rejected at 5%: {result.rejected()}")  # fmt: skip
    coverage = tarp(samples, truth, seed=3)
    print(f"TARP: largest gap between coverage and credibility {coverage.max_deviation:.3f}, "
          f"KS p-value {coverage.p_value:.2f}")  # fmt: skip

    args.output.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    mean = samples.mean(1)
    for j, (ax, name) in enumerate(zip(axes, PRIORS, strict=True)):
        ax.errorbar(truth[:, j], mean[:, j], yerr=[(mean - low)[:, j].clamp(min=0),
                    (high - mean)[:, j].clamp(min=0)], fmt=".", alpha=0.4)  # fmt: skip
        lims = [truth[:, j].min(), truth[:, j].max()]
        ax.plot(lims, lims, "k:")
        ax.set(xlabel=f"true {name}", ylabel="posterior mean (90% interval)")
    fig.suptitle(f"{neurons} neurons, one amortised guide")
    fig.tight_layout()
    fig.savefig(args.output / "amortised_recovery.png", dpi=80)
    fig = result.plot()
    fig.savefig(args.output / "amortised_sbc.png", dpi=80)
    ax = coverage.plot()
    ax.set_title("TARP expected coverage")
    ax.figure.tight_layout()
    ax.figure.savefig(args.output / "amortised_tarp.png", dpi=80)
    print(f"plots written to {args.output}/amortised_recovery.png, amortised_sbc.png and "
          "amortised_tarp.png")  # fmt: skip


if __name__ == "__main__":
    main()
