"""The review station's settings: read once at start-up (environment, `.env`), passed down.

The stores (`database_url`, `image_roots`, ...) are the worker's own fields (`StoreSettings`),
read here under `REVIEW_*`: point them at the same database, image roots and heatmap store as
the workers (`WORKER_*`) and the station shows what the line recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveInt, SecretStr
from pydantic_settings import SettingsConfigDict

from model.stores.settings import StoreSettings


class ReviewSettings(StoreSettings):
    """Everything `python -m worker.review` reads (REVIEW_*)."""

    # Restated: with one BaseSettings base the subclass's own config is the one pydantic reads.
    model_config = SettingsConfigDict(env_prefix="REVIEW_", env_file=".env", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8600, ge=0, le=65535)
    # Where the worker writes heatmaps (its WORKER_HEATMAP_STORE): a recorded heatmap URI is
    # read only when it lies under it.
    heatmap_store: str = "heatmaps"

    # Who is signed in. `password` (the default): a users file with argon2 hashes, managed with
    # `python -m worker.review add-user`; it needs nothing else to be safe. `proxy`: a trusted
    # reverse proxy that authenticates and names the user in `proxy_user_header` (and the role
    # in `proxy_role_header`); only safe when nothing else can reach the station's port.
    auth: Literal["password", "proxy"] = "password"
    users_file: Path = Path("review-users.json")
    proxy_user_header: str = "X-Forwarded-User"
    proxy_role_header: str = "X-Forwarded-Role"
    proxy_default_role: Literal["viewer", "reviewer"] = "viewer"
    # Signs the session cookies. Unset: a random one per start (everyone signs in again after a
    # restart, and two replicas would not share sessions): set it in production.
    session_secret: SecretStr | None = None
    session_hours: PositiveInt = 12
    # Cookies only over HTTPS; switch off for plain http on a workstation.
    secure_cookies: bool = True

    # Rows per queue page (paging is by keyset: any page costs what the first does).
    page_size: PositiveInt = Field(default=50, le=500)
