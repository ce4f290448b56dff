r"""Calling a black-box simulator over many parameters: batches, executors, seeds, failures.

A simulator is any callable. By default it is *batched*: it maps parameters
`theta (n, D)` to outputs `x (n, *x_shape)`, torch tensors or numpy arrays in and out.
With `batched=False` it maps one `theta (D,)` to one `x (*x_shape)`.

:func:`simulate` cuts the rows of `theta` into batches and runs them in-process or on
any :class:`concurrent.futures.Executor` (a process pool, Dask's
`Client.get_executor()`, Ray's executor), gathering the batches as they finish and
putting them back in the order of `theta`.

A Ray cluster needs no more than an executor whose `submit` hands the call to Ray
(`ObjectRef.future()` is a :class:`concurrent.futures.Future`)::

    class RayExecutor(concurrent.futures.Executor):
        def submit(self, fn, /, *args, **kwargs):
            return ray.remote(fn).remote(*args, **kwargs).future()

**Seeds.** With `seed=`, every simulation is reproducible whatever the executor, the
number of workers or the order in which batches finish. Each simulator call is
seeded from the root seed and the index of its first row
(:func:`pyro_sbi.seeds.derive`): before the call, torch's,
numpy's and Python's global generators are seeded with it (and restored afterwards
in-process), and a simulator with a `seed` keyword argument also receives it as
`simulator(theta, seed=...)`. A one-at-a-time simulator is therefore seeded per
parameter and its outputs do not depend on `batch_size`; a batched simulator's do.
Without `seed=`, an in-process run uses the global generators as they are, and a run
on an executor or with a store draws its root seed from torch's generator (so
`pyro.set_rng_seed` governs it).
A seeded run cuts `theta` into about a hundred batches by default whatever the
executor, so that a batched simulator gives the same results everywhere. Worker
*threads* (a `ThreadPoolExecutor`, Dask workers with several threads) share the global
generators, so there only a simulator that takes the `seed` keyword is reproducible;
worker processes (a process pool, Dask's default `LocalCluster`) have their own. Rows
appended to an existing store start a batch of their own, so for a batched simulator
they match a fresh run only when `batch_size` divides the previous length.

**Failures.** A simulation that raises, returns NaN or inf, or runs past `timeout=`
seconds is recorded (its row, the kind of failure and the message), its row of `x` is
left NaN, and the run goes on. When a batched call raises, its rows are run again one
at a time to find which parameters fail, each with a seed derived from the batch's
(:func:`pyro_sbi.seeds.derive`; the store keeps it). If more than `max_failure_fraction` of the
simulations fail, :func:`simulate` stops with a :class:`SimulationError` that shows
the first exception.

**Store.** With `store=path`, each finished batch is written to a zarr store (see
:mod:`pyro_sbi.store`); running the same call again simulates only what is missing.

**Faults.** A failure of the executor rather than of a simulation (a worker process
killed or out of memory, which breaks a process pool; Dask's `KilledWorker`; a simulator
that cannot be pickled) stops the run with a `RuntimeError` naming the rows that were not
simulated; every batch that had finished is stored first, so a rerun with the store (on a
new pool) simulates only those rows. A `KeyboardInterrupt` stops the run the same way
and is raised as it is, never recorded as a failed simulation. A simulator breaking its
contract (returning None, objects, strings, complex numbers, ragged lists, the wrong
number of rows, or another `x_shape` than before) is a bug to fix, not a failed
simulation: the run stops with a `ValueError` naming the simulator, what it returned and
what it must return. A store write that fails (a full disk) raises an `OSError` naming
the store; the batches stored before it stay readable.
"""

from __future__ import annotations

__all__ = ["SimulationError", "Simulations", "simulate"]

import inspect
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from pyro_sbi._checks import as_count
from pyro_sbi.seeds import derive
from pyro_sbi.simulation_worker import (
    ERROR,
    FAILURE_KINDS,
    OK,
    SimulatorContractError,
    run_batch,
    simulator_name,
)


class SimulationError(RuntimeError):
    """Raised when more simulations failed than `max_failure_fraction` allows."""


@dataclass
class Simulations:
    r"""The outcome of :func:`simulate`.

    Attributes:
        theta: `(n, D)` parameters, in the order given.
        x: `(n, *x_shape)` simulator outputs; rows of failed simulations are NaN.
        status: `(n,)` int8: `OK` (0), `NONFINITE` (1, NaN or inf in the output),
            `ERROR` (2, the simulator raised) or `TIMEOUT` (3).
        seed: `(n,)` int64 seed each simulation ran with (rows of one batched call share
            it; -1 when the run was not seeded).
        messages: the message (traceback) of each failed row, by row index.
        seconds: wall time of the call.
    """

    theta: Tensor
    x: Tensor
    status: Tensor
    seed: Tensor
    messages: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0

    def __len__(self) -> int:
        """Number of simulations `n`."""
        return len(self.theta)

    @property
    def ok(self) -> Tensor:
        """`(n,)` bool: which simulations succeeded."""
        return self.status == OK

    @property
    def num_failed(self) -> int:
        """Number of failed simulations."""
        return int((self.status != OK).sum())

    def counts(self) -> dict[str, int]:
        """Failed simulations by kind, e.g. `{"nonfinite": 3, "error": 1, "timeout": 0}`."""
        return {kind: int((self.status == code).sum()) for code, kind in FAILURE_KINDS.items()}

    def valid(self) -> tuple[Tensor, Tensor]:
        """`theta (m, D)` and `x (m, *x_shape)` of the `m` successful simulations."""
        return self.theta[self.ok], self.x[self.ok]

    def failures(self) -> list[tuple[int, Tensor, str, str]]:
        """`(row, theta, kind, message)` of every failed simulation."""
        rows = torch.nonzero(self.status != OK).flatten().tolist()
        return [
            (
                row,
                self.theta[row],
                FAILURE_KINDS[int(self.status[row])],
                self.messages.get(row, ""),
            )
            for row in rows
        ]

    def __str__(self) -> str:
        """One line: counts, failures by kind and rate."""
        rate = len(self) / self.seconds if self.seconds > 0 else math.inf
        failed = ", ".join(f"{count} {kind}" for kind, count in self.counts().items() if count)
        return (
            f"{len(self)} simulations in {self.seconds:.1f} s ({rate:.0f}/s), "
            f"{self.num_failed} failed" + (f" ({failed})" if failed else "")
        )

    def __repr__(self) -> str:
        """The shapes, counts and seconds, without the tensors."""
        return (
            f"Simulations(theta_shape={tuple(self.theta.shape)}, "
            f"x_shape={tuple(self.x.shape)}, num_failed={self.num_failed}, "
            f"seconds={self.seconds:.1f})"
        )


def simulate(
    simulator: Callable,
    theta: Tensor | np.ndarray,
    *,
    batch_size: int | None = None,
    batched: bool = True,
    numpy: bool = False,
    executor: Executor | None = None,
    seed: int | None = None,
    timeout: float | None = None,
    max_failure_fraction: float = 0.5,
    store: str | Path | None = None,
    progress: bool = True,
) -> Simulations:
    r"""Runs `simulator` once for each row of `theta`.

    Arguments:
        simulator: a callable `theta (n, D) -> x (n, *x_shape)`, or with
            `batched=False`, `theta (D,) -> x (*x_shape)`. It may take a `seed` keyword.
            On a process pool it must be picklable (defined at module level).
        theta: `(n, D)` parameters.
        batch_size: rows per task (per simulator call when batched). By default all
            rows in one call in-process, about four tasks per worker on an executor,
            and a hundredth of the rows with a store.
        batched: whether `simulator` takes a batch of parameters.
        numpy: give `theta` to the simulator as a numpy array instead of a tensor.
        executor: a :class:`concurrent.futures.Executor` running the batches (`None`:
            in this process).
        seed: root seed making every simulation reproducible (see the module docs).
        timeout: seconds allowed for one simulator call (one parameter vector when
            `batched=False`, a whole batch otherwise). Enforced with a timer signal in
            the main thread of a process (this one, or a worker of a process pool); elsewhere
            (e.g. Dask worker threads) the call is abandoned and keeps running in the
            background. A call stuck in compiled code that never returns to Python (and
            does not wait in a system call) is not interrupted.
        max_failure_fraction: stop with a :class:`SimulationError` once more than this
            fraction of the `n` simulations failed.
        store: a directory for a zarr store (or an open `zarr.Group`): finished batches
            are saved as they come and a rerun simulates only what is missing.
        progress: show a progress bar and a summary line.

    Returns:
        :class:`Simulations`: `theta`, `x (n, *x_shape)` (NaN rows where a simulation
        failed), the status and seed of each row, and the failure messages.

    Example:
        >>> simulator = lambda theta: theta + torch.randn_like(theta)
        >>> sims = simulate(simulator, torch.zeros(10, 2), batch_size=4, seed=0, progress=False)
        >>> sims.x.shape, sims.num_failed
        (torch.Size([10, 2]), 0)
    """
    start_time = time.perf_counter()
    theta = torch.as_tensor(theta).detach().cpu()
    if theta.dim() != 2:
        raise ValueError(f"simulate expects theta of shape (n, D); got {tuple(theta.shape)}")
    if batch_size is not None:
        batch_size = as_count(batch_size, "simulate: batch_size")
    if not 0.0 <= max_failure_fraction <= 1.0:
        raise ValueError(f"max_failure_fraction must lie in [0, 1]; got {max_failure_fraction}")
    if timeout is not None and timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds; got {timeout}")
    run = _Run(simulator, theta, batch_size, batched, executor, seed, store)
    batches = _run(
        simulator, run.tasks(timeout), executor, batched=batched, numpy=numpy,
        pass_seed=_takes_seed(simulator),
    )  # fmt: skip
    bar = tqdm(
        total=run.n, initial=run.done, desc=f"simulating {run.name}", unit="sim",
        disable=not progress, smoothing=0.1,
    )  # fmt: skip
    bar.set_postfix(failed=run.num_failed)
    try:
        for start, stop, result in _resumable(batches, run.name, run.status, run.stored):
            failed_here = run.add(start, stop, result)
            bar.update(stop - start)
            if failed_here:
                bar.set_postfix(failed=run.num_failed)
            if run.num_failed > max_failure_fraction * run.n:
                raise SimulationError(
                    _too_many(
                        run.name, run.num_failed, run.n, max_failure_fraction, run.first_error
                    )  # fmt: skip
                )
    finally:
        bar.close()
    result = run.result(time.perf_counter() - start_time)
    if progress:
        print(f"{run.name}: {result}")
    return result


class _Run:
    """The state of one :func:`simulate` call: its plan, then the batches as they come.

    Planning fixes the root seed and the batch size (the store's, when resuming), reads
    what a store holds already, and cuts the rows still missing into batches with one
    seed each; :meth:`add` puts a finished batch in place (and in the store).
    """

    def __init__(self, simulator, theta, batch_size, batched, executor, seed, store) -> None:
        n = self.n = len(theta)
        self.theta, self.name = theta, simulator_name(simulator)
        self.seeded = seed is not None or executor is not None or store is not None
        if self.seeded and seed is None and store is None:
            seed = int(torch.randint(2**62, ()))
        self.stored = None
        if store is not None:
            from pyro_sbi.store import SimulationStore

            self.stored = SimulationStore.open(
                store, simulator=simulator, theta=theta, seed=seed, batch_size=batch_size,
                default_batch_size=_default_batch_size(n, batched, seeded=True),
                batched=batched,
            )  # fmt: skip
            seed, batch_size = self.stored.seed, self.stored.batch_size
        elif batch_size is None:
            batch_size = _default_batch_size(n, batched, seeded=self.seeded)

        self.status = torch.full((n,), -1, dtype=torch.int8)
        self.seeds = torch.full((n,), -1, dtype=torch.int64)
        self.messages: dict[int, str] = {}
        self.x: Tensor | None = None
        self.x_source = None  # where the shape of x was first seen, for messages
        self.num_failed, self.done, self.first_error = 0, 0, None
        if self.stored is None:
            self.ranges = [
                (start, min(start + batch_size, n)) for start in range(0, n, batch_size)
            ]
        else:
            self.x, self.status, self.seeds, self.messages = self.stored.read(n)
            self.x_source = f"the rows in the store {self.stored.where}"
            self.ranges = _pending_ranges(self.status, batch_size)
            self.num_failed = int(((self.status != OK) & (self.status >= 0)).sum())
            self.done = int((self.status >= 0).sum())
            self.first_error = _first_error(self.messages, self.status)
        self.kept = self.x is not None  # the shape of x comes from the store
        if not self.ranges and self.x is None:
            self.x = torch.empty(n, 0)  # nothing to simulate (n = 0)
        self.row_seeds = {}
        if self.seeded:
            for start, stop in self.ranges:
                self.row_seeds[start] = _seeds(seed, start, stop, batched)
                self.seeds[start:stop] = torch.from_numpy(self.row_seeds[start])
        if self.stored is not None and self.ranges:
            self.stored.plan(self.seeds)

    def tasks(self, timeout: float | None) -> Iterator[tuple]:
        """`(start, stop, theta rows, seeds, timeout)` per batch still to simulate."""
        for start, stop in self.ranges:
            rows = self.theta[start:stop].numpy().copy()
            yield start, stop, rows, self.row_seeds.get(start), timeout

    def add(self, start: int, stop: int, result: tuple) -> int:
        """Puts the finished batch `start:stop` in place; returns its number of failures."""
        batch_x, batch_status, batch_messages, retried = result
        if retried is not None:  # a failed batched call was rerun row by row
            self.seeds[start:stop] = torch.from_numpy(retried)
        if batch_x is not None:
            self._place(start, stop, batch_x)
        self.status[start:stop] = torch.as_tensor(batch_status)
        for row, message in batch_messages.items():
            self.messages[start + row] = message
            error = self.first_error
            if batch_status[row] == ERROR and (error is None or error[0] != ERROR):
                self.first_error = (ERROR, message)
            self.first_error = self.first_error or (int(batch_status[row]), message)
        if self.stored is not None:
            retried_seeds = None if retried is None else self.seeds[start:stop]
            self.stored.write(start, stop, batch_x, batch_status, batch_messages, retried_seeds)
        failed = int(np.count_nonzero(batch_status))  # OK is 0
        self.num_failed += failed
        return failed

    def _place(self, start: int, stop: int, batch_x: np.ndarray) -> None:
        if self.x is None:
            self.x_source = f"rows {start}:{stop}"
            if stop - start == self.n:  # one batch: keep its array
                self.x = torch.from_numpy(batch_x)
                return
            shape = (self.n, *batch_x.shape[1:])
            self.x = torch.full(shape, math.nan, dtype=torch.get_default_dtype())
        if tuple(batch_x.shape[1:]) != tuple(self.x.shape[1:]):
            raise ValueError(
                f"simulator {self.name} returned outputs of different shapes: x of shape "
                f"{tuple(self.x.shape[1:])} per row for {self.x_source}, but "
                f"{tuple(batch_x.shape[1:])} for rows {start}:{stop}; it must return "
                "the same x_shape for every theta"
                + (". Use another store path for another simulator" if self.kept else "")
            )
        self.x[start:stop] = torch.as_tensor(batch_x)

    def result(self, seconds: float) -> Simulations:
        """The finished :class:`Simulations`, or a SimulationError when none succeeded."""
        if self.x is None:  # nothing succeeded: the output shape is unknown
            message = f"all {self.n} simulations of {self.name} failed"
            if self.first_error is not None:
                what = "exception" if self.first_error[0] == ERROR else "failure"
                message += f". The first {what}:\n{self.first_error[1]}"
            raise SimulationError(message)
        x = self.x.to(torch.get_default_dtype())
        return Simulations(self.theta, x, self.status, self.seeds, self.messages, seconds)


def _resumable(batches: Iterator, name: str, status: Tensor, stored) -> Iterator:
    """`batches`, with an executor's failure told as the rows missing and how to resume."""
    try:
        yield from batches
    except _ExecutorFailure as failure:
        where = None if stored is None else stored.where
        raise RuntimeError(failure.message(name, status < 0, where)) from failure.error


def _first_error(messages: dict[int, str], status: Tensor) -> tuple[int, str] | None:
    """`(kind, message)` of the first exception, or of the first failure when none raised."""
    rows = sorted(messages)
    errors = [row for row in rows if status[row] == ERROR]
    row = errors[0] if errors else rows[0] if rows else None
    return None if row is None else (int(status[row]), messages[row])


def _too_many(
    name: str, failed: int, n: int, fraction: float, first: tuple[int, str] | None
) -> str:
    message = (
        f"{failed} of {n} simulations of {name} failed, more than max_failure_fraction={fraction}"
    )
    if first is not None:
        what = "exception" if first[0] == ERROR else "failure"
        message += f". The first {what}:\n{first[1]}"
    return message


def _default_batch_size(n: int, batched: bool, *, seeded: bool) -> int:
    """A hundredth of the rows when seeded (whatever the executor, so that results agree)."""
    if seeded:
        return max(1, math.ceil(n / 100))
    return max(n, 1) if batched else 1


def _pending_ranges(status: Tensor, batch_size: int) -> list[tuple[int, int]]:
    """Runs of not-yet-simulated rows, cut so that none crosses a multiple of `batch_size`."""
    pending = (status < 0).numpy()
    row = np.arange(len(pending))
    before = np.concatenate([[False], pending[:-1]])
    after = np.concatenate([pending[1:], [False]])
    first = pending & (~before | (row % batch_size == 0))
    last = pending & (~after | ((row + 1) % batch_size == 0))
    return list(
        zip(np.flatnonzero(first).tolist(), (np.flatnonzero(last) + 1).tolist(), strict=True)
    )


def _seeds(root: int, start: int, stop: int, batched: bool) -> np.ndarray:
    """`(stop - start,)` int64 seeds: one per row, or the first row's for a batched call."""
    if batched:
        return np.full(stop - start, derive(root, start), dtype=np.int64)
    return np.array([derive(root, row) for row in range(start, stop)], dtype=np.int64)


def _takes_seed(simulator: Callable) -> bool:
    try:
        return "seed" in inspect.signature(simulator).parameters
    except (TypeError, ValueError):
        return False


def _run(simulator, tasks, executor, **options) -> Iterator[tuple[int, int, tuple]]:
    """Yields `(start, stop, result)` per batch as batches finish.

    When a batch raises on an executor, the batches that had finished are yielded first
    (`as_completed` hands out the ones done at its start in any order), then the error is
    raised: an :class:`_ExecutorFailure` when the executor could not run the batch (a dead
    worker, a broken pool, an unpicklable simulator), the error itself otherwise (the
    simulator's contract broken, KeyboardInterrupt).
    """
    options["dtype"] = str(torch.get_default_dtype()).removeprefix("torch.")
    if executor is None:
        for start, stop, theta, seeds, timeout in tasks:
            yield start, stop, run_batch(simulator, theta, seeds, timeout, **options)
        return
    futures = {}
    try:
        for start, stop, theta, seeds, timeout in tasks:
            try:
                future = executor.submit(run_batch, simulator, theta, seeds, timeout, **options)
            except Exception as error:  # a broken pool, or Dask pickling the task at once
                raise _ExecutorFailure(error) from error
            futures[future] = (start, stop)
        waiting = dict(futures)
        for future in as_completed(futures):
            start, stop = waiting.pop(future)
            try:
                result = future.result()
            except BaseException as error:
                for other in [other for other in waiting if _succeeded(other)]:
                    yield (*waiting.pop(other), other.result())
                if isinstance(error, Exception) and not isinstance(error, SimulatorContractError):
                    raise _ExecutorFailure(error) from error
                raise
            yield start, stop, result
    finally:
        for future in futures:
            future.cancel()


def _succeeded(future) -> bool:
    """Whether `future` has finished with a result (without waiting)."""
    return future.done() and not future.cancelled() and future.exception() is None


class _ExecutorFailure(Exception):
    """The executor could not run a batch; `simulate` says which rows are missing."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error

    def message(self, name: str, missing: Tensor, where: str | None) -> str:
        """What happened, the rows not simulated, and how to resume."""
        error = self.error
        if "pickl" in repr(error).lower():
            hint = "the simulator must be picklable: define it at module level"
        elif isinstance(error, BrokenProcessPool):
            hint = (
                "a worker process died (killed, out of memory, or a crash in the simulator) and "
                "the process pool is broken: rerun on a new pool"
            )
        else:
            hint = "a worker may have died (out of memory, or a crash in the simulator)"
        rows = _row_runs(missing)
        count = int(missing.sum())
        message = (
            f"the executor could not run a batch of {name} ({error!r}); {hint}. {count} of "
            f"{len(missing)} simulations were not done: rows {rows}"
        )
        if where is None:
            return message + "; pass store=path to keep finished simulations when a run stops"
        return (
            message + f". The {len(missing) - count} finished ones are in the store {where}: "
            "rerun the same call to simulate only the missing rows"
        )


def _row_runs(mask: Tensor, limit: int = 10) -> str:
    """The runs of true entries of `mask (n,)` as slices, e.g. `"16:40"` or `"4:8, 12:40"`."""
    flags = np.concatenate([[False], mask.numpy().astype(bool), [False]])
    edges = np.flatnonzero(flags[1:] != flags[:-1]).reshape(-1, 2)
    runs = [f"{start}:{stop}" for start, stop in edges[:limit].tolist()]
    return ", ".join(runs) + (f" and {len(edges) - limit} more runs" if len(edges) > limit else "")
