"""A stochastic epidemic written as a Pyro program: learning its likelihood with the score.

The chain-binomial SIR epidemic of the benchmark task `pyro_sbi.tasks.sir`: N = 1000
people, 10 infectious and 990 susceptible at the start, and each day t = 0..9

    new infections  dI_t ~ Binomial(S_t, 1 - exp(-beta I_t / N)),
    recoveries      dR_t ~ Binomial(I_t, 1 - exp(-gamma)),

then S_{t+1} = S_t - dI_t and I_{t+1} = I_t + dI_t - dR_t. The parameters are the
contact rate beta ~ U(0.5, 3) and the daily recovery rate gamma ~ U(0.05, 0.5); the
data are the twenty daily counts.

Here the simulator is written as a Pyro program: every daily draw is a `pyro.sample`
site under a plate over the rows, so `PyroSimulator` gives, besides each simulation, its
joint score grad_theta log p(x, z | theta). `train(model, augment="score")` then fits
NLE to the simulations and, besides, regresses the learned likelihood's gradient in
theta onto those scores (SCANDAL; `pyro_sbi.augment`).

The counts are dequantised for the flow: the output is sqrt(counts + u), u ~ U(0, 1) a
sample site of its own (its density does not involve theta). The counts are the whole
path here (S_t and I_t follow from them), so nothing is latent but u, and the joint
score is the exact score of the likelihood: the most the score can give. The
likelihood is exact too (`pyro_sbi.tasks.sir.log_likelihood`), so each learned
posterior is compared with the exact one by C2ST (0.5: indistinguishable).

The script

1. writes the epidemic as a Pyro program and wraps it in `PyroSimulator`;
2. trains NLE on 1,000 simulations twice, plain and with `augment="score"` (the same
   simulations: the same seed), and plain NLE on 10,000 as the yardstick;
3. samples the three posteriors of observations 1 to 3 of the task with `SliceMCMC`;
4. prints their C2ST against the exact posterior and plots the posteriors.

    python examples/epidemic_program.py               # about 5 minutes on 2 CPU cores
    python examples/epidemic_program.py --smoke-test  # seconds, for the tests
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

from pyro_sbi import NLE, PyroSimulator, SimulatorDistribution, SliceMCMC, c2st, train  # noqa: E402
from pyro_sbi.tasks import sir  # noqa: E402

POPULATION, INFECTED, DAYS = sir.POPULATION, sir.INFECTED, sir.DAYS
NAMES = ["beta", "gamma"]


def epidemic(theta: torch.Tensor) -> torch.Tensor:
    """The chain-binomial SIR as a Pyro program, one epidemic per row.

    Arguments:
        theta: `(n, 2)` contact and recovery rates `(beta, gamma)`.

    Returns:
        `(n, 20)` dequantised counts sqrt(count + u): the daily new infections, then the
        daily recoveries.
    """
    beta, gamma = theta.unbind(-1)
    susceptible = torch.full_like(beta, POPULATION - INFECTED)
    infectious = torch.full_like(beta, INFECTED)
    recover = -torch.expm1(-gamma)  # the daily probability of recovery
    infections, recoveries = [], []
    with pyro.plate("rows", len(theta)):
        for day in range(DAYS):
            infect = -torch.expm1(-beta * infectious / POPULATION)
            new = pyro.sample(f"new_{day}", dist.Binomial(susceptible, infect))
            gone = pyro.sample(f"recovered_{day}", dist.Binomial(infectious, recover))
            susceptible, infectious = susceptible - new, infectious + new - gone
            infections.append(new)
            recoveries.append(gone)
        counts = torch.stack(infections + recoveries, -1)
        u = pyro.sample("u", dist.Uniform(0.0, 1.0).expand([2 * DAYS]).to_event(1))
    return encode(counts, u)


def encode(counts: torch.Tensor, jitter: torch.Tensor | float = 0.5) -> torch.Tensor:
    """Dequantised, variance-stabilised counts: sqrt(counts + jitter), `counts (*, 20)`."""
    return (counts + jitter).sqrt()


simulator = PyroSimulator(epidemic)


def make_model(likelihood: NLE):
    """The Bayesian model: the task's uniform prior and the epidemic with `likelihood`."""

    def model(x_obs=None):
        theta = pyro.sample("theta", sir.prior())
        return pyro.sample("x", SimulatorDistribution(simulator, theta, likelihood), obs=x_obs)

    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny budgets, seconds")
    parser.add_argument("--output", type=Path, default=Path("examples/output"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    smoke = args.smoke_test
    budget, epochs = (200, 3) if smoke else (1_000, 1_000)
    num_posterior, chains, warmup = (200, 50, 10) if smoke else (1_000, 250, 40)
    observations = [1] if smoke else [1, 2, 3]
    start = time.perf_counter()

    # One joint score, checked against the exact likelihood's gradient (no latent here).
    theta = torch.tensor([[1.5, 0.2]])
    pyro.set_rng_seed(0)
    x, _, score = simulator.joint(theta)
    counts = (x**2).floor()  # the counts back from sqrt(counts + u)
    exact = theta.double().requires_grad_(True)
    (gradient,) = torch.autograd.grad(sir.log_likelihood(counts.double(), exact).sum(), exact)
    print(f"joint score {score[0].tolist()}, exact score {gradient[0].tolist()}")

    runs = {  # label: (simulations, augment)
        f"NLE, {budget:,}": (budget, None),
        f"NLE + score, {budget:,}": (budget, "score"),
        f"NLE, {10 * budget:,}": (10 * budget, None),
    }
    models, seconds = {}, {}
    for label, (num_simulations, augment) in runs.items():
        likelihood = NLE()
        begin = time.perf_counter()
        train(make_model(likelihood), num_simulations=num_simulations, seed=1, progress=False,
              augment=augment, simulation_batch_size=num_simulations,
              fit_options={"max_epochs": epochs})  # fmt: skip
        seconds[label] = time.perf_counter() - begin
        models[label] = make_model(likelihood)

    table, draws = {label: [] for label in runs}, {}
    for i in observations:
        x_obs = encode(sir.observation(i))
        reference = sir.reference_posterior(i, num_posterior)
        draws[i] = {"exact": reference}
        for label, model in models.items():
            mcmc = SliceMCMC(model, num_samples=math.ceil(num_posterior / chains),
                             num_chains=chains, warmup_steps=warmup, seed=i,
                             progress=False).run(x_obs)  # fmt: skip
            samples = mcmc.get_samples()["theta"][:num_posterior]
            draws[i][label] = samples
            table[label].append(c2st(samples, reference, seed=i))

    print("\nC2ST against the exact posterior (0.5 is perfect)")
    print(f"{'estimator':24s} " + " ".join(f"obs {i:<3d}" for i in observations)
          + "   mean  train s")  # fmt: skip
    for label, values in table.items():
        row = " ".join(f"{v:7.3f}" for v in values)
        print(f"{label:24s} {row} {sum(values) / len(values):6.3f} {seconds[label]:8.1f}")
    print(f"wall time {time.perf_counter() - start:.0f} s")

    args.output.mkdir(parents=True, exist_ok=True)
    colors = dict(zip(runs, ["C0", "C1", "C2"], strict=True))
    figure, axes = plt.subplots(2, len(observations), figsize=(4.2 * len(observations), 6),
                                squeeze=False)  # fmt: skip
    for column, i in enumerate(observations):
        truth = sir.true_parameters(i)
        for d, name in enumerate(NAMES):
            ax = axes[d, column]
            exact = draws[i]["exact"][:, d]
            ax.hist(exact, bins=40, density=True, color="0.8", label="exact")
            for label, color in colors.items():
                legend = f"{label}: C2ST {table[label][column]:.2f}"
                ax.hist(draws[i][label][:, d], bins=40, density=True, histtype="step",
                        color=color, label=legend)  # fmt: skip
            ax.axvline(truth[d], color="k", linestyle="--")
            ax.set(xlabel=name, yticks=[], title=f"observation {i}" if d == 0 else None)
            ax.set_xlim(exact.quantile(0.001) - 2 * exact.std(),
                        exact.quantile(0.999) + 2 * exact.std())  # fmt: skip
            if d == 0:
                ax.legend(fontsize=7)
    figure.suptitle("Chain-binomial SIR: NLE posteriors with and without the joint score")
    figure.tight_layout()
    figure.savefig(args.output / "epidemic_program_posteriors.png", dpi=100)
    print(f"figure written to {args.output}/epidemic_program_posteriors.png")


if __name__ == "__main__":
    main()
