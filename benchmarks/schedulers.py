"""Every supported diffusers scheduler on the bundled digits model: NFE, noise and antithetic efficiency.

For each scheduler configuration of ``tests/test_schedulers.py`` the bundled digits model
(DDPM-trained, epsilon prediction) is loaded with that scheduler at the step count whose
network evaluations per sample come closest to a common budget (``--nfe``, default 20) without
passing it: one-call-per-step schedulers at 20 steps, Heun and KDPM2 (2T - 1 calls) at 10,
PNDM (its Runge-Kutta warm-up adds 9 calls) at 11. MC and antithetic sampling (``amc``)
spend the same ``N`` evaluations, hence the same NFE, on the brightness; a cell is the
antithetic efficiency ``(width_MC / width_AMC)^2`` averaged over seeds ± its standard error.
EDM and flow-matching schedulers need a network trained for their parametrisation (EDM
preconditioning, velocity prediction), which the bundled model is not: they are listed, not run.

    python benchmarks/schedulers.py -n 256 --seeds 3      # the README table (about 5 min on 2 shared cores)
    python benchmarks/schedulers.py -n 128 --seeds 1      # a quick check
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

import mcdiff
from mcdiff.results import mcdiff_version

CONFIGS = (
    ("DDIM", "DDIMScheduler", {}),
    ("DDIM eta=1", "DDIMScheduler", {"eta": 1.0}),
    ("DDPM", "DDPMScheduler", {}),
    ("DPM-Solver++ 2M", "DPMSolverMultistepScheduler", {}),
    ("DPM-Solver++ 2M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    ("DPM-Solver++ singlestep", "DPMSolverSinglestepScheduler", {}),
    ("UniPC", "UniPCMultistepScheduler", {}),
    ("DEIS", "DEISMultistepScheduler", {}),
    ("Euler", "EulerDiscreteScheduler", {}),
    ("Euler s_churn=1", "EulerDiscreteScheduler", {"step_kwargs": {"s_churn": 1.0}}),
    ("Euler ancestral", "EulerAncestralDiscreteScheduler", {}),
    ("Heun", "HeunDiscreteScheduler", {}),
    ("KDPM2", "KDPM2DiscreteScheduler", {}),
    ("KDPM2 ancestral", "KDPM2AncestralDiscreteScheduler", {}),
    ("LMS", "LMSDiscreteScheduler", {}),
    ("PNDM", "PNDMScheduler", {}),
    ("LCM", "LCMScheduler", {}),
    ("TCD gamma=0.3", "TCDScheduler", {"eta": 0.3}),
    ("EDM Euler", "EDMEulerScheduler", None),
    ("EDM DPM-Solver++", "EDMDPMSolverMultistepScheduler", None),
    ("FlowMatch Euler", "FlowMatchEulerDiscreteScheduler", None),
)
"""(label, scheduler class, settings); settings ``None``: not run on the bundled model."""


def sampler_at_budget(name: str, settings: dict, budget: int) -> mcdiff.DiffusionSampler:
    """The bundled model with ``name`` at the most steps whose NFE per sample is at most ``budget``."""
    config = {k: v for k, v in settings.items() if k not in ("eta", "step_kwargs")}
    kwargs = {k: v for k, v in settings.items() if k in ("eta", "step_kwargs")}
    best = None
    for steps in range(1, budget + 1):
        try:
            sampler = mcdiff.load_model("digits", steps, scheduler=name, device="cpu", **kwargs)
        except ValueError:  # too few steps for this scheduler (PNDM needs 4)
            continue
        if config:
            sampler = mcdiff.DiffusionSampler(
                sampler.unet, type(sampler.scheduler).from_config(sampler.scheduler.config, **config),
                **{**sampler.settings(), "num_inference_steps": steps},
            )
        if sampler.nfe > budget:
            break
        best = sampler
    return best


def efficiency(sampler: mcdiff.DiffusionSampler, n_evals: int, seeds: int) -> tuple[float, float]:
    """Mean and standard error over seeds of ``(width_MC / width_AMC)^2`` for brightness."""
    gains = []
    for seed in range(seeds):
        result = mcdiff.estimate(sampler, ["brightness"], ["mc", "amc"], n_evals=n_evals,
                                 batch_size=256, seed=seed)
        width = result["summary"]["brightness"].sel(summary="ci_width")
        gains.append(float(width.sel(design="mc")) ** 2 / float(width.sel(design="amc")) ** 2)
    gains = np.array(gains)
    return float(gains.mean()), float(gains.std(ddof=1) / np.sqrt(len(gains))) if len(gains) > 1 else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--n-evals", type=int, default=1024, help="evaluations per design and seed")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--nfe", type=int, default=20, help="network evaluations per sample to match")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.time()
    header = "| scheduler | class | supported | stochastic | steps | NFE | NFE per step | antithetic efficiency |"
    rows = [header, "|---|---|---|---|---|---|---|---|"]
    for label, name, settings in CONFIGS:
        if settings is None:
            sampler = mcdiff.load_model("digits", args.nfe, scheduler=name, device="cpu")
            rows.append(f"| {label} | {name} | yes | {'yes' if sampler.stochastic else 'no'} | – | – | "
                        f"{sampler.nfe / args.nfe:g} | n/a: needs a network trained for it |")
            continue
        sampler = sampler_at_budget(name, settings, args.nfe)
        mean, se = efficiency(sampler, args.n_evals, args.seeds)
        per_step = sampler.nfe / sampler.num_inference_steps
        rows.append(
            f"| {label} | {name} | yes | {'yes' if sampler.stochastic else 'no'} | {sampler.num_inference_steps} "
            f"| {sampler.nfe} | {per_step:.3g} | {mean:.2f} ± {se:.2f} |"
        )
        print(rows[-1], flush=True)
    rows.append("| DPM-Solver SDE | DPMSolverSDEScheduler | no: torchsde Brownian tree | yes | | | | |")
    table = "\n".join(rows)
    elapsed = time.time() - start
    command = "python benchmarks/schedulers.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    text = (
        f"# Schedulers on the bundled digits model\n\n{table}\n\n"
        f"N = {args.n_evals} evaluations per design, {args.seeds} seeds, NFE budget {args.nfe}; "
        f"efficiency = (width_MC / width_AMC)^2 at equal N (equal NFE), mean ± SE over seeds.\n\n"
        f"Command: `{command}`; wall time {elapsed:.0f} s; mcdiff {mcdiff_version()}.\n"
    )
    print(text)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "schedulers.md").write_text(text)


if __name__ == "__main__":
    main()
