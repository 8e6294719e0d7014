"""Executors: where blocks of evaluations run, in this process or on a Dask cluster.

A :class:`~mcdiff.blocks.Block` is a contiguous range of addresses of one job (a design on a
seed, its statistics, its model variant) that never splits a group (an antithetic pair or an
RQMC replicate). An executor turns blocks into statistic values by calling
:func:`mcdiff.blocks.evaluate_block` on them, wherever the model lives. Only the block's
description travels: the noise is regenerated where the block runs, from
``(seed, design, address)``, so the values do not depend on which worker ran which block.
The Dask executor keeps a bounded number of blocks in flight, so the values waiting to be
accumulated in address order stay bounded too.

A model reaches an executor as a :class:`~mcdiff.samplers.Sampler` (local only) or as a
*factory*: a picklable callable with no arguments that builds the sampler, e.g.
``functools.partial(mcdiff.GaussianSampler, num_inference_steps=50)`` or a function that
loads weights onto the worker's GPU. Each process builds it once and keeps it.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from mcdiff.blocks import Block, evaluate_block
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


_VARIANTS: dict = {}
_VARIANTS_LOCK = threading.Lock()


def _variant(sampler: Sampler, variant: Callable[[Sampler], Sampler] | None) -> Sampler:
    """``variant(sampler)``, built once per process for each (sampler, variant) and kept (at most 8)."""
    if variant is None:
        return sampler
    with _VARIANTS_LOCK:
        key = (id(sampler), variant)
        held = _VARIANTS.get(key)
        if held is None or held[0] is not sampler:
            if len(_VARIANTS) >= 8:
                _VARIANTS.clear()
            built = variant(sampler)
            if not _is_sampler(built):
                raise ValueError(f"the model variant {variant!r} returned {type(built).__name__}, not a Sampler")
            held = _VARIANTS[key] = (sampler, built)
        return held[1]


def _evaluate(sampler: Sampler, batch_size: int, block: Block) -> dict[str, np.ndarray]:
    return evaluate_block(_variant(sampler, block.job.variant), batch_size, block)


class LocalExecutor:
    """Runs blocks one after another in this process; a factory is called once per executor."""

    def __init__(self):
        self._model: Model | None = None
        self._sampler: Sampler | None = None

    def _load(self, model: Model) -> Sampler:
        if _is_sampler(check_model(model)):
            return model
        if model is not self._model or self._sampler is None:
            self._model, self._sampler = model, _build(model)
        return self._sampler

    def describe(self, model: Model) -> ModelInfo:
        """Settings and noise spec of ``model``."""
        return _info(self._load(model))

    def inspect(self, model: Model, question: Callable[[Sampler], object]) -> object:
        """``question(sampler)``, asked where the model lives (here)."""
        return question(self._load(model))

    def evaluate(
        self, model: Model, batch_size: int, blocks: Iterable[Block]
    ) -> Iterator[tuple[Block, dict[str, np.ndarray]]]:
        """Yield ``(block, {statistic: (stop - start, *own_shape)})`` for every block, in order."""
        sampler = self._load(model)
        for block in blocks:
            yield block, _evaluate(sampler, batch_size, block)


def _is_sampler(model) -> bool:
    """A sampler (by class or by its contract's ``noise_spec``), as opposed to a factory."""
    return isinstance(model, Sampler) or hasattr(model, "noise_spec")


def check_model(model) -> Model:
    """Return ``model`` if it is a sampler or a callable (a factory), else raise ``ValueError``.

    A sampler is a :class:`~mcdiff.samplers.Sampler`, or any object with its contract: a
    ``noise_spec`` mapping and a ``sample(noise)`` method (called as ``model(noise)``).
    """
    if not (_is_sampler(model) or callable(model)):
        raise ValueError(
            f"a model must be a Sampler (an object with noise_spec and sample(noise) -> images (B, C, H, W), "
            f"see mcdiff.samplers.Sampler) or a zero-argument factory that builds one, got {model!r}"
        )
    return model


def _build(factory: Callable[[], Sampler]) -> Sampler:
    sampler = check_model(factory)()
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


def _inspect_on_worker(key: str, factory: Callable[[], Sampler], question: Callable[[Sampler], object]):
    return question(_worker_sampler(key, factory))


def _evaluate_on_worker(key, factory, batch_size, block) -> dict[str, np.ndarray]:
    return _evaluate(_worker_sampler(key, factory), batch_size, block)


class SchedulerLost(ConnectionError):
    """The Dask scheduler went away mid-run; blocks not yet returned are lost (stored ones are kept)."""


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
    connect_timeout : float
        Seconds to wait for the scheduler at an address, on connecting and on reconnecting
        after the connection dropped; then :class:`ConnectionError` (unreachable) or
        :class:`SchedulerLost` (gone mid-run).

    Examples
    --------
    >>> from functools import partial
    >>> from distributed import Client, LocalCluster
    >>> import mcdiff
    >>> with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as client:
    ...     result = mcdiff.estimate(partial(mcdiff.GaussianSampler), n_evals=1024,
    ...                              executor=mcdiff.DaskExecutor(client))  # doctest: +SKIP
    """

    def __init__(self, client, connect_timeout: float = 5.0):
        try:
            from distributed import Client
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("DaskExecutor needs dask.distributed: pip install 'mcdiff[dask]'") from err
        self._owned = isinstance(client, str)
        if not self._owned:
            self.client = client
            self.address = client.scheduler.address
            return
        self.address = client
        try:
            self.client = Client(client, timeout=connect_timeout)
        except OSError as err:  # a timeout, a refused connection, an unknown host
            raise ConnectionError(
                f"cannot reach the Dask scheduler at {client!r} within {connect_timeout:g} s "
                f"({type(err).__name__}): start it (dask scheduler) or correct the address"
            ) from None

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
        return self.inspect(model, _info)

    def inspect(self, model: Model, question: Callable[[Sampler], object]) -> object:
        """``question(sampler)``, asked on a worker (which then keeps the model); ``question`` must pickle."""
        future = self.client.submit(_inspect_on_worker, self._key(model), model, question, pure=False)
        with self._translating_loss():
            return future.result()

    @contextmanager
    def _translating_loss(self):
        """Turn the errors of a lost scheduler (cancelled futures, closed comms) into :class:`SchedulerLost`."""
        from distributed.comm import CommClosedError

        try:
            yield
        except (CancelledError, CommClosedError) as err:
            reason = getattr(err, "reason", None) or type(err).__name__
            raise SchedulerLost(
                f"lost the Dask scheduler at {self.address} during the run ({reason})"
            ) from None

    def evaluate(
        self, model: Model, batch_size: int, blocks: Iterable[Block], in_flight: int | None = None
    ) -> Iterator[tuple[Block, dict[str, np.ndarray]]]:
        """Yield ``(block, {statistic: (stop - start, *own_shape)})`` as blocks finish, in any order.

        At most ``in_flight`` blocks (by default twice the cluster's worker threads, at least 2)
        are submitted at a time, in address order; the next one goes out as one comes back.
        """
        from distributed import KilledWorker, as_completed

        key = self._key(model)
        if in_flight is None:
            in_flight = max(2, 2 * sum(self.client.nthreads().values()))
        pending = iter(blocks)
        futures: dict = {}

        def submit() -> None:
            block = next(pending, None)
            if block is not None:
                future = self.client.submit(_evaluate_on_worker, key, model, batch_size, block, pure=False)
                futures[future] = block
                running.add(future)

        running = as_completed()
        for _ in range(in_flight):
            submit()
        try:
            for future in running:
                block = futures.pop(future)
                try:
                    with self._translating_loss():
                        values = future.result()
                except KilledWorker as err:
                    raise RuntimeError(
                        f"block [{block.start}, {block.stop}) of design {block.design.name!r}"
                        + (f" (job {block.job.key!r})" if block.job.key != block.design.name else "")
                        + " killed every "
                        f"worker that ran it ({err}); blocks already written to a store are kept: rerun "
                        "with the same store to resume"
                    ) from err
                submit()
                yield block, values
        finally:
            if futures and self.client.status == "running":  # a lost scheduler has cancelled them already
                self.client.cancel(list(futures))
