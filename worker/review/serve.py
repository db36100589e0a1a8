"""Run the review station's app under uvicorn with the settings' address and structlog's JSON."""

from __future__ import annotations

import uvicorn

from worker.review.app import create_app
from worker.review.settings import ReviewSettings


def serve(settings: ReviewSettings) -> None:
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, access_log=False, log_level="info")
