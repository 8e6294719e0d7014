"""Scrambled Sobol' points: Owen's nested uniform scramble by keyed hashes, or LMS plus a shift.

:func:`scrambled_points` gives points of one randomized replicate of a Sobol' sequence, each
moved to the centre of its cell of width ``2^-SOBOL_BITS``, so that no coordinate is 0 or 1
and ``1 - u`` is again a cell centre; :func:`nested_scramble` is the nested scramble of
integer points, hashed on the sampler's device.

References
----------
A. B. Owen, "Randomly permuted (t, m, s)-nets and (t, s)-sequences", in Monte Carlo and
Quasi-Monte Carlo Methods in Scientific Computing, Lecture Notes in Statistics 106,
299-317 (1995).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy.stats import qmc

from mcdiff.noise.chunks import chunk_values
from mcdiff.noise.philox import as_words, splitmix64, unsigned_shift_right

SOBOL_MAX_DIM = 21201
"""The largest dimension of scipy's Sobol' direction numbers."""

SOBOL_BITS = 30
"""Bits of every scrambled coordinate: points lie on the centres of a 2^-30 grid."""


def scrambled_points(
    dim: int, rng: np.random.Generator, first: int, count: int, scramble: str, device: torch.device
) -> np.ndarray:
    """Points ``first .. first + count - 1`` ``(count, dim)`` of a scrambled replicate, centred in cells.

    ``scramble`` is ``"nested"`` (:func:`nested_scramble`, its key drawn from ``rng``) or
    ``"lms"``. Both scrambles keep every replicate a (t, m, s)-net; each point is moved to
    the centre of its cell of width 2^-30, so ``1 - u`` is again a cell centre. ``device``
    is where the nested scramble hashes.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # balance needs 2^m: we use 2^m
        engine = qmc.Sobol(d=dim, scramble=scramble == "lms", bits=SOBOL_BITS, seed=rng)
        if first:
            engine.fast_forward(first)
        if scramble == "lms":
            u = engine.random(count)
        else:
            key = int(rng.integers(0, 2**64, dtype=np.uint64))
            ints = (engine.random(count) * 2.0**SOBOL_BITS).astype(np.uint64)
            u = nested_scramble(ints, key, device) * 2.0**-SOBOL_BITS
    return u + 2.0 ** -(SOBOL_BITS + 1)


def nested_scramble(points: np.ndarray, key: int, device: torch.device) -> np.ndarray:
    r"""Owen's nested uniform scramble of ``bits``-bit integer points, one keyed hash per node.

    Write coordinate ``j`` of a point as ``x = sum_k a_k 2^(b-k)`` with ``b = SOBOL_BITS``
    bits ``a_1 .. a_b`` (most significant first). The scrambled point has bits

    .. math:: a'_k = a_k \oplus \pi_{j,k}(a_1, \dots, a_{k-1}),

    where every node ``(j, k, a_1 .. a_{k-1})`` of the binary tree gets its own random bit
    ``pi``: the top bit of ``splitmix64(splitmix64((j, k, prefix)) ^ key)``. Distinct nodes
    hash distinct 64-bit words, so for a uniform random ``key`` the bits behave as the
    independent fair coins of nested uniform scrambling, truncated at ``b`` bits (the
    randomisation below ``2^-b`` is the cell centring of the caller).

    The hashes (about 900 integer operations per coordinate) run as torch integer operations
    on ``device``, all levels of a piece of :data:`~mcdiff.noise.chunks.CHUNK_VALUES` nodes
    at once: on a GPU this is the cheap part of a batch. The words are the same on every
    device.

    Parameters
    ----------
    points : array (n, d) of uint64
        Unscrambled points, each coordinate an integer in ``[0, 2^b)``.
    key : int
        Random 64-bit key of the replicate.
    device : torch.device
        Where to hash.

    Returns
    -------
    array (n, d) of uint64
        The scrambled integers.
    """
    bits = SOBOL_BITS
    words = as_words(points).to(device).reshape(-1)
    level = torch.arange(1, bits + 1, device=device, dtype=torch.int64)[:, None]  # k, on axis 0
    key64 = int(as_words(key))
    size = max(1, chunk_values(device) // bits)
    out = torch.empty_like(words)
    for first in range(0, len(words), size):  # every level of `size` coordinates at once: (bits, size) nodes
        x = words[first : first + size]
        column = torch.arange(first, first + len(x), device=device, dtype=torch.int64) % max(1, points.shape[1])
        node = (x >> (bits + 1 - level)) | (level << bits) | (column << (bits + 5))
        coin = unsigned_shift_right(splitmix64(splitmix64(node) ^ key64), 63)
        out[first : first + size] = x ^ (coin << (bits - level)).sum(0)  # distinct bits: the sum is an OR
    return np.ascontiguousarray(out.reshape(points.shape).cpu().numpy()).view(np.uint64)
