r"""How many threads torch uses inside the library's own loops.

torch starts one intra-op thread per core. The networks of simulation-based inference
are small (a flow of a few hidden layers on batches of a few hundred rows), and for them
the threads cost more in synchronisation than they gain, most of all on a machine whose
cores are shared with other work (measured by `python -m pyro_sbi.benchmark.threads`;
the numbers are in the how-to page "Choose the number of threads").

So :func:`~pyro_sbi.fitting.fit` (every estimator's training, and :func:`~pyro_sbi.train`)
runs with :data:`DEFAULT_NUM_THREADS` torch threads **unless the user chose a count**,
and restores the caller's count afterwards. :class:`~pyro_sbi.SliceMCMC` evaluates the
model on all its chains at once, batches large enough for threads to pay (measured
10-25 % faster on two threads than on one), so it keeps the caller's count unless given
`num_threads=`. A count counts as chosen when

- the environment sets `PYRO_SBI_NUM_THREADS` (used as the count), `OMP_NUM_THREADS`
  or `MKL_NUM_THREADS` (torch's count is kept), or
- `torch.set_num_threads` changed torch's count after `pyro_sbi` was imported (kept).

`fit(..., num_threads=k)` (or `train(..., fit_options={"num_threads": k})`) and
`SliceMCMC(..., num_threads=k)` set the count for one call. Pyro's own `MCMC` and `SVI`
loops run under the caller's settings: call `torch.set_num_threads(1)` before them (see
the how-to page).

Work the library sends to a worker process (simulations, :func:`~pyro_sbi.diagnostics.sbc`
data sets) runs with one torch thread when the worker was **forked** from the process
that imported `pyro_sbi` (:func:`fork_safe`): torch's OpenMP thread pool does not survive
a fork, and a forked child's first multi-threaded operation would wait forever for
threads it does not have. Workers are the parallelism there, so one thread each is also
what keeps them from competing for the cores.
"""

from __future__ import annotations

__all__ = ["DEFAULT_NUM_THREADS", "chosen_num_threads", "fork_safe", "num_threads"]

import contextlib
import os
from collections.abc import Iterator

import torch

DEFAULT_NUM_THREADS = 1
"""Torch threads in the library's loops when the user chose no count."""

_AT_IMPORT = torch.get_num_threads()
_PID_AT_IMPORT = os.getpid()  # another pid with this module loaded: a forked child
_ENVIRONMENT = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def chosen_num_threads() -> int | None:
    """The number of torch threads the user chose, or `None` when they chose none.

    Example:
        >>> count = chosen_num_threads()
        >>> count is None or count >= 1
        True
    """
    own = os.environ.get("PYRO_SBI_NUM_THREADS", "").strip()
    if own:
        try:
            count = int(own)
        except ValueError:
            count = 0
        if count < 1:
            raise ValueError(f"PYRO_SBI_NUM_THREADS must be a positive integer; got {own!r}")
        return count
    if any(os.environ.get(name, "").strip() for name in _ENVIRONMENT):
        return torch.get_num_threads()
    if torch.get_num_threads() != _AT_IMPORT:
        return torch.get_num_threads()
    return None


@contextlib.contextmanager
def num_threads(count: int | None = None) -> Iterator[int]:
    r"""Runs the block with `count` torch threads and restores the caller's count after it.

    Arguments:
        count: threads for the block; `None`: the user's chosen count (see
            :func:`chosen_num_threads`) or else :data:`DEFAULT_NUM_THREADS`.

    Yields:
        The number of threads in force inside the block.

    Example:
        >>> before = torch.get_num_threads()
        >>> with num_threads(1) as inside:
        ...     torch.get_num_threads() == inside == 1
        True
        >>> torch.get_num_threads() == before
        True
    """
    if count is None:
        chosen = chosen_num_threads()
        count = chosen if chosen is not None else DEFAULT_NUM_THREADS
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"num_threads must be a positive integer or None; got {count!r}")
    previous = torch.get_num_threads()
    if count != previous:
        torch.set_num_threads(count)
    try:
        yield count
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


@contextlib.contextmanager
def fork_safe() -> Iterator[None]:
    """Runs the block with one torch thread in a process forked after `pyro_sbi` loaded.

    A process forked from one whose torch already ran OpenMP threads inherits the
    thread pool's bookkeeping but not its threads, and its first multi-threaded
    operation (a large `log`, a matrix product) then waits forever. One thread never
    enters the pool. In the process that imported `pyro_sbi`, or in a process started
    afresh (spawn, a Dask worker), the block runs under the count it finds.

    Example:
        >>> before = torch.get_num_threads()
        >>> with fork_safe():  # not forked: nothing changes
        ...     torch.get_num_threads() == before
        True
    """
    if os.getpid() == _PID_AT_IMPORT:
        yield
        return
    with num_threads(1):
        yield
