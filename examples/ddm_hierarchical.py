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

    python examples/ddm_hierarchical.py               # about 9 minutes on 2 CPU cores
    python examples/ddm_hierarchical.py --smoke-test  # seconds, for the tests
"""

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
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
from pyro.ops.stats import split_gelman_rubin  # noqa: E402

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


def starting_points(chains: int, subjects: int) -> list[dict]:
    """Spread-out starting points of NUTS chains, on each site's unconstrained scale.

    The exact likelihood is zero wherever tau exceeds a subject's fastest reaction time,
    so every chain starts at tau = 0.3 s, below every subject's fastest trial; the
    other parameters start at different places around the middle of the prior box.
    """
    points = []
    for c in range(chains):
        shift = (c / max(chains - 1, 1) - 0.5) * torch.tensor([1.0, 1.0, 1.0, 0.0])
        mu = unconstrain(torch.tensor([0.0, 1.25, 0.5, 0.3])) + shift
        sigma = SPREAD_SCALE * (0.75 - 0.5 * c / max(chains - 1, 1))
        points.append({"mu": mu, "sigma": sigma.log(), "u": mu.expand(subjects, 4)})
    return points


def run_chain(
    likelihood: MNLE | None, counts, x_obs, start: dict, seed: int, **options
) -> tuple[dict, int, float]:
    """One NUTS chain from `start` (run in a worker process).

    `options` are `num_samples`, `warmup_steps` and NUTS's `max_tree_depth`.

    Returns:
        The draws, the number of divergent transitions, and the seconds.
    """
    torch.set_num_threads(1)
    pyro.set_rng_seed(seed)
    began = time.perf_counter()
    depth = options.pop("max_tree_depth")
    kernel = NUTS(make_model(likelihood, counts), max_tree_depth=depth)
    mcmc = MCMC(kernel, initial_params=start, disable_progbar=True, **options)
    mcmc.run(x_obs)
    divergent = sum(len(d) for d in mcmc.diagnostics()["divergences"].values())
    return mcmc.get_samples(), divergent, time.perf_counter() - began


def combine(chains: list[tuple[dict, int, float]]) -> dict:
    """Pools the draws of several chains; adds theta, the group-level R-hat and totals."""
    draws = {k: torch.cat([c[0][k] for c in chains]) for k in chains[0][0]}
    draws["theta"] = constrain(draws["u"])
    group = torch.stack([torch.cat([c[0]["mu"], c[0]["sigma"]], -1) for c in chains])
    return {
        "draws": draws,
        "r_hat": float(split_gelman_rubin(group, chain_dim=0, sample_dim=1).max()),
        "divergent": sum(c[1] for c in chains),
        "seconds": sum(c[2] for c in chains),
    }


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
        fit_options, depth = {"max_epochs": 3}, 4  # an untrained surrogate: short trees
    else:
        counts = torch.tensor([100, 60, 140, 80, 120])  # ragged: trials per subject
        simulations, samples, warmup = 100_000, 400, 300  # per chain
        fit_options, depth = {"batch_size": 512}, 10
    chains = 2  # per likelihood; the four chains run in two worker processes
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

    # NUTS with both likelihoods, `chains` chains each, on two cores at once.
    print(f"NUTS: {chains} chains x ({warmup} warm-up + {samples} draws) per likelihood")
    nuts = {"num_samples": samples, "warmup_steps": warmup, "max_tree_depth": depth}
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=2) as pool:
        jobs = {
            name: [
                pool.submit(run_chain, fn, counts, x_obs, point, args.seed + c, **nuts)
                for c, point in enumerate(starting_points(chains, subjects))
            ]
            for name, fn in (("MNLE", likelihood), ("analytic", None))
        }
        runs = {}
        for name, chain in jobs.items():
            results = []
            for c, job in enumerate(chain):
                results.append(job.result())
                print(f"  {name} chain {c + 1} done in {results[-1][2]:.0f} s", flush=True)
            runs[name] = combine(results)
    nuts_seconds = time.perf_counter() - start
    learned, exact = runs["MNLE"]["draws"], runs["analytic"]["draws"]
    print(
        f"\nsimulation + training {train_seconds:.0f} s ({simulations} simulations); NUTS "
        f"{nuts_seconds:.0f} s on two cores"
    )
    for name, run in runs.items():
        print(
            f"{name:>8}: NUTS {run['seconds']:.0f} s of chain time, largest R-hat of the "
            f"group-level parameters {run['r_hat']:.3f}, {run['divergent']} divergent transitions"
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
