"""Faults survived: dead workers, hung simulators, a full disk, Ctrl-C in simulation and training.

After each fault the store holds every finished simulation once, and a rerun with the
same store simulates exactly the rows that are missing. The simulators write the rows
of every call that returned to a log file, so calls made in worker processes are counted
too. Each docstring names the bug the test was seen to catch.
"""

import contextlib
import errno
from concurrent.futures import Executor, ProcessPoolExecutor, wait

import pyro
import pyro.distributions as dist
import pytest
import torch
import zuko
from simulators import Faulty, logged_rows

from pyro_sbi import NLE, Ensemble, SimulatorDistribution, UntrainedEstimatorError, simulate, train
from pyro_sbi.fitting import TrainingInterrupted
from pyro_sbi.simulation_worker import OK, TIMEOUT
from pyro_sbi.store import SimulationStore

zarr = pytest.importorskip("zarr")

N, BATCH, SEED = 40, 4, 3


def indexed_theta(n=N):
    """`(n, 2)`: the row index, then a standard normal draw."""
    noise = torch.randn(n, generator=torch.Generator().manual_seed(0))
    return torch.stack([torch.arange(float(n)), noise], -1)


def run(simulator, theta, store=None, **options):
    options = dict(batch_size=BATCH, seed=SEED, progress=False, **options)
    return simulate(simulator, theta, store=store, **options)


def reference(theta, **options):
    """The uninterrupted run, in this process, without a store."""
    return run(Faulty(-1, "kill"), theta, **options)


def stored(path):
    """`x` and `status (n,)` as a fresh reader sees them."""
    x, status, _, _ = SimulationStore(zarr.open_group(str(path), mode="r")).read()
    return x, status


def runs(mask):
    """The runs of true entries as slices, as in the messages: `"16:40"`."""
    rows = torch.nonzero(mask).flatten().tolist()
    starts = [row for row in rows if row - 1 not in rows]
    stops = [row + 1 for row in rows if row + 1 not in rows]
    return ", ".join(f"{a}:{b}" for a, b in zip(starts, stops, strict=True))


class SettledPool(Executor):
    """A process pool whose last submit returns once every batch has finished or failed.

    The run then finds all of its batches done at once, which `as_completed` hands out in
    no particular order: the finished ones mixed with those the dead worker broke.
    """

    def __init__(self, pool, num_tasks):
        self.pool, self.num_tasks, self.futures = pool, num_tasks, []

    def submit(self, fn, /, *args, **kwargs):
        self.futures.append(self.pool.submit(fn, *args, **kwargs))
        if len(self.futures) == self.num_tasks:
            wait(self.futures)
        return self.futures[-1]


# a worker killed ------------------------------------------------------------------------


def test_a_killed_pool_worker_stops_the_run_naming_the_lost_rows_and_a_rerun_completes(tmp_path):
    """Catches a dead worker's rows recorded as failed simulations (the rerun skips them),
    finished batches dropped when the pool broke, and a message without the lost rows."""
    theta, store = indexed_theta(), tmp_path / "s"
    simulator = Faulty(17, "kill", marker=tmp_path / "killed", log=tmp_path / "first")
    with ProcessPoolExecutor(1) as pool, pytest.raises(RuntimeError) as info:
        run(simulator, theta, store, executor=SettledPool(pool, N // BATCH))
    # One worker runs the batches in order and dies in the fifth (rows 16:20).
    assert sorted(logged_rows(tmp_path / "first")) == list(range(16))
    x, status = stored(store)
    assert torch.equal(status >= 0, torch.arange(N) < 16) and (status[:16] == OK).all()
    assert torch.equal(x[:16], reference(theta).x[:16])
    message = str(info.value)
    assert "BrokenProcessPool" in message and "a worker process died" in message
    assert f"24 of {N} simulations were not done: rows 16:40" in message
    assert f"The 16 finished ones are in the store {store}: rerun" in message

    simulator = Faulty(17, "kill", marker=tmp_path / "killed", log=tmp_path / "rerun")
    with ProcessPoolExecutor(2) as pool:
        resumed = run(simulator, theta, store, executor=pool)
    assert sorted(logged_rows(tmp_path / "rerun")) == list(range(16, N))
    assert torch.equal(resumed.x, reference(theta).x) and resumed.num_failed == 0


@pytest.fixture(scope="module")
def dask_client():
    """A client of a local cluster of two single-threaded worker processes.

    A worker, and the one started in place of a killed one, imports the engine (and torch)
    before it takes tasks.
    """
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            preload=["pyro_sbi.simulation"],
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def allow_failures(dask_scheduler, count):
    """How many workers may die running a task before Dask gives up on it (KilledWorker)."""
    dask_scheduler.allowed_failures = count


@pytest.mark.parametrize("allowed_failures", [3, 0], ids=["retried", "given-up"])
def test_a_killed_dask_worker_loses_no_finished_simulation(
    tmp_path, dask_client, allowed_failures
):
    """Dask reruns the killed batch, or gives up on it (KilledWorker): the store holds the
    finished batches, and a rerun simulates the others only. Catches batches put back in
    the order they finished (the retried batch lands on other rows) and a KilledWorker
    recorded as failed rows (the rerun skips them)."""
    theta, store = indexed_theta(), tmp_path / "s"
    simulator = Faulty(17, "kill", marker=tmp_path / "killed", log=tmp_path / "first")
    dask_client.run_on_scheduler(allow_failures, count=allowed_failures)
    try:
        if allowed_failures:  # Dask reruns the batch on the other worker
            first = run(simulator, theta, store, executor=dask_client.get_executor())
            assert first.num_failed == 0
        else:  # Dask gives up on the batch at once
            with pytest.raises(RuntimeError, match="KilledWorker") as info:
                run(simulator, theta, store, executor=dask_client.get_executor())
    finally:
        dask_client.run_on_scheduler(allow_failures, count=3)
    assert (tmp_path / "killed").exists()
    x, status = stored(store)
    done = status >= 0
    assert (status[done] == OK).all() and done.all() == bool(allowed_failures)
    if done.any():  # Dask may lose the batches the killed worker had finished, too
        assert torch.equal(x[done], reference(theta).x[done])
    else:
        assert x is None
    if not allowed_failures:
        message = str(info.value)
        assert f"simulations were not done: rows {runs(~done)}" in message
        assert f"in the store {store}: rerun" in message

    simulator = Faulty(17, "kill", marker=tmp_path / "killed", log=tmp_path / "rerun")
    resumed = run(simulator, theta, store, executor=dask_client.get_executor())
    assert sorted(logged_rows(tmp_path / "rerun")) == torch.nonzero(~done).flatten().tolist()
    assert torch.equal(resumed.x, reference(theta).x) and resumed.num_failed == 0


# a simulator hanging ----------------------------------------------------------------------


@pytest.mark.parametrize("batched", [False, True], ids=["one-at-a-time", "batched"])
def test_a_simulator_hanging_in_a_process_pool_times_out(tmp_path, batched):
    """Catches a timeout left behind in the calling process: the pool's hung call runs to
    its end (20 s) and its -1 output is taken as a success."""
    theta, store = indexed_theta(12), tmp_path / "s"
    simulator = Faulty(5, "hang", hang=20.0)
    options = dict(batched=batched, timeout=0.5, max_failure_fraction=0.5)
    with ProcessPoolExecutor(2) as pool:
        out = run(simulator, theta, store, executor=pool, **options)
    hung = torch.arange(12) == 5 if not batched else (torch.arange(12) // BATCH) == 1
    assert torch.equal(out.status == TIMEOUT, hung) and torch.equal(out.ok, ~hung)
    assert torch.isnan(out.x[hung]).all() and not (out.x == -1).any()
    assert torch.equal(out.x[~hung], reference(theta, batched=batched).x[~hung])
    assert "timed out after 0.5 s" in out.messages[5]
    assert torch.equal(stored(store)[1], out.status)  # stored as failures, not retried


# the disk full ----------------------------------------------------------------------------


def fail_writes(monkeypatch, prefix, nth, containing=b""):
    """The `nth` write of a key starting with `prefix` and holding `containing` fails (ENOSPC)."""
    original, count = zarr.storage.LocalStore.set, [0]

    async def set(self, key, value):
        if key.startswith(prefix) and containing in value.to_bytes():
            count[0] += 1
            if count[0] == nth:
                raise OSError(errno.ENOSPC, "No space left on device", str(self.root / key))
        return await original(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", set)


@pytest.mark.parametrize(
    "prefix, containing",
    [("x/c", b""), ("status/c", b""), ("zarr.json", b"cannot simulate row 13")],
    ids=["x", "status", "messages"],
)
def test_a_full_disk_stops_the_run_naming_the_store_and_a_rerun_completes(
    tmp_path, monkeypatch, prefix, containing
):
    """Catches a write error that loses the earlier chunks (a chunk rewritten in place, or
    the status committed before x) and one that does not name the store (zarr's bare
    OSError)."""
    import pyro_sbi.store

    monkeypatch.setattr(pyro_sbi.store, "_ROWS_PER_CHUNK", 2 * BATCH)  # five chunks
    theta, store = indexed_theta(), tmp_path / "s"
    fail_writes(monkeypatch, prefix, nth=4 if containing == b"" else 1, containing=containing)
    simulator = Faulty(13, "raise", log=tmp_path / "first")
    with pytest.raises(OSError, match="No space left") as info:
        run(simulator, theta, store, batched=False)
    assert info.value.errno == errno.ENOSPC
    assert f"could not write rows 12:16 to the simulation store {store}" in str(info.value)
    monkeypatch.undo()
    x, status = stored(store)
    assert torch.equal(status >= 0, torch.arange(N) < 12) and (status[:12] == OK).all()
    expected = reference(theta, batched=False)
    assert torch.equal(x[:12], expected.x[:12])

    resumed = run(Faulty(13, "raise", log=tmp_path / "rerun"), theta, store, batched=False)
    assert sorted(logged_rows(tmp_path / "rerun")) == [r for r in range(12, N) if r != 13]
    assert torch.equal(resumed.ok, torch.arange(N) != 13)
    assert "cannot simulate row 13" in resumed.messages[13]
    assert torch.equal(resumed.x[resumed.ok], expected.x[resumed.ok])


@pytest.mark.parametrize(
    "prefix, containing, what",
    [("zarr.json", b'"pyro_sbi"', "a new store"), ("theta/c", b"", "the parameters")],
    ids=["creating", "parameters"],
)
def test_a_full_disk_before_any_simulation_is_named_and_a_rerun_starts_afresh(
    tmp_path, monkeypatch, prefix, containing, what
):
    """Catches zarr's bare OSError, and a store left half-made that a rerun refuses."""
    theta, store = indexed_theta(), tmp_path / "s"
    fail_writes(monkeypatch, prefix, nth=1, containing=containing)
    with pytest.raises(OSError, match=f"could not write {what} to the simulation store {store}"):
        run(Faulty(-1, "kill", log=tmp_path / "first"), theta, store)
    monkeypatch.undo()
    assert logged_rows(tmp_path / "first") == []
    resumed = run(Faulty(-1, "kill", log=tmp_path / "rerun"), theta, store)
    assert sorted(logged_rows(tmp_path / "rerun")) == list(range(N))
    assert torch.equal(resumed.x, reference(theta).x)


# Ctrl-C -----------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", [False, True], ids=["in-process", "process-pool"])
def test_ctrl_c_in_a_simulator_stops_the_run_and_a_rerun_resumes(tmp_path, pool):
    """Catches a KeyboardInterrupt taken for a failed row (the run goes on, row 13 is stored
    as an error) and a batch stored with the rows done before the interrupt."""
    theta, store = indexed_theta(), tmp_path / "s"
    simulator = Faulty(13, "interrupt", marker=tmp_path / "pressed", log=tmp_path / "first")
    with ProcessPoolExecutor(1) if pool else contextlib.nullcontext() as executor:
        with pytest.raises(KeyboardInterrupt):
            run(simulator, theta, store, batched=False, executor=executor)
    # Row 12 was simulated, then Ctrl-C; a pool's worker may have run on with later batches.
    assert set(logged_rows(tmp_path / "first")) >= set(range(13))
    x, status = stored(store)
    done = status >= 0
    assert done[:12].all() and not done[12:16].any() and (status[done] == OK).all()
    assert pool or not done[16:].any()
    expected = reference(theta, batched=False)
    assert torch.equal(x[done], expected.x[done])

    simulator = Faulty(13, "interrupt", marker=tmp_path / "pressed", log=tmp_path / "rerun")
    resumed = run(simulator, theta, store, batched=False)
    assert sorted(logged_rows(tmp_path / "rerun")) == torch.nonzero(~done).flatten().tolist()
    assert torch.equal(resumed.x, expected.x) and resumed.num_failed == 0


# Ctrl-C during training ---------------------------------------------------------------


class Interrupting(NLE):
    """An NLE whose loss raises KeyboardInterrupt at its `at`-th training call."""

    def __init__(self, at: int) -> None:
        super().__init__(zuko.flows.MAF)
        self.at, self.calls = at, 0

    def loss(self, theta, x):
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                raise KeyboardInterrupt
        return super().loss(theta, x)


def training_pairs():
    theta = torch.randn(600, 1, generator=torch.Generator().manual_seed(0))
    return theta, theta + 0.3 * torch.randn(600, 1, generator=torch.Generator().manual_seed(1))


FIT = dict(batch_size=90, seed=0, progress=False, patience=100)  # 6 training steps an epoch


def test_ctrl_c_during_training_keeps_the_best_epoch_so_far():
    """Catches the weights of the step that was interrupted kept (half-way through an
    epoch) and an interrupted estimator left marked untrained although usable."""
    theta, x = training_pairs()
    interrupted = Interrupting(at=6 * 3 + 2)  # in the 4th epoch
    with pytest.raises(TrainingInterrupted) as info:
        interrupted.fit(theta, x, max_epochs=10, **FIT)
    history = info.value.history
    assert history.interrupted and history.epochs == 3 and not interrupted.training
    three = Interrupting(at=-1)
    assert three.fit(theta, x, max_epochs=3, **FIT).best_epoch == history.best_epoch
    points = torch.linspace(-2, 2, 9).unsqueeze(-1)
    assert torch.equal(interrupted.log_prob(points, points), three.log_prob(points, points))
    assert not any(p.requires_grad for p in interrupted.parameters())


def test_ctrl_c_in_the_first_epoch_leaves_the_estimator_untrained():
    theta, x = training_pairs()
    interrupted = Interrupting(at=3)
    with pytest.raises(KeyboardInterrupt) as info:
        interrupted.fit(theta, x, max_epochs=10, **FIT)
    assert not isinstance(info.value, TrainingInterrupted)
    with pytest.raises(UntrainedEstimatorError):
        interrupted.log_prob(theta[:2], theta[:2])


def test_ctrl_c_in_an_ensemble_leaves_it_untrained():
    """Catches an ensemble marked trained with members that never trained."""
    theta, x = training_pairs()
    members = iter([Interrupting(at=-1), Interrupting(at=8)])
    ensemble = Ensemble(lambda: next(members), size=2)
    with pytest.raises(KeyboardInterrupt, match="member 2 of 2"):
        ensemble.fit(theta, x, max_epochs=3, **FIT)
    assert not ensemble.trained


def test_ctrl_c_during_train_keeps_the_store_and_a_rerun_simulates_nothing(tmp_path):
    calls = []

    def simulator(theta):
        calls.append(len(theta))
        return theta + 0.3 * torch.randn_like(theta)

    def model(estimator):
        def run(x=None):
            mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
            with pyro.plate("trials", 5):
                return pyro.sample(
                    "x", SimulatorDistribution(simulator, mu.unsqueeze(-1), estimator), obs=x
                )

        return run

    options = dict(num_simulations=300, seed=0, store=tmp_path, progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(model(Interrupting(at=2)), fit_options={"max_epochs": 3}, **options)
    simulated = sum(calls)
    assert simulated >= 300
    likelihood = Interrupting(at=-1)
    train(model(likelihood), fit_options={"max_epochs": 3}, **options)
    assert sum(calls) == simulated and likelihood.trained
