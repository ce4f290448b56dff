r"""The worker side of :func:`~pyro_sbi.simulate`: one batch of simulations, anywhere.

:func:`run_batch` is what an executor runs: it takes and returns numpy arrays only, seeds
the global generators for each call, enforces the timeout, turns exceptions and
non-finite outputs into failed rows (rerunning a failed batched call row by row to find
the failing parameters) and checks that the simulator kept its contract. The status
codes of a row are defined here: :data:`OK`, :data:`NONFINITE`, :data:`ERROR`,
:data:`TIMEOUT`.
"""

from __future__ import annotations

__all__ = [
    "ERROR",
    "FAILURE_KINDS",
    "NONFINITE",
    "OK",
    "TIMEOUT",
    "SimulatorContractError",
    "run_batch",
    "simulator_name",
]

import contextlib
import random
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from pyro_sbi import threads
from pyro_sbi.seeds import derive

OK, NONFINITE, ERROR, TIMEOUT = 0, 1, 2, 3
FAILURE_KINDS = {NONFINITE: "nonfinite", ERROR: "error", TIMEOUT: "timeout"}
_MESSAGE_LIMIT = 4000  # characters of a traceback kept


class SimulatorContractError(ValueError):
    """The simulator broke its contract (output shape): a bug to fix, not a failure."""


class _Timeout(BaseException):
    """Raised inside a simulator call that ran out of time.

    A `BaseException`, so that a simulator's own `except Exception` does not swallow it.
    """


def run_batch(
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
            raise SimulatorContractError(
                f"batched simulator {simulator_name(simulator)} returned shape "
                f"{tuple(out.shape)} for "
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
            except SimulatorContractError:
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
        except SimulatorContractError:
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
        raise SimulatorContractError(
            f"simulator {simulator_name(simulator)} returned outputs of different shapes: "
            "x of shape "
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
        SimulatorContractError: `x` is None, not an array (ragged nested lists, objects),
            or holds complex numbers, strings or other non-real values; the message names
            the simulator, what it returned and what it must return.
    """
    expected = "x (*x_shape)" if single else f"x (n, *x_shape) with n = {theta_shape[0]}"
    where = f"simulator {simulator_name(simulator)} returned"
    given = f"for theta of shape {tuple(theta_shape)}; it must return {expected}"
    if x is None:
        raise SimulatorContractError(
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
        raise SimulatorContractError(
            f"{where} a {type(x).__name__} that is not an array of numbers ({error}) {given}, "
            "a torch tensor or numpy array with every row the same shape"
        ) from None
    if array.dtype.kind not in "biuf":
        what, fix = _KINDS.get(array.dtype.kind, (f"values of dtype {array.dtype}", ""))
        raise SimulatorContractError(
            f"{where} {what} (dtype {array.dtype}, from a {type(x).__name__}) for theta of "
            f"shape {tuple(theta_shape)}; x must hold real numbers (a bool, integer or float "
            "dtype)" + (f": {fix}" if fix else "")
        )
    return array


def simulator_name(simulator: Callable) -> str:
    """The simulator's `__name__`, or its class's for a callable object, for messages.

    Example:
        >>> simulator_name(np.sin)
        'sin'
    """
    return getattr(simulator, "__name__", type(simulator).__name__)
