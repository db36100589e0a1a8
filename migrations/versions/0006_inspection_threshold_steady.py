"""Inspections say whether the threshold they were judged by was steady (set from enough normal
images) or provisional (the review station flags the latter).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 14:20:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: rows recorded before this revision did not carry it, and keep it unknown.
    op.add_column("inspections", sa.Column("threshold_steady", sa.Boolean(), nullable=True))


def downgrade() -> None:
    # Plain DROP COLUMN, as 0004's downgrade, so the expression index survives on SQLite.
    op.drop_column("inspections", "threshold_steady")
