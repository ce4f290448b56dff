"""Training on stored pairs whose outputs stay on disk (`pyro_sbi.streamed.StoredPairs`)."""

import math

import numpy as np
import pytest
import torch

from pyro_sbi import MNLE, NLE, NRE, Ensemble, StoredPairs, fit, simulate

zarr = pytest.importorskip("zarr")

NOISE = 0.5


def gaussian_with_failures(theta):
    """x ~ N(theta, NOISE^2) per column; NaN (a failed simulation) where theta_0 > 1.5."""
    x = theta + NOISE * torch.randn_like(theta)
    x[theta[:, 0] > 1.5] = math.nan
    return x


class CountingArray:
    """A numpy array that records the rows of every read."""

    def __init__(self, values, chunks=None):
        self.values, self.shape, self.reads = values, values.shape, []
        if chunks is not None:
            self.chunks = chunks

    def __getitem__(self, index):
        self.reads.append(index)
        return self.values[index]


def labelled(n, width=3):
    """`theta (n, 1)` holding the row index and `x (n, width)` whose columns repeat it."""
    rows = np.arange(n, dtype=np.float32)
    return torch.from_numpy(rows[:, None].copy()), np.repeat(rows[:, None], width, axis=1)


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_give_every_row_once_with_its_own_theta(shuffle):
    """Catches rows lost or repeated at block and buffer edges, and theta paired with the
    x of another row (both would break the labels)."""
    theta, x = labelled(1000)
    rows = torch.arange(0, 1000, 3)  # a subset, as a store's successful rows are
    pairs = StoredPairs(theta, x, rows=rows, block_rows=64, buffer_rows=200)
    torch.manual_seed(0)
    seen = []
    for batch_theta, batch_x in pairs.batches(50, shuffle=shuffle):
        assert len(batch_theta) <= 50
        assert torch.equal(batch_x, batch_theta.expand(-1, 3))
        seen.append(batch_theta[:, 0])
    seen = torch.cat(seen)
    assert torch.equal(seen.sort().values, rows.float())
    assert torch.equal(seen, rows.float()) != shuffle


def test_reads_never_take_more_than_a_block():
    """Catches a read of the whole array (what streaming is for): every read is one block,
    aligned to the array's chunks."""
    theta, values = labelled(5000)
    x = CountingArray(values, chunks=(300, 3))
    pairs = StoredPairs(theta, x)
    assert pairs.block_rows == 4200  # the multiple of 300 nearest above 4096
    NLE().fit(pairs, max_epochs=1, progress=False, seed=0)
    assert x.reads and all(
        index.stop - index.start <= pairs.block_rows and index.start % 300 == 0
        for index in x.reads
    )


def test_validation_is_whole_blocks_disjoint_from_training():
    theta, x = labelled(2000)
    pairs = StoredPairs(theta, x, block_rows=100)
    torch.manual_seed(1)
    train, valid = pairs.split(200)
    assert len(train) + len(valid) == 2000 and len(valid) == 200
    assert not set(train.rows.tolist()) & set(valid.rows.tolist())
    assert set((valid.rows // 100).tolist()).isdisjoint((train.rows // 100).tolist())
    few = StoredPairs(theta, x, block_rows=500)  # 4 blocks: the split is by rows
    train, valid = few.split(200)
    assert len(valid) == 200 and len(set((valid.rows // 500).tolist())) > 1


def test_statistics_match_those_of_the_tensors():
    """Catches a streamed mean or sd that differs from the in-memory one, e.g. blocks
    merged without the between-block term of the variance (the rows are sorted, so the
    blocks' means differ, as in a store of parameters on a grid)."""
    torch.manual_seed(0)
    theta = torch.randn(3000, 2)
    theta = theta[theta[:, 0].argsort()]
    x = 1000.0 + theta @ torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]]) + torch.randn(3000, 3)
    x[:, 2] = 7.0  # a constant column keeps unit scale on both paths
    in_memory, streamed = NLE(), NLE()
    in_memory.build(theta, x)
    streamed.build(StoredPairs(theta, x.numpy(), block_rows=128, buffer_rows=256))
    for name in ("x_loc", "x_scale", "x_min", "x_max", "theta_loc", "theta_scale"):
        assert torch.allclose(getattr(streamed, name), getattr(in_memory, name), rtol=1e-5), name
    assert streamed.x_scale[2] == 1.0


def test_from_store_keeps_the_successful_rows(tmp_path):
    torch.manual_seed(0)
    theta = torch.randn(600, 2)
    simulate(gaussian_with_failures, theta, store=tmp_path / "s", seed=0, progress=False)
    pairs = StoredPairs.from_store(tmp_path / "s")
    ok = theta[:, 0] <= 1.5
    assert len(pairs) == int(ok.sum()) < 600
    assert torch.allclose(pairs.theta, theta[ok])
    _, x = pairs.read(torch.arange(pairs.num_blocks))
    assert torch.isfinite(x).all() and x.shape == (len(pairs), 2)


def test_nle_trained_from_a_store_learns_the_likelihood(tmp_path):
    """Catches training on x paired with another row's theta or on a part of the rows:
    the learned conditional mean and sd must match x | theta ~ N(theta, 0.5^2).

    Measured over seeds 0-2: mean errors at most 0.031 and sd ratios within 0.021 of 1
    (in memory 0.043 and 0.047); with theta shuffled against x, mean errors up to 1.2 and
    sds twice the truth."""
    torch.manual_seed(0)
    theta = torch.randn(8_000, 1)
    simulate(gaussian_with_failures, theta, store=tmp_path / "s", seed=0, progress=False)
    pairs = StoredPairs.from_store(tmp_path / "s")
    estimator = NLE()
    history = estimator.fit(pairs, max_epochs=12, progress=False, seed=0)
    assert estimator.num_simulations == len(pairs) and history.epochs == 12
    grid = torch.linspace(-3.0, 3.0, 601).unsqueeze(-1)
    for value in (-1.0, 0.0, 1.0):
        with torch.no_grad():
            density = estimator.log_prob(grid, torch.tensor([[value]])).exp()
        density = density / density.sum()
        mean = (density * grid[:, 0]).sum()
        sd = (density * (grid[:, 0] - mean) ** 2).sum().sqrt()
        assert abs(mean - value) < 0.08 and abs(sd / NOISE - 1) < 0.08


def test_same_seed_same_weights():
    theta, x = labelled(3000, width=2)
    x = x + np.random.default_rng(0).normal(size=x.shape).astype(np.float32)
    first, second = NRE(), NRE()
    first.fit(StoredPairs(theta, x, block_rows=256), max_epochs=2, progress=False, seed=3)
    second.fit(StoredPairs(theta, x, block_rows=256), max_epochs=2, progress=False, seed=3)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)


def test_refusals(tmp_path):
    theta, x = labelled(500)
    pairs = StoredPairs(theta, x, block_rows=50)
    with pytest.raises(TypeError, match="MNLE trains on data in memory"):
        MNLE(discrete=[0]).fit(pairs)
    with pytest.raises(TypeError, match="Ensemble trains on data in memory"):
        Ensemble(NLE, 2).fit(pairs)
    with pytest.raises(TypeError, match="without x"):
        NLE().fit(pairs, torch.zeros(500, 3))
    with pytest.raises(ValueError, match="bootstrap needs the simulations in memory"):
        fit(NLE(), pairs, bootstrap=True)
    with pytest.raises(ValueError, match="theta of shape"):
        StoredPairs(theta[:10], x)
    with pytest.raises(ValueError, match="rows must be indices"):
        StoredPairs(theta, x, rows=torch.tensor([0, 500]))
    zarr.open_group(str(tmp_path / "empty"), mode="a")
    with pytest.raises(ValueError, match="is not a pyro_sbi simulation store"):
        StoredPairs.from_store(tmp_path / "empty")
    with pytest.raises(ValueError, match="has no site 'x'"):
        StoredPairs.from_store(tmp_path / "empty", site="x")


def test_streamed_integer_columns_match_those_of_the_tensors():
    """Catches integer columns judged on one block only (or on the first)."""
    torch.manual_seed(0)
    theta = torch.rand(600, 1)
    x = torch.cat([torch.poisson(3 * theta), theta + torch.randn_like(theta)], dim=-1)
    x[:128, 1] = x[:128, 1].round()  # the first block is all integers
    x[599, 1] = 2.0  # an integer in the last block only: the column is still real-valued
    in_memory, streamed = NLE(), NLE()
    in_memory.build(theta, x)
    streamed.build(StoredPairs(theta, x.numpy(), block_rows=128, buffer_rows=256))
    assert in_memory.x_integer.tolist() == streamed.x_integer.tolist() == [True, False]
