"""The result store: per-evaluation statistic values on disk, keyed by (design, address).

A run that is given a store writes every block of evaluations as soon as it is computed and,
when started again, evaluates only the addresses the store does not hold yet. Because noise
is a pure function of ``(seed, design, address)``, the resumed result is identical to an
uninterrupted one.

Layout (one directory, one writer at a time)::

    PATH/fingerprint.json                       what produced the values (see below)
    PATH/blocks/<design>/<start>-<stop>.npz     values of evaluations start .. stop - 1

A block file holds one array ``(stop - start, *own_shape)`` per statistic, its ``start`` and
``stop`` and the fingerprint's digest. It is written to a hidden temporary file, flushed to
disk and then renamed into place (``os.replace`` is atomic on POSIX), so a process killed at
any moment leaves either the whole block or no block; leftover temporary files are removed
when the store is opened. Blocks never split a group (pair or replicate).

The fingerprint records the model (``Sampler.describe()``), the seed, every design in its
extendable form (its ``repr`` fixes the address layout, e.g. Sobol' points per replicate),
the statistic names, the noise spec and the mcdiff version. Opening a store with another
fingerprint raises ``ValueError`` naming what differs; a directory that is not a store, a
damaged fingerprint and a damaged or foreign block file raise ``ValueError`` too.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

FORMAT = "mcdiff-store/1"
"""Format tag written into every fingerprint."""

_BLOCK = re.compile(r"(\d+)-(\d+)\.npz")
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.+-]+")


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


class ResultStore:
    """An open store: which addresses are done, appending blocks, reading them back.

    Use :meth:`open`; the constructor does no checks.

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

    @classmethod
    def open(cls, path: str | Path, fingerprint: Mapping) -> ResultStore:
        """Create the store at ``path``, or open it if its fingerprint equals ``fingerprint``.

        Raises
        ------
        ValueError
            When ``path`` is a file, a non-empty directory that is not an mcdiff store, a store
            with an unreadable fingerprint, or a store of another model, seed, design,
            statistic set, noise spec or mcdiff version (the message names each difference).
        """
        path = Path(path)
        fingerprint = json.loads(_canonical({"format": FORMAT, **fingerprint}))
        for name in fingerprint.get("designs", {}):
            if not _SAFE_NAME.fullmatch(name):
                raise ValueError(f"design name {name!r} cannot name a store directory: use [A-Za-z0-9_.+-]")
        if path.exists() and not path.is_dir():
            raise ValueError(f"store path {str(path)!r} is a file, not a store directory")
        marker = path / "fingerprint.json"
        if not marker.exists():
            if path.exists() and any(not entry.name.startswith(".") for entry in path.iterdir()):
                raise ValueError(
                    f"{str(path)!r} is not an mcdiff store (no fingerprint.json) and is not empty; "
                    "refusing to write into it: give a new or empty directory"
                )
            path.mkdir(parents=True, exist_ok=True)
            _write_atomic(marker, json.dumps(fingerprint, indent=1, sort_keys=True).encode())
        else:
            try:
                stored = json.loads(marker.read_text())
                if not isinstance(stored, dict) or stored.get("format") != FORMAT:
                    raise ValueError(
                        f"format is {stored.get('format') if isinstance(stored, dict) else stored!r}"
                    )
            except (ValueError, UnicodeDecodeError) as err:
                raise ValueError(
                    f"{str(marker)!r} is not an {FORMAT} fingerprint ({err}): the store is damaged or "
                    "foreign; give another path"
                ) from None
            differences = [
                f"{key}: stored {_canonical(stored.get(key))}, requested {_canonical(fingerprint.get(key))}"
                for key in sorted(set(stored) | set(fingerprint))
                if _canonical(stored.get(key)) != _canonical(fingerprint.get(key))
            ]
            if differences:
                raise ValueError(
                    f"store {str(path)!r} was written by a different run; it cannot be resumed or "
                    "extended by this one. Differences:\n  " + "\n  ".join(differences)
                )
        store = cls(path, fingerprint)
        for design in fingerprint.get("designs", {}):
            store._scan(design)
        return store

    def _dir(self, design: str) -> Path:
        if design not in self.fingerprint["designs"]:
            raise ValueError(
                f"design {design!r} is not in this store; it has {list(self.fingerprint['designs'])}"
            )
        return self.path / "blocks" / design

    def _scan(self, design: str) -> None:
        folder = self._dir(design)
        folder.mkdir(parents=True, exist_ok=True)
        index: dict[int, int] = {}
        for entry in folder.iterdir():
            if entry.name.startswith("."):  # a temporary file left by a killed writer
                entry.unlink()
                continue
            match = _BLOCK.fullmatch(entry.name)
            if not match:
                raise ValueError(f"foreign file {str(entry)!r} in store {str(self.path)!r}: remove it")
            start, stop = int(match[1]), int(match[2])
            if stop <= start:
                raise ValueError(f"block file {str(entry)!r} names an empty range")
            index[start] = stop
        ends = sorted(index.items())
        for (a, b), (c, d) in itertools.pairwise(ends):
            if c < b:
                raise ValueError(
                    f"store {str(self.path)!r} has overlapping blocks [{a}, {b}) and [{c}, {d}) of "
                    f"design {design!r}: it is damaged"
                )
        self._index[design] = index

    def done(self, design: str) -> list[tuple[int, int]]:
        """Stored address ranges ``[(start, stop), ...]`` of ``design``, in address order."""
        self._dir(design)
        return sorted(self._index[design].items())

    def write(self, design: str, start: int, stop: int, values: Mapping[str, np.ndarray]) -> None:
        """Store values ``{statistic: (stop - start, *own_shape)}`` of evaluations ``start .. stop - 1``.

        The block appears all at once (temporary file, fsync, atomic rename) or not at all.
        """
        folder = self._dir(design)
        if set(values) != set(self.fingerprint["statistics"]):
            raise ValueError(
                f"block has statistics {sorted(values)}, the store {self.fingerprint['statistics']}"
            )
        for other_start, other_stop in self._index[design].items():
            if start < other_stop and other_start < stop:
                raise ValueError(
                    f"block [{start}, {stop}) of design {design!r} overlaps stored block "
                    f"[{other_start}, {other_stop})"
                )
        arrays = {f"stat_{name}": np.asarray(v, dtype=np.float64) for name, v in values.items()}
        for name, array in arrays.items():
            if len(array) != stop - start:
                raise ValueError(f"{name[5:]!r} has {len(array)} rows for block [{start}, {stop})")
        tmp = folder / f".{start}-{stop}.npz.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, start=start, stop=stop, digest=self.digest, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / f"{start}-{stop}.npz")
        self._index[design][start] = stop

    def read(self, design: str) -> list[tuple[int, int, dict[str, np.ndarray]]]:
        """Every stored block of ``design`` as ``(start, stop, {statistic: values})``, in address order.

        Raises
        ------
        ValueError
            For a block file that is damaged, belongs to another store, or holds other
            statistics or row counts than its name says. Delete that file to recompute it.
        """
        blocks = []
        for start, stop in self.done(design):
            file = self._dir(design) / f"{start}-{stop}.npz"
            try:
                with np.load(file) as data:
                    content = {key: data[key] for key in data.files}
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
                raise ValueError(
                    f"block file {str(file)!r} is damaged ({err}); delete it to recompute it"
                ) from None
            names = sorted(k[5:] for k in content if k.startswith("stat_"))
            problem = None
            if str(content.get("digest")) != self.digest:
                problem = "it was written by a different run (fingerprint digest differs)"
            elif (int(content.get("start", -1)), int(content.get("stop", -1))) != (start, stop):
                problem = "its stored range differs from its name"
            elif names != sorted(self.fingerprint["statistics"]):
                problem = f"it holds statistics {names}"
            elif any(len(content[f"stat_{n}"]) != stop - start for n in names):
                problem = "its row count differs from its range"
            if problem:
                raise ValueError(
                    f"block file {str(file)!r} does not belong here: {problem}; delete it to recompute it"
                )
            blocks.append((start, stop, {n: content[f"stat_{n}"] for n in names}))
        return blocks


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
