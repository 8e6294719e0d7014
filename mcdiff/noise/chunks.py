"""How much elementwise integer work one pass covers, by device type: :data:`CHUNK_VALUES`."""

from __future__ import annotations

import torch

CHUNK_VALUES = {"cpu": 2**18, "accelerator": 2**23}
"""How many values one pass of elementwise integer work covers, by device.

:class:`~mcdiff.noise.batch.DesignNoise` generates this many noise values per batch at once
when a sampler steps through time, and :func:`~mcdiff.noise.sobol.nested_scramble` hashes
this many tree nodes (30 levels of a piece of Sobol' coordinates) at once. On the CPU a
chunk's integer work stays in the L2 cache (``2^16`` Philox blocks, 512 KiB per word;
``2^18`` values generated an evaluation's DDPM-1000 noise 10-15% faster than ``2^17`` at a
batch of 16, by fewer tensor operations, and ``2^19`` no faster); on a GPU (any other device
type) each of the generator's ~130 tensor operations is a kernel launch, so a chunk spans
several steps of a large batch (``2^23`` values, 32 MiB in float32; about 250 MiB at the
generator's peak, measured on the CPU) and the launches are paid once a chunk, not once a
step. The values do not depend on the chunk (every operation is elementwise).
"""


def chunk_values(device: torch.device) -> int:
    """:data:`CHUNK_VALUES` of the type of ``device`` (``"cpu"``, or ``"accelerator"`` for any other)."""
    return CHUNK_VALUES["cpu" if device.type == "cpu" else "accelerator"]
