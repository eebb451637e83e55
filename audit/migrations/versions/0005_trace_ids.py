"""outbox rows keep the trace context of their writer; entries keep their trace id

Revision ID: 161e4927af22
Revises: 5b8e21d7c3f9
Create Date: 2026-12-04 15:00:00
"""
import sqlalchemy as sa
from alembic import op

SCHEMA = "audit"
revision = "161e4927af22"
down_revision = "5b8e21d7c3f9"
branch_labels = None
depends_on = None


def _schema():
    # SQLite has no schemas, and Alembic's ALTER TABLE ignores the engine's schema translation
    return None if op.get_bind().dialect.name == "sqlite" else SCHEMA


def upgrade():
    schema = _schema()
    op.add_column("outbox", sa.Column("trace_context", sa.JSON(), nullable=True), schema=schema)
    op.add_column("entries", sa.Column("trace_id", sa.String(length=32), nullable=True),
                  schema=schema)
    op.create_index("ix_entries_trace_id", "entries", ["trace_id"], schema=schema)


def downgrade():
    op.drop_index("ix_entries_trace_id", table_name="entries", schema=_schema())
    with op.batch_alter_table("entries", schema=_schema()) as batch:
        batch.drop_column("trace_id")
    with op.batch_alter_table("outbox", schema=_schema()) as batch:
        batch.drop_column("trace_context")
