"""A stochastic SIR epidemic seen through under-reporting: a simulator beside a tractable study.

An infection spreads through four regions of N = 1000 people each. Every region runs
its own stochastic SIR epidemic, a daily chain-binomial (the discrete-time epidemic of
Reed, Frost and Greenwood): a fraction phi of the people are susceptible at the start,
S_0 ~ Binomial(N - 5, phi), 5 are infectious, and each day

    new infections ~ Binomial(S, 1 - exp(-beta_r I / N)),
    recoveries     ~ Binomial(I, 1 - exp(-gamma)).

The regions differ in their contact rate beta_r and share the recovery rate gamma
(1 / gamma is the mean infectious period, in days) and the susceptible fraction phi;
the effective reproduction number at the start is R_r = beta_r phi / gamma. Health
authorities do not see infections, only reported cases: each infection is reported
with an unknown probability rho. The data are the weekly reported cases of the first
12 weeks in each region.

The epidemic has no tractable likelihood: the weekly counts are sums over a random
path through a branching, depleting population. The reporting has one, but not on its
own: reported cases given the *unobserved* infections are Binomial(infections, rho),
and integrating the infections out is the intractable part again. So the simulator
includes the reporting, theta = (beta_r, gamma, rho, phi), and rho enters the model
twice:

- in the simulator site of every region (the learned likelihood of the case counts);
- in a tractable site: a validation study that traced N_VALIDATED = 100 confirmed
  infections and found k of them in the case register, k ~ Binomial(100, rho).

The two sites are conditionally independent given rho, so the joint likelihood is
their product: a mixed model, an exact Pyro likelihood beside a learned one, sharing
a parameter. The study matters because the case counts cannot tell rho from phi: an
epidemic in twice as many susceptibles, half of them reported, with half the contact
rate, gives nearly the same reported curves (to first order the curves depend on
beta_r phi, gamma and rho phi only; only the size of the random fluctuations tells the
rest apart). Without the study the posterior is a ridge along rho phi = constant; the
study pins rho, hence phi and every beta_r.

Counts are integers and a normalising flow is a density, so the simulator dequantises
them: its output is sqrt(cases + u) with u ~ Uniform(0, 1) (the square root makes
counts of all sizes about equally noisy). The density of the dequantised value is
constant on each count's cell and equals the probability of the count, so the
observed counts enter as sqrt(cases + 1/2), the middle of their cells; the Jacobian of
the square root depends on the data only, not on the parameters.

The script

1. simulates the epidemic in torch, vectorised over many parameter vectors;
2. learns the likelihood of one region's 12 weekly counts with NLE, a masked
   autoregressive flow, from 40,000 simulations (`train` simulates from the model's
   prior; the regions under a `pyro.plate` share one estimator, and each prior draw
   gives four parameter vectors to simulate);
3. simulates a synthetic outbreak and a validation study at known parameters;
4. samples the posterior of (beta_1..4, gamma, rho, phi) with `SliceMCMC`, with and
   without the validation study;
5. prints the recovery table and plots the posteriors against the truth and the
   posterior predictive reported cases and (unobserved) infections, simulated by the
   real simulator at posterior draws.

    python examples/sir_epidemic.py               # about 3 minutes on 2 CPU cores
    python examples/sir_epidemic.py --smoke-test  # seconds, for the tests
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

POPULATION, INITIAL, WEEKS, REGIONS = 1000, 5, 12, 4
N_VALIDATED = 100  # traced infections in the validation study
BETA_TRUE = torch.tensor([0.3, 0.35, 0.4, 0.45])  # infectious contacts per day, per region
GAMMA_TRUE, RHO_TRUE, PHI_TRUE = (
    0.125,
    0.3,
    0.6,
)  # 8 days infectious, 30% reported, 60% susceptible
NAMES = [f"beta[{r + 1}]" for r in range(REGIONS)] + ["gamma", "rho", "phi"]


def epidemic(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Chain-binomial SIR epidemics with reporting, one per parameter vector.

    Args:
        theta: (n, 4) parameters (beta, gamma, rho, phi).

    Returns:
        (n, WEEKS) weekly new infections and (n, WEEKS) weekly reported cases, as
        float64 counts.
    """
    beta, gamma, rho, phi = theta.detach().double().unbind(-1)
    susceptible = torch.binomial(torch.full_like(beta, POPULATION - INITIAL), phi)
    infectious = torch.full_like(beta, INITIAL)
    recover = -torch.expm1(-gamma)  # daily probability of recovery
    infections = torch.zeros(len(beta), WEEKS, dtype=torch.float64)
    for day in range(7 * WEEKS):
        new = torch.binomial(susceptible, -torch.expm1(-beta * infectious / POPULATION))
        recovered = torch.binomial(infectious, recover)
        susceptible = susceptible - new
        infectious = infectious + new - recovered
        infections[:, day // 7] += new
    reported = torch.binomial(infections, rho[:, None].expand_as(infections))
    return infections, reported


def encode(cases: torch.Tensor, jitter: torch.Tensor | float = 0.5) -> torch.Tensor:
    """Dequantised, variance-stabilised counts: sqrt(cases + jitter), cases (*, W)."""
    return (cases + jitter).sqrt().to(torch.get_default_dtype())


def reported_cases(theta: torch.Tensor) -> torch.Tensor:
    """The simulator of the model: theta (n, 4) -> sqrt(reported + u) (n, WEEKS)."""
    _, reported = epidemic(theta)
    return encode(reported, torch.rand_like(reported))


likelihood = NLE(zuko.flows.MAF)  # q(sqrt(reported + u) | beta, gamma, rho, phi), a MAF


def model(x_obs=None, validated=None):
    gamma = pyro.sample("gamma", dist.LogNormal(math.log(0.125), 0.3))
    rho = pyro.sample("rho", dist.Beta(2.0, 3.0))
    phi = pyro.sample("phi", dist.Beta(6.0, 3.0))
    if validated is not None:  # the tractable part: the validation study
        pyro.sample("validated", dist.Binomial(N_VALIDATED, rho), obs=validated)
    with pyro.plate("regions", REGIONS):
        beta = pyro.sample("beta", dist.LogNormal(math.log(0.3), 0.3))
        # theta (..., REGIONS, 4): gamma, rho and phi are shared by the regions
        theta = torch.stack(torch.broadcast_tensors(beta, gamma, rho, phi), -1)
        site = SimulatorDistribution(reported_cases, theta, likelihood)
        return pyro.sample("cases", site, obs=x_obs)


def parameters(samples: dict[str, torch.Tensor]) -> torch.Tensor:
    """Posterior draws as a table (m, 7): beta_1..4, gamma, rho, phi."""
    shared = [samples[name][:, None] for name in ("gamma", "rho", "phi")]
    return torch.cat([samples["beta"], *shared], -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny budgets, seconds")
    parser.add_argument("--output", type=Path, default=Path("examples/output"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    smoke = args.smoke_test
    num_simulations, epochs = (500, 3) if smoke else (40_000, 300)
    chains, warmup, samples, thin = (20, 10, 10, 1) if smoke else (100, 200, 100, 2)
    candidates = 2_000 if smoke else 20_000  # prior draws for the SIR start of the chains
    start = time.perf_counter()

    # The synthetic outbreak and validation study.
    pyro.set_rng_seed(1)
    shared = torch.tensor([GAMMA_TRUE, RHO_TRUE, PHI_TRUE])
    theta_true = torch.cat([BETA_TRUE[:, None], shared.expand(REGIONS, 3)], -1)
    infections_true, cases_obs = epidemic(theta_true)
    x_obs = encode(cases_obs)  # (REGIONS, WEEKS)
    validated = dist.Binomial(N_VALIDATED, RHO_TRUE).sample()
    print(f"reported cases per region: {cases_obs.sum(-1).long().tolist()} of "
          f"{infections_true.sum(-1).long().tolist()} infections; validation study: "
          f"{int(validated)} of {N_VALIDATED} infections reported")  # fmt: skip

    # One simulator call: a seeded run would otherwise make 100, each paying the daily loop.
    report = train(model, num_simulations=num_simulations, seed=1, progress=False,
                   simulation_batch_size=num_simulations,
                   fit_options={"max_epochs": epochs, "batch_size": 512})  # fmt: skip
    print(report["cases"])
    trained = time.perf_counter()

    posteriors = {}
    for name, data in (("with the validation study", (x_obs, validated)),
                       ("cases only", (x_obs,))):  # fmt: skip
        begin = time.perf_counter()
        mcmc = SliceMCMC(model, num_samples=samples, warmup_steps=warmup, num_chains=chains,
                         thin=thin, num_candidates=candidates, max_candidates=candidates,
                         seed=2, progress=False).run(*data)  # fmt: skip
        posteriors[name] = parameters(mcmc.get_samples())
        r_hat = max(float(d["r_hat"].max()) for d in mcmc.diagnostics().values())
        parts = ", ".join(f"{k} {v:.0f} s" for k, v in mcmc.seconds.items())
        print(f"{name}: sampled in {time.perf_counter() - begin:.0f} s ({parts}; "
              f"largest R-hat {r_hat:.3f})")  # fmt: skip

    truth = torch.cat([BETA_TRUE, shared])
    print("\nposterior                  parameter  true    posterior mean  90% interval")
    for name, draws in posteriors.items():
        mean, low, high = draws.mean(0), draws.quantile(0.05, 0), draws.quantile(0.95, 0)
        for d, parameter in enumerate(NAMES):
            print(
                f"{name:26s} {parameter:9s}  {truth[d]:6.3f}  {mean[d]:14.3f}  "
                f"[{low[d]:.3f}, {high[d]:.3f}]"
            )
    print(f"training {trained - start:.0f} s; wall time {time.perf_counter() - start:.0f} s")

    args.output.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(2, 4, figsize=(13, 5.5))
    axes = axes.flatten()
    for d, ax in enumerate(axes[: len(NAMES)]):
        for (name, draws), color in zip(posteriors.items(), ["C0", "C1"], strict=True):
            ax.hist(draws[:, d], bins=40, density=True, histtype="step", color=color,
                    label=name)  # fmt: skip
        ax.axvline(truth[d], color="k", linestyle="--", label="true value")
        ax.set(xlabel=NAMES[d], yticks=[])
    figure.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=3)
    ridge = axes[-1]  # the reporting rate against the susceptible fraction
    for draws, color in zip(reversed(posteriors.values()), ["C1", "C0"], strict=True):
        ridge.scatter(draws[:2000, -2], draws[:2000, -1], s=2, alpha=0.3, color=color)
    ridge.plot(RHO_TRUE, PHI_TRUE, "k+", markersize=14)
    ridge.set(xlabel="rho", ylabel="phi")
    figure.suptitle("SIR epidemic: posteriors with and without the validation study")
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    figure.savefig(args.output / "sir_epidemic_posterior.png", dpi=100)

    # Posterior predictive: the real simulator at 200 posterior draws, all regions at once.
    draws = posteriors["with the validation study"]
    draws = draws[torch.randperm(len(draws))[:200]]
    theta = torch.cat(
        [draws[:, :REGIONS, None], draws[:, None, REGIONS:].expand(-1, REGIONS, 3)], -1
    )  # (200, REGIONS, 4)
    infections, reported = (v.reshape(len(draws), REGIONS, WEEKS)
                            for v in epidemic(theta.reshape(-1, 4)))  # fmt: skip
    weeks = torch.arange(1, WEEKS + 1)
    levels = torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)
    figure, axes = plt.subplots(1, REGIONS, figsize=(15, 3.4), sharey=True)
    for r, ax in enumerate(axes):
        for values, color, label in ((reported, "C0", "reported cases"),
                                     (infections, "C1", "infections (unobserved)")):  # fmt: skip
            low, mid, high = values[:, r].quantile(levels, 0)
            ax.fill_between(weeks, low, high, color=color, alpha=0.3, step="mid", linewidth=0)
            ax.step(weeks, mid, where="mid", color=color, label=f"{label}: median, 90% band")
        ax.plot(weeks, cases_obs[r], "o", color="C0", markeredgecolor="k", label="observed cases")
        ax.plot(weeks, infections_true[r], "x", color="C1", label="true infections")
        reproduction = BETA_TRUE[r] * PHI_TRUE / GAMMA_TRUE
        ax.set(xlabel="week", title=f"region {r + 1}: R = {reproduction:.2f}")
    axes[0].set_ylabel("people per week")
    figure.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=4)
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    figure.savefig(args.output / "sir_epidemic_predictive.png", dpi=100)
    print(f"figures written to {args.output}/sir_epidemic_posterior.png and "
          "sir_epidemic_predictive.png")  # fmt: skip


if __name__ == "__main__":
    main()
