"""The analytic model: Gaussian data, exact score, the real DDIM (or another linear) update, known answers."""

from __future__ import annotations

import numpy as np
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from scipy.special import ndtr

from mcdiff.samplers.diffusion import DiffusionSampler, unclipped_scheduler

OUTPUTS = ("affine", "clip", "probit")
"""Output maps of the analytic samplers, from ``Y = (x_0 + 1) / 2`` to the image (see :func:`decode`)."""


class GaussianScore(torch.nn.Module):
    """Exact noise prediction for data ``x_0 ~ N(mu, diag(s^2))`` in model space.

    With ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps`` the marginal of ``x_t`` is
    ``N(sqrt(a_t) mu, a_t s^2 + 1 - a_t)``, so ``E[eps | x_t]`` is affine in ``x_t``::

        eps(x_t, t) = sqrt(1 - a_t) (x_t - sqrt(a_t) mu) / (a_t s^2 + 1 - a_t)
    """

    def __init__(self, mu: torch.Tensor, s: torch.Tensor, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.register_buffer("mu", mu)
        self.register_buffer("var", s**2)
        self.register_buffer("alphas_cumprod", alphas_cumprod.to(mu.dtype))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[t]
        return (1 - a).sqrt() * (x - a.sqrt() * self.mu) / (a * self.var + 1 - a)


class GaussianSampler(DiffusionSampler):
    """DDIM (or another linear solver) on Gaussian image data with the exact score: known answers.

    Data are ``N(mean, diag(std^2))`` in image units ([0, 1] scale), i.e.
    ``mu = 2 mean - 1``, ``s = 2 std`` in model space. The exact score is affine, so every
    step of a solver in :data:`~mcdiff.samplers.diffusion.SCHEDULERS` (DDIM, DDPM, and the
    multistep DPM-Solver++ 2M, UniPC and DEIS, whose updates are linear in ``(x_t, eps)``) is
    affine in its inputs and the whole sampler is an affine, pixel-wise map of
    the noise path: each output pixel is ``N(m_p, v_p)`` with ``m_p`` and ``v_p`` computed
    exactly by :meth:`output_moments`. An antithetic pair then averages to exactly ``m``.
    (DPM-Solver++ rounds ``x_t`` to float32 inside each step, so its map is affine to about
    1e-7.)

    ``output`` chooses how the final image is formed from the sampler's ``x_0``:

    - ``"affine"`` (default): ``(x_0 + 1) / 2`` unchanged; the map is affine and antithetic
      pairs cancel exactly for linear statistics.
    - ``"clip"``: clamped to [0, 1], as image pipelines do; ``E[clip(Y, 0, 1)]`` is closed form.
    - ``"probit"``: a smooth squashing decoder ``Phi((Y - 1/2) / w)`` into (0, 1), with
      ``E = Phi((m - 1/2) / sqrt(w^2 + v))``. Antithetic pair means then have a continuous
      distribution (clipping leaves a point mass where neither partner clips).

    Parameters
    ----------
    mean, std : float or array broadcastable to ``image_shape``
        Per-pixel mean and standard deviation of the data, in image units.
    image_shape : (C, H, W)
    num_inference_steps, eta
        As for :class:`~mcdiff.samplers.diffusion.DiffusionSampler`.
    scheduler : str
        The diffusers update to run, a name in :data:`~mcdiff.samplers.diffusion.SCHEDULERS`
        ("DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler",
        "UniPCMultistepScheduler", "DEISMultistepScheduler"), built by
        :func:`~mcdiff.samplers.diffusion.unclipped_scheduler` (none clips or thresholds
        ``x_0``, so the map stays affine).
    output : {"affine", "clip", "probit"}
        The final map from ``Y = (x_0 + 1) / 2`` to the image.
    probit_width : float
        ``w`` of the probit output.
    """

    OUTPUTS = OUTPUTS

    def __init__(
        self,
        mean: float | np.ndarray = 0.5,
        std: float | np.ndarray = 0.2,
        image_shape: tuple[int, int, int] = (1, 8, 8),
        num_inference_steps: int = 20,
        eta: float = 0.0,
        scheduler: str = "DDIMScheduler",
        output: str = "affine",
        probit_width: float = 0.25,
    ):
        check_output(output, probit_width)
        dtype = torch.float64
        shape = tuple(int(s) for s in image_shape)
        try:
            mean_img = torch.as_tensor(np.broadcast_to(mean, shape).copy(), dtype=dtype)
            std_img = torch.as_tensor(np.broadcast_to(std, shape).copy(), dtype=dtype)
        except ValueError as err:
            raise ValueError(f"mean and std must broadcast to image_shape {shape}: {err}") from None
        if not (torch.isfinite(mean_img).all() and (std_img > 0).all() and torch.isfinite(std_img).all()):
            raise ValueError("mean must be finite and std finite and > 0")
        unclipped = unclipped_scheduler(scheduler)
        score = GaussianScore(2 * mean_img - 1, 2 * std_img, unclipped.alphas_cumprod)
        super().__init__(
            score,
            unclipped,
            num_inference_steps=num_inference_steps,
            eta=eta,
            image_shape=shape,
            clip_output=output == "clip",
            dtype=dtype,
        )
        self.data_mean, self.data_std = mean_img, std_img
        self.output, self.probit_width = output, float(probit_width)

    def sample(self, noise: dict[str, torch.Tensor]) -> torch.Tensor:
        return decode(super().sample(noise), self.output, self.probit_width)

    def with_steps(self, num_inference_steps: int) -> GaussianSampler:
        """The same data distribution, solver and output map at another step count (a fidelity)."""
        return self.with_scheduler(type(self.scheduler).__name__, num_inference_steps)

    def with_scheduler(self, scheduler: str | SchedulerMixin, num_inference_steps: int) -> GaussianSampler:
        """The same data distribution and output map with another solver and step count (a fidelity).

        ``scheduler`` is a name in :data:`~mcdiff.samplers.diffusion.SCHEDULERS` or a scheduler
        of one of those classes (only its class is used: the analytic model's schedule is fixed).
        """
        return GaussianSampler(
            mean=self.data_mean.numpy(),
            std=self.data_std.numpy(),
            image_shape=self.image_shape,
            num_inference_steps=num_inference_steps,
            eta=self.eta,
            scheduler=scheduler if isinstance(scheduler, str) else type(scheduler).__name__,
            output=self.output,
            probit_width=self.probit_width,
        )

    def output_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact per-pixel mean and standard deviation of the *unclipped* output image.

        The output is ``b + sum_k a_k * n_k`` over the noise coordinates ``n_k`` feeding each
        pixel (pixel-wise, since the score is diagonal). One batched run with a zero input
        and a unit input per noise component gives ``b`` and every ``a_k``.
        """
        shape = self.image_shape
        steps = self.num_inference_steps if self.stochastic else 0
        probes = torch.zeros(2 + steps, 1 + steps, *shape, dtype=self.dtype)
        for k in range(1 + steps):
            probes[k + 1, k] = 1.0
        noise = {"x_T": probes[:, 0]}
        if steps:
            noise["steps"] = probes[:, 1:]
        with torch.inference_mode():
            images = (self.final_state(noise) + 1) / 2
        base, slopes = images[0], images[1:] - images[0]
        return base, slopes.pow(2).sum(0).sqrt()

    def output_mixture(self) -> dict[str, np.ndarray]:
        """The exact law of the *unclipped* output ``Y`` at this step count, as a one-component mixture.

        ``Y = (x_0 + 1) / 2`` is an affine, pixel-wise map of the noise path, so its pixels
        are independent normals ``N(m_p, s_p^2)`` (:meth:`output_moments`): the finite-step
        answer, not the data distribution it converges to. The form is that of
        :meth:`~mcdiff.samplers.mixture.GaussianMixtureSampler.output_mixture`, which
        :func:`mcdiff.functionals.exact_law` reads.

        Returns
        -------
        dict
            ``weights (1,)``, ``means (1, C, H, W)``, ``stds (1, C, H, W)`` and
            ``factors (1, 0, C, H, W)`` (no low-rank part), image units.
        """
        m, s = (t.numpy() for t in self.output_moments())
        return {"weights": np.ones(1), "means": m[None], "stds": s[None], "factors": np.zeros((1, 0, *m.shape))}

    def expected_image(self) -> torch.Tensor:
        """Exact ``E[image]`` ``(C, H, W)`` for the chosen ``output``.

        :func:`mcdiff.exact_expectation` turns it into the exact answer of a linear statistic.

        For ``Y ~ N(m, v)``: ``E[clip(Y, 0, 1)] = m (Phi(b) - Phi(a)) + sqrt(v) (phi(a) - phi(b))
        + 1 - Phi(b)`` with ``a = -m / sqrt(v)``, ``b = (1 - m) / sqrt(v)``; and
        ``E[Phi((Y - 1/2) / w)] = Phi((m - 1/2) / sqrt(w^2 + v))``.
        """
        m, s = (t.numpy() for t in self.output_moments())
        return torch.as_tensor(decoded_mean(self.output, m, s, self.probit_width))

    def identity(self) -> dict:
        """The exact score's full mean and variance maps (its buffers), the solver and the output map."""
        return {**super().identity(), "output": self.output, "probit_width": self.probit_width}

    def describe(self) -> dict[str, str | int | float]:
        return {
            **super().describe(),
            "data_mean_avg": float(self.data_mean.mean()),
            "data_std_avg": float(self.data_std.mean()),
            "output": self.output,
        }


def _normal_pdf(u: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * u**2) / np.sqrt(2 * np.pi)


def check_output(output: str, probit_width: float) -> None:
    """Raise ``ValueError`` unless ``output`` is in :data:`OUTPUTS` and ``probit_width > 0``."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if not probit_width > 0:
        raise ValueError(f"probit_width must be > 0, got {probit_width}")


def decode(images: torch.Tensor, output: str, probit_width: float) -> torch.Tensor:
    """The output map of an analytic sampler on its images ``(B, C, H, W)``.

    ``"probit"``: ``Phi((Y - 1/2) / w)``; ``"affine"`` and ``"clip"`` return ``images`` as
    they are (the sampler's ``clip_output`` has already clamped them for ``"clip"``).
    """
    if output == "probit":
        return torch.special.ndtr((images - 0.5) / probit_width)
    return images


def decoded_mean(output: str, m: np.ndarray, s: np.ndarray, probit_width: float) -> np.ndarray:
    """Exact ``E[decode(Y)]`` for ``Y ~ N(m, s^2)``, elementwise, for each output map.

    ``affine``: ``m``. ``clip``: ``E[clip(Y, 0, 1)] = m (Phi(b) - Phi(a)) + s (phi(a) - phi(b))
    + 1 - Phi(b)`` with ``a = -m / s``, ``b = (1 - m) / s``. ``probit``:
    ``E[Phi((Y - 1/2) / w)] = Phi((m - 1/2) / sqrt(w^2 + s^2))``.
    """
    if output == "affine":
        return m
    if output == "probit":
        return ndtr((m - 0.5) / np.sqrt(probit_width**2 + s**2))
    a, b = -m / s, (1 - m) / s
    return m * (ndtr(b) - ndtr(a)) + s * (_normal_pdf(a) - _normal_pdf(b)) + 1 - ndtr(b)
