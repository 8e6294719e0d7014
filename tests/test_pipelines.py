"""Pipelines under mcdiff's noise: tiny SD3-, Flux-, PixArt- and DiT-shaped models built here, nothing downloaded."""

from __future__ import annotations

import sys

import diffusers
import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DiTPipeline,
    DiTTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtAlphaPipeline,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)

import mcdiff
from mcdiff.designs import Antithetic

BATCH = 4
TOL = 1e-5
EMBEDS = 5, 16  # tokens, width of the prompt embeddings


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=16,
        shift_factor=0.1, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    )


def _embeds(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, *EMBEDS, generator=generator), torch.randn(1, 8, generator=generator)


@pytest.fixture(scope="module")
def sd3():
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=8,
        pos_embed_max_size=8,
    ).eval()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_vae(), text_encoder=None,
        tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None,
    )
    prompt, pooled = _embeds()
    kwargs = {"prompt_embeds": prompt, "pooled_prompt_embeds": pooled, "negative_prompt_embeds": 0 * prompt,
              "negative_pooled_prompt_embeds": 0 * pooled, "guidance_scale": 2.0}
    return pipe, kwargs


@pytest.fixture(scope="module")
def flux():
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8, guidance_embeds=False,
        axes_dims_rope=(2, 2, 4),
    ).eval()
    pipe = FluxPipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_vae(),
                        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None)
    prompt, pooled = _embeds()
    return pipe, {"prompt_embeds": prompt, "pooled_prompt_embeds": pooled, "height": 32, "width": 32}


def _pixart(scheduler=None):
    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(
        sample_size=8, num_layers=1, patch_size=2, attention_head_dim=8, num_attention_heads=2, in_channels=4,
        out_channels=8, cross_attention_dim=16, caption_channels=16, use_additional_conditions=False,
    )
    pipe = PixArtAlphaPipeline(tokenizer=None, text_encoder=None, vae=_vae(), transformer=transformer,
                               scheduler=scheduler or diffusers.DPMSolverMultistepScheduler())
    prompt, _ = _embeds()
    mask = torch.ones(1, EMBEDS[0])
    kwargs = {"prompt_embeds": prompt, "prompt_attention_mask": mask, "negative_prompt_embeds": 0 * prompt,
              "negative_prompt_attention_mask": mask, "negative_prompt": None, "use_resolution_binning": False,
              "height": 16, "width": 16, "guidance_scale": 2.0}
    pipe.transformer.eval()
    return pipe, kwargs


@pytest.fixture(scope="module")
def pixart():
    return _pixart()


@pytest.fixture(scope="module")
def dit():
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1, sample_size=8,
        patch_size=2, num_embeds_ada_norm=1000,
    ).eval()  # in training mode its label embedding drops classes at random
    return DiTPipeline(transformer=transformer, vae=_vae(), scheduler=diffusers.DDIMScheduler()), {"guidance_scale": 2.0}


def _batched(kwargs: dict) -> dict:
    """One copy of each prompt embedding per image, as a caller of SD3 or Flux must pass them."""
    return {k: v.expand(BATCH, *v.shape[1:]) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


def _noise(spec) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v).float() for k, v in Antithetic().draw(spec, 0, 0, BATCH, BATCH).items()}


@torch.inference_mode()
def _direct_call(pipe, kwargs, noise, monkeypatch, **call) -> tuple[torch.Tensor, float]:
    """The pipeline's own call with ``latents=`` and its scheduler's draws answered in order; (images, NFE per image)."""
    queue = [noise["steps"][:, k] for k in range(noise["steps"].shape[1])] if "steps" in noise else []

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        drawn = queue.pop(0).reshape(shape)
        return drawn.to(device=device, dtype=dtype)

    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    counted = []
    hook = denoiser.register_forward_pre_hook(
        lambda m, args, kw: counted.append(len(kw.get("hidden_states", kw.get("sample", args[0] if args else None)))),
        with_kwargs=True,
    )
    try:
        with monkeypatch.context() as patch:
            patch.setattr(sys.modules[type(pipe.scheduler).__module__], "randn_tensor", randn_tensor, raising=False)
            images = pipe(**_batched(kwargs), **call, output_type="pt").images
    finally:
        hook.remove()
    assert not queue
    return images, sum(counted) / BATCH


def test_sd3_flow_matching_transformer_equals_the_pipeline(sd3, monkeypatch):
    pipe, kwargs = sd3
    sampler = mcdiff.PipelineSampler(pipe, num_inference_steps=3, **kwargs)
    assert sampler.noise_spec == {"x_T": (4, 8, 8)} and sampler.image_shape == (3, 16, 16)
    assert sampler.nfe == 6  # guidance 2.0 > 1: conditional and unconditional batched, 2 per step
    noise = _noise(sampler.noise_spec)
    with torch.inference_mode():
        ours = sampler.sample(noise)
    ref, nfe = _direct_call(pipe, kwargs, noise, monkeypatch, num_inference_steps=3,
                            latents=noise["x_T"])
    torch.testing.assert_close(ours, ref, atol=TOL, rtol=0)
    assert nfe == sampler.nfe


def test_flux_packed_latents_equal_the_pipeline(flux, monkeypatch):
    """The design's x_T is the unpacked latent (C, h, w); Flux packs it into 2x2 tokens (a permutation)."""
    pipe, kwargs = flux
    sampler = mcdiff.PipelineSampler(pipe, num_inference_steps=3, **kwargs)
    assert sampler.noise_spec == {"x_T": (4, 16, 16)} and sampler.image_shape == (3, 32, 32)
    assert sampler.nfe == 3  # distilled guidance: an embedding, one call per step
    noise = _noise(sampler.noise_spec)
    with torch.inference_mode():
        ours = sampler.sample(noise)
    packed = FluxPipeline._pack_latents(noise["x_T"], BATCH, 4, 16, 16)
    assert packed.shape == (BATCH, 64, 16)
    ref, nfe = _direct_call(pipe, kwargs, noise, monkeypatch, num_inference_steps=3, latents=packed,
                            )
    torch.testing.assert_close(ours, ref, atol=TOL, rtol=0)
    assert nfe == sampler.nfe


PIXART_SCHEDULERS = [
    ("EulerAncestralDiscreteScheduler", {}, True),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, True),
    ("DPMSolverSinglestepScheduler", {}, False),
    ("KDPM2AncestralDiscreteScheduler", {}, True),
    ("LCMScheduler", {}, True),
    ("TCDScheduler", {}, True),
    ("DDPMScheduler", {}, True),
    ("PNDMScheduler", {}, False),
    ("HeunDiscreteScheduler", {}, False),
]


@pytest.mark.parametrize(("name", "config", "stochastic"), PIXART_SCHEDULERS, ids=[c[0] for c in PIXART_SCHEDULERS])
def test_stochastic_and_multi_call_schedulers_inside_a_pipeline(name, config, stochastic, monkeypatch):
    pipe, kwargs = _pixart(getattr(diffusers, name)(**config))
    if name == "TCDScheduler":
        kwargs = {**kwargs, "eta": 0.3}  # TCD's gamma; the pipeline's default eta=0 makes it deterministic
    steps = 4  # PNDM needs 4 or more
    sampler = mcdiff.PipelineSampler(pipe, num_inference_steps=steps, **kwargs)
    assert sampler.stochastic == stochastic
    noise = _noise(sampler.noise_spec)
    with torch.inference_mode():
        ours = sampler.sample(noise)
    ref, nfe = _direct_call(pipe, kwargs, noise, monkeypatch, num_inference_steps=steps, latents=noise["x_T"],
                            )
    torch.testing.assert_close(ours, ref, atol=TOL, rtol=0)
    assert sampler.nfe == nfe == 2 * len(sampler.pipe.scheduler.timesteps)  # guidance: 2 per network step


def test_dit_class_conditional_equals_the_pipeline(dit, monkeypatch):
    pipe, kwargs = dit
    sampler = mcdiff.PipelineSampler(pipe, class_label=3, num_inference_steps=3, **kwargs)
    assert sampler.noise_spec == {"x_T": (4, 8, 8)} and sampler.nfe == 6
    noise = _noise(sampler.noise_spec)
    with torch.inference_mode():
        ours = sampler.sample(noise)
    # DiTPipeline takes no latents=: it draws them with randn_tensor, answered here with the same x_T
    with monkeypatch.context() as patch:
        patch.setattr(sys.modules[type(pipe).__module__], "randn_tensor", lambda shape, **kw: noise["x_T"].clone())
        with torch.inference_mode():
            ref = pipe(class_labels=[3] * BATCH, num_inference_steps=3, output_type="np", **kwargs).images
    torch.testing.assert_close(ours, torch.from_numpy(ref).permute(0, 3, 1, 2), atol=TOL, rtol=0)
    assert sampler.describe()["class_label"] == 3
    with pytest.raises(ValueError, match="class_label=<int> is required"):
        mcdiff.PipelineSampler(pipe, num_inference_steps=3)
    with pytest.raises(ValueError, match="DiTPipeline takes no prompt="):
        mcdiff.PipelineSampler(pipe, prompt="a cat", class_label=3, num_inference_steps=3)


@pytest.mark.parametrize("model", ["sd3", "flux", "pixart", "dit"])
def test_transformer_pipelines_run_through_estimate(model, request):
    pipe, kwargs = request.getfixturevalue(model)
    extra = {"class_label": 1} if model == "dit" else {}
    sampler = mcdiff.PipelineSampler(pipe, num_inference_steps=2, **kwargs, **extra)
    result = mcdiff.estimate(sampler, ["brightness"], ["mc", "amc", "rqmc"], n_evals=16, batch_size=16)
    summary = result["summary"]
    assert list(summary["design"].values) == ["mc", "amc", "rqmc"]
    assert np.isfinite(summary["brightness"].sel(summary="estimate").values).all()
    assert (result["summary"]["nfe"].values == 16 * sampler.nfe).all()
    assert summary.attrs["model"] == type(pipe).__name__


def test_pipeline_noise_mcdiff_cannot_supply_is_refused():
    class GlobalRandomEuler(diffusers.EulerDiscreteScheduler):
        def step(self, model_output, timestep, sample, **kwargs):
            prev, *rest = super().step(model_output, timestep, sample, **{**kwargs, "return_dict": False})
            return (prev + 0.01 * torch.randn_like(sample), *rest)

    pipe, kwargs = _pixart(GlobalRandomEuler())
    with pytest.raises(ValueError, match="PixArtAlphaPipeline with GlobalRandomEuler is not supported: its output"):
        mcdiff.PipelineSampler(pipe, num_inference_steps=2, **kwargs)


def test_a_pipeline_without_a_denoiser_is_refused():
    with pytest.raises(ValueError, match="pipe must be a diffusers pipeline with a unet or transformer"):
        mcdiff.PipelineSampler(object())
