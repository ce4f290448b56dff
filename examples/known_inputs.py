"""Trials with known inputs: a stimulus strength per trial, in two ways.

A psychophysics experiment: each of 3 subjects sees 40 trials, trial t at a known
stimulus strength u_t (the design, the same for every subject), and answers with a
response time. Subject s has an intercept a_s and a slope b_s; the log response time
of a trial is a_s - b_s u_t plus skewed noise (a Gumbel variable: a black box as far
as the learned likelihood knows). The design is written into the model in two ways:

1. **A parameter per trial**: the model computes v = a - b u_t inside the plate of
   trials and the simulator takes v alone (`simulator(v)`). `train` simulates every
   (draw, trial) value of v once; the estimator learns q(x | v), one parameter.
2. **A condition**: the simulator takes the stimulus as an input that is not a
   parameter, `simulator(theta, u)`, given by
   `SimulatorDistribution(simulator, theta, estimator, condition=u)` with `theta`
   (subjects, 2) and `u` (trials, 1, 1). `train` simulates each drawn theta at every
   stimulus of the design; the estimator learns q(x | theta, u). This is the form to
   use when the input enters the simulator in a way the model cannot write as a
   parameter (a stimulus sequence, a dose schedule).

Both learn the same likelihood, so NUTS gives the same posterior of (a_s, b_s) from
either; the script prints both and plots them.

    python examples/known_inputs.py               # about a minute on 2 CPU cores
    python examples/known_inputs.py --smoke-test  # seconds, for the tests
"""

import argparse
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
from pyro.infer import MCMC, NUTS  # noqa: E402

from pyro_sbi import NLE, SimulatorDistribution, train  # noqa: E402

SUBJECTS, TRIALS = 3, 40
STIMULUS = torch.linspace(0.0, 1.0, TRIALS).reshape(TRIALS, 1, 1)  # (trials, 1, 1): known


def noise(n: int) -> torch.Tensor:
    """Centred skewed noise (a Gumbel variable of scale 0.2), `(n, 1)`."""
    return dist.Gumbel(-0.2 * 0.5772, 0.2).sample((n, 1))


def response(v: torch.Tensor) -> torch.Tensor:
    """Form 1's simulator: the per-trial location v (n, 1) -> log response time (n, 1)."""
    return v + noise(len(v))


def response_to(theta: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Form 2's simulator: theta = (a, b) (n, 2) and stimulus u (n, 1) -> (n, 1)."""
    return theta[:, :1] - theta[:, 1:] * u + noise(len(theta))


per_trial = NLE(zuko.flows.MAF)  # q(x | v)
conditioned = NLE(zuko.flows.MAF)  # q(x | a, b, u)


def prior() -> torch.Tensor:
    """(subjects, 2) intercepts and slopes, inside a plate of subjects."""
    return pyro.sample("theta", dist.Normal(torch.tensor([0.0, 1.0]), 0.5).to_event(1))


def model_per_trial(x_obs=None):
    with pyro.plate("subjects", SUBJECTS):
        theta = prior()
        with pyro.plate("trials", TRIALS, dim=-2):
            v = theta[..., 0] - theta[..., 1] * STIMULUS[..., 0]  # (trials, subjects)
            fn = SimulatorDistribution(response, v.unsqueeze(-1), per_trial)
            return pyro.sample("x", fn, obs=x_obs)


def model_condition(x_obs=None):
    with pyro.plate("subjects", SUBJECTS):
        theta = prior()
        with pyro.plate("trials", TRIALS, dim=-2):
            fn = SimulatorDistribution(response_to, theta, conditioned, condition=STIMULUS)
            return pyro.sample("x", fn, obs=x_obs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny budgets, seconds")
    parser.add_argument("--output", type=Path, default=Path("examples/output"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    num_simulations, epochs = (600, 3) if args.smoke_test else (8_000, 200)
    warmup, samples = (20, 20) if args.smoke_test else (150, 300)

    # Ground truth and observations from the real simulator, at the design.
    pyro.set_rng_seed(0)
    theta_true = torch.tensor([[0.2, 0.8], [-0.3, 1.4], [0.5, 1.0]])
    rows = theta_true.expand(TRIALS, SUBJECTS, 2).reshape(-1, 2)
    x_obs = response_to(rows, STIMULUS.expand(TRIALS, SUBJECTS, 1).reshape(-1, 1))
    x_obs = x_obs.reshape(TRIALS, SUBJECTS, 1)

    posteriors, seconds = {}, {}
    for name, model in [("per-trial parameter", model_per_trial), ("condition", model_condition)]:
        start = time.perf_counter()
        report = train(model, num_simulations=num_simulations, seed=1, progress=False,
                       fit_options={"max_epochs": epochs})["x"]  # fmt: skip
        print(f"{name}: {report}; rows simulated {tuple(report.theta.shape)}")
        pyro.set_rng_seed(2)
        mcmc = MCMC(NUTS(model), num_samples=samples, warmup_steps=warmup, disable_progbar=True)
        mcmc.run(x_obs)
        posteriors[name] = mcmc.get_samples()["theta"]
        seconds[name] = time.perf_counter() - start

    print("\nsubject  parameter  true" + "".join(f"{name:>26s}" for name in posteriors))
    for s in range(SUBJECTS):
        for d, label in enumerate("ab"):
            cells = "".join(
                f"{p[:, s, d].mean():19.2f} ± {p[:, s, d].std():4.2f}" for p in posteriors.values()
            )
            print(f"{s:7d}  {label:9s}  {theta_true[s, d]:4.1f}{cells}")
    print("wall time: " + ", ".join(f"{name} {t:.1f} s" for name, t in seconds.items()))

    args.output.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(1, SUBJECTS, figsize=(4 * SUBJECTS, 3.8))
    for s, ax in enumerate(axes):
        for i, (name, p) in enumerate(posteriors.items()):
            ax.scatter(p[:, s, 0], p[:, s, 1], s=3, alpha=0.3, color=f"C{i}", label=name)
        ax.plot(*theta_true[s], "k+", markersize=12, label="truth")
        ax.set(xlabel="intercept a", ylabel="slope b", title=f"subject {s}")
    axes[0].legend(fontsize="small", markerscale=3)
    figure.suptitle("posterior from the two forms of the design")
    figure.tight_layout()
    figure.savefig(args.output / "known_inputs.png", dpi=80)
    print(f"figure written to {args.output}/known_inputs.png")


if __name__ == "__main__":
    main()
