"""One writer at a time: a lock file that names its holder (pid, host, process start, boot).

The lock is a file created atomically (``O_CREAT | O_EXCL``) holding JSON::

    {"pid": 4242, "host": "node7", "boot_id": "...", "process_start": 123456, "since": "...", "token": "..."}

A second writer finds it and is refused at once, naming the holder. A lock is *stale*, and
taken over, only when its holder is known dead, which is decided on the same host only:

- the holder's boot differs from this one (``/proc/sys/kernel/random/boot_id``), or
- no process has the holder's pid (``os.kill(pid, 0)`` fails with ``ESRCH``), or
- a process has that pid but started at another time (``/proc/<pid>/stat`` field 22): the
  pid was reused after the holder died.

A lock from another host cannot be judged (that host's processes are not visible, and a shared
or NFS file system gives no liveness), so it is never taken over: the refusal says how to break
it by hand (make sure that run is dead, then delete the lock file). A lock file that cannot be
parsed (its holder was killed between creating and writing it) is stale once older than
:data:`UNREADABLE_GRACE_S`.

A takeover happens under a second, short-lived exclusive file (``.<lock>.break``): the taker
re-reads the lock, checks that it is still the stale one it judged, replaces it atomically
(``os.replace``) with its own, and re-reads it to confirm it holds it. Two takers cannot both
win, and a lock file always exists during the takeover, so no fresh writer slips in.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import time
import uuid
from pathlib import Path

UNREADABLE_GRACE_S = 10.0
"""Age in seconds after which an unparseable lock file counts as left by a killed writer."""


class WriterLockedError(ValueError):
    """Another writer holds the lock (or it cannot be told dead); the message names it."""


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def process_start(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22), if readable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # fields after "pid (comm)" start at field 3


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user has that pid
        return True
    return True


def holder_is_dead(record: dict) -> bool:
    """Whether the holder of a lock ``record`` on *this* host is known dead (see the module docstring)."""
    boot = _boot_id()
    if record.get("boot_id") and boot and record["boot_id"] != boot:
        return True
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0 or not _alive(pid):
        return True
    started = process_start(pid)
    return (
        record.get("process_start") is not None and started is not None and started != record["process_start"]
    )


class WriterLock:
    """The lock file at ``path`` guarding ``what`` (e.g. ``"store '/data/s'"``).

    Parameters
    ----------
    path : Path
        The lock file.
    what : str
        What the lock guards, for messages.
    """

    def __init__(self, path: Path, what: str):
        self.path = Path(path)
        self.what = what
        self.record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "boot_id": _boot_id(),
            "process_start": process_start(os.getpid()),
            "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "token": uuid.uuid4().hex,
        }
        self.held = False

    def acquire(self) -> None:
        """Take the lock, or a stale one over; raise :class:`WriterLockedError` if another holds it.

        ``OSError`` (read-only or full file system) propagates for the caller to report.
        """
        if self.held:
            return
        for _ in range(5):
            if self._create():
                self.held = True
                return
            text = self._read()
            if text is None:  # released meanwhile: try again
                continue
            self._refuse_unless_stale(text)
            if self._take_over(text):
                self.held = True
                return
        raise WriterLockedError(f"{self.what} is contended by several writers; run again later")

    def release(self) -> None:
        """Delete the lock file if it is still this one's (never another writer's)."""
        if not self.held:
            return
        self.held = False
        with contextlib.suppress(OSError):
            if self._parse(self._read()).get("token") == self.record["token"]:
                self.path.unlink()

    def _content(self) -> bytes:
        return json.dumps(self.record, sort_keys=True).encode()

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, self._content())
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            self.path.unlink()
            raise
        os.close(fd)
        return True

    def _read(self) -> str | None:
        try:
            return self.path.read_text(errors="replace")
        except FileNotFoundError:
            return None

    @staticmethod
    def _parse(text: str | None) -> dict:
        try:
            record = json.loads(text or "")
        except ValueError:
            return {}
        return record if isinstance(record, dict) else {}

    def _refuse_unless_stale(self, text: str) -> None:
        record = self._parse(text)
        where = f"delete {str(self.path)!r} once you are sure that run has ended"
        if not record:
            age = time.time() - self.path.stat().st_mtime
            if age > UNREADABLE_GRACE_S:
                return
            raise WriterLockedError(
                f"{self.what} has a lock file being written ({str(self.path)!r}); run again in a moment"
            )
        holder = f"pid {record.get('pid')} on host {record.get('host')!r}, since {record.get('since')}"
        if record.get("host") != self.record["host"]:
            raise WriterLockedError(
                f"{self.what} is locked by a writer on another host ({holder}), which cannot be told "
                f"alive or dead from here: if it is not running, {where}"
            )
        if not holder_is_dead(record):
            raise WriterLockedError(
                f"{self.what} is being written by another run ({holder}): one writer at a time; "
                "wait for it to end or stop it"
            )

    def _take_over(self, stale: str) -> bool:
        """Replace the stale lock ``stale`` by this one under the break file; whether this one holds it."""
        guard = self.path.with_name(f".{self.path.name}.break")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            raise WriterLockedError(
                f"{self.what}: another run is taking over a stale lock ({str(guard)!r} exists); run again, "
                "and if the message stays, delete that file"
            ) from None
        try:
            if self._read() != stale:
                return False
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(self._content())
            os.replace(tmp, self.path)
            return self._parse(self._read()).get("token") == self.record["token"]
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                guard.unlink()
