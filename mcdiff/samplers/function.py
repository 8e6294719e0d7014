"""Any user callable ``G(noise) -> images`` as a sampler."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from mcdiff.noise import Noise
from mcdiff.samplers.base import Sampler
from mcdiff.validation import check_integer


def _check_shape(label: str, shape: Sequence[int], ndim: int | None = None) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"{label} must be a tuple of positive integers, got {shape!r}") from None
    if not shape or any(s < 1 for s in shape) or (ndim is not None and len(shape) != ndim):
        size = f"{ndim} " if ndim is not None else ""
        raise ValueError(f"{label} must be a tuple of {size}positive integers, got {shape!r}")
    return shape


class FunctionSampler(Sampler):
    """Wrap a callable ``fn(noise) -> images`` so that designs and the runner can drive it.

    ``images = fn({name: z (B, *shape)})`` with every ``z`` standard normal, as declared by
    ``noise_spec``; ``fn`` maps it to its own prior. An antithetic partner receives ``-z`` for
    every component.

    Parameters
    ----------
    fn : callable
        ``fn(noise) -> tensor (B, C, H, W)`` in [0, 1], where ``noise[name]`` is a tensor
        ``(B, *shape)`` (a :class:`~mcdiff.noise.Noise`; ``noise.step(name, i)`` reads one step).
    noise_spec : mapping
        Per-evaluation noise shapes by component name, e.g. ``{"x_T": (3, 32, 32)}``.
    image_shape : (C, H, W)
        Shape of one output image.
    nfe : int
        Network function evaluations per sample (the cost unit).
    device, dtype
        Where and in which precision the noise is handed to ``fn``.
    name : str, optional
        Model name recorded in results; ``fn.__name__`` by default.

    Examples
    --------
    >>> import torch
    >>> sampler = FunctionSampler(lambda noise: torch.sigmoid(noise["x_T"]), {"x_T": (1, 4, 4)}, (1, 4, 4))
    >>> sampler({"x_T": torch.zeros(2, 1, 4, 4)}).mean().item()
    0.5
    """

    def __init__(
        self,
        fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
        noise_spec: Mapping[str, Sequence[int]],
        image_shape: Sequence[int],
        nfe: int = 1,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        name: str | None = None,
    ):
        if not callable(fn):
            raise ValueError(f"fn must be callable noise -> images, got {type(fn).__name__}")
        if not noise_spec:
            raise ValueError("noise_spec must name at least one noise component, e.g. {'x_T': (C, H, W)}")
        nfe = check_integer("nfe", nfe)
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        self.fn = fn
        self._noise_spec = {str(k): _check_shape(f"noise_spec[{k!r}]", s) for k, s in noise_spec.items()}
        self.image_shape = _check_shape("image_shape", image_shape, ndim=3)
        self.nfe = nfe
        self.device = torch.device(device)
        self.dtype = dtype
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    @property
    def noise_spec(self) -> dict[str, tuple[int, ...]]:
        return dict(self._noise_spec)

    def sample(self, noise: Noise) -> torch.Tensor:
        return self.fn(noise)

    def identity(self) -> object:
        """The callable: its code, the values it closes over and the globals it names, or a module's weights."""
        return self.fn

    def describe(self) -> dict[str, str | int | float]:
        return {**super().describe(), "function": self.name}
