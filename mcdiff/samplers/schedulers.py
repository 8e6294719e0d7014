"""Which diffusers schedulers mcdiff drives, and what one run of each costs and draws.

Any diffusers scheduler with a ``step()`` runs under mcdiff's noise (see
:mod:`mcdiff.samplers.scheduler_noise`) if everything random in it is drawn by
``randn_tensor``. :func:`probe_schedule` finds out by a dry run: it steps the scheduler
with a zero network, counts the network calls (Heun-type and PNDM schedulers make more
than one per requested step) and the noise draws at each of them, records how each step
scales the model's input, and repeats the run under another global torch seed: a scheduler
whose output then changes draws noise mcdiff cannot supply, and is refused.
"""

from __future__ import annotations

import copy
import inspect
import json
from dataclasses import dataclass

import diffusers
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from mcdiff.samplers.scheduler_noise import NoiseSupply, supplied_noise

SUPPORTED_SCHEDULERS = (
    "DDIMScheduler",
    "DDPMScheduler",
    "DEISMultistepScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "EDMDPMSolverMultistepScheduler",
    "EDMEulerScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "FlowMatchEulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "LCMScheduler",
    "LMSDiscreteScheduler",
    "PNDMScheduler",
    "TCDScheduler",
    "UniPCMultistepScheduler",
)
"""Schedulers whose mcdiff runs ``tests/test_schedulers.py`` checks against diffusers' own loop."""

REFUSED_SCHEDULERS = {
    "DPMSolverSDEScheduler": "draws its noise from a torchsde Brownian tree, not through randn_tensor",
    "RePaintScheduler": "is an inpainting scheduler: its step() needs original_image and mask",
    "VQDiffusionScheduler": "samples discrete latent tokens, not Gaussian noise",
    "ScoreSdeVeScheduler": "has no step(); it steps through step_pred() and step_correct()",
}
"""Schedulers refused by name, with the reason."""


def _supported_text() -> str:
    return f"supported: {', '.join(SUPPORTED_SCHEDULERS)}"


def scheduler_class(name: str) -> type[SchedulerMixin]:
    """The diffusers scheduler class called ``name``; ``ValueError`` if there is none or it is refused."""
    if name in REFUSED_SCHEDULERS:
        raise ValueError(f"scheduler {name} is not supported: it {REFUSED_SCHEDULERS[name]}; {_supported_text()}")
    cls = getattr(diffusers, str(name), None) if str(name).endswith("Scheduler") else None
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin) and callable(getattr(cls, "step", None))):
        raise ValueError(f"scheduler {name} is not a diffusers scheduler with a step(); {_supported_text()}")
    return cls


def check_scheduler(scheduler: SchedulerMixin) -> type[SchedulerMixin]:
    """The class of ``scheduler``: any diffusers ``SchedulerMixin`` with a ``step()`` not refused by name.

    Whether its noise can be supplied is then found by :func:`probe_schedule`.
    """
    name = type(scheduler).__name__
    if not (isinstance(scheduler, SchedulerMixin) and callable(getattr(scheduler, "step", None))):
        raise ValueError(f"scheduler must be a diffusers scheduler with a step(), got {name}; {_supported_text()}")
    if name in REFUSED_SCHEDULERS:
        scheduler_class(name)  # raises, with the reason
    return type(scheduler)


def step_parameters(scheduler: SchedulerMixin) -> set[str]:
    """Names of the parameters of ``scheduler.step``."""
    return set(inspect.signature(scheduler.step).parameters)


def scale_model_input(scheduler: SchedulerMixin, sample: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``scheduler.scale_model_input(sample, t)``, or ``sample`` for schedulers without one (flow matching)."""
    scale = getattr(scheduler, "scale_model_input", None)
    return sample if scale is None else scale(sample, t)


def init_noise_sigma(scheduler: SchedulerMixin) -> float:
    """Standard deviation of the scheduler's prior, ``x_T = sigma z`` (1 for flow matching)."""
    return float(getattr(scheduler, "init_noise_sigma", 1.0))


@dataclass(frozen=True)
class ScheduleProbe:
    """What one run of a scheduler does, per sample.

    Attributes
    ----------
    draws : tuple of int
        Step-noise draws at each network call (``len(draws)`` calls).
    input_scales : tuple of float
        ``c_i`` with ``scale_model_input(x, t_i) = c_i x`` at call ``i`` (1 where the
        scheduler does not scale).
    """

    draws: tuple[int, ...]
    input_scales: tuple[float, ...]

    @property
    def network_calls(self) -> int:
        """Network evaluations of one sample."""
        return len(self.draws)

    @property
    def n_draws(self) -> int:
        """Step-noise draws of one sample (the length of the ``"steps"`` component)."""
        return sum(self.draws)


def probe_schedule(
    scheduler: SchedulerMixin,
    sample_shape: tuple[int, ...],
    output_shape: tuple[int, ...],
    step_kwargs: dict,
) -> ScheduleProbe:
    """Dry-run ``scheduler`` (after ``set_timesteps``) with a zero network; cached per configuration.

    Parameters
    ----------
    scheduler : diffusers scheduler
        Not modified (a copy is stepped).
    sample_shape, output_shape : tuple of int
        One sample's ``x_t`` and the network's output (twice the channels for a network
        that also predicts its variance).
    step_kwargs : dict
        Extra arguments of every ``step()`` call (``eta``).

    Raises
    ------
    ValueError
        If the dry run fails, a draw is not of the sample's shape, or the output depends on
        torch's global generator (noise that mcdiff cannot supply).
    """
    sample_shape, output_shape = tuple(sample_shape), tuple(output_shape)
    key = json.dumps(
        [type(scheduler).__name__, scheduler.to_json_string(), [float(t) for t in scheduler.timesteps],
         sample_shape, output_shape, sorted(step_kwargs.items())]
    )
    if key not in _PROBES:
        _PROBES[key] = _probe(scheduler, sample_shape, output_shape, step_kwargs)
    return _PROBES[key]


_PROBES: dict[str, ScheduleProbe] = {}


def _probe(scheduler, sample_shape, output_shape, step_kwargs) -> ScheduleProbe:
    name = type(scheduler).__name__
    runs = []
    for seed in (0, 1):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                runs.append(_dry_run(scheduler, sample_shape, output_shape, step_kwargs))
            except Exception as err:
                raise ValueError(
                    f"scheduler {name} cannot be driven by mcdiff: a dry run of its step() with a zero network "
                    f"failed ({type(err).__name__}: {err}); {_supported_text()}"
                ) from err
    (x0, probe, shapes), (x1, _, _) = runs
    if not torch.equal(x0, x1):
        raise ValueError(
            f"scheduler {name} is not supported: it draws noise that mcdiff cannot supply (its output depends "
            f"on torch's global generator, not on randn_tensor draws); {_supported_text()}"
        )
    wrong = sorted({s for s in shapes if s != (1, *sample_shape)})
    if wrong:
        raise ValueError(
            f"scheduler {name} draws noise of shape {wrong[0][1:]}, not of the sample's {sample_shape}; "
            f"mcdiff cannot supply it"
        )
    return probe


def _dry_run(scheduler, sample_shape, output_shape, step_kwargs):
    s = copy.deepcopy(scheduler)
    supply = NoiseSupply()
    ones = torch.ones(1, *sample_shape)
    x = init_noise_sigma(s) * torch.linspace(-1, 1, ones.numel()).reshape(ones.shape)
    draws, scales = [], []
    for t in s.timesteps:
        scales.append(float(scale_model_input(s, ones, t).flatten()[0]))
        scale_model_input(s, x, t)
        before = supply.step_draws
        with supplied_noise([type(s)], supply):
            x = s.step(torch.zeros(1, *output_shape), t, x, **step_kwargs).prev_sample
        draws.append(supply.step_draws - before)
    return x, ScheduleProbe(tuple(draws), tuple(scales)), supply.step_shapes
