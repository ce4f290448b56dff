r"""Load benchmark of the simulation engine: a million wide simulations through the store.

Run `python -m pyro_sbi.benchmark.load` (`--num-simulations 100000` for a short run). It
pushes `N` simulations of a 100-dimensional simulator (:func:`wide`) through
:func:`~pyro_sbi.simulate` with a zarr store, each run in a fresh process so that its
peak memory (the largest resident set of that process) is its own, and prints a
markdown table:

- **the simulator alone**: one call on all rows, without the engine or a store (the
  baseline of the ratios);
- **embedded**: in-process, the default executor;
- **kill and resume**: the same run killed with SIGKILL once half of the rows are
  committed to the store, then run again to the end; it checks that the rows committed
  before the kill are unchanged, that every row is done once and that the resumed run
  simulated only the rows still missing;
- **dask**: on a Dask `LocalCluster` of two single-threaded worker processes (when
  `distributed` is installed); the peak memory is that of the main process (the
  workers hold one batch each).

The target for the main process is a peak below 2 GB at `N = 10^6`; the outputs alone,
`10^6 x 100` float32 values, take 0.4 GB, and :func:`~pyro_sbi.simulate` returns them
in memory.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

X_DIM, THETA_DIM = 100, 5


def wide(theta: torch.Tensor) -> torch.Tensor:
    """`theta (n, 5) -> x (n, 100)`: smooth bumps of the parameters plus Gaussian noise.

    Example:
        >>> wide(torch.zeros(3, 5)).shape
        torch.Size([3, 100])
    """
    s = torch.linspace(0.0, 1.0, X_DIM, dtype=theta.dtype)
    c = torch.linspace(0.0, 1.0, THETA_DIM, dtype=theta.dtype)
    bumps = torch.exp(-((s[:, None] - c[None, :]) ** 2) / 0.02)
    return theta @ bumps.T + 0.1 * torch.randn(len(theta), X_DIM, dtype=theta.dtype)


def _child(n: int, store: str, executor: str) -> None:
    """One run in this process: simulate `n` rows into `store`, print seconds and peak."""
    from pyro_sbi import simulate

    torch.set_num_threads(1)
    theta = torch.Generator().manual_seed(0)
    theta = torch.randn(n, THETA_DIM, generator=theta)
    pool = client = None
    if executor == "dask":
        from distributed import Client, LocalCluster

        client = Client(LocalCluster(n_workers=2, threads_per_worker=1, processes=True))
        pool = client.get_executor()
    start = time.perf_counter()
    if executor == "direct":  # the simulator alone: no engine, no store
        failed = int((~torch.isfinite(wide(theta)).all(-1)).sum())
    else:
        sims = simulate(wide, theta, seed=0, store=store, executor=pool, progress=False)
        failed = sims.num_failed
    seconds = time.perf_counter() - start
    if client is not None:
        client.close()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    print(f"RESULT {seconds:.3f} {peak_mb:.1f} {failed}", flush=True)


def _train_child(epochs: int, store: str, how: str) -> None:
    """Trains `NLE()` for `epochs` epochs on the store in this process; prints the figures.

    `how` is `"streamed"` (a :class:`~pyro_sbi.StoredPairs` of the store) or `"memory"`
    (every row read into tensors first, as `estimator.fit(theta, x)` takes them).
    """
    from pyro_sbi import NLE, StoredPairs
    from pyro_sbi.store import SimulationStore

    torch.set_num_threads(1)
    start = time.perf_counter()
    if how == "streamed":
        data = (StoredPairs.from_store(store),)
    else:
        import zarr

        stored = SimulationStore(zarr.open_group(store, mode="r"))
        x, *_ = stored.read()
        data = (stored.theta().to(x.dtype), x)
    history = NLE().fit(*data, max_epochs=epochs, patience=epochs, progress=False, seed=0)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"RESULT {seconds:.3f} {peak_mb:.1f} {history.validation_loss[-1]:.4f}", flush=True)


def _run(n: int, store: str, executor: str = "embedded") -> tuple[float, float, str]:
    """Runs :func:`_child` in a fresh process: seconds, peak MB, failures.

    For an `executor` `train-*`, it runs :func:`_train_child` with `n` epochs instead,
    whose third figure is the last validation loss.
    """
    out = subprocess.run(
        [sys.executable, "-m", "pyro_sbi.benchmark.load", "--child", str(n), store, executor],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT"))
    seconds, peak, third = line.split()[1:]
    return float(seconds), float(peak), third


def _committed(store: str) -> np.ndarray:
    """The status column of a store (-1: not yet committed), read without simulating."""
    import zarr

    group = zarr.open_group(store, mode="r")
    return np.asarray(group["status"][:]) if "status" in group else np.zeros(0, np.int8)


def kill_and_resume(n: int, folder: str) -> dict[str, float]:
    """Kills a run at half of the rows committed, resumes it, and checks the store."""
    store = os.path.join(folder, "killed.zarr")
    command = [sys.executable, "-m", "pyro_sbi.benchmark.load", "--child", str(n), store,
               "embedded"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.perf_counter()
    done = 0
    while process.poll() is None:
        time.sleep(0.05)
        try:
            done = int((_committed(store) >= 0).sum())
        except Exception:  # the store is still being created
            continue
        if done >= n // 2:
            process.send_signal(signal.SIGKILL)
            break
    process.wait()
    if done < n // 2:
        raise RuntimeError(
            f"the run finished (exit code {process.returncode}) before half of its {n} rows "
            "were committed; give more simulations"
        )
    killed_s = time.perf_counter() - start
    import zarr

    before = _committed(store)
    done_before = before >= 0
    rows = np.flatnonzero(done_before)
    sample = rows[np.linspace(0, len(rows) - 1, min(len(rows), 1000)).astype(int)]
    x_before = np.asarray(zarr.open_group(store, mode="r")["x"][:][sample])
    seconds, peak, failed = _run(n, store)
    failed = int(failed)  # the child prints the number of failed simulations
    after = _committed(store)
    x_after = np.asarray(zarr.open_group(store, mode="r")["x"][:][sample])
    if not ((after >= 0).all() and len(after) == n and np.array_equal(x_before, x_after)):
        raise RuntimeError("the resumed store lost or changed rows committed before the kill")
    return {
        "killed at": float(done_before.mean()), "killed s": killed_s, "resumed s": seconds,
        "resumed rows": int((~done_before).sum()), "peak MB": peak, "failed": failed,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m pyro_sbi.benchmark.load",
                                     description=__doc__.splitlines()[0])  # fmt: skip
    parser.add_argument("--num-simulations", type=int, default=1_000_000)
    parser.add_argument("--no-dask", action="store_true", help="skip the Dask run")
    parser.add_argument(
        "--epochs",
        type=int,
        default=2,
        help="epochs of the NLE trained on the store (0: no training)",
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        count, store, mode = args.child
        if mode.startswith("train-"):
            _train_child(int(count), store, mode.removeprefix("train-"))
        else:
            _child(int(count), store, mode)
        return
    n = args.num_simulations
    print(f"\n{n} simulations of {X_DIM} floats; torch {torch.__version__}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f}\n")  # fmt: skip
    print("| run | seconds | simulations / s | peak memory (MB) | notes |")
    print("| --- | ---: | ---: | ---: | --- |")
    with tempfile.TemporaryDirectory(prefix="pyro_sbi-load-") as folder:
        direct, peak, _ = _run(n, "", "direct")
        print(f"| the simulator alone | {direct:.1f} | {n / direct:,.0f} | {peak:.0f} | one "
              "call on all rows, no store |", flush=True)  # fmt: skip
        embedded = os.path.join(folder, "embedded.zarr")
        seconds, peak, _ = _run(n, embedded)
        print(f"| embedded | {seconds:.1f} | {n / seconds:,.0f} | {peak:.0f} | "
              f"{seconds / direct:.1f}x the simulator alone |", flush=True)  # fmt: skip
        resumed = kill_and_resume(n, folder)
        print(f"| kill at {resumed['killed at']:.0%}, then resume | {resumed['resumed s']:.1f} "
              f"| {resumed['resumed rows'] / resumed['resumed s']:,.0f} | "
              f"{resumed['peak MB']:.0f} | {resumed['resumed rows']} rows simulated on "
              "resume; rows committed before the kill unchanged |", flush=True)  # fmt: skip
        if not args.no_dask:
            try:
                import distributed  # noqa: F401
            except ImportError:
                print("| dask | – | – | – | distributed is not installed |")
            else:
                seconds, peak, _ = _run(n, os.path.join(folder, "dask.zarr"), "dask")
                print(f"| dask, 2 workers | {seconds:.1f} | {n / seconds:,.0f} | {peak:.0f} "
                      "| main process only |", flush=True)  # fmt: skip
        if args.epochs > 0:
            _print_training(embedded, n, args.epochs)


def _print_training(store: str, n: int, epochs: int) -> None:
    """The table of `NLE()` trained on the store, streamed and from memory."""
    print(f"\n`NLE()` trained for {epochs} epochs on the {n} stored rows, one torch thread:\n")
    print("| data | seconds | seconds / epoch | peak memory (MB) | validation loss |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for how, label in (("streamed", "`StoredPairs`, read in blocks"),
                       ("memory", "tensors in memory")):  # fmt: skip
        seconds, peak, loss = _run(epochs, store, f"train-{how}")
        print(f"| {label} | {seconds:.1f} | {seconds / epochs:.1f} | {peak:.0f} | {loss} |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
