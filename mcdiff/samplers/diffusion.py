"""Diffusion samplers driven by mcdiff's noise: DDIM (deterministic or with eta > 0)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDIMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from mcdiff.samplers.base import Sampler

SUPPORTED_SCHEDULERS = ("DDIMScheduler",)

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``eps(x_t, t) -> predicted noise``, both ``(B, C, H, W)``."""


def _as_eps_model(unet) -> EpsModel:
    """Wrap a diffusers ``UNet2DModel`` (output ``.sample``) or a plain callable."""

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = unet(x, t)
        return out.sample if hasattr(out, "sample") else out

    return eps


class DiffusionSampler(Sampler):
    """A noise-prediction network run through a diffusers scheduler with caller noise.

    DDIM (Song et al. 2021, eq. 12) from ``x_T = prior_mean + init_noise_sigma * z``::

        x0_hat  = (x_t - sqrt(1 - a_t) eps(x_t, t)) / sqrt(a_t)
        x_prev  = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - s_t^2) eps(x_t, t) + s_t n_t

    with ``s_t = eta * sqrt((1 - a_prev)/(1 - a_t)) sqrt(1 - a_t/a_prev)``. The injected noise
    ``n_t`` is the design's ``"steps"`` component, declared only when ``eta > 0``; an
    antithetic partner negates ``z`` and every ``n_t``. Images are ``(x_0 + 1) / 2``, clamped
    to [0, 1] when ``clip_output`` (as diffusers pipelines do).

    Parameters
    ----------
    unet : diffusers ``UNet2DModel`` or callable ``eps(x, t)``
        The noise predictor.
    scheduler : diffusers scheduler
        Its configuration is copied; the caller's object is not modified.
    num_inference_steps : int
        Sampling steps T (network evaluations per sample).
    eta : float
        DDIM stochasticity, 0 for the deterministic sampler.
    image_shape : (C, H, W), optional
        Required when ``unet`` has no diffusers ``config``.
    prior_mean : float or tensor broadcastable to ``image_shape``
        Mean of the prior that ``z`` is mapped to.
    clip_output : bool
        Clamp images to [0, 1].
    """

    def __init__(
        self,
        unet,
        scheduler: SchedulerMixin,
        num_inference_steps: int = 50,
        eta: float = 0.0,
        image_shape: tuple[int, int, int] | None = None,
        prior_mean: float | torch.Tensor = 0.0,
        clip_output: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        name = type(scheduler).__name__
        if name not in SUPPORTED_SCHEDULERS:
            raise ValueError(
                f"scheduler {name} is not supported; supported: {', '.join(SUPPORTED_SCHEDULERS)}"
            )
        train_steps = scheduler.config.num_train_timesteps
        if not 1 <= num_inference_steps <= train_steps:
            raise ValueError(
                f"num_inference_steps={num_inference_steps} must be in [1, {train_steps}] "
                f"(the scheduler's num_train_timesteps)"
            )
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        if image_shape is None:
            config = getattr(unet, "config", None)
            if config is None:
                raise ValueError("image_shape=(C, H, W) is required for a unet without a config")
            size = config.sample_size
            height, width = (size, size) if isinstance(size, int) else tuple(size)
            image_shape = (config.in_channels, height, width)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.scheduler = DDIMScheduler.from_config(scheduler.config)
        self.scheduler.set_timesteps(num_inference_steps)
        self.num_inference_steps = int(num_inference_steps)
        self.nfe = self.num_inference_steps
        self.eta = float(eta)
        self.clip_output = bool(clip_output)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        self.prior_mean = torch.as_tensor(prior_mean, dtype=dtype, device=self.device)
        self.unet = unet
        self._eps = _as_eps_model(unet)

    @property
    def noise_spec(self) -> dict[str, tuple[int, ...]]:
        spec = {"x_T": self.image_shape}
        if self.eta > 0:
            spec["steps"] = (self.num_inference_steps, *self.image_shape)
        return spec

    def trajectory(self, noise: dict[str, torch.Tensor]):
        """Yield ``(t, x_t, eps(x_t, t))`` at every step, then ``(None, x_0, None)``."""
        scheduler = self.scheduler
        x = self.prior_mean + scheduler.init_noise_sigma * noise["x_T"]
        for i, t in enumerate(scheduler.timesteps):
            eps = self._eps(scheduler.scale_model_input(x, t), t)
            yield t, x, eps
            step_noise = noise["steps"][:, i] if self.eta > 0 else None
            x = scheduler.step(eps, t, x, eta=self.eta, variance_noise=step_noise).prev_sample
        yield None, x, None

    def sample(self, noise: dict[str, torch.Tensor]) -> torch.Tensor:
        *_, (_, x0, _) = self.trajectory(noise)
        images = (x0 + 1) / 2
        return images.clamp(0, 1) if self.clip_output else images

    def with_steps(self, num_inference_steps: int) -> DiffusionSampler:
        """The same network, scheduler and settings at another step count (a fidelity).

        The copy shares ``unet``; its ``nfe`` is ``num_inference_steps``. Subclasses whose
        constructor takes other arguments override this.
        """
        return type(self)(
            self.unet,
            self.scheduler,
            num_inference_steps=num_inference_steps,
            eta=self.eta,
            image_shape=self.image_shape,
            prior_mean=self.prior_mean,
            clip_output=self.clip_output,
            device=self.device,
            dtype=self.dtype,
        )

    def describe(self) -> dict[str, str | int | float]:
        return {
            **super().describe(),
            "scheduler": type(self.scheduler).__name__,
            "num_inference_steps": self.num_inference_steps,
            "eta": self.eta,
            "clip_output": int(self.clip_output),
        }
