"""Safe writes to a run folder: atomic replacement, file locks, and one-line storage errors.

- :func:`atomic_write` writes a temporary sibling, fsyncs it and ``os.replace``-s it, so a
  reader (or a run killed half-way) never sees a partial file (:func:`atomic_path` for writers
  that need a file name, such as ``np.lib.format.open_memmap``).
- :func:`reuse_or_build` (with :func:`sidecar_matches` and :func:`write_sidecar`) is the one
  "reuse the outputs when their JSON sidecar equals the key, else rebuild them" rule.
- :func:`file_lock` is an exclusive ``fcntl.flock`` on ``<path>.lock``, re-entrant within a
  process: every read-modify-write of a shared table (``results.csv``, ``deltas.csv``) runs
  under it, so two processes upserting rows never lose each other's rows.
- :func:`run_lock` holds ``<run_dir>/.lock`` for a whole run; a second run of the same folder
  exits with :class:`RunFolderBusy` naming the holder's pid.
- :func:`writing` turns a full disk, a read-only folder or a refused permission (``OSError`` or
  torch's ``inline_container.cc`` failure) into one :class:`StorageError` line naming the path.

Linux/macOS only (``fcntl``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

T = TypeVar("T")

_CAUSES = {
    errno.ENOSPC: "no space left on the device (disk full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
_TORCH_WRITE = ("inline_container.cc", "file write failed", "unexpected pos")


class StorageError(RuntimeError):
    """A write failed for a storage reason (disk full, read-only, permission); one line."""


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder's lock."""


def storage_error(exc: BaseException, path: str | Path) -> StorageError | None:
    """The one-line :class:`StorageError` for ``exc`` when it is a storage failure, else None."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, OSError) and exc.errno in _CAUSES:
        where = exc.filename or path
        return StorageError(f"cannot write {where}: {_CAUSES[exc.errno]}")
    text = str(exc)
    if isinstance(exc, RuntimeError) and any(t in text for t in _TORCH_WRITE):
        return StorageError(f"cannot write {path}: the write failed part-way "
                            f"(disk full or quota reached?)")
    return None


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Re-raise storage failures inside the block as one-line :class:`StorageError`s."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        err = storage_error(exc, path)
        if err is None or err is exc:
            raise
        raise err from None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write by name; when the block ends without an
    error it is fsynced and ``os.replace``-d onto ``path``. It never outlives the block, and
    storage failures read as one :class:`StorageError` line."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    with writing(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write through ``write(fileobj)`` to a temporary sibling, fsync, then ``os.replace``."""
    with atomic_path(path) as tmp, open(tmp, mode) as fh:
        write(fh)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text), mode="w")


def _as_json(key: Mapping[str, Any]) -> Any:
    return json.loads(json.dumps(key))


def sidecar_matches(sidecar: str | Path, key: Mapping[str, Any],
                    outputs: Sequence[str | Path] = ()) -> bool:
    """True when ``sidecar`` and every file in ``outputs`` exist and the sidecar's JSON equals
    ``key`` (compared as JSON, so tuples equal lists); unreadable or corrupt JSON is False."""
    sidecar = Path(sidecar)
    if not all(Path(p).is_file() for p in (sidecar, *outputs)):
        return False
    try:
        return json.loads(sidecar.read_text()) == _as_json(key)
    except (OSError, ValueError):
        return False


def write_sidecar(sidecar: str | Path, key: Mapping[str, Any]) -> None:
    """Write ``key`` to ``sidecar`` as ``json.dumps(key, indent=2)``, atomically."""
    atomic_write_text(sidecar, json.dumps(_as_json(key), indent=2))


def reuse_or_build(sidecar: str | Path, key: Mapping[str, Any], outputs: Sequence[str | Path],
                   load: Callable[[], T | None], build: Callable[[], None]) -> T:
    """Return ``load()`` when :func:`sidecar_matches` and ``load()`` gives a value (None, or a
    ValueError/KeyError/OSError, counts as stale); otherwise delete the sidecar, ``build()`` the
    ``outputs`` (each written atomically), write the sidecar last and return ``load()``."""
    if sidecar_matches(sidecar, key, outputs):
        try:
            value = load()
        except (ValueError, KeyError, OSError):
            value = None
        if value is not None:
            return value
    Path(sidecar).unlink(missing_ok=True)
    build()
    write_sidecar(sidecar, key)
    return load()


_held: dict[str, list] = {}  # lock path -> [fd, depth]
_held_guard = threading.RLock()


@contextlib.contextmanager
def file_lock(path: str | Path, timeout: float | None = None) -> Iterator[None]:
    """Exclusive lock on ``<path>.lock`` for the block; waits (at most ``timeout`` s).

    Re-entrant within a process (nested blocks on the same path share one lock)."""
    lock = Path(f"{Path(path).resolve()}.lock")
    key = str(lock)
    with _held_guard:
        if key in _held:
            _held[key][1] += 1
            try:
                yield
            finally:
                _held[key][1] -= 1
            return
        with writing(lock):
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _flock(fd, lock, timeout)
            _held[key] = [fd, 1]
            try:
                yield
            finally:
                del _held[key]
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _flock(fd: int, lock: Path, timeout: float | None) -> None:
    if timeout is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    end = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > end:
                raise TimeoutError(f"{lock}: still locked by another process after {timeout} s") from None
            time.sleep(0.05)


@contextlib.contextmanager
def run_lock(run_dir: str | Path, what: str = "run") -> Iterator[Path]:
    """Hold ``<run_dir>/.lock`` for the block, recording this pid in it; a second holder gets
    :class:`RunFolderBusy` naming the first one's pid (the lock dies with its process)."""
    root = Path(run_dir)
    lock = root / ".lock"
    with writing(lock):
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown pid"
            raise RunFolderBusy(
                f"run folder {root} is in use by another {what} ({holder}); wait for it to "
                f"finish, or give another --run-dir"
            ) from None
        with writing(lock):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        try:
            yield root
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
