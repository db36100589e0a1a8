"""`python -m worker.review demo`: the review station on what `python -m worker.demo` left.

The demo's directory holds the SQLite records, the heatmap store, the inline images' archive
and the sample's images; the station reads exactly those, listens on loopback only, and signs
in one reviewer, `demo`, with a password made for this start and printed (an account like any
other, argon2-hashed in the directory's users file: the demo shows the real sign-in).
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from worker.review.accounts import add_user
from worker.review.settings import ReviewSettings

DEMO_USER = "demo"


class NoDemo(RuntimeError):
    """The directory holds no finished `worker.demo` run."""


def demo_settings(out: Path, port: int | None = None) -> ReviewSettings:
    """The station's settings for a demo directory (the environment is not read for them)."""
    summary_file = out / "summary.json"
    if not summary_file.is_file():
        raise NoDemo(f"no {summary_file}: run `python -m worker.demo --out {out}` first")
    summary = json.loads(summary_file.read_text())
    roots = [str(Path(summary["data"]).resolve()), str((out / "archive").resolve())]
    return ReviewSettings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=f"sqlite:///{(out / 'inspections.sqlite3').resolve()}",  # type: ignore[arg-type]
        image_roots=roots,
        heatmap_store=str((out / "heatmaps").resolve()),
        artifact_store=str((out / "models").resolve()),
        users_file=out / "review-users.json",
        secure_cookies=False,
        host="127.0.0.1",
        port=port if port is not None else 8600,
    )


def demo_account(settings: ReviewSettings) -> str:
    """A fresh password for the `demo` reviewer; returns it."""
    password = secrets.token_urlsafe(9)
    add_user(settings.users_file, DEMO_USER, password, "reviewer")
    return password
