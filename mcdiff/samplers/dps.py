"""Diffusion posterior sampling (DPS): a diffusion sampler guided towards a measurement."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import numpy as np
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from mcdiff.samplers.diffusion import DiffusionSampler, predicted_original_sample
from mcdiff.samplers.gaussian import GaussianSampler
from mcdiff.samplers.mixture import GaussianMixtureSampler


def check_zeta(zeta: float) -> float:
    """Return ``zeta`` as a float if it is a finite number ``>= 0``, else raise ``ValueError``."""
    if isinstance(zeta, bool) or not isinstance(zeta, (int, float, np.floating)) or not 0 <= zeta < math.inf:
        raise ValueError(f"zeta (the DPS step size) must be a finite number >= 0, got {zeta!r}")
    return float(zeta)


class DPSSampler(DiffusionSampler):
    """A DDPM or DDIM sampler with the diffusion-posterior-sampling correction at every step.

    At each step, from ``x_t`` (Chung et al. 2023, Algorithm 1)::

        x0_hat  = (x_t - sqrt(1 - a_t) eps(x_t, t)) / sqrt(a_t)      (Tweedie's estimate of x_0)
        x'_prev = the DDPM or DDIM step from x_t with the design's step noise n_t
        x_prev  = x'_prev - zeta * grad_{x_t} || y - A(x0_hat(x_t)) ||_2

    ``x0_hat`` is :func:`~mcdiff.samplers.diffusion.predicted_original_sample` (the formula
    above for an ``epsilon`` network), never clipped: the guidance sees the network's own
    estimate even where the scheduler's step clips it (``clip_sample``).

    The norm is *not* squared, as in the authors' code: its gradient is that of the squared
    norm scaled by ``1 / (2 ||y - A(x0_hat)||)``, so ``zeta`` sets the length of the correction
    in measurement space independently of how far the sample is from the data. The gradient
    flows through the network (one vector-Jacobian product per step), so a DPS step costs
    about two to three plain steps; :attr:`nfe` still counts network *forward* evaluations,
    one per step, like the paper's NFE.

    Everything random comes from the design, as for :class:`DiffusionSampler`: ``x_T`` and,
    for DDPM or DDIM with ``eta > 0``, every injected ``n_t``. An antithetic partner negates
    the whole noise path; the measurement ``y`` is fixed, so partners are guided towards the
    same observation. ``y`` and ``A`` live on the model's [-1, 1] scale (images are
    ``(x_0 + 1) / 2``). The sampler works under ``torch.no_grad`` and ``torch.inference_mode``
    callers: it turns gradients on for its own backward pass.

    Parameters
    ----------
    unet, scheduler
        As for :class:`DiffusionSampler` (``DDPMScheduler`` for the paper's ancestral sampler).
    operator : callable
        ``A``: ``(B, C, H, W) -> (B, *measurement_shape)``, differentiable in torch, e.g.
        :class:`~mcdiff.inverse.InpaintingOperator`.
    measurement : tensor or array
        ``y``, the shape of ``A`` of one image.
    zeta : float
        Step size ``>= 0`` of the correction; 0 gives the unconditional sampler. The authors'
        inpainting configuration uses 0.5 with 1000 DDPM steps.
    **kwargs
        ``num_inference_steps``, ``eta``, ``image_shape``, ... of :class:`DiffusionSampler`.

    References
    ----------
    H. Chung, J. Kim, M. T. McCann, M. L. Klasky and J. C. Ye, "Diffusion Posterior Sampling
    for General Noisy Inverse Problems", ICLR 2023, Algorithm 1 and eq. 16.
    """

    schedulers = ("DDIMScheduler", "DDPMScheduler")  # x0_hat by Tweedie's formula in alphas_cumprod

    def __init__(
        self,
        unet,
        scheduler: SchedulerMixin,
        operator: Callable[[torch.Tensor], torch.Tensor],
        measurement,
        zeta: float,
        **kwargs,
    ):
        super().__init__(unet, scheduler, **kwargs)
        self.zeta = check_zeta(zeta)
        if not callable(operator):
            raise ValueError(f"operator must be a callable A(x), got {operator!r}")
        y = torch.as_tensor(measurement).to(device=self.device, dtype=self.dtype)
        if not torch.isfinite(y).all():
            raise ValueError("the measurement must be finite")
        probe = operator(torch.zeros(1, *self.image_shape, device=self.device, dtype=self.dtype))
        if tuple(probe.shape[1:]) != tuple(y.shape):
            raise ValueError(
                f"measurement of shape {tuple(y.shape)} does not match the operator's output "
                f"{tuple(probe.shape[1:])} for the model's images {self.image_shape}"
            )
        self.operator, self.measurement = operator, y

    @classmethod
    def from_sampler(
        cls,
        sampler: DiffusionSampler,
        operator: Callable[[torch.Tensor], torch.Tensor],
        measurement,
        zeta: float,
    ) -> DPSSampler:
        """DPS on the network, scheduler and settings of ``sampler`` (which is left unchanged).

        ``sampler`` must run the plain DDIM or DDPM update: a :class:`DiffusionSampler` (for
        example from :func:`~mcdiff.models.load_model`), or a :class:`GaussianSampler` or
        :class:`GaussianMixtureSampler` with output ``"affine"`` or ``"clip"``.
        """
        plain = type(sampler) is DiffusionSampler
        is_analytic = isinstance(sampler, (GaussianSampler, GaussianMixtureSampler))
        analytic = is_analytic and sampler.output != "probit"
        if not (plain or analytic):
            raise ValueError(
                f"DPS runs on the plain DDIM/DDPM update of a DiffusionSampler; got {type(sampler).__name__}"
                + (f" with output={sampler.output!r}" if is_analytic else "")
            )
        return cls(sampler.unet, sampler.scheduler, operator, measurement, zeta, **sampler.settings())

    def _transition(
        self, index: int, t: torch.Tensor, x: torch.Tensor, step_noise: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(eps(x_t, t), x_prev)`` with the DPS correction (see the class docstring)."""
        with torch.inference_mode(False), torch.enable_grad():
            x_t = x.detach().clone().requires_grad_(True)  # a clone: x may be an inference tensor
            eps = self._eps(self.scheduler.scale_model_input(x_t, t), t)
            x0_hat = predicted_original_sample(self.scheduler, eps, t, x_t)
            residual = (self.measurement - self.operator(x0_hat)).flatten(1)
            (grad,) = torch.autograd.grad(torch.linalg.vector_norm(residual, dim=1).sum(), x_t)
        eps = eps.detach()
        return eps, self._step(index, t, eps, x, step_noise) - self.zeta * grad

    def settings(self) -> dict:
        return {**super().settings(), "operator": self.operator, "measurement": self.measurement, "zeta": self.zeta}

    def identity(self) -> dict:
        """The network, prior and scheduler, and the guidance: operator, measurement ``y``, ``zeta``."""
        return {**super().identity(), "operator": self.operator, "measurement": self.measurement, "zeta": self.zeta}

    def describe(self) -> dict[str, str | int | float]:
        """The base settings plus ``zeta``, the operator's settings and a digest of ``y``."""
        describe_operator = getattr(self.operator, "describe", None)
        digest = hashlib.sha256(self.measurement.detach().cpu().double().numpy().tobytes()).hexdigest()[:16]
        return {
            **super().describe(),
            "zeta": self.zeta,
            **(describe_operator() if describe_operator else {"operator": type(self.operator).__name__}),
            "measurement_sha256": digest,
        }
