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

__all__ = [
    "ERROR",
    "FAILURE_KINDS",
    "NONFINITE",
    "OK",
    "TIMEOUT",
    "SimulationError",
    "Simulations",
    "simulate",
]

import contextlib
import inspect
import math
import numbers
import operator
import random
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from pyro_sbi import threads
from pyro_sbi.seeds import derive

OK, NONFINITE, ERROR, TIMEOUT = 0, 1, 2, 3
FAILURE_KINDS = {NONFINITE: "nonfinite", ERROR: "error", TIMEOUT: "timeout"}
_MESSAGE_LIMIT = 4000


def _as_count(value: object, name: str, *, minimum: int = 1) -> int:
    """A count argument as an `int`: an integer, or a float with an integral value.

    Scientists write budgets as `1e4`; it becomes `10000`. A non-integral or
    non-finite float, a string, a bool or a count below `minimum` is refused.

    Arguments:
        value: the count as given.
        name: the function and argument, for the message (e.g. `"train: num_simulations"`).
        minimum: the smallest count allowed.

    Returns:
        The count.

    Raises:
        TypeError: `value` is not a number (a bool counts as none).
        ValueError: `value` is not a whole number, or is below `minimum`.

    Example:
        >>> _as_count(1e4, "train: num_simulations", minimum=2)
        10000
    """
    expected = f"{name} must be a whole number >= {minimum}"
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{expected} (such as 1000 or 1e3); got {value!r} of type {type(value).__name__}"
        )
    try:
        count = operator.index(value)
    except TypeError:  # a float: only an integral value is a count
        if not float(value).is_integer():
            raise ValueError(
                f"{expected}; got {value!r}, which is not a whole number: pass an integer"
            ) from None
        count = int(value)
    if count < minimum:
        raise ValueError(f"{expected}; got {value!r}")
    return count


class SimulationError(RuntimeError):
    """Raised when more simulations failed than `max_failure_fraction` allows."""


class _SimulatorContractError(ValueError):
    """The simulator broke its contract (output shape): a bug to fix, not a failure."""


class _Timeout(BaseException):
    """Raised inside a simulator call that ran out of time.

    A `BaseException`, so that a simulator's own `except Exception` does not swallow it.
    """


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
        batch_size = _as_count(batch_size, "simulate: batch_size")
    if not 0.0 <= max_failure_fraction <= 1.0:
        raise ValueError(f"max_failure_fraction must lie in [0, 1]; got {max_failure_fraction}")
    if timeout is not None and timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds; got {timeout}")
    n = len(theta)
    name = _name(simulator)
    seeded = seed is not None or executor is not None or store is not None
    if seeded and seed is None and store is None:
        seed = int(torch.randint(2**62, ()))

    stored = None
    if store is not None:
        from pyro_sbi.store import SimulationStore

        stored = SimulationStore.open(
            store, simulator=simulator, theta=theta, seed=seed, batch_size=batch_size,
            default_batch_size=_default_batch_size(n, batched, seeded=True),
            batched=batched,
        )  # fmt: skip
        seed, batch_size = stored.seed, stored.batch_size
    elif batch_size is None:
        batch_size = _default_batch_size(n, batched, seeded=seeded)

    status = torch.full((n,), -1, dtype=torch.int8)
    seeds = torch.full((n,), -1, dtype=torch.int64)
    messages: dict[int, str] = {}
    x: Tensor | None = None
    x_source = None  # where the shape of x was first seen, for messages
    if stored is not None:
        x, status, seeds, messages = stored.read(n)
        x_source = f"the rows in the store {stored.where}"
    kept = x is not None  # the shape of x comes from the store
    if stored is None:
        ranges = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    else:
        ranges = _pending_ranges(status, batch_size)
    if not ranges and x is None:
        x = torch.empty(n, 0)  # nothing to simulate (n = 0)

    pass_seed = _takes_seed(simulator)
    row_seeds = (
        {} if not seeded else {start: _seeds(seed, start, stop, batched) for start, stop in ranges}
    )
    for start, stop in ranges if seeded else ():
        seeds[start:stop] = torch.from_numpy(row_seeds[start])
    if stored is not None and ranges:
        stored.plan(seeds)
    tasks = (
        (start, stop, theta[start:stop].numpy().copy(), row_seeds.get(start), timeout)
        for start, stop in ranges
    )
    num_failed, done, first_error = 0, 0, None
    if stored is not None:
        num_failed = int(((status != OK) & (status >= 0)).sum())
        done = int((status >= 0).sum())
        first_error = _first_error(messages, status)
    bar = tqdm(
        total=n, initial=done, desc=f"simulating {name}", unit="sim", disable=not progress,
        smoothing=0.1,
    )  # fmt: skip
    bar.set_postfix(failed=num_failed)
    batches = _run(simulator, tasks, executor, batched=batched, numpy=numpy, pass_seed=pass_seed)
    try:
        for start, stop, result in _resumable(batches, name, status, stored):
            batch_x, batch_status, batch_messages, retried = result
            if retried is not None:  # a failed batched call was rerun row by row
                seeds[start:stop] = torch.from_numpy(retried)
            fresh = x is None
            if batch_x is not None and x is None:
                x_source = f"rows {start}:{stop}"
                if stop - start == n:  # one batch: keep its array
                    x = torch.from_numpy(batch_x)
                else:
                    x = torch.full((n, *batch_x.shape[1:]), math.nan, dtype=_torch_dtype())
            if batch_x is not None and not (fresh and stop - start == n):
                if tuple(batch_x.shape[1:]) != tuple(x.shape[1:]):
                    raise ValueError(
                        f"simulator {name} returned outputs of different shapes: x of shape "
                        f"{tuple(x.shape[1:])} per row for {x_source}, but "
                        f"{tuple(batch_x.shape[1:])} for rows {start}:{stop}; it must return "
                        "the same x_shape for every theta"
                        + (". Use another store path for another simulator" if kept else "")
                    )
                x[start:stop] = torch.as_tensor(batch_x)
            status[start:stop] = torch.as_tensor(batch_status)
            for row, message in batch_messages.items():
                messages[start + row] = message
                if batch_status[row] == ERROR and (first_error is None or first_error[0] != ERROR):
                    first_error = (ERROR, message)
                first_error = first_error or (int(batch_status[row]), message)
            if stored is not None:
                retried_seeds = None if retried is None else seeds[start:stop]
                stored.write(start, stop, batch_x, batch_status, batch_messages, retried_seeds)
            failed_here = int(np.count_nonzero(batch_status))  # OK is 0
            num_failed += failed_here
            bar.update(stop - start)
            if failed_here:
                bar.set_postfix(failed=num_failed)
            if num_failed > max_failure_fraction * n:
                raise SimulationError(
                    _too_many(name, num_failed, n, max_failure_fraction, first_error)
                )
    finally:
        bar.close()
    if x is None:  # nothing succeeded: the output shape is unknown
        message = f"all {n} simulations of {name} failed"
        if first_error is not None:
            what = "exception" if first_error[0] == ERROR else "failure"
            message += f". The first {what}:\n{first_error[1]}"
        raise SimulationError(message)
    result = Simulations(
        theta, x.to(torch.get_default_dtype()), status, seeds, messages,
        time.perf_counter() - start_time,
    )  # fmt: skip
    if progress:
        print(f"{name}: {result}")
    return result


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
            yield start, stop, _run_batch(simulator, theta, seeds, timeout, **options)
        return
    futures = {}
    try:
        for start, stop, theta, seeds, timeout in tasks:
            try:
                future = executor.submit(_run_batch, simulator, theta, seeds, timeout, **options)
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
                if isinstance(error, Exception) and not isinstance(error, _SimulatorContractError):
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


def _run_batch(
    simulator: Callable,
    theta: np.ndarray,
    seeds: np.ndarray | None,
    timeout: float | None,
    *,
    batched: bool,
    numpy: bool,
    pass_seed: bool,
    dtype: str,
) -> tuple[np.ndarray | None, np.ndarray, dict[int, str], np.ndarray | None]:
    """Simulates `theta (b, D)`; returns `x (b, *x_shape)` or None, status `(b,)`, messages.

    Runs wherever the executor puts it, so it takes and returns numpy arrays only. The
    last element gives the seeds used when a failed batched call was rerun row by row.
    In a forked worker it runs with one torch thread (:func:`pyro_sbi.threads.fork_safe`).
    """
    with threads.fork_safe():
        return _simulate_batch(simulator, theta, seeds, timeout, batched=batched,
                               numpy=numpy, pass_seed=pass_seed, dtype=dtype)  # fmt: skip


def _simulate_batch(simulator, theta, seeds, timeout, *, batched, numpy, pass_seed, dtype):
    dtype = np.dtype(dtype)
    retried = None
    b = len(theta)
    status = np.full(b, OK, dtype=np.int8)
    messages: dict[int, str] = {}
    outputs: list[np.ndarray | None] = [None] * b

    def call(rows: np.ndarray, seed: int | None, single: bool) -> np.ndarray:
        arg = rows[0] if single else rows
        arg = arg if numpy else torch.from_numpy(arg)
        kwargs = {"seed": seed} if pass_seed and seed is not None else {}
        with _seeded(seed):
            out = _with_timeout(lambda: simulator(arg, **kwargs), timeout)
        out = _as_array(out, simulator, rows.shape[1:] if single else rows.shape, single)
        if single:
            return out[None]
        if out.ndim == 0 or out.shape[0] != len(rows):
            raise _SimulatorContractError(
                f"batched simulator {_name(simulator)} returned shape {tuple(out.shape)} for "
                f"theta of shape {tuple(rows.shape)}; it must return (n, *x_shape) with "
                f"n = {len(rows)}. Pass batched=False for a simulator that takes one parameter "
                "vector at a time."
            )
        return out

    def rows_one_by_one(rows: range, seed_of) -> None:
        for row in rows:
            try:
                outputs[row] = call(theta[row : row + 1], seed_of(row), single=not batched)[0]
            except _Timeout:
                status[row], messages[row] = TIMEOUT, f"timed out after {timeout} s"
            except _SimulatorContractError:
                raise
            except Exception:
                status[row], messages[row] = ERROR, _format_exception()

    if batched:
        seed = None if seeds is None else int(seeds[0])
        try:
            return (*_checked(call(theta, seed, single=False), status, messages, dtype), None)
        except _Timeout:
            status[:] = TIMEOUT
            messages.update(dict.fromkeys(range(b), f"batch timed out after {timeout} s"))
        except _SimulatorContractError:
            raise
        except Exception:  # find the rows that fail, each seeded on its own
            if b == 1:
                status[0], messages[0] = ERROR, _format_exception()
            else:
                retry = None if seed is None else [derive(seed, row) for row in range(b)]
                rows_one_by_one(range(b), lambda row: None if retry is None else retry[row])
                if retry is not None:
                    retried = np.array(retry, np.int64)
    else:
        rows_one_by_one(range(b), lambda row: None if seeds is None else int(seeds[row]))

    shapes = {out.shape for out in outputs if out is not None}
    if len(shapes) > 1:
        present = [(row, out.shape) for row, out in enumerate(outputs) if out is not None]
        (a, first), (b, second) = present[0], next(p for p in present if p[1] != present[0][1])
        raise _SimulatorContractError(
            f"simulator {_name(simulator)} returned outputs of different shapes: x of shape "
            f"{first} for theta {theta[a].tolist()} and {second} for theta {theta[b].tolist()}; "
            "it must return the same x_shape for every theta"
        )
    if not shapes:
        return None, status, messages, retried
    x = np.full((b, *shapes.pop()), np.nan, dtype=dtype)
    for row, out in enumerate(outputs):
        if out is not None:
            x[row] = out
    return (*_checked(x, status, messages, dtype), retried)


def _checked(x: np.ndarray, status: np.ndarray, messages: dict[int, str], dtype) -> tuple:
    """Marks rows of `x (b, *x_shape)` holding NaN or inf as failed (status still OK)."""
    x = x.astype(dtype, copy=False)
    if np.isfinite(x).all():  # the common case, without a reduction per row
        return x, status, messages
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(1) & (status == OK)
    if bad.any():
        x = x.copy()  # never write into the simulator's own array
        x[bad] = np.nan
        status[bad] = NONFINITE
        messages.update(
            dict.fromkeys(np.flatnonzero(bad).tolist(), "the output contains NaN or inf")
        )
    return x, status, messages


def _torch_dtype() -> torch.dtype:
    return torch.get_default_dtype()


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Seeds torch's (CPU, and CUDA once initialised), numpy's and Python's global generators.

    Their states are restored afterwards.
    """
    if seed is None:
        yield
        return
    generator = torch.default_generator
    states = generator.get_state(), np.random.get_state(), random.getstate()
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    cuda_states = torch.cuda.get_rng_state_all() if cuda else None
    generator.manual_seed(seed)  # torch.manual_seed would also visit every lazy device
    if cuda:
        torch.cuda.manual_seed_all(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        generator.set_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])
        if cuda:
            torch.cuda.set_rng_state_all(cuda_states)


def _with_timeout(function: Callable, timeout: float | None):
    if timeout is None:
        return function()
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):

        def expire(signum, frame):
            raise _Timeout

        previous = signal.signal(signal.SIGALRM, expire)
        outer, interval = signal.setitimer(signal.ITIMER_REAL, timeout)
        started = time.monotonic()
        try:
            return function()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            if outer > 0:  # a timer of the caller's: give back what is left of it
                left = outer - (time.monotonic() - started)
                signal.setitimer(signal.ITIMER_REAL, max(left, 1e-6), interval)
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = function()
        except BaseException as error:  # handed to the calling thread
            outcome["error"] = error

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise _Timeout
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _format_exception() -> str:
    text = "".join(traceback.format_exc())
    return text if len(text) <= _MESSAGE_LIMIT else "..." + text[-_MESSAGE_LIMIT:]


_KINDS = {
    "c": ("complex numbers", "return the real and imaginary parts as separate columns"),
    "O": ("Python objects", "return a tensor or numpy array of numbers, every row the same shape"),
    "U": ("strings", "encode categories as integers"),
    "S": ("bytes", "encode categories as integers"),
}


def _as_array(x, simulator: Callable, theta_shape: tuple, single: bool) -> np.ndarray:
    """A simulator's output as a numpy array of real numbers (bool, integer or float).

    Raises:
        _SimulatorContractError: `x` is None, not an array (ragged nested lists, objects),
            or holds complex numbers, strings or other non-real values; the message names
            the simulator, what it returned and what it must return.
    """
    expected = "x (*x_shape)" if single else f"x (n, *x_shape) with n = {theta_shape[0]}"
    where = f"simulator {_name(simulator)} returned"
    given = f"for theta of shape {tuple(theta_shape)}; it must return {expected}"
    if x is None:
        raise _SimulatorContractError(
            f"{where} None {given}, a torch tensor or numpy array of real numbers"
        )
    try:
        if isinstance(x, Tensor):
            x = x.detach().cpu()
            x = x.float() if x.dtype == torch.bfloat16 else x.resolve_conj().resolve_neg()
            array = x.numpy()
        else:
            array = np.asarray(x)
    except Exception as error:  # ragged nested lists, tensors numpy cannot take
        raise _SimulatorContractError(
            f"{where} a {type(x).__name__} that is not an array of numbers ({error}) {given}, "
            "a torch tensor or numpy array with every row the same shape"
        ) from None
    if array.dtype.kind not in "biuf":
        what, fix = _KINDS.get(array.dtype.kind, (f"values of dtype {array.dtype}", ""))
        raise _SimulatorContractError(
            f"{where} {what} (dtype {array.dtype}, from a {type(x).__name__}) for theta of "
            f"shape {tuple(theta_shape)}; x must hold real numbers (a bool, integer or float "
            "dtype)" + (f": {fix}" if fix else "")
        )
    return array


def _name(simulator: Callable) -> str:
    return getattr(simulator, "__name__", type(simulator).__name__)
