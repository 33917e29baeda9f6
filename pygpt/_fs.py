"""Durable writes: flush a file's contents, or a directory's entries (a rename), to the disk."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_file(path: str | os.PathLike) -> None:
    """fsync a regular file (opened for writing: Windows' FlushFileBuffers needs write access)."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory, making the renames and new entries in it durable (where the platform allows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # a platform that can't open directories (Windows): nothing more can be done there
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems don't sync directories
    finally:
        os.close(fd)


def fsync_tree_files(directory: str | os.PathLike) -> None:
    """fsync every regular file directly in ``directory``, then the directory itself."""
    for entry in Path(directory).iterdir():
        if entry.is_file():
            fsync_file(entry)
    fsync_dir(directory)


def write_bytes_atomically(path: str | os.PathLike, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` through a temporary file in its directory, synced, then renamed over it: ``path``
    holds the whole old content or the whole new one, never a part (a crash, a full disk). ``mode``: the file's
    permission bits (mkstemp makes it private, 0600)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
