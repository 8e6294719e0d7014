"""Models by name: the analytic model, the bundled ones, or a model directory, as samplers."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from mcdiff.samplers.diffusion import DiffusionSampler
from mcdiff.samplers.gaussian import GaussianSampler
from mcdiff.samplers.mixture import GaussianMixtureSampler
from mcdiff.samplers.offset import ProbabilisticOffsetSampler

BUNDLED = ("digits", "photos")
"""Names of the models shipped in ``mcdiff/weights/``."""

ANALYTIC = ("gaussian", "mixture")
"""Models with an exact score and known answers: :class:`GaussianSampler` and the digits
preset of :class:`GaussianMixtureSampler`."""


def bundled_path(name: str = "digits") -> Path:
    """Directory of a bundled model (``unet/``, ``scheduler/``, ``training.json``)."""
    if name not in BUNDLED:
        raise ValueError(f"unknown bundled model {name!r}; bundled: {', '.join(BUNDLED)}")
    return Path(str(resources.files("mcdiff") / "weights" / name))


def load_model(
    model: str | Path, num_inference_steps: int = 20, scheduler: str | None = "DDIMScheduler", **kwargs
) -> DiffusionSampler:
    """The sampler for an analytic model (``"gaussian"``, ``"mixture"``), a bundled model name, or a model directory.

    Directories are loaded with :meth:`DiffusionSampler.from_pretrained`; a model trained with
    the ``probabilistic-offset`` objective (read from its ``training.json``) becomes a
    :class:`~mcdiff.samplers.offset.ProbabilisticOffsetSampler` with its offset weight.

    Parameters
    ----------
    model : str or Path
        ``"gaussian"`` (:class:`GaussianSampler`), ``"mixture"`` (the ``"digits"`` preset of
        :class:`GaussianMixtureSampler`), a name in :data:`BUNDLED`, or a diffusers model directory.
    num_inference_steps : int
        Sampling steps.
    scheduler : str or None
        A diffusers scheduler class name: ``"DDIMScheduler"`` (default), ``"DDPMScheduler"``
        (ancestral), any of :data:`~mcdiff.samplers.schedulers.SUPPORTED_SCHEDULERS` for a
        model directory (``"DPMSolverMultistepScheduler"``, ``"EulerAncestralDiscreteScheduler"``,
        ...), or ``None`` for the directory's stored scheduler. The analytic ``"gaussian"``
        model runs DDIM or DDPM only.
    **kwargs
        Further sampler arguments (``eta``, ``clip_output``, ``device``, ``dtype``).
    """
    if str(model) == "gaussian":
        return GaussianSampler(num_inference_steps=num_inference_steps, scheduler=scheduler or "DDIMScheduler", **kwargs)
    if str(model) == "mixture":
        return GaussianMixtureSampler.preset(
            "digits", num_inference_steps=num_inference_steps, scheduler=scheduler or "DDIMScheduler", **kwargs
        )
    path = bundled_path(str(model)) if str(model) in BUNDLED else Path(model)
    if not path.is_dir():
        raise ValueError(
            f"model must be 'gaussian', 'mixture', a bundled model ({', '.join(BUNDLED)}) or a diffusers model "
            f"directory; {str(model)!r} is none of these"
        )
    record_path = path / "training.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if record.get("objective") == "probabilistic-offset":
        kwargs["offset_weight"] = record["offset_weight"]
        cls = ProbabilisticOffsetSampler
    else:
        cls = DiffusionSampler
    return cls.from_pretrained(path, num_inference_steps=num_inference_steps, scheduler=scheduler, **kwargs)


def bundled_model(name: str = "digits", num_inference_steps: int = 20, **kwargs) -> DiffusionSampler:
    """The bundled model ``name`` as a sampler (DDIM by default); ``kwargs`` go to :func:`load_model`.

    Examples
    --------
    >>> import mcdiff
    >>> sampler = mcdiff.bundled_model("digits", num_inference_steps=10)
    >>> sampler.image_shape
    (1, 8, 8)
    """
    bundled_path(name)  # checks the name
    return load_model(name, num_inference_steps=num_inference_steps, **kwargs)
