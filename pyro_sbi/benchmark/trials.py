r"""Benchmark of learned likelihoods under plates of many trials: accuracy and cost.

**Accuracy** (`python -m pyro_sbi.benchmark.trials --accuracy`): the C2ST between the
posterior under a learned likelihood and the posterior under the exact one, as the
number `n` of i.i.d. trials of one observation grows (`--trials`, default 1 10 100
1000) and for simulation budgets `--budgets` (default 10⁴ 10⁵). Per-trial errors of a
learned log-density add up over the trials while the posterior narrows like
:math:`1/\sqrt{n}`, so this is where a surrogate shows its bias. Tasks:

- `linear`: a 3-D linear Gaussian with a non-identity map, :math:`\theta \sim
  \mathcal{N}(0, I)`, :math:`x \mid \theta \sim \mathcal{N}(A\theta, 0.5^2 I)`, whose
  posterior is Gaussian in closed form; `NLE()` and `NRE()`;
- `ddm`: the drift-diffusion task (:mod:`pyro_sbi.tasks.ddm`), the exact posterior
  drawn by the same sampler on the Navarro–Fuss density; `MNLE(discrete=[1])` and
  `NRE()`.

With `--compare sbi`, sbi's NLE (linear) or MNLE (ddm) with its defaults is trained on
the same simulations and sampled by its own default MCMC given the same trials. With
`--rounds 1 2 4`, each estimator is also trained in sequential rounds
(:func:`~pyro_sbi.train` with `rounds=`), once per number of trials, given those
trials: the same budget, spent where the posterior is.

Every estimator is built and trained with the library's defaults (`Estimator().fit`),
and every posterior is drawn by :class:`~pyro_sbi.SliceMCMC` with its defaults, the
exact and the learned one alike, so a difference is the surrogate's.

**Cost** (`python -m pyro_sbi.benchmark.trials`, `--quick` for a short run). For a
hierarchical drift-diffusion model (group means and spreads, subjects' parameters,
i.i.d. trials per subject; the shape of `examples/ddm_hierarchical.py`) at subjects ×
trials 5 × 100, 20 × 200 and 50 × 400, it times one NUTS potential plus its gradient,
in this process and on one torch thread, the three below called in turn (so that a
change of the machine's load reaches them alike), for

- `MNLE(discrete=[1])` (with `--log-transform`, `MNLE(discrete=[1], log_transform=True)`)
  with each subject's parameters shared by its trials (a stride-0 view: what Pyro's
  plates give), so whatever depends on the parameters alone runs once per subject;
- the same MNLE with the parameters copied to every trial (the cost without that);
- the exact first-passage-time density (`pyro_sbi.tasks.ddm.DriftDiffusion`).

`--transforms` and `--bins` set the MNLE's flow (zuko's `NSF` options).

The cost does not depend on how well the MNLE is trained, so it is trained briefly.
Ratios to the exact density's time in the same run are what to compare across
machines.

**End to end** (`python -m pyro_sbi.benchmark.trials --end-to-end 5 200`): the
hierarchical DDM of HSSM's benchmark setting — every one of the four parameters
hierarchical, non-centred (Pyro's `LocScaleReparam`), subjects × trials given — with
data simulated at known group parameters. `MNLE(discrete=[1])` is trained with
:func:`~pyro_sbi.train` on `--simulations` draws of the task's prior box (default 10⁵),
then NUTS runs `--chains` chains of `--warmup` + `--samples` iterations (default
2 × (500 + 500), HSSM's figure) with the learned and with the exact density, the
chains two at a time on two processes. It reports per likelihood the seconds, the
smallest effective sample size of the group parameters and its rate per second of
chain time, the divergent transitions and the largest R-hat, and the C2ST of the
learned group-level posterior (means and spreads, 8-D) against the exact one.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import types
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide import init_to_value
from pyro.infer.mcmc.util import initialize_model
from pyro.infer.reparam import LocScaleReparam
from pyro.ops.stats import effective_sample_size, split_gelman_rubin

from pyro_sbi import MNLE, NLE, NRE, SimulatorDistribution, SliceMCMC, c2st, train
from pyro_sbi.benchmark.threads import median_seconds_in_turn
from pyro_sbi.tasks import ddm

SHAPES = ((5, 100), (20, 200), (50, 400))
LOW, HIGH = torch.tensor(ddm.LOW), torch.tensor(ddm.HIGH)


def hierarchical(likelihood: MNLE | None, subjects: int, trials: int, *, copy: bool = False):
    """A hierarchical DDM; the exact density when `likelihood` is None.

    `copy=True` hands the simulator site each subject's parameters copied to every
    trial instead of the broadcast view.
    """

    def model(x=None):
        mu = pyro.sample("mu", dist.Normal(torch.tensor([0.0, 0.0, 0.0, -1.5]), 1.0).to_event(1))
        sigma = pyro.sample("sigma", dist.HalfNormal(0.3 * torch.ones(4)).to_event(1))
        with pyro.plate("subjects", subjects):
            u = pyro.sample("u", dist.Normal(mu, sigma).to_event(1))
            theta = LOW + (HIGH - LOW) * u.sigmoid()
            with pyro.plate("trials", trials, dim=-2):
                if likelihood is None:
                    fn = ddm.DriftDiffusion(*theta.unbind(-1))
                else:
                    if copy:
                        theta = theta.expand(trials, subjects, 4).contiguous()
                    fn = SimulatorDistribution(ddm.simulate_ddm, theta, likelihood)
                return pyro.sample("x", fn, obs=x)

    return model


# the end-to-end run: group parameters of the simulated data, on the logit scale of the box
GROUP_MEAN = torch.tensor([0.6, -0.3, 0.2, -1.7])
GROUP_SPREAD = torch.tensor([0.4, 0.2, 0.2, 0.1])


def non_centred(model):
    """`model` with the subjects' `u` drawn as `mu + sigma * u_decentered` (non-centred)."""
    return poutine.reparam(model, config={"u": LocScaleReparam(centered=0.0)})


def _chain(
    likelihood, subjects, trials, x, seed, warmup, samples, depth
) -> tuple[dict, int, float]:
    """One non-centred NUTS chain (in a worker process): draws, divergences, seconds."""
    torch.set_num_threads(1)
    pyro.set_rng_seed(seed)
    # every subject starts at tau = 0.3 s, below its fastest trial (the exact density is
    # zero wherever tau exceeds a reaction time), the rest in the middle of the box
    middle = torch.logit((torch.tensor([0.0, 1.25, 0.5, 0.3]) - LOW) / (HIGH - LOW))
    # `u` too: the initial values are read at the site before its reparameterisation
    start = {"mu": middle, "sigma": 0.1 * torch.ones(4), "u": middle.expand(subjects, 4),
             "u_decentered": torch.zeros(subjects, 4)}  # fmt: skip
    model = non_centred(hierarchical(likelihood, subjects, trials))
    kernel = NUTS(model, init_strategy=init_to_value(values=start), max_tree_depth=depth)
    mcmc = MCMC(kernel, num_samples=samples, warmup_steps=warmup, disable_progbar=True)
    began = time.perf_counter()
    mcmc.run(x)
    divergent = sum(len(d) for d in mcmc.diagnostics()["divergences"].values())
    return mcmc.get_samples(), divergent, time.perf_counter() - began


def end_to_end(
    subjects=5, trials=200, num_simulations=100_000, chains=2, warmup=500, samples=500,
    max_tree_depth=10, seed=0, log=print,
) -> list[dict]:  # fmt: skip
    """NUTS on a non-centred hierarchical DDM, with `MNLE(discrete=[1])` and exactly.

    Arguments:
        subjects: number of subjects.
        trials: i.i.d. trials per subject.
        num_simulations: training simulations for the MNLE, from the prior box.
        chains: NUTS chains per likelihood.
        warmup: warm-up iterations per chain.
        samples: draws per chain.
        max_tree_depth: NUTS's (Pyro's default 10).
        seed: roots the data, training and chain seeds.
        log: prints progress and each row.

    Returns:
        One row per likelihood (`"MNLE"`, `"exact"`): `seconds` (chains' time summed),
        `wall` (seconds of the two-process run, shared), `min_ess` and `ess_per_s`
        over the 8 group parameters, `divergent`, `r_hat` (largest) and, on the MNLE's
        row, `c2st` of its group-level draws against the exact ones; the first row also
        has `train_s`, the seconds of simulation and training.
    """
    pyro.set_rng_seed(seed)
    u = GROUP_MEAN + GROUP_SPREAD * torch.randn(subjects, 4)
    truth = LOW + (HIGH - LOW) * u.sigmoid()
    x = ddm.simulate_ddm(truth.expand(trials, subjects, 4).reshape(-1, 4))
    x = x.reshape(trials, subjects, 2)

    likelihood = MNLE(discrete=[1])
    began = time.perf_counter()
    train(hierarchical(likelihood, subjects, trials), num_simulations=num_simulations,
          proposal=ddm.prior(), seed=seed, progress=False)  # fmt: skip
    train_s = time.perf_counter() - began
    log(f"trained MNLE(discrete=[1]) on {num_simulations} simulations in {train_s:.0f} s",
        flush=True)  # fmt: skip

    began = time.perf_counter()
    with ProcessPoolExecutor(max_workers=2) as pool:
        jobs = {
            name: [pool.submit(_chain, fn, subjects, trials, x, seed + 1 + c, warmup, samples,
                               max_tree_depth)
                   for c in range(chains)]
            for name, fn in (("MNLE", likelihood), ("exact", None))
        }  # fmt: skip
        runs = {name: [job.result() for job in chain] for name, chain in jobs.items()}
    wall = time.perf_counter() - began
    rows, group = [], {}
    for name, chain_runs in runs.items():
        draws = torch.stack([torch.cat([r[0]["mu"], r[0]["sigma"]], -1) for r in chain_runs])
        group[name] = draws.reshape(-1, 8)
        seconds = sum(r[2] for r in chain_runs)
        ess = float(effective_sample_size(draws, chain_dim=0, sample_dim=1).min())
        r_hat = float(split_gelman_rubin(draws, chain_dim=0, sample_dim=1).max())
        rows.append({"likelihood": name, "seconds": seconds, "wall": wall, "min_ess": ess,
                     "ess_per_s": ess / seconds, "divergent": sum(r[1] for r in chain_runs),
                     "r_hat": r_hat})  # fmt: skip
    rows[0]["c2st"] = float(c2st(group["exact"], group["MNLE"], seed=seed))
    rows[0]["train_s"] = train_s
    for row in rows:
        score = f"{row['c2st']:.3f}" if "c2st" in row else "—"
        log(f"| {subjects} × {trials} | {row['likelihood']} | {row['seconds']:.0f} | "
            f"{row['min_ess']:.0f} | {row['ess_per_s']:.2f} | {row['divergent']} | "
            f"{row['r_hat']:.3f} | {score} |", flush=True)  # fmt: skip
    return rows


def gradient_step(model, x: torch.Tensor, truth: torch.Tensor) -> Callable[[], object]:
    """One potential and its gradient, at the subjects' true parameters, as a call."""
    u = torch.logit((truth - LOW) / (HIGH - LOW))
    start = init_to_value(values={"u": u, "mu": u.mean(0), "sigma": 0.3 * torch.ones(4)})
    params, potential, _, _ = initialize_model(model, (x,), init_strategy=start)
    point = {name: value.detach().clone().requires_grad_() for name, value in params.items()}

    def once():
        value = potential(point)
        return torch.autograd.grad(value, list(point.values()))

    return once


# the linear-Gaussian task of the accuracy table
LINEAR_MAP = torch.tensor([[1.0, 0.5, 0.0], [-0.3, 0.8, 0.4], [0.2, -0.4, 1.0]])
LINEAR_NOISE = 0.5
LINEAR_TRUTH = torch.tensor([0.6, -0.9, 0.3])
NUM_POSTERIOR = 10_000


def linear_simulator(theta: torch.Tensor) -> torch.Tensor:
    r"""`theta (n, 3) -> x (n, 3)`: :math:`A \theta + 0.5\,\varepsilon`."""
    return theta @ LINEAR_MAP.T + LINEAR_NOISE * torch.randn_like(theta)


def linear_posterior(x: torch.Tensor) -> dist.MultivariateNormal:
    """The closed-form posterior of the linear task given trials `x (n, 3)`."""
    precision = torch.eye(3) + len(x) * LINEAR_MAP.T @ LINEAR_MAP / LINEAR_NOISE**2
    covariance = torch.linalg.inv(precision)
    mean = covariance @ (LINEAR_MAP.T @ x.sum(0)) / LINEAR_NOISE**2
    return dist.MultivariateNormal(mean, covariance)


def _trials_model(prior, simulator, likelihood):
    """`theta` from `prior`, then `x (n, L)` i.i.d. trials from the simulator site."""

    def model(x):
        theta = pyro.sample("theta", prior)
        with pyro.plate("trials", len(x)):
            pyro.sample("x", SimulatorDistribution(simulator, theta, likelihood), obs=x)

    return model


def _exact_ddm_model(prior):
    """The drift-diffusion trials model on the exact first-passage-time density."""

    def model(x):
        theta = pyro.sample("theta", prior)
        with pyro.plate("trials", len(x)):
            pyro.sample("x", ddm.DriftDiffusion(*theta.unbind(-1)), obs=x)

    return model


def _sample(model, x: torch.Tensor, seed: int) -> torch.Tensor:
    mcmc = SliceMCMC(model, num_samples=NUM_POSTERIOR // 250, num_chains=250, seed=seed,
                     progress=False)  # fmt: skip
    return mcmc.run(x).get_samples()["theta"]


def _learned_posteriors(method, rounds, prior, simulator, theta, data, observed, trials,
                        budget, seed):  # fmt: skip
    """Yields `(n, posterior draws, training seconds)` for each number of trials `n`.

    One round: one estimator fitted on the prior simulations `theta, data` serves every
    `n`. More: a fresh estimator per `n`, trained by `train` in `rounds` rounds given
    the first `n` trials of `observed` (its seconds include the simulations and the
    sampling between rounds).
    """
    make = {"nle": NLE, "nre": NRE}.get(method, lambda: MNLE(discrete=[1]))
    if rounds == 1:
        estimator = make()
        start = time.perf_counter()
        estimator.fit(theta, data, seed=seed, progress=False)
        train_s = time.perf_counter() - start
    for n in trials:
        x = observed[:n]
        if rounds > 1:
            estimator = make()
            start = time.perf_counter()
            train(_trials_model(prior, simulator, estimator), x, num_simulations=budget,
                  rounds=rounds, seed=seed + budget, progress=False)  # fmt: skip
            train_s = time.perf_counter() - start
        yield n, _sample(_trials_model(prior, simulator, estimator), x, seed + n), train_s


def accuracy(
    tasks=("linear", "ddm"), trials=(1, 10, 100, 1000), budgets=(10_000, 100_000), seed=0,
    log=print, compare: str | None = None, rounds=(1,),
) -> list[dict]:  # fmt: skip
    """The accuracy table: one row per task, estimator, budget and number of trials.

    Arguments:
        tasks: `"linear"` and/or `"ddm"`.
        trials: numbers of i.i.d. trials of the observation.
        budgets: numbers of training simulations.
        seed: roots the simulation, training and sampling seeds.
        log: prints each row as it comes.
        compare: `"sbi"` adds rows for sbi's NLE (linear) or MNLE (ddm) with its
            defaults, trained on the same simulations and sampled by its own default
            MCMC given all `n` trials (methods `"sbi-nle"`, `"sbi-mnle"`).
        rounds: numbers of training rounds. 1: one estimator per method and budget,
            trained on the budget's prior simulations and used for every `n`. `R > 1`:
            for each `n` a fresh estimator trained by
            :func:`~pyro_sbi.train` in `R` sequential rounds given those `n` trials
            (the budget in all; methods `"mnle, R rounds"`, ...).

    Returns:
        Rows with the C2ST of the learned posterior against the exact one and the seconds
        of training.
    """
    if any(count < 1 for count in rounds):
        raise ValueError(f"accuracy: rounds must be at least 1; got {tuple(rounds)}")
    rows = []
    for task in tasks:
        if task == "linear":
            prior = dist.Normal(torch.zeros(3), 1.0).to_event(1)
            simulator, truth, methods = linear_simulator, LINEAR_TRUTH, ("nle", "nre")
        else:
            prior, simulator, methods = ddm.prior(), ddm.simulate_ddm, ("mnle", "nre")
            truth = ddm.true_parameters(1)
        torch.manual_seed(seed + 1)
        observed = simulator(truth.expand(max(trials), len(truth)))
        exact = {}
        for n in trials:
            x = observed[:n]
            if task == "linear":
                torch.manual_seed(seed + n)
                exact[n] = linear_posterior(x).sample((NUM_POSTERIOR,))
            else:
                exact[n] = _sample(_exact_ddm_model(prior), x, seed + n)
        for budget in budgets:
            torch.manual_seed(seed + budget)
            theta = prior.sample((budget,))
            data = simulator(theta)
            for method in methods:
                for count in rounds:
                    for n, learned, train_s in _learned_posteriors(
                        method, count, prior, simulator, theta, data, observed, trials, budget,
                        seed,
                    ):  # fmt: skip
                        name = method if count == 1 else f"{method}, {count} rounds"
                        row = {"task": task, "method": name, "budget": budget, "trials": n,
                               "c2st": float(c2st(exact[n], learned, seed=n)),
                               "train_s": train_s}  # fmt: skip
                        rows.append(row)
                        log(f"| {task} | {name} | {budget} | {n} | {row['c2st']:.3f} | "
                            f"{train_s:.0f} |", flush=True)  # fmt: skip
            if compare == "sbi":
                from pyro_sbi.benchmark.compare import SbiPeer

                method = "nle" if task == "linear" else "mnle"
                baseline = SbiPeer(types.SimpleNamespace(prior=lambda p=prior: p), method, seed)
                start = time.perf_counter()
                baseline.train(theta, data)
                train_s = time.perf_counter() - start
                for n in trials:
                    learned = baseline.sample(observed[:n], seed + n, NUM_POSTERIOR)
                    row = {"task": task, "method": f"sbi-{method}", "budget": budget,
                           "trials": n, "c2st": float(c2st(exact[n], learned, seed=n)),
                           "train_s": train_s}  # fmt: skip
                    rows.append(row)
                    log(f"| {task} | sbi-{method} | {budget} | {n} | {row['c2st']:.3f} | "
                        f"{train_s:.0f} |", flush=True)  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    """Runs the benchmark and prints a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--accuracy", action="store_true", help="the accuracy table")
    parser.add_argument("--tasks", nargs="+", choices=("linear", "ddm"), default=["linear", "ddm"])
    parser.add_argument("--trials", nargs="+", type=int, default=[1, 10, 100, 1000])
    parser.add_argument("--budgets", nargs="+", type=int, default=[10_000, 100_000])
    parser.add_argument("--rounds", nargs="+", type=int, default=[1],
                        help="training rounds of the accuracy table (more than 1: "
                        "sequential, per number of trials)")  # fmt: skip
    parser.add_argument("--end-to-end", nargs=2, type=int, metavar=("SUBJECTS", "TRIALS"),
                        help="NUTS on a hierarchical DDM, learned and exact")  # fmt: skip
    parser.add_argument("--simulations", type=int, default=100_000)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--compare", choices=("sbi",), help="add sbi's NLE / MNLE rows")
    parser.add_argument("--log-transform", action="store_true",
                        help="cost of MNLE(discrete=[1], log_transform=True)")  # fmt: skip
    parser.add_argument("--transforms", type=int, help="the cost MNLE's flow transforms")
    parser.add_argument("--bins", type=int, help="the cost MNLE's spline bins")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    repeats = 5 if args.quick else 20
    torch.set_num_threads(1)
    if args.end_to_end:
        print(f"\ntorch {torch.__version__}, {os.cpu_count()} cores, chains on 2 processes "
              f"of 1 torch thread, Python {platform.python_version()}; NUTS {args.chains} × "
              f"({args.warmup} + {args.samples})\n")  # fmt: skip
        print("| subjects × trials | likelihood | chain s | min ESS (group) | ESS/s "
              "| divergent | max R-hat | C2ST (group) |")  # fmt: skip
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        end_to_end(*args.end_to_end, num_simulations=args.simulations, chains=args.chains,
                   warmup=args.warmup, samples=args.samples, seed=args.seed)  # fmt: skip
        return
    if args.accuracy:
        print(f"\ntorch {torch.__version__}, {os.cpu_count()} cores, 1 torch thread, "
              f"Python {platform.python_version()}\n")  # fmt: skip
        print("| task | estimator | simulations | trials | C2ST vs exact | train s |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        accuracy(args.tasks, args.trials, args.budgets, args.seed, compare=args.compare,
                 rounds=args.rounds)  # fmt: skip
        return
    pyro.set_rng_seed(0)
    theta = ddm.prior().sample((10_000,))
    flow_options = {key: getattr(args, key) for key in ("transforms", "bins")
                    if getattr(args, key) is not None}  # fmt: skip
    likelihood = MNLE(discrete=[1], log_transform=args.log_transform, **flow_options)
    likelihood.fit(theta, ddm.simulate_ddm(theta), max_epochs=3, progress=False, seed=0)

    print(f"\ntorch {torch.__version__}, {os.cpu_count()} cores, 1 torch thread, "
          f"Python {platform.python_version()}; MNLE({likelihood.extra_repr()}"
          f"{''.join(f', {k}={v}' for k, v in flow_options.items())})\n")  # fmt: skip
    print("| subjects × trials | MNLE, shared (ms) | MNLE, copied (ms) | exact (ms) "
          "| shared / exact | copied / exact |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for subjects, trials in SHAPES:
        truth = ddm.prior().sample((subjects,))
        x = ddm.simulate_ddm(truth.expand(trials, subjects, 4).reshape(-1, 4))
        x = x.reshape(trials, subjects, 2)
        steps = {
            "shared": gradient_step(hierarchical(likelihood, subjects, trials), x, truth),
            "copied": gradient_step(
                hierarchical(likelihood, subjects, trials, copy=True), x, truth
            ),
            "exact": gradient_step(hierarchical(None, subjects, trials), x, truth),
        }
        seconds = median_seconds_in_turn(steps, repeats)
        ms = {key: 1e3 * value for key, value in seconds.items()}
        print(f"| {subjects} × {trials} | {ms['shared']:.1f} | {ms['copied']:.1f} | "
              f"{ms['exact']:.1f} | {seconds['shared'] / seconds['exact']:.1f} | "
              f"{seconds['copied'] / seconds['exact']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
