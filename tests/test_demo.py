import json

import numpy as np
import pytest

import mcdiff
from mcdiff.cli import main
from mcdiff.models import BUNDLED, bundled_path
from mcdiff.results import load_result


def test_bundled_model_ships_with_its_training_record():
    path = bundled_path("digits")
    record = json.loads((path / "training.json").read_text())
    assert record["command"].startswith("mcdiff train --data digits")
    assert {"seed", "objective", "steps", "final_loss"} <= set(record)
    assert (path / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size < 8e6
    sampler = mcdiff.bundled_model(num_inference_steps=5)
    assert sampler.image_shape == (1, 8, 8) and sampler.nfe == 5


def test_unknown_bundled_model():
    with pytest.raises(ValueError, match=f"unknown bundled model 'cifar'; bundled: {', '.join(BUNDLED)}"):
        mcdiff.bundled_model("cifar")


def test_demo_runs_end_to_end(tmp_path, capsys):
    output, figure = tmp_path / "demo.nc", tmp_path / "demo.png"
    assert main(["demo", "-n", "64", "--steps", "4", "--pairs", "3", "-o", str(output), "--figure", str(figure)]) == 0
    printed = capsys.readouterr().out
    assert "brightness" in printed and "pixel_mean (mean of 64)" in printed and "amc" in printed
    assert figure.stat().st_size > 0
    result = load_result(output)
    summary = result["summary"]
    assert list(summary["design"].values) == ["mc", "amc", "rqmc"]
    assert np.isfinite(summary["brightness"].sel(summary="estimate")).all()


def test_estimate_accepts_the_bundled_model(tmp_path):
    output = tmp_path / "r.nc"
    argv = ["estimate", "--model", "digits", "--steps", "3", "-n", "32", "--designs", "mc", "amc", "-o", str(output)]
    assert main(argv) == 0 and output.exists()


def test_load_model_resolves_names_and_refuses_the_rest(tmp_path):
    ddpm = mcdiff.load_model("gaussian", 6, scheduler="DDPMScheduler")
    assert isinstance(ddpm, mcdiff.GaussianSampler) and set(ddpm.noise_spec) == {"x_T", "steps"}
    assert type(mcdiff.load_model("digits", 5).scheduler).__name__ == "DDIMScheduler"
    with pytest.raises(ValueError, match="model must be 'gaussian', 'mixture', a bundled model \\(digits, photos\\) or a diffusers"):
        mcdiff.load_model(tmp_path / "missing")
