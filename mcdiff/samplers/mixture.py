"""A Gaussian-mixture analytic model: a non-affine exact score, the real DDIM update, known answers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from mcdiff.samplers.diffusion import (
    SCHEDULERS,
    DiffusionSampler,
    check_num_inference_steps,
    unclipped_scheduler,
)
from mcdiff.samplers.gaussian import OUTPUTS, check_output, decode, decoded_mean
from mcdiff.validation import is_integer

PRESETS = ("digits",)
"""Names accepted by :meth:`GaussianMixtureSampler.preset`."""

REFERENCE_FILE = Path(__file__).parent / "mixture_reference.json"
"""Answers of the preset's finite-step law recorded by ``statistics/mixture_reference.py``."""


class GaussianMixtureScore(torch.nn.Module):
    """Exact noise prediction ``E[eps | x_t]`` for mixture data in model space.

    Data ``x_0 ~ sum_k pi_k N(mu_k, Sigma_k)`` with ``Sigma_k = diag(d_k) + U_k U_k^T`` (``U_k``
    of rank r, possibly 0), observed as ``x = alpha x_0 + sigma eps``. Given component k,
    ``x ~ N(alpha mu_k, C_k)`` with ``C_k = alpha^2 Sigma_k + sigma^2 I``, so::

        r_k(x)      = pi_k N(x; alpha mu_k, C_k) / sum_j pi_j N(x; alpha mu_j, C_j)
        E[eps | x]  = sum_k r_k(x) sigma C_k^-1 (x - alpha mu_k)
        E[x_0 | x]  = sum_k r_k(x) (mu_k + alpha Sigma_k C_k^-1 (x - alpha mu_k))

    For DDPM/DDIM ``alpha = sqrt(a_t)``, ``sigma = sqrt(1 - a_t)`` (:meth:`forward`); for
    flow matching ``alpha = 1 - s``, ``sigma = s`` (:meth:`velocity`). Responsibilities are
    a log-sum-exp; ``C_k^-1`` and ``log det C_k`` go through Woodbury's identity and the
    matrix determinant lemma with an r x r Cholesky factor, so the cost is O(K D r^2) per
    image and nothing D x D is formed::

        C^-1 y     = E^-1 y - E^-1 V M^-1 V^T E^-1 y,   M = I_r + V^T E^-1 V
        log det C  = sum log E + log det M,            E = alpha^2 d + sigma^2, V = alpha U

    Parameters
    ----------
    weights : tensor (K,)
        Mixture weights ``pi_k``, positive, summing to 1.
    mu : tensor (K, D)
        Component means in model space.
    diag : tensor (K, D)
        Diagonal variances ``d_k`` in model space, > 0.
    factors : tensor (K, D, r)
        Low-rank factors ``U_k`` in model space (``r = 0`` for diagonal components).
    alphas_cumprod : tensor (T,)
        The scheduler's ``a_t``, indexed by timestep in :meth:`forward`.

    References
    ----------
    Ho, Jain and Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020 (eps
    prediction); Lipman et al., "Flow Matching for Generative Modeling", ICLR 2023; Woodbury,
    "Inverting modified matrices" (1950).
    """

    def __init__(
        self,
        weights: torch.Tensor,
        mu: torch.Tensor,
        diag: torch.Tensor,
        factors: torch.Tensor,
        alphas_cumprod: torch.Tensor,
    ):
        super().__init__()
        self.register_buffer("log_weights", weights.log())
        self.register_buffer("mu", mu)
        self.register_buffer("diag", diag)
        self.register_buffer("factors", factors)
        self.register_buffer("alphas_cumprod", alphas_cumprod.to(mu.dtype))

    def posterior(
        self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Responsibilities, whitened residuals and the log-density at ``x = alpha x_0 + sigma eps``.

        Parameters
        ----------
        x : tensor (B, D)
        alpha, sigma : tensor (B,) or (1,)

        Returns
        -------
        resp : tensor (B, K)
            ``r_k(x)``.
        z : tensor (B, K, D)
            ``C_k^-1 (x - alpha mu_k)``.
        log_density : tensor (B,)
            ``log p(x) = log sum_k pi_k N(x; alpha mu_k, C_k)``.
        """
        alpha, sigma = alpha.reshape(-1, 1, 1), sigma.reshape(-1, 1, 1)
        y = x[:, None, :] - alpha * self.mu  # (B, K, D)
        e = alpha**2 * self.diag + sigma**2  # (B|1, K, D)
        z = y / e
        quad = (y * z).sum(-1)
        logdet = e.log().sum(-1)
        if self.factors.shape[-1]:
            shared = alpha.shape[0] == 1  # one noise level for the batch: r x r work once, not per image
            g = "" if shared else "b"
            v = alpha[0, ..., None] * self.factors if shared else alpha[..., None] * self.factors  # ([B,] K, D, r)
            e_inv_v = v / (e[0] if shared else e)[..., None]
            eye = torch.eye(v.shape[-1], dtype=v.dtype, device=v.device)
            chol = torch.linalg.cholesky(eye + v.transpose(-1, -2) @ e_inv_v)  # M = L L^T, ([B,] K, r, r)
            b = torch.einsum(f"bkd,{g}kdr->bkr", z, v)  # V^T E^-1 y
            c = torch.einsum(f"{g}krs,bks->bkr", torch.cholesky_inverse(chol), b)  # M^-1 V^T E^-1 y
            z = z - torch.einsum(f"{g}kdr,bkr->bkd", e_inv_v, c)
            quad = quad - (b * c).sum(-1)
            logdet = logdet + 2 * torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)
        log_joint = self.log_weights - 0.5 * (quad + logdet + x.shape[-1] * math.log(2 * math.pi))
        log_density = torch.logsumexp(log_joint, dim=-1)
        return (log_joint - log_density[:, None]).exp(), z, log_density

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``E[eps | x_t]`` ``(B, C, H, W)`` at timestep ``t`` (an index into ``alphas_cumprod``)."""
        a = self.alphas_cumprod[torch.as_tensor(t, device=self.mu.device)].reshape(-1)
        resp, z, _ = self.posterior(x.flatten(1), a.sqrt(), (1 - a).sqrt())
        return ((1 - a).sqrt()[:, None] * (resp[..., None] * z).sum(1)).reshape(x.shape)

    def velocity(self, x: torch.Tensor, s: float | torch.Tensor) -> torch.Tensor:
        """Exact flow-matching velocity ``E[eps - x_0 | x_s]`` ``(B, C, H, W)``, s in [0, 1].

        Convention ``x_s = (1 - s) x_0 + s eps`` (diffusers' ``FlowMatchEulerDiscreteScheduler``;
        s = 1 is pure noise)::

            v(x, s) = sum_k r_k(x) (s z_k - mu_k - (1 - s) Sigma_k z_k),   z_k = C_k^-1 (x - (1 - s) mu_k)

        Parameters
        ----------
        x : tensor (B, C, H, W)
        s : float or tensor (B,)
        """
        s = torch.as_tensor(s, dtype=self.mu.dtype, device=self.mu.device).reshape(-1)
        if not ((s >= 0) & (s <= 1)).all():
            raise ValueError(f"s must lie in [0, 1], got {s.tolist()}")
        resp, z, _ = self.posterior(x.flatten(1), 1 - s, s)
        sigma_z = self.diag * z
        if self.factors.shape[-1]:
            sigma_z = sigma_z + torch.einsum("kdr,bkr->bkd", self.factors, torch.einsum("kdr,bkd->bkr", self.factors, z))
        s = s[:, None, None]
        v = (resp[..., None] * (s * z - self.mu - (1 - s) * sigma_z)).sum(1)
        return v.reshape(x.shape)


class GaussianMixtureSampler(DiffusionSampler):
    """DDIM/DDPM on Gaussian-mixture image data with the exact, non-affine score.

    Data are ``sum_k pi_k N(mean_k, diag(std_k^2) + F_k F_k^T)`` in image units ([0, 1]
    scale); in model space ``mu_k = 2 mean_k - 1`` and covariances are 4 times as large. The
    noise prediction is :class:`GaussianMixtureScore`, exact for every timestep::

        r_k(x_t) = pi_k N(x_t; sqrt(a_t) mu_k, a_t Sigma_k + (1 - a_t) I) / sum_j (same for j)
        eps(x_t) = sum_k r_k(x_t) sqrt(1 - a_t) (a_t Sigma_k + (1 - a_t) I)^-1 (x_t - sqrt(a_t) mu_k)

    Unlike :class:`~mcdiff.samplers.gaussian.GaussianSampler` the score is not affine, so
    the sampler is a non-linear map of its noise, antithetic pairs do not cancel, and a
    finite step count has a discretisation bias. :meth:`expected_image` is the answer of the
    limit the sampler converges to (the probability-flow ODE, or ancestral sampling, run
    exactly), i.e. the data distribution itself.

    The sampler starts at the schedule's first timestep ``T`` (950 of 1000 for 20 steps)
    from ``x_T = sqrt(a_T) E[x_0] + z``, the exact marginal's mean (``prior_mean``), not from
    ``z``: a DDIM step with the exact score keeps ``E[x_t] = sqrt(a_t) E[x_0]``, so the start
    alone would otherwise leave a bias of a few 1e-4 per pixel at every step count.

    Parameters
    ----------
    weights : array (K,)
        Mixture weights, positive, summing to 1.
    means : array (K, C, H, W)
        Component means, image units.
    stds : float or array broadcastable to (K, C, H, W)
        Diagonal standard deviations, image units, > 0.
    factors : array (K, r, C, H, W), optional
        Low-rank covariance factors ``F_k`` (r columns per component), image units.
    num_inference_steps, eta
        As for :class:`~mcdiff.samplers.diffusion.DiffusionSampler`.
    scheduler : str
        A name in :data:`~mcdiff.samplers.diffusion.SCHEDULERS`, built unclipped from diffusers'
        defaults, as for ``GaussianSampler``.
    output : {"affine", "clip", "probit"}
        The map from ``Y = (x_0 + 1) / 2`` to the image, as for ``GaussianSampler``.
    probit_width : float
        ``w`` of the probit output.

    Examples
    --------
    >>> import mcdiff
    >>> sampler = GaussianMixtureSampler.preset("digits", num_inference_steps=10)
    >>> sampler.image_shape, sampler.n_components
    ((1, 8, 8), 10)
    >>> round(float(mcdiff.exact_expectation(sampler, "brightness")), 4)
    0.3053
    """

    OUTPUTS = OUTPUTS

    def __init__(
        self,
        weights: np.ndarray,
        means: np.ndarray,
        stds: float | np.ndarray,
        factors: np.ndarray | None = None,
        num_inference_steps: int = 20,
        eta: float = 0.0,
        scheduler: str = "DDIMScheduler",
        output: str = "affine",
        probit_width: float = 0.25,
    ):
        check_output(output, probit_width)
        unclipped = unclipped_scheduler(scheduler)
        weights, means, stds, factors = _check_parameters(weights, means, stds, factors)
        dtype = torch.float64
        n_components, *shape = means.shape
        flat = (n_components, math.prod(shape))
        factor_columns = torch.as_tensor(factors).reshape(n_components, factors.shape[1], flat[1]).transpose(1, 2)
        check_num_inference_steps(num_inference_steps, unclipped)
        schedule = SCHEDULERS[scheduler].from_config(unclipped.config)
        schedule.set_timesteps(num_inference_steps)
        a_first = unclipped.alphas_cumprod[schedule.timesteps[0]].to(dtype)
        data_mean = torch.as_tensor(np.tensordot(weights, 2 * means - 1, axes=1), dtype=dtype)
        score = GaussianMixtureScore(
            torch.as_tensor(weights, dtype=dtype),
            torch.as_tensor(2 * means - 1, dtype=dtype).reshape(flat),
            torch.as_tensor(4 * stds**2, dtype=dtype).reshape(flat),
            (2 * factor_columns).to(dtype),
            unclipped.alphas_cumprod,
        )
        super().__init__(
            score,
            unclipped,
            num_inference_steps=num_inference_steps,
            eta=eta,
            image_shape=tuple(shape),
            prior_mean=a_first.sqrt() * data_mean,
            clip_output=output == "clip",
            dtype=dtype,
        )
        self.weights, self.means, self.stds, self.factors = weights, means, stds, factors
        self.output, self.probit_width = output, float(probit_width)

    @property
    def n_components(self) -> int:
        """K, the number of mixture components."""
        return len(self.weights)

    @classmethod
    def preset(cls, name: str = "digits", **kwargs) -> GaussianMixtureSampler:
        """A bundled mixture by name (see :data:`PRESETS`); ``kwargs`` go to the constructor.

        ``"digits"``: :func:`digits_mixture` fitted to scikit-learn's ``load_digits``.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown mixture preset {name!r}; presets: {', '.join(PRESETS)}")
        return cls(**digits_mixture(), **kwargs)

    def sample(self, noise: dict[str, torch.Tensor]) -> torch.Tensor:
        return decode(super().sample(noise), self.output, self.probit_width)

    def with_steps(self, num_inference_steps: int) -> GaussianMixtureSampler:
        """The same mixture, scheduler and output map at another step count (a fidelity)."""
        return self.with_scheduler(type(self.scheduler).__name__, num_inference_steps)

    def with_scheduler(self, scheduler: str, num_inference_steps: int) -> GaussianMixtureSampler:
        """The same mixture and output map with another solver (a name in
        :data:`~mcdiff.samplers.diffusion.SCHEDULERS`) and step count (a fidelity)."""
        return GaussianMixtureSampler(
            self.weights,
            self.means,
            self.stds,
            self.factors,
            num_inference_steps=num_inference_steps,
            eta=self.eta,
            scheduler=scheduler,
            output=self.output,
            probit_width=self.probit_width,
        )

    def velocity(self, x: torch.Tensor, s: float | torch.Tensor) -> torch.Tensor:
        """Exact flow-matching velocity in model space; see :meth:`GaussianMixtureScore.velocity`."""
        return self.unet.velocity(x, s)

    def pixel_variances(self) -> np.ndarray:
        """Marginal variance of every pixel under each component ``(K, C, H, W)``, image units.

        ``v_k = std_k^2 + sum_j F_kj^2`` (the diagonal of the component's covariance).
        """
        return self.stds**2 + (self.factors**2).sum(1)

    def output_mixture(self) -> dict[str, np.ndarray]:
        """The law of the *unclipped* output ``Y`` in the sampler's limit: the data distribution.

        ``Y ~ sum_k pi_k N(mean_k, diag(std_k^2) + F_k F_k^T)``, image units. The sampler's
        map is not affine, so a finite step count differs from it by its discretisation bias
        (brightness: -4.9e-4 at 20 DDIM steps, ``benchmarks/results/mixture_bias.md``); no
        closed form gives the finite-step law, whose answers :meth:`reference_answers` records
        from a large RQMC run. :func:`mcdiff.functionals.exact_law` reads this limit law.

        Returns
        -------
        dict
            ``weights (K,)``, ``means (K, C, H, W)``, ``stds (K, C, H, W)``,
            ``factors (K, r, C, H, W)``.
        """
        return {"weights": self.weights, "means": self.means, "stds": self.stds, "factors": self.factors}

    def reference_answers(self, statistic: str = "brightness") -> dict:
        """Recorded answers of the *finite-step* law, from a large run: a reference, not closed form.

        ``statistics/mixture_reference.py`` estimated them once with antithetic RQMC over
        2^22 evaluations (``statistics/results/mixture_reference.md``: command, design, timing)
        for the ``"digits"`` preset with DDIM (eta 0), the affine output and its default
        parameters, at 10 steps (the step counts of ``mixture_reference.json`` beside this
        module, which this reads: nothing is recomputed). Each answer ``a`` comes with its
        standard error ``s`` over 64 replicates: the truth lies in ``a ± 4 s`` but for a
        chance of about 2e-4 (``P(|t_63| > 4)``).

        Parameters
        ----------
        statistic : str
            ``"brightness"`` or ``"pixel_mean_36"`` (pixel (4, 4), flattened component 36 of
            ``pixel_mean``: a bimodal law, digit 0 has no ink there).

        Returns
        -------
        dict
            ``statistic``, ``component`` (``None`` or the flattened index), ``n_evals``,
            ``design``; ``mean``, ``variance``, ``std``, each ``(estimate, std_error)``;
            ``levels (L,)``, ``quantiles (L,)``, ``quantiles_se (L,)``; ``thresholds (M,)``,
            ``exceedance (M,)`` (``P(f > c)``), ``exceedance_se (M,)``.
        """
        recorded = json.loads(REFERENCE_FILE.read_text())
        preset = digits_mixture()
        same = all(getattr(self, k).shape == v.shape and np.allclose(getattr(self, k), v, rtol=1e-12, atol=0)
                   for k, v in preset.items())
        if not (same and type(self.scheduler).__name__ == "DDIMScheduler" and self.eta == 0 and self.output == "affine"):
            raise ValueError(
                "reference answers are recorded only for GaussianMixtureSampler.preset('digits') with DDIM "
                "(eta 0) and the affine output"
            )
        at_steps = recorded["steps"].get(str(self.num_inference_steps))
        if at_steps is None:
            raise ValueError(
                f"no reference recorded at {self.num_inference_steps} steps; recorded: {', '.join(recorded['steps'])} "
                "(statistics/mixture_reference.py --steps N adds one)"
            )
        if statistic not in at_steps["statistics"]:
            raise ValueError(f"no reference for statistic {statistic!r}; recorded: {', '.join(at_steps['statistics'])}")
        answers = at_steps["statistics"][statistic]
        pairs = ("mean", "variance", "std")
        return {
            "n_evals": at_steps["n_evals"],
            "design": recorded["design"],
            **{k: tuple(v) if k in pairs else np.asarray(v) if isinstance(v, list) else v for k, v in answers.items()},
        }

    def expected_image(self) -> torch.Tensor:
        """Exact ``E[image]`` ``(C, H, W)`` of the sampler's limit (the data distribution).

        Per pixel, with ``m_k`` and ``v_k`` the component's mean and marginal variance
        (:meth:`pixel_variances`), ``E = sum_k pi_k E_k`` where ``E_k`` is the output map's
        Gaussian expectation (:func:`~mcdiff.samplers.gaussian.decoded_mean`): ``m_k``
        (affine), ``Phi((m_k - 1/2) / sqrt(w^2 + v_k))`` (probit), the clipped-normal mean
        (clip). A finite step count differs from it by the discretisation bias (measured in
        ``benchmarks/mixture_bias.py``).
        """
        per_component = decoded_mean(self.output, self.means, np.sqrt(self.pixel_variances()), self.probit_width)
        return torch.as_tensor(np.tensordot(self.weights, per_component, axes=1))

    def identity(self) -> dict:
        """The exact score's weights, means, variances and factors (its buffers), solver and output map."""
        return {**super().identity(), "output": self.output, "probit_width": self.probit_width}

    def describe(self) -> dict[str, str | int | float]:
        return {
            **super().describe(),
            "n_components": self.n_components,
            "factor_rank": int(self.factors.shape[1]),
            "output": self.output,
        }


def _check_parameters(weights, means, stds, factors) -> tuple[np.ndarray, ...]:
    """Validated float64 copies ``(weights (K,), means (K, C, H, W), stds, factors (K, r, C, H, W))``."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 1 or len(weights) < 1:
        raise ValueError(f"weights must be a 1-d array of K >= 1 mixture weights, got shape {weights.shape}")
    if not (np.isfinite(weights).all() and (weights > 0).all()):
        raise ValueError(f"weights must be finite and > 0, got {weights.tolist()}")
    if abs(weights.sum() - 1) > 1e-8:
        raise ValueError(f"weights must sum to 1 (within 1e-8), got sum {weights.sum():.10g}")
    means = np.asarray(means, dtype=np.float64)
    if means.ndim != 4 or means.shape[0] != len(weights):
        raise ValueError(
            f"means must have shape (K, C, H, W) with K = {len(weights)} (the number of weights), "
            f"got {means.shape}"
        )
    if not np.isfinite(means).all():
        raise ValueError("means must be finite")
    try:
        stds = np.broadcast_to(np.asarray(stds, dtype=np.float64), means.shape).copy()
    except ValueError:
        raise ValueError(f"stds must broadcast to the means' shape {means.shape}, got {np.shape(stds)}") from None
    if not (np.isfinite(stds).all() and (stds > 0).all()):
        raise ValueError(f"stds must be finite and > 0, got minimum {stds.min():.3g}")
    if factors is None:
        factors = np.zeros((len(weights), 0, *means.shape[1:]))
    factors = np.asarray(factors, dtype=np.float64)
    if factors.ndim != 5 or factors.shape[0] != len(weights) or factors.shape[2:] != means.shape[1:]:
        raise ValueError(
            f"factors must have shape (K, r, C, H, W) = ({len(weights)}, r, {', '.join(map(str, means.shape[1:]))}), "
            f"got {factors.shape}"
        )
    if not np.isfinite(factors).all():
        raise ValueError("factors must be finite")
    return weights, means, stds, factors


def digits_mixture(rank: int = 4, spread: float = 1.0, min_std: float = 0.05) -> dict[str, np.ndarray]:
    """Mixture parameters fitted to scikit-learn's ``load_digits``: one component per digit class.

    For class k with images ``X_k`` (pixels ``v / 16`` in [0, 1], 8x8): ``pi_k`` is the class
    frequency, ``mean_k`` the class mean, ``F_k`` the top ``rank`` principal directions scaled
    by the square roots of their eigenvalues, and ``std_k`` the per-pixel variance they leave
    unexplained, floored at ``min_std * (0.5 + k / 9)``; ``spread`` scales every covariance.
    The floor differs between classes so that no pixel (the border pixels are 0 in every
    digit) is the same independent Gaussian in every component: such a pixel would be an
    exactly affine output, its antithetic CI of zero width. Deterministic (no random numbers).

    Parameters
    ----------
    rank : int
        Low-rank factors per class, 0 .. 63.
    spread : float
        Multiplier of each class covariance, > 0.
    min_std : float
        Floor of the diagonal standard deviations (the border pixels never vary), > 0.

    Returns
    -------
    dict
        ``weights (10,)``, ``means (10, 1, 8, 8)``, ``stds (10, 1, 8, 8)``,
        ``factors (10, rank, 1, 8, 8)``: keyword arguments of :class:`GaussianMixtureSampler`.

    References
    ----------
    UCI ML hand-written digits, E. Alpaydin and C. Kaynak (1998), as bundled with scikit-learn.
    """
    from sklearn.datasets import load_digits

    if not is_integer(rank) or not 0 <= rank < 64:
        raise ValueError(f"rank must be an integer in [0, 63], got {rank!r}")
    if not spread > 0:
        raise ValueError(f"spread must be > 0, got {spread}")
    if not min_std > 0:
        raise ValueError(f"min_std must be > 0, got {min_std}")
    data = load_digits()
    pixels, labels = data.data / 16.0, data.target
    classes = np.unique(labels)
    weights, means, stds, factors = [], [], [], []
    for k in classes:
        x = pixels[labels == k]
        centred = x - x.mean(0)
        _, singular, directions = np.linalg.svd(centred, full_matrices=False)
        eigenvalues = singular[:rank] ** 2 / (len(x) - 1)
        columns = directions[:rank] * np.sqrt(spread * eigenvalues)[:, None]  # (rank, 64)
        residual = spread * centred.var(0, ddof=1) - (columns**2).sum(0)
        weights.append(len(x) / len(pixels))
        means.append(x.mean(0))
        stds.append(np.sqrt(np.maximum(residual, (min_std * (0.5 + k / 9)) ** 2)))
        factors.append(columns)
    shape = (len(classes), 1, 8, 8)
    return {
        "weights": np.array(weights),
        "means": np.array(means).reshape(shape),
        "stds": np.array(stds).reshape(shape),
        "factors": np.array(factors).reshape(len(classes), rank, 1, 8, 8),
    }
