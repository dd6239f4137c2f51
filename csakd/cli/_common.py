"""What every command does the same way: output paths (missing parent folders are created; a folder that cannot
be created or written names the argument)."""
from __future__ import annotations

import os
from pathlib import Path


def check_output_path(path, name: str, folder: bool = False) -> Path:
    """Creates the missing parents of an output file (or the output folder itself with folder=True) and checks
    that the folder is writable, before any work is done. Errors name the argument `name`."""
    path = Path(path)
    target = path if folder else path.parent
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{name}: cannot create the folder {str(target)!r} ({exc.strerror or exc})") from None
    if not target.is_dir():
        raise ValueError(f"{name}: expected a folder at {str(target)!r}, found a file")
    if not os.access(target, os.W_OK | os.X_OK):
        raise ValueError(f"{name}: cannot write in the folder {str(target)!r} (permission denied)")
    if not folder and path.is_dir():
        raise ValueError(f"{name}: expected a file path, got the folder {str(path)!r}")
    return path
