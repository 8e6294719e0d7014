"""DDIM for models trained with the probabilistic formulation of offset noise."""

from __future__ import annotations

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from mcdiff.noise import Noise, as_noise
from mcdiff.samplers.diffusion import DiffusionSampler


def offset_noise_psi(betas: torch.Tensor) -> torch.Tensor:
    """Time-dependent offset coefficients ``psi_t`` ``(T,)`` of the probabilistic offset noise.

    With ``a_t = 1 - beta_t``, ``abar_t = prod_{i<=t} a_i`` and ``abar_0 = 1`` (1-based t)::

        gamma_1 = 1,   gamma_t = C_t S_{t-1},   S_t = sum_{i<=t} gamma_i / sqrt(abar_{i-1}),
        C_t = (1 - a_t) sqrt(abar_{t-1}) / (a_t (1 - abar_{t-1})),
        psi_t = S_t / sqrt(1 - abar_t) / (S_T / sqrt(1 - abar_T)),

    so ``psi_T = 1`` and ``psi_t`` rises from about 0. Entry ``k`` of the result belongs to
    diffusers' 0-based timestep ``k`` (paper step ``k + 1``). Computed in float64.

    References
    ----------
    T. Kutsuna, "A Probabilistic Formulation of Offset Noise in Diffusion Models",
    arXiv:2412.03134, eqs. (22), (34) and Algorithm 1.
    """
    betas = torch.as_tensor(betas, dtype=torch.float64)
    if betas.ndim != 1 or len(betas) < 2 or not ((betas > 0) & (betas < 1)).all():
        raise ValueError(f"betas must be a 1-D tensor of >= 2 values in (0, 1), got shape {tuple(betas.shape)}")
    alphas = 1 - betas
    abar = torch.cumprod(alphas, dim=0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    gammas = torch.empty_like(betas)
    gammas[0] = 1.0
    partial_sum = gammas[0] / abar_prev[0].sqrt()
    for t in range(1, len(betas)):
        c_t = (1 - alphas[t]) * abar_prev[t].sqrt() / (alphas[t] * (1 - abar_prev[t]))
        gammas[t] = c_t * partial_sum
        partial_sum = partial_sum + gammas[t] / abar_prev[t].sqrt()
    psi = torch.cumsum(gammas / abar_prev.sqrt(), dim=0) / (1 - abar).sqrt()
    return psi / psi[-1]


class ProbabilisticOffsetSampler(DiffusionSampler):
    """DDIM for a network trained on ``||eps + w psi_t xi - eps_theta(x_t, t)||^2``.

    Training noised ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) (eps + w psi_t xi)`` with
    ``xi ~ N(0, I)`` of shape ``(C, 1, 1)`` and ``psi_t`` from :func:`offset_noise_psi`, so
    ``x_t`` is the ordinary DDPM state ``y_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``
    shifted by ``m_t = sqrt(1 - abar_t) w psi_t xi``. Given ``xi``, the reverse process is
    ordinary DDIM on ``y_t`` with the network's noise estimate stripped of the offset::

        x_t     = y_t + m_t
        x0_hat  = (x_t - sqrt(1 - abar_t) eps_theta(x_t, t)) / sqrt(abar_t)
                = (y_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t),   eps_hat = eps_theta - w psi_t xi
        y_prev  = DDIM step of (y_t, eps_hat)   (see :class:`DiffusionSampler`)

    starting from ``y_T = prior_mean + z`` (so ``x_T = z + sqrt(1 - abar_T) w psi_T xi``,
    the matching prior ``N(w xi, I)`` as ``abar_T -> 0``), and ``m_0 = 0`` after the last
    step (``abar = 1``), so the image is ``y_0``. ``xi`` is the design's ``"offset"`` noise
    component: an antithetic partner negates it together with ``z``.

    Parameters
    ----------
    unet, scheduler
        As for :class:`DiffusionSampler`; the scheduler must end at ``abar = 1``
        (DDIM's default ``set_alpha_to_one``).
    offset_weight : float
        ``w``, the scale of the offset noise used in training.
    **kwargs
        Passed on to :class:`DiffusionSampler` (``num_inference_steps``, ``eta``, ...).

    References
    ----------
    T. Kutsuna, "A Probabilistic Formulation of Offset Noise in Diffusion Models",
    arXiv:2412.03134; J. Song et al., "Denoising Diffusion Implicit Models", ICLR 2021, eq. 12.
    """

    def __init__(self, unet, scheduler: SchedulerMixin, offset_weight: float = 1.0, **kwargs):
        if not offset_weight >= 0:
            raise ValueError(f"offset_weight must be >= 0, got {offset_weight}")
        if type(scheduler).__name__ != "DDIMScheduler":
            raise ValueError(
                f"ProbabilisticOffsetSampler samples with DDIMScheduler only, got {type(scheduler).__name__}"
            )
        super().__init__(unet, scheduler, **kwargs)
        if float(self.scheduler.final_alpha_cumprod) != 1.0:
            raise ValueError("the scheduler must end at alpha_cumprod = 1 (set_alpha_to_one=True)")
        self.offset_weight = float(offset_weight)
        timesteps = self.scheduler.timesteps
        w_psi = self.offset_weight * offset_noise_psi(self.scheduler.betas)[timesteps]
        shift = (1 - self.scheduler.alphas_cumprod.double()[timesteps]).sqrt() * w_psi
        self._w_psi = w_psi.to(device=self.device, dtype=self.dtype)
        self._shift = shift.to(device=self.device, dtype=self.dtype)

    @property
    def noise_spec(self) -> dict[str, tuple[int, ...]]:
        spec = super().noise_spec
        return {"x_T": spec.pop("x_T"), "offset": (self.image_shape[0], 1, 1), **spec}

    def trajectory(self, noise: Noise | dict[str, torch.Tensor]):
        """Yield ``(t, x_t, eps_theta(x_t, t))`` at every step, then ``(None, x_0, None)``."""
        noise = as_noise(noise)
        scheduler = self.scheduler
        xi = noise["offset"]
        y = self.prior_mean + scheduler.init_noise_sigma * noise["x_T"]
        for i, t in enumerate(scheduler.timesteps):
            x = y + self._shift[i] * xi
            eps = self._eps(scheduler.scale_model_input(x, t), t)
            yield t, x, eps
            step_noise = noise.step("steps", i) if self.eta > 0 else None
            eps_hat = eps - self._w_psi[i] * xi
            y = scheduler.step(eps_hat, t, y, eta=self.eta, variance_noise=step_noise).prev_sample
        yield None, y, None

    def settings(self) -> dict:
        return {**super().settings(), "offset_weight": self.offset_weight}

    def identity(self) -> dict:
        return {**super().identity(), "offset_weight": self.offset_weight}

    def describe(self) -> dict[str, str | int | float]:
        return {**super().describe(), "offset_weight": self.offset_weight}
