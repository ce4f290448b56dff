"""Simulators importable by worker processes (a process pool or Dask pickles them by name)."""

import threading
import time
from pathlib import Path

import numpy as np
import torch


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


def shift(theta):
    """x ~ N(theta, 0.3^2 I)."""
    return theta + 0.3 * torch.randn_like(theta)
