"""Inspections keep the event's attributes and the result's stage timings (the review station
shows them).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 09:30:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: rows recorded before this revision have neither, and keep them unknown.
    op.add_column("inspections", sa.Column("attributes", sa.JSON(), nullable=True))
    op.add_column("inspections", sa.Column("timings", sa.JSON(), nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN (SQLite has it since 3.35): a batch migration would copy
    # the table and lose the expression index it cannot reflect (ix_inspections_review_queue).
    op.drop_column("inspections", "timings")
    op.drop_column("inspections", "attributes")
