import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import simulators
import torch

from pyro_sbi import simulate
from pyro_sbi.store import SimulationStore

zarr = pytest.importorskip("zarr")

TESTS = Path(__file__).parent


def test_a_rerun_with_the_store_simulates_nothing_and_returns_the_same(tmp_path):
    theta = torch.randn(50, 2)
    simulator = simulators.Interruptible()
    first = simulate(simulator, theta, batch_size=8, seed=1, store=tmp_path / "s", progress=False)
    again = simulate(simulator, theta, batch_size=8, seed=1, store=tmp_path / "s", progress=False)
    assert simulator.rows == 50
    assert torch.equal(first.x, again.x) and torch.equal(first.seed, again.seed)
    group = zarr.open_group(str(tmp_path / "s"), mode="r")
    assert group["theta"].shape == (50, 2) and (group["status"][:] == 0).all()
    assert group.attrs["pyro_sbi"]["seed"] == 1


def test_an_interrupted_run_resumes_with_identical_results(tmp_path):
    theta = torch.randn(60, 2)
    reference = simulate(simulators.Interruptible(), theta, batch_size=10, seed=4, progress=False)
    with pytest.raises(KeyboardInterrupt):
        simulate(
            simulators.Interruptible(stop_after=3), theta, batch_size=10, seed=4,
            store=tmp_path / "s", progress=False,
        )  # fmt: skip
    _, status, _, _ = SimulationStore(zarr.open_group(str(tmp_path / "s"))).read()
    assert int((status >= 0).sum()) == 30

    simulator = simulators.Interruptible()
    resumed = simulate(simulator, theta, store=tmp_path / "s", progress=False)  # stored seed
    assert simulator.rows == 30
    assert torch.equal(resumed.x, reference.x)


def test_failures_are_stored_and_not_retried(tmp_path):
    """Catches a rerun that simulates failed rows again (a timeout waited for once more)."""
    theta = torch.linspace(-1.0, 1.0, 41).unsqueeze(-1)
    options = dict(batched=False, timeout=0.5, seed=0, max_failure_fraction=0.6, progress=False)
    first = simulate(simulators.Troubled(), theta, store=tmp_path / "s", **options)
    simulator = simulators.Troubled()
    again = simulate(simulator, theta, store=tmp_path / "s", **options)
    assert simulator.calls == 0  # nothing simulated, no timeout waited for
    assert first.counts() == {"nonfinite": 8, "error": 8, "timeout": 5}
    assert torch.equal(first.status, again.status) and again.counts() == first.counts()
    assert "cannot simulate" in again.messages[int(torch.nonzero(again.status == 2)[0])]


def test_more_parameters_are_appended(tmp_path):
    theta = torch.randn(30, 2)
    simulator = simulators.Interruptible()
    simulate(simulator, theta[:20], batch_size=8, seed=2, store=tmp_path / "s", progress=False)
    out = simulate(simulator, theta, batch_size=8, seed=2, store=tmp_path / "s", progress=False)
    assert simulator.rows == 30 and out.num_failed == 0 and torch.isfinite(out.x).all()
    fewer = simulate(simulator, theta[:10], store=tmp_path / "s", progress=False)
    assert simulator.rows == 30 and torch.equal(fewer.x, out.x[:10])


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(simulator=simulators.Other()), "made with the simulator simulators.Interruptible"),
        (dict(theta=torch.randn(10, 3)), "2 parameters, not 3"),
        (dict(theta=torch.randn(10, 2)), "holds other parameters"),
        (dict(seed=8), "seed=7, not 8"),
        (dict(batch_size=3), "batch_size=5, not 3"),
    ],
)
def test_a_store_made_differently_is_refused(tmp_path, change, message):
    theta = torch.randn(10, 2)
    options = dict(simulator=simulators.Interruptible(), theta=theta, batch_size=5, seed=7)
    simulate(**options, store=tmp_path / "s", progress=False)
    with pytest.raises(ValueError, match=message):
        simulate(**{**options, **change}, store=tmp_path / "s", progress=False)


def test_a_store_of_another_x_shape_is_refused_naming_both_shapes(tmp_path):
    """Catches new rows of another shape written into the stored x (zarr broadcasts one
    column into two) or half a batch stored before the error."""
    theta, store = torch.randn(12, 2), tmp_path / "s"
    options = dict(batch_size=4, seed=0, store=store, progress=False)
    with pytest.raises(KeyboardInterrupt):
        simulate(simulators.Columns(2, stop_after=1), theta, **options)
    for width in (3, 1):
        with pytest.raises(
            ValueError,
            match=rf"simulator Columns returned outputs of different shapes: x of shape \(2,\) "
            rf"per row for the rows in the store {store}, but \({width},\) for rows 4:8.*"
            "Use another store path for another simulator",
        ):
            simulate(simulators.Columns(width), theta, **options)
    _, status, _, _ = SimulationStore(zarr.open_group(str(store), mode="r")).read()
    assert (status[:4] == 0).all() and (status[4:] == -1).all()


def test_a_store_of_another_format_is_refused(tmp_path):
    """Catches a store of another version of the package read as if it were this one's."""
    simulate(simulators.noisy, torch.zeros(4, 1), seed=0, store=tmp_path / "s", progress=False)
    group = zarr.open_group(str(tmp_path / "s"))
    group.attrs["pyro_sbi"] = {**group.attrs["pyro_sbi"], "format": 2}
    with pytest.raises(ValueError, match=r"s is a simulation store of format 2; this version"):
        simulate(simulators.noisy, torch.zeros(4, 1), seed=0, store=tmp_path / "s", progress=False)


def test_a_folder_that_is_not_a_store_is_refused(tmp_path):
    zarr.open_group(str(tmp_path / "s"), mode="w").create_array("data", shape=(2,), dtype="f8")
    with pytest.raises(ValueError, match="not a pyro_sbi simulation store"):
        simulate(simulators.noisy, torch.zeros(2, 1), store=tmp_path / "s", progress=False)


KILLED_RUN = """
import sys
sys.path.insert(0, {tests!r})
import torch
import simulators
from pyro_sbi import simulate

torch.manual_seed(0)
theta = torch.randn({n}, 2)
simulator = simulators.Halting(halt_after=8, ready={ready!r})
simulate(simulator, theta, batch_size=5, seed=3, store={store!r}, progress=False)
"""


def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    """Catches batches lost or corrupted by a kill, and a resume that does not continue."""
    n, store, ready = 200, str(tmp_path / "s"), tmp_path / "ready"
    script = tmp_path / "run.py"
    source = KILLED_RUN.format(tests=str(TESTS), n=n, store=store, ready=str(ready))
    script.write_text(textwrap.dedent(source))
    child = subprocess.Popen([sys.executable, str(script)])
    try:
        # The child blocks inside its ninth simulator call; a generous limit if it never does.
        deadline = time.monotonic() + 300
        while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), f"the run never reached its ninth batch (exit {child.poll()})"
        child.send_signal(signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    _, status, _, _ = SimulationStore(zarr.open_group(store)).read()
    assert int((status >= 0).sum()) == 40  # eight batches of five

    torch.manual_seed(0)
    theta = torch.randn(n, 2)
    simulator = simulators.Halting()
    resumed = simulate(simulator, theta, batch_size=5, seed=3, store=store, progress=False)
    assert simulator.calls == (n - 40) // 5
    reference = simulate(simulators.Halting(), theta, batch_size=5, seed=3, progress=False)
    assert torch.equal(resumed.x, reference.x)
    group = zarr.open_group(store, mode="r")
    assert group["theta"].shape == (n, 2) and torch.equal(
        torch.as_tensor(group["theta"][:]).to(theta.dtype), theta
    )
