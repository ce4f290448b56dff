r"""An append-only, crash-safe store of simulations on disk (zarr).

`simulate(..., store="sims.zarr")` writes every finished batch to a zarr group:

- `theta (N, D)` float64, the parameters, written when the run is planned;
- `x (N, *x_shape)`, the outputs (NaN where a simulation failed or is missing);
- `seed (N,)` int64, the seed each simulation runs with, written before they run;
- `status (N,)` int8: -1 still missing, otherwise a code of :mod:`pyro_sbi.simulation`
  (0 ok, 1 NaN/inf, 2 error, 3 timeout);
- attributes: the simulator's name, `D`, the root seed, the batch size and the failure
  messages.

Why it survives a crash: zarr's local store writes each chunk to a temporary file and
renames it into place, so a chunk file is always either the old or the new version.
Batches never cross a chunk boundary, and a batch is written in the order `x`, messages,
`status`: the write of its `status` chunk is the commit. A run killed at any
moment leaves whole batches, and batches still marked missing, which the next run with
the same store simulates again with the same seeds. Appending parameters resizes
`status` last for the same reason.

Zarr was chosen over HDF5 for this: an HDF5 file killed during a write can be left
unreadable (its metadata lives in one file, updated in place), and its SWMR mode does
not allow growing the datasets from a fresh process that reopens the file.

Read a store back with :meth:`SimulationStore.read`, or directly with
`zarr.open_group(path)`.

`train(..., store="sims.zarr")` keeps one such group per simulator site, named after
the site (:class:`TrainingStore`): two sites may share a simulator and still draw their
parameters from different priors, so a store of one site's draws cannot serve another.
Each group also records where its parameters came from (the prior, or a fingerprint
of the proposal, :func:`proposal_source`), and refuses draws from anything else.
"""

from __future__ import annotations

__all__ = ["SimulationStore", "TrainingStore", "proposal_source"]

import hashlib
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

FORMAT_VERSION = 1
_ROWS_PER_CHUNK = 256
_MESSAGE_LIMIT = 1000
_MAX_MESSAGES = 1000


def _zarr():
    try:
        import zarr
    except ImportError:  # pragma: no cover - depends on the installation
        raise ImportError(
            "a simulation store needs zarr: pip install 'pyro-sbi[store]' (or pip install zarr)"
        ) from None
    return zarr


def simulator_id(simulator: Callable) -> str:
    """`module.qualname` of a simulator (its class for a callable object).

    Example:
        >>> simulator_id(np.sin)
        'numpy.sin'
    """
    target = simulator if hasattr(simulator, "__qualname__") else type(simulator)
    return f"{getattr(target, '__module__', '?')}.{target.__qualname__}"


class SimulationStore:
    r"""The zarr group holding the simulations of one :func:`~pyro_sbi.simulate` call.

    Open it through :meth:`open`; :func:`~pyro_sbi.simulate` does so for you.

    Attributes:
        group: the `zarr.Group`.
        where: the store's location, for messages.
        seed: the root seed of the simulations.
        batch_size: rows per batch.
        chunk_rows: rows per chunk (a multiple of `batch_size`).
    """

    def __init__(self, group) -> None:
        self.group = group
        self.where = _where(group)
        keys = ("theta", "seed", "status", "x")
        self._arrays = {key: group[key] for key in keys if key in group}
        meta = group.attrs["pyro_sbi"]
        self.seed: int = meta["seed"]
        self.batch_size: int = meta["batch_size"]
        self.chunk_rows: int = meta["chunk_rows"]

    @classmethod
    def open(
        cls,
        store,
        *,
        simulator: Callable,
        theta: Tensor,
        seed: int | None,
        batch_size: int | None,
        default_batch_size: int,
        batched: bool = True,
    ) -> SimulationStore:
        r"""Opens (or creates) the store for simulating `theta` and checks it matches.

        The stored parameters and `theta` must agree on their common rows; rows of
        `theta` beyond the store are appended.

        Arguments:
            store: a directory path or a `zarr.Group`.
            simulator: the simulator (its name is checked).
            theta: `(n, D)` parameters.
            seed: the root seed (`None`: the stored one, or a new one).
            batch_size: rows per batch (`None`: the stored one, or `default_batch_size`).
            default_batch_size: the batch size of a new store.
            batched: whether the simulator takes batches (checked against the store).

        Raises:
            ValueError: the store was made by another simulator, for another number of
                parameters, with another seed or batch size, or holds other parameters.
            OSError: a write failed (a full disk); the message names the store.
        """
        zarr = _zarr()
        group = store if isinstance(store, zarr.Group) else zarr.open_group(str(store), mode="a")
        where = _where(group)
        name, dim = simulator_id(simulator), theta.shape[-1]
        meta = group.attrs.get("pyro_sbi")
        if meta is None:
            try:
                cls._create(
                    group, where, simulator=name, theta_dim=dim, seed=seed,
                    batch_size=batch_size or default_batch_size, batched=batched,
                )  # fmt: skip
            except OSError as error:
                raise _write_error(error, "a new store", where) from error
        else:
            _check(meta, where, simulator=name, theta_dim=dim, seed=seed,
                   batch_size=batch_size, batched=batched)  # fmt: skip
        self = cls(group)
        try:
            self._extend(theta, where)
        except OSError as error:
            raise _write_error(error, "the parameters", where) from error
        return self

    @staticmethod
    def _create(group, where, *, simulator, theta_dim, seed, batch_size, batched) -> None:
        """Writes the arrays and, last, the attributes that make `group` a store."""
        name, dim = simulator, theta_dim
        arrays = set(group.keys()) - {"theta", "seed", "status"}
        attrs = set(group.attrs) - {"source", "messages"}  # "source" is train's
        if arrays or attrs:  # a run stopped while creating the store leaves only those
            raise ValueError(f"{where} is not empty and is not a pyro_sbi simulation store")
        chunk_rows = batch_size * max(1, _ROWS_PER_CHUNK // batch_size)
        seed = int(torch.randint(2**62, ())) if seed is None else int(seed)
        group.attrs["messages"] = {}
        for key, shape, dtype, fill in (
            ("theta", (0, dim), "float64", math.nan),
            ("seed", (0,), "int64", -1),
            ("status", (0,), "int8", -1),
        ):  # arrays left by a run killed while creating the store are replaced
            group.create_array(
                key, shape=shape, chunks=(chunk_rows, *shape[1:]), dtype=dtype,
                fill_value=fill, overwrite=True,
            )  # fmt: skip
        group.attrs["pyro_sbi"] = {  # written last: the store exists from here on
            "format": FORMAT_VERSION, "simulator": name, "theta_dim": dim, "seed": seed,
            "batch_size": batch_size, "chunk_rows": chunk_rows, "batched": batched,
        }  # fmt: skip

    @classmethod
    def existing(cls, group, *, simulator: Callable, theta_dim: int) -> SimulationStore | None:
        """The store in `group` if there is one (checked against the simulator), else `None`."""
        meta = group.attrs.get("pyro_sbi")
        if meta is None:
            return None
        where = _where(group)
        _check(meta, where, simulator=simulator_id(simulator), theta_dim=theta_dim)
        return cls(group)

    def __len__(self) -> int:
        """Number of parameter rows committed to the store."""
        return self._arrays["status"].shape[0]

    def _extend(self, theta: Tensor, where: str) -> None:
        stored = len(self)
        common = min(stored, len(theta))
        values = theta.detach().cpu().to(torch.float64).numpy()
        if common and not np.array_equal(self._arrays["theta"][:common], values[:common]):
            raise ValueError(
                f"the simulation store {where} holds other parameters than those given (they "
                f"differ within the first {common} rows); resume with the same theta and seed, "
                "or use another store path"
            )
        if len(theta) <= stored:
            return
        n = len(theta)
        for key in ("theta", "seed", "x"):
            if key in self._arrays:
                array = self._arrays[key]
                array.resize((n, *array.shape[1:]))
        self._arrays["theta"][stored:n] = values[stored:n]
        self._arrays["status"].resize((n,))  # the commit

    def read(self, n: int | None = None) -> tuple[Tensor | None, Tensor, Tensor, dict[int, str]]:
        r"""The first `n` rows (all by default).

        Returns:
            `x (n, *x_shape)` (`None` before any simulation succeeded), `status (n,)`,
            `seed (n,)` and the failure messages by row.
        """
        n = len(self) if n is None else n
        status = torch.from_numpy(np.asarray(self._arrays["status"][:n]))
        seed = torch.from_numpy(np.asarray(self._arrays["seed"][:n]))
        x = None
        if "x" in self._arrays:
            x = torch.from_numpy(np.asarray(self._arrays["x"][:n]))
            x = x.to(torch.get_default_dtype())
        messages = {  # a message of a batch killed before its commit may linger
            int(row): message
            for row, message in self.group.attrs.get("messages", {}).items()
            if int(row) < n and status[int(row)] > 0
        }
        return x, status, seed, messages

    def theta(self) -> Tensor:
        """`(N, D)` the committed parameters, as stored (float64)."""
        return torch.from_numpy(np.asarray(self._arrays["theta"][: len(self)]))

    def plan(self, seed: Tensor) -> None:
        r"""Writes the seeds `(N,)` the missing rows will run with (before they run)."""
        try:
            self._arrays["seed"][: len(seed)] = seed.numpy()
        except OSError as error:
            raise _write_error(error, "the seeds", self.where) from error

    def write(
        self,
        start: int,
        stop: int,
        x: np.ndarray | None,
        status: np.ndarray,
        messages: dict[int, str],
        seed: Tensor | None = None,
    ) -> None:
        r"""Commits one finished batch of rows `start:stop`.

        Arguments:
            start: first row.
            stop: one past the last row.
            x: `(stop - start, *x_shape)` outputs, or `None` when every row failed.
            status: `(stop - start,)` status codes.
            messages: failure messages by row within the batch.
            seed: `(stop - start,)` seeds, when they differ from the planned ones.

        Raises:
            OSError: a write failed (a full disk); the message names the store and the
                rows, which stay missing (the rows committed before are untouched).
        """
        try:
            self._write(start, stop, x, status, messages, seed)
        except OSError as error:  # the disk full, a quota, a lost network mount
            raise _write_error(error, f"rows {start}:{stop}", self.where) from error

    def _write(self, start, stop, x, status, messages, seed) -> None:
        group = self.group
        if x is not None:
            if "x" not in self._arrays:
                self._arrays["x"] = group.create_array(
                    "x", shape=(len(self), *x.shape[1:]), dtype=x.dtype, fill_value=math.nan,
                    chunks=(self.chunk_rows, *x.shape[1:]),
                )  # fmt: skip
            self._arrays["x"][start:stop] = x
        if seed is not None:
            self._arrays["seed"][start:stop] = seed.numpy()
        if messages:
            stored = dict(group.attrs.get("messages", {}))
            for row, message in messages.items():
                if len(stored) >= _MAX_MESSAGES:
                    break
                stored[str(start + row)] = message[-_MESSAGE_LIMIT:]
            group.attrs["messages"] = stored
        self._arrays["status"][start:stop] = status  # the commit


class TrainingStore:
    r"""The simulations of :func:`~pyro_sbi.train`: one :class:`SimulationStore` per site.

    A later call with the same store reuses each site's stored parameters (whatever its
    seed), simulates only what is missing and appends what goes beyond the store.

    Arguments:
        path: a directory (created if missing) or a `zarr.Group`.

    Example:
        >>> import tempfile
        >>> store = TrainingStore(tempfile.mkdtemp())
        >>> group, theta, resumed = store.site("x", np.sin, torch.zeros(4, 1))
        >>> theta.shape, resumed
        (torch.Size([4, 1]), False)
    """

    def __init__(self, path) -> None:
        zarr = _zarr()
        self.root = path if isinstance(path, zarr.Group) else zarr.open_group(str(path), mode="a")

    def site(
        self, name: str, simulator: Callable, theta: Tensor, proposal=None
    ) -> tuple[object, Tensor, bool]:
        r"""The group of site `name` and the parameters to simulate there.

        Arguments:
            name: the site's name (its group in the store).
            simulator: the site's simulator (checked against the stored one).
            theta: `(n, D)` fresh draws for the site.
            proposal: the distribution `theta` was drawn from, `None` for the prior.

        Returns:
            The `zarr.Group`; `(n, D)` parameters: the stored ones first, then fresh
            draws beyond them; and whether the group already holds a store (its root
            seed then goes on, whatever seed the call was given).

        Raises:
            ValueError: the stored parameters were drawn from another distribution, or
                by another simulator.
        """
        source = proposal_source(proposal)
        group = self.root.require_group(name)
        stored = SimulationStore.existing(group, simulator=simulator, theta_dim=theta.shape[-1])
        previous = group.attrs.get("source")
        if stored is not None and previous is not None and previous != source:
            raise ValueError(
                f"site {name!r}: the store {_where(self.root)} holds simulations drawn from "
                f"{_describe(previous)}, not from {_describe(source)}; use another store "
                "path for other draws"
            )
        group.attrs["source"] = source
        if stored is None or len(stored) == 0:
            return group, theta, stored is not None
        kept = stored.theta().to(theta.dtype)  # exact: the stored values came from this dtype
        if len(kept) >= len(theta):
            return group, kept[: len(theta)], True
        return group, torch.cat([kept, theta[len(kept) :]]), True


def proposal_source(proposal) -> str:
    """`"prior"` for `None`, or a fingerprint of a distribution: its classes and parameters.

    Example:
        >>> import torch.distributions as td
        >>> proposal_source(None), proposal_source(td.Normal(0.0, 1.0))[:9]
        ('prior', 'proposal ')
    """
    if proposal is None:
        return "prior"
    digest = hashlib.sha1()
    fn = proposal
    while fn is not None:
        digest.update(type(fn).__name__.encode())
        for key in sorted(vars(fn)):
            value = vars(fn)[key]
            if isinstance(value, Tensor):
                digest.update(key.encode() + value.detach().cpu().numpy().tobytes())
            elif isinstance(value, int | float | bool | tuple):
                digest.update(f"{key}={value!r}".encode())
        fn = getattr(fn, "base_dist", None)
    return f"proposal {digest.hexdigest()[:16]}"


def _describe(source: str) -> str:
    return "the prior" if source == "prior" else f"another distribution ({source})"


def _check(meta: dict, where: str, *, simulator: str, theta_dim: int, **settings) -> None:
    """Raises a ValueError naming every way the store differs from the request."""
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{where} is a simulation store of format {meta.get('format')}; this version of "
            f"pyro_sbi reads format {FORMAT_VERSION}"
        )
    problems = []
    if meta["simulator"] != simulator:
        problems.append(f"the simulator {meta['simulator']}, not {simulator}")
    if meta["theta_dim"] != theta_dim:
        problems.append(f"{meta['theta_dim']} parameters, not {theta_dim}")
    for key, value in settings.items():
        if value is not None and meta[key] != value:
            problems.append(f"{key}={meta[key]}, not {value}")
    if problems:
        raise ValueError(
            f"the simulation store {where} was made with " + "; ".join(problems) + ". Use "
            "another store path for a different simulation"
        )


def _write_error(error: OSError, what: str, where: str) -> OSError:
    """`error` (same class and errno) with a message naming the store and how to resume."""
    reason = error.strerror or str(error)
    message = (
        f"could not write {what} to the simulation store {where} ({reason}); what was "
        "stored before is kept: fix the cause (free some space) and rerun the same call "
        "to simulate only the missing rows"
    )
    try:
        return type(error)(error.errno, message) if error.errno else type(error)(message)
    except TypeError:  # a subclass taking other arguments
        return OSError(error.errno, message)


def _where(group) -> str:
    """The store's location, and the group inside it, for messages."""
    root = str(group.store).removeprefix("file://")
    return f"{root}/{group.path}" if group.path else root
