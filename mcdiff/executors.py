"""Executors: where blocks of evaluations run, in this process or on a Dask cluster.

A :class:`Block` is a contiguous range of addresses of one design that never splits a group
(an antithetic pair or an RQMC replicate). An executor turns blocks into statistic values by
calling :func:`mcdiff.blocks.evaluate_design` on them, wherever the model lives. Only the
block's description travels: the noise is regenerated where the block runs, from
``(seed, design, address)``, so the values do not depend on which worker ran which block.

A model reaches an executor as a :class:`~mcdiff.samplers.Sampler` (local only) or as a
*factory*: a picklable callable with no arguments that builds the sampler, e.g.
``functools.partial(mcdiff.GaussianSampler, num_inference_steps=50)`` or a function that
loads weights onto the worker's GPU. Each process builds it once and keeps it.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from mcdiff.blocks import Block, evaluate_design
from mcdiff.functionals import Statistic
from mcdiff.samplers.base import Sampler

Model = Sampler | Callable[[], Sampler]
"""A sampler, or a picklable zero-argument factory that builds one."""


@dataclass(frozen=True)
class ModelInfo:
    """What the runner needs to know of a model without holding it: settings, noise and image shapes."""

    settings: dict
    noise_spec: dict
    image_shape: tuple[int, ...] = ()


def _info(sampler: Sampler) -> ModelInfo:
    spec = {k: tuple(v) for k, v in sampler.noise_spec.items()}
    return ModelInfo(dict(sampler.describe()), spec, tuple(sampler.image_shape))


def _evaluate(sampler: Sampler, statistics: Sequence[Statistic], seed: int, batch_size: int, block: Block):
    return evaluate_design(
        sampler, statistics, block.design, block.n_evals, seed, batch_size, start=block.start, stop=block.stop
    )


class LocalExecutor:
    """Runs blocks one after another in this process; a factory is called once per executor."""

    def __init__(self):
        self._model: Model | None = None
        self._sampler: Sampler | None = None

    def _load(self, model: Model) -> Sampler:
        if _is_sampler(model):
            return model
        if model is not self._model:
            self._model, self._sampler = model, _build(model)
        return self._sampler

    def describe(self, model: Model) -> ModelInfo:
        """Settings and noise spec of ``model``."""
        return _info(self._load(model))

    def evaluate(
        self,
        model: Model,
        statistics: Sequence[Statistic],
        seed: int,
        batch_size: int,
        blocks: Iterable[Block],
    ) -> Iterator[tuple[Block, dict[str, np.ndarray]]]:
        """Yield ``(block, {statistic: (stop - start, *own_shape)})`` for every block, in order."""
        sampler = self._load(model)
        for block in blocks:
            yield block, _evaluate(sampler, statistics, seed, batch_size, block)


def _is_sampler(model) -> bool:
    """A sampler (by class or by its contract's ``noise_spec``), as opposed to a factory."""
    return isinstance(model, Sampler) or hasattr(model, "noise_spec")


def _build(factory: Callable[[], Sampler]) -> Sampler:
    if not callable(factory):
        raise ValueError(f"a model must be a Sampler or a factory that builds one, got {factory!r}")
    sampler = factory()
    if not _is_sampler(sampler):
        raise ValueError(f"the model factory {factory!r} returned {type(sampler).__name__}, not a Sampler")
    return sampler


_WORKER_MODEL: dict[str, Sampler] = {}
_WORKER_LOCK = threading.Lock()


def _worker_sampler(key: str, factory: Callable[[], Sampler]) -> Sampler:
    """The worker process's sampler for ``key``, built on first use; one model is kept per process."""
    with _WORKER_LOCK:
        if key not in _WORKER_MODEL:
            _WORKER_MODEL.clear()  # release the previous study's model (GPU memory) first
            _WORKER_MODEL[key] = _build(factory)
        return _WORKER_MODEL[key]


def _describe_on_worker(key: str, factory: Callable[[], Sampler]) -> ModelInfo:
    return _info(_worker_sampler(key, factory))


def _evaluate_on_worker(key, factory, statistics, seed, batch_size, block) -> dict[str, np.ndarray]:
    return _evaluate(_worker_sampler(key, factory), statistics, seed, batch_size, block)


class DaskExecutor:
    """Runs blocks as tasks on a ``dask.distributed`` cluster, one task per block.

    Each worker process builds the model once from the factory and keeps it; tasks carry
    only the block's addresses, the design and the statistics. When a worker dies mid-block,
    the scheduler reruns the block elsewhere (up to ``distributed.scheduler.allowed-failures``
    times, then :class:`RuntimeError`); a block's values are the same wherever it runs.

    Parameters
    ----------
    client : distributed.Client or str
        A client, or a scheduler address (``"tcp://host:8786"``) to connect to; a client this
        executor opened is closed by :meth:`close` (or on leaving a ``with`` block).

    Examples
    --------
    >>> from functools import partial
    >>> from distributed import Client, LocalCluster
    >>> import mcdiff
    >>> with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as client:
    ...     result = mcdiff.estimate(partial(mcdiff.GaussianSampler), n_evals=1024,
    ...                              executor=mcdiff.DaskExecutor(client))  # doctest: +SKIP
    """

    def __init__(self, client):
        try:
            from distributed import Client
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("DaskExecutor needs dask.distributed: pip install 'mcdiff[dask]'") from err
        self._owned = isinstance(client, str)
        self.client = Client(client) if self._owned else client

    def close(self) -> None:
        """Close the client if this executor opened it."""
        if self._owned:
            self.client.close()

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def _key(model: Model) -> str:
        import cloudpickle

        if _is_sampler(model) or not callable(model):
            raise ValueError(
                f"DaskExecutor needs a model factory, a picklable callable that builds the sampler on "
                f"the worker (e.g. functools.partial(GaussianSampler, ...)); got {type(model).__name__}"
            )
        return hashlib.sha256(cloudpickle.dumps(model)).hexdigest()

    def describe(self, model: Model) -> ModelInfo:
        """Settings and noise spec of ``model``, read on a worker (which then keeps the model)."""
        return self.client.submit(_describe_on_worker, self._key(model), model, pure=False).result()

    def evaluate(
        self,
        model: Model,
        statistics: Sequence[Statistic],
        seed: int,
        batch_size: int,
        blocks: Iterable[Block],
    ) -> Iterator[tuple[Block, dict[str, np.ndarray]]]:
        """Yield ``(block, {statistic: (stop - start, *own_shape)})`` as blocks finish, in any order."""
        from distributed import KilledWorker, as_completed

        key = self._key(model)
        futures = {
            self.client.submit(
                _evaluate_on_worker, key, model, statistics, seed, batch_size, b, pure=False
            ): b
            for b in blocks
        }
        try:
            for future in as_completed(futures):
                block = futures[future]
                try:
                    values = future.result()
                except KilledWorker as err:
                    raise RuntimeError(
                        f"block [{block.start}, {block.stop}) of design {block.design.name!r} killed every "
                        f"worker that ran it ({err}); blocks already written to a store are kept: rerun "
                        "with the same store to resume"
                    ) from err
                yield block, values
        finally:
            self.client.cancel(list(futures))
