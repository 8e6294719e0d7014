"""Model adapters: mcdiff's samplers equal diffusers' own loops given the same noise."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, PNDMScheduler, UNet2DModel

import mcdiff
from mcdiff.designs import Antithetic
from mcdiff.samplers import DiffusionSampler, GaussianSampler
from mcdiff.samplers.gaussian import GaussianScore

SHAPE = (1, 8, 8)
BATCH = 4
TOL = 1e-5


@pytest.fixture(scope="module")
def unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=SHAPE[1],
        in_channels=SHAPE[0],
        out_channels=SHAPE[0],
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    ).eval()


def _antithetic_noise(spec, n=BATCH, seed=0) -> dict[str, torch.Tensor]:
    draws = Antithetic().draw(spec, seed, 0, n, n)
    return {name: torch.from_numpy(z).float() for name, z in draws.items()}


@torch.inference_mode()
def _diffusers_loop(unet, scheduler, steps, x, step_kwargs) -> torch.Tensor:
    """The reference: ``unet`` + ``scheduler.step``, as diffusers' pipelines run it."""
    scheduler.set_timesteps(steps)
    for i, t in enumerate(scheduler.timesteps):
        eps = unet(x, t).sample
        x = scheduler.step(eps, t, x, **step_kwargs(i)).prev_sample
    return ((x + 1) / 2).clamp(0, 1)


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_equals_diffusers_loop(unet, eta):
    scheduler = DDIMScheduler(num_train_timesteps=100)
    sampler = DiffusionSampler(unet, scheduler, num_inference_steps=5, eta=eta)
    noise = _antithetic_noise(sampler.noise_spec)
    assert set(noise) == ({"x_T", "steps"} if eta > 0 else {"x_T"})
    with torch.inference_mode():
        ours = sampler.sample(noise)
    ref = _diffusers_loop(
        unet,
        scheduler,
        5,
        noise["x_T"],
        lambda i: {"eta": eta, "variance_noise": noise["steps"][:, i] if eta else None},
    )
    assert ours.shape == (BATCH, *SHAPE)
    torch.testing.assert_close(ours, ref, atol=TOL, rtol=0)


@pytest.mark.parametrize(
    "config",
    [
        {},  # diffusers' defaults: variance_type="fixed_small", clip_sample=True
        {"variance_type": "fixed_large", "clip_sample": False, "steps_offset": 1},
        {"prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    ],
)
def test_ddpm_equals_ddpm_scheduler_step(unet, config):
    scheduler = DDPMScheduler(num_train_timesteps=100, **config)
    sampler = DiffusionSampler(unet, scheduler, num_inference_steps=5)
    sampler.scheduler.set_timesteps(5)
    # DDPMScheduler.step draws its noise from `generator` only when t > 0: record those draws.
    noisy = int((sampler.scheduler.timesteps > 0).sum())
    assert sampler.noise_spec == {"x_T": SHAPE, "steps": (noisy, *SHAPE)}
    noise = _antithetic_noise(sampler.noise_spec)
    generator, recorder = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for k in range(noisy):
        noise["steps"][:, k] = torch.randn((BATCH, *SHAPE), generator=recorder)
    with torch.inference_mode():
        ours = sampler.sample(noise)
    ref = _diffusers_loop(unet, scheduler, 5, noise["x_T"], lambda i: {"generator": generator})
    torch.testing.assert_close(ours, ref, atol=TOL, rtol=0)


def _brightness_pairs(sampler: DiffusionSampler, n_pairs: int = 64) -> np.ndarray:
    noise = {
        name: torch.from_numpy(z)
        for name, z in Antithetic().draw(sampler.noise_spec, 3, 0, 2 * n_pairs, 2 * n_pairs).items()
    }
    with torch.inference_mode():
        images = sampler.sample(noise)
    return mcdiff.brightness(images).reshape(n_pairs, 2)


def _gaussian_ddpm() -> DiffusionSampler:
    scheduler = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    mean, std = torch.full(SHAPE, 0.4, dtype=torch.float64), torch.full(SHAPE, 0.15, dtype=torch.float64)
    score = GaussianScore(2 * mean - 1, 2 * std, scheduler.alphas_cumprod)
    return DiffusionSampler(
        score, scheduler, num_inference_steps=10, image_shape=SHAPE, clip_output=False, dtype=torch.float64
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: GaussianSampler(image_shape=SHAPE, num_inference_steps=10),
        lambda: GaussianSampler(image_shape=SHAPE, num_inference_steps=10, eta=1.0),
        _gaussian_ddpm,
    ],
    ids=["ddim", "ddim-eta1", "ddpm"],
)
def test_negated_noise_path_is_exact_antithetic_partner(make):
    """On the affine (Gaussian) score every diffusers step is affine: corr(f(z), f(-z)) = -1."""
    sampler = make()
    pairs = _brightness_pairs(sampler)
    assert np.corrcoef(pairs.T)[0, 1] == pytest.approx(-1.0, abs=1e-10)
    centre = float(
        mcdiff.brightness(
            sampler.sample(
                {k: torch.zeros(1, *s, dtype=torch.float64) for k, s in sampler.noise_spec.items()}
            )
        )[0]
    )
    np.testing.assert_allclose(pairs.mean(axis=1), centre, atol=1e-10)
    assert pairs.std() > 0.01


def test_unsupported_scheduler_names_the_supported_ones(unet):
    with pytest.raises(ValueError, match="DPMSolverSDEScheduler is not supported: it draws its noise from a torchsde"):
        mcdiff.load_model("digits", 4, scheduler="DPMSolverSDEScheduler")
    with pytest.raises(ValueError, match="scheduler Bogus is not a diffusers scheduler.*supported: DDIMScheduler, DDPM"):
        mcdiff.load_model("digits", 4, scheduler="Bogus")


@pytest.mark.parametrize(
    "scheduler", [DDIMScheduler(num_train_timesteps=20), DDPMScheduler(num_train_timesteps=20)]
)
def test_steps_larger_than_training_steps(unet, scheduler):
    with pytest.raises(ValueError, match=r"num_inference_steps=21 must be in \[1, 20\]"):
        DiffusionSampler(unet, scheduler, num_inference_steps=21)


@pytest.mark.parametrize(
    ("config", "eta", "match"),
    [
        ({}, 0.5, "eta=0.5 applies to schedulers whose step.. takes eta .*DDPMScheduler.step has none"),
        (
            {"variance_type": "learned_range"},
            0.0,
            "scheduler DDPMScheduler cannot be driven by mcdiff: a dry run of its step.. with a zero network failed",
        ),
    ],
)
def test_ddpm_settings_that_cannot_run_are_refused(unet, config, eta, match):
    with pytest.raises(ValueError, match=match):
        DiffusionSampler(unet, DDPMScheduler(**config), num_inference_steps=5, eta=eta)


def _recording_sampler(batches: list[int]) -> mcdiff.FunctionSampler:
    def squash(noise):
        batches.append(len(noise["x_T"]))
        return torch.sigmoid(noise["x_T"] + 0.3 * noise["steps"].sum(1))

    return mcdiff.FunctionSampler(squash, {"x_T": SHAPE, "steps": (3, *SHAPE)}, SHAPE, nfe=3)


def test_function_sampler_runs_in_the_runner_without_splitting_pairs():
    batches: list[int] = []
    odd = mcdiff.estimate(_recording_sampler(batches), ["brightness"], ["amc"], n_evals=16, batch_size=5)
    assert batches == [4, 4, 4, 4]
    whole = mcdiff.estimate(_recording_sampler([]), ["brightness"], ["amc"], n_evals=16, batch_size=16)
    np.testing.assert_array_equal(odd["draws"]["brightness"].values, whole["draws"]["brightness"].values)
    assert odd["summary"].attrs["function"] == "squash"
    assert odd["summary"].attrs["nfe_per_sample"] == 3


def test_batch_size_that_cannot_hold_a_pair():
    with pytest.raises(ValueError, match="batch_size=1 cannot hold a pair of design 'amc'"):
        mcdiff.estimate(_recording_sampler([]), ["brightness"], ["mc", "amc"], n_evals=16, batch_size=1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_shape": (8, 8)}, r"image_shape must be a tuple of 3 positive integers, got \(8, 8\)"),
        ({"noise_spec": {}}, "noise_spec must name at least one noise component"),
        ({"noise_spec": {"x_T": (1, 0, 8)}}, r"noise_spec\['x_T'\] must be a tuple of positive integers"),
        ({"nfe": 0}, "nfe must be a positive integer, got 0"),
    ],
)
def test_function_sampler_checks_its_contract(kwargs, match):
    args = {"fn": torch.sigmoid, "noise_spec": {"x_T": SHAPE}, "image_shape": SHAPE, **kwargs}
    with pytest.raises(ValueError, match=match):
        mcdiff.FunctionSampler(**args)


def test_from_pretrained_pipeline_directory(unet, tmp_path):
    from diffusers import DDPMPipeline

    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=100)).save_pretrained(tmp_path)
    assert (tmp_path / "model_index.json").is_file()
    loaded = DiffusionSampler.from_pretrained(tmp_path, num_inference_steps=4, device="cpu")
    in_memory = DiffusionSampler(unet, DDPMScheduler(num_train_timesteps=100), num_inference_steps=4)
    assert loaded.noise_spec == in_memory.noise_spec == {"x_T": SHAPE, "steps": (3, *SHAPE)}  # t = 0 adds none
    noise = _antithetic_noise(loaded.noise_spec)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.sample(noise), in_memory.sample(noise), atol=TOL, rtol=0)
    as_ddim = DiffusionSampler.from_pretrained(tmp_path, num_inference_steps=4, scheduler="DDIMScheduler")
    assert type(as_ddim.scheduler).__name__ == "DDIMScheduler"
    assert as_ddim.noise_spec == {"x_T": SHAPE}


def test_from_pretrained_unet_and_scheduler_folders(unet, tmp_path):
    unet.save_pretrained(tmp_path / "unet")
    DDIMScheduler(num_train_timesteps=100).save_pretrained(tmp_path / "scheduler")
    loaded = DiffusionSampler.from_pretrained(
        tmp_path, num_inference_steps=4, device="cpu", dtype=torch.float64
    )
    assert loaded.dtype == torch.float64 and next(loaded.unet.parameters()).dtype == torch.float64
    assert loaded.device == torch.device("cpu")


def test_from_pretrained_refuses_what_it_cannot_run(unet, tmp_path):
    with pytest.raises(ValueError, match="is not a diffusers model directory: expected model_index.json"):
        DiffusionSampler.from_pretrained(tmp_path)
    unet.save_pretrained(tmp_path / "unet")
    PNDMScheduler(num_train_timesteps=100).save_pretrained(tmp_path / "scheduler")
    assert DiffusionSampler.from_pretrained(tmp_path, num_inference_steps=4).nfe == 13  # 4 + 3 x 3 (PRK warm-up)
    with pytest.raises(ValueError, match="scheduler RePaintScheduler is not supported: it is an inpainting"):
        DiffusionSampler.from_pretrained(tmp_path, scheduler="RePaintScheduler")
    with pytest.raises(ValueError, match="num_inference_steps=101 must be in"):
        DiffusionSampler.from_pretrained(tmp_path, num_inference_steps=101, scheduler="DDIMScheduler")


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    """A randomly initialised StableDiffusionPipeline from tiny configs (latents 4x8x8, images 3x16x16)."""
    transformers = pytest.importorskip("transformers")
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel

    words = tmp_path_factory.mktemp("tokenizer")
    vocab = {
        "<|startoftext|>": 0,
        "<|endoftext|>": 1,
        "a</w>": 2,
        "a": 3,
        "t</w>": 4,
        "c": 5,
        "at</w>": 6,
        "cat</w>": 7,
    }
    (words / "vocab.json").write_text(json.dumps(vocab))
    (words / "merges.txt").write_text("#version: 0.2\na t</w>\nc at</w>\n")
    tokenizer = transformers.CLIPTokenizer(
        str(words / "vocab.json"), str(words / "merges.txt"), model_max_length=16
    )
    torch.manual_seed(0)
    text_encoder = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )
    scheduler = DDIMScheduler(num_train_timesteps=100, clip_sample=False, steps_offset=1)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def test_pipeline_sampler_equals_a_direct_pipeline_call(tiny_sd):
    sampler = mcdiff.PipelineSampler(tiny_sd, prompt="a cat", guidance_scale=3.0, num_inference_steps=3)
    assert sampler.noise_spec == {"x_T": (4, 8, 8)}
    assert sampler.image_shape == (3, 16, 16)
    assert sampler.nfe == 6
    noise = _antithetic_noise(sampler.noise_spec)
    with torch.inference_mode():
        ours = sampler.sample(noise)
        ref = tiny_sd(
            ["a cat"] * BATCH,
            latents=noise["x_T"],
            guidance_scale=3.0,
            num_inference_steps=3,
            output_type="np",
        ).images
    assert ours.shape == (BATCH, 3, 16, 16) and 0 <= ours.min() and ours.max() <= 1
    torch.testing.assert_close(ours, torch.from_numpy(ref).permute(0, 3, 1, 2), atol=TOL, rtol=0)
    result = mcdiff.estimate(sampler, ["brightness"], ["amc"], n_evals=4, batch_size=4)
    assert result["summary"].attrs["prompt"] == "a cat"


def test_pipeline_sampler_refuses_what_it_cannot_run(tiny_sd, tmp_path):
    with pytest.raises(ValueError, match="takes no class_labels|is not class-conditional"):
        mcdiff.PipelineSampler(tiny_sd, prompt="a cat", num_inference_steps=3, class_label=3)
    with pytest.raises(ValueError, match=r"call arguments \['latents'\] are set by PipelineSampler"):
        mcdiff.PipelineSampler(tiny_sd, prompt="a cat", num_inference_steps=3, latents=None)
    with pytest.raises(ValueError, match="num_inference_steps=200 must be in"):
        mcdiff.PipelineSampler(tiny_sd, prompt="a cat", num_inference_steps=200)
    tiny_sd.unet.save_pretrained(tmp_path / "unet")
    tiny_sd.scheduler.save_pretrained(tmp_path / "scheduler")
    with pytest.raises(ValueError, match="holds a UNet2DConditionModel.*use PipelineSampler"):
        DiffusionSampler.from_pretrained(tmp_path)
