"""Diffusion samplers driven by mcdiff's noise: DDIM (deterministic or with eta > 0) and DDPM."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from mcdiff.noise import Noise, as_noise
from mcdiff.samplers.base import Sampler

SCHEDULERS: dict[str, type[SchedulerMixin]] = {"DDIMScheduler": DDIMScheduler, "DDPMScheduler": DDPMScheduler}
"""Schedulers :class:`DiffusionSampler` drives with caller noise, by class name."""

SUPPORTED_SCHEDULERS = tuple(SCHEDULERS)

DDPM_VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large")
"""``DDPMScheduler.variance_type`` values whose step noise has a fixed scale."""

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
"""What the network predicts, as diffusers' ``prediction_type`` names it."""

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``eps(x_t, t) -> predicted noise``, both ``(B, C, H, W)``."""


def default_device() -> torch.device:
    """``cuda`` when a GPU is available, ``cpu`` otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _module_placement(module) -> tuple[torch.device, torch.dtype] | None:
    """Device and dtype of a module's first parameter or buffer; ``None`` if it has neither."""
    if not isinstance(module, torch.nn.Module):
        return None
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    return None if tensor is None else (tensor.device, tensor.dtype)


def check_scheduler_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a scheduler class in :data:`SUPPORTED_SCHEDULERS`."""
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler {name} is not supported; supported: {', '.join(SUPPORTED_SCHEDULERS)}")


def check_num_inference_steps(num_inference_steps: int, scheduler: SchedulerMixin) -> None:
    """Raise ``ValueError`` unless ``1 <= num_inference_steps <= num_train_timesteps``."""
    train_steps = scheduler.config.num_train_timesteps
    if isinstance(num_inference_steps, bool) or not 1 <= num_inference_steps <= train_steps:
        raise ValueError(
            f"num_inference_steps={num_inference_steps} must be in [1, {train_steps}] "
            f"(the scheduler's num_train_timesteps)"
        )


def _as_eps_model(unet) -> EpsModel:
    """Wrap a diffusers ``UNet2DModel`` (output ``.sample``) or a plain callable."""

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = unet(x, t)
        return out.sample if hasattr(out, "sample") else out

    return eps


def predicted_original_sample(
    scheduler: SchedulerMixin, model_output: torch.Tensor, t: torch.Tensor, sample: torch.Tensor
) -> torch.Tensor:
    """The network's estimate of ``x_0`` from ``x_t`` (Tweedie's formula for ``epsilon``), unclipped.

    With ``a_t`` the cumulative product of alphas at timestep ``t``::

        epsilon:       x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)     (Ho et al. 2020, eq. 15)
        sample:        x0_hat = model_output
        v_prediction:  x0_hat = sqrt(a_t) x_t - sqrt(1 - a_t) v          (Salimans and Ho 2022, sec. 4)

    For a network trained on ``epsilon`` this is ``E[x_0 | x_t]`` (Tweedie's formula), exactly
    so for the exact score of :class:`~mcdiff.samplers.gaussian.GaussianSampler`.
    """
    alpha_prod_t = scheduler.alphas_cumprod[t]
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return (sample - (1 - alpha_prod_t) ** 0.5 * model_output) / alpha_prod_t**0.5
    if prediction_type == "sample":
        return model_output
    return alpha_prod_t**0.5 * sample - (1 - alpha_prod_t) ** 0.5 * model_output


def ddpm_step(
    scheduler: DDPMScheduler,
    model_output: torch.Tensor,
    index: int,
    sample: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """One ancestral DDPM step from ``x_t`` to ``x_prev`` with the caller's noise ``n_t``.

    Ho et al. 2020, eq. 15 for ``x0_hat`` and eq. 7 for the posterior::

        x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)            (clipped if clip_sample)
        x_prev = sqrt(a_prev) b_t / (1 - a_t) x0_hat
                 + sqrt(alpha_t) (1 - a_prev) / (1 - a_t) x_t + s_t n_t

    with ``a`` the cumulative product of alphas, ``alpha_t = a_t / a_prev``,
    ``b_t = 1 - alpha_t`` and ``s_t^2 = (1 - a_prev) / (1 - a_t) b_t`` (``variance_type``
    ``"fixed_small"``, eq. 7's beta-tilde) or ``b_t`` (``"fixed_large"``); no noise is added
    at ``t = 0``. This is ``DDPMScheduler.step`` term by term, with ``n_t`` passed in instead
    of drawn inside.

    Parameters
    ----------
    scheduler : DDPMScheduler
        After ``set_timesteps``; its ``prediction_type``, ``clip_sample`` and
        ``variance_type`` are honoured.
    model_output : tensor (B, C, H, W)
        The network's prediction at ``scheduler.timesteps[index]``.
    index : int
        Position of the current step in ``scheduler.timesteps``.
    sample : tensor (B, C, H, W)
        ``x_t``.
    noise : tensor (B, C, H, W)
        Standard-normal ``n_t``.

    Returns
    -------
    tensor (B, C, H, W)
        ``x_prev``.
    """
    config = scheduler.config
    timesteps = scheduler.timesteps
    t = timesteps[index]
    alpha_prod_t = scheduler.alphas_cumprod[t]
    alpha_prod_t_prev = (
        scheduler.alphas_cumprod[timesteps[index + 1]] if index + 1 < len(timesteps) else scheduler.one
    )
    beta_prod_t = 1 - alpha_prod_t
    beta_prod_t_prev = 1 - alpha_prod_t_prev
    current_alpha_t = alpha_prod_t / alpha_prod_t_prev
    current_beta_t = 1 - current_alpha_t

    x0_hat = predicted_original_sample(scheduler, model_output, t, sample)
    if config.clip_sample:
        x0_hat = x0_hat.clamp(-config.clip_sample_range, config.clip_sample_range)

    x0_coeff = alpha_prod_t_prev**0.5 * current_beta_t / beta_prod_t
    xt_coeff = current_alpha_t**0.5 * beta_prod_t_prev / beta_prod_t
    x_prev = x0_coeff * x0_hat + xt_coeff * sample
    if t > 0:
        if config.variance_type == "fixed_large":
            std = current_beta_t**0.5
        else:
            std = torch.clamp(beta_prod_t_prev / beta_prod_t * current_beta_t, min=1e-20) ** 0.5
        x_prev = x_prev + std * noise
    return x_prev


class DiffusionSampler(Sampler):
    """A noise-prediction network run through a diffusers scheduler with caller noise.

    Both samplers start from ``x_T = prior_mean + init_noise_sigma * z``.

    ``DDIMScheduler`` (Song et al. 2021, eq. 12)::

        x0_hat  = (x_t - sqrt(1 - a_t) eps(x_t, t)) / sqrt(a_t)
        x_prev  = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - s_t^2) eps(x_t, t) + s_t n_t

    with ``s_t = eta * sqrt((1 - a_prev)/(1 - a_t)) sqrt(1 - a_t/a_prev)`` (eq. 16); the step
    is diffusers' own ``DDIMScheduler.step`` given ``variance_noise=n_t``.

    ``DDPMScheduler``: ancestral sampling (Ho et al. 2020, Algorithm 2), see :func:`ddpm_step`.

    The injected noise ``n_t`` is the design's ``"steps"`` component, declared for DDPM and
    for DDIM with ``eta > 0``; an antithetic partner negates ``z`` and every ``n_t``. Images
    are ``(x_0 + 1) / 2``, clamped to [0, 1] when ``clip_output`` (as diffusers pipelines do).

    Parameters
    ----------
    unet : diffusers ``UNet2DModel`` or callable ``eps(x, t)``
        The noise predictor.
    scheduler : ``DDIMScheduler`` or ``DDPMScheduler``
        Its configuration is copied; the caller's object is not modified.
    num_inference_steps : int
        Sampling steps T (network evaluations per sample), at most the scheduler's
        ``num_train_timesteps``.
    eta : float
        DDIM stochasticity, 0 for the deterministic sampler; must be 0 for DDPM.
    image_shape : (C, H, W), optional
        Required when ``unet`` has no diffusers ``config``.
    prior_mean : float or tensor broadcastable to ``image_shape``
        Mean of the prior that ``z`` is mapped to.
    clip_output : bool
        Clamp images to [0, 1].
    device, dtype : optional
        Where and in which precision to sample (``torch.float16`` or ``torch.bfloat16`` on a
        GPU). By default those of ``unet``'s parameters (``cpu``, ``float32`` for a plain
        callable); when given, a ``torch.nn.Module`` ``unet`` is moved there in place.

    Examples
    --------
    >>> from diffusers import DDPMScheduler, UNet2DModel
    >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
    ...                    down_block_types=("DownBlock2D", "DownBlock2D"),
    ...                    up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    >>> sampler = DiffusionSampler(unet, DDPMScheduler(), num_inference_steps=4)
    >>> sampler.noise_spec
    {'x_T': (1, 8, 8), 'steps': (4, 1, 8, 8)}
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
        dtype: torch.dtype | None = None,
    ):
        name = type(scheduler).__name__
        check_scheduler_name(name)
        check_num_inference_steps(num_inference_steps, scheduler)
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        if name == "DDPMScheduler":
            if eta != 0:
                raise ValueError(f"eta={eta} applies to DDIMScheduler only; DDPM sampling has no eta (use 0)")
            if scheduler.config.variance_type not in DDPM_VARIANCE_TYPES:
                raise ValueError(
                    f"DDPMScheduler variance_type={scheduler.config.variance_type!r} is not supported; "
                    f"supported: {', '.join(DDPM_VARIANCE_TYPES)}"
                )
            if scheduler.config.thresholding:
                raise ValueError("DDPMScheduler thresholding=True is not supported; use clip_sample instead")
            if scheduler.config.prediction_type not in PREDICTION_TYPES:
                raise ValueError(
                    f"DDPMScheduler prediction_type={scheduler.config.prediction_type!r} is not supported; "
                    f"supported: {', '.join(PREDICTION_TYPES)}"
                )
        if image_shape is None:
            config = getattr(unet, "config", None)
            if config is None:
                raise ValueError("image_shape=(C, H, W) is required for a unet without a config")
            size = config.sample_size
            height, width = (size, size) if isinstance(size, int) else tuple(size)
            image_shape = (config.in_channels, height, width)
        placement = _module_placement(unet)
        own_device, own_dtype = placement or (torch.device("cpu"), torch.float32)
        self.device = torch.device(device) if device is not None else own_device
        self.dtype = dtype if dtype is not None else own_dtype
        if placement is not None and (self.device, self.dtype) != placement:
            unet.to(device=self.device, dtype=self.dtype)
        if not self.dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {self.dtype}")
        self.image_shape = tuple(int(s) for s in image_shape)
        self.scheduler = SCHEDULERS[name].from_config(scheduler.config)
        self.scheduler.set_timesteps(num_inference_steps)
        self.num_inference_steps = int(num_inference_steps)
        self.nfe = self.num_inference_steps
        self.eta = float(eta)
        self.clip_output = bool(clip_output)
        self.prior_mean = torch.as_tensor(prior_mean, dtype=self.dtype, device=self.device)
        self.unet = unet
        self._eps = _as_eps_model(unet)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        num_inference_steps: int = 50,
        eta: float = 0.0,
        scheduler: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        **kwargs,
    ) -> DiffusionSampler:
        """Load a local diffusers directory (``model_index.json``, or ``unet/`` and ``scheduler/``).

        Nothing is downloaded. The directory's ``unet/`` must hold a ``UNet2DModel`` (an
        unconditional pixel-space model; latent text-conditioned pipelines go through
        :class:`~mcdiff.samplers.pipeline.PipelineSampler`).

        Parameters
        ----------
        path : str or Path
            The model directory.
        num_inference_steps, eta
            As for :class:`DiffusionSampler`.
        scheduler : str, optional
            A class name in :data:`SUPPORTED_SCHEDULERS` to sample with instead of the stored
            one, built from the stored configuration (``"DDIMScheduler"`` runs a DDPM-trained
            model with DDIM).
        device : optional
            ``cuda`` when available, ``cpu`` otherwise.
        dtype : torch.dtype
            ``torch.float16`` or ``torch.bfloat16`` halve memory on a GPU.
        **kwargs
            ``image_shape``, ``prior_mean``, ``clip_output`` of :class:`DiffusionSampler`.
        """
        root = Path(path)
        unet_config, scheduler_config = (
            root / "unet" / "config.json",
            root / "scheduler" / "scheduler_config.json",
        )
        if not (unet_config.is_file() and scheduler_config.is_file()):
            raise ValueError(
                f"{str(path)!r} is not a diffusers model directory: expected model_index.json with "
                "unet/config.json and scheduler/scheduler_config.json"
            )
        unet_class = json.loads(unet_config.read_text()).get("_class_name")
        if unet_class != "UNet2DModel":
            raise ValueError(
                f"{str(path)!r} holds a {unet_class}; DiffusionSampler runs UNet2DModel only "
                "(load a latent or text-conditioned pipeline with diffusers and use PipelineSampler)"
            )
        stored = json.loads(scheduler_config.read_text())
        name = scheduler or stored.get("_class_name", "<no _class_name>")
        check_scheduler_name(name)
        unet = UNet2DModel.from_pretrained(root / "unet", local_files_only=True, low_cpu_mem_usage=False)
        return cls(
            unet,
            SCHEDULERS[name].from_config(stored),
            num_inference_steps=num_inference_steps,
            eta=eta,
            device=device if device is not None else default_device(),
            dtype=dtype,
            **kwargs,
        )

    @property
    def stochastic(self) -> bool:
        """Whether each step injects noise (DDPM, or DDIM with ``eta > 0``)."""
        return isinstance(self.scheduler, DDPMScheduler) or self.eta > 0

    @property
    def noise_spec(self) -> dict[str, tuple[int, ...]]:
        spec = {"x_T": self.image_shape}
        if self.stochastic:
            spec["steps"] = (self.num_inference_steps, *self.image_shape)
        return spec

    def trajectory(self, noise: Noise | dict[str, torch.Tensor]) -> Iterator[tuple]:
        """Yield ``(t, x_t, eps(x_t, t))`` at every step, then ``(None, x_0, None)``.

        Step ``i``'s injected noise is read as ``noise.step("steps", i)`` at that step.
        """
        noise = as_noise(noise)
        scheduler = self.scheduler
        x = self.prior_mean + scheduler.init_noise_sigma * noise["x_T"]
        for i, t in enumerate(scheduler.timesteps):
            eps, x_prev = self._transition(i, t, x, noise.step("steps", i) if self.stochastic else None)
            yield t, x, eps
            x = x_prev
        yield None, x, None

    def _transition(
        self, index: int, t: torch.Tensor, x: torch.Tensor, step_noise: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(eps(x_t, t), x_prev)``: the network's prediction and one sampler step from ``x_t``."""
        eps = self._eps(self.scheduler.scale_model_input(x, t), t)
        return eps, self._step(index, t, eps, x, step_noise)

    def _step(
        self, index: int, t: torch.Tensor, eps: torch.Tensor, x: torch.Tensor, step_noise
    ) -> torch.Tensor:
        if isinstance(self.scheduler, DDPMScheduler):
            return ddpm_step(self.scheduler, eps, index, x, step_noise)
        return self.scheduler.step(eps, t, x, eta=self.eta, variance_noise=step_noise).prev_sample

    def sample(self, noise: Noise) -> torch.Tensor:
        *_, (_, x0, _) = self.trajectory(noise)
        images = (x0 + 1) / 2
        return images.clamp(0, 1) if self.clip_output else images

    def with_steps(self, num_inference_steps: int) -> DiffusionSampler:
        """The same network, scheduler and settings at another step count (a fidelity).

        The copy shares ``unet``; its ``nfe`` is ``num_inference_steps``. Subclasses whose
        constructor takes other arguments add them to :meth:`settings`.
        """
        settings = {**self.settings(), "num_inference_steps": num_inference_steps}
        return type(self)(self.unet, self.scheduler, **settings)

    def settings(self) -> dict:
        """The keyword arguments that rebuild this sampler around the same ``unet`` and ``scheduler``."""
        return {
            "num_inference_steps": self.num_inference_steps,
            "eta": self.eta,
            "image_shape": self.image_shape,
            "prior_mean": self.prior_mean,
            "clip_output": self.clip_output,
            "device": self.device,
            "dtype": self.dtype,
        }

    def describe(self) -> dict[str, str | int | float]:
        return {
            **super().describe(),
            "scheduler": type(self.scheduler).__name__,
            "num_inference_steps": self.num_inference_steps,
            "eta": self.eta,
            "clip_output": int(self.clip_output),
        }
