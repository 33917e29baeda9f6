"""Durable writes: flush a file's contents, or a directory's entries (a rename), to the disk."""

from __future__ import annotations

import os
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
