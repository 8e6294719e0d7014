"""Noise as a sampler receives it: one batch of evaluations, each component drawn when asked.

A sampler is handed a :class:`Noise` for a batch of ``B`` evaluations. It reads a whole
component as ``noise["x_T"]`` ``(B, *shape)`` and a per-step component one step at a time as
``noise.step("steps", i)`` ``(B, *shape[1:])``, at the step that needs it, so a batch never
holds more than one step's noise. :class:`TensorNoise` wraps noise the caller already has
(tensors ``{name: (B, *shape)}``); :class:`DesignNoise`, which the designs
(:mod:`mcdiff.designs`) hand samplers, generates it on the sampler's device when asked, from
the counter-based generator (:mod:`mcdiff.noise.philox`), in chunks of whole steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import torch

from mcdiff.noise.basis import coordinate_ranks, frame_layout, inverse_dct
from mcdiff.noise.chunks import chunk_values
from mcdiff.noise.philox import component_id, key_words, standard_normal

NoiseSpec = Mapping[str, tuple[int, ...]]
"""Per-evaluation noise shapes by component name, as a sampler declares them."""


class Noise(Mapping):
    """The noise of one batch of evaluations: ``noise[name]`` whole, ``noise.step(name, i)`` per step.

    A mapping from component name to tensor ``(B, *shape)`` (so ``dict(noise)`` holds all of
    it), plus :meth:`step`, which gives index ``i`` of a component's first axis
    ``(B, *shape[1:])`` without forming the rest. Samplers that step through time call
    :meth:`step` at each step, so their memory does not grow with the number of steps.
    """

    spec: dict[str, tuple[int, ...]]

    def __iter__(self) -> Iterator[str]:
        return iter(self.spec)

    def __len__(self) -> int:
        return len(self.spec)

    def step(self, name: str, index: int) -> torch.Tensor:
        """Index ``index`` of the first axis of component ``name``: ``(B, *shape[1:])``."""
        self._step_shape(name, index)
        return self[name][:, index]

    def _step_shape(self, name: str, index: int) -> tuple[int, ...]:
        """The shape of component ``name``, checked to have a step ``index``."""
        shape = self._shape(name)
        if not shape or not 0 <= index < shape[0]:
            raise IndexError(f"noise component {name!r} of shape {shape} has no step {index}")
        return shape

    def _shape(self, name: str) -> tuple[int, ...]:
        if name not in self.spec:
            raise KeyError(f"no noise component {name!r}; this noise has {list(self.spec)}")
        return self.spec[name]


class TensorNoise(Noise):
    """Noise the caller already holds: ``{name: tensor (B, *shape)}``."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        self.tensors = dict(tensors)
        self.spec = {name: tuple(t.shape[1:]) for name, t in self.tensors.items()}

    def __getitem__(self, name: str) -> torch.Tensor:
        self._shape(name)
        return self.tensors[name]


def as_noise(noise: Noise | Mapping[str, torch.Tensor]) -> Noise:
    """``noise`` itself if it is a :class:`Noise`, else its tensors wrapped in :class:`TensorNoise`."""
    return noise if isinstance(noise, Noise) else TensorNoise(noise)


@dataclass(frozen=True)
class Streams:
    """The pseudo-random streams of a batch: evaluation ``b`` reads stream ``index[b]``, negated if ``negate[b]``.

    ``keys`` ``(U,)`` are the 64-bit Philox keys of the distinct streams (an antithetic pair
    shares one); ``index`` ``(B,)`` defaults to one stream per evaluation, ``negate`` to none.
    """

    keys: np.ndarray
    index: np.ndarray | None = None
    negate: np.ndarray | None = None

    @property
    def batch(self) -> int:
        """The number ``B`` of evaluations."""
        return len(self.keys) if self.index is None else len(self.index)


class DesignNoise(Noise):
    """The noise of a batch of addresses under one design, generated when a sampler asks for it.

    Made by :meth:`mcdiff.designs.Design.noise`. Pseudo-random values come from the Philox
    streams the design keyed (:class:`Streams`); the leading coordinates the design computed
    beforehand (RQMC's Sobol' normals), ``leading`` ``(B, lead)``, replace the coordinates of
    rank below ``lead`` in the coordinate order of ``basis`` (``"pixel"`` or ``"dct"``;
    :func:`~mcdiff.noise.basis.coordinate_ranks`, components in declared order); in the DCT
    basis the inverse DCT is applied last.

    ``noise.step("steps", i)`` generates the frames of steps ``i, i + 1, ...`` together, as
    many whole steps as fill :data:`~mcdiff.noise.chunks.CHUNK_VALUES` values for the batch
    on its device (one step when a step alone is larger), keeps them until a step outside
    them is asked for, and hands out step ``i``: memory is bounded by two chunks, whatever
    the number of steps, and small batches pay the per-operation cost of the generator once
    a chunk instead of once a step. With an executor ``ahead``, the chunk after the one in
    use is generated on its thread while the sampler runs, so that where a processor is free
    (or the device queues the work) the sampler does not wait for its noise; the values are
    the same.
    """

    def __init__(
        self,
        spec: NoiseSpec,
        streams: Streams,
        device: torch.device,
        dtype: torch.dtype,
        basis: str = "pixel",
        leading: np.ndarray | None = None,
        ahead: Executor | None = None,
    ):
        if not dtype.is_floating_point:
            raise ValueError(f"noise dtype must be floating point, got {dtype}")
        self.spec = {name: tuple(int(s) for s in shape) for name, shape in spec.items()}
        self.device, self.dtype, self.batch = device, dtype, streams.batch
        self.streams, self.basis = streams, basis
        self._leading_values = leading
        self._leading_tensor: torch.Tensor | None = None
        self._ranks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        offsets = np.cumsum([0] + [math.prod(s) for s in self.spec.values()])
        self._offsets = dict(zip(self.spec, offsets.tolist()))
        self._key = key_words(self.streams.keys, device)
        self._chunk: tuple[str, int, torch.Tensor] | None = None
        self._ahead, self._pending = ahead, None
        self._index = None if self.streams.index is None else torch.from_numpy(self.streams.index).to(device)
        self._sign = (
            None
            if self.streams.negate is None or not self.streams.negate.any()
            else torch.from_numpy(np.where(self.streams.negate, -1.0, 1.0)).to(device=device, dtype=dtype)
        )

    def __getitem__(self, name: str) -> torch.Tensor:
        shape = self._shape(name)
        _, count = frame_layout(shape)
        return self._frames(name, np.arange(count)).reshape(self.batch, *shape)

    def step(self, name: str, index: int) -> torch.Tensor:
        shape = self._step_shape(name, index)
        if len(shape) < 4:
            return super().step(name, index)
        per_step = math.prod(shape[1:-3])
        first, last = index * per_step, (index + 1) * per_step
        held, start, frames = self._chunk or (None, 0, None)
        if held != name or not start <= first < last <= start + frames.shape[1]:
            start, frames = first, self._chunk_from(name, first)
            self._chunk = (name, start, frames)
            following = start + frames.shape[1]
            if self._ahead is not None and following < frame_layout(shape)[1]:
                self._pending = (name, following, self._ahead.submit(self._make_chunk, name, following))
        return frames[:, first - start : last - start].reshape(self.batch, *shape[1:])

    def _chunk_from(self, name: str, first: int) -> torch.Tensor:
        """The chunk that starts at frame ``first``: the one made ahead if it is that one."""
        pending, self._pending = self._pending, None
        if pending is not None and pending[:2] == (name, first) and not pending[2].cancel():
            return pending[2].result()  # running or done: its work is the work needed
        return self._make_chunk(name, first)

    def _make_chunk(self, name: str, first: int) -> torch.Tensor:
        """As many whole steps from frame ``first`` as fill ``CHUNK_VALUES`` (at least one)."""
        shape = self.spec[name]
        per_step, (frame, count) = math.prod(shape[1:-3]), frame_layout(shape)
        steps = max(1, chunk_values(self.device) // (self.batch * math.prod(frame) * per_step))
        return self._frames(name, np.arange(first, min(count, first + steps * per_step)))

    def _frames(self, name: str, frames: np.ndarray) -> torch.Tensor:
        """Frames ``frames`` of component ``name``: ``(B, len(frames), *frame)``."""
        shape = self.spec[name]
        frame, _ = frame_layout(shape)
        size = math.prod(frame)
        lead = 0 if self._leading_values is None else self._leading_values.shape[1]
        rank = chosen = None
        if lead:
            if name not in self._ranks:
                self._ranks[name] = tuple(r.reshape(1, -1) for r in coordinate_ranks(shape, self.basis))
            base, stride = self._ranks[name]
            rank = self._offsets[name] + base + frames[:, None] * stride
            chosen = rank < lead  # the coordinates that get Sobol' values
        if chosen is not None and chosen.all():
            z = torch.empty((self.batch, len(frames), size), device=self.device, dtype=self.dtype)
        else:
            z = standard_normal(self._key, component_id(name), torch.from_numpy(frames), size, self.dtype)
            if self._index is not None:
                z = z[self._index]
            if self._sign is not None:
                z = z * self._sign[:, None, None]
        if chosen is not None and chosen.any():
            sobol = self._leading()[:, torch.from_numpy(rank[chosen]).to(self.device)]
            z[:, torch.from_numpy(chosen).to(self.device)] = sobol
        z = z.reshape(self.batch, len(frames), *frame)
        if self.basis == "dct" and len(shape):
            z = inverse_dct(z, min(len(shape), 2))
        return z

    def _leading(self) -> torch.Tensor:
        """The leading Sobol' coordinates ``(B, lead)`` on the device, moved there on first use."""
        if self._leading_tensor is None:
            self._leading_tensor = torch.from_numpy(self._leading_values).to(device=self.device, dtype=self.dtype)
        return self._leading_tensor
