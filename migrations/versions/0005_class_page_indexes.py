"""The review station's class page: a covering index over one class's parts under one model in a
time window, and a partial index of the labelled mistakes.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 11:30:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out, not imported (a migration keeps meaning what it meant); tests/test_migrations.py
# checks it is still schemas.tables.MISTAKE_SQL.
MISTAKE = "(is_anomalous AND label = 'normal') OR (NOT is_anomalous AND label = 'anomalous')"


def upgrade() -> None:
    # PostgreSQL answers the page's aggregates from the index alone (INCLUDE); SQLite, which
    # has no INCLUDE, still narrows to the class, model and window.
    op.create_index(
        "ix_inspections_class_window",
        "inspections",
        ["product_class", "model_version", "processed_at"],
        postgresql_include=["confidence", "is_anomalous", "label"],
    )
    op.create_index(
        "ix_inspections_mistakes",
        "inspections",
        ["product_class", "model_version", "processed_at"],
        postgresql_where=sa.text(MISTAKE),
        sqlite_where=sa.text(MISTAKE),
    )


def downgrade() -> None:
    op.drop_index("ix_inspections_mistakes", table_name="inspections")
    op.drop_index("ix_inspections_class_window", table_name="inspections")
