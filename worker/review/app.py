"""The review station's HTTP routes: queue, inspection, label, media, sign-in, health.

Pages are rendered on the server from Jinja2 templates with autoescaping on, so every text that
came from an event (station names, attributes, notes) reaches the page as text, never as markup.
A request names event ids and filters, never paths. State changes (sign-in aside) need a
session, a role that allows them and the session's CSRF token. A database that cannot be reached
answers 503 with a page saying so; the error is logged, never shown.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from importlib import resources
from typing import Any
from urllib.parse import urlencode

import structlog
from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from model.core.clock import utc_now
from model.lifecycle.window import parse_time
from model.stores.sql import RecordStoreUnavailable
from schemas.limits import NOTE_LENGTH
from schemas.model_state import STEADY_COUNT
from worker.review import queue as q
from worker.review.accounts import authenticate
from worker.review.class_routes import add_class_routes
from worker.review.media import MediaUnavailable, content_type, image_bytes, overlay_png
from worker.review.model_routes import add_model_routes
from worker.review.sessions import COOKIE, csrf_ok
from worker.review.settings import ReviewSettings
from worker.review.station import Station, signed_in

log = structlog.get_logger("review")
FILTER_FIELDS = ("line", "station", "product_class", "model_version", "verdict", "label_state")
# No script, style or image from anywhere but the station itself; no framing.
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


def filters_from(params: Any) -> q.QueueFilter:
    """The queue's filters from a request's query or form; 400 on a malformed one."""
    values = {k: params.get(k) or None for k in FILTER_FIELDS}
    now = utc_now()
    try:
        return q.QueueFilter(
            line=values["line"],
            station=values["station"],
            product_class=values["product_class"],
            model_version=values["model_version"],
            verdict=_choice(values["verdict"], ("anomalous", "normal", "any"), "any"),
            label_state=_choice(
                values["label_state"], ("unlabelled", "labelled", "any"), "unlabelled"
            ),
            since=_time(params.get("since"), now),
            until=_time(params.get("until"), now),
        )
    except ValueError as exc:  # WindowError too
        raise HTTPException(400, str(exc)) from exc


def _choice(value: str | None, allowed: tuple[str, ...], default: str) -> Any:
    if value is None:
        return default
    if value not in allowed:
        raise ValueError(f"expected one of {allowed}")
    return value


def _time(value: str | None, now: datetime) -> datetime | None:
    """A window's end as the command lines take it (model.lifecycle.window): `8h` or `7d` back
    from now, a date (its midnight UTC), or a time with its zone; a naive time is refused."""
    if not value:
        return None
    return parse_time(value, now)


def query_of(filters: q.QueueFilter) -> str:
    """The filters as a query string, to carry them from page to page."""
    defaults = q.QueueFilter()
    pairs = {k: getattr(filters, k) for k in FILTER_FIELDS}
    pairs = {k: v for k, v in pairs.items() if v != getattr(defaults, k)}
    pairs["since"] = filters.since.isoformat() if filters.since else None
    pairs["until"] = filters.until.isoformat() if filters.until else None
    return urlencode({k: v for k, v in pairs.items() if v})


def create_app(settings: ReviewSettings) -> FastAPI:
    """The station's app: its pages, its media, sign-in, health, and what guards them."""
    station = Station(settings)
    app = FastAPI(title="GRAD review station", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.station = station
    static = resources.files("worker.review") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    _guards(app, station)
    _signin_routes(app, station)
    _review_routes(app, station)
    _count_routes(app, station)
    _media_routes(app, station)
    add_class_routes(app, station)
    add_model_routes(app, station)
    return app


def _guards(app: FastAPI, station: Station) -> None:
    """Security headers on every answer; a 503 page when the database is down; sign-in."""
    settings = station.settings

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        return response

    @app.exception_handler(RecordStoreUnavailable)
    async def database_down(request: Request, exc: RecordStoreUnavailable) -> HTMLResponse:
        log.error("database unavailable", error=str(exc))
        return station.page("unavailable.html", 503, user=None)

    @app.exception_handler(401)
    async def to_login(request: Request, exc: Exception) -> Response:
        if settings.auth == "proxy":
            return HTMLResponse("authentication required", status_code=401)
        return RedirectResponse("/login?" + urlencode({"next": request.url.path}), 303)

    @app.get("/livez")
    def livez() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> Response:
        try:
            station.records.ping()
        except RecordStoreUnavailable as exc:
            log.warning("not ready", error=str(exc))
            return Response("database unavailable", status_code=503)
        return Response("ok")


def _signin_routes(app: FastAPI, station: Station) -> None:
    settings = station.settings

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/") -> HTMLResponse:
        return station.page("login.html", user=None, next=_local(next), failed=False)

    @app.post("/login")
    def login(
        request: Request, name: str = Form(""), password: str = Form(""), next: str = Form("/")
    ) -> Response:
        user = authenticate(settings.users_file, name, password)
        if user is None:
            log.info("sign-in refused", user=name[:64])
            return station.page("login.html", 401, user=None, next=_local(next), failed=True)
        value, _ = station.sessions.issue(user)
        response = RedirectResponse(_local(next), 303)
        response.set_cookie(
            COOKIE,
            value,
            max_age=settings.session_hours * 3600,
            httponly=True,
            samesite="strict",
            secure=settings.secure_cookies,
        )
        log.info("signed in", user=user.name, role=user.role)
        return response

    @app.post("/logout")
    def logout(request: Request, csrf: str = Form("")) -> Response:
        session = signed_in(station, request)
        if not csrf_ok(session, csrf):
            raise HTTPException(403, "missing or wrong CSRF token")
        response = RedirectResponse("/login", 303)
        response.delete_cookie(COOKIE)
        return response


def _review_routes(app: FastAPI, station: Station) -> None:
    """The queue, an inspection, and its label."""
    settings = station.settings

    @app.get("/", response_class=HTMLResponse)
    def queue_view(request: Request, after: str | None = None) -> HTMLResponse:
        session = signed_in(station, request)
        filters = filters_from(request.query_params)
        try:
            cursor = q.Cursor.decode(after) if after else None
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from exc
        with station.read() as conn:
            page = q.queue_page(conn, filters, settings.page_size, cursor)
        return station.signed_page(
            session,
            "queue.html",
            rows=page.rows,
            next=page.next.encode() if page.next else None,
            filters=filters,
            query=query_of(filters),
        )

    @app.get("/inspections/{event_id}", response_class=HTMLResponse)
    def inspection_view(request: Request, event_id: str) -> HTMLResponse:
        session = signed_in(station, request)
        filters = filters_from(request.query_params)
        with station.read() as conn:
            row = q.inspection(conn, event_id)
            if row is None:
                raise HTTPException(404, "no such inspection")
            previous, following = q.neighbours(conn, filters, event_id)
        return station.signed_page(
            session,
            "inspection.html",
            row=row,
            attributes=json.dumps(row.get("attributes") or {}, indent=2, ensure_ascii=False),
            steady_count=STEADY_COUNT,
            previous=previous,
            following=following,
            query=query_of(filters),
        )

    @app.post("/inspections/{event_id}/label")
    def label(
        request: Request,
        event_id: str,
        label: str = Form(...),
        note: str = Form(""),
        csrf: str = Form(""),
    ) -> Response:
        session = signed_in(station, request)
        if not csrf_ok(session, csrf):
            raise HTTPException(403, "missing or wrong CSRF token")
        if not session.user.may_label:
            raise HTTPException(403, "viewers cannot label")
        if label not in ("normal", "anomalous"):
            raise HTTPException(400, "label is normal or anomalous")
        if len(note) > NOTE_LENGTH:  # refused whole, never cut: the note is the reviewer's
            raise HTTPException(400, f"a note has at most {NOTE_LENGTH} characters")
        filters = filters_from(request.query_params)
        with station.read() as conn:
            _, following = q.neighbours(conn, filters, event_id)
        outcome = station.records.label(
            event_id,
            label,
            by=session.user.name,
            note=note.strip() or None,  # type: ignore[arg-type]
        )
        log.info("labelled", event_id=event_id, label=label, by=session.user.name, outcome=outcome)
        target = f"/inspections/{following}" if following else "/"
        query = query_of(filters)
        return RedirectResponse(f"{target}?{query}" if query else target, 303)


def _count_routes(app: FastAPI, station: Station) -> None:
    """The queue's counts, a page of their own."""

    @app.get("/counts", response_class=HTMLResponse)
    def counts_view(request: Request) -> HTMLResponse:
        """What the queue's filters select, counted (a scan of it, so the queue page itself
        does not wait for it: its script fetches this and puts it in place)."""
        signed_in(station, request)
        filters = filters_from(request.query_params)
        with station.read() as conn:
            counts = q.counts(conn, filters)
        return station.page(
            "counts.html",
            counts=counts,
            query_with=lambda **narrower: query_of(dataclasses.replace(filters, **narrower)),
        )


def _media_routes(app: FastAPI, station: Station) -> None:
    """An inspection's image and overlay, by event id only."""

    @app.get("/media/{event_id}/image")
    def image(request: Request, event_id: str) -> Response:
        signed_in(station, request)
        with station.read() as conn:
            row = q.inspection(conn, event_id)
        try:
            data = image_bytes(station.images, row["image_uri"] if row else None)
        except MediaUnavailable as exc:
            log.info("image not shown", event_id=event_id, reason=str(exc))
            raise HTTPException(404, "no image") from exc
        return Response(data, media_type=content_type(data), headers=_private())

    @app.get("/media/{event_id}/overlay")
    def overlay(request: Request, event_id: str) -> Response:
        signed_in(station, request)
        with station.read() as conn:
            row = q.inspection(conn, event_id)
        if row is None:
            raise HTTPException(404, "no heatmap")
        try:
            png = overlay_png(station.heatmaps, row["heatmap_uri"], row["threshold"])
        except MediaUnavailable as exc:
            log.info("heatmap not shown", event_id=event_id, reason=str(exc))
            raise HTTPException(404, "no heatmap") from exc
        return Response(png, media_type="image/png", headers=_private())


def _local(target: str) -> str:
    """Only a path on this site may follow a sign-in (no open redirect)."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


def _private() -> dict[str, str]:
    return {"Cache-Control": "private, max-age=300"}
