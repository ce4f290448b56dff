r"""Benchmark of torch's thread count in the library's loops and in Pyro's NUTS.

Run `python -m pyro_sbi.benchmark.threads` (`--quick` for a short run). For one thread
and for torch's default count it measures, in this process:

- training: seconds per epoch of `NLE()` (spline flow), `NLE(zuko.flows.MAF)` and
  `NRE()` on 10,000 simulations of a Ricker population model (2 parameters, 10 counts);
- SliceMCMC: seconds of a run of 100 chains on 100 i.i.d. trials with the trained MAF;
- NUTS: seconds per potential-and-gradient evaluation of Pyro's NUTS on the same
  model (what one leapfrog step costs).

Each is measured with the machine otherwise idle and again with one busy process per
core but one (`--load`: only loaded, `--idle`: only idle), and printed as a markdown
table with the ratio of the default count's time to one thread's.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
import zuko

from pyro_sbi import NLE, NRE, SimulatorDistribution, SliceMCMC


def ricker(theta: torch.Tensor, steps: int = 60, keep: int = 10) -> torch.Tensor:
    """`theta (n, 2) -> x (n, 10)`: Poisson counts of a Ricker population.

    `theta = (log r, log sigma)`: growth rate and process noise; the population
    `N_{t+1} = r N_t exp(-N_t + e_t)`, observed as `Poisson(10 N_t)` at the last `keep` steps.
    """
    log_r, sigma = theta[:, 0], theta[:, 1].exp()
    population = torch.ones(len(theta))
    counts = []
    for step in range(steps):
        noise = sigma * torch.randn(len(theta))
        population = (log_r - population + noise).exp() * population
        if step >= steps - keep:
            counts.append(torch.poisson(10 * population.clamp(max=1e4)))
    return torch.stack(counts, -1)


PRIOR = dist.Uniform(torch.tensor([3.0, -2.0]), torch.tensor([4.5, -0.5])).to_event(1)


def model(estimator, trials: int):
    """A Pyro model: one `theta` from :data:`PRIOR`, `trials` i.i.d. runs of :func:`ricker`."""

    def run(x=None):
        theta = pyro.sample("theta", PRIOR)
        with pyro.plate("trials", trials):
            site = SimulatorDistribution(ricker, theta, estimator)
            return pyro.sample("x", site, obs=x)

    return run


def _busy(stop) -> None:  # pragma: no cover - runs in another process
    value = 0.5
    while not stop.is_set():
        for _ in range(100_000):
            value = 3.7 * value * (1.0 - value)


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    """The median wall time of `repeats` calls of `function()`, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_seconds_in_turn(
    functions: dict[str, Callable[[], object]], repeats: int
) -> dict[str, float]:
    """The median wall time of each function, in seconds, the functions called in turn.

    Each round calls every function once, so that a change in the machine's load during
    the measurement reaches all of them alike and their ratios stay comparable; a first
    round warms up and is not counted.
    """
    times = {name: [] for name in functions}
    for repeat in range(repeats + 1):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            if repeat:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def measure(threads: int, theta, x, x_obs, *, epochs: int, repeats: int) -> dict[str, float]:
    """Seconds of each measured piece of work with `threads` torch threads."""
    torch.set_num_threads(threads)
    result = {}
    trained = None
    for name, make in (("NLE() epoch", NLE), ("NLE(MAF) epoch", lambda: NLE(zuko.flows.MAF)),
                       ("NRE() epoch", NRE)):  # fmt: skip
        estimator = make()
        history = estimator.fit(theta, x, max_epochs=epochs, patience=epochs + 1, seed=0,
                                progress=False, num_threads=threads)  # fmt: skip
        result[name] = history.seconds / history.epochs
        if name == "NLE(MAF) epoch":
            trained = estimator
    run = model(trained, len(x_obs))
    sampler = SliceMCMC(run, num_samples=10, warmup_steps=10, num_chains=100, seed=0,
                        num_candidates=1000, progress=False, num_threads=threads)  # fmt: skip
    result["SliceMCMC run"] = median_seconds(lambda: sampler.run(x_obs), max(1, repeats // 2))

    from pyro.infer.mcmc.util import initialize_model

    _, potential, _, _ = initialize_model(run, (x_obs,))
    z = {"theta": torch.zeros(2, requires_grad=True)}

    def gradient():
        for _ in range(20):
            value = potential(z)
            torch.autograd.grad(value, [z["theta"]])

    result["NUTS gradient"] = median_seconds(gradient, repeats) / 20
    return result


def main(argv: list[str] | None = None) -> None:
    """Runs the benchmark and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs and repeats")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--load", action="store_true", help="only with busy processes")
    group.add_argument("--idle", action="store_true", help="only with the machine idle")
    args = parser.parse_args(argv)
    epochs, repeats = (2, 3) if args.quick else (5, 7)
    default = torch.get_num_threads()
    cores = os.cpu_count() or 1
    torch.manual_seed(0)
    theta = PRIOR.sample((10_000,))
    x = ricker(theta)
    x_obs = ricker(torch.tensor([[3.8, -1.2]]).expand(100, 2))

    counts = sorted({1, default})
    conditions = ["idle", "loaded"]
    if args.load:
        conditions = ["loaded"]
    elif args.idle:
        conditions = ["idle"]
    rows: dict[tuple[str, str], dict[int, float]] = {}
    for condition in conditions:
        stop = multiprocessing.Event()
        workers = []
        if condition == "loaded":
            workers = [multiprocessing.Process(target=_busy, args=(stop,), daemon=True)
                       for _ in range(max(1, cores - 1))]  # fmt: skip
            for worker in workers:
                worker.start()
        try:
            for count in counts:
                for name, seconds in measure(count, theta, x, x_obs, epochs=epochs,
                                             repeats=repeats).items():  # fmt: skip
                    rows.setdefault((condition, name), {})[count] = seconds
        finally:
            stop.set()
            for worker in workers:
                worker.join()
    torch.set_num_threads(default)

    print(f"\n{cores} cores, torch default {default} threads, torch {torch.__version__}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}\n")  # fmt: skip
    header = " | ".join(f"{count} thread{'s' if count > 1 else ''} (s)" for count in counts)
    print(f"| machine | work | {header} | default / 1 thread |")
    print("| --- | --- | " + " | ".join("---:" for _ in counts) + " | ---: |")
    for (condition, name), values in rows.items():
        cells = " | ".join(f"{values[count]:.4f}" for count in counts)
        print(f"| {condition} | {name} | {cells} | {values[default] / values[1]:.2f} |")


if __name__ == "__main__":
    main()
