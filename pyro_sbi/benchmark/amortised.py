r"""Benchmark of amortised posteriors: many observations at once, and importance correction.

**Many observations** (`python -m pyro_sbi.benchmark.amortised --many 1000`): for each
task, budget and method (`npe`, `fmpe`), the guide of the main benchmark
(:mod:`pyro_sbi.benchmark.compare`: an :class:`~pyro_sbi.AmortizedGuide` of the
task's model, fitted to the same simulations with the same seed) is trained once; then
`--many` parameters are drawn from the prior, their data simulated, and `--draws`
posterior draws given each data set are taken one call of
:meth:`~pyro_sbi.AmortizedGuide.sample_posterior` per data set, as a user writes it.
The row gives the seconds of all those calls, and, since the truths come from the
prior, the calibration of the draws by :func:`~pyro_sbi.diagnostics.tarp` (the largest
gap between expected coverage and credibility level, and its Kolmogorov–Smirnov
p-value), which costs nothing more.

**Importance correction** (`python -m pyro_sbi.benchmark.amortised --importance`): for
each task, budget and observation, `NPE()` (as a guide) and `NLE()` are trained on the
same simulations; the rows give the C2ST to the reference posterior of

- `npe`: 10,000 draws of the guide;
- `nle`: 10,000 draws of :class:`~pyro_sbi.SliceMCMC` on the learned likelihood, as
  the main benchmark draws them;
- `npe+is`: `--candidates` draws of the guide weighted by :math:`p(\theta)\, q_{NLE}(x
  \mid \theta) / q_{NPE}(\theta \mid x)` (:meth:`~pyro_sbi.AmortizedGuide.importance`)
  and 10,000 resampled by weight, with the effective sample size of the weights.

Seconds are wall time in this process, on `--threads` torch threads (1 by default).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch

from pyro_sbi.benchmark.compare import (
    ALL_TASKS,
    NUM_POSTERIOR,
    POSTERIORS,
    _estimator,
    _Guide,
    _posterior_samples,
    _task,
    versions,
)


@dataclass
class ManyRow:
    """Posterior draws for many observations with one trained guide."""

    task: str
    method: str
    budget: int
    observations: int
    draws: int
    train_s: float
    sample_s: float
    tarp_max_deviation: float
    tarp_p_value: float


@dataclass
class ImportanceRow:
    """C2ST of one posterior (`npe`, `nle` or `npe+is`) for one observation."""

    task: str
    method: str
    budget: int
    observation: int
    c2st: float
    train_s: float
    sample_s: float
    ess: float | None = None


def _simulations(task_name: str, budget: int, seed: int):
    """`theta (budget, D)`, `x (budget, *X)`: the main benchmark's simulations and seed."""
    from pyro_sbi import simulate

    task = _task(task_name)
    run_seed = seed + 1000 * budget + ALL_TASKS.index(task_name)
    torch.manual_seed(run_seed)
    theta = task.prior().sample((budget,))
    sims = simulate(task.simulator, theta, seed=run_seed, batch_size=budget, progress=False)
    return (*sims.valid(), run_seed)


def many_observations(
    tasks, methods=POSTERIORS, budgets=(1000,), *, num_observations: int = 1000,
    num_draws: int = 1000, seed: int = 0, log=print, fit_options: dict | None = None,
) -> list[ManyRow]:  # fmt: skip
    """Times posterior draws for `num_observations` data sets with one trained guide.

    Arguments:
        tasks: task names (modules of :mod:`pyro_sbi.tasks`).
        methods: `"npe"` and / or `"fmpe"`.
        budgets: numbers of training simulations.
        num_observations: data sets, their parameters drawn from the prior.
        num_draws: posterior draws per data set.
        seed: roots the seeds (the training as in the main benchmark).
        log: prints each row as it comes.
        fit_options: options of the guide's `fit` (defaults otherwise).

    Returns:
        One :class:`ManyRow` per task, method and budget.
    """
    from pyro_sbi.diagnostics import tarp

    rows = []
    for task_name, budget, method in (
        (t, b, m) for t in tasks for b in budgets for m in methods
    ):  # fmt: skip
        task = _task(task_name)
        theta, x, run_seed = _simulations(task_name, budget, seed)
        guide = _Guide(task, method)
        start = time.perf_counter()
        guide.fit(theta, x, seed=run_seed, **(fit_options or {}))
        train_s = time.perf_counter() - start
        torch.manual_seed(run_seed + 1)
        truths = task.prior().sample((num_observations,))
        data = task.simulator(truths)
        start = time.perf_counter()
        draws = torch.stack([guide.sample(x_i, num_draws) for x_i in data], 1)  # (L, n, D)
        sample_s = time.perf_counter() - start
        coverage = tarp(draws.transpose(0, 1), truths, seed=run_seed)
        row = ManyRow(task_name, method, budget, num_observations, num_draws, train_s,
                      sample_s, coverage.max_deviation, coverage.p_value)  # fmt: skip
        rows.append(row)
        log(_format_many(row), flush=True)
    return rows


def importance(
    tasks, budgets=(1000,), observations=(1,), *, num_candidates: int = 100_000,
    num_posterior: int = NUM_POSTERIOR, seed: int = 0, log=print,
    fit_options: dict | None = None,
) -> list[ImportanceRow]:  # fmt: skip
    """C2ST of NPE alone, NLE alone and NPE corrected by importance weights from the NLE.

    Arguments:
        tasks: task names (modules of :mod:`pyro_sbi.tasks`).
        budgets: numbers of training simulations (the same for both estimators).
        observations: sbibm observation numbers (1 to 10).
        num_candidates: guide draws weighted for `npe+is`.
        num_posterior: posterior draws scored per observation.
        seed: roots the seeds (as in the main benchmark).
        log: prints each row as it comes.
        fit_options: options of both estimators' `fit` (defaults otherwise).

    Returns:
        Three :class:`ImportanceRow` per task, budget and observation.
    """
    from pyro_sbi import c2st

    rows = []

    def emit(row: ImportanceRow) -> None:
        rows.append(row)
        log(_format_importance(row), flush=True)

    for task_name, budget in ((t, b) for t in tasks for b in budgets):
        task = _task(task_name)
        theta, x, run_seed = _simulations(task_name, budget, seed)
        npe, nle = _Guide(task, "npe"), _estimator("nle")
        start = time.perf_counter()
        npe.fit(theta, x, seed=run_seed, **(fit_options or {}))
        npe_s = time.perf_counter() - start
        start = time.perf_counter()
        nle.fit(theta, x, seed=run_seed, progress=False, **(fit_options or {}))
        nle_s = time.perf_counter() - start
        for i in observations:
            x_o, reference = task.observation(i), task.reference_posterior(i, num_posterior)
            for method, estimator, train_s in (("npe", npe, npe_s), ("nle", nle, nle_s)):
                start = time.perf_counter()
                samples = _posterior_samples(task, estimator, x_o, run_seed + i, False,
                                             num_posterior)  # fmt: skip
                sample_s = time.perf_counter() - start
                emit(
                    ImportanceRow(
                        task_name,
                        method,
                        budget,
                        i,
                        float(c2st(samples, reference, seed=i)),
                        train_s,
                        sample_s,
                    )
                )
            torch.manual_seed(run_seed + i)
            start = time.perf_counter()
            weighted = npe.guide.importance(num_candidates, nle, x_o)
            samples = weighted.resample(num_posterior, seed=run_seed + i)["theta"]
            sample_s = time.perf_counter() - start
            emit(ImportanceRow(task_name, "npe+is", budget, i,
                               float(c2st(samples, reference, seed=i)), npe_s + nle_s,
                               sample_s, weighted.ess))  # fmt: skip
    return rows


def _format_many(row: ManyRow) -> str:
    return (
        f"| {row.task} | {row.method} | {row.budget} | {row.observations} | {row.draws} | "
        f"{row.train_s:.1f} | {row.sample_s:.2f} | {row.tarp_max_deviation:.3f} | "
        f"{row.tarp_p_value:.2f} |"
    )


def _format_importance(row: ImportanceRow) -> str:
    ess = "–" if row.ess is None else f"{row.ess:.0f}"
    return (
        f"| {row.task} | {row.method} | {row.budget} | {row.observation} | {row.c2st:.3f} | "
        f"{row.train_s:.1f} | {row.sample_s:.1f} | {ess} |"
    )


MANY_HEADER = (
    "| task | method | simulations | observations | draws each | train s | sample s "
    "| TARP max gap | TARP p |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)
IMPORTANCE_HEADER = (
    "| task | method | simulations | obs | C2ST | train s | sample s | ESS |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- |"
)


def importance_summary(rows: list[ImportanceRow]) -> str:
    """Mean C2ST over observations per task, budget and method, as a markdown table."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r.task, r.budget, r.method), []).append(r.c2st)
    lines = ["| task | simulations | method | mean C2ST |", "| --- | --- | --- | --- |"]
    lines += [
        f"| {task} | {budget} | {method} | {statistics.fmean(values):.3f} |"
        for (task, budget, method), values in groups.items()
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list:
    """The command line: `--many N` and / or `--importance`; returns the rows."""
    parser = argparse.ArgumentParser(
        prog="python -m pyro_sbi.benchmark.amortised",
        description="Amortised posteriors: many observations, and NPE corrected by an NLE.",
    )
    parser.add_argument("--tasks", nargs="+", choices=ALL_TASKS, default=["two_moons"])
    parser.add_argument("--methods", nargs="+", choices=POSTERIORS, default=list(POSTERIORS))
    parser.add_argument("--num-simulations", nargs="+", type=int, default=[1000])
    parser.add_argument(
        "--many",
        type=int,
        default=None,
        metavar="N",
        help="time posterior draws for N observations drawn from the prior",
    )
    parser.add_argument("--draws", type=int, default=1000, help="draws per observation (--many)")
    parser.add_argument(
        "--importance",
        action="store_true",
        help="C2ST of NPE, NLE and NPE corrected by the NLE's weights",
    )
    parser.add_argument("--observations", nargs="+", type=int, default=[1])
    parser.add_argument(
        "--candidates",
        type=int,
        default=100_000,
        help="guide draws weighted per observation (--importance)",
    )
    parser.add_argument("--json", default=None, help="write the rows to this file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)  # fmt: skip
    if args.many is None and not args.importance:
        parser.error("give --many N, --importance, or both")
    torch.set_num_threads(args.threads)
    about = versions(None)
    command = " ".join(["python -m pyro_sbi.benchmark.amortised", *(argv or sys.argv[1:])])
    print(f"# Benchmark: {command}\n\n{about}\n")
    rows: list = []
    if args.many is not None:
        print(MANY_HEADER)
        rows += many_observations(
            args.tasks, args.methods, args.num_simulations, num_observations=args.many,
            num_draws=args.draws, seed=args.seed,
        )  # fmt: skip
        print()
    if args.importance:
        print(IMPORTANCE_HEADER)
        found = importance(
            args.tasks, args.num_simulations, args.observations,
            num_candidates=args.candidates, seed=args.seed,
        )  # fmt: skip
        rows += found
        print(f"\nMean over observations:\n\n{importance_summary(found)}")
    if args.json:
        import json

        with open(args.json, "w") as file:
            json.dump({"versions": about, "rows": [asdict(r) for r in rows]}, file, indent=1)
    return rows


if __name__ == "__main__":
    main()
