"""outbox rows keep the trace context of the unit of work that wrote them

Revision ID: 3a5ab9c3f675
Revises: 2559e9757826
Create Date: 2026-12-04 15:00:00
"""
import sqlalchemy as sa
from alembic import op

SCHEMA = "auth"
revision = "3a5ab9c3f675"
down_revision = "2559e9757826"
branch_labels = None
depends_on = None


def _schema():
    # SQLite has no schemas, and Alembic's ALTER TABLE ignores the engine's schema translation
    return None if op.get_bind().dialect.name == "sqlite" else SCHEMA


def upgrade():
    schema = _schema()
    op.add_column("outbox", sa.Column("trace_context", sa.JSON(), nullable=True), schema=schema)


def downgrade():
    with op.batch_alter_table("outbox", schema=_schema()) as batch:
        batch.drop_column("trace_context")
