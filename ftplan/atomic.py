"""Atomic file writes, on their own because every writer uses them (calibration store, best.json and
exports, training outputs, reports, the HF config cache, benchmark results): a temporary file in the
same folder, flushed, then renamed over the target, so a crash or a kill never leaves half a file.
Standard library only."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from .errors import FtplanError, WriteError

SYSTEM_ROOTS = ("/proc", "/sys", "/dev")  # kernel interfaces: never a place for ftplan's outputs


def check_target(path: Path) -> None:
    """FtplanError unless ``path`` is a regular file or does not exist yet: the rename would replace a
    directory's name, a device (``/dev/full``), a FIFO or a socket with a plain file."""
    try:
        st = os.stat(path)  # follows a symbolic link: its target must be a regular file too
    except FileNotFoundError:
        return
    except OSError as e:
        raise FtplanError(f"cannot write {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise FtplanError(f"refusing to write {path}: it is {_kind(st)}; give the path of a file")
    if _under_system_root(Path(path)):
        raise FtplanError(f"refusing to write {path}: it is under {', '.join(SYSTEM_ROOTS)}; give a file of your own")


def _kind(st: os.stat_result) -> str:
    """What a path that is not a regular file is, for the message that refuses it."""
    return "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (a device, a FIFO or a socket)"


def _under_system_root(p: Path) -> bool:
    try:
        resolved = p.expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        return False
    return any(resolved == Path(r) or Path(r) in resolved.parents for r in SYSTEM_ROOTS)


def check_input(path: str | Path, what: str) -> Path:
    """``path`` as a file ftplan may read: it exists and is a regular file (a device such as /dev/zero would be
    read forever, a FIFO would block); an FtplanError naming ``what`` otherwise."""
    p = Path(path).expanduser()
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise FtplanError(f"{what} {str(path)!r} does not exist") from None
    except (OSError, ValueError) as e:
        raise FtplanError(f"{what} {str(path)!r} cannot be read ({getattr(e, 'strerror', None) or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise FtplanError(f"{what} {str(path)!r} is {_kind(st)}; give a file")
    return p


def check_folder(path: Path, option: str) -> Path:
    """``path`` as a folder ftplan may write into (its writer makes it): an FtplanError naming ``option`` when
    it is an existing file, lies under /proc, /sys or /dev, or lies under a file or a folder it cannot write
    (WriteError)."""
    if not str(path).strip():  # Path("") would be the working folder
        raise FtplanError(f"{option} is empty; give a folder")
    p = Path(path).expanduser()
    try:
        resolved = p.resolve()
    except (OSError, RuntimeError, ValueError) as e:
        raise FtplanError(f"{option} {str(path)[:80]!r}: not a usable path ({e})") from None
    if _under_system_root(p):
        raise FtplanError(f"{option} {str(path)!r} is under {', '.join(SYSTEM_ROOTS)}: give a folder of your own")
    try:
        is_file = p.exists() and not p.is_dir()
    except (OSError, ValueError) as e:  # a name too long for the file system, a NUL byte
        raise FtplanError(f"{option} {str(path)[:80]!r}...: not a usable path ({getattr(e, 'strerror', None) or e})") from None
    if is_file:
        raise FtplanError(f"{option} {str(path)!r} is a file, not a folder; give a folder (made when missing)")
    # made later, by the writer: here only the nearest existing folder above it is checked (nothing is
    # created, so a run refused afterwards leaves nothing behind)
    up = resolved
    try:
        while not up.exists():
            up = up.parent
    except (OSError, ValueError) as e:
        raise FtplanError(f"{option} {str(path)[:80]!r}...: not a usable path ({getattr(e, 'strerror', None) or e})") from None
    if not up.is_dir():
        raise FtplanError(f"{option} {str(path)!r}: {up} is a file, so no folder can be made under it")
    if not os.access(up, os.W_OK | os.X_OK):
        raise WriteError(f"cannot write {option} {str(path)!r}: {up} is not writable")
    return p


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` (folders created) through a temporary file and a rename. Only a regular
    file (or nothing) is replaced; a write the machine refuses (disk full, read-only, no permission) is a
    ``WriteError`` naming the path, and leaves no temporary file behind."""
    path = Path(path)
    check_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes 0600; these files are meant to be read
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise write_error(path, e) from None
        raise


def write_error(path: Path, e: OSError) -> WriteError:
    why = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only",
           errno.EACCES: "permission denied", errno.EPERM: "permission denied",
           errno.EDQUOT: "the disk quota is exceeded"}.get(e.errno or 0, e.strerror or str(e))
    return WriteError(f"cannot write {path}: {why}")


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
