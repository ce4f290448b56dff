"""Shared pieces of the benchmark tasks: the observations and a disk cache.

The sbibm tasks read their observations from `observations.json`; the tasks of the broad
suite make theirs from seeds (:func:`seeded_observation`).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

_DATA = Path(__file__).with_name("observations.json")


@functools.cache
def _table() -> dict:
    return json.loads(_DATA.read_text())


def observations(task: str, i: int) -> tuple[Tensor, Tensor]:
    """Observation `i` (1 to 10) of the sbibm benchmark and its true parameters."""
    rows = _table()[task]
    if not 1 <= i <= len(rows["observations"]):
        raise ValueError(f"{task} has observations 1 to {len(rows['observations'])}; got {i}")
    dtype = torch.get_default_dtype()
    return (
        torch.tensor(rows["observations"][i - 1], dtype=dtype),
        torch.tensor(rows["true_parameters"][i - 1], dtype=dtype),
    )


def seeded_observation(
    task: str, prior, simulator: Callable, i: int, count: int = 10
) -> tuple[Tensor, Tensor]:
    """Observation `i` (1 to `count`) made from seeds, and its true parameters.

    The true parameters are one prior draw with torch's seed `i`, the observation one
    simulation of them with seed `1000 + i`; torch's global generator is restored
    afterwards.
    """
    if not 1 <= i <= count:
        raise ValueError(f"{task} has observations 1 to {count}; got {i}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(i)
        theta = prior.sample()
        torch.manual_seed(1000 + i)
        x = simulator(theta[None])[0]
    return x, theta


def cache_folder() -> Path:
    """`$PYRO_SBI_CACHE`, or `~/.cache/pyro_sbi`."""
    return Path(os.environ.get("PYRO_SBI_CACHE", Path.home() / ".cache" / "pyro_sbi"))


def cached_reference(task: str, i: int, num_samples: int, compute: Callable[[], Tensor]) -> Tensor:
    """Reference posterior draws, computed once and kept in the cache folder."""
    path = cache_folder() / task / f"reference_{i}_{num_samples}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    samples = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".partial")
    torch.save(samples, temporary)
    temporary.replace(path)  # never a half-written file under the final name
    return samples


def simulator_model(prior, simulator: Callable, estimator, x: Tensor | None) -> Tensor:
    """`theta` from `prior`, then `x` from a simulator site with `estimator` (one draw)."""
    import pyro

    from pyro_sbi import SimulatorDistribution

    theta = pyro.sample("theta", prior)
    return pyro.sample("x", SimulatorDistribution(simulator, theta, estimator), obs=x)
