"""diffusers pipelines (UNet or transformer, text- or class-conditioned) driven by the design's noise."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch

from mcdiff.noise import Noise, as_noise
from mcdiff.samplers.base import Sampler
from mcdiff.samplers.diffusion import check_num_inference_steps
from mcdiff.samplers.identity import public_config
from mcdiff.samplers.scheduler_noise import NoiseSupply, drawing_modules, supplied_noise
from mcdiff.samplers.schedulers import SUPPORTED_SCHEDULERS, check_scheduler
from mcdiff.validation import is_integer

PIPELINE_SCHEDULERS = SUPPORTED_SCHEDULERS
"""Schedulers tested inside pipelines as well (any scheduler that passes the dry run runs)."""

TESTED_PIPELINES = (
    "StableDiffusionPipeline",
    "StableDiffusion3Pipeline",
    "FluxPipeline",
    "PixArtAlphaPipeline",
    "PixArtSigmaPipeline",
    "DiTPipeline",
)
"""Pipelines whose mcdiff runs the tests check (others that draw through ``randn_tensor`` run too)."""

_RESERVED = ("latents", "generator", "num_images_per_prompt", "output_type", "return_dict", "class_labels")


class PipelineSampler(Sampler):
    """A diffusers pipeline run with every noise draw, initial latents included, from the design.

    The pipeline runs unchanged. Where it draws its initial latents (``prepare_latents``) and
    where its scheduler draws step noise, both through ``randn_tensor``, mcdiff hands it the
    design's noise (:mod:`mcdiff.samplers.scheduler_noise`): ``x_T`` is the latent the pipeline
    asks for, in the shape it asks for (``(C_lat, H / f, W / f)``; for Flux the unpacked latent,
    which the pipeline then packs into 2x2 patch tokens, a permutation: an antithetic partner
    negates the unpacked latent and so the packed one, and RQMC's low-frequency coordinates are
    those of the latent image), and ``"steps"`` the step noise of stochastic schedulers (draw
    ``k`` is ``noise.step("steps", k)``). With classifier-free guidance (Ho and Salimans 2022,
    eq. 6)::

        eps_hat = eps(x_t, t, empty) + w (eps(x_t, t, condition) - eps(x_t, t, empty))

    the pipeline scales ``x_T`` to its prior, steps, and decodes ``x_0`` with its VAE.

    A dry run (one image, zero noise, under two global torch seeds) finds the latent shape,
    the image shape, the number of step-noise draws and the network evaluations per image,
    and refuses a pipeline or scheduler whose output still depends on torch's own generator.
    :attr:`nfe` counts every image's passes through the UNet or transformer: a call on a
    batch that holds conditional and unconditional copies counts 2 per image, so guidance
    with ``w > 1`` doubles NFE (SD, SD3, PixArt, DiT); Flux's distilled guidance is an
    embedding (1 per step), its ``true_cfg_scale`` a second call (2).

    Parameters
    ----------
    pipe : diffusers pipeline
        With a ``unet`` or ``transformer`` and a ``scheduler`` (any with a ``step()``, see
        :data:`~mcdiff.samplers.schedulers.SUPPORTED_SCHEDULERS`): ``StableDiffusionPipeline``,
        ``StableDiffusion3Pipeline``, ``FluxPipeline``, ``PixArtAlphaPipeline`` /
        ``PixArtSigmaPipeline``, ``DiTPipeline`` (:data:`TESTED_PIPELINES`). Its progress bar
        is switched off. A safety checker that blanks images biases every estimate: load the
        pipeline with ``safety_checker=None`` for Monte Carlo work.
    prompt : str, optional
        The text condition, the same for every evaluation (or pass ``prompt_embeds=`` and the
        pipeline's other embedding arguments, so no text encoder is needed).
    guidance_scale : float, optional
        Guidance weight ``w``; the pipeline's default when not given.
    num_inference_steps : int
        Scheduler steps T, at most the scheduler's ``num_train_timesteps``.
    negative_prompt : str, optional
        Replaces the empty prompt of the unconditional branch.
    class_label : int, optional
        The class of a class-conditional pipeline (``DiTPipeline``), the same for every evaluation.
    height, width : int, optional
        Image size where the pipeline takes one; its default otherwise.
    device, dtype : optional
        When given, the pipeline is moved there in place (``torch.float16`` or
        ``torch.bfloat16`` on a GPU); by default, where its denoiser is.
    **call_kwargs
        Further arguments of ``pipe(...)`` (``prompt_embeds``, ``pooled_prompt_embeds``,
        ``guidance_rescale``, ``eta``, ``max_sequence_length``, ...). Embeddings and masks
        (``*_embeds``, ``*_mask``) of one prompt, batch 1, are repeated for every image.

    Examples
    --------
    >>> pipe = StableDiffusionPipeline.from_pretrained("path/to/sd", safety_checker=None)  # doctest: +SKIP
    >>> sampler = PipelineSampler(pipe, prompt="a red car", guidance_scale=7.5)  # doctest: +SKIP
    >>> mcdiff.estimate(sampler, ["brightness"], ["mc", "amc"], n_evals=64, batch_size=8)  # doctest: +SKIP
    """

    def __init__(
        self,
        pipe,
        prompt: str | None = None,
        guidance_scale: float | None = None,
        num_inference_steps: int = 50,
        negative_prompt: str | None = None,
        class_label: int | None = None,
        height: int | None = None,
        width: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **call_kwargs: Any,
    ):
        denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        if denoiser is None or getattr(pipe, "scheduler", None) is None:
            raise ValueError(
                f"pipe must be a diffusers pipeline with a unet or transformer and a scheduler; "
                f"{type(pipe).__name__} has {'no denoiser' if denoiser is None else 'no scheduler'} "
                f"(tested: {', '.join(TESTED_PIPELINES)})"
            )
        check_scheduler(pipe.scheduler)
        check_num_inference_steps(num_inference_steps, pipe.scheduler)
        params = set(inspect.signature(pipe.__call__).parameters)
        reserved = sorted(set(call_kwargs) & set(_RESERVED))
        if reserved:
            raise ValueError(f"call arguments {reserved} are set by PipelineSampler; leave them out")
        settings = {"num_inference_steps": int(num_inference_steps)}
        for name, value in (
            ("prompt", prompt),
            ("negative_prompt", negative_prompt),
            ("guidance_scale", guidance_scale),
            ("height", height),
            ("width", width),
        ):
            if value is None:
                continue
            if name not in params:
                raise ValueError(f"{type(pipe).__name__} takes no {name}=; its arguments: {sorted(params)}")
            settings[name] = value
        if guidance_scale is not None and not guidance_scale >= 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        if "class_labels" in params:
            if not is_integer(class_label):
                raise ValueError(f"{type(pipe).__name__} is class-conditional: class_label=<int> is required")
        elif class_label is not None:
            raise ValueError(f"{type(pipe).__name__} is not class-conditional; class_label applies to DiTPipeline")
        if "prompt" in params and prompt is None and call_kwargs.get("prompt_embeds") is None:
            settings["prompt"] = ""
        if "negative_prompt_embeds" in call_kwargs and negative_prompt is None and "negative_prompt" in params:
            settings["negative_prompt"] = None  # PixArt's default "" would conflict with the embeddings
        unknown = sorted(k for k in call_kwargs if k not in params)
        if unknown and "kwargs" not in params:
            raise ValueError(f"{type(pipe).__name__} takes no {unknown}; its arguments: {sorted(params)}")
        if device is not None or dtype is not None:
            pipe.to(device=device, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        self.denoiser = denoiser
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.guidance_scale = guidance_scale
        self.class_label = None if class_label is None else int(class_label)
        self.num_inference_steps = int(num_inference_steps)
        self.call_kwargs = {**settings, **call_kwargs}
        self._conditioning = [
            k for k, v in call_kwargs.items()
            if isinstance(v, torch.Tensor) and k.endswith(("_embeds", "_mask")) and v.ndim >= 1 and len(v) == 1
        ]
        self.device = denoiser.device
        self.dtype = denoiser.dtype
        self._pipeline_modules = set(drawing_modules([type(pipe)]))
        self.network_calls = 0.0
        self._dry_run()

    def _call(self, batch: int, supply: NoiseSupply) -> torch.Tensor:
        """``pipe(...)`` for ``batch`` images with its draws answered by ``supply``: images ``(B, C, H, W)``."""
        kwargs = dict(self.call_kwargs)
        if self.class_label is not None:
            kwargs["class_labels"] = [self.class_label] * batch
        elif self._conditioning:
            # given embeddings: one copy per image (SD3 and Flux do not repeat them by num_images_per_prompt)
            kwargs.update({k: kwargs[k].expand(batch, *kwargs[k].shape[1:]) for k in self._conditioning})
            kwargs["num_images_per_prompt"] = 1
        else:
            kwargs["num_images_per_prompt"] = batch
        output_type = "np" if self.class_label is not None else "pt"  # DiTPipeline returns arrays for any non-PIL
        counted = []

        def count(module, args, kwargs_in):
            hidden = kwargs_in.get("hidden_states", kwargs_in.get("sample", args[0] if args else None))
            counted.append(len(hidden) / batch)

        hook = self.denoiser.register_forward_pre_hook(count, with_kwargs=True)
        try:
            with supplied_noise([type(self.pipe), type(self.pipe.scheduler)], supply):
                images = self.pipe(**kwargs, output_type=output_type).images
        finally:
            hook.remove()
        if supply.latent_draws != 1:
            raise RuntimeError(
                f"{type(self.pipe).__name__} drew its initial latents {supply.latent_draws} times through "
                "randn_tensor (expected once); mcdiff cannot give it its noise"
            )
        self.network_calls += sum(counted) * batch
        self._last_calls = sum(counted)
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images).permute(0, 3, 1, 2)
        return images

    def _dry_run(self) -> None:
        """One image under zero noise, twice under different global seeds: shapes, draws, NFE."""
        runs = []
        for seed in (0, 1):
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(seed)
                supply = NoiseSupply(None, self._pipeline_modules)
                runs.append((self._call(1, supply), supply))
        (first, supply), (second, _) = runs
        name = type(self.pipe).__name__
        if not torch.equal(first, second):
            raise ValueError(
                f"{name} with {type(self.pipe.scheduler).__name__} is not supported: its output depends on "
                "torch's global generator, noise that mcdiff cannot supply (tested: "
                f"{', '.join(TESTED_PIPELINES)} with {', '.join(SUPPORTED_SCHEDULERS)})"
            )
        shapes = {s[1:] for s in supply.step_shapes}
        if len(shapes) > 1:
            raise ValueError(f"{type(self.pipe.scheduler).__name__} draws step noise of several shapes {shapes}")
        self.latent_shape = supply.latent_shapes[0][1:]
        self._step_shape = shapes.pop() if shapes else None
        self._n_draws = supply.step_draws
        self.image_shape = tuple(first.shape[1:])
        self.nfe = round(self._last_calls)
        self.network_calls = 0.0

    @property
    def stochastic(self) -> bool:
        """Whether the scheduler draws step noise inside the pipeline."""
        return self._n_draws > 0

    @property
    def noise_spec(self) -> dict[str, tuple[int, ...]]:
        spec = {"x_T": self.latent_shape}
        if self.stochastic:
            spec["steps"] = (self._n_draws, *self._step_shape)
        return spec

    def sample(self, noise: Noise) -> torch.Tensor:
        noise = as_noise(noise)
        supply = NoiseSupply(noise, self._pipeline_modules)
        images = self._call(len(noise["x_T"]), supply)
        if supply.step_draws != self._n_draws:
            raise RuntimeError(
                f"{type(self.pipe.scheduler).__name__} drew {supply.step_draws} step noises; its dry run drew "
                f"{self._n_draws} (draws that depend on the data are not supported)"
            )
        return images

    def identity(self) -> dict:
        """Every network of the pipeline (denoiser, VAE, text encoders), its scheduler and the conditioning."""
        networks = {name: c for name, c in self.pipe.components.items() if isinstance(c, torch.nn.Module)}
        scheduler = public_config(self.pipe.scheduler.config)
        return {"networks": networks, "scheduler": scheduler, "call": self.call_kwargs, "class_label": self.class_label}

    def describe(self) -> dict[str, str | int | float]:
        out = {
            **super().describe(),
            "model": type(self.pipe).__name__,
            "scheduler": type(self.pipe.scheduler).__name__,
            "num_inference_steps": self.num_inference_steps,
            "noise_draws_per_sample": self._n_draws,
            "prompt": self.prompt or ("<prompt_embeds>" if "prompt_embeds" in self.call_kwargs else ""),
        }
        if self.guidance_scale is not None:
            out["guidance_scale"] = float(self.guidance_scale)
        if self.class_label is not None:
            out["class_label"] = self.class_label
        return out
