r"""Benchmark of the simulation engine: overhead, parallel speed-up, cost of the store.

Run `python -m pyro_sbi.benchmark.simulation` (`--quick` for a short run). It prints
a markdown table:

- overhead: :func:`~pyro_sbi.simulate` on a cheap vectorised simulator against calling
  the simulator directly on the same `theta` (throughput ratio, median of repeats);
- speed-up: a one-at-a-time simulator that computes for about 20 ms per `theta`, in
  this process, on a `ProcessPoolExecutor(2)` and on a Dask `LocalCluster` of two
  single-threaded worker processes (when `distributed` is installed), with the default
  batches (a hundredth of the parameters) and with 10 parameters per task;
- store: the same runs writing a zarr store, as a fraction of the simulation time.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from pyro_sbi.benchmark.threads import median_seconds_in_turn
from pyro_sbi.simulation import simulate


def cheap(theta: torch.Tensor) -> torch.Tensor:
    """`theta (n, 2) -> x (n, 2)`: the quickstart's nonlinear simulator with skewed noise."""
    eps = torch.randn_like(theta)
    a, b = theta[:, 0], theta[:, 1]
    return torch.stack(
        [a + 0.3 * eps[:, 0], b + 0.5 * torch.sin(a) + 0.3 * (torch.exp(0.5 * eps[:, 1]) - 1)], -1
    )


def busy(theta: torch.Tensor, steps: int = 0) -> torch.Tensor:
    """`theta (2,) -> x (2,)` after `steps` iterations of a pure-Python map (CPU-bound)."""
    value = float(theta[0])
    for _ in range(steps or _STEPS):
        value = 3.7 * value * (1.0 - value) if 0.0 < value < 1.0 else 0.5
    return theta + value


_STEPS = int(os.environ.get("PYRO_SBI_BUSY_STEPS", "0")) or None


def _calibrate(seconds: float) -> int:
    """Iterations of :func:`busy` taking about `seconds` (median of repeated timings)."""
    steps = 100_000
    for _ in range(3):  # refine: the first timings can run at another clock speed
        times = []
        for _ in range(5):
            start = time.perf_counter()
            busy(torch.zeros(2), steps)
            times.append(time.perf_counter() - start)
        steps = max(1, int(steps * seconds / statistics.median(times)))
    return steps


def overhead(simulator, theta: torch.Tensor, repeats: int) -> list[tuple[str, float, float]]:
    """`(case, seconds, ratio of throughputs)` for `simulate` against direct calls."""
    n = len(theta)
    cases = {
        "simulate": {},
        "simulate, seed (100 batches by default)": {"seed": 0},
        f"simulate, seed, {n // 10:,} per batch": {"seed": 0, "batch_size": n // 10},
        f"simulate, seed, {n:,} per batch": {"seed": 0, "batch_size": n},
    }
    functions = {"direct call": lambda: simulator(theta)}
    for case, options in cases.items():
        functions[case] = lambda options=options: simulate(
            simulator, theta, progress=False, **options
        )
    seconds = median_seconds_in_turn(functions, repeats)
    direct = seconds["direct call"]
    return [(case, value, direct / value) for case, value in seconds.items()]


def speedup(n: int, store_folder: str) -> list[tuple[str, float, float]]:
    """`(engine, seconds, speed-up)` for `n` one-at-a-time simulations of `busy`."""
    theta = torch.rand(n, 2)
    options = dict(batched=False, seed=0, progress=False)
    start = time.perf_counter()
    simulate(busy, theta, **options)
    base = time.perf_counter() - start
    rows = [("in-process", base, 1.0)]

    start = time.perf_counter()
    simulate(busy, theta, store=f"{store_folder}/in-process", **options)
    seconds = time.perf_counter() - start
    rows.append(("in-process + store", seconds, base / seconds))

    with ProcessPoolExecutor(2) as pool:
        simulate(busy, theta[:4], executor=pool, **options)  # start the workers
        for label, store, batch in (
            ("process pool (2)", None, None),
            ("process pool (2), 10 per batch", None, 10),
            ("process pool (2) + store", "pool", None),
        ):
            start = time.perf_counter()
            path = None if store is None else f"{store_folder}/{store}"
            simulate(busy, theta, executor=pool, store=path, batch_size=batch, **options)
            seconds = time.perf_counter() - start
            rows.append((label, seconds, base / seconds))

    try:
        from distributed import Client, LocalCluster
    except ImportError:
        return rows
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    with cluster, Client(cluster) as client:
        executor = client.get_executor()
        simulate(busy, theta[:4], executor=executor, **options)
        for label, batch in (
            ("Dask LocalCluster (2 processes)", None),
            ("Dask LocalCluster (2 processes), 10 per batch", 10),
        ):
            start = time.perf_counter()
            simulate(busy, theta, executor=executor, batch_size=batch, **options)
            seconds = time.perf_counter() - start
            rows.append((label, seconds, base / seconds))
    return rows


def main(argv: list[str] | None = None) -> None:
    """Runs the benchmark and prints the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer simulations")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    global _STEPS
    _STEPS = _STEPS or _calibrate(0.020)
    os.environ["PYRO_SBI_BUSY_STEPS"] = str(_STEPS)  # workers started from here inherit it

    n_cheap = 20_000 if args.quick else 200_000
    n_busy = 40 if args.quick else 200
    print(
        f"# Simulation engine ({platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__})\n"
    )
    from pyro_sbi.tasks.ddm import prior, simulate_ddm

    cases = {
        f"the quickstart simulator (2 outputs), {n_cheap:,} parameters": (
            cheap, torch.randn(n_cheap, 2)
        ),
        f"drift-diffusion trials (`simulate_ddm`), {n_cheap // 10:,} parameters": (
            simulate_ddm, prior().sample((n_cheap // 10,))
        ),
    }  # fmt: skip
    for title, (simulator, theta) in cases.items():
        print(f"## Overhead: {title}\n")
        print("| case | time | throughput vs direct |\n|---|---|---|")
        for case, seconds, ratio in overhead(simulator, theta, repeats=5 if args.quick else 20):
            print(f"| {case} | {seconds * 1e3:.1f} ms | {ratio:.1%} |")
        print()

    with tempfile.TemporaryDirectory() as folder:
        rows = speedup(n_busy, folder)
    per = rows[0][1] / n_busy
    print(f"## Speed-up: {n_busy} one-at-a-time simulations of {per * 1e3:.0f} ms each\n")
    print("| engine | seconds | speed-up over in-process |\n|---|---|---|")
    for engine, seconds, ratio in rows:
        print(f"| {engine} | {seconds:.2f} | {ratio:.2f}x |")
    store = {label: seconds for label, seconds, _ in rows}
    cost = store["in-process + store"] / store["in-process"] - 1
    cost_pool = store["process pool (2) + store"] / store["process pool (2)"] - 1
    commits = math.ceil(n_busy / math.ceil(n_busy / 100))
    per_commit = (store["in-process + store"] - store["in-process"]) / commits
    print(
        f"\nStore: {commits} commits (batches of {math.ceil(n_busy / 100)} parameters) cost "
        f"{cost:+.1%} of the in-process simulation time ({per_commit * 1e3:.1f} ms per "
        f"commit) and {cost_pool:+.1%} on the process pool."
    )


if __name__ == "__main__":
    main()
