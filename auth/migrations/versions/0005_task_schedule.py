"""task_schedule: the periods of periodic tasks already claimed by an instance (issue 16)

Revision ID: 2559e9757826
Revises: 9c2e7a41b5d3
Create Date: 2026-12-04 14:00:00
"""
import sqlalchemy as sa
from alembic import op

SCHEMA = "auth"
revision = "2559e9757826"
down_revision = "9c2e7a41b5d3"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "task_schedule",
        sa.Column("task_type", sa.String(length=128), nullable=False),
        sa.Column("slot", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("task_type", "slot", name=op.f("pk_task_schedule")),
        schema=SCHEMA,
    )


def downgrade():
    op.drop_table("task_schedule", schema=SCHEMA)
