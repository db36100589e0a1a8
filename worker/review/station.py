"""What every route of the review station shares: settings, record store, media readers,
sessions, templates; and who is signed in.

Built once per app (`worker.review.app.create_app`), from the settings read once at start-up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import structlog
from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy import Connection

from model.data.recorded_images import RecordedImages
from model.data.roots import Roots
from model.stores.records import RecordStore
from model.stores.sql import translate_errors
from model.stores.state import RedisStateStore
from worker.review.accounts import ROLES, User
from worker.review.sessions import COOKIE, Session, Sessions
from worker.review.settings import ReviewSettings

log = structlog.get_logger("review")


class Station:
    """What the routes share: the settings, the record store, the readers, the sessions."""

    def __init__(self, settings: ReviewSettings) -> None:
        self.settings = settings
        self.records = RecordStore(settings.database_url.get_secret_value())
        self.images = RecordedImages(
            settings.image_roots, settings.max_image_bytes, settings.max_pixels
        )
        self.heatmaps = Roots.parse([settings.heatmap_store])
        # The workers' state store (Redis, REVIEW_REDIS_URL), read for what they serve now;
        # None when none is configured (an in-process store would only ever be empty).
        url = settings.redis()
        self.state = RedisStateStore(url, settings.state_prefix) if url else None
        secret = settings.session_secret.get_secret_value() if settings.session_secret else None
        if secret is None:
            log.warning("REVIEW_SESSION_SECRET is not set: sessions end when the station restarts")
        self.sessions = Sessions(secret, settings.session_hours * 3600)
        self.templates = Environment(
            loader=PackageLoader("worker.review", "templates"),
            autoescape=select_autoescape(["html"]),
        )

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        with translate_errors(self.records.url), self.records.engine.connect() as conn:
            yield conn

    def page(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.templates.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status)

    def signed_page(self, session: Session, name: str, **context: Any) -> HTMLResponse:
        """A page for a signed-in user: the header's name and role, and the CSRF token every
        form on it carries."""
        return self.page(name, user=session.user, csrf=session.csrf, **context)

    def session(self, request: Request) -> Session | None:
        if self.settings.auth == "proxy":
            name = request.headers.get(self.settings.proxy_user_header)
            if not name:
                return None
            role = request.headers.get(self.settings.proxy_role_header)
            role = role if role in ROLES else self.settings.proxy_default_role
            return Session(User(name, role), self.sessions.token_for(name))  # type: ignore[arg-type]
        return self.sessions.read(request.cookies.get(COOKIE))


def signed_in(station: Station, request: Request) -> Session:
    """The request's session; 401 (a redirect to sign-in) without one."""
    session = station.session(request)
    if session is None:
        raise HTTPException(401)
    return session
