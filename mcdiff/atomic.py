"""Files that appear whole or not at all, and the checks that a place can be written.

:func:`replace_atomically` writes a file or a directory (a Zarr store) under a hidden
temporary name beside its target, flushes it to disk and renames it into place. POSIX
``rename`` is atomic within one file system, so a reader, a crash or a full disk leaves
either the old content or the new one at the target, never a mix or a truncated file. A
directory cannot be renamed over a non-empty one, so an old directory is first renamed aside
(the one moment the target name is absent), the new one renamed into place, then the old
one deleted; a failure between the two renames puts the old one back.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
"""The ``errno`` values of a write that ran out of space (disk or quota)."""

LOW_SPACE = 1 << 20
"""Free bytes below which a failed write is reported as a full disk: some libraries (netCDF,
HDF5) report a short write as their own error, without ``ENOSPC``."""


def check_directory(path: str | Path, what: str) -> Path:
    """Return ``path`` if it is an existing directory this process can write, else raise.

    ``what`` names the file to be written there in the message (``"result 'r.nc'"``).

    Raises
    ------
    ValueError
        When ``path`` does not exist, is not a directory, or is not writable.
    """
    path = Path(path)
    where = str(path) if str(path) else "."
    if not path.exists():
        raise ValueError(f"cannot write {what}: directory {where!r} does not exist")
    if not path.is_dir():
        raise ValueError(f"cannot write {what}: {where!r} is a file, not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {what}: directory {where!r} is not writable")
    return path


def disk_full_error(path: Path, partial: int | None = None) -> OSError:
    """The ``OSError(ENOSPC)`` of a write of ``path`` that ran out of space: one line, with the free space."""
    free = shutil.disk_usage(path.parent if str(path.parent) else ".").free
    needs = f"; it needs more than the {partial / 2**20:.1f} MiB written before the disk filled" if partial else ""
    return OSError(
        errno.ENOSPC,
        f"no space left on the file system of {str(path.parent)!r} writing {str(path)!r}: "
        f"{free / 2**20:.1f} MiB free{needs}",
    )


def is_disk_full(err: BaseException, path: Path) -> bool:
    """Whether ``err``, raised while writing into ``path``'s directory, means the disk is full."""
    if isinstance(err, OSError) and err.errno in DISK_FULL:
        return True
    return isinstance(err, (OSError, RuntimeError)) and shutil.disk_usage(path.parent).free < LOW_SPACE


def replace_atomically(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write ``path`` by calling ``write(tmp)`` and renaming ``tmp`` into place once it is on disk.

    ``tmp`` is a hidden sibling of ``path`` ending in the same suffix (``.r.nc.PID.tmp.nc``);
    ``write`` may create a file or a directory there. Everything under ``tmp`` is fsynced
    before the rename, and the directory after it.

    Raises
    ------
    OSError
        ``ENOSPC`` with one line naming ``path`` and the free space when the disk fills
        (:func:`disk_full_error`); the old ``path`` is unchanged and ``tmp`` is removed.
        Any other error of ``write`` propagates, after the same cleanup.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    aside = path.with_name(f".{path.name}.{os.getpid()}.old{path.suffix}")
    try:
        write(tmp)
        _fsync_tree(tmp)
        if path.exists() and (tmp.is_dir() or path.is_dir()):
            os.replace(path, aside)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(aside, path)
                raise
            _remove(aside, quiet=0)
        else:
            os.replace(tmp, path)
        _fsync_tree(path.parent, recursive=False)
    except BaseException as err:
        partial = _size(tmp)
        full = is_disk_full(err, path)
        _remove(tmp)
        if full:
            raise disk_full_error(path, partial) from None
        raise
    return path


def _fsync_tree(path: Path, recursive: bool = True) -> None:
    """fsync a file, or a directory (with everything under it when ``recursive``)."""
    if path.is_dir() and recursive:
        for root, _, files in os.walk(path):
            for name in files:
                _fsync_tree(Path(root) / name)
            _fsync_tree(Path(root), recursive=False)
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _size(path: Path) -> int:
    """Bytes the file or directory ``path`` occupies on disk (a sparse file counts its blocks only)."""
    files = [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else [path] if path.is_file() else []
    return sum(min(s.st_size, 512 * s.st_blocks) for s in (f.stat() for f in files))


def _remove(path: Path, quiet: float = 0.3, patience: float = 10.0) -> None:
    """Delete the file or directory ``path``; a directory is deleted again until it stays gone.

    A Zarr write that failed on one chunk returns while its other chunk writes still run (and
    recreate their folders), so a directory counts as gone once it has stayed absent for
    ``quiet`` seconds, trying for ``patience`` seconds at most.
    """
    if not path.is_dir() or path.is_symlink():
        if path.exists() or path.is_symlink():
            path.unlink()
        return
    deadline, gone_since = time.monotonic() + patience, None
    while time.monotonic() < deadline:
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
            gone_since = None
        elif gone_since is None:
            gone_since = time.monotonic()
        elif time.monotonic() - gone_since >= quiet:
            return
        time.sleep(0.05)
