"""Atomic file writes: a temporary file beside the target, then a rename over it.

Temporary files are named ``.<target name>.<pid>.<random>.tmp``; a write first removes the ones of the same target
that a killed process left behind (its pid no longer runs), so interrupted saves do not pile up. A write that fails
for lack of space says "disk full" and names the file; :func:`atomic_write_or_rescue` then puts the data somewhere
else (the temporary folder, the home folder) rather than losing work that took minutes.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable

__all__ = ["atomic_write", "atomic_write_or_rescue", "check_free_space", "clean_stale", "regular_file",
           "RescuedWriteError"]

STALE_AFTER_S = 60  # a temporary file of a dead process is removed once it is this old (clock skew, slow disks)
UNKNOWN_STALE_AFTER_S = 3600  # one without a pid in its name (older versions): after an hour


def _alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # cannot tell cheaply: keep the file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def clean_stale(directory: str | os.PathLike, prefix: str, suffix: str) -> list[Path]:
    """Remove the files ``<prefix><pid>.<anything><suffix>`` in ``directory`` whose process is gone (and files
    ``<prefix><anything><suffix>`` without a pid that are over an hour old); returns what was removed."""
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for e in entries:
        if not (e.name.startswith(prefix) and e.name.endswith(suffix)) or len(e.name) <= len(prefix) + len(suffix):
            continue
        try:
            if not e.is_file(follow_symlinks=False):
                continue
            age = now - e.stat(follow_symlinks=False).st_mtime
            middle = e.name[len(prefix):-len(suffix) or None]
            pid_text = middle.split(".", 1)[0]
            if "." in middle and pid_text.isdigit():
                stale = age > STALE_AFTER_S and int(pid_text) != os.getpid() and not _alive(int(pid_text))
            else:
                stale = age > UNKNOWN_STALE_AFTER_S
            if stale:
                os.unlink(e.path)
                removed.append(Path(e.path))
        except OSError:
            continue  # another process removed it first, or it is not ours to remove
    return removed


def _disk_full(err: OSError, path: Path, what: str = "") -> OSError:
    if getattr(err, "errno", None) == errno.ENOSPC:
        return OSError(errno.ENOSPC, f"disk full: cannot write {path}{what}; free some space or write elsewhere")
    return err


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` through ``write(fileobj)`` so that readers see the old file or the whole new one, never a part.

    The file is readable by everyone (0644), like any file a user creates. A full disk raises ``OSError`` (ENOSPC)
    whose message starts with "disk full" and names ``path``; the old file, if any, is left as it was.
    """
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise ValueError(f"cannot write to {str(path)!r}: expected a file path")
    if path.is_dir():
        raise IsADirectoryError(f"cannot write to {path}: it is a folder, expected a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}."
    clean_stale(path.parent, prefix, ".tmp")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{prefix}{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except OSError as err:
        new = _disk_full(err, path)
        if new is err:
            raise
        raise new from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


class RescuedWriteError(OSError):
    """The file could not be written where asked; ``rescued`` is where the data went instead (``None`` if nowhere),
    ``payload`` the object that was to be written (so that it is not lost either way)."""

    def __init__(self, errno_: int | None, message: str, rescued: Path | None, payload=None):
        super().__init__(errno_, message)
        self.rescued, self.payload = rescued, payload

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def atomic_write_or_rescue(path: str | os.PathLike, write: Callable[[BinaryIO], object], *, what: str = "the data",
                           payload=None) -> Path:
    """:func:`atomic_write`, and if that fails (full disk, lost permission) the same data written to the temporary
    folder or the home folder instead: ``RescuedWriteError`` then names both places (``.rescued`` holds the path)."""
    path = Path(path)
    try:
        return atomic_write(path, write)
    except OSError as err:
        reason = "disk full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for folder in (Path(tempfile.gettempdir()), Path.home()):
            spare = folder / f"{path.stem}.rescued-{stamp}-{os.getpid()}{path.suffix}"
            try:
                atomic_write(spare, write)
            except OSError:
                continue
            raise RescuedWriteError(err.errno, f"{reason}: could not write {path}; {what} was saved to {spare} instead "
                                    f"(move it to {path} once there is space)", spare, payload) from err
        raise RescuedWriteError(err.errno, f"{reason}: could not write {path}, nor a copy in {tempfile.gettempdir()} or "
                                f"{Path.home()}; {what} is kept in this error's .payload", None, payload) from err


def check_free_space(directory: str | os.PathLike, needed: int, what: str) -> None:
    """``OSError`` (ENOSPC, "disk full: ...") unless ``directory`` has ``needed`` bytes free (checked before work
    whose result would otherwise be lost at the save)."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return  # cannot tell: the write itself will say
    if free < needed:
        raise OSError(errno.ENOSPC, f"disk full: {what} needs about {needed / 2**20:.1f} MiB in {directory}, only "
                      f"{free / 2**20:.1f} MiB are free; free some space or choose another folder")


def regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` if it names a regular file (opening a FIFO or a device would block or read forever);
    ``FileNotFoundError`` if nothing is there, ``ValueError`` if something else is."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if not path.is_file():
        raise ValueError(f"{what} {path} is not a regular file (a folder, FIFO or device); expected a file")
    return path
