"""Every common diffusers scheduler under mcdiff's noise: equal to diffusers' loop, mirrored, counted."""

from __future__ import annotations

import sys

import diffusers
import pytest
import torch
from small_models import random_unet_sampler
from diffusers import UNet2DModel

import mcdiff
from mcdiff.designs import Antithetic
from mcdiff.samplers import DiffusionSampler
from mcdiff.samplers.schedulers import SUPPORTED_SCHEDULERS

SHAPE = (1, 8, 8)
BATCH = 4
STEPS = 5
TOL = 1e-5

# (id, class name, config, step kwargs (eta), draws step noise)
CASES = [
    ("ddim", "DDIMScheduler", {}, 0.0, False),
    ("ddim-eta", "DDIMScheduler", {}, 0.7, True),
    ("ddpm", "DDPMScheduler", {}, 0.0, True),
    ("dpm++2m", "DPMSolverMultistepScheduler", {}, 0.0, False),
    ("dpm++2m-sde", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, 0.0, True),
    ("dpm++singlestep", "DPMSolverSinglestepScheduler", {}, 0.0, False),
    ("unipc", "UniPCMultistepScheduler", {}, 0.0, False),
    ("deis", "DEISMultistepScheduler", {}, 0.0, False),
    ("euler", "EulerDiscreteScheduler", {}, 0.0, False),
    ("euler-churn", "EulerDiscreteScheduler", {}, 0.0, True),  # step_kwargs={"s_churn": 1.0}
    ("euler-ancestral", "EulerAncestralDiscreteScheduler", {}, 0.0, True),
    ("heun", "HeunDiscreteScheduler", {}, 0.0, False),
    ("kdpm2", "KDPM2DiscreteScheduler", {}, 0.0, False),
    ("kdpm2-ancestral", "KDPM2AncestralDiscreteScheduler", {}, 0.0, True),
    ("lms", "LMSDiscreteScheduler", {}, 0.0, False),
    ("pndm", "PNDMScheduler", {}, 0.0, False),
    ("lcm", "LCMScheduler", {}, 0.0, True),
    ("tcd", "TCDScheduler", {}, 0.3, True),
    ("edm-euler", "EDMEulerScheduler", {}, 0.0, False),
    ("edm-dpm++", "EDMDPMSolverMultistepScheduler", {}, 0.0, False),
    ("flow-match-euler", "FlowMatchEulerDiscreteScheduler", {}, 0.0, False),
    ("flow-match-euler-sde", "FlowMatchEulerDiscreteScheduler", {"stochastic_sampling": True}, 0.0, True),
]
IDS = [case[0] for case in CASES]


def _scheduler(name: str, config: dict, clip: bool = True):
    cls = getattr(diffusers, name)
    scheduler = cls(**config)
    if not clip and "clip_sample" in scheduler.config:
        scheduler = cls.from_config(scheduler.config, clip_sample=False)
    return scheduler


@pytest.fixture(scope="module")
def unet() -> UNet2DModel:
    return random_unet_sampler(STEPS).unet  # the suite's tiny random-weight UNet (seeded)


class AffineNet(torch.nn.Module):
    """``out(x, t) = 0.3 x + 0.05 flip(x) + 0.1 cos(t / 300) b``: exactly affine in ``x``, any timestep."""

    def __init__(self):
        super().__init__()
        self.register_buffer("bias", torch.linspace(-1, 1, 64, dtype=torch.float64).reshape(SHAPE))

    def forward(self, x, t):
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        return 0.3 * x + 0.05 * x.flip(-1) + 0.1 * torch.cos(t / 300) * self.bias


def _step_kwargs(case_id: str) -> dict:
    return {"s_churn": 1.0} if case_id == "euler-churn" else {}


def _sampler(case, network, clip=True, **kwargs) -> DiffusionSampler:
    case_id, name, config, eta, _ = case
    return DiffusionSampler(network, _scheduler(name, config, clip), num_inference_steps=STEPS, eta=eta,
                            step_kwargs=_step_kwargs(case_id), **kwargs)


def _noise(spec, dtype=torch.float32) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v).to(dtype) for k, v in Antithetic().draw(spec, 0, 0, BATCH, BATCH).items()}


@torch.inference_mode()
def _diffusers_loop(network, scheduler, z, draws, step_kwargs, monkeypatch) -> tuple[torch.Tensor, int]:
    """diffusers' own sampling loop (as its pipelines run it); its randn_tensor draws answered from ``draws``."""
    scheduler = type(scheduler).from_config(scheduler.config)
    scheduler.set_timesteps(STEPS)
    queue = list(draws)

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        drawn = queue.pop(0)
        assert tuple(shape) == tuple(drawn.shape)
        return drawn.to(device=device, dtype=dtype)

    x = getattr(scheduler, "init_noise_sigma", 1.0) * z
    calls = 0
    with monkeypatch.context() as patch:
        patch.setattr(sys.modules[type(scheduler).__module__], "randn_tensor", randn_tensor, raising=False)
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
            out = network(model_input, t)
            calls += 1
            x = scheduler.step(getattr(out, "sample", out), t, x, **step_kwargs).prev_sample
    assert not queue, f"{len(queue)} draws left unused"
    return ((x + 1) / 2).clamp(0, 1), calls


def test_the_tested_schedulers_are_the_supported_ones():
    assert {case[1] for case in CASES} == set(SUPPORTED_SCHEDULERS)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_equals_diffusers_loop_given_the_same_noise(unet, case, monkeypatch):
    sampler = _sampler(case, unet)
    stochastic = case[4]
    assert sampler.stochastic == stochastic
    assert set(sampler.noise_spec) == ({"x_T", "steps"} if stochastic else {"x_T"})
    noise = _noise(sampler.noise_spec)
    draws = [noise["steps"][:, k] for k in range(sampler.noise_spec["steps"][0])] if stochastic else []
    counted = []
    hook = unet.register_forward_pre_hook(lambda module, args: counted.append(1))
    try:
        with torch.inference_mode():
            ours = sampler.sample(noise)
        ours_calls = len(counted)
        ref, ref_calls = _diffusers_loop(unet, sampler.scheduler, noise["x_T"], draws,
                                         {**_step_kwargs(case[0]), **({"eta": case[3]} if case[3] else {})},
                                         monkeypatch)
    finally:
        hook.remove()
    assert torch.isfinite(ours).all() and ours.std() > 0
    torch.testing.assert_close(ours, ref, atol=TOL, rtol=0)
    assert sampler.nfe == ours_calls == ref_calls == sampler.network_calls
    assert sampler.describe()["nfe_per_sample"] == sampler.nfe


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_antithetic_partner_mirrors_about_g0_for_an_affine_network(case):
    sampler = _sampler(case, AffineNet(), clip=False, image_shape=SHAPE, clip_output=False, dtype=torch.float64)
    noise = _noise(sampler.noise_spec, torch.float64)  # rows (0, 1), (2, 3) are antithetic partners
    assert torch.equal(noise["x_T"][1], -noise["x_T"][0])
    with torch.inference_mode():
        images = sampler.sample(noise)
        centre = sampler.sample({k: torch.zeros(1, *s, dtype=torch.float64) for k, s in sampler.noise_spec.items()})
    pair_sum = images[0::2] + images[1::2]
    # some schedulers keep their sigmas in float32: the pair mirrors to float32 precision of the images' scale
    # (measured: at most 1.3e-7 of it, Euler with churn; a non-affine network misses by 1e-2 and more)
    scale = images.abs().max().item()
    torch.testing.assert_close(pair_sum, (2 * centre).expand_as(pair_sum), atol=1e-6 * scale, rtol=0)
    assert (images[0] - centre[0]).abs().max() > 0.01  # the partners are not both at the centre


def test_nfe_counts_every_network_call():
    """Heun and KDPM2 make 2T - 1 calls for T steps, PNDM's Runge-Kutta warm-up 3 more per PRK step."""
    assert mcdiff.load_model("digits", 8, scheduler="HeunDiscreteScheduler").nfe == 15
    assert mcdiff.load_model("digits", 8, scheduler="KDPM2DiscreteScheduler").nfe == 15
    assert mcdiff.load_model("digits", 8, scheduler="DPMSolverMultistepScheduler").nfe == 8
    pndm = mcdiff.load_model("digits", 8, scheduler="PNDMScheduler")
    assert pndm.nfe == len(pndm.scheduler.timesteps) > 8


class GlobalRandomScheduler(diffusers.EulerAncestralDiscreteScheduler):
    """Adds noise from torch's global generator, which mcdiff cannot supply."""

    def step(self, model_output, timestep, sample, **kwargs):
        out = super().step(model_output, timestep, sample, **kwargs)
        out.prev_sample = out.prev_sample + 0.01 * torch.randn_like(sample)
        return out


def test_noise_mcdiff_cannot_supply_is_refused(unet):
    with pytest.raises(ValueError, match="GlobalRandomScheduler is not supported: it draws noise that mcdiff cannot"):
        DiffusionSampler(unet, GlobalRandomScheduler(), num_inference_steps=STEPS)
    with pytest.raises(ValueError, match="DPMSolverSDEScheduler is not supported: it draws its noise from a torchsde"):
        mcdiff.load_model("digits", STEPS, scheduler="DPMSolverSDEScheduler")


def test_draws_that_depend_on_the_data_are_caught(unet):
    sampler = _sampler(CASES[2], unet)  # DDPM
    sampler._probe = type(sampler._probe)(tuple(0 for _ in sampler._probe.draws), sampler._probe.input_scales)
    with pytest.raises(KeyError, match="no noise component 'steps'"), torch.inference_mode():
        sampler.sample(_noise({"x_T": SHAPE}))


@pytest.mark.parametrize("name", ["EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "EDMEulerScheduler"])
def test_diagnostics_run_through_schedulers_that_scale_their_input(name):
    sampler = mcdiff.load_model("digits", 6, scheduler=name, device="cpu")
    traj = mcdiff.trajectory_correlation(sampler, n_pairs=4)
    assert traj.sizes["step"] == sampler.nfe
    sym = mcdiff.antisymmetry(sampler, n_probes=4, n_lambdas=5)
    assert (sym["residual"] >= 0).all() and sym.sizes["timestep"] >= 2
    # at lambda = 1 the probe is the model's own input: its curve equals the trajectory's output
    noise = {k: torch.from_numpy(v).float() for k, v in mcdiff.MonteCarlo().draw(sampler.noise_spec, 0, 0, 4, 4).items()}
    with torch.inference_mode():
        index, (t, x, eps) = next((i, s) for i, s in enumerate(sampler.trajectory(noise))
                                  if float(s[0]) == float(sym["timestep"][1]))
        again = sampler.network(sampler.model_input(x, index), t)
    torch.testing.assert_close(again, eps, atol=1e-6, rtol=0)
