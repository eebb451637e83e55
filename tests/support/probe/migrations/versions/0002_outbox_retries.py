"""outbox rows that failed wait before their next try, and are parked after too many

Revision ID: probe0002
Revises: probe0001
Create Date: 2026-12-04 09:00:00
"""
import sqlalchemy as sa
from alembic import op

SCHEMA = "probe"
revision = "probe0002"
down_revision = "probe0001"
branch_labels = None
depends_on = None


def _schema():
    # SQLite has no schemas, and Alembic's ALTER TABLE ignores the engine's schema translation
    return None if op.get_bind().dialect.name == "sqlite" else SCHEMA


def upgrade():
    schema = _schema()
    op.add_column("outbox", sa.Column("next_attempt_at", sa.DateTime(timezone=True),
                                      nullable=True), schema=schema)
    op.add_column("outbox", sa.Column("parked_at", sa.DateTime(timezone=True), nullable=True),
                  schema=schema)
    op.add_column("outbox", sa.Column("last_error", sa.String(length=300), nullable=True),
                  schema=schema)


def downgrade():
    with op.batch_alter_table("outbox", schema=_schema()) as batch:
        for column in ("last_error", "parked_at", "next_attempt_at"):
            batch.drop_column(column)
