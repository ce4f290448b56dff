r"""Benchmark of the cost of training on the joint score, against plain training.

Run `python -m pyro_sbi.benchmark.augment` (`--quick` for a short run). On simulations of
the state-space task (:mod:`pyro_sbi.tasks.state_space`, a Pyro program, so each comes
with its joint score), in this process and with one torch thread, it measures for
`NLE()`, `MNLE(discrete=[10])` and `NRE()` (NRE-B, 10 atoms):

- **per step**: the seconds of one gradient step (loss, backward, Adam) on a batch of
  256, plain and with the score term (`loss(..., score=)`); the methods take turns
  step by step, so a change in the machine's load reaches all of them alike, and the
  median over the steps is printed;
- **per training** (not with `--quick`): a whole :func:`~pyro_sbi.fit` on 1,000
  simulations with the defaults, plain and with `score=`: seconds, epochs and seconds
  per epoch.

It prints a markdown table with the ratio of augmented to plain per method, and for the
trainings also the step ratio times the ratio of their epochs (both train on the same
rows, so as many steps per epoch): the cost of the augmented training as the load of a
shared machine cannot distort it, since the whole trainings run one after the other
and their seconds can differ by a factor of two under a changing load. MNLE's
discrete column is the sign of the first output (a function of `x`, so the joint score
stays that of the run); it is there to time MNLE's networks, not to be learned.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pyro_sbi import MNLE, NLE, NRE, PyroSimulator, simulate
from pyro_sbi.augment import score_weights
from pyro_sbi.tasks import state_space

ESTIMATORS = {"nle": NLE, "mnle": lambda: MNLE(discrete=[10]), "nre": NRE}


def simulations(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`theta (n, 2)`, `x (n, 10)` and joint scores `(n, 2)` of the state-space task."""
    torch.manual_seed(seed)
    theta = state_space.prior().sample((n,))
    sims = simulate(state_space.simulator.with_score(), theta, seed=seed, progress=False)
    theta, packed = sims.valid()
    x, _, score = PyroSimulator.unpack(packed, theta.shape[-1])
    return theta, x, score


def _data(method: str, x: torch.Tensor) -> torch.Tensor:
    """`x`, with MNLE's discrete column (the sign of the first output) appended."""
    return torch.cat([x, (x[:, :1] > 0).to(x.dtype)], -1) if method == "mnle" else x


def per_step(methods, steps: int, batch_size: int = 256, seed: int = 0) -> dict:
    """Median seconds of a gradient step, `{(method, scored): s}`, the cases taking turns."""
    theta, x, score = simulations(4 * batch_size, seed)
    cases = {}
    for method in methods:
        for scored in (False, True):
            torch.manual_seed(seed)
            estimator = ESTIMATORS[method]()
            estimator.build(theta, _data(method, x))
            weight = score_weights(score, estimator.theta_scale)
            optimizer = torch.optim.Adam(estimator.parameters(), lr=1e-3)
            cases[method, scored] = (estimator, optimizer, weight)
    times = {case: [] for case in cases}
    for step in range(steps + 2):  # two warm-up steps
        rows = torch.randperm(len(theta))[:batch_size]
        for (method, scored), (estimator, optimizer, weight) in cases.items():
            extra = {"score": score[rows], "score_weight": weight} if scored else {}
            start = time.perf_counter()
            loss = estimator.loss(theta[rows], _data(method, x[rows]), **extra)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step >= 2:
                times[method, scored].append(time.perf_counter() - start)
    return {case: statistics.median(values) for case, values in times.items()}


def per_training(methods, n: int = 1000, seed: int = 0) -> dict:
    """`{(method, scored): (seconds, epochs)}` of whole trainings on `n` simulations."""
    theta, x, score = simulations(n, seed)
    result = {}
    for method in methods:
        for scored in (False, True):
            estimator = ESTIMATORS[method]()
            extra = {"score": score} if scored else {}
            history = estimator.fit(theta, _data(method, x), seed=seed, progress=False, **extra)
            result[method, scored] = (history.seconds, history.epochs)
    return result


def main(argv: list[str] | None = None) -> None:
    """Prints the table of augmented against plain training cost."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(ESTIMATORS), choices=ESTIMATORS)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per case")
    parser.add_argument("--simulations", type=int, default=1000, help="of each training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="10 steps, no whole trainings")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    steps = 10 if args.quick else args.steps
    step = per_step(args.methods, steps, seed=args.seed)
    trained = {} if args.quick else per_training(args.methods, args.simulations, args.seed)
    print(
        "| method | step ms, plain | step ms, score | step ratio | train s (epochs), plain"
        " | train s (epochs), score | train ratio | epoch ratio | step ratio x epochs |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for method in args.methods:
        plain, scored = step[method, False], step[method, True]
        cells = [f"{1e3 * plain:.1f}", f"{1e3 * scored:.1f}", f"{scored / plain:.2f}"]
        if trained:
            (s0, e0), (s1, e1) = trained[method, False], trained[method, True]
            cells += [f"{s0:.1f} ({e0})", f"{s1:.1f} ({e1})", f"{s1 / s0:.2f}"]
            cells.append(f"{(s1 / e1) / (s0 / e0):.2f}")
            cells.append(f"{scored / plain * e1 / e0:.2f}")
        else:
            cells += ["—"] * 5
        print(f"| {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
