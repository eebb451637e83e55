"""task_schedule: the periods of periodic tasks already claimed by an instance (issue 16)

Revision ID: b4cf2a5f9bb6
Revises: 5a9c3e7f1d20
Create Date: 2026-12-04 14:00:00
"""
import sqlalchemy as sa
from alembic import op

SCHEMA = "identity"
revision = "b4cf2a5f9bb6"
down_revision = "5a9c3e7f1d20"
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
