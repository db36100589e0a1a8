"""Read the bytes an image URI names, only under the configured roots: the one reader behind the
worker's events (`worker.image_source`) and the retraining's recorded rows
(`model.data.recorded_images`), so both refuse and fail the same way.

A URI from an event or a database row is data, not an instruction: `model.data.roots` decides
whether it may be followed (local paths resolved, symlinks included, before the check; URLs
must start with a configured prefix and carry no `..` segment). Two kinds of failure, because
callers handle them oppositely:

- `Refused(kind)`: the URI itself cannot be read, now or later: `outside_roots`, `missing`
  (absent, not a regular file, a name the OS refuses), `too_large`, `no_store` (a scheme with
  no fsspec driver here);
- `Unreachable`: the store did not answer now (an I/O error on a network volume, a network or
  credentials failure); the same read may succeed later.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Literal

import fsspec

from model.data.roots import OutsideRoots, Roots

RefusedKind = Literal["outside_roots", "missing", "too_large", "no_store"]

_NOT_FOUND = (FileNotFoundError, IsADirectoryError, NotADirectoryError)
# OS errors that name the request, not the moment: a name too long, a symlink loop, an invalid
# argument. Retrying them would only stall whoever waits.
_PERMANENT_ERRNO = {errno.ENAMETOOLONG, errno.ELOOP, errno.EINVAL, errno.EILSEQ, errno.ENXIO}


class Refused(Exception):
    def __init__(self, kind: RefusedKind, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class Unreachable(Exception):
    """The store could not answer now; the same request may succeed later."""


def read_uri(roots: Roots, uri: str, max_bytes: int) -> bytes:
    """The bytes at `uri` (at most `max_bytes`), or `Refused` / `Unreachable`."""
    try:
        where = roots.resolve(uri)
    except OutsideRoots as exc:
        raise Refused("outside_roots", str(exc)) from exc
    return (
        _read_local(uri, where, max_bytes)
        if isinstance(where, Path)
        else _read_remote(uri, max_bytes)
    )


def _read_local(uri: str, path: Path, max_bytes: int) -> bytes:
    try:
        # O_NONBLOCK: a FIFO or a device under a root must not block the open (a FIFO with no
        # writer would hang the reader, and whatever waits on it, for good).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise Refused("missing", f"{uri} is not a regular file")
            if st.st_size > max_bytes:
                raise Refused("too_large", f"{uri} is {st.st_size} bytes")
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:  # it grew after the stat
            raise Refused("too_large", f"{uri} is above {max_bytes} bytes")
        return data
    except _NOT_FOUND as exc:
        raise Refused("missing", f"{uri}: {exc.strerror}") from exc
    except PermissionError as exc:
        raise Refused("outside_roots", f"{uri}: permission denied") from exc
    except OSError as exc:
        if exc.errno in _PERMANENT_ERRNO:
            raise Refused("missing", f"{uri}: {exc.strerror}") from exc
        # EIO, ESTALE on a network volume: worth another try.
        raise Unreachable(f"{uri}: {exc}") from exc


def _read_remote(uri: str, max_bytes: int) -> bytes:
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ValueError, ImportError) as exc:  # unknown protocol, driver not installed
        raise Refused("no_store", f"{uri}: no store for this scheme: {exc}") from exc
    try:
        size = fs.size(path)
        if size is not None and size > max_bytes:
            raise Refused("too_large", f"{uri} is {size} bytes")
        data = fs.cat_file(path)
    except _NOT_FOUND as exc:
        raise Refused("missing", f"{uri} does not exist") from exc
    except Refused:
        raise
    except Exception as exc:  # network, credentials refresh, throttling: the store's problem
        raise Unreachable(f"{uri}: {type(exc).__name__}: {exc}") from exc
    if len(data) > max_bytes:
        raise Refused("too_large", f"{uri} is {len(data)} bytes")
    return data
