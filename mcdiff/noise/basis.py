"""The coordinates noise is laid on: pixels, or an orthonormal DCT-II basis, frame by frame.

A component is generated in frames, its last three axes (:func:`frame_layout`).
:func:`coordinate_ranks` gives each coordinate's place in the component's coordinate order
(the order the leading Sobol' coordinates of RQMC fill): flat in the pixel basis, lowest
spatial frequency first in the DCT basis; :func:`inverse_dct` maps DCT coefficients back to
pixels, N(0, I) to N(0, I).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch


def frame_layout(shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    """Per-step frame shape and frame count of a component: frames are its last three axes.

    A component ``(T, C, H, W)`` is ``T`` frames ``(C, H, W)``, drawn one at a time; one of
    three axes or fewer is a single frame.
    """
    frame = tuple(shape[-3:])
    return frame, math.prod(shape[:-3])


def coordinate_ranks(shape: tuple[int, ...], basis: str) -> tuple[np.ndarray, np.ndarray]:
    """Rank of every coordinate of frame ``f`` in the component's coordinate order: ``base + f · stride``.

    ``"pixel"``: the flat index. ``"dct"``: the position of the coefficient when the
    component's coefficients are listed lowest spatial frequency ``h + w`` first (over its
    last two axes), ties in flat order (step, channel, h). With ``P`` positions before the
    spatial axes and ``N(f)``, ``M(f)`` the numbers of ``(h, w)`` with ``h + w < f``,
    ``h + w = f``, coefficient ``(o, h, w)`` has rank ``P N(h + w) + o M(h + w) + h - h_min``.

    Returns
    -------
    base, stride : int64 arrays of the frame's shape
    """
    frame, _ = frame_layout(shape)
    size = math.prod(frame)
    if basis == "pixel" or len(shape) < 2:
        return np.arange(size).reshape(frame), np.full(frame, size)
    height, width = shape[-2:]
    h, w = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    frequency = (h + w).ravel()
    per_frequency = np.bincount(frequency, minlength=height + width - 1)
    below = np.concatenate([[0], np.cumsum(per_frequency)[:-1]])
    h_min = np.maximum(0, np.arange(height + width - 1) - (width - 1))
    outer, outer_per_frame = math.prod(shape[:-2]), math.prod(frame[:-2])
    within = (h.ravel() - h_min[frequency]).reshape(height, width)
    count, first = per_frequency[frequency].reshape(height, width), below[frequency].reshape(height, width)
    channel = np.arange(outer_per_frame).reshape(*frame[:-2], 1, 1)
    return outer * first + channel * count + within, np.broadcast_to(outer_per_frame * count, frame).copy()


def inverse_dct(coefficients: torch.Tensor, axes: int) -> torch.Tensor:
    """Orthonormal inverse DCT-II of the last ``axes`` (1 or 2) axes: maps N(0, I) to N(0, I).

    ``x_n = sum_k s_k c_k cos(pi (2n + 1) k / 2N)`` with ``s_0 = sqrt(1/N)``, ``s_k = sqrt(2/N)``.
    Since ``cos(pi (2(N-1-n) + 1) k / 2N) = (-1)^k cos(pi (2n + 1) k / 2N)``, the even-``k`` and
    odd-``k`` sums ``E_n``, ``O_n`` over the first half of the positions give both halves,
    ``x_n = E_n + O_n`` and ``x_{N-1-n} = E_n - O_n``: half the arithmetic of the direct sum. Each
    sum runs term by term in ``k`` order with elementwise operations on the tensor's own
    device, so that each value is the same whatever the batch (a matrix product's summation
    order may depend on its shape). The coefficients are laid out ``k`` first, so that a term
    is one contiguous slab times one basis value per position ``n``.
    """
    for axis in range(-axes, 0):
        moved = torch.movedim(coefficients, axis, 0)
        n, rest, half = moved.shape[0], moved.shape[1:], (moved.shape[0] + 1) // 2
        terms = moved.reshape(n, 1, -1).contiguous()  # (k, 1, everything else)
        basis = _dct_matrix(n, terms.device, terms.dtype)[:, :half, None]  # (k, n, 1)
        even, odd = (terms.new_zeros((half, terms.shape[-1])) for _ in range(2))
        for k in range(n):
            (odd if k % 2 else even).addcmul_(terms[k], basis[k])
        mirrored = (even - odd)[: n // 2].flip(0)
        coefficients = torch.movedim(torch.cat([even.add_(odd), mirrored]).reshape(n, *rest), 0, axis)
    return coefficients


@functools.lru_cache(maxsize=16)
def _dct_matrix(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``(k, n)``: row ``k`` is ``s_k cos(pi (2n + 1) k / 2N)``."""
    k = np.arange(n)
    basis = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * np.sqrt(2 / n)
    basis[0] /= np.sqrt(2)
    return torch.from_numpy(basis).to(device=device, dtype=dtype)
