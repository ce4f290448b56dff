import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import simulators
import torch

from pyro_sbi import simulate
from pyro_sbi.seeds import derive
from pyro_sbi.simulation import SimulationError
from pyro_sbi.store import SimulationStore


def batched(theta):
    return torch.stack([theta.sum(-1), theta.prod(-1)], -1)


def test_batched_in_batches_keeps_order():
    theta = torch.arange(20.0).reshape(10, 2)
    calls = []

    def recording(t):
        calls.append(len(t))
        return batched(t)

    x = simulate(recording, theta, batch_size=4, progress=False).x
    assert calls == [4, 4, 2]
    assert torch.equal(x, batched(theta))


def test_one_at_a_time_and_numpy():
    theta = torch.randn(7, 3)

    def single(t):
        assert isinstance(t, np.ndarray) and t.shape == (3,)
        return np.array([[t.sum(), 1.0], [0.0, t.max()]])

    x = simulate(single, theta, batched=False, numpy=True, progress=False).x
    assert x.shape == (7, 2, 2)
    assert x.dtype == torch.get_default_dtype()
    assert torch.allclose(x[:, 0, 0], theta.sum(-1))


def test_accepts_numpy_theta():
    x = simulate(batched, np.ones((5, 2)), progress=False).x
    assert torch.equal(x, torch.tensor([[2.0, 1.0]] * 5))


def test_detaches_theta():
    theta = torch.randn(4, 2, requires_grad=True)
    assert not simulate(batched, theta, progress=False).x.requires_grad


@pytest.mark.parametrize("theta", [torch.zeros(3), torch.zeros(2, 3, 4)])
def test_rejects_theta_without_batch_and_parameter_dims(theta):
    with pytest.raises(ValueError, match=r"theta of shape \(n, D\)"):
        simulate(batched, theta, progress=False)


def test_rejects_simulator_returning_wrong_batch():
    with pytest.raises(ValueError, match="batched=False"):
        simulate(lambda t: t[0], torch.zeros(3, 2), progress=False)


# a simulator breaking its contract: a clear error, and the store keeps whole batches only


def good_then(bad, batched=True):
    """A simulator returning theta for rows 0:4 (column 0 is the row) and `bad(theta)` after."""

    def simulator(theta):
        return theta.clone() if float(theta.flatten()[0]) < 4 else bad(theta)

    simulator.__name__ = bad.__name__
    return simulator


def drops_a_row(theta):
    return theta[:-1]


def sums_all(theta):
    return theta.sum()


def complex_x(theta):
    return theta.to(torch.complex64)


def a_dict(theta):
    return {"x": theta}


def strings(theta):
    return np.array([["low", "high"]] * len(theta))


def ragged(theta):
    return [[1.0, 2.0], [3.0]] * (len(theta) // 2)


def nothing(theta):
    return None


def three_columns(theta):
    return torch.zeros(len(theta), 3)


def one_nothing(theta):
    return None


def one_longer(theta):
    return torch.cat([theta, theta[:1]]) if float(theta[0]) == 5 else theta.clone()


EXPECTED = r"it must return x \(n, \*x_shape\) with n = 4"
CONTRACT = {  # simulator, batched, what the error says
    "wrong batch size": (
        drops_a_row, True,
        r"batched simulator drops_a_row returned shape \(3, 2\) for theta of shape \(4, 2\); "
        r"it must return \(n, \*x_shape\) with n = 4",
    ),
    "a scalar": (sums_all, True, r"sums_all returned shape \(\) for theta of shape \(4, 2\)"),
    "complex": (
        complex_x, True,
        r"simulator complex_x returned complex numbers \(dtype complex64, from a Tensor\) for "
        r"theta of shape \(4, 2\); x must hold real numbers \(a bool, integer or float dtype\): "
        "return the real and imaginary parts as separate columns",
    ),
    "a Python object": (
        a_dict, True,
        r"simulator a_dict returned Python objects \(dtype object, from a dict\) for theta of "
        r"shape \(4, 2\); x must hold real numbers",
    ),
    "strings": (
        strings, True,
        r"simulator strings returned strings \(dtype <U4, from a ndarray\) for theta of shape "
        r"\(4, 2\); x must hold real numbers .*: encode categories as integers",
    ),
    "ragged lists": (
        ragged, True,
        r"simulator ragged returned a list that is not an array of numbers \(.*inhomogeneous.*\) "
        rf"for theta of shape \(4, 2\); {EXPECTED}, a torch tensor or numpy array with every "
        "row the same shape",
    ),
    "None": (
        nothing, True, rf"simulator nothing returned None for theta of shape \(4, 2\); {EXPECTED}"
    ),
    "another shape later": (
        three_columns, True,
        r"simulator three_columns returned outputs of different shapes: x of shape \(2,\) per "
        r"row for rows 0:4, but \(3,\) for rows 4:8; it must return the same x_shape",
    ),
    "None, one at a time": (
        one_nothing, False,
        r"simulator one_nothing returned None for theta of shape \(2,\); it must return x "
        r"\(\*x_shape\)",
    ),
    "another shape in a batch, one at a time": (
        one_longer, False,
        r"simulator one_longer returned outputs of different shapes: x of shape \(2,\) for "
        r"theta \[4.0, 4.0\] and \(3,\) for theta \[5.0, 5.0\]",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", CONTRACT)
def test_a_simulator_breaking_its_contract_gets_a_clear_error_and_no_half_batch(tmp_path, case):
    """Catches a bad output taken for a failed simulation (recorded, the run goes on), cast
    silently (complex to real, its imaginary part dropped), or written to the store."""
    zarr = pytest.importorskip("zarr")
    bad, batched, message = CONTRACT[case]
    theta = torch.arange(12.0).unsqueeze(-1).repeat(1, 2)
    with pytest.raises(ValueError, match=message):
        simulate(
            good_then(bad), theta, batched=batched, batch_size=4, seed=0,
            store=tmp_path / "s", progress=False,
        )  # fmt: skip
    x, status, _, _ = SimulationStore(zarr.open_group(str(tmp_path / "s"), mode="r")).read()
    assert torch.equal(status, torch.tensor([0] * 4 + [-1] * 8, dtype=torch.int8))
    assert torch.equal(x[:4], theta[:4]) and torch.isnan(x[4:]).all()


@pytest.mark.parametrize("dtype", [np.bool_, np.int64, np.uint8, np.float16])
def test_integer_and_boolean_outputs_are_numbers(dtype):
    out = simulate(lambda t: (t.numpy() > 0).astype(dtype), torch.ones(3, 2), progress=False)
    assert out.num_failed == 0 and torch.equal(out.x, torch.ones(3, 2))


def test_a_simulator_raising_on_some_rows_has_them_recorded_and_stored(tmp_path):
    """The failure policy: the rows that raise are failures of their own, the run goes on,
    a rerun does not try them again; past max_failure_fraction the run stops, naming the
    simulator and the first exception. Catches a batch's error failing its good rows."""

    calls = []

    def picky(theta):
        calls.append(len(theta))
        if (theta[:, 0] % 3 == 0).any():
            raise ValueError("no multiple of three")
        return theta.clone()

    theta = torch.arange(12.0).unsqueeze(-1).repeat(1, 2)
    options = dict(batch_size=4, seed=0, store=tmp_path / "s", progress=False)
    out = simulate(picky, theta, **options)
    assert torch.equal(out.ok, theta[:, 0] % 3 != 0) and out.counts()["error"] == 4
    assert "no multiple of three" in out.messages[3]
    assert calls == [4, 1, 1, 1, 1] * 3  # each batch, then its rows one at a time
    again = simulate(picky, theta, **options)
    assert len(calls) == 15 and torch.equal(again.status, out.status)
    with pytest.raises(
        SimulationError, match=r"(?s)4 of 12 simulations of picky failed.*no multiple of three"
    ):
        simulate(picky, theta, batch_size=4, max_failure_fraction=0.25, progress=False)


# seeds and executors ------------------------------------------------------------------


def test_same_seed_same_simulations_and_global_state_untouched():
    theta = torch.randn(30, 2)
    before = torch.get_rng_state(), np.random.get_state()[1].copy()
    a = simulate(simulators.noisy, theta, batch_size=7, seed=5, progress=False)
    assert torch.equal(torch.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1])
    b = simulate(simulators.noisy, theta, batch_size=7, seed=5, progress=False)
    c = simulate(simulators.noisy, theta, batch_size=7, seed=6, progress=False)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    assert torch.equal(a.seed[:7], a.seed[:1].expand(7))  # one seed per batched call
    assert len(torch.unique(a.seed)) == 5


def test_one_at_a_time_does_not_depend_on_batch_size():
    theta = torch.randn(12, 2)
    a = simulate(simulators.noisy_one, theta, batched=False, batch_size=1, seed=0, progress=False)
    b = simulate(simulators.noisy_one, theta, batched=False, batch_size=5, seed=0, progress=False)
    assert torch.equal(a.x, b.x)
    assert len(torch.unique(a.seed)) == 12


def test_simulator_with_seed_keyword_receives_it():
    theta = torch.zeros(6, 1)
    a = simulate(simulators.with_seed, theta, batch_size=2, seed=1, progress=False)
    expected = [np.random.default_rng(int(s)).normal() for s in a.seed[::2]]
    assert torch.allclose(a.x[::2, 0], torch.tensor(expected, dtype=a.x.dtype))


def test_unseeded_runs_follow_the_global_generator():
    theta = torch.zeros(5, 1)
    torch.manual_seed(3)
    a = simulate(simulators.noisy_one, theta, batched=False, progress=False)
    torch.manual_seed(3)
    b = simulate(simulators.noisy_one, theta, batched=False, progress=False)
    assert torch.equal(a.x, b.x)
    assert (a.seed == -1).all()


def test_process_pool_gives_the_in_process_results_in_theta_order():
    theta = torch.arange(8.0).reshape(8, 1).repeat(1, 2)
    with ProcessPoolExecutor(2) as pool:
        out = simulate(simulators.late_first, theta, batch_size=2, executor=pool, progress=False)
    assert torch.equal(out.x, theta * 2)
    theta = torch.randn(40, 2)
    local = simulate(simulators.noisy, theta, batch_size=3, seed=11, progress=False)
    with ProcessPoolExecutor(2) as pool:
        remote = simulate(
            simulators.noisy, theta, batch_size=3, seed=11, executor=pool, progress=False
        )
    assert torch.equal(local.x, remote.x)


def test_dask_cluster_gives_the_in_process_results():
    distributed = pytest.importorskip("distributed")
    theta = torch.randn(40, 2)
    local = simulate(simulators.noisy, theta, batch_size=3, seed=11, progress=False)
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    with cluster, distributed.Client(cluster) as client:
        remote = simulate(
            simulators.noisy,
            theta,
            batch_size=3,
            seed=11,
            executor=client.get_executor(),
            progress=False,
        )
    assert torch.equal(local.x, remote.x)


def test_unpicklable_simulator_on_a_process_pool_gets_a_clear_error():
    with ProcessPoolExecutor(1) as pool, pytest.raises(RuntimeError, match="picklable"):
        simulate(lambda t: t, torch.zeros(4, 1), executor=pool, progress=False)


# failures -------------------------------------------------------------------------------


def troubled_theta():
    # 8 raise (> 0.625), 8 NaN (< -0.625), 5 sleep past the timeout (|t| < 0.125), 20 fine
    return torch.linspace(-1.0, 1.0, 41).unsqueeze(-1)


# The long calls sleep 30 s and the timeout is 0.5 s; the other calls take microseconds.


def test_failures_are_recorded_and_counted_exactly():
    """Catches a timeout that waits for the call to end, or that never fires."""
    theta, simulator = troubled_theta(), simulators.Troubled()
    out = simulate(
        simulator, theta, batched=False, timeout=0.5, seed=0, max_failure_fraction=0.6,
        progress=False,
    )  # fmt: skip
    t = theta[:, 0]
    assert out.counts() == {
        "nonfinite": int((t < -0.625).sum()),
        "error": int((t > 0.625).sum()),
        "timeout": int((t.abs() < 0.125).sum()),
    }
    assert out.counts() == {"nonfinite": 8, "error": 8, "timeout": 5}
    assert torch.equal(out.ok, (t.abs() <= 0.625) & (t.abs() >= 0.125))
    assert torch.isnan(out.x[~out.ok]).all() and torch.isfinite(out.x[out.ok]).all()
    kept_theta, kept_x = out.valid()
    assert torch.allclose(kept_x[:, 1], kept_theta[:, 0] ** 2)
    row, failed_theta, kind, message = next(f for f in out.failures() if f[2] == "error")
    assert failed_theta[0] > 0.625 and "cannot simulate" in message
    assert simulator.calls == 41
    assert simulator.finished == 0  # the five long calls were interrupted, not waited for


def test_too_many_failures_stop_with_the_first_exception():
    with pytest.raises(
        SimulationError, match=r"(?s)21 of 41 .*=0.5.*first exception.*cannot simulate"
    ):
        simulate(
            simulators.Troubled(), troubled_theta(), batched=False, timeout=0.5,
            max_failure_fraction=0.5, progress=False,
        )  # fmt: skip


def test_a_batched_call_that_raises_is_retried_row_by_row():
    def fragile(theta):
        if (theta > 0.5).any():
            raise ValueError("too large")
        return theta * 3

    theta = torch.linspace(0, 1, 11).unsqueeze(-1)
    out = simulate(fragile, theta, batch_size=4, seed=0, progress=False)
    assert torch.equal(out.ok, theta[:, 0] <= 0.5)
    assert torch.equal(out.x[out.ok], 3 * theta[out.ok])
    # rows 4-7 and 8-10 were retried, each with its own seed derived from its batch's
    retried = [derive(derive(0, start), row) for start in (4, 8) for row in range(4)][:7]
    assert out.seed[4:].tolist() == retried
    assert len(set(out.seed.tolist())) == 1 + 7  # the first batch shares one seed


def test_nan_outputs_of_a_batched_simulator_fail_their_rows_only():
    """Catches a row failed only when all its entries are non-finite (one NaN kept as
    data), the failure marked on other rows than the simulator's, or good rows of the
    batch blanked with the bad ones."""

    def holes(theta):
        x = theta.clone()
        x[0] = float("inf")  # a whole row
        x[3, 1] = float("nan")  # one entry of a row
        x[6, 0] = -float("inf")
        return x

    theta = torch.arange(18.0).reshape(9, 2)
    out = simulate(holes, theta, batch_size=9, seed=0, progress=False)
    assert out.counts() == {"nonfinite": 3, "error": 0, "timeout": 0} and out.num_failed == 3
    failed = torch.tensor([row in (0, 3, 6) for row in range(9)])
    assert torch.equal(out.ok, ~failed)
    assert torch.isnan(out.x[failed]).all() and torch.equal(out.x[~failed], theta[~failed])
    assert sorted(out.messages) == [0, 3, 6] and "NaN or inf" in out.messages[3]


def test_theta_given_to_a_simulator_that_modifies_it_is_a_copy():
    def scribbler(theta):
        theta += 1.0
        return theta

    theta = torch.zeros(4, 2)
    out = simulate(scribbler, theta, progress=False)
    assert torch.equal(theta, torch.zeros(4, 2)) and torch.equal(out.theta, theta)
    assert torch.equal(out.x, torch.ones(4, 2))


def sleepy(theta):
    """Sleeps 0.2 s: three calls take at least 0.6 s, however fast the machine."""
    time.sleep(0.2)
    return theta.clone()


def test_a_timeout_keeps_the_callers_own_timer():
    """Catches the caller's timer given back whole (the time spent simulating not taken
    off it), not given back, or lost when it expired during a call. Bounds from the sleeps
    alone: at least 0.6 s pass inside `simulate`, so at most 1.4 s of 2 s can be left."""
    import signal

    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *_: fired.append(True))
    options = dict(batched=False, timeout=5.0, progress=False)
    try:
        signal.setitimer(signal.ITIMER_REAL, 2.0)
        simulate(sleepy, torch.zeros(3, 1), **options)
        assert not fired and 0.0 < signal.getitimer(signal.ITIMER_REAL)[0] <= 1.4
        signal.setitimer(signal.ITIMER_REAL, 0.1)  # expires during the 0.2 s call
        simulate(sleepy, torch.zeros(1, 1), **options)
        deadline = time.monotonic() + 10.0  # a limit only: it fires at once
        while not fired and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fired == [True] and signal.getitimer(signal.ITIMER_REAL)[0] == 0.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_all_simulations_failing_is_an_error_even_when_allowed():
    def broken(theta):
        raise OSError("no licence for the solver")

    with pytest.raises(SimulationError, match="(?s)all 5 simulations of broken failed.*licence"):
        simulate(broken, torch.zeros(5, 1), max_failure_fraction=1.0, progress=False)


def test_seeded_defaults_agree_in_process_and_on_a_pool():
    theta = torch.randn(300, 2)
    local = simulate(simulators.noisy, theta, seed=2, progress=False)
    with ProcessPoolExecutor(2) as pool:
        remote = simulate(simulators.noisy, theta, seed=2, executor=pool, progress=False)
    assert torch.equal(local.x, remote.x)


def test_batch_size_written_as_a_float_is_taken_as_that_integer():
    calls = []

    def simulator(theta):
        calls.append(len(theta))
        return theta

    simulate(simulator, torch.zeros(10, 2), batch_size=4.0, progress=False)
    assert calls == [4, 4, 2]


@pytest.mark.parametrize(
    "batch_size, error, message",
    [
        (2.5, ValueError, r"2\.5, which is not a whole number"),
        (0, ValueError, r">= 1; got 0"),
        ("4", TypeError, r"got '4' of type str"),
        (True, TypeError, r"got True of type bool"),
    ],
)
def test_batch_size_must_be_a_whole_number(batch_size, error, message):
    with pytest.raises(error, match=rf"simulate: batch_size must be a whole number.*{message}"):
        simulate(lambda theta: theta, torch.zeros(10, 2), batch_size=batch_size, progress=False)


def test_repr_shows_shapes_and_counts_not_tensors():
    sims = simulate(lambda theta: theta, torch.zeros(1000, 2), progress=False)
    assert repr(sims).startswith(
        "Simulations(theta_shape=(1000, 2), x_shape=(1000, 2), num_failed=0, seconds="
    )
    assert "tensor" not in repr([sims])
