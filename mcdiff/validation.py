"""Arguments checked at the public boundary: integers, seeds, confidence levels, batch sizes, names.

Every check raises ``ValueError`` naming the argument, the bad value and what is allowed, and
returns the value in its plain Python type (``int``, ``float``) so that it can be stored in a
result's attributes. A check whose allowed range is the argument's own (``0 <= rank < 64``)
uses :func:`is_integer` and says its range itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SEED_LIMIT = 2**63
"""Seeds are integers in ``[0, 2^63)``: a result records its seed as a NetCDF attribute, which
holds a signed 64-bit integer at most (numpy's ``SeedSequence`` and torch take any such seed)."""


def is_integer(value) -> bool:
    """Whether ``value`` is a Python or numpy integer and not a ``bool``."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_integer(name: str, value: int, minimum: int = 1) -> int:
    """Return ``value`` as an ``int`` if it is an integer ``>= minimum``, else raise ``ValueError``.

    The message says ``"{name} must be a positive integer"`` for ``minimum=1`` and
    ``"{name} must be an integer >= {minimum}"`` otherwise, with the value given.
    """
    if not is_integer(value) or value < minimum:
        allowed = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(value)


def check_seed(seed: int) -> int:
    """Return ``seed`` as an ``int`` if it is an integer in ``[0, 2^63)``, else raise ``ValueError``."""
    if not is_integer(seed) or not 0 <= seed < SEED_LIMIT:
        raise ValueError(
            f"seed must be a non-negative integer below 2**63 (a NetCDF int64 attribute), got {seed!r}"
        )
    return int(seed)


def check_confidence(confidence: float) -> float:
    """Return ``confidence`` if it lies in (0, 1), else raise ``ValueError``."""
    if not isinstance(confidence, (int, float, np.floating)) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence!r}")
    return float(confidence)


def check_batch_size(batch_size: int, design) -> int:
    """Return ``batch_size`` as an ``int`` if a batch of it holds a whole group unit (a pair) of
    ``design`` (anything with a ``name`` and a ``unit``, e.g. a :class:`~mcdiff.designs.Design`),
    else raise ``ValueError``."""
    if not is_integer(batch_size) or batch_size < design.unit:
        raise ValueError(
            f"batch_size={batch_size!r} cannot hold a pair of design {design.name!r}: "
            f"use an integer >= {design.unit}"
        )
    return int(batch_size)


def check_unique_names(label: str, names: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``names`` (of statistics, designs, ...) are unique and not empty."""
    if not names:
        raise ValueError(f"at least one {label} is needed")
    if len(set(names)) != len(names):
        raise ValueError(f"{label} names must be unique, got {list(names)}")
