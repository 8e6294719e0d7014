"""Load models trained by :func:`mcdiff.training.train`, including the bundled ones, as samplers."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
from diffusers import DDIMScheduler, UNet2DModel

from mcdiff.samplers.diffusion import DiffusionSampler
from mcdiff.samplers.offset import ProbabilisticOffsetSampler

BUNDLED = ("digits",)
"""Names of the models shipped in ``mcdiff/weights/``."""


def bundled_path(name: str = "digits") -> Path:
    """Directory of a bundled model (``unet/``, ``scheduler/``, ``training.json``)."""
    if name not in BUNDLED:
        raise ValueError(f"unknown bundled model {name!r}; bundled: {', '.join(BUNDLED)}")
    return Path(str(resources.files("mcdiff") / "weights" / name))


def load_model(
    path: str | Path,
    num_inference_steps: int = 20,
    eta: float = 0.0,
    clip_output: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> DiffusionSampler:
    """A DDIM sampler for a model directory written by :func:`~mcdiff.training.train`.

    Models trained with the ``probabilistic-offset`` objective (read from ``training.json``)
    get a :class:`~mcdiff.samplers.offset.ProbabilisticOffsetSampler` with their offset
    weight; the others a plain :class:`~mcdiff.samplers.diffusion.DiffusionSampler`.
    """
    path = Path(path)
    if not (path / "unet" / "config.json").is_file():
        raise ValueError(f"no model at {str(path)!r}: expected unet/config.json and scheduler/ inside")
    record_path = path / "training.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    unet = UNet2DModel.from_pretrained(path / "unet", torch_dtype=dtype, low_cpu_mem_usage=False)
    unet = unet.to(device=device or "cpu").eval()
    scheduler = DDIMScheduler.from_pretrained(path / "scheduler")
    kwargs = dict(
        num_inference_steps=num_inference_steps, eta=eta, clip_output=clip_output, device=device, dtype=dtype
    )
    if record.get("objective") == "probabilistic-offset":
        return ProbabilisticOffsetSampler(unet, scheduler, offset_weight=record["offset_weight"], **kwargs)
    return DiffusionSampler(unet, scheduler, **kwargs)


def bundled_model(name: str = "digits", num_inference_steps: int = 20, **kwargs) -> DiffusionSampler:
    """The bundled model ``name`` as a DDIM sampler; ``kwargs`` go to :func:`load_model`.

    Examples
    --------
    >>> import mcdiff
    >>> sampler = mcdiff.bundled_model("digits", num_inference_steps=10)
    >>> sampler.image_shape
    (1, 8, 8)
    """
    return load_model(bundled_path(name), num_inference_steps=num_inference_steps, **kwargs)
