"""The class pages: every class seen lately, and one class's distribution, drift, anomaly rate
and labelled mistakes under one model version (the active one unless the page asks)."""

from __future__ import annotations

from datetime import timedelta

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse

from model.core.clock import utc_now
from schemas import ClassCalibration
from worker.review import charts
from worker.review import classes as k
from worker.review.station import Station, signed_in

MAX_DAYS = 90


def add_class_routes(app: FastAPI, station: Station) -> None:
    @app.get("/classes", response_class=HTMLResponse)
    def class_index(request: Request, days: int = Query(7, ge=1, le=MAX_DAYS)) -> HTMLResponse:
        session = signed_in(station, request)
        until = utc_now()
        with station.read() as conn:
            rows = k.class_summaries(conn, until - timedelta(days=days), until)
        active = station.records.active_version()
        thresholds = _thresholds(station, active)
        return station.signed_page(
            session,
            "classes.html",
            rows=rows,
            days=days,
            active=active,
            thresholds=thresholds,
        )

    @app.get("/classes/{product_class}", response_class=HTMLResponse)
    def class_view(
        request: Request,
        product_class: str,
        days: int = Query(7, ge=1, le=MAX_DAYS),
        model_version: str | None = None,
    ) -> HTMLResponse:
        session = signed_in(station, request)
        until = utc_now()
        with station.read() as conn:
            version = model_version or station.records.active_version()
            version = version or k.latest_version(conn, product_class)
            if version is None:
                raise HTTPException(404, "no inspections of this class")
            cal = _calibration(station, version, product_class)
            w = k.ClassWindow(product_class, version, until - timedelta(days=days), until)
            fig = k.figures(conn, w, cal)
        return station.signed_page(
            session,
            "class.html",
            w=w,
            days=days,
            cal=cal,
            fig=fig,
            parts=int(fig.counts.sum()),
            distribution=charts.distribution(k.chart_bars(fig.counts, cal), cal),
            rate=charts.anomaly_rate(fig.days, w.since.date(), w.until.date()),
        )


def _calibration(station: Station, version: str, product_class: str) -> ClassCalibration | None:
    """The class's calibration in force under `version`, as the registry recorded it."""
    record = station.records.calibrations(version).get(product_class)
    return record.calibration if record is not None else None


def _thresholds(station: Station, version: str | None) -> dict[str, float]:
    if version is None:
        return {}
    return {c: r.calibration.threshold for c, r in station.records.calibrations(version).items()}
