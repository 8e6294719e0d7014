"""Diffusion samplers driven by mcdiff's noise through any diffusers scheduler with a ``step()``."""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    UNet2DModel,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from mcdiff.noise import Noise, as_noise
from mcdiff.samplers.base import Sampler
from mcdiff.samplers.identity import public_config
from mcdiff.samplers.scheduler_noise import NoiseSupply, supplied_noise
from mcdiff.samplers.schedulers import (
    SUPPORTED_SCHEDULERS,
    check_scheduler,
    init_noise_sigma,
    probe_schedule,
    scale_model_input,
    scheduler_class,
    step_parameters,
)

UNET_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin.index.json",
)
"""Weight files of a diffusers ``unet/`` folder that :meth:`DiffusionSampler.from_pretrained`
loads (one file, or the index of a sharded checkpoint); the first is what diffusers writes."""

SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "DDIMScheduler": DDIMScheduler,
    "DDPMScheduler": DDPMScheduler,
    "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler,
    "UniPCMultistepScheduler": UniPCMultistepScheduler,
    "DEISMultistepScheduler": DEISMultistepScheduler,
}
"""Schedulers of the ``alphas_cumprod`` parametrisation with integer timesteps, by class name.

The analytic models (:class:`~mcdiff.samplers.gaussian.GaussianSampler`,
:class:`~mcdiff.samplers.mixture.GaussianMixtureSampler`) index ``alphas_cumprod`` by the
timestep, so they run these only. Each update is linear in ``(x_t, eps)`` (DDIM, Song et al.
2021, eq. 12; DDPM, Ho et al. 2020, Algorithm 2; the multistep DPM-Solver++ 2M, UniPC and
DEIS combine the current and earlier ``x_0`` predictions linearly), so with an affine score
the whole sampler is affine in its noise. :class:`DiffusionSampler` itself runs every
scheduler in :data:`~mcdiff.samplers.schedulers.SUPPORTED_SCHEDULERS`.
"""

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
"""What a network may predict (a scheduler's ``prediction_type``) for :func:`predicted_original_sample`."""

__all__ = [
    "PREDICTION_TYPES",
    "SUPPORTED_SCHEDULERS",
    "DiffusionSampler",
    "check_num_inference_steps",
    "predicted_original_sample",
]


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
    """Raise ``ValueError`` unless ``name`` is in :data:`SCHEDULERS`."""
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler {name} is not supported; supported: {', '.join(SCHEDULERS)}")


def unclipped_scheduler(name: str) -> SchedulerMixin:
    """A fresh scheduler of :data:`SCHEDULERS` on diffusers' default linear schedule, never clipping.

    Every one is built from the configuration of ``DDIMScheduler(clip_sample=False)`` (1000
    training steps, betas linear from 1e-4 to 0.02, ``"leading"`` timestep spacing), so all
    share one ``alphas_cumprod``; none clips ``x_0`` (``clip_sample=False``) or thresholds it
    (``thresholding=False``, the multistep solvers' default), which keeps the update affine.
    """
    check_scheduler_name(name)
    return SCHEDULERS[name].from_config(DDIMScheduler(clip_sample=False).config)


def check_num_inference_steps(num_inference_steps: int, scheduler: SchedulerMixin) -> None:
    """Raise ``ValueError`` unless ``1 <= num_inference_steps <= num_train_timesteps``."""
    train_steps = getattr(scheduler.config, "num_train_timesteps", None) or 1000
    if isinstance(num_inference_steps, bool) or not 1 <= num_inference_steps <= train_steps:
        raise ValueError(
            f"num_inference_steps={num_inference_steps} must be in [1, {train_steps}] "
            f"(the scheduler's num_train_timesteps)"
        )


def predicted_original_sample(
    scheduler: SchedulerMixin, model_output: torch.Tensor, t: torch.Tensor, sample: torch.Tensor
) -> torch.Tensor:
    """The network's estimate of ``x_0`` from ``x_t`` (Tweedie's formula for ``epsilon``), unclipped.

    With ``a_t`` the cumulative product of alphas at timestep ``t``::

        epsilon:       x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)     (Ho et al. 2020, eq. 15)
        sample:        x0_hat = model_output
        v_prediction:  x0_hat = sqrt(a_t) x_t - sqrt(1 - a_t) v          (Salimans and Ho 2022, sec. 4)

    For a network trained on ``epsilon`` this is ``E[x_0 | x_t]`` (Tweedie's formula), exactly
    so for the exact score of :class:`~mcdiff.samplers.gaussian.GaussianSampler`. Any other
    ``prediction_type`` raises ``ValueError``.
    """
    alpha_prod_t = scheduler.alphas_cumprod[t]
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type {prediction_type!r} of {type(scheduler).__name__} is not one mcdiff can "
            f"turn into x0_hat; known: {', '.join(PREDICTION_TYPES)}"
        )
    if prediction_type == "epsilon":
        return (sample - (1 - alpha_prod_t) ** 0.5 * model_output) / alpha_prod_t**0.5
    if prediction_type == "sample":
        return model_output
    return alpha_prod_t**0.5 * sample - (1 - alpha_prod_t) ** 0.5 * model_output


@dataclass
class SchedulerRun:
    """The state of one sampling run: a fresh copy of the scheduler and the noise it draws from."""

    scheduler: SchedulerMixin
    supply: NoiseSupply


class DiffusionSampler(Sampler):
    """A diffusion network run through any diffusers scheduler, with every noise draw from the design.

    The run is diffusers' own loop: from ``x_T = prior_mean + init_noise_sigma * z``, at each
    of the scheduler's timesteps ``t_i``::

        out_i   = network(scale_model_input(x_i, t_i), t_i)
        x_{i+1} = scheduler.step(out_i, t_i, x_i).prev_sample

    and the image is ``(x_0 + 1) / 2``, clamped to [0, 1] when ``clip_output``. What the
    network predicts (noise, ``x_0``, velocity) is the scheduler's ``prediction_type``: DDIM
    (Song et al. 2021, eq. 12), DDPM ancestral sampling (Ho et al. 2020, Algorithm 2),
    DPM-Solver++ (Lu et al. 2022), UniPC, the Karras et al. (2022) samplers (Euler, Heun,
    EDM), PNDM, LMS, LCM and TCD, and flow matching (Lipman et al. 2023; velocity
    prediction, ``x_T = z``).

    Every noise draw inside a stochastic scheduler (DDPM, DDIM with ``eta > 0``, Euler
    ancestral, KDPM2 ancestral, the SDE variants of DPM-Solver++, LCM, TCD, Euler with
    ``s_churn > 0``) is the design's ``"steps"`` component, draw ``k`` being
    ``noise.step("steps", k)``, read at the step that makes it: passed as ``variance_noise``
    where ``step()`` takes it, and otherwise handed to the scheduler where it calls
    ``randn_tensor`` (:mod:`mcdiff.samplers.scheduler_noise`). The number of draws is
    counted by a dry run with a zero network (:func:`~mcdiff.samplers.schedulers.probe_schedule`);
    a deterministic scheduler declares ``x_T`` only. An antithetic partner negates ``z`` and
    every draw, so for a network affine in ``x`` the partners mirror exactly about ``G(0)``.

    :attr:`nfe` is the number of network calls of one sample, counted in that dry run: the
    step count for one-call-per-step schedulers, ``2T - 1`` for Heun and KDPM2, more for
    PNDM's Runge-Kutta warm-up. :attr:`network_calls` counts the calls actually made.

    Parameters
    ----------
    unet : diffusers ``UNet2DModel`` or callable ``network(x, t)``
        The denoiser.
    scheduler : diffusers scheduler
        Any with a ``step()`` (see :data:`~mcdiff.samplers.schedulers.SUPPORTED_SCHEDULERS`
        for those tested against diffusers); its configuration is copied, the caller's
        object is not modified.
    num_inference_steps : int
        Sampling steps T passed to ``set_timesteps``, at most the scheduler's
        ``num_train_timesteps``.
    eta : float
        Passed to ``step()`` where it takes ``eta`` (DDIM's stochasticity, TCD's gamma); must
        be 0 for schedulers whose ``step()`` has no ``eta``.
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
    step_kwargs : dict, optional
        Further arguments of every ``step()`` call, e.g. ``{"s_churn": 1.0}`` for the
        stochastic Euler sampler of Karras et al. (2022, Algorithm 2).

    References
    ----------
    J. Ho, A. Jain and P. Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020.
    J. Song, C. Meng and S. Ermon, "Denoising Diffusion Implicit Models", ICLR 2021.
    T. Karras, M. Aittala, T. Aila and S. Laine, "Elucidating the Design Space of
    Diffusion-Based Generative Models", NeurIPS 2022.
    C. Lu et al., "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
    Models", arXiv:2211.01095. Y. Lipman et al., "Flow Matching for Generative Modeling", ICLR 2023.

    Examples
    --------
    >>> from diffusers import DDPMScheduler, UNet2DModel
    >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
    ...                    down_block_types=("DownBlock2D", "DownBlock2D"),
    ...                    up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    >>> sampler = DiffusionSampler(unet, DDPMScheduler(), num_inference_steps=4)
    >>> sampler.noise_spec  # the last step (t = 0) adds no noise
    {'x_T': (1, 8, 8), 'steps': (3, 1, 8, 8)}
    >>> sampler.nfe
    4
    """

    schedulers: tuple[str, ...] | None = None
    """Scheduler class names a subclass is restricted to (``None``: any that passes the dry run)."""

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
        step_kwargs: dict | None = None,
    ):
        cls = check_scheduler(scheduler)
        name = cls.__name__
        if self.schedulers is not None and name not in self.schedulers:
            raise ValueError(
                f"{type(self).__name__} samples with {', '.join(self.schedulers)} only, got {name}"
            )
        check_num_inference_steps(num_inference_steps, scheduler)
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        takes = step_parameters(scheduler)
        if eta != 0 and "eta" not in takes:
            raise ValueError(
                f"eta={eta} applies to schedulers whose step() takes eta (DDIMScheduler, TCDScheduler); "
                f"{name}.step has none (use 0)"
            )
        step_kwargs = dict(step_kwargs or {})
        reserved = {"model_output", "timestep", "sample", "eta", "generator", "variance_noise", "return_dict"}
        bad = sorted(k for k in step_kwargs if k not in takes or k in reserved)
        if bad:
            allowed = sorted(takes - reserved - {"self", "kwargs"})
            raise ValueError(f"step_kwargs {bad} are not free arguments of {name}.step; allowed: {allowed}")
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
        self.scheduler = cls.from_config(scheduler.config)
        try:
            self.scheduler.set_timesteps(num_inference_steps)
        except (ValueError, RuntimeError) as err:  # PNDM's Runge-Kutta warm-up needs 4 or more steps
            raise ValueError(f"{name} cannot run num_inference_steps={num_inference_steps}: {err}") from err
        self.num_inference_steps = int(num_inference_steps)
        self.eta = float(eta)
        self.step_kwargs = step_kwargs
        self._step_kwargs = {**({"eta": self.eta} if "eta" in takes else {}), **step_kwargs}
        out_channels = getattr(getattr(unet, "config", None), "out_channels", None) or self.image_shape[0]
        self._probe = probe_schedule(
            self.scheduler, self.image_shape, (out_channels, *self.image_shape[1:]), self._step_kwargs
        )
        self._variance_noise = "variance_noise" in takes
        self.nfe = self._probe.network_calls
        self.network_calls = 0
        self.clip_output = bool(clip_output)
        self.prior_mean = torch.as_tensor(prior_mean, dtype=self.dtype, device=self.device)
        self.unet = unet

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
        unconditional pixel-space model; latent, text- or class-conditioned pipelines go
        through :class:`~mcdiff.samplers.pipeline.PipelineSampler`).

        Parameters
        ----------
        path : str or Path
            The model directory.
        num_inference_steps, eta
            As for :class:`DiffusionSampler`.
        scheduler : str, optional
            A diffusers scheduler class name (see
            :data:`~mcdiff.samplers.schedulers.SUPPORTED_SCHEDULERS`) to sample with instead
            of the stored one, built from the stored configuration (``"DDIMScheduler"`` or
            ``"DPMSolverMultistepScheduler"`` runs a DDPM-trained model).
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
        if not any((root / "unet" / name).is_file() for name in UNET_WEIGHTS):
            raise ValueError(
                f"{str(path)!r} has unet/config.json but no weights: expected "
                f"{str(root / 'unet' / UNET_WEIGHTS[0])!r} (or {', '.join(UNET_WEIGHTS[1:])} in unet/)"
            )
        stored = json.loads(scheduler_config.read_text())
        scheduler_type = scheduler_class(scheduler or stored.get("_class_name", "<no _class_name>"))
        try:
            unet = UNet2DModel.from_pretrained(root / "unet", local_files_only=True, low_cpu_mem_usage=False)
        except (OSError, ValueError) as err:  # damaged or partial weights
            raise ValueError(f"cannot load the UNet of {str(path)!r}: {' '.join(str(err).split())}") from None
        return cls(
            unet,
            scheduler_type.from_config(stored),
            num_inference_steps=num_inference_steps,
            eta=eta,
            device=device if device is not None else default_device(),
            dtype=dtype,
            **kwargs,
        )

    @property
    def stochastic(self) -> bool:
        """Whether the scheduler draws noise after ``x_T`` (DDPM, DDIM with ``eta > 0``, ancestral, SDE)."""
        return self._probe.n_draws > 0

    @property
    def noise_spec(self) -> dict[str, tuple[int, ...]]:
        spec = {"x_T": self.image_shape}
        if self.stochastic:
            spec["steps"] = (self._probe.n_draws, *self.image_shape)
        return spec

    def trajectory(self, noise: Noise | dict[str, torch.Tensor]) -> Iterator[tuple]:
        """Yield ``(t, x_t, network output)`` at every network call, then ``(None, x_0, None)``.

        Each draw of step noise is read as ``noise.step("steps", k)`` when the scheduler makes it.
        """
        noise = as_noise(noise)
        run = SchedulerRun(copy.deepcopy(self.scheduler), NoiseSupply(noise))
        x = self.prior_mean + init_noise_sigma(run.scheduler) * noise["x_T"]
        for i, t in enumerate(run.scheduler.timesteps):
            eps, x_prev = self._transition(i, t, x, run)
            yield t, x, eps
            x = x_prev
        yield None, x, None

    def model_input(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """What the network sees at call ``index`` for the state ``x``: ``c_i x`` (``scale_model_input``)."""
        return self._probe.input_scales[index] * x

    def network(self, model_input: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network's output for an already scaled input; adds one to :attr:`network_calls`."""
        return self._eps(model_input, t)

    def _eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.network_calls += 1
        out = self.unet(x, t)
        return out.sample if hasattr(out, "sample") else out

    def _transition(
        self, index: int, t: torch.Tensor, x: torch.Tensor, run: SchedulerRun
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(network output at x_t, x_prev)``: one network call and one scheduler step from ``x_t``."""
        eps = self._eps(scale_model_input(run.scheduler, x, t), t)
        return eps, self._step(index, t, eps, x, run)

    def _step(self, index: int, t: torch.Tensor, eps: torch.Tensor, x: torch.Tensor, run: SchedulerRun) -> torch.Tensor:
        """``scheduler.step`` at call ``index``, its noise supplied from the design."""
        draws = self._probe.draws[index]
        kwargs = dict(self._step_kwargs)
        if self._variance_noise and draws == 1:
            kwargs["variance_noise"] = run.supply.next_step_noise(x.shape, x.device, x.dtype)
        with supplied_noise([type(run.scheduler)], run.supply):
            x_prev = run.scheduler.step(eps, t, x, **kwargs).prev_sample
        expected = sum(self._probe.draws[: index + 1])
        if run.supply.step_draws != expected:
            raise RuntimeError(
                f"{type(run.scheduler).__name__} drew {run.supply.step_draws} noise tensors by call {index}; its dry "
                f"run drew {expected} (noise draws that depend on the data are not supported)"
            )
        return x_prev

    def final_state(self, noise: Noise | dict[str, torch.Tensor]) -> torch.Tensor:
        """``x_0``, the last state of :meth:`trajectory`, holding one step's tensors at a time."""
        for _, x, _ in self.trajectory(noise):
            pass
        return x

    def sample(self, noise: Noise) -> torch.Tensor:
        images = (self.final_state(noise) + 1) / 2
        return images.clamp(0, 1) if self.clip_output else images

    def with_steps(self, num_inference_steps: int) -> DiffusionSampler:
        """The same network, scheduler and settings at another step count (a fidelity).

        The copy shares ``unet``; its ``nfe`` is counted again. Subclasses whose constructor
        takes other arguments add them to :meth:`settings`.
        """
        return self.with_scheduler(self.scheduler, num_inference_steps)

    def with_scheduler(self, scheduler: str | SchedulerMixin, num_inference_steps: int) -> DiffusionSampler:
        """The same network and settings with another scheduler and step count (a fidelity).

        Parameters
        ----------
        scheduler : str or diffusers scheduler
            A class name (see :data:`~mcdiff.samplers.schedulers.SUPPORTED_SCHEDULERS`), built
            from this sampler's scheduler configuration (same noise schedule and prediction
            type), e.g. ``"UniPCMultistepScheduler"``; or a scheduler object.
        num_inference_steps : int
            Sampling steps of the copy; its ``nfe`` is counted again by the dry run.
        """
        if isinstance(scheduler, str):
            scheduler = scheduler_class(scheduler).from_config(self.scheduler.config)
        settings = {**self.settings(), "num_inference_steps": num_inference_steps}
        return type(self)(self.unet, scheduler, **settings)

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
            "step_kwargs": self.step_kwargs,
        }

    def identity(self) -> dict:
        """The network (its ``state_dict``), the prior mean and the scheduler's configuration."""
        return {"network": self.unet, "prior_mean": self.prior_mean, "scheduler": public_config(self.scheduler.config)}

    def describe(self) -> dict[str, str | int | float]:
        return {
            **super().describe(),
            "scheduler": type(self.scheduler).__name__,
            "num_inference_steps": self.num_inference_steps,
            "eta": self.eta,
            "noise_draws_per_sample": self._probe.n_draws,
            "clip_output": int(self.clip_output),
        }
