r"""Accuracy and time on the standard tasks, optionally side by side with `sbi`.

``python -m pyro_sbi.benchmark --tasks two_moons slcp --methods nle nre
--num-simulations 1000 10000 --observations 1 2 3 [--compare sbi] [--json out.json]``

``--suite broad`` runs every task of the broad suite (``pyro_sbi.tasks.BROAD``:
counts, binary data, an ODE, heavy tails, bounded and skewed data, 25-D data, narrow,
multimodal and correlated posteriors), ``--suite sbibm`` the standard tasks; ``--tasks``
adds single tasks to a suite or, alone, picks them.

For each task and budget it simulates once from the prior (a fixed seed per task and
budget). For each method it trains the estimator once on those simulations (NLE and
NRE are amortised: one training serves every observation), then for each observation
draws 10,000 posterior samples of the task's Pyro model with :class:`~pyro_sbi.infer.
SliceMCMC` (250 chains × 40 draws after 40 warm-up sweeps, SIR initialisation) and
scores them by C2ST against the task's reference posterior (0.5 is perfect). The
drift-diffusion task (``ddm``, 100 i.i.d. trials per observation of a reaction time and
a choice) takes ``mnle`` (and ``nre``) in place of ``nle``.

Our estimators are the library's defaults, ``NLE()`` (a masked autoregressive flow, the
flow of sbi's NLE) and ``NRE()``, and ``MNLE(discrete=[1])`` for the drift-diffusion
task, all with
:func:`~pyro_sbi.fitting.fit`'s default settings. ``npe`` is ``NPE()`` as a user gets it
through an :class:`~pyro_sbi.AmortizedGuide` of the task's model (the parameters on
their unconstrained space, so a box prior leaks no mass), fitted to the same
simulations and sampled directly, without MCMC; sbi's ``NPE`` (a MAF, rejection of
draws outside the prior's support) is its peer. ``fmpe`` is the same with ``FMPE()``
(flow matching, sampled by an ODE solve), beside sbi's ``FMPE`` (its default MLP vector
field, ODE sampling, rejection outside the prior's support); ``--flow nsf`` swaps in a
spline flow for NLE (the two flows compared: benchmarks page, "Flow families").

``nle-score`` and ``nre-score`` are ``NLE()`` and ``NRE()`` trained on the same
simulations and, besides, on the joint score of each simulation
(``fit(..., score=)``, :mod:`pyro_sbi.augment`), on the tasks whose simulator is a
:class:`~pyro_sbi.PyroSimulator` (``state_space``); their ``simulate s`` includes the
scores, their rows have no sbi peer.

``exact`` trains nothing: it runs the same :class:`~pyro_sbi.infer.SliceMCMC` on the
task's model with its exact likelihood (``task.model(None, x)``, on every task that has
one), so its C2ST is the sampler's own error, to read beside a learned estimator's
(a learned row no better than the exact one is limited by the sampler, not by the
estimator). Its rows have ``simulate s`` and ``train s`` 0 and no sbi peer; the budget
only labels them.

With ``--rounds 1 2`` (or more) it also runs sequential rounds (SNLE / SNRE, see
:func:`~pyro_sbi.train`): for each observation a fresh estimator is trained on the same
total budget split over the rounds, later rounds drawing from the current posterior.
Sequential estimators are not amortised, so their ``train s`` is per observation and
includes the simulations. Rows of several rounds are scored the same way; `sbi` is
compared on one round only.

With ``--compare sbi`` it runs `sbi`'s ``NLE`` / ``NRE`` (NRE-B, as ours) with their
default settings on the **same** simulations, in the same process, and samples with
sbi's default MCMC (vectorised slice sampling, 20 chains, SIR initialisation, 200
warm-up steps); the same C2ST scores both. The table adds sbi's C2ST and seconds and
the ratio of our training + sampling time to sbi's.

Both libraries run with the same number of torch threads (``--threads``, 1 by
default; with more, set ``OMP_WAIT_POLICY=PASSIVE`` before starting Python, or
OpenMP spin-waiting on a busy machine distorts every figure).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from pyro_sbi.tasks import BROAD

TASKS = ("gaussian_linear", "two_moons", "slcp", "gaussian_mixture", "ddm")
SUITES = {"sbibm": TASKS, "broad": BROAD}
PROGRAMS = ("state_space",)  # tasks whose simulator is a Pyro program (joint scores)
ALL_TASKS = TASKS + BROAD + PROGRAMS  # a task's index roots its simulation seed
METHODS = ("nle", "nre", "mnle", "npe", "fmpe", "nle-score", "nre-score", "exact")
POSTERIORS = ("npe", "fmpe")  # amortised posteriors: sampled directly, one round only
SCORED = ("nle-score", "nre-score")  # trained on the joint score too
EXACT = "exact"  # the task's exact likelihood: no simulations, no training
NUM_POSTERIOR = 10_000


@dataclass
class Row:
    """One task, method, budget and observation: C2ST and seconds, ours and sbi's."""

    task: str
    method: str
    budget: int
    observation: int
    c2st: float
    simulate_s: float
    train_s: float
    sample_s: float
    sbi_c2st: float | None = None
    sbi_train_s: float | None = None
    sbi_sample_s: float | None = None
    rounds: int = 1

    @property
    def time_ratio(self) -> float | None:
        """(train + sample) / sbi's (train + sample)."""
        if self.sbi_train_s is None or self.sbi_sample_s is None:
            return None
        return (self.train_s + self.sample_s) / (self.sbi_train_s + self.sbi_sample_s)


def _task(name: str):
    import importlib

    return importlib.import_module(f"pyro_sbi.tasks.{name}")


FLOWS = ("maf", "nsf")


def _estimator(method: str, flow: str = "maf"):
    """Our estimator: NLE with a zuko `flow`, NRE-B, or MNLE (for the drift-diffusion task)."""
    import zuko

    from pyro_sbi import MNLE, NLE, NRE

    if method in ("nle", "nle-score"):
        return NLE() if flow == "maf" else NLE(zuko.flows.NSF)
    if method == "mnle":
        return MNLE(discrete=[1])
    return NRE()


def _applies(task, method: str) -> bool:
    """MNLE serves tasks with a discrete column, NLE the others; NRE, NPE and FMPE serve both.

    The methods trained on the joint score serve the tasks whose simulator is a
    :class:`~pyro_sbi.PyroSimulator`; `"exact"` serves the tasks with an exact likelihood.
    """
    from pyro_sbi import PyroSimulator

    if method == EXACT:
        return task.TASK.exact
    if method in SCORED:
        return isinstance(task.simulator, PyroSimulator) and (
            method == "nre-score" or not getattr(task, "MIXED", False)
        )
    mixed = getattr(task, "MIXED", False)
    return method in ("nre", *POSTERIORS) or (method == "mnle") == mixed


class _Guide:
    """Our NPE or FMPE as a user writes it: an :class:`~pyro_sbi.AmortizedGuide` of the model.

    The estimator is `NPE()` (method `"npe"`) or `FMPE()` (`"fmpe"`). The parameters are
    learned on their unconstrained space; the guide is fitted to the benchmark's
    simulations and sampled directly.
    """

    def __init__(self, task, method: str = "npe") -> None:
        from pyro_sbi import FMPE, NPE, AmortizedGuide

        estimator = {"npe": NPE, "fmpe": FMPE}[method]()
        self.task, self.guide = task, AmortizedGuide(task.model, estimator)

    def fit(self, theta: Tensor, x: Tensor, **options) -> None:
        """Fits the guide to `theta (n, D)` drawn from the prior and `x (n, *X)`."""
        seed, progress = options.pop("seed", None), options.pop("progress", False)
        self.guide.fit_simulations(
            {"theta": theta}, {"x": x}, None, self.task.observation(1), seed=seed,
            progress=progress, fit_options=options,
        )  # fmt: skip

    def sample(self, x: Tensor, num: int) -> Tensor:
        """`(num, D)` draws of the guide given `x (*X)`."""
        return self.guide.sample_posterior(num, None, x)["theta"]


def _sir_cap(task) -> int:
    """The most prior draws SIR may weight for `task` (fewer where each draw is costly)."""
    return getattr(task, "SIR_CANDIDATES", 1_000_000)


def _posterior_samples(task, estimator, x, seed: int, progress: bool, num: int) -> torch.Tensor:
    from pyro_sbi.infer import SliceMCMC

    if isinstance(estimator, _Guide):
        torch.manual_seed(seed)
        return estimator.sample(x, num)

    mcmc = SliceMCMC(
        task.model, num_samples=math.ceil(num / 250), num_chains=250, warmup_steps=40,
        seed=seed, progress=progress, max_candidates=_sir_cap(task),
    )  # fmt: skip
    return mcmc.run(estimator, x).get_samples()["theta"][:num]


class SbiPeer:
    """`sbi`'s NLE / NRE / MNLE / NPE / FMPE with their defaults, on given simulations."""

    def __init__(self, task, method: str, seed: int) -> None:
        import sbi.inference

        self.method, self.seed = method, seed
        self.cls = {
            "nle": sbi.inference.NLE, "nre": sbi.inference.NRE, "mnle": sbi.inference.MNLE,
            "npe": sbi.inference.NPE, "fmpe": sbi.inference.FMPE,
        }[method]  # fmt: skip
        self.prior = task.prior()

    def train(self, theta: Tensor, x: Tensor) -> None:
        """Trains sbi's estimator on `theta (n, D)`, `x (n, *X)` and builds its posterior."""
        from torch.utils.tensorboard import SummaryWriter

        torch.manual_seed(self.seed)
        # sbi writes tensorboard logs to ./sbi-logs by default: keep them out of the
        # working directory, in a temporary folder removed after training
        with tempfile.TemporaryDirectory(prefix="pyro_sbi-sbi-logs-") as logs:
            writer = SummaryWriter(log_dir=logs)
            inference = self.cls(prior=self.prior, show_progress_bars=False,
                                 summary_writer=writer)  # fmt: skip
            with contextlib.redirect_stdout(io.StringIO()):  # sbi prints "converged after ..."
                inference.append_simulations(theta, x).train()
            writer.close()
        self.posterior = inference.build_posterior()

    def sample(self, x: Tensor, seed: int, num: int) -> torch.Tensor:
        """`(num, D)` posterior draws given `x (*X)`, with torch's seed `seed`."""
        torch.manual_seed(seed)
        return self.posterior.sample((num,), x=x, show_progress_bars=False)


def run(
    tasks, methods, budgets, observations, *, compare: str | None = None, seed: int = 0,
    progress: bool = False, log=print, on_row=None, num_posterior: int = NUM_POSTERIOR,
    fit_options: dict | None = None, rounds=(1,), flow: str = "maf",
) -> list[Row]:  # fmt: skip
    """Runs the benchmark (see the module docstring).

    Arguments:
        tasks: task names (modules of :mod:`pyro_sbi.tasks`).
        methods: `"nle"`, `"nre"`, `"mnle"`, `"npe"`, `"fmpe"`, `"nle-score"`, `"nre-score"`,
            `"exact"`; a method that does not apply to a task (NLE on mixed discrete data,
            MNLE on continuous data, the score methods where the simulator is not a Pyro
            program, `"exact"` where the task has no exact likelihood) is skipped.
        budgets: numbers of simulations.
        observations: sbibm observation numbers (1 to 10).
        compare: `"sbi"` to run sbi on the same simulations.
        seed: roots the seeds of simulation, training and sampling.
        progress: progress bars.
        log: prints each row as it comes.
        on_row: called with the rows so far after each row.
        num_posterior: posterior samples per observation (and reference samples).
        fit_options: options of our estimators' `fit` (defaults otherwise).
        flow: the flow of our NLE, `"maf"` or `"nsf"`.
        rounds: numbers of rounds; 1 is the amortised estimator, more are sequential
            rounds per observation on the same total budget.

    Returns:
        One :class:`Row` per task, method, budget and observation.
    """
    from pyro_sbi import PyroSimulator, c2st, simulate, train

    rows = []

    def emit(row: Row) -> None:
        rows.append(row)
        log(_format_row(row, compare == "sbi"), flush=True)
        if on_row is not None:
            on_row(rows)

    def score(task, estimator, i: int, seed: int) -> tuple[float, float, Tensor]:
        """C2ST of our posterior for observation `i`, its sampling seconds, the reference."""
        reference = task.reference_posterior(i, num_posterior)
        start = time.perf_counter()
        samples = _posterior_samples(task, estimator, task.observation(i), seed, progress,
                                     num_posterior)  # fmt: skip
        sample_s = time.perf_counter() - start
        return float(c2st(samples, reference, seed=i)), sample_s, reference

    for task_name in tasks:
        task = _task(task_name)
        for budget in budgets:
            run_seed = seed + 1000 * budget + ALL_TASKS.index(task_name)
            amortised = [m for m in methods if _applies(task, m)] if 1 in rounds else []
            simulated = {}  # one set of simulations serves every amortised estimator
            for scored in sorted({m in SCORED for m in amortised if m != EXACT}):
                torch.manual_seed(run_seed)
                theta = task.prior().sample((budget,))
                simulator = task.simulator.with_score() if scored else task.simulator
                start = time.perf_counter()
                sims = simulate(simulator, theta, seed=run_seed, batch_size=budget, progress=False)
                simulated[scored] = (*sims.valid(), time.perf_counter() - start)
            for method in amortised:
                if method == EXACT:  # the sampler alone, on the exact likelihood
                    for i in observations:
                        c2st_, sample_s, _ = score(task, None, i, run_seed + i)
                        emit(Row(task_name, method, budget, i, c2st_, 0.0, 0.0, sample_s))
                    continue
                theta, x, simulate_s = simulated[method in SCORED]
                options = dict(fit_options or {})
                if method in SCORED:  # the same x as the others (the same seeds), and t
                    x, _, options["score"] = PyroSimulator.unpack(x, theta.shape[-1])
                estimator = (
                    _Guide(task, method) if method in POSTERIORS else _estimator(method, flow)
                )
                start = time.perf_counter()
                estimator.fit(theta, x, seed=run_seed, progress=progress, **options)
                train_s = time.perf_counter() - start
                peer = None
                if compare == "sbi" and method not in SCORED:
                    peer = SbiPeer(task, method, run_seed)
                    start = time.perf_counter()
                    peer.train(theta, x)
                    sbi_train_s = time.perf_counter() - start
                for i in observations:
                    c2st_, sample_s, reference = score(task, estimator, i, run_seed + i)
                    row = Row(task_name, method, budget, i, c2st_, simulate_s, train_s, sample_s)
                    if peer is not None:
                        start = time.perf_counter()
                        theirs = peer.sample(task.observation(i), run_seed + i, num_posterior)
                        row.sbi_sample_s = time.perf_counter() - start
                        row.sbi_train_s = sbi_train_s
                        row.sbi_c2st = float(c2st(theirs, reference, seed=i))
                    emit(row)
            for method, num_rounds, i in itertools.product(
                methods, [r for r in rounds if r > 1], observations
            ):
                if not _applies(task, method) or method in (
                    *POSTERIORS,
                    *SCORED,
                    EXACT,
                ):  # one round only
                    continue
                estimator = _estimator(method, flow)
                start = time.perf_counter()
                train(
                    task.model, estimator, task.observation(i), num_simulations=budget,
                    rounds=num_rounds, seed=run_seed + i, progress=progress,
                    fit_options=fit_options, sampler_options={"max_candidates": _sir_cap(task)},
                )  # fmt: skip
                train_s = time.perf_counter() - start
                c2st_, sample_s, _ = score(task, estimator, i, run_seed + i)
                emit(Row(task_name, method, budget, i, c2st_, 0.0, train_s, sample_s,
                         rounds=num_rounds))  # fmt: skip
    return rows


_HEADER = (
    "| task | method | simulations | obs | C2ST | simulate s | train s | sample s |",
    "| --- | --- | --- | --- | --- | --- | --- | --- |",
)
_HEADER_SBI = (
    " sbi C2ST | sbi train s | sbi sample s | time ratio |",
    " --- | --- | --- | --- |",
)


def _label(row: Row) -> str:
    return row.method if row.rounds == 1 else f"{row.method}, {row.rounds} rounds"


def _format_row(row: Row, peer: bool | None = None) -> str:
    line = (
        f"| {row.task} | {_label(row)} | {row.budget} | {row.observation} | {row.c2st:.3f} | "
        f"{row.simulate_s:.2f} | {row.train_s:.1f} | {row.sample_s:.1f} |"
    )
    if row.sbi_c2st is not None:
        line += (
            f" {row.sbi_c2st:.3f} | {row.sbi_train_s:.1f} | {row.sbi_sample_s:.1f} | "
            f"{row.time_ratio:.2f} |"
        )
    elif peer:
        line += " – | – | – | – |"
    return line


def table(rows: list[Row]) -> str:
    """The rows as a markdown table, then the means over observations (:func:`summary`)."""
    peer = any(r.sbi_c2st is not None for r in rows)
    head = [h + (s if peer else "") for h, s in zip(_HEADER, _HEADER_SBI, strict=True)]
    return "\n".join([*head, *(_format_row(r, peer) for r in rows), "", summary(rows)])


def summary(rows: list[Row]) -> str:
    """The means over observations per task, method and budget, as a markdown table."""
    peer = any(r.sbi_c2st is not None for r in rows)
    lines = ["Mean over observations:", ""]
    head = "| task | method | simulations | C2ST | train + sample s |" + (
        " sbi C2ST | sbi train + sample s | time ratio |" if peer else ""
    )
    lines += [head, "|" + " --- |" * (head.count("|") - 1)]
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        groups.setdefault((r.task, _label(r), r.budget), []).append(r)
    for (task, label, budget), group in groups.items():
        mean = statistics.fmean
        amortised = group[0].rounds == 1  # one training serves every observation
        ours = sum(r.sample_s for r in group) + (
            group[0].train_s if amortised else sum(r.train_s for r in group)
        )
        line = f"| {task} | {label} | {budget} | {mean(r.c2st for r in group):.3f} | {ours:.1f} |"
        if peer and group[0].sbi_c2st is not None:
            theirs = group[0].sbi_train_s + sum(r.sbi_sample_s for r in group)
            line += (
                f" {mean(r.sbi_c2st for r in group):.3f} | {theirs:.1f} | {ours / theirs:.2f} |"
            )
        elif peer:
            line += " – | – | – |"
        lines.append(line)
    return "\n".join(lines)


def versions(compare: str | None) -> str:
    """Python, platform and package versions, one line."""
    import pyro
    import zuko

    import pyro_sbi

    parts = [
        f"pyro_sbi {pyro_sbi.__version__}", f"torch {torch.__version__}",
        f"pyro {pyro.__version__}", f"zuko {zuko.__version__}",
    ]  # fmt: skip
    if compare == "sbi":
        import sbi

        parts.append(f"sbi {sbi.__version__}")
    parts += [f"Python {platform.python_version()}", platform.machine()]
    parts.append(f"{torch.get_num_threads()} torch thread(s)")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> list[Row]:
    """The command line: parses `argv`, runs, prints the table; returns the rows.

    Each row is printed once, as soon as it is measured, under the header printed at the
    start; the means over observations follow at the end.
    """
    parser = argparse.ArgumentParser(
        prog="python -m pyro_sbi.benchmark",
        description="C2ST and seconds on the standard SBI tasks, optionally beside sbi.",
    )
    parser.add_argument(
        "--tasks", nargs="+", choices=ALL_TASKS, default=None,
        help="tasks to run (default: two_moons, or the tasks of --suite)",
    )  # fmt: skip
    parser.add_argument(
        "--suite", choices=sorted(SUITES), default=None,
        help="every task of a suite: sbibm (the standard tasks) or broad (the broad suite)",
    )  # fmt: skip
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=["nle"])
    parser.add_argument("--num-simulations", nargs="+", type=int, default=[1000])
    parser.add_argument("--observations", nargs="+", type=int, default=[1])
    parser.add_argument(
        "--rounds", nargs="+", type=int, default=[1],
        help="numbers of rounds (1: amortised; more: sequential rounds per observation)",
    )  # fmt: skip
    parser.add_argument(
        "--flow",
        choices=FLOWS,
        default="maf",
        help="the flow of our NLE (default: maf, NLE()'s own)",
    )
    parser.add_argument("--compare", choices=["sbi"], default=None)
    parser.add_argument("--json", default=None, help="write the rows to this file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    args = parser.parse_args(argv)
    if min(args.rounds) < 1:
        parser.error("--rounds must be at least 1")
    tasks = list(args.tasks or [])
    if args.suite is not None:
        tasks += [t for t in SUITES[args.suite] if t not in tasks]
    tasks = tasks or ["two_moons"]
    if args.compare == "sbi":
        try:
            import sbi  # noqa: F401
        except ImportError:
            parser.error("--compare sbi needs the sbi package: pip install 'pyro-sbi[benchmark]'")
    torch.set_num_threads(args.threads)
    about = versions(args.compare)
    print(f"# Benchmark: {' '.join(['python -m pyro_sbi.benchmark', *(argv or sys.argv[1:])])}")
    print(f"\n{about}\n")
    print("\n".join(_HEADER) if args.compare is None else "\n".join(
        h + s for h, s in zip(_HEADER, _HEADER_SBI, strict=True)))  # fmt: skip

    def save(rows: list[Row]) -> None:  # after every row, so a stopped run keeps its rows
        if args.json:
            with open(args.json, "w") as file:
                json.dump({"versions": about, "rows": [asdict(r) for r in rows]}, file, indent=1)

    rows = run(
        tasks, args.methods, args.num_simulations, args.observations,
        compare=args.compare, seed=args.seed, progress=args.progress, on_row=save,
        rounds=args.rounds, flow=args.flow,
    )  # fmt: skip
    print()  # the rows were printed as they came: the means complete the table
    print(summary(rows))
    return rows
