"""login_throttle.pending: attempts in flight count against the throttle (issue 14)

Revision ID: 9c2e7a41b5d3
Revises: c81f5a3e9d02
Create Date: 2026-12-04 09:00:00
"""
import sqlalchemy as sa
from alembic import op

SCHEMA = "auth"
revision = '9c2e7a41b5d3'
down_revision = 'c81f5a3e9d02'
branch_labels = None
depends_on = None


def _schema():
    # ALTER TABLE is rendered without the engine's schema translation: SQLite has no schemas
    return None if op.get_bind().dialect.name == "sqlite" else SCHEMA


def upgrade():
    op.add_column('login_throttle',
                  sa.Column('pending', sa.Integer(), server_default='0', nullable=False),
                  schema=_schema())
    op.add_column('login_throttle',
                  sa.Column('pending_until', sa.DateTime(timezone=True), nullable=True),
                  schema=_schema())


def downgrade():
    op.drop_column('login_throttle', 'pending_until', schema=_schema())
    op.drop_column('login_throttle', 'pending', schema=_schema())
