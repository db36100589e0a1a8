"""Atomic file writes: a reader (another worker, a training run sharing a cache, a person
opening a report) sees the old file or the new one, never a torn one.

The bytes go to a uniquely named temporary file beside the target (same file system, so the
rename is atomic; unique, so two writers of one cache entry never share a temporary file), and
one `os.replace` publishes them. A failure removes the temporary file and leaves the target as
it was.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Publish what `write(tmp)` writes to a temporary path as `path`, in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Publish `data` as the content of `path`, in one rename."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
