"""The models pages: every registered version, and one version's lineage, calibrations and
gate report, with the promotion (rollback) command to copy; nothing here changes a model."""

from __future__ import annotations

import json

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse

from worker.review import models as m
from worker.review.station import Station, signed_in


def add_model_routes(app: FastAPI, station: Station) -> None:
    @app.get("/models", response_class=HTMLResponse)
    def model_index(request: Request) -> HTMLResponse:
        session = signed_in(station, request)
        versions = station.records.model_versions()
        back = m.rollback_target(versions)
        return station.signed_page(
            session,
            "models.html",
            versions=sorted(versions, key=lambda v: v.created_at, reverse=True),
            serving=m.serving(station.state),
            rollback=back,
            rollback_command=m.promote_command(back.version) if back else None,
        )

    @app.get("/models/{version}", response_class=HTMLResponse)
    def model_view(request: Request, version: str) -> HTMLResponse:
        session = signed_in(station, request)
        page = m.version_page(station.records, version)
        if page is None:
            raise HTTPException(404, "no such model version")
        return station.signed_page(
            session,
            "model.html",
            page=page,
            v=page.record,
            serving=m.serving(station.state),
            command=m.promote_command(version),
            gate=json.dumps(page.record.gate_decision, indent=2)
            if page.record.gate_decision
            else None,
            metrics=json.dumps(page.record.metrics, indent=2) if page.record.metrics else None,
        )
