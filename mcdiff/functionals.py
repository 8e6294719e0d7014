"""Downstream statistics of generated images.

A statistic maps images ``(B, C, H, W)`` in [0, 1] to values ``(B, *own_shape)`` with named
trailing dimensions: a scalar (``()``), a vector (``("axis",)``) or a map
(``("channel", "y", "x")``). Any callable with that contract can be used; wrap it in
:class:`Statistic` to name its dimensions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.special import ndtr, ndtri, owens_t

from mcdiff.samplers.gaussian import decoded_mean

REC601 = (0.299, 0.587, 0.114)
"""Rec. 601 luma weights for RGB."""


@dataclass(frozen=True)
class Statistic:
    """A named statistic of an image batch.

    Parameters
    ----------
    name : str
        Name of the result variable.
    fn : callable
        ``fn(images (B, C, H, W)) -> (B, *own_shape)``, a tensor or array.
    dims : tuple of str, optional
        Names of the trailing dims; ``None`` names them ``{name}_dim_0, ...``.
    coords : mapping, optional
        Coordinate labels of trailing dims.
    linear : bool
        Whether the statistic is linear in the image (its expectation is the statistic of
        the expected image).
    bounds : (lo, hi), optional
        The range every value lies in, if the statistic is bounded: what finite-sample
        intervals and confidence sequences need (e.g. sequential stopping with
        ``stop_interval="betting"``); values outside it are refused.
    """

    name: str
    fn: Callable
    dims: tuple[str, ...] | None = None
    coords: Mapping[str, Sequence] = field(default_factory=dict)
    linear: bool = False
    bounds: tuple[float, float] | None = None

    def own_dims(self, values: np.ndarray) -> tuple[str, ...]:
        """Names of the trailing dims of ``values`` ``(B, *own_shape)``."""
        if self.dims is not None:
            return self.dims
        return tuple(f"{self.name}_dim_{k}" for k in range(values.ndim - 1))

    def layout(self, value: np.ndarray) -> tuple[tuple[str, ...], dict]:
        """``(own_dims, coords)`` of one evaluation's value ``(*own_shape)``: dim names and their coordinates."""
        dims = self.own_dims(np.asarray(value)[None])
        return dims, {d: self.coords[d] for d in dims if d in self.coords}

    def __call__(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """Values ``(B, *own_shape)`` as float64: real numbers, one row per image, ``dims`` as declared."""
        images = torch.as_tensor(images)
        if images.dtype in (torch.float16, torch.bfloat16):
            images = images.float()
        out = self.fn(images)
        try:
            out = out.detach().cpu() if torch.is_tensor(out) else np.asarray(out)
        except ValueError as err:  # ragged sequences
            raise ValueError(f"statistic {self.name!r} returned no array of numbers: {err}") from None
        if out.is_complex() if torch.is_tensor(out) else out.dtype.kind not in "biuf":
            raise ValueError(
                f"statistic {self.name!r} returned values of dtype {out.dtype}; it must return real "
                "numbers (B, ...), a tensor or an array of bool, int or float"
            )
        out = out.double().numpy() if torch.is_tensor(out) else out.astype(np.float64)
        if out.ndim == 0 or out.shape[0] != images.shape[0]:
            raise ValueError(
                f"statistic {self.name!r} returned shape {out.shape} for a batch of {images.shape[0]} "
                "images; it must return (B, ...) with one row per image"
            )
        if self.dims is not None and out.ndim - 1 != len(self.dims):
            raise ValueError(
                f"statistic {self.name!r} returned {out.ndim - 1} trailing dims, declared {self.dims}"
            )
        return out


def luminance(images: torch.Tensor) -> torch.Tensor:
    """Luminance ``(B, H, W)``: the channel itself for grayscale, Rec. 601 luma for RGB."""
    channels = images.shape[1]
    if channels == 1:
        return images[:, 0]
    if channels == 3:
        weights = torch.tensor(REC601, dtype=images.dtype, device=images.device)
        return torch.einsum("bchw,c->bhw", images, weights)
    raise ValueError(f"luminance needs 1 (grayscale) or 3 (RGB) channels, got {channels}")


def _brightness(images: torch.Tensor) -> torch.Tensor:
    return luminance(images).mean(dim=(-2, -1))


def _contrast(images: torch.Tensor) -> torch.Tensor:
    return luminance(images).flatten(1).std(dim=1, unbiased=False)


def _centroid(images: torch.Tensor) -> torch.Tensor:
    lum = luminance(images)
    height, width = lum.shape[-2:]
    y = (torch.arange(height, dtype=lum.dtype, device=lum.device) + 0.5) / height
    x = (torch.arange(width, dtype=lum.dtype, device=lum.device) + 0.5) / width
    total = lum.sum(dim=(-2, -1))
    black = total == 0
    cy = torch.where(black, 0.5, (lum.sum(dim=-1) * y).sum(dim=-1) / torch.where(black, 1, total))
    cx = torch.where(black, 0.5, (lum.sum(dim=-2) * x).sum(dim=-1) / torch.where(black, 1, total))
    return torch.stack([cy, cx], dim=-1)


brightness = Statistic("brightness", _brightness, dims=(), linear=True, bounds=(0.0, 1.0))
"""Mean luminance: ``(1/HW) sum_p L_p``."""

pixel_mean = Statistic("pixel_mean", lambda images: images, dims=("channel", "y", "x"), linear=True, bounds=(0.0, 1.0))
"""The image itself; its expectation is the pixel-wise mean map ``(C, H, W)``."""

contrast = Statistic("contrast", _contrast, dims=(), bounds=(0.0, 0.5))
"""RMS contrast: ``sqrt((1/HW) sum_p (L_p - mean L)^2)``."""

centroid = Statistic("centroid", _centroid, dims=("axis",), coords={"axis": ["y", "x"]}, bounds=(0.0, 1.0))
"""Intensity-weighted centroid ``(sum_p L_p y_p, sum_p L_p x_p) / sum_p L_p``, pixel centres
at ``(i + 0.5) / H`` so coordinates lie in [0, 1]; an all-black image (``sum_p L_p = 0``, as
photo models make of night sky) has the centre ``(0.5, 0.5)``, a uniform image's centroid."""

BUILTIN = {s.name: s for s in (brightness, pixel_mean, contrast, centroid)}

PROBE_SEED = 26
"""Seed of the probe images and projections of :func:`statistic_identity`."""

PROBE_RTOL = 1e-5
"""Probe values agree when they differ by at most this fraction of the largest of them."""


def probe_images(image_shape: Sequence[int], count: int = 8) -> torch.Tensor:
    """Fixed images ``(count, C, H, W)`` in [0, 1], float32, of brightness from about 0.1 to 0.9.

    Image ``k`` is ``U^{gamma_k}`` for pixels ``U ~ Uniform(0, 1)`` from a generator seeded with
    :data:`PROBE_SEED`, ``gamma_k`` log-spaced in ``[1/9, 9]`` (``E[U^gamma] = 1 / (1 + gamma)``),
    so statistics that threshold or saturate see different images take different sides.
    """
    rng = np.random.default_rng(PROBE_SEED)
    gammas = np.logspace(np.log10(9), -np.log10(9), count).reshape(count, 1, 1, 1)
    return torch.from_numpy((rng.random((count, *image_shape)) ** gammas).astype(np.float32))


def statistic_identity(statistic: Statistic, image_shape: Sequence[int]) -> dict:
    """What identifies a statistic: its function's qualified name and what it computes on a probe.

    The statistic is evaluated on :func:`probe_images` of the model's ``image_shape``; its values
    ``v (8, *own_shape)`` are flattened per image and projected on two directions ``w (D, 2)``
    drawn with :data:`PROBE_SEED`, ``w ~ N(0, 1 / D)``: the probe is ``v w``, 16 numbers whatever
    the statistic's size. Two identities agree when their probes do within :data:`PROBE_RTOL`
    of the largest probe value (:func:`same_probe`), which absorbs rounding that differs with
    threads or processors. Statistics that agree on the probe images (or differ only on a
    part of the image that both projections weigh little) are not told apart.

    Returns
    -------
    dict
        ``{"function": "module.qualname", "probe": [16 floats]}``; ``probe`` is a string
        naming the error when the statistic cannot run on the probe (then the name alone counts).
    """
    fn = statistic.fn
    function = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
    try:
        values = statistic(probe_images(image_shape))
    except Exception as err:  # noqa: BLE001 - any failure is recorded, the run itself reports it
        return {"function": function, "probe": f"fails on the probe images: {type(err).__name__}"}
    flat = values.reshape(len(values), -1)
    directions = np.random.default_rng(PROBE_SEED).standard_normal((flat.shape[1], 2)) / np.sqrt(flat.shape[1])
    with np.errstate(all="ignore"):
        probe = flat @ directions
    return {"function": function, "probe": [float(v) for v in probe.ravel()]}


def same_probe(stored, requested) -> bool:
    """Whether two probes of :func:`statistic_identity` agree (within :data:`PROBE_RTOL`; NaN equals NaN)."""
    if isinstance(stored, str) or isinstance(requested, str):
        return stored == requested
    a, b = np.asarray(stored, dtype=np.float64), np.asarray(requested, dtype=np.float64)
    if a.shape != b.shape:
        return False
    finite_a, finite_b = np.isfinite(a), np.isfinite(b)
    if not (np.array_equal(finite_a, finite_b) and np.array_equal(a[~finite_a], b[~finite_b], equal_nan=True)):
        return False
    scale = np.abs(np.concatenate([a[finite_a], b[finite_b]])).max(initial=0)
    return bool(np.all(np.abs(a[finite_a] - b[finite_b]) <= PROBE_RTOL * scale))


def check_finite(statistic: str, values: np.ndarray, start: int, design: str) -> None:
    """Raise ``ValueError`` naming the evaluations where ``values`` ``(B, *own_shape)`` hold NaN or inf.

    ``values[i]`` is the value of evaluation ``start + i`` of ``design``.
    """
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if bad.any():
        addresses = (np.flatnonzero(bad) + start).tolist()
        raise ValueError(
            f"statistic {statistic!r} is not finite (NaN or inf) at evaluations "
            f"{addresses[:10]}{' ...' if len(addresses) > 10 else ''} of design {design!r}"
        )


def get_statistic(statistic: str | Statistic | Callable) -> Statistic:
    """Resolve a built-in name, a :class:`Statistic`, or a callable into a :class:`Statistic`."""
    if isinstance(statistic, Statistic):
        return statistic
    if isinstance(statistic, str):
        if statistic not in BUILTIN:
            raise ValueError(f"unknown statistic {statistic!r}; built-in: {', '.join(BUILTIN)}")
        return BUILTIN[statistic]
    if callable(statistic):
        return Statistic(getattr(statistic, "__name__", "statistic"), statistic)
    raise ValueError(f"a statistic must be a name, a Statistic or a callable, got {statistic!r}")


def exact_expectation(model, statistic: str | Statistic | Callable) -> np.ndarray:
    """Exact ``E[f(G(z))]`` of a *linear* statistic under a model that knows its expected image.

    For linear ``f``, ``E[f(G(z))] = f(E[G(z)])``: the statistic of the model's exact
    expected image ``model.expected_image()`` ``(C, H, W)``, as the analytic
    :class:`~mcdiff.samplers.gaussian.GaussianSampler` provides it.

    Returns
    -------
    array ``own_shape``
    """
    stat = get_statistic(statistic)
    if not stat.linear:
        raise ValueError(
            f"the exact expectation is known only for linear statistics; {stat.name!r} is not "
            "linear (linear built-ins: brightness, pixel_mean)"
        )
    if not callable(getattr(model, "expected_image", None)):
        raise ValueError(f"{type(model).__name__} has no exact expected_image(); use an analytic model")
    return stat(torch.as_tensor(model.expected_image())[None])[0]


LAW_OUTPUTS = ("affine", "probit")
"""Output maps under which :func:`exact_law` knows a statistic's law (``clip`` has point masses)."""


@dataclass(frozen=True)
class StatisticLaw:
    """The exact marginal law of each component of a statistic: a monotone map of a normal mixture.

    Component ``j`` of the statistic is ``T(X_j)`` with ``X_j ~ sum_k pi_k N(m_kj, s_kj^2)``
    and ``T`` the identity (``output="affine"``) or the probit decoder
    ``T(x) = Phi((x - 1/2) / w)`` (increasing, onto (0, 1)). Built by :func:`exact_law`.

    Parameters
    ----------
    weights : array (K,)
    means, stds : array (K, *own_shape)
    output : {"affine", "probit"}
    probit_width : float
    """

    weights: np.ndarray
    means: np.ndarray
    stds: np.ndarray
    output: str = "affine"
    probit_width: float = 0.25

    def _decode(self, x: np.ndarray) -> np.ndarray:
        return ndtr((x - 0.5) / self.probit_width) if self.output == "probit" else x

    def _mixture_cdf(self, x: np.ndarray) -> np.ndarray:
        return sum(w * ndtr((x - m) / s) for w, m, s in zip(self.weights, self.means, self.stds))

    def cdf(self, x) -> np.ndarray:
        """``P(f_j <= x)``, ``x`` broadcastable to ``(..., *own_shape)``.

        Probit: ``P(X <= 1/2 + w Phi^-1(x))`` for ``x`` in [0, 1] (0 below, 1 above).
        """
        x = np.asarray(x, dtype=np.float64)
        if self.output == "probit":
            x = np.where(x <= 0, -np.inf, np.where(x >= 1, np.inf, 0.5 + self.probit_width * ndtri(np.clip(x, 0, 1))))
        return self._mixture_cdf(x)

    def quantile(self, levels) -> np.ndarray:
        """``q_p = inf {x : F(x) >= p}`` ``(L, *own_shape)`` for levels ``p`` ``(L,)`` in (0, 1).

        One component: ``T(m + s Phi^-1(p))``. A mixture: the root of its CDF by bisection
        between the smallest and largest component quantiles (100 halvings), then ``T``.
        """
        levels = check_levels(levels)
        shape = (len(levels),) + (1,) * self.means[0].ndim
        z = ndtri(levels).reshape(shape)
        component = [m + s * z for m, s in zip(self.means, self.stds)]  # each (L, *own_shape)
        low, high = np.minimum.reduce(component), np.maximum.reduce(component)
        if len(self.weights) > 1:
            target = levels.reshape(shape)
            for _ in range(100):
                middle = (low + high) / 2
                below = self._mixture_cdf(middle) < target
                low, high = np.where(below, middle, low), np.where(below, high, middle)
        return self._decode(high)

    def mean(self) -> np.ndarray:
        """``E f_j`` ``(*own_shape)``: ``sum_k pi_k E T(X_kj)`` (:func:`~mcdiff.samplers.gaussian.decoded_mean`)."""
        return np.tensordot(self.weights, decoded_mean(self.output, self.means, self.stds, self.probit_width), axes=1)

    def variance(self) -> np.ndarray:
        """``Var f_j`` ``(*own_shape)`` over generated images.

        Affine: ``sum_k pi_k (s_k^2 + m_k^2) - (E f)^2``. Probit, with ``a = (m - 1/2) / w``,
        ``b = s / w``, ``h = a / sqrt(1 + b^2)``: ``E[Phi(a + b Z)^2] = Phi_2(h, h; rho)``,
        ``rho = b^2 / (1 + b^2)``, ``= Phi(h) - 2 T(h, 1 / sqrt(1 + 2 b^2))`` (Owen's T).
        """
        if self.output == "probit":
            a, b = (self.means - 0.5) / self.probit_width, self.stds / self.probit_width
            h = a / np.sqrt(1 + b**2)
            second = ndtr(h) - 2 * owens_t(h, 1 / np.sqrt(1 + 2 * b**2))
        else:
            second = self.stds**2 + self.means**2
        return np.maximum(np.tensordot(self.weights, second, axes=1) - self.mean() ** 2, 0.0)


def check_levels(levels) -> np.ndarray:
    """Quantile levels as a float array ``(L,)``, each in (0, 1), else ``ValueError``."""
    array = np.atleast_1d(np.asarray(levels, dtype=np.float64))
    if array.ndim != 1 or len(array) == 0 or not ((array > 0) & (array < 1)).all():
        raise ValueError(f"quantile levels must be numbers in (0, 1), e.g. 0.05 0.5 0.95; got {levels!r}")
    return array


def exact_law(model, statistic: str | Statistic | Callable) -> StatisticLaw:
    """The exact law of each component of a statistic under an analytic model.

    The model's unclipped output ``Y`` is a Gaussian mixture ``sum_k pi_k N(mean_k,
    diag(std_k^2) + F_k F_k^T)`` (``model.output_mixture()``): at the sampler's own step
    count for :class:`~mcdiff.samplers.gaussian.GaussianSampler` (its map is affine), in
    the limit of the sampler (the data) for
    :class:`~mcdiff.samplers.mixture.GaussianMixtureSampler`, whose finite-step answers are a
    recorded reference run (:meth:`~mcdiff.samplers.mixture.GaussianMixtureSampler.reference_answers`,
    with standard errors), not closed form. A linear statistic
    ``f(Y) = f(0) + L Y`` is then, component by component, a normal mixture with::

        m_kj   = f_j(mean_k)
        s_kj^2 = sum_p L_jp^2 std_kp^2 + sum_r (L_j F_kr)^2,     L_jp = f_j(e_p) - f_j(0)

    This is the law with the affine output, for any linear statistic (brightness,
    pixel_mean, a user ``Statistic(..., linear=True)``). With the probit output only the
    pixels themselves (``pixel_mean``) have a known law, each ``Phi((Y_p - 1/2) / w)``.

    Returns
    -------
    StatisticLaw
        ``means, stds (K, *own_shape)``.
    """
    stat = get_statistic(statistic)
    if not callable(getattr(model, "output_mixture", None)):
        raise ValueError(f"{type(model).__name__} has no exact output_mixture(); use an analytic model")
    output = getattr(model, "output", "affine")
    if output not in LAW_OUTPUTS:
        raise ValueError(f"the exact law is known for outputs {LAW_OUTPUTS}, not {output!r} (point masses at 0 and 1)")
    if output != "affine" and stat != pixel_mean:
        raise ValueError(
            f"with the {output!r} output only pixel_mean has a known law (each pixel a monotone map "
            f"of a normal), not {stat.name!r}"
        )
    if not stat.linear:
        raise ValueError(f"the exact law is known only for linear statistics; {stat.name!r} is not linear")
    law = model.output_mixture()
    means, stds, factors = (torch.as_tensor(np.asarray(law[k], dtype=np.float64)) for k in ("means", "stds", "factors"))
    n_comp, rank = factors.shape[:2]
    image_shape = means.shape[1:]
    at_zero = stat(torch.zeros(1, *image_shape, dtype=torch.float64))
    variance = np.zeros((n_comp, *at_zero.shape[1:]))
    if rank:
        variance += ((stat(factors.reshape(-1, *image_shape)) - at_zero) ** 2).reshape(n_comp, rank, *at_zero.shape[1:]).sum(1)
    pixels = int(np.prod(image_shape))
    flat_std2 = (stds**2).reshape(n_comp, pixels).numpy()
    for start in range(0, pixels, 256):  # L_jp = f_j(e_p) - f_j(0), 256 unit images at a time
        stop = min(pixels, start + 256)
        units = torch.zeros(stop - start, pixels, dtype=torch.float64)
        units[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        slopes = stat(units.reshape(-1, *image_shape)) - at_zero  # (P, *own_shape)
        variance += np.tensordot(flat_std2[:, start:stop], slopes**2, axes=1)
    return StatisticLaw(
        weights=np.asarray(law["weights"], dtype=np.float64),
        means=stat(means),
        stds=np.sqrt(variance),
        output=output,
        probit_width=float(getattr(model, "probit_width", 0.25)),
    )


def exact_cdf(model, statistic: str | Statistic | Callable, x) -> np.ndarray:
    """Exact ``P(f_j <= x)`` of each component, ``x`` broadcastable to ``(..., *own_shape)`` (see :func:`exact_law`)."""
    return exact_law(model, statistic).cdf(x)


def exact_quantile(model, statistic: str | Statistic | Callable, levels) -> np.ndarray:
    """Exact quantiles ``(L, *own_shape)`` of each component at ``levels`` in (0, 1) (see :func:`exact_law`)."""
    return exact_law(model, statistic).quantile(levels)


def exact_exceedance(model, statistic: str | Statistic | Callable, threshold, above: bool = True) -> np.ndarray:
    """Exact ``P(f_j > c)`` (``above``) or ``P(f_j < c)`` of each component (the laws are continuous)."""
    cdf = exact_cdf(model, statistic, threshold)
    return 1 - cdf if above else cdf


def exact_variance(model, statistic: str | Statistic | Callable) -> np.ndarray:
    """Exact ``Var f_j`` ``(*own_shape)`` over generated images (see :meth:`StatisticLaw.variance`)."""
    return exact_law(model, statistic).variance()


def exact_std(model, statistic: str | Statistic | Callable) -> np.ndarray:
    """Exact standard deviation ``sqrt(Var f_j)`` ``(*own_shape)`` over generated images."""
    return np.sqrt(exact_variance(model, statistic))
