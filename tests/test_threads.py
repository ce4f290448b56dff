"""Torch threads inside the library's loops: one by default, the user's count when chosen."""

import subprocess
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_sbi import SliceMCMC, fit, threads


@pytest.fixture(autouse=True)
def _clean_threads(monkeypatch):
    for name in ("PYRO_SBI_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_AT_IMPORT", before)  # the count seen at import
    yield
    torch.set_num_threads(before)


class Recording(nn.Module):
    """A tiny estimator whose loss records torch's thread count."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.seen = set()

    def loss(self, theta, x):
        self.seen.add(torch.get_num_threads())
        return ((x - self.w) ** 2).mean()


def _fit_threads(**options) -> set[int]:
    estimator = Recording()
    theta = torch.randn(50, 1)
    fit(estimator, theta, theta, max_epochs=2, progress=False, **options)
    return estimator.seen


def test_fit_uses_one_thread_unless_chosen_and_restores_the_callers_count(monkeypatch):
    torch.set_num_threads(3)
    monkeypatch.setattr(threads, "_AT_IMPORT", 3)  # as if torch's default were 3
    assert _fit_threads() == {1}
    assert torch.get_num_threads() == 3


def test_fit_keeps_a_count_set_after_import():
    torch.set_num_threads(threads._AT_IMPORT + 1)
    assert _fit_threads() == {threads._AT_IMPORT + 1}


@pytest.mark.parametrize("variable", ["OMP_NUM_THREADS", "MKL_NUM_THREADS"])
def test_fit_keeps_torchs_count_when_the_environment_sets_one(monkeypatch, variable):
    torch.set_num_threads(2)
    monkeypatch.setattr(threads, "_AT_IMPORT", 2)
    monkeypatch.setenv(variable, "2")
    assert _fit_threads() == {2}


def test_pyro_sbi_num_threads_sets_the_count(monkeypatch):
    monkeypatch.setenv("PYRO_SBI_NUM_THREADS", "2")
    assert _fit_threads() == {2}
    monkeypatch.setenv("PYRO_SBI_NUM_THREADS", "two")
    with pytest.raises(ValueError, match="PYRO_SBI_NUM_THREADS must be a positive integer"):
        _fit_threads()


def test_an_explicit_count_wins_and_bad_counts_are_refused():
    assert _fit_threads(num_threads=2) == {2}
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_threads must be a positive integer"):
            _fit_threads(num_threads=bad)


def test_the_count_is_restored_after_an_error():
    torch.set_num_threads(2)
    with pytest.raises(RuntimeError), threads.num_threads(1):
        raise RuntimeError
    assert torch.get_num_threads() == 2


def test_slice_mcmc_keeps_the_callers_count_unless_given_one(monkeypatch):
    seen = set()

    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        seen.add(torch.get_num_threads())
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    torch.set_num_threads(2)
    monkeypatch.setattr(threads, "_AT_IMPORT", 2)
    SliceMCMC(model, num_samples=2, warmup_steps=2, num_chains=4, num_candidates=20,
              progress=False).run(torch.tensor(0.0))  # fmt: skip
    assert seen == {2}
    seen.clear()
    SliceMCMC(model, num_samples=2, warmup_steps=2, num_chains=4, num_candidates=20,
              num_threads=1, progress=False).run(torch.tensor(0.0))  # fmt: skip
    assert seen == {1} and torch.get_num_threads() == 2


FORKED_WORKERS = """
import multiprocessing, sys
from concurrent.futures import ProcessPoolExecutor

import pyro, pyro.distributions as dist, torch
from pyro_sbi import simulate
from pyro_sbi.diagnostics import sbc

torch.set_num_threads(2)

def simulator(theta):  # a large elementwise log: torch hands it to OpenMP threads
    return theta + torch.rand(len(theta), 200_000).log().mean(-1, keepdim=True)

def model(x=None):
    theta = pyro.sample("theta", dist.Normal(0.0, 1.0))
    return pyro.sample("x", dist.Normal(theta, 1.0), obs=x)

def inference(conditioned, args, kwargs):
    torch.rand(2_000_000).log()
    return {"theta": torch.randn(10)}

torch.rand(2_000_000).log()  # the parent's OpenMP threads exist before the fork
with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
    result = simulate(simulator, torch.zeros(8, 1), executor=pool, batch_size=4,
                      progress=False)
    ranks = sbc(model, num_datasets=4, num_draws=10, observed=["x"], inference=inference,
                executor=pool, seed=0, progress=False).ranks
print("done", tuple(result.x.shape), ranks.shape, torch.get_num_threads())
"""


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method on Linux")
def test_forked_workers_do_not_hang_on_the_parents_openmp_threads():
    """Simulations and SBC data sets on a forked pool after the parent used threads."""
    try:
        run = subprocess.run(
            [sys.executable, "-c", FORKED_WORKERS], capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        pytest.fail("forked workers hung in torch's OpenMP thread pool")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["done", "(8,", "1)", "(4,", "1)", "2"], run.stdout
