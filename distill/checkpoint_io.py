"""Checkpoint writes that never leave a cut file in place of a good one.

Lightning saves through a temporary file in ``$TMPDIR`` and moves it over the target; across
filesystems (a tmpfs temp dir, NFS, Lustre) that move truncates the target first, so a kill or a
full disk mid-save leaves a 0-byte or cut ``last.ckpt``. Here the temporary file lives beside the
target, is flushed to disk, then renamed over it: the target is always a complete checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Any

import torch
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from lightning.pytorch.plugins.io import TorchCheckpointIO


def atomic_save(checkpoint: Any, path: str | os.PathLike) -> None:
    """``torch.save(checkpoint, path)``, atomically: the file at ``path`` is the old one or the
    new complete one, never a partial write, whatever happens during the save.

    A kill -9 during the save can leave a hidden ``.<name>.<random>.tmp`` beside the target.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # O_EXCL: never write through a file or symlink that someone else put there; mode 0o666
    # lets the umask decide the permissions, as for a plain open().
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:  # including KeyboardInterrupt and SIGTERM's SystemExit
        temporary.unlink(missing_ok=True)
        cause = _os_error(error)
        if cause is None:
            raise
        # torch's zip writer reports a full disk as "RuntimeError: ... unexpected pos"
        raise OSError(
            cause.errno,
            f"checkpoint {path} not written ({cause.strerror}); the previous file there, if "
            "any, is unchanged: free disk space or make the directory writable",
        ) from error
    _fsync_directory(path.parent)


def _os_error(error: BaseException | None) -> OSError | None:
    """The first OSError with an errno in the chain of ``error`` (itself, then its causes)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno is not None:
            return error
        error = error.__cause__ or error.__context__
    return None


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (a crash right after could otherwise undo it)."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        # some filesystems (e.g. some network ones) refuse to fsync a directory; the rename
        # has happened all the same
        with contextlib.suppress(OSError):
            os.fsync(descriptor)
    finally:
        os.close(descriptor)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's `TorchCheckpointIO`, with local checkpoints written by `atomic_save`.

    ``L.Trainer(plugins=[AtomicCheckpointIO()])``. Remote paths (``s3://`` ...) keep
    Lightning's own transaction, which uploads a whole object at once.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        filesystem, local_path = url_to_fs(str(path))
        if storage_options is not None or not isinstance(filesystem, LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_save(checkpoint, local_path)
