"""Initial schema: inspections, pending labels, model versions, class calibrations.

Revision ID: 0001
Revises:
Create Date: 2026-11-29 04:17:54+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LABEL_CHECK = "label IN ('normal', 'anomalous')"
ACTIVE = sa.text("status = 'active'")


def upgrade() -> None:
    op.create_table(
        "inspections",
        sa.Column("event_id", sa.String(length=200), nullable=False),
        sa.Column("line", sa.String(length=100), nullable=False),
        sa.Column("station", sa.String(length=100), nullable=False),
        sa.Column("product_class", sa.String(length=100), nullable=False),
        sa.Column("captured_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("image_uri", sa.String(length=2048), nullable=True),
        sa.Column("heatmap_uri", sa.String(length=2048), nullable=False),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.Column("confidence", sa.Double(), nullable=False),
        sa.Column("is_anomalous", sa.Boolean(), nullable=False),
        sa.Column("calibrated", sa.Boolean(), nullable=False),
        sa.Column("model_version", sa.String(length=100), nullable=False),
        sa.Column("label", sa.String(length=16), nullable=True),
        sa.Column("labelled_by", sa.String(length=200), nullable=True),
        sa.Column("labelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("label_note", sa.String(length=2000), nullable=True),
        sa.CheckConstraint(LABEL_CHECK, name=op.f("ck_inspections_label")),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_inspections")),
    )
    op.create_index("ix_inspections_label", "inspections", ["label"])
    op.create_index("ix_inspections_model_version", "inspections", ["model_version"])
    op.create_index("ix_inspections_processed_at", "inspections", ["processed_at"])
    op.create_index(
        "ix_inspections_product_class_processed_at",
        "inspections",
        ["product_class", "processed_at"],
    )

    op.create_table(
        "pending_labels",
        sa.Column("event_id", sa.String(length=200), nullable=False),
        sa.Column("label", sa.String(length=16), nullable=False),
        sa.Column("labelled_by", sa.String(length=200), nullable=False),
        sa.Column("labelled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.String(length=2000), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(LABEL_CHECK, name=op.f("ck_pending_labels_label")),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_pending_labels")),
    )

    op.create_table(
        "model_versions",
        sa.Column("version", sa.String(length=100), nullable=False),
        sa.Column("artifact_uri", sa.String(length=2048), nullable=False),
        sa.Column("parent_version", sa.String(length=100), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("train_window_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("train_window_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("images_per_class", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("promoted_by", sa.String(length=200), nullable=True),
        sa.Column("gate_decision", sa.JSON(), nullable=True),
        sa.CheckConstraint(
            "status IN ('candidate', 'active', 'retired')", name=op.f("ck_model_versions_status")
        ),
        sa.ForeignKeyConstraint(
            ["parent_version"],
            ["model_versions.version"],
            name=op.f("fk_model_versions_parent_version_model_versions"),
        ),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_model_versions")),
    )
    # At most one active version at a time.
    op.create_index(
        "uq_model_versions_one_active",
        "model_versions",
        ["status"],
        unique=True,
        sqlite_where=ACTIVE,
        postgresql_where=ACTIVE,
    )

    op.create_table(
        "class_calibrations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("product_class", sa.String(length=100), nullable=False),
        sa.Column("model_version", sa.String(length=100), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.Column("statistics", sa.JSON(), nullable=False),
        sa.Column("target_fpr", sa.Double(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_version"],
            ["model_versions.version"],
            name=op.f("fk_class_calibrations_model_version_model_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_class_calibrations")),
        sa.UniqueConstraint(
            "product_class",
            "model_version",
            "created_at",
            name=op.f("uq_class_calibrations_product_class_model_version_created_at"),
        ),
    )
    op.create_index("ix_class_calibrations_model_version", "class_calibrations", ["model_version"])


def downgrade() -> None:
    # Indexes and constraints go with their tables; referencing tables first.
    op.drop_table("class_calibrations")
    op.drop_table("model_versions")
    op.drop_table("pending_labels")
    op.drop_table("inspections")
