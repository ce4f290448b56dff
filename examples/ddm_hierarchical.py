"""Hierarchical drift-diffusion model: MNLE inside Pyro, checked against the exact likelihood.

In a two-choice task each subject s has drift v, boundary separation a, relative start
w and non-decision time tau; each trial gives a reaction time and a choice, a mixed
continuous + discrete observation. The subjects' parameters are drawn around group
means with group spreads on an unconstrained scale: u = logit of each parameter's
place in the task's prior box, theta = LOW + (HIGH - LOW) * sigmoid(u). The surrogate
is trained on that box, so the map keeps every subject where it is valid (NUTS never
asks it to extrapolate). The hierarchy is centred: with 60 to 140 trials a subject's
data pin its parameters down, where a centred hierarchy samples best. Subjects have
different numbers of trials (ragged data, as in every real experiment): the trials are
padded to the largest count and `poutine.mask` leaves the padding out of the model.

The simulator (`pyro_sbi.tasks.ddm.simulate_ddm`) is treated as a black box: an MNLE
(a categorical head for the choice times a flow for the log reaction time) learns the
single-trial likelihood from simulations over the prior box of the DDM task, and
Pyro's NUTS samples the hierarchical posterior. The same model with the analytic
first-passage-time density (Navarro & Fuss, 2009) gives the exact reference: the two
posteriors are compared with C2ST on the group-level parameters and in a parameter
recovery table.

    python examples/ddm_hierarchical.py               # 10 to 15 minutes on 2 CPU cores
    python examples/ddm_hierarchical.py --smoke-test  # seconds, for the tests
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
from pyro import poutine  # noqa: E402
from pyro.infer import MCMC, NUTS  # noqa: E402
from pyro.infer.autoguide import init_to_value  # noqa: E402

from pyro_sbi import MNLE, SimulatorDistribution, c2st, train  # noqa: E402
from pyro_sbi.tasks import ddm  # noqa: E402
from pyro_sbi.tasks.ddm import NAMES, DriftDiffusion, prior, simulate_ddm  # noqa: E402

# Group level, on the unconstrained scale u = logit((theta - LOW) / (HIGH - LOW)).
GROUP_LOC = torch.tensor([0.0, 0.0, 0.0, -1.5])
GROUP_SCALE = torch.tensor([1.0, 1.0, 1.0, 1.0])
SPREAD_SCALE = torch.tensor([0.5, 0.3, 0.3, 0.3])
TRUE_MU = torch.tensor([0.6, -0.3, 0.2, -1.7])
TRUE_SIGMA = torch.tensor([0.4, 0.2, 0.2, 0.1])
LOW, HIGH = torch.tensor(ddm.LOW), torch.tensor(ddm.HIGH)


def constrain(u: torch.Tensor) -> torch.Tensor:
    """Unconstrained (*, 4) -> DDM parameters (v, a, w, tau) (*, 4) inside the prior box."""
    return LOW + (HIGH - LOW) * u.sigmoid()


def unconstrain(theta: torch.Tensor) -> torch.Tensor:
    """DDM parameters (*, 4) inside the box -> unconstrained (*, 4)."""
    return torch.logit((theta - LOW) / (HIGH - LOW))


def make_model(likelihood: MNLE | None, counts: torch.Tensor):
    """The hierarchical DDM; the analytic likelihood when `likelihood` is None.

    Subject `s` has `counts[s]` trials (ragged): the data are padded to
    `(max(counts), subjects, 2)` and the padding is masked out of the log-density.
    """
    subjects, trials = len(counts), int(counts.max())
    observed = torch.arange(trials)[:, None] < counts  # (trials, subjects)

    def model(x_obs=None):
        mu = pyro.sample("mu", dist.Normal(GROUP_LOC, GROUP_SCALE).to_event(1))
        sigma = pyro.sample("sigma", dist.HalfNormal(SPREAD_SCALE).to_event(1))
        with pyro.plate("subjects", subjects):
            u = pyro.sample("u", dist.Normal(mu, sigma).to_event(1))
            theta = pyro.deterministic("theta", constrain(u), event_dim=1)
            with pyro.plate("trials", trials, dim=-2), poutine.mask(mask=observed):
                if likelihood is None:
                    fn = DriftDiffusion(*theta.unbind(-1))
                else:
                    fn = SimulatorDistribution(simulate_ddm, theta, likelihood)
                return pyro.sample("x", fn, obs=x_obs)

    return model


def run_nuts(
    model, x_obs, samples: int, warmup: int, seed: int, progress: bool
) -> tuple[dict, float]:
    """NUTS from the group's prior location with a small non-decision time.

    The exact likelihood is zero wherever tau exceeds a subject's fastest reaction time,
    so chains start at tau = 0.3 s, below every subject's fastest trial.
    """
    pyro.set_rng_seed(seed)
    mu = unconstrain(torch.tensor([0.0, 1.25, 0.5, 0.3]))
    start_at = {"mu": mu, "sigma": SPREAD_SCALE / 2, "u": mu.expand(x_obs.shape[1], 4)}
    start = time.perf_counter()
    kernel = NUTS(model, init_strategy=init_to_value(values=start_at))
    mcmc = MCMC(kernel, num_samples=samples, warmup_steps=warmup, disable_progbar=not progress)
    mcmc.run(x_obs)
    draws = mcmc.get_samples()
    draws["theta"] = constrain(draws["u"])
    return draws, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny budgets, seconds")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "output")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    progress = not args.smoke_test
    if args.smoke_test:
        counts, simulations, samples, warmup = torch.tensor([20, 12]), 2000, 20, 20
        fit_options = {"max_epochs": 3}
    else:
        counts = torch.tensor([100, 60, 140, 80, 120])  # ragged: trials per subject
        simulations, samples, warmup = 100_000, 1000, 500
        fit_options = {"batch_size": 512}
    subjects, trials = len(counts), int(counts.max())

    # Data from the real simulator at known subject parameters; each subject's trials
    # beyond its count are padding (a copy of its first trial, masked in the model).
    pyro.set_rng_seed(args.seed)
    theta_true = constrain(TRUE_MU + TRUE_SIGMA * torch.randn(subjects, 4))
    x_obs = simulate_ddm(theta_true.expand(trials, subjects, 4))
    padding = torch.arange(trials)[:, None] >= counts
    x_obs = torch.where(padding[..., None], x_obs[:1].expand_as(x_obs), x_obs)
    print(f"{subjects} subjects with {counts.tolist()} trials; true parameters {NAMES}:")
    print(theta_true.numpy().round(2))

    # Learn the single-trial likelihood over the prior box of the task.
    likelihood = MNLE(discrete=[1], log_transform=True)
    surrogate = make_model(likelihood, counts)
    start = time.perf_counter()
    train(
        surrogate,
        num_simulations=simulations,
        proposal=prior(),
        seed=args.seed,
        fit_options=fit_options,
        progress=progress,
    )
    train_seconds = time.perf_counter() - start

    exact, exact_seconds = run_nuts(
        make_model(None, counts), x_obs, samples, warmup, args.seed + 1, progress
    )
    learned, learned_seconds = run_nuts(surrogate, x_obs, samples, warmup, args.seed + 1, progress)
    print(
        f"\nsimulation + training {train_seconds:.0f} s ({simulations} simulations); NUTS "
        f"{learned_seconds:.0f} s with MNLE, {exact_seconds:.0f} s with the analytic likelihood"
    )

    group = ["mu", "sigma"]
    a = torch.cat([exact[k] for k in group], -1)
    b = torch.cat([learned[k] for k in group], -1)
    score = c2st(a, b)
    print(f"C2ST of the group-level posterior (mu, sigma; 8-D), MNLE vs analytic: {score:.3f}")

    print("\nparameter recovery: posterior mean ± sd (mu, sigma: on the logit scale of the box)")
    print(f"{'':>7}  {'param':7}  {'true':>6}  {'MNLE':>13}  {'analytic':>13}")
    for s in range(subjects):
        for d, name in enumerate(NAMES):
            m, e = learned["theta"][:, s, d], exact["theta"][:, s, d]
            print(
                f"{s:7d}  {name:7}  {theta_true[s, d]:6.2f}  {m.mean():6.2f} ± {m.std():4.2f}  "
                f"{e.mean():6.2f} ± {e.std():4.2f}"
            )
    for k, truth in (("mu", TRUE_MU), ("sigma", TRUE_SIGMA)):
        for d, name in enumerate(NAMES):
            m, e = learned[k][:, d], exact[k][:, d]
            print(
                f"{k:>7}  {name:7}  {truth[d]:6.2f}  {m.mean():6.2f} ± {m.std():4.2f}  "
                f"{e.mean():6.2f} ± {e.std():4.2f}"
            )

    args.output.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 4, figsize=(12, 5))
    for row, k in enumerate(group):
        for d, ax in enumerate(axes[row]):
            ax.hist(exact[k][:, d].numpy(), bins=30, density=True, alpha=0.5, label="analytic")
            ax.hist(learned[k][:, d].numpy(), bins=30, density=True, alpha=0.5, label="MNLE")
            truth = (TRUE_MU, TRUE_SIGMA)[row][d]
            ax.axvline(float(truth), color="k", linestyle=":")
            ax.set_title(f"{k}[{NAMES[d]}]")
    axes[0, 0].legend()
    fig.suptitle(f"group-level posterior, MNLE vs analytic likelihood (C2ST {score:.2f})")
    fig.tight_layout()
    fig.savefig(args.output / "ddm_group_posterior.png", dpi=80)
    print(f"plot written to {args.output}/ddm_group_posterior.png")


if __name__ == "__main__":
    main()
