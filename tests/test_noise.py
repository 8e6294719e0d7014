"""The noise layer: Philox4x32-10 known answers, its normals, and noise drawn step by step.

Statistical tests use fixed seeds, so they pass or fail deterministically; each states the
chance that a correct generator would fail it.
"""

import math
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from scipy import stats

import mcdiff
import mcdiff.noise.chunks
from mcdiff.blocks import evaluate_design
from mcdiff.designs import Antithetic, MonteCarlo, SobolRQMC
from mcdiff.functionals import pixel_mean
from mcdiff.noise import (
    Noise,
    TensorNoise,
    component_id,
    key_words,
    philox4x32,
    standard_normal,
    stream_keys,
)

# Random123's kat_vectors for philox4x32_10: counter (4 words), key (2 words), output (4 words)
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]
SPEC = {"x_T": (1, 4, 4), "steps": (5, 1, 4, 4)}
DESIGNS = [
    MonteCarlo(),
    Antithetic(),
    SobolRQMC(replicates=2),
    SobolRQMC(replicates=2, antithetic=True),
    SobolRQMC(replicates=2, max_dim=20),  # DCT basis, Sobol' on 20 of 96 coordinates
    SobolRQMC(replicates=2, antithetic=True, max_dim=20),
]
IDS = [repr(d) for d in DESIGNS]
CPU = torch.device("cpu")


def words(values) -> tuple[torch.Tensor, ...]:
    return tuple(torch.tensor(v, dtype=torch.int64) for v in values)


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_philox_matches_the_published_known_answers(counter, key, expected):
    out = philox4x32(words(counter), words(key))
    assert [int(w) for w in out] == list(expected)


def test_int64_products_wrap_to_the_exact_64_bit_product():
    """What philox4x32 relies on: ``a * M`` in int64 holds the unsigned product's 64 bits."""
    rng = np.random.default_rng(0)
    a = np.concatenate([rng.integers(0, 2**32, 1000), [0, 1, 2**32 - 1]])
    for m in (0xD2511F53, 0xCD9E8D57):
        p = torch.from_numpy(a) * m
        product = [int(x) * m for x in a]
        assert ((p >> 32) & 0xFFFFFFFF).tolist() == [q >> 32 for q in product]
        assert (p & 0xFFFFFFFF).tolist() == [q & 0xFFFFFFFF for q in product]


def test_normals_are_standard_normal_and_independent_across_streams_steps_and_positions():
    """64 streams x 8 frames x 1000 values.

    KS test of all 512,000 values, and of each stream's and each frame's values, at
    alpha = 1e-4 each (72 tests: false-failure rate < 0.8%); correlations between adjacent
    streams, adjacent frames and adjacent positions within 5 SE (SE = 1/sqrt(pairs);
    three 5-SE checks: < 1e-5).
    """
    z = standard_normal(key_words(stream_keys(0, np.arange(64)), CPU), 7, torch.arange(8), 1000, torch.float64).numpy()
    assert stats.kstest(z.ravel(), "norm").pvalue > 1e-4
    for per_stream in z:
        assert stats.kstest(per_stream.ravel(), "norm").pvalue > 1e-4
    for f in range(8):
        assert stats.kstest(z[:, f].ravel(), "norm").pvalue > 1e-4
    for a, b in ((z[:-1], z[1:]), (z[:, :-1], z[:, 1:]), (z[..., :-1], z[..., 1:])):
        r = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        assert abs(r) < 5 / math.sqrt(a.size), r


def test_raw_words_are_uniform_and_pairs_of_words_fill_the_square():
    """Chi-square of the top 8 bits of 400,000 words (255 dof) and of 16x16 cells of
    consecutive word pairs (255 dof), each at alpha = 1e-4: false-failure rate 2e-4."""
    k0, k1 = (k[:, None] for k in key_words(stream_keys(1, np.arange(100)), CPU))
    c0 = torch.arange(1000)[None, :]
    zero = torch.zeros((), dtype=torch.int64)
    out = torch.stack(philox4x32((c0, zero, zero, zero), (k0, k1))).numpy()
    top = (out >> 24).ravel()
    assert stats.chisquare(np.bincount(top, minlength=256)).pvalue > 1e-4
    cells = (out[0] >> 28) * 16 + (out[1] >> 28)
    assert stats.chisquare(np.bincount(cells.ravel(), minlength=256)).pvalue > 1e-4


def test_float32_normals_are_the_float64_ones_rounded():
    key = key_words(stream_keys(3, np.arange(16)), CPU)
    z64 = standard_normal(key, 1, torch.arange(3), 50, torch.float64)
    z32 = standard_normal(key, 1, torch.arange(3), 50, torch.float32)
    assert z32.dtype == torch.float32
    np.testing.assert_allclose(z32.double().numpy(), z64.numpy(), rtol=1e-5, atol=1e-5)


def test_stream_keys_differ_by_seed_and_every_index_word():
    keys = {int(k) for s in range(3) for k in stream_keys(s, 1, np.arange(200))}
    keys |= {int(stream_keys(0, 2, a)) for a in range(200)}
    keys |= {int(stream_keys(0, 1, a, 0)) for a in range(200)}
    assert len(keys) == 3 * 200 + 200 + 200


@pytest.mark.parametrize("design", DESIGNS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_step_by_step_noise_is_the_whole_path_and_independent_of_the_batch(design, dtype):
    noise = design.noise(SPEC, 4, 0, 16, 16, dtype=dtype)
    whole = noise["steps"]
    assert whole.shape == (16, *SPEC["steps"]) and whole.dtype == dtype
    for i in range(SPEC["steps"][0]):
        assert torch.equal(noise.step("steps", i), whole[:, i])
    for lo in range(0, 16, 4):
        part = design.noise(SPEC, 4, lo, lo + 4, 16, dtype=dtype)
        assert torch.equal(part["x_T"], noise["x_T"][lo : lo + 4])
        assert torch.equal(part.step("steps", 3), whole[lo : lo + 4, 3])
    with pytest.raises(IndexError, match="no step 5"):
        noise.step("steps", 5)
    with pytest.raises(KeyError, match="no noise component 'eps'"):
        noise["eps"]


@pytest.mark.parametrize("design", [d for d in DESIGNS if d.unit == 2], ids=lambda d: repr(d))
def test_antithetic_partners_negate_every_step_in_float32(design):
    noise = design.noise(SPEC, 2, 0, 8, 8, dtype=torch.float32)
    for z in (noise["x_T"], noise.step("steps", 0), noise.step("steps", 4)):
        assert torch.equal(z[1::2], -z[0::2])


def test_a_component_draws_the_same_whatever_else_the_sampler_declares():
    alone = MonteCarlo().noise({"x_T": (1, 4, 4)}, 0, 0, 4, 4)["x_T"]
    beside = MonteCarlo().noise(SPEC, 0, 0, 4, 4)["x_T"]
    assert torch.equal(alone, beside)
    assert component_id("x_T") != component_id("steps")


def test_rqmc_keeps_its_sobol_coordinates_and_pads_the_rest():
    """The leading coordinates are the scrambled Sobol' points drawn before; the DCT basis
    puts the 20 Sobol' coordinates on the lowest frequencies of x_T and the steps."""
    pixel = SobolRQMC(replicates=2)
    z = np.concatenate([v.reshape(8, -1) for v in pixel.draw(SPEC, 0, 0, 8, 8).values()], axis=1)
    u = stats.norm.cdf(z[:4])  # replicate 0: 4 Sobol' points
    counts = [np.histogram(u[:, k], bins=4, range=(0, 1))[0] for k in range(z.shape[1])]
    assert all((c == 1).all() for c in counts)  # a (0, 2, s)-net: one point per quarter
    dct = SobolRQMC(replicates=2, max_dim=20).noise(SPEC, 0, 0, 8, 8)
    coefficient = torch.einsum("bchw,hi,wj->bij", dct["x_T"], *(_dct(4),) * 2)
    u = stats.norm.cdf(coefficient[:4, 0, 0].numpy())  # the DC coefficient is coordinate 0
    assert (np.histogram(u, bins=4, range=(0, 1))[0] == 1).all()


def _dct(n: int) -> torch.Tensor:
    k = np.arange(n)
    basis = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * np.sqrt(2 / n)
    basis[0] /= np.sqrt(2)
    return torch.from_numpy(basis.T.copy())


class StepOnlyNoise(Noise):
    """Noise that refuses to hand out a whole per-step component: samplers must ask by step."""

    def __init__(self, inner: Noise):
        self.inner, self.spec, self.asked = inner, inner.spec, []

    def __getitem__(self, name):
        if len(self.spec[name]) >= 4:
            raise AssertionError(f"the sampler read the whole {name!r} path at once")
        return self.inner[name]

    def step(self, name, index):
        self.asked.append(index)
        return self.inner.step(name, index)


@pytest.mark.parametrize(
    "make",
    [
        lambda: mcdiff.GaussianSampler(num_inference_steps=6, scheduler="DDPMScheduler"),
        lambda: mcdiff.GaussianSampler(num_inference_steps=6, eta=1.0),
    ],
    ids=["ddpm", "ddim-eta"],
)
def test_stochastic_samplers_read_each_steps_noise_at_that_step(make):
    sampler = make()
    design_noise = Antithetic().noise(sampler.noise_spec, 0, 0, 4, 4, dtype=sampler.dtype)
    guarded = StepOnlyNoise(design_noise)
    images = sampler(guarded)
    assert guarded.asked == list(range(sampler.noise_spec["steps"][0]))  # DDPM draws none at t = 0
    assert torch.equal(images, sampler(TensorNoise(dict(design_noise))))


@pytest.mark.parametrize("design", DESIGNS, ids=IDS)
def test_step_noise_made_a_chunk_ahead_on_another_thread_is_the_same(design, monkeypatch):
    """Chunks of 1, 2 and 3 steps, each made ahead on a worker while the one before is used."""
    reference = design.noise(SPEC, 5, 0, 8, 8)["steps"]
    for steps_per_chunk in (1, 2, 3):
        monkeypatch.setitem(mcdiff.noise.chunks.CHUNK_VALUES, "cpu", steps_per_chunk * 8 * 16)
        with ThreadPoolExecutor(max_workers=1) as pool:
            noise = design.noise(SPEC, 5, 0, 8, 8, ahead=pool)
            for i in [0, 1, 2, 3, 4, 2, 3, 0, 4]:  # in order, then out of order
                assert torch.equal(noise.step("steps", i), reference[:, i])


def test_prefetching_step_noise_changes_no_value(monkeypatch):
    monkeypatch.setitem(mcdiff.noise.chunks.CHUNK_VALUES, "cpu", 2 * 16 * 16)  # 2 steps a chunk
    sampler = mcdiff.GaussianSampler(image_shape=(1, 4, 4), num_inference_steps=7, scheduler="DDPMScheduler")
    args = (sampler, [pixel_mean], SobolRQMC(replicates=4, antithetic=True, max_dim=40), 64, 3, 16)
    plain = evaluate_design(*args, prefetch=False)["pixel_mean"]
    ahead = evaluate_design(*args, prefetch=True)["pixel_mean"]
    np.testing.assert_array_equal(plain, ahead)


def test_sampling_holds_one_steps_tensors_at_a_time():
    """Memory does not grow with the number of steps: earlier network outputs are freed."""
    from diffusers import DDPMScheduler

    outputs, most_alive = [], 0

    def network(x, t):
        nonlocal most_alive
        most_alive = max(most_alive, sum(ref() is not None for ref in outputs))
        out = 0.1 * x
        outputs.append(weakref.ref(out))
        return out

    sampler = mcdiff.DiffusionSampler(network, DDPMScheduler(), 200, image_shape=(1, 4, 4))
    sampler(MonteCarlo().noise(sampler.noise_spec, 0, 0, 4, 4, dtype=sampler.dtype))
    assert len(outputs) == 200 and most_alive <= 2


def test_prefetching_the_next_batch_changes_no_value(affine_model):
    design = SobolRQMC(replicates=4)
    args = (affine_model, [pixel_mean], design, 64, 3, 16)
    plain = evaluate_design(*args, prefetch=False)["pixel_mean"]
    ahead = evaluate_design(*args, prefetch=True)["pixel_mean"]
    np.testing.assert_array_equal(plain, ahead)
