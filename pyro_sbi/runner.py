r"""Running a model at many points of its latent space at once.

Slice sampling, SIR starts, `train` (prior draws and the posterior draws of sequential
rounds), :func:`~pyro_sbi.to_inference_data` and the diagnostics all run one model at
`n` points. :class:`ModelRunner` owns how: the model runs once under an extra plate of
`n` points at dim `-nesting - 1`, left of all the model's own plates, each site's
values padded to broadcast against it; a model that cannot take such a plate (fixed
`expand` shapes, Python control flow on values) runs once per point instead, with one
warning that says why.

The trace helpers here (`base_trace`, `sample_sites`, `plate_nesting`, `pad`) are the
package's one reading of a model's trace.
"""

from __future__ import annotations

__all__ = ["PLATE", "ModelRunner", "base_trace", "pad", "plate_nesting", "sample_sites"]

import contextlib
import warnings
from collections.abc import Callable, Mapping
from typing import TypeVar

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor

PLATE = "_pyro_sbi_points"  # the extra plate's name
T = TypeVar("T")


def base_trace(model: Callable, args: tuple = (), kwargs: Mapping | None = None):
    """The trace of one ordinary run of `model(*args, **kwargs)`, without gradients."""
    with torch.no_grad(), poutine.block():
        return poutine.trace(model).get_trace(*args, **(kwargs or {}))


def sample_sites(trace) -> list[tuple[str, dict]]:
    """`(name, site)` of the sample sites of `trace`, without plates' subsample sites."""
    trace = prune_subsample_sites(trace)
    return [(name, site) for name, site in trace.nodes.items() if site["type"] == "sample"]


def plate_nesting(trace) -> int:
    """How many batch dims the model's sites use: its plates' and its distributions'."""
    depth = 0
    for _, site in sample_sites(trace):
        frames = [-frame.dim for frame in site["cond_indep_stack"] if frame.vectorized]
        depth = max([depth, len(site["fn"].batch_shape), *frames])
    return depth


def pad(value: Tensor, event_dim: int, nesting: int) -> Tensor:
    """`value (n, *shape)` as `(n, 1, ..., 1, *shape)`, its batch dims filled up to `nesting`.

    So shaped, a site's value conditions a model run under a plate of `n` points at dim
    `-nesting - 1`, left of all the model's own plates.

    Example:
        >>> pad(torch.zeros(5, 3), event_dim=1, nesting=2).shape
        torch.Size([5, 1, 1, 3])
    """
    batch_dims = value.dim() - 1 - event_dim
    return value.reshape(value.shape[0], *(1,) * max(nesting - batch_dims, 0), *value.shape[1:])


class ModelRunner:
    r"""Runs `model(*args, **kwargs)` at `n` points at once, or one point at a time.

    Arguments:
        model: a Pyro model.
        args, kwargs: its arguments.
        nesting: the model's plate nesting; by default read from one ordinary run
            (:func:`plate_nesting` of :attr:`base`). Give it when that run would be
            costly, e.g. when it would simulate.

    Attributes:
        vectorize: whether the next run tries the extra plate; it turns `False` (with a
            warning) the first time the model fails under it.

    Example:
        >>> import pyro.distributions as dist
        >>> def model():
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("trials", 3):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=torch.zeros(3))
        >>> runner = ModelRunner(model)
        >>> [trace], vectorized = runner.run({"mu": torch.zeros(10)})
        >>> trace.nodes["y"]["fn"].batch_shape  # ten points at dim -2, left of the trials
        torch.Size([10, 3])
    """

    def __init__(
        self, model: Callable, args: tuple = (), kwargs: Mapping | None = None, *,
        nesting: int | None = None,
    ) -> None:  # fmt: skip
        self.model, self.args, self.kwargs = model, tuple(args), dict(kwargs or {})
        self._base = None
        self.nesting = plate_nesting(self.base) if nesting is None else nesting
        self.vectorize = True

    @property
    def base(self):
        """The trace of one ordinary run of the model (made once, when first needed)."""
        if self._base is None:
            self._base = base_trace(self.model, self.args, self.kwargs)
        return self._base

    def plate(self, size: int, index: int | None) -> contextlib.AbstractContextManager:
        """The extra plate of `size` points for a vectorised run (`index is None`).

        Nothing for a run at one point. Enter it last, inside any messenger of your own,
        so that your messenger sees the sites as the plate broadcast them.
        """
        if index is not None:
            return contextlib.nullcontext()
        return pyro.plate(PLATE, size, dim=-self.nesting - 1)

    def condition(
        self, values: Mapping[str, Tensor], index: int | None, model: Callable | None = None
    ) -> Callable:
        """The model conditioned on `values {name: (n, *shape)}`.

        For a vectorised run (`index is None`) each value is padded (see :func:`pad`);
        for a run at one point, the values at point `index`.
        """
        model = model or self.model
        if not values:
            return model
        if index is None:
            data = {name: pad(value, self._event_dim(name), self.nesting)
                    for name, value in values.items()}  # fmt: skip
        else:
            data = {name: value[index] for name, value in values.items()}
        return poutine.condition(model, data)

    def map(self, size: int, step: Callable[[int, int | None], T]) -> tuple[list[T], bool]:
        r"""Calls `step(size, None)` once, vectorised, or else `step(1, i)` per point.

        `step(points, index)` runs the model itself, inside :meth:`plate` and typically
        on :meth:`condition`; it runs without gradients and blocked from any outer
        handler. Returns the list of what the steps returned (one item when vectorised)
        and whether the run was vectorised.
        """
        if self.vectorize:
            try:
                with torch.no_grad(), poutine.block():
                    return [step(size, None)], True
            except Exception as error:  # the model cannot run under an extra plate
                self.vectorize = False
                warnings.warn(
                    f"the model {_name(self.model)} cannot run vectorised over many points "
                    f"(under an extra plate left of its own: {type(error).__name__}: "
                    f"{error}); running it once per point, which is much slower. Write the "
                    "model so that its sites broadcast over extra batch dimensions on the "
                    "left (no fixed `expand` shapes or `unsqueeze` of parameters)",
                    stacklevel=3,
                )
        results = []
        for index in range(size):
            with torch.no_grad(), poutine.block():
                results.append(step(1, index))
        return results, False

    def run(
        self, values: Mapping[str, Tensor] | None = None, size: int | None = None, *,
        read: Callable[..., T] | None = None, model: Callable | None = None,
        log_prob: bool = False,
    ) -> tuple[list[T], bool]:  # fmt: skip
        """Traces the model conditioned on `values {name: (n, *shape)}` at `n` points.

        Arguments:
            values: the sites' values at each point; empty: the points draw from the
                prior.
            size: `n`, needed when `values` is empty.
            read: `read(trace, points, vectorized)` turns a trace of `points` points
                into a result (by default the trace itself); an error there also sends
                the run to one point at a time.
            model: replaces the runner's model (e.g. an unconditioned one), with the
                same arguments.
            log_prob: compute each site's log-density in the trace.

        Returns:
            One result of a trace under the extra plate, or `n` results of ordinary
            traces, one per point (see :attr:`vectorize`), and whether the run was
            vectorised.
        """
        values = dict(values or {})
        if size is None:
            size = len(next(iter(values.values())))

        def step(points, index):
            conditioned = self.condition(values, index, model)
            with self.plate(points, index):
                trace = poutine.trace(conditioned).get_trace(*self.args, **self.kwargs)
            if log_prob:
                trace.compute_log_prob()
            return trace if read is None else read(trace, points, index is None)

        return self.map(size, step)

    def _event_dim(self, name: str) -> int:
        node = self.base.nodes.get(name)
        return node["fn"].event_dim if node is not None else 0


def _name(model: Callable) -> str:
    return getattr(model, "__qualname__", None) or type(model).__name__


def model_keywords(kwargs: Mapping, model_kwargs: Mapping | None) -> dict:
    """The model's keyword arguments, from a function's `**kwargs` and `model_kwargs`.

    `kwargs` holds the keywords the function did not take as its own options;
    `model_kwargs` may use any name, also an option's (say `seed`).

    Raises:
        TypeError: a name given both ways.
    """
    both = sorted(set(kwargs) & set(model_kwargs or {}))
    if both:
        raise TypeError(f"the model keywords {both} are given twice: directly and in model_kwargs")
    return {**kwargs, **(model_kwargs or {})}
