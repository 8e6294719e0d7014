"""The noise engine: standard-normal noise generated on the sampler's device, step by step.

=====================  =================================================================
module                 what it holds
=====================  =================================================================
:mod:`~.batch`         the noise of one batch as a sampler reads it (:class:`Noise`,
                       :class:`TensorNoise`, :func:`as_noise`) and as a design makes it
                       (:class:`Streams`, :class:`DesignNoise`: chunks of whole steps,
                       made one ahead on an executor)
:mod:`~.philox`        the counter-based generator: Philox4x32-10, splitmix64 stream keys,
                       Box-Muller normals (:data:`GENERATOR`)
:mod:`~.sobol`         Sobol' points with Owen's nested or LMS scrambling
:mod:`~.basis`         frames, coordinate ranks in the pixel or DCT basis, inverse DCT
:mod:`~.chunks`        how many values one pass of integer work covers, by device
=====================  =================================================================

The rules that decide which streams and points an evaluation gets are the designs'
(:mod:`mcdiff.designs`); this package knows nothing of designs. The names below are the
sampler contract and the generator, importable from here.
"""

from mcdiff.noise.batch import DesignNoise, Noise, NoiseSpec, Streams, TensorNoise, as_noise
from mcdiff.noise.philox import (
    GENERATOR,
    as_words,
    component_id,
    key_words,
    philox4x32,
    standard_normal,
    stream_keys,
)

__all__ = [
    "GENERATOR",
    "DesignNoise",
    "Noise",
    "NoiseSpec",
    "Streams",
    "TensorNoise",
    "as_noise",
    "as_words",
    "component_id",
    "key_words",
    "philox4x32",
    "standard_normal",
    "stream_keys",
]
