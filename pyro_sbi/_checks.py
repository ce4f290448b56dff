"""Checks of the arguments that several public functions share."""

from __future__ import annotations

__all__ = ["as_count"]

import numbers
import operator

import numpy as np


def as_count(value: object, name: str, *, minimum: int = 1) -> int:
    """A count argument as an `int`: an integer, or a float with an integral value.

    Scientists write budgets as `1e4`; it becomes `10000`. A non-integral or
    non-finite float, a string, a bool or a count below `minimum` is refused.

    Arguments:
        value: the count as given.
        name: the function and argument, for the message (e.g. `"train: num_simulations"`).
        minimum: the smallest count allowed.

    Returns:
        The count.

    Raises:
        TypeError: `value` is not a number (a bool counts as none).
        ValueError: `value` is not a whole number, or is below `minimum`.

    Example:
        >>> as_count(1e4, "train: num_simulations", minimum=2)
        10000
    """
    expected = f"{name} must be a whole number >= {minimum}"
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{expected} (such as 1000 or 1e3); got {value!r} of type {type(value).__name__}"
        )
    try:
        count = operator.index(value)
    except TypeError:  # a float: only an integral value is a count
        if not float(value).is_integer():
            raise ValueError(
                f"{expected}; got {value!r}, which is not a whole number: pass an integer"
            ) from None
        count = int(value)
    if count < minimum:
        raise ValueError(f"{expected}; got {value!r}")
    return count
