"""Who may sign in to the review station, and what each may do.

The users file (`REVIEW_USERS_FILE`) is JSON,
`{"anna": {"role": "reviewer", "hash": "$argon2id$..."}}`.
Passwords are hashed with argon2id (argon2-cffi, the reference implementation's binding, with
its recommended parameters); the file holds no password. Roles: a `viewer` looks, a `reviewer`
also labels. The file is read at start and on every sign-in, so `add-user` takes effect without
a restart.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

Role = Literal["viewer", "reviewer"]
ROLES: tuple[Role, ...] = ("viewer", "reviewer")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")

_HASHER = PasswordHasher()
# Verified against when the name is unknown, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _HASHER.hash("not a password anyone has")


@dataclass(frozen=True)
class User:
    name: str
    role: Role

    @property
    def may_label(self) -> bool:
        return self.role == "reviewer"


class AccountError(ValueError):
    """A users file or an account that cannot be used; `str()` says why."""


def _read(path: Path) -> dict[str, dict[str, str]]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AccountError(f"cannot read the users file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise AccountError(f"{path}: expected an object of users")
    return data


def add_user(path: Path, name: str, password: str, role: Role) -> None:
    """Create or replace an account; the file is rewritten atomically, readable by its owner."""
    if not NAME.match(name):
        raise AccountError(f"a user name is letters, digits and . _ @ -, not {name!r}")
    if role not in ROLES:
        raise AccountError(f"role must be one of {ROLES}")
    if len(password) < 8:
        raise AccountError("a password has at least 8 characters")
    users = _read(path)
    users[name] = {"role": role, "hash": _HASHER.hash(password)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(users, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def authenticate(path: Path, name: str, password: str) -> User | None:
    """The user when the password is theirs, else None (same cost either way)."""
    entry = _read(path).get(name)
    stored = entry.get("hash", _DUMMY_HASH) if isinstance(entry, dict) else _DUMMY_HASH
    try:
        _HASHER.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return None
    if entry is None or entry.get("role") not in ROLES:
        return None
    return User(name, entry["role"])  # type: ignore[arg-type]
