"""The session cookie and its CSRF token.

A session is a signed, timestamped cookie (itsdangerous) holding the user's name, role and a
random CSRF token; nothing is kept on the server, so replicas share sessions when they share
the secret. Every state-changing request must carry the token in a form field or header that
matches the session's: a page from another site can make the browser send the cookie, but it
cannot read the token. The cookie is HttpOnly and SameSite=Strict as a second line.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

from worker.review.accounts import ROLES, User

COOKIE = "grad_review"


@dataclass(frozen=True)
class Session:
    user: User
    csrf: str


class Sessions:
    def __init__(self, secret: str | None, max_age_s: int) -> None:
        self._secret = (secret or secrets.token_urlsafe(32)).encode()
        self._signer = URLSafeTimedSerializer(self._secret, "grad-review")
        self.max_age_s = max_age_s

    def token_for(self, name: str) -> str:
        """A user's CSRF token when a trusted proxy, not a cookie, carries the session: derived
        from the secret and the name, so no other site can know it."""
        return hmac.new(self._secret, b"csrf:" + name.encode(), "sha256").hexdigest()

    def issue(self, user: User) -> tuple[str, Session]:
        session = Session(user, secrets.token_urlsafe(24))
        value = self._signer.dumps({"u": user.name, "r": user.role, "c": session.csrf})
        return value, session

    def read(self, cookie: str | None) -> Session | None:
        if not cookie:
            return None
        try:
            data = self._signer.loads(cookie, max_age=self.max_age_s)
        except BadSignature:  # also SignatureExpired
            return None
        if not isinstance(data, dict) or data.get("r") not in ROLES:
            return None
        return Session(User(str(data["u"]), data["r"]), str(data["c"]))


def csrf_ok(session: Session, token: str | None) -> bool:
    """Whether `token` is this session's CSRF token (compared in constant time)."""
    return bool(token) and hmac.compare_digest(session.csrf, token or "")
