"""Diagnostics: check on a given model the property antithetic variance reduction rests on.

Antithetic noise narrows confidence intervals because a sampler maps ``z`` and ``-z`` to
negatively correlated images, which it does when the noise predictor is close to affine
antisymmetric, ``eps(x) + eps(-x) ≈ 2 c_t``. This module measures that, on the user's model:

==============================  ============================================================
:func:`pair_correlation`        pixel-wise Pearson correlation within antithetic (PN) and
                                independent (RR) pairs, raw and centred on the mean image
:func:`trajectory_correlation`  the same for ``x_t`` and for ``eps(x_t, t)`` at every step
:func:`antisymmetry`            ``eps(λ x_t)`` for λ in [-1, 1] and the residual
                                ``||eps(x) + eps(-x) - 2 c_t|| / ||eps(x)||`` per timestep
:func:`pair_diversity`          SSIM (and LPIPS, given local weights) between partners
:func:`diagnose`                all of the above as one :class:`xarray.DataTree`
:func:`format_report`           text tables of a :func:`diagnose` result
==============================  ============================================================

Its PNG figures are drawn by :func:`mcdiff.plots.save_figures`.

Pairs are drawn by the designs themselves (:class:`~mcdiff.designs.Antithetic` for PN,
:class:`~mcdiff.designs.MonteCarlo` for RR), so a stochastic sampler's partner negates the
whole noise path (initial and every injected noise), as in estimation.

References
----------
"Antithetic Noise in Diffusion Models", arXiv 2506.06185 (pair correlations, trajectory
correlations, the affine-antisymmetry plot, SSIM/LPIPS diversity of PN vs RR pairs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from mcdiff.designs import Antithetic, Design, MonteCarlo
from mcdiff.noise import Noise
from mcdiff.results import mcdiff_version, text_table
from mcdiff.runner import sample_runs
from mcdiff.samplers.base import Sampler
from mcdiff.samplers.diffusion import DiffusionSampler
from mcdiff.validation import check_integer, check_seed

PAIRINGS = ("PN", "RR")
"""Pair kinds: ``PN`` antithetic partners ``(z, -z)``, ``RR`` two independent draws."""

CENTRINGS = ("raw", "centred")
"""``raw``: Pearson over pixels of image a vs image b (the paper's measure); ``centred``:
the same after subtracting the per-pixel mean image from both."""

LpipsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``lpips(a, b) -> (B,)`` distances for images ``(B, C, H, W)`` scaled to [-1, 1]."""


class _PairNoise(Noise):
    """Noise ``(4 n_pairs, *shape)``: ``n_pairs`` PN pairs then ``n_pairs`` RR pairs, partners adjacent.

    The noise :func:`generate_pairs` samples (evaluations ``0 .. 2 n_pairs - 1`` of
    :class:`~mcdiff.designs.Antithetic` and of :class:`~mcdiff.designs.MonteCarlo`),
    generated on the sampler's device in its dtype as the sampler reads it, a step at a time.
    """

    def __init__(self, sampler: Sampler, n_pairs: int, seed: int):
        spec, n_evals = sampler.noise_spec, 2 * n_pairs
        self.parts = [
            design.noise(spec, seed, 0, n_evals, n_evals, device=sampler.device, dtype=sampler.dtype)
            for design in (Antithetic(), MonteCarlo())
        ]
        self.spec = self.parts[0].spec

    def __getitem__(self, name: str) -> torch.Tensor:
        return torch.cat([part[name] for part in self.parts])

    def step(self, name: str, index: int) -> torch.Tensor:
        return torch.cat([part.step(name, index) for part in self.parts])


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of ``a[i]`` and ``b[i]`` over all their trailing axes.

    ``r_i = sum_p (a_ip - mean_p a_i)(b_ip - mean_p b_i) / sqrt(sum_p (a_ip - mean_p a_i)^2
    sum_p (b_ip - mean_p b_i)^2)``; NaN where either image is constant.

    Parameters
    ----------
    a, b : array ``(B, ...)``

    Returns
    -------
    array ``(B,)``
    """
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denominator = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (a * b).sum(axis=1) / denominator, np.nan)


def _pair_pearson(values: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Correlations ``(pairing, centring, pair)`` of ``values`` ``(pairing, pair, member, D)``."""
    raw = [pearson(v[:, 0], v[:, 1]) for v in values]
    centred = [pearson(v[:, 0] - mean, v[:, 1] - mean) for v in values]
    return np.stack([np.stack(raw), np.stack(centred)], axis=1)


def generate_pairs(
    sampler: Sampler,
    n_pairs: int = 64,
    seed: int = 0,
    batch_size: int = 256,
    *,
    store: str | Path | None = None,
    executor=None,
    progress: bool | None = False,
) -> xr.DataArray:
    """Images of ``n_pairs`` antithetic (PN) and ``n_pairs`` independent (RR) pairs.

    PN pair j is evaluations ``2j, 2j + 1`` of :class:`~mcdiff.designs.Antithetic` (``z_j``,
    ``-z_j``), RR pair j the same evaluations of :class:`~mcdiff.designs.MonteCarlo`. They run
    through the runner's loop (:func:`~mcdiff.runner.sample_runs`): with ``store`` every block
    is kept and a rerun resumes; ``executor`` may be a Dask executor (``sampler`` a factory).

    Parameters
    ----------
    sampler : Sampler or factory
        Any model with the sampler contract.
    n_pairs : int
        Pairs of each kind, >= 2.
    seed : int
        Noise seed (as in :func:`mcdiff.estimate`).
    batch_size : int
        Evaluations per sampler call.
    store : path, optional
        A :class:`~mcdiff.store.ResultStore` directory for the images.
    executor : LocalExecutor or DaskExecutor, optional
    progress : bool, optional
        Show a progress bar (``None``: when stderr is a terminal).

    Returns
    -------
    xarray.DataArray
        Dims ``("pairing", "pair", "member", "channel", "y", "x")``, values in [0, 1].
    """
    n_pairs = check_integer("n_pairs", n_pairs, 2)
    seed = check_seed(seed)
    batch_size = check_integer("batch_size", batch_size, 2)
    designs: tuple[Design, ...] = (Antithetic(), MonteCarlo())
    runs = sample_runs(sampler, designs, 2 * n_pairs, seed, batch_size, store=store, executor=executor, progress=progress)
    images = [runs[d.name] for d in designs]
    data = np.stack(images).reshape(2, n_pairs, 2, *images[0].shape[1:])
    return xr.DataArray(
        data,
        dims=("pairing", "pair", "member", "channel", "y", "x"),
        coords={"pairing": list(PAIRINGS), "pair": np.arange(n_pairs), "member": [0, 1]},
        name="images",
    )


def pair_correlation(
    pairs: xr.DataArray, mean_image: np.ndarray | torch.Tensor | None = None
) -> xr.DataArray:
    """Pixel-wise Pearson correlation between the two images of every pair.

    ``raw``: :func:`pearson` of image a vs image b (the paper's measure). ``centred``: the
    same after subtracting the per-pixel mean image ``m`` from both, ``pearson(a - m, b - m)``,
    so that structure every image shares (a dark border, a background) does not dominate.

    Parameters
    ----------
    pairs : xarray.DataArray
        From :func:`generate_pairs`.
    mean_image : array ``(C, H, W)``, optional
        The mean image to centre on; by default the mean of all images in ``pairs`` (both
        pairings: every image is marginally a model sample).

    Returns
    -------
    xarray.DataArray
        Dims ``("pairing", "centring", "pair")``.

    References
    ----------
    arXiv 2506.06185, pixel-wise Pearson correlation of PN and RR pairs.
    """
    values = pairs.transpose("pairing", "pair", "member", ...).values
    shape = values.shape[3:]
    if mean_image is None:
        mean = values.reshape(-1, *shape).mean(axis=0)
    else:
        mean = np.asarray(mean_image, dtype=np.float64)
        if mean.shape != shape:
            raise ValueError(f"mean_image has shape {mean.shape}; expected the image shape {shape}")
    flat = values.reshape(*values.shape[:3], -1)
    return xr.DataArray(
        _pair_pearson(flat, mean.reshape(-1)),
        dims=("pairing", "centring", "pair"),
        coords={
            "pairing": pairs["pairing"].values,
            "centring": list(CENTRINGS),
            "pair": pairs["pair"].values,
        },
        name="correlation",
    )


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity of ``a[i]`` and ``b[i]``, averaged over pixels and channels.

    With Gaussian-weighted local means ``mu``, variances ``s^2`` and covariance ``s_ab``::

        SSIM = mean_p (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2))

    ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``, ``L = data_range``. Computed by
    :func:`skimage.metrics.structural_similarity` with the settings of Wang et al. that the
    paper's Table 1 uses: ``gaussian_weights=True`` (a Gaussian window of standard deviation
    ``sigma = 1.5``, radius ``int(3.5 sigma + 0.5)``: 11 taps), ``use_sample_covariance=False``,
    ``data_range=1`` for images in [0, 1], and the mean over the positions where the window
    fits whole, per channel, then over channels. Images with a side smaller than the window
    (8x8: the window would be 11) use the largest odd window ``w`` that fits, with sigma
    scaled to ``1.5 w / 11`` (7 taps, sigma ≈ 0.95 for 8x8).

    Parameters
    ----------
    a, b : tensor ``(B, C, H, W)``
    data_range : float
        Dynamic range L of the images (1 for [0, 1]).
    sigma : float
        Window standard deviation in pixels.

    Returns
    -------
    tensor ``(B,)`` of float64

    References
    ----------
    Z. Wang, A. C. Bovik, H. R. Sheikh, E. P. Simoncelli, "Image quality assessment: from
    error visibility to structural similarity", IEEE TIP 13(4), 2004.
    """
    from skimage.metrics import structural_similarity

    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(
            f"a and b must both be (B, C, H, W) of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if not sigma > 0 or not data_range > 0:
        raise ValueError(f"sigma and data_range must be > 0, got sigma={sigma}, data_range={data_range}")
    side = min(a.shape[-2:])
    if side < 3:
        raise ValueError(f"SSIM needs images of at least 3x3 pixels, got {tuple(a.shape[-2:])}")
    size = 2 * int(3.5 * sigma + 0.5) + 1
    if size > side:
        size = side if side % 2 else side - 1
        sigma = 1.5 * size / 11
    a, b = (torch.as_tensor(x).detach().cpu().double().numpy() for x in (a, b))
    values = [
        structural_similarity(
            x,
            y,
            data_range=data_range,
            gaussian_weights=True,
            sigma=sigma,
            use_sample_covariance=False,
            channel_axis=0,
        )
        for x, y in zip(a, b)
    ]
    return torch.tensor(values, dtype=torch.float64)


def load_lpips(path: str | Path) -> LpipsFn:
    """Load LPIPS from a local file made with ``torch.export`` or TorchScript; never downloads.

    mcdiff does not depend on the ``lpips`` package (it pulls in torchvision and downloads
    its weights). To use LPIPS, export it once where ``lpips`` and its weights are installed,
    and pass the file: a ``.pt2`` is read with :func:`torch.export.load`, anything else with
    :func:`torch.jit.load`::

        import lpips, torch
        net = lpips.LPIPS(net="alex").eval()
        a, b = torch.zeros(1, 3, 64, 64), torch.ones(1, 3, 64, 64)  # two tensors, not (x, x)
        torch.export.save(torch.export.export(net, (a, b)), "lpips_alex.pt2")
        # or TorchScript: torch.jit.trace(net, (a, b)).save("lpips_alex.pt")

    Export with two distinct example tensors (one passed twice is traced as one input) at the
    model's image size and batch size ``2 n_pairs`` (an exported program is specialised to
    its example shapes unless exported with ``dynamic_shapes``). Any callable
    ``lpips(a, b) -> (B,)`` (or ``(B, 1, 1, 1)``) on images scaled to [-1, 1] can also be
    passed to :func:`pair_diversity` directly.

    Parameters
    ----------
    path : path to a ``torch.export.save`` (``.pt2``) or ``torch.jit.save`` file

    Returns
    -------
    callable ``(a, b) -> distances``

    References
    ----------
    R. Zhang et al., "The unreasonable effectiveness of deep features as a perceptual metric",
    CVPR 2018.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"no LPIPS file at {str(path)!r}; see mcdiff.diagnostics.load_lpips for how to make "
            "one from the lpips package (mcdiff never downloads weights)"
        )
    if path.suffix == ".pt2":
        return torch.export.load(str(path)).module()
    return torch.jit.load(str(path), map_location="cpu").eval()


def pair_diversity(pairs: xr.DataArray, lpips: LpipsFn | None = None) -> xr.Dataset:
    """SSIM (and LPIPS when given) between the two images of every pair.

    Lower SSIM and higher LPIPS between partners mean more diverse pairs. LPIPS is called
    on images mapped to [-1, 1], grayscale repeated to 3 channels.

    Parameters
    ----------
    pairs : xarray.DataArray
        From :func:`generate_pairs`.
    lpips : callable, optional
        See :func:`load_lpips`; without it only SSIM is computed.

    Returns
    -------
    xarray.Dataset
        ``ssim`` (and ``lpips``) with dims ``("pairing", "pair")``.
    """
    values = torch.from_numpy(pairs.transpose("pairing", "pair", "member", ...).values)
    pairing, n_pairs = values.shape[:2]
    a, b = values[:, :, 0].flatten(0, 1), values[:, :, 1].flatten(0, 1)
    out = {"ssim": ssim(a, b)}
    if lpips is not None:
        if a.shape[1] == 1:
            a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
        with torch.inference_mode():
            distance = lpips(a.float() * 2 - 1, b.float() * 2 - 1)
        out["lpips"] = torch.as_tensor(distance).reshape(len(a))
    dims = ("pairing", "pair")
    coords = {"pairing": pairs["pairing"].values, "pair": pairs["pair"].values}
    data = {k: (dims, v.detach().double().numpy().reshape(pairing, n_pairs)) for k, v in out.items()}
    return xr.Dataset(data, coords=coords)


def _check_diffusion(sampler: Sampler) -> DiffusionSampler:
    if not isinstance(sampler, DiffusionSampler):
        raise ValueError(
            f"this diagnostic needs a DiffusionSampler (it reads the sampling trajectory and the "
            f"noise predictor), got {type(sampler).__name__}"
        )
    return sampler


def trajectory_correlation(sampler: DiffusionSampler, n_pairs: int = 32, seed: int = 0) -> xr.Dataset:
    """Correlation between partners of ``x_t`` and of ``eps(x_t, t)`` at every sampling step.

    For PN and RR pairs (as in :func:`generate_pairs`) and every step with timestep t,
    ``pearson(x_t(a), x_t(b))`` and ``pearson(eps(x_t(a)), eps(x_t(b)))``, raw and centred
    on the mean over all samples of that step (see :func:`pair_correlation`). All pairs run
    in one batch of ``4 n_pairs``.

    Parameters
    ----------
    sampler : DiffusionSampler
    n_pairs : int
        Pairs of each kind, >= 2.
    seed : int

    Returns
    -------
    xarray.Dataset
        ``x_t`` and ``eps`` with dims ``("pairing", "centring", "step", "pair")``;
        coordinate ``timestep(step)``.

    References
    ----------
    arXiv 2506.06185: the partners' correlation stays strongly negative along the trajectory.
    """
    sampler = _check_diffusion(sampler)
    n_pairs = check_integer("n_pairs", n_pairs, 2)
    noise = _PairNoise(sampler, n_pairs, check_seed(seed))
    timesteps, x_corr, eps_corr = [], [], []
    with torch.inference_mode():
        for t, x, eps in sampler.trajectory(noise):
            if t is None:
                break
            timesteps.append(_timestep_value(t))
            for out, v in ((x_corr, x), (eps_corr, eps)):
                flat = v.detach().cpu().double().numpy().reshape(4 * n_pairs, -1)
                out.append(_pair_pearson(flat.reshape(2, n_pairs, 2, -1), flat.mean(axis=0)))
    dims = ("pairing", "centring", "step", "pair")
    return xr.Dataset(
        {"x_t": (dims, np.stack(x_corr, axis=2)), "eps": (dims, np.stack(eps_corr, axis=2))},
        coords={
            "pairing": list(PAIRINGS),
            "centring": list(CENTRINGS),
            "step": np.arange(len(timesteps)),
            "timestep": ("step", timesteps),
            "pair": np.arange(n_pairs),
        },
    )


def _timestep_value(t) -> int | float:
    """A scheduler timestep as a coordinate: an int where it is whole (DDPM-type), else a float (EDM)."""
    value = float(t)
    return int(value) if value.is_integer() else value


def _default_steps(count: int, n_steps: int) -> list[int]:
    return sorted(set(np.linspace(0, n_steps - 1, min(count, n_steps)).round().astype(int).tolist()))


def _probed_timesteps(sampler: DiffusionSampler, timesteps: Sequence[int] | None) -> list[int]:
    """Timesteps to probe: ``timesteps``, each in the sampler's schedule, or five spread over it."""
    schedule = [_timestep_value(t) for t in sampler.scheduler.timesteps]
    if timesteps is None:
        timesteps = [schedule[i] for i in _default_steps(5, len(schedule))]
    timesteps = [_timestep_value(t) for t in timesteps]
    bad = [t for t in timesteps if t not in schedule]
    if bad or not timesteps:
        raise ValueError(
            f"timesteps {bad or timesteps} are not in the sampler's schedule; allowed: {schedule}"
        )
    return timesteps


def antisymmetry(
    sampler: DiffusionSampler,
    timesteps: Sequence[int] | None = None,
    n_probes: int = 8,
    n_lambdas: int = 21,
    n_pixels: int = 6,
    seed: int = 0,
) -> xr.Dataset:
    """Affine-antisymmetry test of the noise predictor: ``eps(λ x, t)`` for λ in [-1, 1].

    The probes ``x`` are the sampler's own ``x_t`` at timestep t along ``n_probes``
    independent (Monte Carlo) trajectories, i.e. what the network sees while sampling. The
    centre ``c_t`` is fitted per pixel by least squares over the probes and the residual
    pools them::

        c_t        = (1/P) sum_x (eps(x) + eps(-x)) / 2
        residual_t = sqrt( sum_x ||eps(x) + eps(-x) - 2 c_t||^2 / sum_x ||eps(x)||^2 )

    It is 0 for an exactly affine predictor (the Gaussian model: ``c_t = eps(0)``) and grows
    as the predictor departs from affine antisymmetry; fitting ``c_t`` on P probes biases it
    low by ``sqrt((P - 1) / P)``. Negation is through the origin of model space, as the
    antithetic partner of ``x_T = z`` is ``-z`` (for ``prior_mean = 0``).

    Parameters
    ----------
    sampler : DiffusionSampler
    timesteps : sequence of int, optional
        Timesteps of ``sampler.scheduler.timesteps`` to probe; by default five spread over
        the schedule, first and last included.
    n_probes : int
        Trajectories probed, >= 2.
    n_lambdas : int
        Points of the λ grid ``linspace(-1, 1, n_lambdas)``, >= 3.
    n_pixels : int
        Pixels (flat indices chosen at random with ``seed``) whose curves are kept.
    seed : int

    Returns
    -------
    xarray.Dataset
        ``residual(timestep)`` and ``curve(timestep, probe, lambda, pixel)`` with pixel
        coordinates ``channel, y, x (pixel)``.

    References
    ----------
    arXiv 2506.06185: eps(λz) mirrors around a centre as λ goes from -1 to 1.
    """
    sampler = _check_diffusion(sampler)
    n_probes = check_integer("n_probes", n_probes, 2)
    n_lambdas = check_integer("n_lambdas", n_lambdas, 3)
    n_pixels = check_integer("n_pixels", n_pixels, 1)
    seed = check_seed(seed)
    timesteps = _probed_timesteps(sampler, timesteps)
    spec, device, dtype = sampler.noise_spec, sampler.device, sampler.dtype
    noise = MonteCarlo().noise(spec, seed, 0, n_probes, n_probes, device=device, dtype=dtype)
    lambdas = np.linspace(-1.0, 1.0, n_lambdas)
    size = math.prod(sampler.image_shape)
    pixels = np.sort(np.random.default_rng(seed).choice(size, size=min(n_pixels, size), replace=False))
    residuals, curves = [], []
    with torch.inference_mode():
        probes = {}  # the first network call at each probed timestep: (index, exact t, x_t)
        for index, (t, x, _) in enumerate(sampler.trajectory(noise)):
            if t is not None and _timestep_value(t) in timesteps and _timestep_value(t) not in probes:
                probes[_timestep_value(t)] = (index, t, x)
        for t in timesteps:
            index, t_exact, x = probes[t]
            scaled = sampler.model_input(torch.cat([lam * x for lam in lambdas]), index)
            eps = sampler.network(scaled, t_exact)
            eps = eps.detach().cpu().double().reshape(n_lambdas, n_probes, size)
            total = eps[-1] + eps[0]
            centre = total.mean(dim=0)
            residuals.append(float(((total - centre).pow(2).sum() / eps[-1].pow(2).sum()).sqrt()))
            curves.append(eps[:, :, pixels].transpose(0, 1).numpy())
    channel, y, x_index = np.unravel_index(pixels, sampler.image_shape)
    return xr.Dataset(
        {
            "residual": ("timestep", np.array(residuals)),
            "curve": (("timestep", "probe", "lambda", "pixel"), np.stack(curves)),
        },
        coords={
            "timestep": timesteps,
            "probe": np.arange(n_probes),
            "lambda": lambdas,
            "pixel": pixels,
            "channel": ("pixel", channel),
            "y": ("pixel", y),
            "x": ("pixel", x_index),
        },
    )


def diagnose(
    samplers: DiffusionSampler | Mapping[str, DiffusionSampler],
    n_pairs: int = 64,
    seed: int = 0,
    timesteps: Sequence[int] | None = None,
    n_probes: int = 8,
    lpips: LpipsFn | None = None,
    batch_size: int = 256,
    store: str | Path | None = None,
) -> xr.DataTree:
    """Every diagnostic of one model, under one or more samplers (e.g. DDIM and DDPM).

    Parameters
    ----------
    samplers : DiffusionSampler or mapping name -> DiffusionSampler
        The same network under several samplers, e.g. ``{"ddim": eta 0, "ddpm": eta 1}``;
        the antisymmetry test (a property of the network) uses the first one.
    n_pairs : int
        PN and RR pairs each, for pair and trajectory correlations and diversity.
    seed : int
    timesteps, n_probes
        As for :func:`antisymmetry`.
    lpips : callable, optional
        See :func:`load_lpips`; LPIPS is skipped without it.
    batch_size : int
        Evaluations per sampler call in :func:`generate_pairs`.
    store : path, optional
        A directory holding one :class:`~mcdiff.store.ResultStore` per sampler (``STORE/{name}``)
        for the pairs' images (:func:`generate_pairs`): a rerun resumes them. The trajectory and
        antisymmetry probes read the sampler's intermediate states and run in this process.

    Returns
    -------
    xarray.DataTree
        ``/pairs``: ``correlation(sampler, pairing, centring, pair)``,
        ``ssim(sampler, pairing, pair)`` (and ``lpips``); ``/trajectory``:
        ``x_t, eps(sampler, pairing, centring, step, pair)``; ``/antisymmetry``: see
        :func:`antisymmetry`. Root attributes record the settings and model.
    """
    if not isinstance(samplers, Mapping):
        samplers = {"sampler": samplers}
    if not samplers:
        raise ValueError("at least one sampler is needed")
    names = list(samplers)
    schedules = {n: [_timestep_value(t) for t in _check_diffusion(s).scheduler.timesteps] for n, s in samplers.items()}
    if any(v != schedules[names[0]] for v in schedules.values()):
        raise ValueError(f"all samplers must share one timestep schedule, got {schedules}")
    n_pairs = check_integer("n_pairs", n_pairs, 2)  # every input is checked before the first evaluation
    seed = check_seed(seed)
    batch_size = check_integer("batch_size", batch_size, 2)
    check_integer("n_probes", n_probes, 2)
    _probed_timesteps(samplers[names[0]], timesteps)
    pairs, trajectories = [], []
    for name, sampler in samplers.items():
        images = generate_pairs(sampler, n_pairs, seed, batch_size, store=None if store is None else Path(store) / name)
        pairs.append(xr.merge([pair_correlation(images), pair_diversity(images, lpips)]))
        trajectories.append(trajectory_correlation(sampler, n_pairs, seed))
    first = samplers[names[0]]
    attrs = {
        "model": type(first).__name__,
        "samplers": ", ".join(
            f"{n}: {type(s.scheduler).__name__} eta={s.eta:g}, {s.num_inference_steps} steps"
            for n, s in samplers.items()
        ),
        "n_pairs": int(n_pairs),
        "seed": int(seed),
        "lpips": "computed" if lpips is not None else "skipped: no LPIPS weights given (see load_lpips)",
        "mcdiff_version": mcdiff_version(),
    }
    sampler_dim = xr.Variable("sampler", names)
    return xr.DataTree.from_dict(
        {
            "/": xr.Dataset(attrs=attrs),
            "pairs": xr.concat(pairs, dim=sampler_dim),
            "trajectory": xr.concat(trajectories, dim=sampler_dim),
            "antisymmetry": antisymmetry(first, timesteps, n_probes, seed=seed),
        }
    )


def format_report(tree: xr.DataTree) -> str:
    """A plain-text report of a :func:`diagnose` result: three tables of means over pairs.

    Pair correlation and SSIM (and LPIPS) of PN vs RR per sampler; trajectory correlation of
    ``x_t`` and ``eps`` by timestep (raw, PN / RR; at most 10 steps spread over the schedule,
    every step is in the DataTree); antisymmetry residual by timestep.
    """
    pairs = tree["pairs"].to_dataset().mean("pair")
    trajectory = tree["trajectory"].to_dataset().mean("pair").sel(centring="raw")
    anti = tree["antisymmetry"].to_dataset()
    attrs = tree.attrs
    lines = [
        f"mcdiff diagnose: {attrs.get('model')} ({attrs.get('samplers')}), "
        f"{attrs.get('n_pairs')} pairs of each kind, seed {attrs.get('seed')}",
        "",
    ]
    metrics = [m for m in ("ssim", "lpips") if m in pairs]
    header = ["sampler", *(f"corr {k} {c}" for c in CENTRINGS for k in PAIRINGS)]
    header += [f"{m.upper()} {k}" for m in metrics for k in PAIRINGS]
    rows = []
    for name in pairs["sampler"].values:
        p = pairs.sel(sampler=name)
        cells = [p["correlation"].sel(pairing=k, centring=c) for c in CENTRINGS for k in PAIRINGS]
        cells += [p[m].sel(pairing=k) for m in metrics for k in PAIRINGS]
        rows.append([str(name), *(f"{float(v):+.4f}" for v in cells)])
    lines += ["Pair correlation (pixel-wise Pearson) and diversity, mean over pairs"]
    lines += [text_table(header, rows, "right")]
    lines += ["", f"LPIPS {attrs.get('lpips')}"] if "lpips" not in pairs else []
    columns = [(s, v, k) for s in trajectory["sampler"].values for v in ("x_t", "eps") for k in PAIRINGS]
    header = ["timestep", *(f"{v} {k} {s}" for s, v, k in columns)]
    rows = []
    for step in _default_steps(10, trajectory.sizes["step"]):
        at = trajectory.sel(step=step)
        cells = [at[v].sel(sampler=s, pairing=k) for s, v, k in columns]
        rows.append([str(int(at["timestep"])), *(f"{float(c):+.4f}" for c in cells)])
    residuals = [[str(int(t)), f"{r:.3e}"] for t, r in zip(anti["timestep"].values, anti["residual"].values)]
    lines += [
        "",
        "Trajectory correlation between partners (raw, at most 10 steps shown), mean over pairs",
        text_table(header, rows, "right"),
        "",
        "Affine antisymmetry residual ||eps(x)+eps(-x)-2c_t|| / ||eps(x)||",
        text_table(["timestep", "residual"], residuals, "right"),
    ]
    return "\n".join(lines)
