"""Latent, text-conditioned diffusers pipelines (Stable Diffusion family) driven by caller latents."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from mcdiff.noise import Noise
from mcdiff.samplers.base import Sampler
from mcdiff.samplers.diffusion import check_num_inference_steps

PIPELINE_SCHEDULERS = (
    "DDIMScheduler",
    "DEISMultistepScheduler",
    "DPMSolverMultistepScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "LMSDiscreteScheduler",
    "PNDMScheduler",
    "UniPCMultistepScheduler",
)
"""Deterministic schedulers: given the initial latents, the pipeline draws no further noise."""

_RESERVED = ("latents", "generator", "num_images_per_prompt", "output_type", "return_dict")


class PipelineSampler(Sampler):
    """A diffusers text-to-image pipeline run from the design's latents.

    The design's ``z ~ N(0, I)`` of shape ``(C_lat, H / f, W / f)`` is passed as
    ``latents=z``; the pipeline scales it to its prior, ``x_T = init_noise_sigma * z``, runs
    its deterministic scheduler with classifier-free guidance (Ho and Salimans 2022, eq. 6)::

        eps_hat = eps(x_t, t, empty) + w (eps(x_t, t, prompt) - eps(x_t, t, empty))

    and decodes ``x_0`` with its VAE to images in [0, 1]. With a deterministic scheduler the
    latents are the whole noise path, so the antithetic partner of ``z`` is ``-z``.

    Parameters
    ----------
    pipe : diffusers pipeline
        A latent text-to-image pipeline whose ``__call__`` takes ``latents=`` (for example
        ``StableDiffusionPipeline``), with a scheduler in :data:`PIPELINE_SCHEDULERS`. Its
        per-call progress bar is switched off. A safety checker that blanks images biases
        every estimate: load the pipeline with ``safety_checker=None`` for Monte Carlo work.
    prompt : str
        The text condition, the same for every evaluation.
    guidance_scale : float
        Classifier-free guidance weight ``w``; above 1 each step evaluates the network twice.
    num_inference_steps : int
        Scheduler steps T, at most the scheduler's ``num_train_timesteps``.
    negative_prompt : str, optional
        Replaces the empty prompt of the unconditional branch.
    height, width : int, optional
        Image size; the UNet's ``sample_size`` times the VAE scale factor by default.
    device, dtype : optional
        When given, the pipeline is moved there in place (``torch.float16`` or
        ``torch.bfloat16`` on a GPU); by default, where the pipeline's UNet is.
    **call_kwargs
        Further arguments of ``pipe(...)`` (``guidance_rescale``, ``cross_attention_kwargs``).

    Examples
    --------
    >>> pipe = StableDiffusionPipeline.from_pretrained("path/to/sd", safety_checker=None)  # doctest: +SKIP
    >>> sampler = PipelineSampler(pipe, prompt="a red car", guidance_scale=7.5)  # doctest: +SKIP
    >>> mcdiff.estimate(sampler, ["brightness"], ["mc", "amc"], n_evals=64, batch_size=8)  # doctest: +SKIP
    """

    def __init__(
        self,
        pipe,
        prompt: str = "",
        guidance_scale: float = 7.5,
        num_inference_steps: int = 50,
        negative_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **call_kwargs: Any,
    ):
        for component in ("unet", "vae", "scheduler"):
            if getattr(pipe, component, None) is None:
                raise ValueError(
                    f"pipe must be a latent diffusers pipeline with a {component}; "
                    f"{type(pipe).__name__} has none"
                )
        if "latents" not in inspect.signature(pipe.__call__).parameters:
            raise ValueError(
                f"{type(pipe).__name__}.__call__ takes no latents=, so mcdiff cannot give it its noise"
            )
        name = type(pipe.scheduler).__name__
        stochastic = "sde" in str(getattr(pipe.scheduler.config, "algorithm_type", ""))
        if name not in PIPELINE_SCHEDULERS or stochastic:
            raise ValueError(
                f"scheduler {name} is not supported: it is stochastic or untested, and its noise would "
                f"not come from mcdiff; supported (deterministic): {', '.join(PIPELINE_SCHEDULERS)}"
            )
        check_num_inference_steps(num_inference_steps, pipe.scheduler)
        if not guidance_scale >= 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        reserved = sorted(set(call_kwargs) & set(_RESERVED))
        if reserved:
            raise ValueError(f"call arguments {reserved} are set by PipelineSampler; leave them out")
        if call_kwargs.get("eta", 0) != 0:
            raise ValueError(
                f"eta={call_kwargs['eta']} would make the pipeline draw step noise that mcdiff does not "
                "control; use eta=0"
            )
        if device is not None or dtype is not None:
            pipe.to(device=device, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        factor = pipe.vae_scale_factor
        size = pipe.unet.config.sample_size
        default_h, default_w = (size, size) if isinstance(size, int) else tuple(size)
        self.height = int(height or default_h * factor)
        self.width = int(width or default_w * factor)
        if self.height % factor or self.width % factor:
            raise ValueError(f"height={self.height} and width={self.width} must be multiples of {factor}")
        self.pipe = pipe
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.guidance_scale = float(guidance_scale)
        self.num_inference_steps = int(num_inference_steps)
        self.call_kwargs = call_kwargs
        self.latent_shape = (pipe.unet.config.in_channels, self.height // factor, self.width // factor)
        self.image_shape = (pipe.vae.config.out_channels, self.height, self.width)
        self.nfe = self.num_inference_steps * (2 if self.guidance_scale > 1 else 1)
        self.device = pipe.unet.device
        self.dtype = pipe.unet.dtype

    @property
    def noise_spec(self) -> dict[str, tuple[int, ...]]:
        return {"x_T": self.latent_shape}

    def sample(self, noise: Noise) -> torch.Tensor:
        latents = noise["x_T"].to(device=self.device, dtype=self.dtype)
        return self.pipe(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            num_images_per_prompt=len(latents),
            latents=latents,
            guidance_scale=self.guidance_scale,
            num_inference_steps=self.num_inference_steps,
            height=self.height,
            width=self.width,
            output_type="pt",
            **self.call_kwargs,
        ).images

    def describe(self) -> dict[str, str | int | float]:
        return {
            **super().describe(),
            "model": type(self.pipe).__name__,
            "scheduler": type(self.pipe.scheduler).__name__,
            "prompt": self.prompt,
            "guidance_scale": self.guidance_scale,
            "num_inference_steps": self.num_inference_steps,
        }
