"""index sessions.revoked_at (the gateway asks for recently revoked sessions at each connect)

Revision ID: 3f6b2c91d0a4
Revises: 68d800fe3ddd
Create Date: 2026-12-03 12:15:00
"""
from alembic import op

SCHEMA = "auth"
revision = '3f6b2c91d0a4'
down_revision = '68d800fe3ddd'
branch_labels = None
depends_on = None


def upgrade():
    op.create_index('ix_sessions_revoked_at', 'sessions', ['revoked_at'], unique=False,
                    schema=SCHEMA)


def downgrade():
    op.drop_index('ix_sessions_revoked_at', table_name='sessions', schema=SCHEMA)
