"""Where the stores are: the settings every program that opens them shares.

The worker (`WORKER_*`), the retraining and promotion (`GRAD_*`), labelling and, later, the
review station read the same record, state store, artifact store and image roots; each declares
its own environment prefix and inherits these fields, so a store's setting has one name, one
default and one validator everywhere. Declarations only: a program reads its settings once, at
its start, and passes them down.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, PositiveInt, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode

from model.stores.sql import DEFAULT_URL

MiB = 1024 * 1024


def split_commas(v: object) -> object:
    """A list setting given as one environment variable: `a, b,c` -> ["a", "b", "c"]."""
    if isinstance(v, str):
        return [part.strip() for part in v.split(",") if part.strip()]
    return v


class RecordSettings(BaseSettings):
    """The SQL record alone (what `model.label` needs)."""

    # PostgreSQL in production, a SQLite file by default. May carry a password: never printed.
    database_url: SecretStr = SecretStr(DEFAULT_URL)


class StoreSettings(RecordSettings):
    """The record, the workers' state store, the artifact store and the image roots."""

    # The workers' shared state (a URL such as redis://redis:6379/0; may carry a password).
    redis_url: SecretStr | None = Field(default=None, description="may carry a password")
    state_prefix: str = "grad"
    # Where checkpoints live for good: a directory or an fsspec URL, <store>/<version>.safetensors.
    artifact_store: str = "models"

    # Where image URIs (in events, in recorded rows) may point: local directories, or URL
    # prefixes such as s3://bucket/images/. Anything elsewhere is refused, never read.
    image_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="local directories, or URL prefixes such as s3://bucket/images/",
    )
    max_image_bytes: PositiveInt = 32 * MiB
    max_pixels: PositiveInt = 40_000_000

    @field_validator("image_roots", mode="before")
    @classmethod
    def _split_roots(cls, v: object) -> object:
        return split_commas(v)

    def redis(self) -> str | None:
        """The state store's URL, or None when none is configured."""
        url = self.redis_url.get_secret_value() if self.redis_url is not None else ""
        return url or None
