import hashlib
import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

import mcdiff
import mcdiff.training as training
from mcdiff.data import digits
from mcdiff.models import load_model
from mcdiff.samplers.offset import ProbabilisticOffsetSampler, offset_noise_psi

TINY = dict(block_out_channels=(8, 16), batch_size=8, checkpoint_every=2, progress=False)


@pytest.fixture(scope="module")
def data():
    return digits()[:64]


def _weights(path):
    return load_model(path).unet.state_dict()


def test_psi_rises_to_one():
    psi = offset_noise_psi(DDPMScheduler(num_train_timesteps=1000).betas)
    assert psi[-1] == pytest.approx(1.0)
    assert psi[0] < 1e-5
    assert (torch.diff(psi) > 0).all()


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.full((4, 1, 8, 8), float("nan")), "NaN or inf in 4 image"),
        (torch.zeros(4, 8, 8), r"shape \(N, C, H, W\), got shape \(4, 8, 8\)"),
        (torch.zeros(0, 1, 8, 8), "empty"),
        (torch.full((4, 1, 8, 8), 3.0), r"scaled to \[-1, 1\]"),
        (torch.zeros(4, 1, 8, 6), "must be square"),
    ],
)
def test_bad_data_fails_before_any_step(tmp_path, monkeypatch, bad, match):
    def no_step(*args, **kwargs):
        raise AssertionError("a training step ran")

    monkeypatch.setattr(training, "_train_step", no_step)
    with pytest.raises(ValueError, match=match):
        training.train(bad, tmp_path, steps=2, **TINY)
    assert not (tmp_path / training.CHECKPOINT).exists()


def test_bad_settings(tmp_path, data):
    with pytest.raises(ValueError, match="unknown objective 'v'"):
        training.train(data, tmp_path, objective="v", steps=2, **TINY)
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        training.train(data, tmp_path, steps=0, **TINY)


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch, data):
    straight = training.train(data, tmp_path / "straight", steps=5, seed=1, **TINY)

    real_step, calls = training._train_step, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(training, "_train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        training.train(data, tmp_path / "resumed", steps=5, seed=1, **TINY)
    assert torch.load(tmp_path / "resumed" / training.CHECKPOINT, weights_only=True)["state"]["step"] == 2
    monkeypatch.setattr(training, "_train_step", real_step)
    resumed = training.train(data, tmp_path / "resumed", steps=5, seed=1, **TINY)

    assert not (resumed / training.CHECKPOINT).exists()
    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    record = json.loads((resumed / "training.json").read_text())
    assert record["steps"] == 5 and record["seed"] == 1 and np.isfinite(record["final_loss"])


def test_resume_refuses_other_settings(tmp_path, monkeypatch, data):
    real_step, calls = training._train_step, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(training, "_train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        training.train(data, tmp_path, steps=4, **TINY)
    monkeypatch.setattr(training, "_train_step", real_step)
    with pytest.raises(ValueError, match="different settings \\(learning_rate\\)"):
        training.train(data, tmp_path, steps=4, learning_rate=1e-4, **TINY)


@pytest.mark.parametrize("objective", training.OBJECTIVES)
def test_objectives_train_and_load_as_samplers(tmp_path, data, objective):
    path = training.train(data, tmp_path, objective=objective, steps=2, offset_weight=0.5, **TINY)
    sampler = load_model(path, num_inference_steps=4)
    assert isinstance(sampler, ProbabilisticOffsetSampler) == (objective == "probabilistic-offset")
    result = mcdiff.estimate(sampler, ["brightness"], ["mc", "amc"], n_evals=8, progress=False)
    assert np.isfinite(result["summary"]["brightness"].values).all()


def test_probabilistic_offset_sampler_noise_and_antithetic_symmetry():
    """With a zero network every step is linear in (z, xi): partners reflect exactly."""
    scheduler = DDIMScheduler.from_config(training.make_scheduler().config)
    sampler = ProbabilisticOffsetSampler(
        lambda x, t: torch.zeros_like(x), scheduler, offset_weight=0.7,
        num_inference_steps=5, image_shape=(1, 4, 4), clip_output=False,
    )  # fmt: skip
    assert sampler.noise_spec == {"x_T": (1, 4, 4), "offset": (1, 1, 1)}
    z, xi = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 1, 1)
    plus = sampler({"x_T": z, "offset": xi})
    minus = sampler({"x_T": -z, "offset": -xi})
    torch.testing.assert_close(plus + minus, torch.ones_like(plus))
    first_t, x_T, _ = next(sampler.trajectory({"x_T": z, "offset": xi}))
    abar = scheduler.alphas_cumprod[first_t]
    torch.testing.assert_close(x_T, z + (1 - abar).sqrt() * 0.7 * xi)


def test_probabilistic_offset_sampler_with_steps_keeps_offset_weight():
    sampler = ProbabilisticOffsetSampler(
        lambda x, t: torch.zeros_like(x), DDIMScheduler(), offset_weight=0.7, num_inference_steps=8,
        image_shape=(1, 4, 4),
    )
    coarse = sampler.with_steps(2)
    assert (coarse.nfe, coarse.offset_weight) == (2, 0.7)


def test_bad_offset_weight():
    with pytest.raises(ValueError, match="offset_weight must be >= 0, got -1"):
        ProbabilisticOffsetSampler(
            lambda x, t: x, DDIMScheduler(), offset_weight=-1, image_shape=(1, 4, 4)
        )


class _Planted:
    """Unpickling this object runs code: it writes a file (what a planted checkpoint could do)."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_planted_checkpoint_cannot_run_code(tmp_path, data):
    target = tmp_path / "ran"
    planted = {"settings": {}, "payload": _Planted(str(target))}
    torch.save(planted, tmp_path / training.CHECKPOINT)
    with pytest.raises(ValueError, match="holds more than tensors and plain values .* not loaded"):
        training.train(data, tmp_path, steps=2, **TINY)
    assert not target.exists()
    # the same file, loaded the unsafe way, does run code: the test plants a real exploit
    torch.load(tmp_path / training.CHECKPOINT, weights_only=False)
    assert target.exists()


def test_damaged_checkpoint_is_refused_by_name(tmp_path, data):
    (tmp_path / training.CHECKPOINT).write_bytes(b"\x00not a checkpoint")
    with pytest.raises(ValueError, match="checkpoint .* is damaged or .* not loaded"):
        training.train(data, tmp_path, steps=2, **TINY)


def test_attention_unet_and_snapshots_load_as_models(tmp_path):
    images = torch.rand(16, 3, 8, 8) * 2 - 1
    path = training.train(images, tmp_path, steps=4, snapshot_steps=[1, 2], attention_levels=[1],
                          block_out_channels=(8, 16), batch_size=4, progress=False)
    config = json.loads((path / "unet" / "config.json").read_text())
    assert config["down_block_types"] == ["DownBlock2D", "AttnDownBlock2D"]
    assert config["up_block_types"] == ["AttnUpBlock2D", "UpBlock2D"]
    record = json.loads((path / "training.json").read_text())
    assert record["attention_levels"] == [1] and record["trained_steps"] == 4
    assert len(record["loss_per_100_steps"]) == 1
    for step in (1, 2):
        snapshot = path / "snapshots" / f"step-{step:06d}"
        assert json.loads((snapshot / "training.json").read_text())["trained_steps"] == step
        assert load_model(snapshot, num_inference_steps=2).image_shape == (3, 8, 8)
    first, final = _weights(path / "snapshots" / "step-000001"), _weights(path)
    assert not all(torch.equal(first[k], final[k]) for k in final)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(snapshot_steps=[4]), "snapshot_steps must lie in 1..3"),
        (dict(attention_levels=[2]), "attention_levels must be level indices in 0..1"),
        (dict(layers_per_block=0), "layers_per_block must be a positive integer"),
    ],
)
def test_bad_shape_and_snapshot_settings(tmp_path, data, kwargs, match):
    with pytest.raises(ValueError, match=match):
        training.train(data, tmp_path, steps=4, **{**TINY, **kwargs})


def test_a_run_can_start_from_a_trained_model(tmp_path, data):
    """init_from: the saved weights start the run (a step at a tiny rate stays at them, a fresh run does not),
    training.json records the start's steps and weights hash, and a U-Net of another shape is refused."""
    first = training.train(data, tmp_path / "first", steps=3, **TINY)
    more = training.train(data, tmp_path / "more", steps=1, learning_rate=1e-12, seed=1, init_from=first, **TINY)
    fresh = training.train(data, tmp_path / "fresh", steps=1, learning_rate=1e-12, seed=1, **TINY)
    start, after, other = _weights(first), _weights(more), _weights(fresh)
    assert all(torch.allclose(start[k], after[k], atol=1e-6) for k in start)
    assert not all(torch.allclose(start[k], other[k], atol=1e-3) for k in start)
    record = json.loads((more / "training.json").read_text())
    weights = (first / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert record["init_from"] == {"trained_steps": 3, "sha256": hashlib.sha256(weights).hexdigest()}
    with pytest.raises(ValueError, match="U-Net of another shape .*block_out_channels"):
        training.train(data, tmp_path / "wide", steps=1, init_from=first, **{**TINY, "block_out_channels": (8, 24)})
    with pytest.raises(FileNotFoundError, match="holds no unet"):
        training.train(data, tmp_path / "none", steps=1, init_from=tmp_path / "fresh" / "unet", **TINY)
