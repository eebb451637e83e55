"""create bootstrap: one-time set-up steps (the first administrator), done once per installation

Revision ID: 3f86912cafc5
Revises: d93a6b4f1e13
Create Date: 2026-12-04 09:00:00
"""
import sqlalchemy as sa
from alembic import op

SCHEMA = "authz"
revision = "3f86912cafc5"
down_revision = "d93a6b4f1e13"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "bootstrap",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_bootstrap")),
        schema=SCHEMA,
    )


def downgrade():
    op.drop_table("bootstrap", schema=SCHEMA)
