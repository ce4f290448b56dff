"""Quickstart: a black-box simulator inside a hierarchical Pyro model.

Each subject s has parameters theta_s = (a_s, b_s) drawn around a group mean mu, and
produces i.i.d. trials from a simulator whose likelihood we pretend not to know: a
noisy nonlinear map with skewed, non-Gaussian noise. `train` learns the single-trial
likelihood from simulations drawn from the model's own prior; Pyro's NUTS then samples
the posterior of mu and of every subject's theta, and ArviZ summarises it.

    python examples/quickstart.py               # about 3 minutes on 2 CPU cores
    python examples/quickstart.py --smoke-test  # seconds, for the tests
"""

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no OpenMP spin-waiting

import arviz as az  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
from pyro.infer import MCMC, NUTS  # noqa: E402

from pyro_sbi import NLE, SimulatorDistribution, to_inference_data, train  # noqa: E402


def simulator(theta: torch.Tensor) -> torch.Tensor:
    """A black box: theta (n, 2) -> x (n, 2), nonlinear with skewed noise."""
    a, b = theta[:, 0], theta[:, 1]
    eps = torch.randn_like(theta)
    x1 = a + 0.3 * eps[:, 0]
    x2 = b + 0.5 * torch.sin(a) + 0.3 * (torch.exp(0.5 * eps[:, 1]) - 1.0)
    return torch.stack([x1, x2], dim=-1)


likelihood = NLE()  # learned p(x | theta), a masked autoregressive flow (zuko)
SUBJECTS, TRIALS = 10, 50


def model(x_obs=None):
    mu = pyro.sample("mu", dist.Normal(torch.zeros(2), 1.0).to_event(1))  # tractable part
    with pyro.plate("subjects", SUBJECTS):
        theta = pyro.sample("theta", dist.Normal(mu, 0.5).to_event(1))
        with pyro.plate("trials", TRIALS, dim=-2):  # i.i.d. trials per subject
            return pyro.sample("x", SimulatorDistribution(simulator, theta, likelihood), obs=x_obs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny budgets, seconds")
    parser.add_argument("--output", type=Path, default=Path("examples/output"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    num_simulations, epochs = (500, 3) if args.smoke_test else (10_000, 1000)
    warmup, samples = (20, 20) if args.smoke_test else (300, 500)

    # Ground truth and observations from the real simulator.
    pyro.set_rng_seed(0)
    mu_true = torch.tensor([0.5, -0.5])
    theta_true = mu_true + 0.5 * torch.randn(SUBJECTS, 2)
    x_obs = simulator(theta_true.expand(TRIALS, SUBJECTS, 2).reshape(-1, 2))
    x_obs = x_obs.reshape(TRIALS, SUBJECTS, 2)

    start = time.perf_counter()
    train(model, num_simulations=num_simulations, seed=1, fit_options={"max_epochs": epochs})
    trained = time.perf_counter()

    mcmc = MCMC(NUTS(model), num_samples=samples, warmup_steps=warmup)
    mcmc.run(x_obs)
    sampled = time.perf_counter()
    print(f"training {trained - start:.1f} s, NUTS {sampled - trained:.1f} s")

    idata = to_inference_data(mcmc, model, x_obs)  # posterior predictive by the simulator
    print(az.summary(idata, var_names=["mu"], kind="stats"))

    posterior = mcmc.get_samples()
    mean = posterior["theta"].mean(0)
    low, high = posterior["theta"].quantile(0.05, 0), posterior["theta"].quantile(0.95, 0)
    mu = posterior["mu"]
    for d, name in enumerate("ab"):
        print(f"mu_{name}: true {mu_true[d]:.2f}, posterior mean {mu[:, d].mean():.2f} ± "
              f"{mu[:, d].std():.2f}")  # fmt: skip
    print("subject  parameter  true    posterior mean  90% interval")
    for s in range(SUBJECTS):
        for d, name in enumerate("ab"):
            print(
                f"{s:7d}  {name:9s}  {theta_true[s, d]:6.2f}  {mean[s, d]:14.2f}  "
                f"[{low[s, d]:5.2f}, {high[s, d]:5.2f}]"
            )
    inside = ((low <= theta_true) & (theta_true <= high)).float().mean()
    print(f"{inside:.0%} of the true subject parameters lie in their 90% intervals")

    args.output.mkdir(parents=True, exist_ok=True)
    az.plot_trace(idata, var_names=["mu", "theta"], coords={"subjects": [0, 1]})
    plt.tight_layout()
    plt.savefig(args.output / "quickstart_trace.png", dpi=80)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.errorbar(
        theta_true.flatten(),
        mean.flatten(),
        # a stuck (smoke-test) chain can put the mean a rounding error outside its interval
        yerr=[(mean - low).clamp(min=0).flatten(), (high - mean).clamp(min=0).flatten()],
        fmt="o",
    )
    lims = [theta_true.min() - 0.5, theta_true.max() + 0.5]
    ax.plot(lims, lims, "k:")
    ax.set(
        xlabel="true subject parameter",
        ylabel="posterior mean (90% interval)",
        title="parameter recovery",
    )
    fig.savefig(args.output / "quickstart_recovery.png", dpi=80)
    print(f"plots written to {args.output}/quickstart_trace.png and quickstart_recovery.png")


if __name__ == "__main__":
    main()
