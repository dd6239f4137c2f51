"""Writing files so that nothing is lost or half-written: output folders made with errors that name the argument,
and atomic replacement (a temporary file in the destination folder, fsync, rename, fsync of the folder), so an
interrupted write leaves any earlier file intact."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

_CHUNK = 1 << 24  # bytes per write call


def make_folder(path, argument: str) -> Path:
    """Creates the folder `path` and its missing parents; an existing folder must be writable. Errors name
    `argument`, the option or parameter the path came from: "out: cannot create 'x' (Permission denied)"."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ValueError(f"{argument}: cannot create {str(path)!r} (a file of that name exists)") from None
    except OSError as exc:
        raise ValueError(f"{argument}: cannot create {str(path)!r} ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{argument}: cannot write in {str(path)!r} (Permission denied)")
    return path


def output_file(path, argument: str) -> Path:
    """An output file's path, its folder made (`make_folder`); a path naming a folder is refused."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{argument}: expected a file path, got the folder {str(path)!r}")
    make_folder(path.parent, argument)
    return path


def fsync_folder(folder) -> None:
    """Makes a rename in `folder` durable (POSIX; other systems have no directory handles to sync)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(path) -> Path:
    """A new empty file beside `path` (same folder, so the final rename is atomic), keeping its extension."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    return Path(name)


def replace(tmp, path, sync_folder: bool = True) -> None:
    """Moves the finished file `tmp` over `path`: fsync, the permissions of the file it replaces (or rw-r--r--,
    where mkstemp made rw-------), rename, fsync of the folder."""
    path = Path(path)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    if sync_folder:
        fsync_folder(path.parent)


def _write_chunks(f, data: bytes) -> None:
    view = memoryview(data)
    for start in range(0, len(view), _CHUNK):
        f.write(view[start:start + _CHUNK])


def write_atomically(path, data: bytes | str) -> None:
    """Writes `data` (text is UTF-8) to `path` atomically; the folder must exist."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"path: expected a file in an existing folder, got {str(path)!r}")
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            _write_chunks(f, data.encode() if isinstance(data, str) else data)
        replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
