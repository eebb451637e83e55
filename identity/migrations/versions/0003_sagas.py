"""the sagas identity runs (user provisioning): state, step and lease of each

Revision ID: 5a9c3e7f1d20
Revises: b7e4d1c20a61
Create Date: 2026-12-04 14:30:00
"""
import sqlalchemy as sa
from alembic import op

SCHEMA = "identity"
revision = "5a9c3e7f1d20"
down_revision = "b7e4d1c20a61"
branch_labels = None
depends_on = None


def _schema():
    return None if op.get_bind().dialect.name == "sqlite" else SCHEMA


def upgrade():
    schema = _schema()
    op.create_table(
        "sagas",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("current_step", sa.Integer(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("step_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_owner", sa.String(length=160), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sagas")),
        schema=schema,
    )
    op.create_index("ix_sagas_status_lease", "sagas", ["status", "lease_expires_at"],
                    schema=schema)


def downgrade():
    schema = _schema()
    op.drop_index("ix_sagas_status_lease", table_name="sagas", schema=schema)
    op.drop_table("sagas", schema=schema)
