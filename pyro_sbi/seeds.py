r"""One way to derive seeds.

Every seed the library derives from a user's seed comes from :func:`derive`: the root
seed of a site's simulations from `train`'s seed and the site's name, the seed of a row
(or of a batch, from its first row) from that root, and the seed of a row retried alone
after its batch failed from the batch's seed. Derived seeds are independent draws of
numpy's `SeedSequence`, not neighbouring integers, so no two derivations collide by
accident (seed 1's second row is not seed 2's first).
"""

from __future__ import annotations

__all__ = ["derive"]

import math

import numpy as np


def derive(root: int, *keys: int | str) -> int:
    """A seed in `[0, 2**63)` derived from `root` and `keys`.

    Arguments:
        root: a non-negative integer seed.
        keys: integers (row numbers, indices) and strings (site names), in order; the
            same root and keys always give the same seed, other keys another one.

    Example:
        >>> derive(0, 3) == derive(0, 3) != derive(0, 4)
        True
        >>> derive(0, "x") != derive(0, "y")
        True
    """
    words = [root]
    for key in keys:
        if isinstance(key, str):
            encoded = key.encode().ljust(4 * math.ceil(len(key) / 4 + 1), b"\0")
            words.extend(np.frombuffer(encoded, "<u4").tolist())
    spawn_key = tuple(key for key in keys if not isinstance(key, str))
    state = np.random.SeedSequence(words, spawn_key=spawn_key).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))
