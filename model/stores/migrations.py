"""The SQL schema's migrations (Alembic), found from the installed package in every layout.

The migration scripts live in the repository's `migrations/` and are installed as the package
data `schemas.migrations` (pyproject.toml maps one onto the other), so an editable install, a
wheel in site-packages and the container image all find them the same way: by importing, never
by a path relative to this file. `alembic.ini` (the CLI's configuration) is not needed here:
`alembic_config` builds the configuration in memory.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import URL

from model.stores.sql import database_url, translate_errors

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_PACKAGE = "schemas.migrations"


def migrations_dir() -> Path:
    """The folder holding `env.py` and `versions/`, wherever the package is installed."""
    folder = Path(str(resources.files(MIGRATIONS_PACKAGE)))
    if not (folder / "env.py").is_file():
        raise FileNotFoundError(
            f"no migrations in {folder}: the package {MIGRATIONS_PACKAGE} was installed without "
            "its data (reinstall grad-inspect)"
        )
    return folder


def alembic_config(url: str | URL) -> Config:
    """Alembic's configuration for `url`, the caller's logging left alone. For
    `alembic.command.*` (upgrade, downgrade, check)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["url"] = database_url(url).render_as_string(hide_password=False)
    cfg.attributes["configure_logging"] = False  # leave the host program's logging alone
    return cfg


def migrate(url: str | URL, revision: str = "head") -> None:
    """`alembic upgrade <revision>` on `url`, from any working directory and any install.

    Raises `RecordStoreUnavailable` when the database cannot be reached.
    """
    from alembic import command

    cfg = alembic_config(url)
    with translate_errors(database_url(url)):
        command.upgrade(cfg, revision)
