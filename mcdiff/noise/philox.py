"""The counter-based generator: Philox4x32-10 words, splitmix64 stream keys, Box-Muller normals.

Philox4x32-10 (Salmon et al. 2011) is evaluated with integer tensor operations, so the same
key and counter give the same 32-bit words on every device; a ``(key, counter)`` pair is the
whole state, so any value is computed without the values before it. A stream's key is a
splitmix64 hash of ``(seed, *index)`` (:func:`stream_keys`), a component's counter word the
CRC-32 of its name (:func:`component_id`), and :func:`standard_normal` turns the words into
N(0, 1) by the Box-Muller transform.

References
----------
J. K. Salmon, M. A. Moraes, R. O. Dror and D. E. Shaw, "Parallel random numbers: as easy as
1, 2, 3", SC '11 (2011), doi:10.1145/2063384.2063405.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch

GENERATOR = "philox4x32-10, Box-Muller (float32; float64 for float64 samplers)"
"""How pseudo-random noise is generated (recorded in a store's fingerprint)."""

_MASK = 0xFFFFFFFF
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)


def philox4x32(
    counter: tuple[torch.Tensor, ...], key: tuple[torch.Tensor, torch.Tensor], rounds: int = 10
) -> tuple[torch.Tensor, ...]:
    """The Philox4x32 bijection of a 128-bit ``counter`` under a 64-bit ``key``.

    Each round, with multipliers ``M0 = 0xD2511F53``, ``M1 = 0xCD9E8D57``::

        (hi0, lo0) = mulhilo(M0, x0);   (hi1, lo1) = mulhilo(M1, x2)
        (x0, x1, x2, x3) = (hi1 ^ x1 ^ k0, lo1, hi0 ^ x3 ^ k1, lo0)

    and the key is bumped by the Weyl constants ``(0x9E3779B9, 0xBB67AE85)`` between rounds.
    The words are int64 tensors. A 64-bit product is formed in int64, which wraps modulo
    2^64 in torch on every device (two's complement; the AVX2, AVX-512 and CUDA kernels and
    the scalar fallback all wrap), so its bits are the unsigned product's: ``p >> 32``
    (arithmetic) holds ``hi`` in its low 32 bits and ``p`` itself ``lo``
    (``tests/test_noise.py`` checks this against exact integer products; splitting ``M``
    into 16-bit halves avoids the wrap but was 3.3 times slower). Only ``x0`` and ``x2`` are
    multiplied, so only they are masked to 32 bits each round; the other words keep bits
    above 32 that reach a multiply only through an XOR whose result is masked (10 tensor
    operations a round instead of 12, the same words).

    Parameters
    ----------
    counter : four int64 tensors
        The counter words, each in ``[0, 2^32)``; broadcast against each other and ``key``.
    key : two int64 tensors
        The key words, each in ``[0, 2^32)``.
    rounds : int
        10 is the published default (7 already passes TestU01's BigCrush).

    Returns
    -------
    four int64 tensors of the broadcast shape, each word in ``[0, 2^32)``
    """
    k0, k1 = key
    x0, x1, x2, x3 = torch.broadcast_tensors(*counter, k0, k1)[:4]  # views: nothing is copied
    bump = torch.arange(rounds, device=k0.device, dtype=torch.int64).reshape(rounds, *([1] * k0.dim()))
    round_k0 = (k0 + bump * _PHILOX_W[0]) & _MASK  # every round's key at once
    round_k1 = (k1 + bump * _PHILOX_W[1]) & _MASK
    for r in range(rounds):
        p0, p1 = x0 * _PHILOX_M[0], x2 * _PHILOX_M[1]
        x0 = (p1 >> 32).bitwise_xor_(x1).bitwise_xor_(round_k0[r]).bitwise_and_(_MASK)
        x2 = (p0 >> 32).bitwise_xor_(x3).bitwise_xor_(round_k1[r]).bitwise_and_(_MASK)
        x1, x3 = p1, p0
    return x0, x1 & _MASK, x2, x3 & _MASK


_SPLITMIX = (0xBF58476D1CE4E5B9 - 2**64, 0x94D049BB133111EB - 2**64)
_GOLDEN = 0x9E3779B97F4A7C15 - 2**64
"""splitmix64's multipliers and increment as the int64 numbers with their bits."""


def unsigned_shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 tensors that hold uint64 bits (torch's ``>>`` is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """The splitmix64 finaliser, a bijection of 64-bit words that mixes every bit into all bits.

    On int64 tensors holding uint64 bits: shifts are logical and products wrap modulo 2^64
    (see :func:`philox4x32`), so the words are those of the unsigned algorithm on any device.
    """
    x = (x ^ unsigned_shift_right(x, 30)) * _SPLITMIX[0]
    x = (x ^ unsigned_shift_right(x, 27)) * _SPLITMIX[1]
    return x ^ unsigned_shift_right(x, 31)


def as_words(values: int | np.ndarray) -> torch.Tensor:
    """Non-negative integers below 2^64 (or uint64 arrays) as int64 tensors with the same bits."""
    return torch.from_numpy(np.asarray(values, dtype=np.uint64).view(np.int64))


def stream_keys(seed: int, *index: int | np.ndarray) -> np.ndarray:
    """64-bit Philox keys of the streams ``(seed, *index)``, one per element of the broadcast index.

    The seed is hashed once by :class:`numpy.random.SeedSequence`; each index word is folded
    in by ``key = splitmix64(key ^ splitmix64(word))``, so distinct index tuples give distinct
    keys but for chance collisions (probability about ``n^2 / 2^65`` among ``n`` streams).
    """
    base = as_words(np.random.SeedSequence(seed).generate_state(1, np.uint64)[0])
    key = base.expand(np.broadcast_shapes(*(np.shape(i) for i in index)))
    for word in index:
        key = splitmix64(key ^ splitmix64(as_words(word) + _GOLDEN))
    return key.numpy().view(np.uint64)


def component_id(name: str) -> int:
    """The counter word of a noise component: CRC-32 of its name.

    A component's draws then do not depend on which other components a sampler declares
    (``x_T`` of DDIM and of DDPM are the same for one address).
    """
    return zlib.crc32(name.encode())


def key_words(keys: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The 64-bit ``keys`` ``(U,)`` as Philox's two 32-bit key words, int64 tensors on ``device``."""
    words = as_words(keys).to(device)
    return words & _MASK, (words >> 32) & _MASK


def standard_normal(
    key: tuple[torch.Tensor, torch.Tensor],
    component: int,
    frames: torch.Tensor,
    size: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    r"""N(0, 1) values ``(U, len(frames), size)`` of ``U`` keyed streams.

    Value ``j`` of frame ``f`` of the stream with key ``k`` comes from the Philox block with
    counter ``(j // 4, f, component, 0)``: its words ``w_0 .. w_3`` give, by Box-Muller,

    .. math:: z_{0,1} = \sqrt{-2 \ln u_1} (\cos, \sin)(2 \pi u_2), \quad
              u_1 = (w_0 + 1) 2^{-32}, \; u_2 = w_1 2^{-32}

    and likewise ``z_{2,3}`` from ``w_2, w_3``. ``u_1 \in (0, 1]``, so every value is finite,
    ``|z| <= 6.66``. The transform runs in float64 when ``dtype`` is float64 and in float32
    otherwise (the result is then cast to ``dtype``): float32 resolves the 32-bit uniforms
    to 2^-24 near 1 and exactly near 0, where the tail comes from. Every operation is
    elementwise, so a value does not depend on the shape of the request it came in.

    Parameters
    ----------
    key : two int64 tensors (U,)
        Key words of each stream (:func:`key_words` of :func:`stream_keys`), on the device
        the values are generated on.
    component : int
        :func:`component_id` of the component.
    frames : int64 tensor (F,)
        Frame (step) indices.
    size : int
        Values per frame.
    dtype : torch.dtype
        Floating-point type of the result.
    """
    device = key[0].device
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    k0, k1 = key[0][:, None, None], key[1][:, None, None]
    c0 = torch.arange(-(-size // 4), device=device, dtype=torch.int64)[None, None, :]
    c1 = frames.to(device=device, dtype=torch.int64)[None, :, None]
    c2 = torch.full((), component, device=device, dtype=torch.int64)
    x = philox4x32((c0, c1, c2, torch.zeros((), device=device, dtype=torch.int64)), (k0, k1))
    scale = 2.0**-32
    u1 = torch.stack([x[0], x[2]], dim=-1).to(compute).add_(1.0).mul_(scale)
    u2 = torch.stack([x[1], x[3]], dim=-1).to(compute).mul_(scale * 2 * math.pi)
    radius = u1.log_().mul_(-2.0).sqrt_()
    z = torch.stack([radius * torch.cos(u2), radius * torch.sin(u2)], dim=-1)
    # word order: (z0, z1) from (w0, w1), then (z2, z3) from (w2, w3)
    return z.reshape(*z.shape[:2], -1)[..., :size].to(dtype)
