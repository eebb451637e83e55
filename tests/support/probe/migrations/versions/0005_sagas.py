"""sagas: the state of the probe's sagas (tests/bench/bench_tasks.py)

Revision ID: probe0005
Revises: probe0004
Create Date: 2026-12-04 16:00:00
"""
import sqlalchemy as sa
from alembic import op

SCHEMA = "probe"
revision = "probe0005"
down_revision = "probe0004"
branch_labels = None
depends_on = None


def upgrade():
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
        schema=SCHEMA,
    )
    op.create_index("ix_sagas_status_lease", "sagas", ["status", "lease_expires_at"],
                    schema=SCHEMA)


def downgrade():
    op.drop_index("ix_sagas_status_lease", table_name="sagas", schema=SCHEMA)
    op.drop_table("sagas", schema=SCHEMA)
