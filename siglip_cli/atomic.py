"""Files that are never half-written, and temp files that no other run can lose.

Every file goes to a temporary name in its destination folder and is renamed into place only when
complete, so a run killed at any moment leaves the old file or the new one, never half of one.

Each temp file is locked (flock) by the process writing it for as long as it is open; the kernel drops
the lock when that process dies, however it dies. So a cleanup removes only temps it can lock itself,
which are provably abandoned: another live run's temp (a rerun started early, a shard given twice,
two outputs whose names share a long prefix) is never touched. Torch- and numpy-free.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import stat
import tempfile
import time
from pathlib import Path

from .errors import OutputError, UsageError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locks, so no temp is ever provably abandoned
    fcntl = None

TMP_SUFFIX = ".siglip-tmp"
# A temp whose writer cannot be seen from here (another host; or one mid-creation) is only removed when
# its lock is free and it has not been written to for this long.
STALE_AFTER_S = 60.0
# mkstemp creates files readable by their owner only; outputs get the usual permissions (0666 - umask).
_UMASK = os.umask(0)
os.umask(_UMASK)
_cleaned: set[str] = set()  # folders whose abandoned temps this process has already removed


def _lock(fd: int) -> bool:
    """Take the writer's lock on a temp; False where the file system has no locks (then nothing is
    ever proved abandoned, so nothing is removed)."""
    if fcntl is None:
        return False  # pragma: no cover
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]
_NEW = ".siglip-new"  # a temp not yet locked: renamed to TMP_SUFFIX once it is
_TEMP = re.compile(r"^\..*\.([0-9a-f]{6})-(\d+)\.[a-z0-9_]{8}(%s|%s)$" % (re.escape(TMP_SUFFIX), re.escape(_NEW)),
                   re.DOTALL)


def _temp_prefix(path: Path) -> str:
    # `.name.HOST-PID.` + mkstemp's 8 random characters: the name's first 100 bytes (undecodable bytes
    # and a cut UTF-8 sequence survive as surrogates, written back as bytes), which host and process.
    return f".{os.fsdecode(os.fsencode(path.name)[:100])}.{_HOST}-{os.getpid()}."


def temp_file(path: Path):
    """A new temporary file beside `path` (same folder, so the final rename is atomic), locked.

    It is created as `.name.HOST-PID.XXXXXXXX.siglip-new`, locked, then renamed to `.siglip-tmp`, so
    every `.siglip-tmp` is locked from the moment it exists (the name is unique to this process, so the
    rename replaces nothing).
    """
    clean_abandoned_temps(path.parent)
    try:
        fd, new = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=_NEW, dir=path.parent)
    except OSError as e:
        raise OutputError(f"cannot write {str(path)!r}: {e.strerror or e}", e.errno) from None
    tmp = new[:-len(_NEW)] + TMP_SUFFIX
    try:
        if _lock(fd):
            os.rename(new, tmp)
        else:  # no locks here: the name does not matter
            tmp = new
        os.fchmod(fd, 0o666 & ~_UMASK)
    except OSError as e:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(new)
        raise OutputError(f"cannot write {str(path)!r}: {e.strerror or e}", e.errno) from None
    return os.fdopen(fd, "wb+"), Path(tmp)


def _abandoned(name: str, age: float, lockable: bool) -> bool:
    """Whether a temp's writer is provably gone. Its lock must be free; then either it was written by
    a process of this host that no longer exists, or it is older than STALE_AFTER_S (a writer on
    another host, whose lock a shared file system may not show here; a `.siglip-new` mid-creation)."""
    m = _TEMP.match(name)
    if m is None or not lockable:
        return False
    if age > STALE_AFTER_S:
        return True
    if m.group(1) != _HOST or m.group(3) == _NEW:
        return False
    try:
        os.kill(int(m.group(2)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        pass
    return False


def clean_abandoned_temps(folder: Path) -> None:
    """Remove the temps of killed earlier runs in `folder`, once per folder and process.

    A temp is removed only when its lock can be taken and its writer is provably gone (see
    _abandoned): another live writer's temp, in this process or another, is never touched.
    """
    key = os.path.abspath(folder)
    if key in _cleaned or fcntl is None:
        return
    _cleaned.add(key)
    try:
        entries = [e for e in os.scandir(folder) if _TEMP.match(e.name)]
    except OSError:
        return
    for entry in entries:
        with contextlib.suppress(OSError):
            if not entry.is_file(follow_symlinks=False):
                continue
            fd = os.open(entry.path, os.O_RDWR | os.O_NOFOLLOW)
            try:
                if _abandoned(entry.name, time.time() - os.fstat(fd).st_mtime, _lock(fd)):
                    os.unlink(entry.path)
            finally:
                os.close(fd)


def commit(f, tmp: Path, path: Path) -> None:
    """Flush a finished temp to disk and rename it into place."""
    f.flush()
    os.fsync(f.fileno())
    f.close()
    os.replace(tmp, path)


def discard(f, tmp: Path) -> None:
    with contextlib.suppress(OSError):
        f.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


def special_kind(mode: int) -> str | None:
    """'a FIFO', 'a device' ... for what is not a regular file or a folder."""
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return None


_STD_STREAM = re.compile(r"^/dev/(stdout|stderr)$|^/(dev|proc/self)/fd/(\d+)$")


def _std_fd(path: Path) -> int | None:
    """The descriptor `/dev/stdout`, `/dev/stderr`, `/dev/fd/N` or `/proc/self/fd/N` names, if any."""
    m = _STD_STREAM.match(str(path))
    if m is None:
        return None
    return {"stdout": 1, "stderr": 2}[m.group(1)] if m.group(1) else int(m.group(3))


def destination(path: Path, through: bool = False) -> tuple[Path, bool]:
    """Where writing `path` really writes, and whether it is written through rather than replaced.

    A symlink is followed: its target is replaced (atomically), the link stays. A FIFO, a device
    (/dev/null, /dev/stdout) or a socket is never replaced by a regular file: with through=True (a
    report) it is written to as any Unix tool would; otherwise (an embeddings file) it is refused.
    """
    if through and _std_fd(path) is not None:
        return Path(path), True  # /dev/stdout is whatever stdout is now: a pipe, a socket, a log opened >>
    real = Path(os.path.realpath(path))
    try:
        mode = os.stat(real).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return real, False
    except OSError as e:  # a name too long, a loop of symlinks ...
        raise OutputError(f"cannot write {str(path)!r}: {e.strerror or e}", e.errno) from None
    if stat.S_ISDIR(mode):
        raise UsageError(f"output {str(path)!r} is a directory: give a file name")
    kind = special_kind(mode)
    if kind is None:
        return real, False
    if not through:
        raise UsageError(f"output {str(path)!r} is {kind}: embeddings are written to regular files (atomically); "
                         "give a file name")
    return real, True


def check_writable(path: Path, through: bool = False) -> None:
    """Fail before any work when a file cannot be created where it is asked for."""
    try:
        real, special = destination(path, through)
    except OutputError as e:
        raise UsageError(str(e)) from None
    if not special:  # a FIFO or device is written through at the end; opening a FIFO now would block
        check_folder_writable(real.parent)


def check_folder_writable(folder: Path) -> None:
    """Create the folder if needed and prove a file can be written in it, before any work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create output folder {str(folder)!r}: {e.strerror or e}") from None
    try:  # a real probe: permission bits say nothing to root, or on read-only and virtual filesystems
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UsageError(f"cannot write to output folder {str(folder)!r}: {e.strerror or e}") from None


def _write_through(path: Path, data: bytes) -> None:
    """Into what is there: the process's own descriptor for /dev/stdout and the like (reopening it
    fails for a socket and would truncate a log opened with >>), else the FIFO or device, appended."""
    fd = _std_fd(path)
    own = fd is None
    if own:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        if own:
            os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, through: bool = False) -> None:
    """Write a whole file atomically (or, with through=True, into a FIFO or device found at `path`)."""
    real, special = destination(path, through)
    try:
        if special:
            _write_through(real, data)
            return
        f, tmp = temp_file(real)
    except OSError as e:
        raise OutputError(f"cannot write {str(path)!r}: {e.strerror or e}", e.errno) from None
    try:
        f.write(data)
        commit(f, tmp, real)
    except BaseException as e:
        discard(f, tmp)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {str(path)!r}: {e.strerror or e}", e.errno) from None
        raise
