"""The review station's queue: an index on its order over the unlabelled inspections.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 09:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out, not imported: a migration must keep meaning what it meant when it was written
# (tests/test_review.py checks it is still schemas.tables.REVIEW_PRIORITY_SQL).
PRIORITY = (
    "CASE WHEN abs(confidence - 0.5) <= 0.25 THEN 0.0"
    " WHEN is_anomalous THEN 1.0 ELSE 2.0 END + abs(confidence - 0.5)"
)


def upgrade() -> None:
    op.create_index(
        "ix_inspections_review_queue",
        "inspections",
        [sa.text(f"({PRIORITY})"), "event_id"],
        postgresql_where=sa.text("label IS NULL"),
        sqlite_where=sa.text("label IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_inspections_review_queue", table_name="inspections")
