"""Which image URIs may be read: the one rule the worker applies to events and the retraining
applies to recorded rows.

A URI names data, not permission: it is followed only when it lies under a configured root.
Local paths (`/x`, `file:///x`, `file://localhost/x`) are resolved, symlinks and `..` included,
before they are compared with the resolved root directories, so a link inside a root that points
out of it is refused; a `file://` URI naming another host is refused. Any other scheme goes
through fsspec and must start with a configured URL prefix (always compared with a trailing `/`,
so `s3://b/img` does not admit `s3://b/img-evil/`) and carry no `..` path segment.

This module only decides; it reads nothing. Callers map `OutsideRoots` to their own outcome.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit


class OutsideRoots(ValueError):
    """The URI is not under any configured root (or names a remote host); `str()` says which."""


def is_local(uri: str) -> bool:
    """Whether the URI names a local file (a plain path or `file:`), not an fsspec URL."""
    return urlsplit(uri).scheme in ("", "file")


def _local_path(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.scheme == "":
        return uri
    if parts.netloc not in ("", "localhost"):
        raise OutsideRoots(f"file URI names a remote host: {parts.netloc!r}")
    return unquote(parts.path)


@dataclass(frozen=True)
class Roots:
    """Where URIs may point: resolved local directories and URL prefixes (`s3://bucket/x/`)."""

    local: tuple[Path, ...]
    urls: tuple[str, ...]

    @classmethod
    def parse(cls, roots: list[str]) -> Roots:
        """Directories (paths or `file:` URIs) and URL prefixes, as configured."""
        local, urls = [], []
        for r in roots:
            if is_local(r):
                local.append(Path(_local_path(r)).resolve())
            else:
                urls.append(r if r.endswith("/") else r + "/")
        return cls(tuple(local), tuple(urls))

    @property
    def configured(self) -> bool:
        return bool(self.local or self.urls)

    def resolve(self, uri: str) -> Path | str:
        """The real local path (symlinks followed) or the fsspec URL that `uri` names, once it is
        known to lie under a root; `OutsideRoots` otherwise."""
        if is_local(uri):
            path = Path(os.path.realpath(_local_path(uri)))
            if not any(path.is_relative_to(root) for root in self.local):
                raise OutsideRoots(f"{uri} is outside the configured image roots")
            return path
        if ".." in urlsplit(uri).path.split("/") or not any(
            uri.startswith(prefix) for prefix in self.urls
        ):
            raise OutsideRoots(f"{uri} is outside the configured image roots")
        return uri
