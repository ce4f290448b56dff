r"""Training pairs whose outputs stay on disk: read block by block, shuffled by a buffer.

`estimator.fit(theta, x)` holds every simulation in memory, twice over during its split.
For more simulations than that allows, :class:`StoredPairs` keeps only the parameters
in memory (`N x D`, small) and reads the outputs in contiguous blocks of rows from any
array sliceable along its first axis: the zarr store of :func:`~pyro_sbi.simulate`,
a `numpy.memmap`, an `h5py` dataset. `estimator.fit(pairs)` then trains on it:

- **statistics** (z-scoring, the range of `x`) come from one pass over the blocks, in
  float64 (Chan et al.'s pairwise update of mean and variance, so that a large mean does
  not cancel the variance);
- **the validation split** is a random set of whole blocks when there are at least
  :data:`MIN_BLOCKS_TO_SPLIT` blocks (otherwise random rows), so each epoch reads each
  block once;
- **shuffling**: every epoch visits the training blocks in a new random order, reads
  them into a buffer of about `buffer_rows` rows, permutes the rows of the buffer and
  cuts it into batches. Rows of one batch then come from a few blocks; the blocks of
  a simulation store are i.i.d. draws in the order they were simulated, so a batch is
  still a random sample of the prior (this is the shuffle buffer of `tf.data` and
  WebDataset).

Memory is about `N x (D + 1)` numbers for the parameters and row indices plus two
buffers of outputs, whatever `N` is.
"""

from __future__ import annotations

__all__ = ["MIN_BLOCKS_TO_SPLIT", "StoredPairs"]

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Size, Tensor

MIN_BLOCKS_TO_SPLIT = 10  # fewer blocks than this: the validation split is by rows
_TARGET_BLOCK_ROWS = 4096


class StoredPairs:
    r"""Simulation pairs `(theta, x)` whose outputs are read from disk in blocks of rows.

    Pass it to an estimator's `fit` in place of `(theta, x)`: `NLE().fit(pairs)`.
    :class:`~pyro_sbi.NLE` and :class:`~pyro_sbi.NRE` train on it; MNLE and ensembles
    need their data in memory.

    Arguments:
        theta: `(N, D)` parameters: a tensor or any array; held in memory.
        x: `(N, *x_shape)` outputs: any array sliceable along its first axis (a
            `zarr.Array`, a `numpy.memmap`, an `h5py.Dataset`, a tensor); read
            `block_rows` rows at a time.
        rows: `(n,)` indices of the rows to train on (all rows by default), e.g. those
            whose simulation succeeded (:meth:`from_store` chooses them).
        block_rows: rows per read; by default the multiple of the array's chunk length
            (its first axis, when it has chunks) nearest above 4096.
        buffer_rows: rows permuted together when shuffling.

    Example:
        >>> theta = torch.randn(5000, 1)
        >>> x = (theta + 0.1 * torch.randn(5000, 1)).numpy()  # a memmap or zarr array alike
        >>> pairs = StoredPairs(theta, x, block_rows=500)
        >>> len(pairs), pairs.x_shape, pairs.num_blocks
        (5000, torch.Size([1]), 10)
    """

    def __init__(
        self,
        theta,
        x,
        *,
        rows: Tensor | None = None,
        block_rows: int | None = None,
        buffer_rows: int = 65_536,
    ) -> None:
        total = int(x.shape[0])
        if len(x.shape) < 2:
            raise ValueError(f"StoredPairs expects x of shape (N, *x_shape); got {tuple(x.shape)}")
        if int(theta.shape[0]) != total or len(theta.shape) != 2:
            raise ValueError(
                f"StoredPairs expects theta of shape (N, D) with x's N = {total}; got "
                f"{tuple(theta.shape)}"
            )
        rows = torch.arange(total) if rows is None else torch.as_tensor(rows, dtype=torch.long)
        if rows.dim() != 1 or (len(rows) and (rows.min() < 0 or rows.max() >= total)):
            raise ValueError(f"StoredPairs: rows must be indices in [0, {total})")
        rows = rows.unique(sorted=True)
        self.x = x
        self.x_shape = Size(int(size) for size in x.shape[1:])
        self.rows = rows
        self.theta = _as_tensor(theta[:] if not isinstance(theta, Tensor) else theta)[rows]
        chunk = (getattr(x, "chunks", None) or (1,))[0] or 1
        self.block_rows = int(block_rows or chunk * max(1, math.ceil(_TARGET_BLOCK_ROWS / chunk)))
        if self.block_rows < 1 or buffer_rows < 1:
            raise ValueError("StoredPairs: block_rows and buffer_rows must be positive")
        self.buffer_rows = int(buffer_rows)

    @classmethod
    def from_store(cls, path, *, site: str | None = None, **options) -> StoredPairs:
        r"""The simulations of a store that succeeded, with their outputs left on disk.

        Arguments:
            path: the store of :func:`~pyro_sbi.simulate` (a directory or a `zarr.Group`),
                or of :func:`~pyro_sbi.train` with `site`.
            site: the site whose simulations to read from a store of `train`.
            options: :class:`StoredPairs` options (`block_rows`, `buffer_rows`).

        Raises:
            ValueError: the path holds no simulation store, or no successful simulation.
        """
        from pyro_sbi.simulation_worker import OK
        from pyro_sbi.store import SimulationStore, _zarr

        zarr = _zarr()
        group = path if isinstance(path, zarr.Group) else zarr.open_group(str(path), mode="r")
        if site is not None:
            if site not in group:
                raise ValueError(f"the store {path} has no site {site!r}")
            group = group[site]
        if "pyro_sbi" not in group.attrs:
            where = f"{path}" if site is None else f"{path} (site {site!r})"
            raise ValueError(f"{where} is not a pyro_sbi simulation store")
        store = SimulationStore(group)
        if "x" not in group:
            raise ValueError(f"the store {store.where} holds no simulation yet")
        status = torch.from_numpy(np.asarray(group["status"][: len(store)]))
        rows = torch.nonzero(status == OK).squeeze(-1)
        if len(rows) == 0:
            raise ValueError(f"the store {store.where} holds no successful simulation")
        return cls(group["theta"], group["x"], rows=rows, **options)

    def __len__(self) -> int:
        """The number of pairs."""
        return len(self.rows)

    def __repr__(self) -> str:
        """Rows, shapes and blocks."""
        return (
            f"StoredPairs({len(self)} rows, theta_dim={self.theta.shape[-1]}, "
            f"x_shape={tuple(self.x_shape)}, {self.num_blocks} blocks of {self.block_rows})"
        )

    @property
    def num_blocks(self) -> int:
        """The number of blocks holding at least one of the rows."""
        return len(self._blocks())

    def _blocks(self) -> Tensor:
        return (self.rows // self.block_rows).unique(sorted=True)

    def subset(self, positions: Tensor) -> StoredPairs:
        """The pairs at `positions (k,)` (indices into this set), on the same arrays."""
        view = object.__new__(StoredPairs)
        view.__dict__.update(self.__dict__)
        positions = torch.as_tensor(positions, dtype=torch.long).sort().values
        view.rows, view.theta = self.rows[positions], self.theta[positions]
        return view

    def split(self, num_validation: int) -> tuple[StoredPairs, StoredPairs]:
        r"""A random split into training and validation pairs (torch's random state).

        With at least :data:`MIN_BLOCKS_TO_SPLIT` blocks the validation pairs are whole
        blocks, drawn until they hold `num_validation` rows or more; otherwise rows.

        Returns:
            The training and the validation pairs.
        """
        blocks = self._blocks()
        if len(blocks) < MIN_BLOCKS_TO_SPLIT:
            order = torch.randperm(len(self))
            return self.subset(order[num_validation:]), self.subset(order[:num_validation])
        counts = torch.bincount(torch.searchsorted(blocks, self.rows // self.block_rows))
        order = torch.randperm(len(blocks))
        taken = int(torch.searchsorted(counts[order].cumsum(0), num_validation)) + 1
        held = torch.isin(self.rows // self.block_rows, blocks[order[:taken]])
        if bool(held.all()):
            raise ValueError(
                f"StoredPairs: a validation split of {num_validation} rows takes every block"
            )
        return self.subset(torch.nonzero(~held).squeeze(-1)), self.subset(
            torch.nonzero(held).squeeze(-1)
        )

    def read(self, blocks: Tensor) -> tuple[Tensor, Tensor]:
        r"""The pairs in `blocks (k,)`, in the order of the blocks.

        Returns:
            `theta (m, D)` and `x (m, *x_shape)` in torch's default dtype.
        """
        starts = torch.searchsorted(self.rows, blocks * self.block_rows)
        stops = torch.searchsorted(self.rows, (blocks + 1) * self.block_rows)
        thetas, xs = [], []
        spans = zip(blocks.tolist(), starts.tolist(), stops.tolist(), strict=True)
        for block, start, stop in spans:
            if start == stop:
                continue
            first = block * self.block_rows
            values = _as_tensor(self.x[first : first + self.block_rows])
            xs.append(values[self.rows[start:stop] - first])
            thetas.append(self.theta[start:stop])
        if not xs:
            return self.theta[:0], torch.empty((0, *self.x_shape))
        return torch.cat(thetas), torch.cat(xs)

    def batches(self, batch_size: int, *, shuffle: bool = True) -> Iterator[tuple[Tensor, Tensor]]:
        r"""Every pair once, as `(theta (b, D), x (b, *x_shape))` batches.

        Arguments:
            batch_size: pairs per batch (the last batch of a buffer may be smaller).
            shuffle: visit the blocks in a random order and permute the rows of each
                buffer (torch's random state); otherwise the stored order.
        """
        blocks = self._blocks()
        if shuffle:
            blocks = blocks[torch.randperm(len(blocks))]
        per_buffer = max(1, self.buffer_rows // self.block_rows)
        for first in range(0, len(blocks), per_buffer):
            theta, x = self.read(blocks[first : first + per_buffer])
            if shuffle:
                order = torch.randperm(len(theta))
                theta, x = theta[order], x[order]
            yield from zip(theta.split(batch_size), x.split(batch_size), strict=True)

    def statistics(self, transform: Callable[[Tensor], Tensor]) -> dict[str, Tensor]:
        r"""One pass over the pairs: the moments of `transform(x)` and the range of `x`.

        Arguments:
            transform: a per-column map of flat `x (m, L)` (an estimator's `_transform`).

        Returns:
            `mean (L,)` and unbiased `std (L,)` of the transformed columns, `min (L,)` and
            `max (L,)` of the raw ones, in torch's default dtype, and `integer (L,)`:
            whether every raw value of a column is an integer (or NaN).
        """
        count, mean, m2 = 0, None, None
        low = high = integer = None
        for _, x in self.batches(self.buffer_rows, shuffle=False):
            flat = x.reshape(len(x), -1)
            whole = integer_valued(flat)
            integer = whole if integer is None else integer & whole
            low = flat.min(0).values if low is None else torch.minimum(low, flat.min(0).values)
            high = flat.max(0).values if high is None else torch.maximum(high, flat.max(0).values)
            values = transform(flat).to(torch.float64)
            n, block_mean = len(values), values.mean(0)
            block_m2 = ((values - block_mean) ** 2).sum(0)
            if mean is None:
                count, mean, m2 = n, block_mean, block_m2
                continue
            delta, total = block_mean - mean, count + n
            mean = mean + delta * n / total
            m2 = m2 + block_m2 + delta**2 * count * n / total
            count = total
        dtype = torch.get_default_dtype()
        std = (m2 / max(count - 1, 1)).sqrt()
        return {"mean": mean.to(dtype), "std": std.to(dtype), "min": low, "max": high,
                "integer": integer}  # fmt: skip


def integer_valued(x: Tensor) -> Tensor:
    """Whether each column of flat `x (n, L)` holds only integers (NaN allowed): `(L,)`."""
    return ((x == x.round()) | x.isnan()).all(0)


def _as_tensor(values) -> Tensor:
    """A tensor of torch's default dtype from a tensor or an array (numpy, zarr, h5py)."""
    if isinstance(values, Tensor):
        return values.to(torch.get_default_dtype())
    return torch.from_numpy(np.asarray(values)).to(torch.get_default_dtype())
