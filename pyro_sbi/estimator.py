r"""The base of every learned estimator, and its file format.

:class:`Estimator` is the small base of `NLE`, `MNLE`, `NRE`, `Ensemble` and the
validity classifier: lazy construction at the first :meth:`Estimator.fit`, z-scoring
statistics learned from the training data, shape bookkeeping for `x`, the region of
parameters seen in training, the "trained?" check, the local-validity warning, and
:meth:`Estimator.save` / :meth:`Estimator.load` (a JSON header and tensors, never a
pickled object). Each method keeps its loss in its own module; the networks they share
are in :mod:`pyro_sbi.networks`.
"""

from __future__ import annotations

__all__ = [
    "BUFFERS",
    "Estimator",
    "UntrainedEstimatorError",
    "distinct",
    "estimator_class",
    "validation_off",
]

import contextlib
import json
import math
import pickle
import re
import warnings
import weakref
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import torch
from torch import Size, Tensor, nn
from torch.distributions import Distribution, constraints

from pyro_sbi.embeddings import tied_features
from pyro_sbi.networks import activation_by_name, flow_by_name
from pyro_sbi.streamed import StoredPairs, integer_valued

FORMAT_VERSION = 1
# options renamed since files were first written: old name -> new name
_RENAMED = {"build": "flow", "head_features": "head_hidden_features",
            "head_blocks": "head_num_blocks"}  # fmt: skip
_CLASSES: dict[str, type] = {}  # every Estimator subclass by name (see __init_subclass__)
# the statistics and the training region every estimator keeps as buffers
BUFFERS = (
    "theta_loc", "theta_scale", "x_loc", "x_scale", "x_min", "x_max",
    # the region of theta seen in training (local validity)
    "theta_min", "theta_max", "theta_mean", "theta_whiten", "theta_radius",
    # columns of x whose training values are all integers and not all equal
    "x_integer",
)  # fmt: skip


class UntrainedEstimatorError(ValueError):
    """Raised when an estimator is asked for a density before it was trained.

    It is a `ValueError` so that Pyro adds the name of the sample site to the message.
    """


@contextlib.contextmanager
def validation_off() -> Iterator[None]:
    """Turns torch's distribution argument validation off inside the block only.

    `zuko` builds distributions that declare no `arg_constraints`; with validation on,
    torch warns about each of them. The previous default is restored on exit.

    Example:
        >>> with validation_off():
        ...     pass
    """
    previous = Distribution._validate_args
    Distribution._validate_args = False
    try:
        yield
    finally:
        Distribution._validate_args = previous


class Estimator(nn.Module):
    r"""Base of the learned surrogates: lazily built, z-scored, shape-aware.

    A subclass implements :meth:`_build` (create the networks once the sizes are known)
    and :meth:`loss` (the training objective on a batch), and uses :meth:`_prepare` to
    z-score and broadcast `(x, theta)` pairs.

    Attributes:
        x_shape: the simulator's output shape, `None` before the first fit.
        theta_dim: the number of parameters `D`, `None` before the first fit (with a
            condition, the columns `D + d_u` of the context `[theta, condition]`).
        condition_dim: how many of those columns are a condition `d_u` (set by
            :func:`pyro_sbi.train`, 0 for none; `None` when unknown).
        normalized: whether :meth:`log_prob` is a normalised density in `x`.
        fit_defaults: options of :func:`pyro_sbi.fitting.fit` that this kind of estimator
            trains with unless :meth:`fit` is given others.
        streams: whether :meth:`fit` takes a :class:`~pyro_sbi.streamed.StoredPairs`
            (outputs read from disk in blocks) in place of tensors.
        interval_map: for an estimator of parameters given data, the map an
            :class:`~pyro_sbi.AmortizedGuide` gives it an interval-valued site on by
            default: `"logit"` (Pyro's `biject_to`) or `"clamp"`
            (:class:`~pyro_sbi.transforms.SmoothClampTransform`).
    """

    normalized: bool = True
    fit_defaults: ClassVar[dict] = {}
    interval_map: ClassVar[str] = "logit"
    streams: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs) -> None:
        """Registers every estimator class by name.

        A saved child estimator (such as the validity classifier) is then loaded by the
        class its file names, without this module importing it.
        """
        super().__init_subclass__(**kwargs)
        _CLASSES.setdefault(cls.__name__, cls)

    def __init__(self, *, z_score: bool = True) -> None:
        super().__init__()
        self.z_score = z_score
        self.x_shape: Size | None = None
        self.theta_dim: int | None = None
        self.condition_dim: int | None = None
        self.num_simulations = 0
        self.validity: Estimator | None = None
        for name in BUFFERS:
            self.register_buffer(name, None)

    def __getstate__(self) -> dict:
        """Pickles without the cache of the last checked observation (a weak reference)."""
        state = self.__dict__.copy()
        state.pop("_last_checked", None)
        return state

    # construction -------------------------------------------------------------------

    @property
    def trained(self) -> bool:
        """Whether :meth:`fit` has run at least once."""
        return self.num_simulations > 0

    @property
    def x_features(self) -> int:
        """The flattened size `L` of one simulator output."""
        return math.prod(self.x_shape)

    def _check_stored(self, pairs: StoredPairs, x: None) -> StoredPairs:
        """Checks that this estimator trains on stored pairs, given without a separate x."""
        name = type(self).__name__
        if x is not None:
            raise TypeError(f"{name}.fit takes StoredPairs alone, without x")
        if not self.streams:
            raise TypeError(
                f"{name} trains on data in memory: pass tensors (theta, x), not StoredPairs"
            )
        if len(pairs) < 2:
            raise ValueError(f"{name}.fit needs at least 2 simulations")
        return pairs

    def _check_pair(self, theta: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        if theta.dim() != 2:
            raise ValueError(
                f"{type(self).__name__}.fit expects theta of shape (n, D); "
                f"got {tuple(theta.shape)}"
            )
        if x.dim() < 2 or x.shape[0] != theta.shape[0]:
            raise ValueError(
                f"{type(self).__name__}.fit expects x of shape (n, *x_shape) with the same n as "
                f"theta {tuple(theta.shape)}; got {tuple(x.shape)}"
            )
        if x.shape[0] < 2:
            raise ValueError(f"{type(self).__name__}.fit needs at least 2 simulations")
        dtype = torch.get_default_dtype()
        return theta.to(dtype), x.to(dtype)

    def build(self, theta: Tensor | StoredPairs, x: Tensor | None = None) -> None:
        r"""Creates the networks for data like `(theta, x)` and sets z-score statistics.

        Arguments:
            theta: `(n, D)` parameters, or a :class:`~pyro_sbi.streamed.StoredPairs` of
                both (whose statistics take one pass over its blocks; `x` is then `None`).
            x: `(n, *x_shape)` simulator outputs.
        """
        if isinstance(theta, StoredPairs):
            pairs = self._check_stored(theta, x)
            theta, x_shape = pairs.theta, pairs.x_shape
            moments = pairs.statistics(self._transform)
        else:
            theta, x = self._check_pair(theta, x)
            x_shape, flat = x.shape[1:], x.reshape(len(x), -1)
            transformed = self._transform(flat)
            ties = tied_features(getattr(self, "embedding", None), x_shape)
            if ties is None and not bool(torch.isnan(flat).any()):
                moments = {"mean": transformed.mean(0), "std": transformed.std(0),
                           "min": flat.min(0).values, "max": flat.max(0).values}  # fmt: skip
            else:
                moments = _tied_moments(transformed, flat, ties)
            moments["integer"] = integer_valued(flat)
        self.theta_dim = theta.shape[-1]
        self.x_shape = Size(x_shape)
        self.theta_loc, self.theta_scale = _loc_scale(theta.mean(0), theta.std(0), self.z_score)
        self.x_loc, self.x_scale = _loc_scale(moments["mean"], moments["std"], self.z_score)
        self.x_min, self.x_max = moments["min"], moments["max"]
        self.x_integer = moments["integer"] & (self.x_max > self.x_min)
        self._remember_region(theta)
        self.num_simulations = 0
        self.validity = None  # belongs to the previous training data
        self.condition_dim = None  # set by whoever knows the columns (train)
        self._build()

    def _build(self) -> None:
        raise NotImplementedError

    def _remember_region(self, theta: Tensor) -> None:
        """Box, mean, whitening matrix and largest Mahalanobis radius of the training theta."""
        self.theta_min, self.theta_max = theta.min(0).values, theta.max(0).values
        self.theta_mean = theta.mean(0)
        centred = theta - self.theta_mean
        covariance = centred.T @ centred / max(len(theta) - 1, 1)
        eye = torch.eye(theta.shape[-1], dtype=theta.dtype)
        covariance = covariance + (1e-6 * covariance.diagonal().mean() + 1e-12) * eye
        factor, info = torch.linalg.cholesky_ex(covariance)
        if info != 0:  # degenerate (e.g. very few simulations): per-coordinate scales only
            factor = covariance.diagonal().sqrt().diag()
        self.theta_whiten = torch.linalg.inv(factor)
        self.theta_radius = (centred @ self.theta_whiten.T).norm(dim=-1).max()

    def outside(self, theta: Tensor) -> Tensor:
        r"""Which parameters lie outside the region of `theta` seen in training.

        A parameter vector is outside when a coordinate leaves the range of the training
        parameters or when its Mahalanobis distance to their mean (under their
        covariance) exceeds the largest distance among them: there the estimator
        extrapolates.

        Arguments:
            theta: `(*, D)` parameters.

        Returns:
            `(*)` booleans.

        Example:
            >>> from pyro_sbi import NLE
            >>> theta = torch.rand(500, 2)
            >>> estimator = NLE()
            >>> _ = estimator.fit(theta, theta, max_epochs=1, progress=False)
            >>> estimator.outside(torch.tensor([[0.5, 0.5], [1.5, 0.5]]))
            tensor([False,  True])
        """
        self.check_trained()
        if self.theta_min is None:  # saved before the region was kept
            return torch.zeros(theta.shape[:-1], dtype=torch.bool)
        theta = theta.to(self.theta_min.dtype)
        box = ((theta < self.theta_min) | (theta > self.theta_max)).any(-1)
        distance = ((theta - self.theta_mean) @ self.theta_whiten.T).norm(dim=-1)
        return box | (distance > self.theta_radius)

    def fit(self, theta: Tensor | StoredPairs, x: Tensor | None = None, **options) -> object:
        r"""Builds the estimator afresh for `(theta, x)` and trains it.

        Arguments:
            theta: `(n, D)` parameters, or a :class:`~pyro_sbi.streamed.StoredPairs`
                holding both, whose outputs are read from disk block by block (then `x`
                is `None`; see :attr:`streams`).
            x: `(n, *x_shape)` simulator outputs for those parameters.
            options: options of :func:`pyro_sbi.fitting.fit` (`max_epochs`, `batch_size`,
                `learning_rate`, `patience`, `seed`, `device`, `progress`, ...); they
                override :attr:`fit_defaults`.

        Returns:
            The training :class:`~pyro_sbi.fitting.History`.

        Raises:
            pyro_sbi.fitting.TrainingInterrupted: on Ctrl-C after the first epoch; the
                estimator is then trained, with the best weights validated so far.
        """
        from pyro_sbi.fitting import TrainingInterrupted, fit  # imported here: no cycle

        if isinstance(theta, StoredPairs):
            self._check_stored(theta, x)
        else:
            theta, x = self._check_pair(theta, x)
        seed = options.get("seed")
        with torch.random.fork_rng(enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            self.build(theta, x)
        try:
            history = fit(self, theta, x, **{**self.fit_defaults, **options})
        except TrainingInterrupted:  # the best weights so far: a usable estimator
            self.num_simulations = len(theta)
            raise
        finally:
            self.requires_grad_(False)
            self.eval()
        self.num_simulations = len(theta)
        return history

    # saving ---------------------------------------------------------------------------

    def config(self) -> dict:
        """The constructor's keyword arguments as JSON-compatible values (for :meth:`save`)."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict, **overrides) -> Estimator:
        """Builds an untrained estimator from :meth:`config`; `overrides` take precedence.

        The classes that :meth:`config` writes by name are found again: `flow` in
        `zuko.flows` (pass `flow=MyFlow` for a class from elsewhere), `activation` in
        `torch.nn`. Option names of files written before a rename are read too.
        """
        config = {_RENAMED.get(key, key): value for key, value in config.items()}
        embedding = config.pop("embedding", None)  # a network is saved by its class name only
        if embedding is not None and "embedding" not in overrides:
            raise ValueError(
                f"the saved {cls.__name__} used an embedding network ({embedding}): pass a new "
                f"instance, {cls.__name__}.load(path, embedding=...)"
            )
        if "flow" in config and "flow" not in overrides:
            overrides["flow"] = flow_by_name(config["flow"], cls.__name__)
        if isinstance(config.get("activation"), str):
            config["activation"] = activation_by_name(config["activation"], cls.__name__)
        return cls(**{**config, **overrides})

    def save(self, path: str | Path) -> None:
        r"""Writes the trained estimator to one file, without pickling any object.

        The file holds the weights and z-score statistics (tensors) and a JSON string
        with the format version, the class, the constructor options, the shapes and the
        number of training simulations. Read it back with :meth:`load`.

        Arguments:
            path: where to write.
        """
        if not self.trained:
            raise UntrainedEstimatorError(
                f"cannot save an untrained {type(self).__name__}: train it first with "
                "pyro_sbi.train(model, ..., num_simulations=...) or estimator.fit(theta, x), "
                "then call save"
            )
        header = {
            "format": FORMAT_VERSION,
            "class": type(self).__name__,
            "options": self.config(),
            "x_shape": list(self.x_shape),
            "theta_dim": self.theta_dim,
            "num_simulations": self.num_simulations,
        }
        if self.condition_dim is not None:
            header["condition_dim"] = self.condition_dim
        if self.validity is not None:
            header["validity"] = {
                "class": type(self.validity).__name__,
                "options": self.validity.config(),
                "theta_dim": self.validity.theta_dim,
                "num_simulations": self.validity.num_simulations,
            }
        torch.save({"header": json.dumps(header), "state": self.state_dict()}, Path(path))

    @classmethod
    def load(cls, path: str | Path, **overrides) -> Estimator:
        r"""Reads an estimator written by :meth:`save`.

        The file is read with `torch.load(..., weights_only=True)`: a file carrying a
        pickled object is refused, and so is a damaged file or one whose weights are not
        all finite.

        Arguments:
            path: the file.
            overrides: constructor options that JSON cannot carry (an embedding network,
                a flow class outside `zuko.flows`).

        Returns:
            The trained estimator, frozen, on the CPU.

        Example:
            >>> import tempfile, zuko
            >>> from pyro_sbi import NLE
            >>> theta = torch.randn(300, 1)
            >>> estimator = NLE(zuko.flows.MAF)
            >>> _ = estimator.fit(theta, theta + torch.randn(300, 1), max_epochs=1, progress=False)
            >>> with tempfile.TemporaryDirectory() as folder:
            ...     estimator.save(f"{folder}/nle.pt")
            ...     clone = NLE.load(f"{folder}/nle.pt")
            >>> clone.log_prob(torch.zeros(1), torch.zeros(1)) == estimator.log_prob(
            ...     torch.zeros(1), torch.zeros(1))
            tensor(True)
        """
        header, state = _read(Path(path))
        if header["class"] != cls.__name__:
            raise ValueError(f"{path} holds a {header['class']}, not a {cls.__name__}")
        estimator = cls.from_config(header["options"], **overrides)
        estimator.theta_dim = header["theta_dim"]
        estimator.condition_dim = header.get("condition_dim")
        estimator.x_shape = Size(header["x_shape"])
        for name in BUFFERS:
            setattr(estimator, name, state.get(name))
        estimator._build()
        if "validity" in header:
            estimator.validity = _load_validity(header["validity"], state)
        estimator.load_state_dict(state)
        estimator.num_simulations = header["num_simulations"]
        estimator.requires_grad_(False)
        estimator.eval()
        return estimator

    # evaluation ---------------------------------------------------------------------

    def _embedded(self, x_z: Tensor) -> Tensor:
        """Flat z-scored `x_z (*, L)` through the `embedding` network, `(*, E)`, if any."""
        embedding = getattr(self, "embedding", None)
        if embedding is None:
            return x_z
        batch = x_z.shape[:-1]
        features = embedding(x_z.reshape((-1, *self.x_shape)))
        return features.reshape(batch + features.shape[-1:])

    def check_trained(self) -> None:
        """Raises :class:`UntrainedEstimatorError` when the estimator was never fitted."""
        if not self.trained:
            raise UntrainedEstimatorError(
                f"the estimator {type(self).__name__} has not been trained: call "
                "pyro_sbi.train(model, ..., num_simulations=...) (or estimator.fit(theta, x)) "
                "before asking for log_prob"
            )

    def check_support(self, x: Tensor) -> None:
        r"""Raises a `ValueError` naming the first value of `x` outside the learned support.

        Real-valued outputs have nothing to check beyond their shape and finiteness;
        an estimator of discrete columns (:class:`~pyro_sbi.MNLE`) checks their values.

        Arguments:
            x: `(*, *x_shape)` finite simulator outputs.
        """

    @property
    def support(self) -> constraints.Constraint:
        """The support of `x`: real values with `len(x_shape)` event dimensions."""
        event_dim = len(self.x_shape) if self.x_shape is not None else 1
        return constraints.independent(constraints.real, event_dim)

    def _prepare(self, x: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        r"""Broadcasts and z-scores a pair for the networks.

        Arguments:
            x: `(*, *x_shape)` simulator outputs.
            theta: `(*, D)` parameters.

        Returns:
            `x_z (*, L)` and `theta_z (*, D)` on one broadcast batch shape, each a
            broadcast view where it was broadcast.
        """
        self.check_trained()
        if x.is_complex() or x.dtype == torch.bool:
            raise ValueError(
                f"{type(self).__name__}: x must hold real numbers; got a tensor of dtype "
                f"{x.dtype} and shape {tuple(x.shape)}"
            )
        event_dim = len(self.x_shape)
        if tuple(x.shape[x.dim() - event_dim :]) != tuple(self.x_shape) or x.dim() < event_dim:
            raise ValueError(
                f"{type(self).__name__}: x must end in the simulator's output shape "
                f"{tuple(self.x_shape)}; got x of shape {tuple(x.shape)}"
            )
        if theta.dim() < 1 or theta.shape[-1] != self.theta_dim:
            raise ValueError(
                f"{type(self).__name__}: theta must have shape (*, {self.theta_dim}); "
                f"got {tuple(theta.shape)}"
            )
        x_batch = x.shape[: x.dim() - event_dim]
        batch = torch.broadcast_shapes(x_batch, theta.shape[:-1])
        # z-score before broadcasting, so that a theta shared by a plate of trials (or an
        # x shared by many parameters) stays a stride-0 view (see `distinct`), also when
        # it comes already broadcast
        x = distinct(x.reshape(x_batch + (self.x_features,)))
        x_z, theta_z = self._standardize(x, distinct(theta))
        return x_z.expand(batch + (self.x_features,)), theta_z.expand(batch + (self.theta_dim,))

    def _transform(self, x: Tensor) -> Tensor:
        """A fixed per-column map of flat `x (*, L)` applied before z-scoring (identity)."""
        return x

    def _standardize(self, x: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        """Z-scores flat `x (*, L)` (after :meth:`_transform`) and `theta (*, D)`."""
        dtype = self.x_loc.dtype
        x_z = (self._transform(x.to(dtype)) - self.x_loc) / self.x_scale
        theta_z = (theta.to(dtype) - self.theta_loc) / self.theta_scale
        return x_z, theta_z

    def warn_if_outside(self, x: Tensor, *, name: str = "x", margin: float = 0.5) -> bool:
        r"""Warns when `x` lies outside the range of the training simulations.

        The range is the per-feature [min, max] of the training `x`, widened by `margin`
        times its width. Outside it, the estimator extrapolates and its density is not
        to be trusted.

        Arguments:
            x: `(*, *x_shape)` values to check.
            name: what to call `x` in the warning (a site name, for instance).
            margin: how far outside the training range, relative to its width, is allowed.

        Returns:
            Whether a warning was issued.
        """
        if not self.trained or x.requires_grad:
            return False
        last, version = getattr(self, "_last_checked", (None, None))
        if last is not None and last() is x and version == x._version:
            return False  # the same observation again (each step of MCMC): checked already
        self._last_checked = (weakref.ref(x), x._version)
        flat = x.detach().reshape(-1, self.x_features).to(self.x_min.dtype)
        width = self.x_max - self.x_min
        low, high = self.x_min - margin * width, self.x_max + margin * width
        outside = (flat < low) | (flat > high)
        if not bool(outside.any()):
            return False
        features = outside.any(0).nonzero().flatten().tolist()
        warnings.warn(
            f"{name}: {int(outside.any(-1).sum())} of {len(flat)} values lie outside the range "
            f"of the {self.num_simulations} training simulations (features {features}); the "
            f"estimator {type(self).__name__} is extrapolating there and its log_prob is "
            "unreliable. Train with a prior or proposal that covers the observations.",
            stacklevel=3,
        )
        return True


_HEADER_KEYS = {"format", "class", "options", "x_shape", "theta_dim", "num_simulations"}


def _read(path: Path) -> tuple[dict, dict[str, Tensor]]:
    """The JSON header and the tensors of an estimator file, or a clear error.

    Only tensors are unpickled (`weights_only=True`). Every way a file can fail to be an
    estimator file (another format, truncated, corrupted, an object that would have to be
    unpickled, tensors that are not finite) raises a `ValueError` naming `path`; a
    missing file raises `FileNotFoundError`.
    """
    damaged = f"{path} is not a pyro_sbi estimator file (or it is damaged)"
    with open(path, "rb") as file:  # FileNotFoundError, IsADirectoryError, ... as they are
        is_zip = zipfile.is_zipfile(file)
    if not is_zip:  # torch.save writes a zip archive; a truncated one has lost its directory
        raise ValueError(f"{damaged}: it is not the archive that estimator.save writes")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        if found is None:
            raise ValueError(f"{damaged}: its content cannot be read") from None
        raise ValueError(
            f"{path} is not a pyro_sbi estimator file: it holds a pickled Python object "
            f"({found.group(1)}), and pyro_sbi never unpickles objects, whose loading can run "
            "arbitrary code. An estimator file holds only tensors and a JSON header: write "
            "one with estimator.save(path)"
        ) from None
    except Exception as error:  # torch's errors on a damaged archive vary
        raise ValueError(f"{damaged}: torch cannot read it ({type(error).__name__})") from None
    header = state = None
    if isinstance(payload, dict) and set(payload) == {"header", "state"}:
        state = payload["state"]
        with contextlib.suppress(TypeError, ValueError):  # not a string, or invalid JSON
            header = json.loads(payload["header"])
    well_formed = (
        isinstance(header, dict)
        and "format" in header
        and isinstance(state, dict)
        and all(isinstance(value, Tensor) for value in state.values())
    )
    if not well_formed:
        raise ValueError(f"{damaged}: it lacks the header or the tensors that save writes")
    if header["format"] != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {header['format']}; this version of pyro_sbi "
            f"reads version {FORMAT_VERSION}"
        )
    if not _HEADER_KEYS <= set(header):
        missing = ", ".join(sorted(_HEADER_KEYS - set(header)))
        raise ValueError(f"{damaged}: its header lacks {missing}")
    for name, value in state.items():
        if value.is_floating_point() or value.is_complex():
            finite = torch.isfinite(value)
            if not bool(finite.all()):
                raise ValueError(
                    f"{path}: the saved tensor {name!r} of shape {tuple(value.shape)} holds "
                    f"{int((~finite).sum())} non-finite values (NaN or inf); the estimator "
                    "would give NaN log-densities. The file is damaged or the estimator was "
                    "saved after training diverged: train it again and save it"
                )
    return header, state


def distinct(tensor: Tensor) -> Tensor:
    r"""The smallest tensor that broadcasts back to `tensor`: its stride-0 dims cut to 1.

    A parameter shared by a plate of trials is a broadcast view (stride 0 along the
    trials); whatever depends on the parameter alone is computed once on this smaller
    tensor and broadcast back, instead of once per trial.

    Arguments:
        tensor: `(*batch, D)` values, possibly a broadcast view.

    Returns:
        `(*batch', D)` with `batch'[i] = 1` where `tensor` has stride 0 along dim `i`
        (the last dim is kept whole).

    Example:
        >>> theta = torch.randn(5, 4)
        >>> distinct(theta.expand(100, 5, 4)).shape
        torch.Size([1, 5, 4])
    """
    index = tuple(
        slice(0, 1) if stride == 0 and size > 1 else slice(None)
        for size, stride in zip(tensor.shape[:-1], tensor.stride()[:-1], strict=True)
    )
    return tensor[index]


def estimator_class(name: str, owner: str) -> type[Estimator]:
    """The estimator class called `name` (every subclass of :class:`Estimator` is known).

    Arguments:
        name: the class name a saved file gives.
        owner: who reads it, for the message.

    Example:
        >>> from pyro_sbi import NLE
        >>> estimator_class("NLE", "Ensemble") is NLE
        True
    """
    if name not in _CLASSES:
        raise ValueError(f"unknown estimator class {name!r} in the saved {owner}")
    return _CLASSES[name]


def _load_validity(header: dict, state: dict) -> Estimator:
    kind = estimator_class(
        header.get("class", "ValidityClassifier"), "estimator"
    )  # older files name none
    validity = kind.from_config(header["options"])
    validity.theta_dim, validity.x_shape = header["theta_dim"], Size([1])
    for name in BUFFERS:
        setattr(validity, name, state.get(f"validity.{name}"))
    validity._build()
    validity.num_simulations = header["num_simulations"]
    return validity


def _tied_moments(transformed: Tensor, flat: Tensor, ties: Tensor | None) -> dict[str, Tensor]:
    """Mean, sd, min and max of each column of `(n, L)` data, NaN left out, pooled by ties.

    Columns with one id in `ties (L,)` (e.g. one feature of every trial of a set) share
    statistics computed over all their values; a missing value (NaN, a padded trial) is
    left out. A group with fewer than two values gets mean 0 and sd 0 (no scaling), one with
    none the range [0, 0].
    """
    size = flat.shape[-1]
    ties = torch.arange(size) if ties is None else ties.to(torch.long)
    if ties.shape != (size,):
        raise ValueError(
            f"the embedding's tied_features gave {tuple(ties.shape)} ids for {size} features"
        )
    groups = int(ties.max()) + 1

    def pooled(values: Tensor) -> Tensor:  # (L,) sums per column -> (L,) sums per group
        return values.new_zeros(groups).index_add_(0, ties, values)[ties]

    present = ~torch.isnan(transformed)
    count = pooled(present.sum(0).to(transformed.dtype))
    zero = torch.zeros_like(transformed)
    mean = pooled(torch.where(present, transformed, zero).sum(0)) / count.clamp(min=1)
    squares = torch.where(present, (transformed - mean) ** 2, zero).sum(0)
    std = (pooled(squares) / (count - 1).clamp(min=1)).sqrt()
    few = count < 2
    mean, std = torch.where(few, 0.0, mean), torch.where(few, 0.0, std)
    empty = count == 0  # never observed: a range of one point, 0 (the files hold no inf)
    low = torch.where(empty, 0.0, _pooled_extreme(flat, ties, groups, largest=False))
    high = torch.where(empty, 0.0, _pooled_extreme(flat, ties, groups, largest=True))
    return {"mean": mean, "std": std, "min": low, "max": high}


def _pooled_extreme(flat: Tensor, ties: Tensor, groups: int, *, largest: bool) -> Tensor:
    """`(L,)` the largest (or smallest) non-NaN value of each column's group of `flat (n, L)`."""
    fill = -math.inf if largest else math.inf
    column = flat.nan_to_num(nan=fill).amax(0) if largest else flat.nan_to_num(nan=fill).amin(0)
    out = torch.full((groups,), fill, dtype=flat.dtype)
    out = out.scatter_reduce(0, ties, column, reduce="amax" if largest else "amin")
    return out[ties]


def _loc_scale(loc: Tensor, scale: Tensor, z_score: bool) -> tuple[Tensor, Tensor]:
    """The z-score location and scale from the data's mean and sd (0 and 1 without)."""
    if not z_score:
        return torch.zeros_like(loc), torch.ones_like(scale)
    # A constant feature keeps unit scale rather than dividing by zero.
    scale = torch.where(scale > 1e-8 * (1 + loc.abs()), scale, torch.ones_like(scale))
    return loc, scale
