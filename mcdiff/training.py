"""DDPM training of small ``UNet2DModel`` noise predictors, with EMA and resumable checkpoints.

Three objectives, all ``E ||n - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) n, t)||^2``
with a different training noise ``n`` (``eps ~ N(0, I)`` per pixel, ``xi ~ N(0, I)`` of
shape ``(B, C, 1, 1)``):

========================  ==========================  =======================================
objective                 ``n``                       sampler
========================  ==========================  =======================================
``epsilon``               ``eps``                     :class:`DiffusionSampler`
``offset``                ``eps + w xi``              :class:`DiffusionSampler`
``probabilistic-offset``  ``eps + w psi_t xi``        :class:`ProbabilisticOffsetSampler`
========================  ==========================  =======================================

A run is a pure function of ``(data, settings, seed)``: the batches, timesteps and noise come
from one seeded generator whose state is checkpointed, so an interrupted run that resumes
gives the weights an uninterrupted run gives. The output directory is in diffusers format
(``unet/``, ``scheduler/``) plus ``training.json``; load it with :func:`mcdiff.load_model`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import pickle
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import diffusers
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from tqdm.auto import tqdm

from mcdiff.samplers.offset import offset_noise_psi
from mcdiff.validation import check_integer, check_seed, is_integer

OBJECTIVES = ("epsilon", "offset", "probabilistic-offset")
"""Training objectives accepted by :func:`train`."""

CHECKPOINT = "checkpoint.pt"
"""File name of the resumable checkpoint inside the output directory."""

NUM_TRAIN_TIMESTEPS = 1000


def make_unet(
    image_shape: tuple[int, int, int],
    block_out_channels: Sequence[int] = (32, 64, 64),
    attention_levels: Sequence[int] = (),
    layers_per_block: int = 1,
) -> UNet2DModel:
    """A small ``UNet2DModel`` for images ``(C, H, W)`` with ``H == W``.

    ``layers_per_block`` ResNet layers per level, self-attention (heads of 32 channels, or
    of the narrowest attending level's if fewer) at the levels in ``attention_levels`` (level ``i`` works at resolution ``H / 2^i``) and in
    the middle block, group norm of 8 groups; each level but the last halves the
    resolution, so ``H`` must be divisible by ``2^(levels - 1)``. The defaults are the
    digits model's; ``attention_levels=(1,)`` on 32x32 images puts attention at 16x16, as
    the CIFAR-10 U-Net of Ho et al. (2020) does.
    """
    channels, height, width = image_shape
    levels = len(block_out_channels)
    if height != width or height % 2 ** (levels - 1):
        raise ValueError(
            f"image_shape {tuple(image_shape)} must be square with a side divisible by "
            f"2^(levels - 1) = {2 ** (levels - 1)} for block_out_channels={tuple(block_out_channels)}"
        )
    if any(c % 8 for c in block_out_channels):
        raise ValueError(f"block_out_channels must be multiples of 8, got {tuple(block_out_channels)}")
    if any(not is_integer(i) or not 0 <= i < levels for i in attention_levels):
        raise ValueError(f"attention_levels must be level indices in 0..{levels - 1}, got {tuple(attention_levels)}")
    layers_per_block = check_integer("layers_per_block", layers_per_block)
    attention = set(int(i) for i in attention_levels)
    widths = [block_out_channels[i] for i in attention] + [block_out_channels[-1]]
    extra = {"attention_head_dim": min(32, *widths)} if attention else {}
    return UNet2DModel(
        sample_size=height,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(block_out_channels),
        down_block_types=tuple("AttnDownBlock2D" if i in attention else "DownBlock2D" for i in range(levels)),
        up_block_types=tuple("AttnUpBlock2D" if i in attention else "UpBlock2D" for i in reversed(range(levels))),
        layers_per_block=int(layers_per_block),
        norm_num_groups=8,
        **extra,
    )


def make_scheduler() -> DDPMScheduler:
    """The training noise schedule: 1,000 linear betas, no clipping, trailing timesteps.

    ``clip_sample=False`` keeps DDIM affine in ``x_t`` and ``eps`` (clipping the predicted
    ``x_0`` breaks the antisymmetry antithetic sampling relies on); trailing spacing makes
    sampling start at the last training timestep.
    """
    return DDPMScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS, clip_sample=False, timestep_spacing="trailing"
    )


def check_training_data(data: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Return ``data`` as float32 ``(N, C, H, W)`` or raise ``ValueError`` saying what is wrong.

    Requires at least one image, 1 to 4 channels, finite values in [-1, 1].
    """
    if not isinstance(data, (torch.Tensor, np.ndarray)):
        raise ValueError(f"training data must be a tensor or array (N, C, H, W), got {type(data).__name__}")
    data = torch.as_tensor(data)
    if data.ndim != 4:
        raise ValueError(f"training data must have shape (N, C, H, W), got shape {tuple(data.shape)}")
    if data.shape[0] == 0:
        raise ValueError(f"training data is empty: shape {tuple(data.shape)} has N = 0 images")
    if not 1 <= data.shape[1] <= 4:
        raise ValueError(f"training data must have 1 to 4 channels (N, C, H, W), got C = {data.shape[1]}")
    if data.is_complex() or data.dtype == torch.bool:
        raise ValueError(f"training data must be real-valued, got dtype {data.dtype}")
    data = data.float()
    bad = ~torch.isfinite(data.flatten(1)).all(dim=1)
    if bad.any():
        images = torch.nonzero(bad).flatten().tolist()
        raise ValueError(
            f"training data has NaN or inf in {len(images)} image(s), first at index {images[:5]}"
        )
    low, high = float(data.min()), float(data.max())
    if low < -1 - 1e-6 or high > 1 + 1e-6:
        raise ValueError(f"training data must be scaled to [-1, 1], got values in [{low:.4g}, {high:.4g}]")
    return data


def _check_settings(objective, steps, batch_size, learning_rate, ema_decay, offset_weight, checkpoint_every):
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("checkpoint_every", checkpoint_every)):
        check_integer(name, value)
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    if not 0 <= ema_decay < 1:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
    if not offset_weight >= 0:
        raise ValueError(f"offset_weight must be >= 0, got {offset_weight}")


def offset_coefficients(objective: str, offset_weight: float, betas: torch.Tensor) -> torch.Tensor:
    """Coefficient ``c_t`` ``(T,)`` of ``xi`` in the training noise ``eps + c_t xi``, per timestep.

    ``0`` for ``epsilon``, ``w`` for ``offset``, ``w psi_t`` for ``probabilistic-offset``
    (:func:`~mcdiff.samplers.offset.offset_noise_psi`).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")
    if objective == "epsilon":
        return torch.zeros(len(betas))
    if objective == "offset":
        return torch.full((len(betas),), float(offset_weight))
    return (offset_weight * offset_noise_psi(betas)).float()


def _train_step(unet, optimizer, scheduler, data, coefficients, batch_size, generator) -> float:
    """One optimiser step on a random batch; every random draw comes from ``generator``."""
    x0 = data[torch.randint(0, len(data), (batch_size,), generator=generator)]
    t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    xi = torch.randn((batch_size, x0.shape[1], 1, 1), generator=generator)
    noise = eps + coefficients[t].view(-1, 1, 1, 1) * xi
    loss = F.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


@torch.no_grad()
def _update_ema(ema: torch.nn.Module, unet: torch.nn.Module, decay: float, step: int) -> None:
    """``ema <- d ema + (1 - d) unet`` with warm-up ``d = min(decay, (1 + k) / (10 + k))``."""
    d = min(decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(ema.parameters()), list(unet.parameters()), 1 - d)


def train(
    data: torch.Tensor | np.ndarray,
    output_dir: str | Path,
    objective: str = "epsilon",
    steps: int = 6000,
    batch_size: int = 128,
    learning_rate: float = 2e-3,
    ema_decay: float = 0.999,
    offset_weight: float = 0.1,
    seed: int = 0,
    block_out_channels: Sequence[int] = (32, 64, 64),
    attention_levels: Sequence[int] = (),
    layers_per_block: int = 1,
    checkpoint_every: int = 500,
    snapshot_steps: Sequence[int] = (),
    init_from: str | Path | None = None,
    progress: bool | None = None,
    metadata: dict | None = None,
) -> Path:
    """Train a noise predictor on ``data`` and save it (EMA weights) to ``output_dir``.

    Minimises ``||n - eps_theta(x_t, t)||^2`` with ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) n``
    and ``n = eps + c_t xi`` (see :func:`offset_coefficients`), by AdamW at a constant rate,
    keeping an exponential moving average of the weights. Every ``checkpoint_every`` steps
    the state (weights, EMA, optimiser, generator, losses) goes to ``output_dir/checkpoint.pt``;
    a later call with the same settings resumes from it, and the checkpoint is removed once
    the model is saved. The checkpoint holds tensors and plain values only and is read with
    ``torch.load(weights_only=True)``, so a planted file cannot run code. All input is
    checked before the first step.

    Parameters
    ----------
    data : tensor or array (N, C, H, W)
        Training images scaled to [-1, 1] (see :mod:`mcdiff.data`).
    output_dir : path
        Receives ``unet/``, ``scheduler/`` and ``training.json``.
    objective : {"epsilon", "offset", "probabilistic-offset"}
        Training noise, see :data:`OBJECTIVES`.
    steps : int
        Total optimiser steps (a resumed run counts the steps already done).
    batch_size, learning_rate, ema_decay
        Optimisation settings.
    offset_weight : float
        ``w`` of the offset objectives (ignored for ``epsilon``).
    seed : int
        Seeds the initial weights and every batch, timestep and noise draw.
    block_out_channels, attention_levels, layers_per_block
        The U-Net's shape (see :func:`make_unet`).
    checkpoint_every : int
        Steps between checkpoints.
    snapshot_steps : sequence of int
        Steps (below ``steps``) after which the EMA weights are also saved as a loadable
        model in ``output_dir/snapshots/step-NNNNNN``, to tie figures to a training stage.
    init_from : path, optional
        A model saved by :func:`train` whose weights start both the trained and the EMA
        copy (the optimiser starts afresh): to train a finished model further. Its U-Net
        must have the shape asked for; ``training.json`` records its steps and the SHA-256
        of its weights, and step counts (``steps``, ``snapshot_steps``) are of this run.
    progress : bool, optional
        Show a progress bar; by default only when stderr is a terminal.
    metadata : dict, optional
        Extra entries for ``training.json`` (the command line, the data set's name).

    Returns
    -------
    pathlib.Path
        ``output_dir``.

    References
    ----------
    J. Ho, A. Jain and P. Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020;
    N. Guttenberg, "Diffusion with offset noise" (2023); T. Kutsuna, arXiv:2412.03134.
    """
    data = check_training_data(data)
    seed = check_seed(seed)
    _check_settings(objective, steps, batch_size, learning_rate, ema_decay, offset_weight, checkpoint_every)
    snapshot_steps = sorted({int(k) for k in snapshot_steps})
    if any(not 1 <= k < steps for k in snapshot_steps):
        raise ValueError(f"snapshot_steps must lie in 1..{steps - 1} (below steps), got {snapshot_steps}")
    image_shape = tuple(data.shape[1:])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = make_unet(image_shape, block_out_channels, attention_levels, layers_per_block)
    start_from = None if init_from is None else _load_initial_weights(Path(init_from), unet)
    settings = {
        "objective": objective,
        "offset_weight": float(offset_weight) if objective != "epsilon" else 0.0,
        "seed": seed,
        "steps": int(steps),
        "batch_size": int(batch_size),
        "learning_rate": float(learning_rate),
        "ema_decay": float(ema_decay),
        "block_out_channels": [int(c) for c in block_out_channels],
        "attention_levels": sorted(int(i) for i in attention_levels),
        "layers_per_block": int(layers_per_block),
        "image_shape": list(image_shape),
        "num_images": len(data),
        **({} if start_from is None else {"init_from": start_from}),
    }
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    scheduler = make_scheduler()
    coefficients = offset_coefficients(objective, offset_weight, scheduler.betas)
    ema = copy.deepcopy(unet).requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    state = {"step": 0, "losses": [], "seconds": 0.0}
    checkpoint_path = output_dir / CHECKPOINT
    if checkpoint_path.exists():
        state = _load_checkpoint(checkpoint_path, settings, unet, ema, optimizer, generator)

    if progress is None:
        progress = sys.stderr.isatty()
    unet.train()
    start = time.perf_counter() - state["seconds"]
    with tqdm(total=steps, initial=state["step"], disable=not progress, unit="step", desc=f"train {objective}") as bar:
        while state["step"] < steps:
            loss = _train_step(unet, optimizer, scheduler, data, coefficients, batch_size, generator)
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {loss} at step {state['step']}: lower learning_rate "
                    f"(now {learning_rate})"
                )
            _update_ema(ema, unet, ema_decay, state["step"])
            state["step"] += 1
            state["losses"].append(loss)
            state["seconds"] = time.perf_counter() - start
            bar.update()
            if state["step"] % 50 == 0:
                bar.set_postfix(loss=f"{np.mean(state['losses'][-50:]):.4f}")
            if state["step"] in snapshot_steps:
                _save_model(output_dir / "snapshots" / f"step-{state['step']:06d}", ema, scheduler, settings, state, metadata)
            if state["step"] % checkpoint_every == 0 and state["step"] < steps:
                _save_checkpoint(checkpoint_path, settings, state, unet, ema, optimizer, generator)

    _save_model(output_dir, ema, scheduler, settings, state, metadata)
    checkpoint_path.unlink(missing_ok=True)
    return output_dir


def _load_initial_weights(path: Path, unet: UNet2DModel) -> dict:
    """Load the U-Net saved at ``path`` into ``unet``; its steps and weights' SHA-256."""
    weights = path / "unet" / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"init_from={str(path)!r} holds no unet/diffusion_pytorch_model.safetensors")
    saved = UNet2DModel.from_pretrained(path / "unet", local_files_only=True, low_cpu_mem_usage=False)
    fields = ("sample_size", "in_channels", "block_out_channels", "down_block_types", "layers_per_block")
    changed = [k for k in fields if tuple(np.atleast_1d(saved.config[k])) != tuple(np.atleast_1d(unet.config[k]))]
    if changed:
        raise ValueError(f"init_from={str(path)!r} is a U-Net of another shape ({', '.join(changed)} differ)")
    unet.load_state_dict(saved.state_dict())
    record = path / "training.json"
    steps = json.loads(record.read_text()).get("trained_steps") if record.is_file() else None
    return {"trained_steps": steps, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}


def _save_model(path: Path, ema, scheduler, settings: dict, state: dict, metadata: dict | None) -> None:
    """``path/unet``, ``path/scheduler`` and ``path/training.json`` (settings, losses, timing)."""
    ema.save_pretrained(path / "unet")
    scheduler.save_pretrained(path / "scheduler")
    record = {
        **(metadata or {}),
        **settings,
        "trained_steps": state["step"],
        "final_loss": float(np.mean(state["losses"][-100:])),
        "loss_per_100_steps": [round(float(np.mean(state["losses"][i : i + 100])), 5) for i in range(0, state["step"], 100)],
        "train_seconds": round(state["seconds"], 1),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "diffusers_version": diffusers.__version__,
    }
    (path / "training.json").write_text(json.dumps(record, indent=2) + "\n")


def _save_checkpoint(path, settings, state, unet, ema, optimizer, generator) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "settings": settings,
            "state": state,
            "unet": unet.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
        },
        tmp,
    )
    tmp.replace(path)


def _load_checkpoint(path, settings, unet, ema, optimizer, generator) -> dict:
    try:
        saved = torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise ValueError(
            f"checkpoint {str(path)!r} is damaged or holds more than tensors and plain values (not "
            f"written by mcdiff), so it is not loaded ({type(err).__name__}); delete it to start afresh"
        ) from None
    if saved["settings"] != {**settings, "steps": saved["settings"]["steps"]}:
        changed = sorted(k for k in settings if k != "steps" and saved["settings"].get(k) != settings[k])
        raise ValueError(
            f"checkpoint {str(path)!r} was written with different settings ({', '.join(changed)}); "
            "use the same settings to resume, or another output directory"
        )
    unet.load_state_dict(saved["unet"])
    ema.load_state_dict(saved["ema"])
    optimizer.load_state_dict(saved["optimizer"])
    generator.set_state(saved["generator"])
    return saved["state"]
