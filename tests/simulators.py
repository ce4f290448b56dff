"""Simulators importable by worker processes (a process pool or Dask pickles them by name)."""

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch


def gaussian(theta):
    """x ~ N(theta, 0.5^2), one column per parameter."""
    return theta + 0.5 * torch.randn_like(theta)


def pairs(n, dim=1, simulator=gaussian):
    """`n` parameters `(n, dim)` from N(0, 1) and their simulations."""
    theta = torch.randn(n, dim)
    return theta, simulator(theta)


def noisy(theta):
    """Uses torch's, numpy's and Python's global generators."""
    return theta + torch.randn_like(theta) + torch.from_numpy(np.random.randn(*theta.shape))


def noisy_one(theta):
    """One parameter vector at a time."""
    return theta + torch.randn_like(theta)


def with_seed(theta, seed):
    """Draws from its own generator, seeded by the keyword."""
    generator = np.random.default_rng(seed)
    return theta.numpy() + generator.normal(size=theta.shape)


def slow_one(theta):
    """About 20 ms per parameter vector."""
    time.sleep(0.02)
    return theta + torch.randn_like(theta)


def late_first(theta):
    """The first batches finish last."""
    time.sleep(0.05 * float(theta[0, 0] < 2))
    return theta * 2


def troubled(theta):
    """One at a time: raises for theta > 0.625, NaN below -0.625, sleeps for |theta| < 0.125."""
    t = float(theta[0])
    if t > 0.625:
        raise RuntimeError(f"cannot simulate {t:.2f}")
    if t < -0.625:
        return torch.tensor([float("nan"), 0.0])
    if abs(t) < 0.125:
        time.sleep(5.0)
    return torch.stack([theta[0], theta[0] ** 2])


class Troubled:
    """`troubled`, counting its calls; `finished` counts the long calls that ran to the end.

    With a timeout shorter than the sleep, every long call is interrupted: `finished`
    stays 0 however slow the machine is.
    """

    def __init__(self):
        self.calls, self.finished = 0, 0

    def __call__(self, theta):
        self.calls += 1
        if abs(float(theta[0])) >= 0.125:
            return troubled(theta)
        time.sleep(30.0)
        self.finished += 1
        return torch.stack([theta[0], theta[0] ** 2])


class Halting:
    """`noisy`, batched; the call after `halt_after` creates the file `ready` and blocks forever.

    A parent process waits for `ready`, then kills the process at a known point: inside the
    simulator, with exactly `halt_after` batches stored.
    """

    def __init__(self, halt_after=None, ready=None):
        self.calls, self.halt_after, self.ready = 0, halt_after, ready

    def __call__(self, theta):
        self.calls += 1
        if self.halt_after is not None and self.calls > self.halt_after:
            Path(self.ready).touch()
            threading.Event().wait()  # until the process is killed
        return noisy(theta)


def slow_batch(theta):
    """A batched simulator taking 30 ms per call."""
    time.sleep(0.03)
    return noisy(theta)


class Interruptible:
    """`noisy`, counting the rows it simulated; interrupted after `stop_after` calls."""

    def __init__(self, stop_after=None):
        self.calls, self.rows, self.stop_after = 0, 0, stop_after

    def __call__(self, theta):
        self.calls += 1
        if self.stop_after is not None and self.calls > self.stop_after:
            raise KeyboardInterrupt  # not a simulation failure: it stops the run
        self.rows += len(theta)
        return noisy(theta)


class Other(Interruptible):
    """Another simulator."""


class Columns(Interruptible):
    """`Interruptible` whose x has `width` columns: one simulator, edited between two runs."""

    def __init__(self, width, stop_after=None):
        super().__init__(stop_after)
        self.width = width

    def __call__(self, theta):
        return super().__call__(theta)[:, :1].repeat(1, self.width)


def shift(theta):
    """x ~ N(theta, 0.3^2 I)."""
    return theta + 0.3 * torch.randn_like(theta)


class Faulty:
    """`noisy`, batched or one at a time, with a fault at one row; column 0 of theta is the row.

    `fault` is what the call holding row `row` does: `"kill"` its own process with SIGKILL,
    `"interrupt"` (raise KeyboardInterrupt), `"raise"` (a RuntimeError) or `"hang"` (sleep
    `hang` seconds, then return -1 everywhere, so that a call the timeout did not stop
    shows in the output). With a
    `marker` file the fault happens only while the file does not exist, and creates it: once,
    whichever process makes the call. Each call that returns appends its rows to `log`, so
    the calls of worker processes can be counted.
    """

    def __init__(self, row, fault, *, marker=None, log=None, hang=20.0):
        self.row, self.fault, self.marker, self.log, self.hang = row, fault, marker, log, hang

    def __call__(self, theta):
        rows = theta[:, 0] if theta.dim() == 2 else theta[:1]
        if (rows == self.row).any() and self._first():
            if self.fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.fault == "interrupt":
                raise KeyboardInterrupt
            if self.fault == "raise":
                raise RuntimeError(f"cannot simulate row {self.row}")
            time.sleep(self.hang)
            return torch.full_like(theta, -1.0)
        x = noisy(theta)
        if self.log is not None:
            with open(self.log, "a") as log:  # one short appended line: atomic
                log.write(" ".join(str(int(row)) for row in rows) + "\n")
        return x

    def _first(self):
        if self.marker is None:
            return True
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True


def logged_rows(log):
    """The rows appended to `log` by `Faulty`, in the order the calls returned."""
    path = Path(log)
    return [int(row) for row in path.read_text().split()] if path.exists() else []
