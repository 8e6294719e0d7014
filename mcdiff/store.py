"""The result store: what a run has accumulated, on disk, so an interrupted run resumes bit for bit.

A run that is given a store keeps, for each of its jobs (a design on a seed with its
statistics, :class:`~mcdiff.blocks.Job`), the streaming accumulators
(:class:`~mcdiff.moments.GroupMoments`) of the evaluations folded so far, in address order,
and, where the run keeps per-evaluation values, every block of them. Started again, it
continues from the stored prefix and evaluates only the addresses it lacks. Because noise is a
pure function of ``(seed, design, address)`` and the accumulators are folded strictly in
address order, the resumed result is identical to an uninterrupted one.

Layout (one directory, one writer at a time)::

    PATH/fingerprint.json                       what produced the values (see below)
    PATH/writer.lock                            the writer's pid, host and start, while one runs
    PATH/jobs/<job>/job.json                    the job: design layout, seed, statistics, values kept
    PATH/jobs/<job>/state.npz                   accumulators of evaluations 0 .. prefix - 1
    PATH/jobs/<job>/round-<n>.npz               the same, kept at a stopping round's end n
    PATH/jobs/<job>/blocks/<start>-<stop>.npz   values of evaluations start .. stop - 1 (if kept)

A block file holds one array ``(stop - start, *own_shape)`` per statistic, its ``start`` and
``stop`` and the fingerprint's digest; the state file the prefix, the group count and size,
the seven sums of each statistic (and those of a replicate not yet complete) and the digest.
Every file is written to a hidden temporary file, flushed to disk and then renamed into place
(``os.replace`` is atomic on POSIX), so a process killed at any moment leaves either the whole
file or the previous one. Blocks never split an antithetic pair (they may split an RQMC
replicate). A run writes a block's values (if kept) before the state that includes them, so a
state never runs ahead of what resume needs.

Reading needs no write access and takes no lock. Writing (a new store, a job, a block, a
state) first takes the writer lock (:mod:`mcdiff.writer_lock`): a second writer is refused
naming the holder, a lock left by a killed writer on this host is taken over. Only the lock's
holder deletes the temporary files a killed writer left, after a probe write showed every
directory writable, so a store that cannot be written is refused before any evaluation. A full
disk is reported in one line with the free space; the files written until then stay valid.

The fingerprint records what determines every value: the model (``Sampler.describe()``,
including its ``weights_sha256``), the seed, the run's designs in their extendable form (their
``repr`` fixes the address layout, e.g. Sobol' points per replicate) or its levels, the
statistic names and identities (their function and values on probe images,
:func:`~mcdiff.functionals.statistic_identity`), the noise spec and the mcdiff version. Opening a
store with another fingerprint raises ``ValueError`` naming what differs; so does a job whose
stored description differs. A directory that is not a store, a damaged or missing fingerprint,
a store of an older format (``mcdiff-store/2`` kept per-evaluation values only, and is refused:
its values cannot be trusted to match this format's accumulators without a rerun), overlapping
block files and a damaged, foreign or non-finite block or state file raise ``ValueError`` too.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mcdiff.atomic import DISK_FULL, replace_atomically
from mcdiff.functionals import check_finite, same_probe
from mcdiff.writer_lock import WriterLock

FORMAT = "mcdiff-store/3"
"""Format tag written into every fingerprint (``/3``: jobs with streaming accumulators; ``/2`` added the
model weight hash and statistic identities)."""

LOCK = "writer.lock"
"""Name of the writer lock file in a store directory."""

_BLOCK = re.compile(r"(\d+)-(\d+)\.npz")
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.+-]+")
_NPZ_MAGIC = b"PK\x03\x04"


class StoreError(ValueError):
    """A store that cannot be opened, locked or written; the message is one line naming the store."""


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _differences(stored: Mapping, requested: Mapping, prefix: str = "") -> list[str]:
    """``"key: stored X, requested Y"`` for each differing entry, nested keys as ``model.weights_sha256``."""
    out = []
    for key in sorted(set(stored) | set(requested)):
        a, b = stored.get(key), requested.get(key)
        if key == "statistic_identity" and isinstance(a, dict) and isinstance(b, dict):
            out += _statistic_differences(a, b)
        elif isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif _canonical(a) != _canonical(b):
            out.append(f"{prefix}{key}: stored {_canonical(a)}, requested {_canonical(b)}")
    return out


def _statistic_differences(stored: Mapping, requested: Mapping) -> list[str]:
    """Statistics of one name whose function or probe values differ (names alone differ under ``statistics``)."""
    out = []
    for name in sorted(set(stored) & set(requested)):
        a, b = stored[name], requested[name]
        if a.get("function") == b.get("function") and same_probe(a.get("probe"), b.get("probe")):
            continue
        out.append(
            f"statistic {name!r} computes something else: stored {a.get('function')} with probe values "
            f"{_short(a.get('probe'))}, requested {b.get('function')} with {_short(b.get('probe'))}"
        )
    return out


def _short(probe) -> str:
    return probe if isinstance(probe, str) else "[" + ", ".join(f"{v:.6g}" for v in probe[:4]) + ", ...]"


class ResultStore:
    """An open store: its jobs, their accumulated state and stored blocks; writing and reading them.

    Use :meth:`open`, best as a context manager (``with ResultStore.open(...) as store:``),
    which releases the writer lock however the block ends; the constructor does no checks.

    Parameters
    ----------
    path : Path
        The store directory.
    fingerprint : dict
        The JSON-safe description of what produced the values.
    """

    def __init__(self, path: Path, fingerprint: dict):
        self.path = path
        self.fingerprint = fingerprint
        self.digest = hashlib.sha256(_canonical(fingerprint).encode()).hexdigest()
        self._index: dict[str, dict[int, int]] = {}
        self._jobs: dict[str, dict] = {}
        self._lock = WriterLock(path / LOCK, f"store {str(path)!r}")

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the writer lock, if this store holds it; reading stays possible."""
        self._lock.release()

    @classmethod
    def open(cls, path: str | Path, fingerprint: Mapping) -> ResultStore:
        """Create the store at ``path``, or open it if its fingerprint equals ``fingerprint``.

        Opening an existing store writes nothing; creating one takes the writer lock (see
        :meth:`lock`), which :meth:`close` releases.

        Raises
        ------
        ValueError
            When ``path`` is a file, a non-empty directory that is not an mcdiff store, a store
            whose fingerprint is missing (with blocks) or unreadable, a store of an older
            format, or a store of another model, seed, design, statistic (name, function or
            values on the probe images), noise spec or mcdiff version (the message names each
            difference). :class:`StoreError` when a new store cannot be created or another
            writer is creating it.
        """
        path = Path(path)
        fingerprint = json.loads(_canonical({"format": FORMAT, **fingerprint}))
        if path.exists() and not path.is_dir():
            raise ValueError(f"store path {str(path)!r} is a file, not a store directory")
        marker = path / "fingerprint.json"
        if marker.exists():
            store = cls(path, _check_fingerprint(path, marker, fingerprint))
        else:
            _check_new(path)
            store = cls(path, fingerprint)
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise store._write_error("creating its directory", err) from None
            store.lock()
            with store._writing("writing fingerprint.json"):
                if marker.exists():  # another writer created it between our check and our lock
                    raise StoreError(f"store {str(path)!r} was created by another run meanwhile; run again")
                text = json.dumps(fingerprint, indent=1, sort_keys=True)
                replace_atomically(marker, lambda tmp: tmp.write_text(text))
        return store

    def job(self, key: str, description: Mapping) -> dict:
        """Register job ``key`` (creating its directory and ``job.json``) or check it against the stored one.

        ``description`` is JSON-safe and holds ``statistics`` (names, in order) and ``values``
        (the names whose per-evaluation values block files hold). Returns the stored
        description: its ``values`` is the one that counts for an existing job.

        Raises
        ------
        ValueError
            When the stored job differs from ``description`` (other than in ``values``), or its
            ``job.json`` is damaged; :class:`StoreError` when a new job cannot be written.
        """
        if not _SAFE_NAME.fullmatch(key):
            raise ValueError(f"job name {key!r} cannot name a store directory: use [A-Za-z0-9_.+-]")
        description = json.loads(_canonical(dict(description)))
        marker = self.path / "jobs" / key / "job.json"
        if marker.exists():
            try:
                stored = json.loads(marker.read_text())
            except (OSError, ValueError, UnicodeDecodeError) as err:
                raise ValueError(f"{str(marker)!r} is damaged ({err}); delete the job's directory to recompute it") from None
            differences = _differences(
                {k: v for k, v in stored.items() if k != "values"},
                {k: v for k, v in description.items() if k != "values"},
            )
            if differences:
                raise ValueError(
                    f"job {key!r} of store {str(self.path)!r} was written differently; it cannot be resumed "
                    "by this run. Differences:\n  " + "\n  ".join(differences)
                )
        else:
            stored = description
            self.lock()
            with self._writing(f"registering job {key!r}"):
                (marker.parent / "blocks").mkdir(parents=True, exist_ok=True)
                text = json.dumps(stored, indent=1, sort_keys=True)
                replace_atomically(marker, lambda tmp: tmp.write_text(text))
        self._jobs[key] = stored
        self._scan(key)
        return stored

    def lock(self) -> None:
        """Become the store's one writer, before any evaluation; a no-op if this store already is.

        Takes the writer lock (:mod:`mcdiff.writer_lock`), probes every block directory with a
        temporary file, then deletes the temporary files a killed writer left.

        Raises
        ------
        ValueError
            A :class:`~mcdiff.writer_lock.WriterLockedError` naming the holder when another
            writer holds the lock; a :class:`StoreError` when the store cannot be written
            (read-only or full file system, no permission).
        """
        if self._lock.held:
            return
        with self._writing("taking the writer lock (the store misses evaluations)"):
            self._lock.acquire()
        with self._writing("a probe write into its block directories"):
            folders = [self.path, *(self.path / "jobs" / key / "blocks" for key in self._jobs)]
            for folder in folders:
                folder.mkdir(parents=True, exist_ok=True)
                probe = folder / f".probe.{os.getpid()}.tmp"
                probe.write_bytes(b"")
                probe.unlink()
            for leftover in itertools.chain(
                *(f.glob(".*.tmp*") for f in folders), *(f.parent.glob(".*.tmp*") for f in folders[1:])
            ):
                leftover.unlink(missing_ok=True)  # left by a killed writer: this one holds the lock

    @contextlib.contextmanager
    def _writing(self, doing: str):
        """Release the writer lock if the block fails; an ``OSError`` becomes one line (:meth:`_write_error`)."""
        try:
            yield
        except OSError as err:
            self.close()
            raise self._write_error(doing, err) from None
        except BaseException:
            self.close()
            raise

    def _write_error(self, doing: str, err: OSError) -> StoreError:
        """One line naming the store, what failed and why (with the free space when the disk is full)."""
        if err.errno in DISK_FULL:
            usage = shutil.disk_usage(self.path if self.path.exists() else self.path.parent)
            return StoreError(
                f"store {str(self.path)!r} is full: {doing} failed ({os.strerror(err.errno)}; {usage.free / 2**20:.2f} MiB "
                f"free of {usage.total / 2**20:.2f} MiB); the blocks already written are kept: free space "
                "and run again to resume"
            )
        return StoreError(
            f"store {str(self.path)!r} cannot be written: {doing} failed ({err.strerror}); give a writable "
            "directory (a copy of this store resumes the same run)"
        )

    def _dir(self, design: str) -> Path:
        if design not in self._jobs:
            raise ValueError(f"job {design!r} is not registered in this store; it has {list(self._jobs)}")
        return self.path / "jobs" / design / "blocks"

    def _scan(self, design: str) -> None:
        """Index the block files of ``design``; temporary files are skipped (never deleted here)."""
        folder = self._dir(design)
        files: list[tuple[int, int, str]] = []
        for entry in folder.iterdir() if folder.is_dir() else ():
            if entry.name.startswith("."):  # a temporary file of a writer, live or killed
                continue
            match = _BLOCK.fullmatch(entry.name)
            if not match:
                raise ValueError(f"foreign file {str(entry)!r} in store {str(self.path)!r}: remove it")
            start, stop = int(match[1]), int(match[2])
            if stop <= start:
                raise ValueError(f"block file {str(entry)!r} names an empty range")
            files.append((start, stop, entry.name))
        files.sort()
        for (a, b, first), (c, d, second) in itertools.pairwise(files):
            if c < b:
                raise ValueError(
                    f"store {str(self.path)!r} has overlapping block files {first!r} and {second!r} of design "
                    f"{design!r} in {str(folder)!r}: it is damaged; delete the one you do not trust (or both)"
                )
        self._index[design] = {start: stop for start, stop, _ in files}

    def done(self, design: str) -> list[tuple[int, int]]:
        """Stored address ranges ``[(start, stop), ...]`` of ``design``, in address order."""
        self._dir(design)
        return sorted(self._index[design].items())

    def write(self, design: str, start: int, stop: int, values: Mapping[str, np.ndarray]) -> None:
        """Store values ``{statistic: (stop - start, *own_shape)}`` of evaluations ``start .. stop - 1``.

        The block appears all at once (temporary file, fsync, atomic rename) or not at all; the
        first write takes the writer lock (:meth:`lock`) if it is not held yet.

        Raises
        ------
        StoreError
            When the write fails (a full disk: with the free space); no partial block is left.
        """
        folder = self._dir(design)
        if set(values) != set(self._jobs[design]["values"]):
            raise ValueError(
                f"block has statistics {sorted(values)}, the job keeps {self._jobs[design]['values']}"
            )
        for other_start, other_stop in self._index[design].items():
            if (start, stop) == (other_start, other_stop):
                continue  # the same block again (computed anew after a crash before its state): replaced
            if start < other_stop and other_start < stop:
                raise ValueError(
                    f"block [{start}, {stop}) of design {design!r} overlaps stored block "
                    f"[{other_start}, {other_stop})"
                )
        arrays = {f"stat_{name}": np.asarray(v, dtype=np.float64) for name, v in values.items()}
        for name, array in arrays.items():
            if len(array) != stop - start:
                raise ValueError(f"{name[5:]!r} has {len(array)} rows for block [{start}, {stop})")
        self.lock()
        try:
            replace_atomically(
                folder / f"{start}-{stop}.npz",
                lambda tmp: np.savez(tmp, start=start, stop=stop, digest=self.digest, **arrays),
            )
        except OSError as err:
            raise self._write_error(f"writing block [{start}, {stop}) of design {design!r}", err) from None
        self._index[design][start] = stop

    def read(self, design: str) -> list[tuple[int, int, dict[str, np.ndarray]]]:
        """Every stored block of ``design`` as ``(start, stop, {statistic: values})``, in address order.

        Raises
        ------
        ValueError
            As :meth:`read_block`.
        """
        return [(start, stop, self.read_block(design, start, stop)) for start, stop in self.done(design)]

    def read_block(self, design: str, start: int, stop: int) -> dict[str, np.ndarray]:
        """The stored values ``{statistic: (stop - start, *own_shape)}`` of one block of ``design``.

        Raises
        ------
        ValueError
            For a block file that is damaged, not an npz file, belongs to another store, holds
            other statistics or row counts than its name says, or holds NaN or inf (which a
            run never stores). Delete that file to recompute it.
        """
        file = self._dir(design) / f"{start}-{stop}.npz"
        content = _load_block(file)
        names = sorted(k[5:] for k in content if k.startswith("stat_"))
        problem = None
        if str(content.get("digest")) != self.digest:
            problem = "it was written by a different run (fingerprint digest differs)"
        elif (int(content.get("start", -1)), int(content.get("stop", -1))) != (start, stop):
            problem = "its stored range differs from its name"
        elif names != sorted(self._jobs[design]["values"]):
            problem = f"it holds statistics {names}"
        elif any(len(content[f"stat_{n}"]) != stop - start for n in names):
            problem = "its row count differs from its range"
        if problem:
            raise ValueError(f"block file {str(file)!r} does not belong here: {problem}; delete it to recompute it")
        for n in names:
            try:
                check_finite(n, content[f"stat_{n}"], start, design)
            except ValueError as err:
                raise ValueError(
                    f"block file {str(file)!r} is damaged: {err}, values a run never stores; delete it "
                    "to recompute it"
                ) from None
        return {n: content[f"stat_{n}"] for n in names}

    def write_state(self, key: str, prefix: int, moments: Mapping, round_end: bool = False) -> None:
        """Store the accumulators of evaluations ``0 .. prefix - 1`` of job ``key``, replacing the previous ones.

        ``moments`` maps each statistic to an accumulator with ``state()`` (arrays) and
        ``n_evals`` (:class:`~mcdiff.moments.GroupMoments`, :class:`~mcdiff.moments.ReplicateMoments`).
        With ``round_end`` they are kept as ``round-<prefix>.npz`` instead, beside the latest
        state, so that a resumed sequential run can look at every round it passed.

        Raises
        ------
        StoreError
            When the write fails; the previous state stays.
        """
        self._dir(key)
        arrays = {}
        for k, name in enumerate(self._jobs[key]["statistics"]):
            arrays.update({f"m{k}_{field}": value for field, value in moments[name].state().items()})
        self.lock()
        try:
            replace_atomically(
                self.path / "jobs" / key / (f"round-{prefix}.npz" if round_end else "state.npz"),
                lambda tmp: np.savez(tmp, prefix=prefix, digest=self.digest, **arrays),
            )
        except OSError as err:
            raise self._write_error(f"writing the state of job {key!r}", err) from None

    def read_state(self, key: str, kind, round_end: int | None = None) -> tuple[int, dict] | None:
        """``(prefix, {statistic: accumulator})`` of job ``key``, or ``None`` when it has no state yet.

        ``kind`` is the accumulator class (its ``from_arrays`` rebuilds each statistic's); with
        ``round_end`` the state kept at that round's end (:meth:`write_state`).

        Raises
        ------
        ValueError
            For a state file that is damaged, foreign, inconsistent or holds NaN or inf.
        """
        file = self._dir(key).parent / ("state.npz" if round_end is None else f"round-{int(round_end)}.npz")
        if not file.exists():
            return None
        content = _load_block(file)
        try:
            if str(content["digest"]) != self.digest:
                raise ValueError("it was written by a different run (fingerprint digest differs)")
            prefix = int(content["prefix"])
            if round_end is not None and prefix != round_end:
                raise ValueError(f"it holds {prefix} evaluations, not the round's {round_end}")
            moments = {}
            for k, name in enumerate(self._jobs[key]["statistics"]):
                arrays = {field[len(f"m{k}_"):]: v for field, v in content.items() if field.startswith(f"m{k}_")}
                if not all(np.isfinite(v).all() for v in arrays.values()):
                    raise ValueError(f"statistic {name!r} holds NaN or inf")
                moments[name] = kind.from_arrays(arrays)
                if moments[name].n_evals != prefix:
                    raise ValueError(f"statistic {name!r} counts {moments[name].n_evals} evaluations for a prefix of {prefix}")
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(
                f"state file {str(file)!r} is damaged or does not belong here ({err}); delete it (and the job's "
                "blocks beyond it are refolded, or recomputed)"
            ) from None
        return prefix, moments


def _check_new(path: Path) -> None:
    """Raise ``ValueError`` unless ``path`` (without ``fingerprint.json``) is absent, empty or a store being created."""
    if not path.exists():
        return
    if any(path.glob("jobs/*/job.json")):
        raise ValueError(
            f"store {str(path)!r} holds jobs but its fingerprint.json is missing, so they cannot be "
            "checked against this run: restore fingerprint.json, or move the jobs directory away to start anew"
        )
    if any(not entry.name.startswith(".") and entry.name not in (LOCK, "jobs") for entry in path.iterdir()):
        raise ValueError(
            f"{str(path)!r} is not an mcdiff store (no fingerprint.json) and is not empty; "
            "refusing to write into it: give a new or empty directory"
        )


def _check_fingerprint(path: Path, marker: Path, fingerprint: dict) -> dict:
    """The stored fingerprint if it matches ``fingerprint`` (statistic probes within tolerance); else ``ValueError``."""
    try:
        stored = json.loads(marker.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{str(marker)!r} is not an {FORMAT} fingerprint ({err}): the store is damaged or foreign; "
            "give another path"
        ) from None
    found = stored.get("format") if isinstance(stored, dict) else None
    if found != FORMAT:
        older = isinstance(found, str) and found.startswith("mcdiff-store/")
        raise ValueError(
            f"store {str(path)!r} has format {found!r}, this mcdiff reads {FORMAT!r}: "
            + (
                "it was written by an older mcdiff (format /1 lacks the model's weight hash and the statistics' "
                "identity; /2 holds per-evaluation values but no streaming accumulators), so it cannot be resumed "
                "safely; give a new store path"
                if older
                else f"{str(marker)!r} is not an {FORMAT} fingerprint: the store is damaged or foreign; give another path"
            )
        )
    differences = _differences(stored, fingerprint)
    if differences:
        raise ValueError(
            f"store {str(path)!r} was written by a different run; it cannot be resumed or "
            "extended by this one. Differences:\n  " + "\n  ".join(differences)
        )
    return stored


def _load_block(file: Path) -> dict[str, np.ndarray]:
    """The arrays of an npz block file; ``ValueError`` naming the file when it is not a readable one."""
    try:
        with open(file, "rb") as f:
            is_npz = f.read(len(_NPZ_MAGIC)) == _NPZ_MAGIC
        if is_npz:
            with np.load(file, allow_pickle=False) as data:
                return {key: data[key] for key in data.files}
        reason = "not an npz archive"
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        reason = str(err)
    except ValueError as err:  # numpy's advice to load it with pickle does not apply to a block
        reason = "it holds Python objects, which no block does" if "pickle" in str(err) else str(err)
    raise ValueError(
        f"block file {str(file)!r} is damaged or not a block file ({reason}); delete it to recompute it"
    )


def open_draws(path: str | Path, job: str) -> dict:
    """The per-evaluation values a store kept for ``job`` (a design's name), read lazily as dask arrays.

    Returns ``{statistic: dask.array (N, *own_shape)}`` over the stored blocks in address order
    (each block file is read when its chunk is computed); ``N`` is the contiguous prefix of
    stored evaluations. Needs ``dask``. The store is only read, and no lock is taken.

    Raises
    ------
    ValueError
        When ``path`` is not a store, the job is unknown or kept no values.
    """
    try:
        import dask
        import dask.array as da
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("open_draws needs dask: pip install 'mcdiff[dask]'") from err
    path = Path(path)
    marker, description = path / "fingerprint.json", path / "jobs" / str(job) / "job.json"
    if not marker.exists():
        raise ValueError(f"{str(path)!r} is not an mcdiff store (no fingerprint.json)")
    if not description.exists():
        known = sorted(p.name for p in (path / "jobs").iterdir()) if (path / "jobs").is_dir() else []
        raise ValueError(f"store {str(path)!r} has no job {job!r}; it has {known}")
    store = ResultStore(path, json.loads(marker.read_text()))
    stored = store.job(str(job), json.loads(description.read_text()))
    if not stored["values"]:
        raise ValueError(f"job {job!r} of store {str(path)!r} kept no per-evaluation values (draws='none' or 'auto')")
    ranges, prefix = [], 0
    for start, stop in store.done(str(job)):
        if start != prefix:
            break
        ranges.append((start, stop))
        prefix = stop
    if not ranges:
        return {}
    first = store.read_block(str(job), *ranges[0])
    out = {}
    for name, sample in first.items():
        chunks = [
            da.from_delayed(
                dask.delayed(lambda a, b, n=name: store.read_block(str(job), a, b)[n])(a, b),
                shape=(b - a, *sample.shape[1:]),
                dtype=sample.dtype,
            )
            for a, b in ranges
        ]
        out[name] = da.concatenate(chunks)
    return out
