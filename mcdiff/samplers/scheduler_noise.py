"""The design's noise at the point where a diffusers scheduler or pipeline draws its own.

diffusers schedulers draw every step noise with ``randn_tensor`` (imported into each
scheduler's module from ``diffusers.utils.torch_utils``), and pipelines draw their initial
latents the same way. :func:`supplied_noise` replaces that name, in the modules of the
classes given, by a function that hands out the design's noise instead: draws made from a
pipeline's own module are the initial latents ``x_T``, draws made from a scheduler's module
are the injected step noise, the ``k``-th draw being ``noise.step("steps", k)``. Every
stochastic scheduler then runs its own update, unchanged, on mcdiff's noise: an antithetic
partner negates the whole path, RQMC puts its Sobol' coordinates where the design does.

While no mcdiff sampler is drawing (another thread, or after the block), the replacement
defers to diffusers' own ``randn_tensor``; the original is restored when the last block
using a module exits.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from diffusers.utils import torch_utils

from mcdiff.noise import Noise

_ORIGINAL = torch_utils.randn_tensor
_ACTIVE = threading.local()
_LOCK = threading.Lock()
_USERS: dict[str, int] = {}


@dataclass
class NoiseSupply:
    """Hands the design's noise to the draws of one sampling run, in order, and counts them.

    Parameters
    ----------
    noise : Noise or None
        The batch's noise; ``None`` records the draws of a dry run, answering each with zeros.
    pipeline_modules : set of str
        Modules whose draws are the initial latents ``x_T`` (a pipeline's own); draws from
        any other patched module are step noise. A draw is the design's noise reshaped to
        the shape asked for (same number of values per evaluation), so it stays N(0, I) and
        its negation stays the antithetic partner.
    """

    noise: Noise | None = None
    pipeline_modules: set[str] = field(default_factory=set)
    step_draws: int = 0
    latent_draws: int = 0
    step_shapes: list[tuple[int, ...]] = field(default_factory=list)
    latent_shapes: list[tuple[int, ...]] = field(default_factory=list)

    def draw(self, module: str, shape: tuple[int, ...], device, dtype) -> torch.Tensor:
        """The next draw of ``x_T`` (from a pipeline module) or of ``"steps"`` (from a scheduler)."""
        shape = tuple(int(s) for s in shape)
        latent = module in self.pipeline_modules
        if latent:
            self.latent_shapes.append(shape)
            self.latent_draws += 1
            if self.latent_draws > 1:
                raise RuntimeError(
                    f"the pipeline drew initial noise {self.latent_draws} times in one call (from {module}); "
                    "mcdiff supplies x_T once"
                )
        else:
            self.step_shapes.append(shape)
            self.step_draws += 1
        if self.noise is None:
            return torch.zeros(shape, device=device, dtype=dtype)
        z = self.noise["x_T"] if latent else self.noise.step("steps", self.step_draws - 1)
        batch, rest = len(z), shape[1:]
        if shape[0] % batch or math.prod(rest) != math.prod(z.shape[1:]):
            raise RuntimeError(
                f"{module} asked for noise of shape {shape}; the design's "
                f"{'x_T' if latent else 'step'} noise is {tuple(z.shape)} (a batch of {batch})"
            )
        z = z.reshape(batch, *rest)
        if shape[0] > batch:  # a pipeline that batches conditional and unconditional branches (DiT)
            z = z.repeat(shape[0] // batch, *([1] * len(rest)))
        return z.to(device=device or z.device, dtype=dtype or z.dtype)

    def next_step_noise(self, shape: tuple[int, ...], device, dtype) -> torch.Tensor:
        """The next step draw, for a scheduler that takes it as ``variance_noise=``."""
        return self.draw("<variance_noise>", shape, device, dtype)


def _dispatcher(module: str) -> Callable[..., torch.Tensor]:
    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None, **kwargs):
        supply = getattr(_ACTIVE, "supply", None)
        if supply is None:
            return _ORIGINAL(shape, generator=generator, device=device, dtype=dtype, layout=layout, **kwargs)
        return supply.draw(module, shape, device, dtype)

    randn_tensor.mcdiff_dispatcher = True
    return randn_tensor


def drawing_modules(classes: Iterable[type]) -> list[str]:
    """Modules, along the classes' method resolution orders, that draw with diffusers' ``randn_tensor``."""
    names = []
    for cls in classes:
        for base in cls.__mro__:
            module = sys.modules.get(base.__module__)
            draw = getattr(module, "randn_tensor", None)
            ours = draw is not None and (draw is _ORIGINAL or getattr(draw, "mcdiff_dispatcher", False))
            if ours and base.__module__ not in names:
                names.append(base.__module__)
    return names


@contextmanager
def supplied_noise(classes: Iterable[type], supply: NoiseSupply) -> Iterator[NoiseSupply]:
    """Within the block, the ``randn_tensor`` draws of ``classes``' modules come from ``supply``.

    Parameters
    ----------
    classes : iterable of type
        The scheduler's class (and, for a pipeline, the pipeline's); every module along their
        method resolution orders that imported ``randn_tensor`` is covered.
    supply : NoiseSupply
        Answers the draws of this thread; other threads keep diffusers' own generator.
    """
    modules = drawing_modules(classes)
    with _LOCK:
        for name in modules:
            if _USERS.get(name, 0) == 0:
                sys.modules[name].randn_tensor = _dispatcher(name)
            _USERS[name] = _USERS.get(name, 0) + 1
    outer = getattr(_ACTIVE, "supply", None)
    _ACTIVE.supply = supply
    try:
        yield supply
    finally:
        _ACTIVE.supply = outer
        with _LOCK:
            for name in modules:
                _USERS[name] -= 1
                if _USERS[name] == 0:
                    sys.modules[name].randn_tensor = _ORIGINAL
