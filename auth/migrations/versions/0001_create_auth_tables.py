"""create signing keys, sessions, refresh tokens and login throttle

Revision ID: 68d800fe3ddd
Revises:
Create Date: 2026-11-22 09:07:31.032390
"""
import sqlalchemy as sa
from alembic import op

SCHEMA = "auth"
revision = '68d800fe3ddd'
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'login_throttle',
        sa.Column('scope', sa.String(length=8), nullable=False),
        sa.Column('key', sa.String(length=64), nullable=False),
        sa.Column('level', sa.Float(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('blocked_until', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('scope', 'key', name=op.f('pk_login_throttle')),
        schema=SCHEMA,
    )
    op.create_index(op.f('ix_login_throttle_updated_at'), 'login_throttle', ['updated_at'],
                    unique=False, schema=SCHEMA)
    op.create_table(
        'outbox',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('event_id', sa.String(length=36), nullable=False),
        sa.Column('event_type', sa.String(length=128), nullable=False),
        sa.Column('payload', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox')),
        sa.UniqueConstraint('event_id', name=op.f('uq_outbox_event_id')),
        schema=SCHEMA,
    )
    op.create_index(op.f('ix_outbox_sent_at'), 'outbox', ['sent_at'], unique=False,
                    schema=SCHEMA)
    op.create_table(
        'processed_events',
        sa.Column('event_id', sa.String(length=64), nullable=False),
        sa.Column('processed_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('event_id', name=op.f('pk_processed_events')),
        schema=SCHEMA,
    )
    op.create_table(
        'sessions',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('user_id', sa.String(length=36), nullable=False),
        sa.Column('account_key', sa.String(length=64), nullable=False),
        sa.Column('client_key', sa.String(length=64), nullable=False),
        sa.Column('client', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('revoke_reason', sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_sessions')),
        schema=SCHEMA,
    )
    op.create_index('ix_sessions_account_key_client_key', 'sessions',
                    ['account_key', 'client_key'], unique=False, schema=SCHEMA)
    op.create_index('ix_sessions_expires_at', 'sessions', ['expires_at'], unique=False,
                    schema=SCHEMA)
    op.create_index(op.f('ix_sessions_user_id'), 'sessions', ['user_id'], unique=False,
                    schema=SCHEMA)
    op.create_table(
        'signing_keys',
        sa.Column('kid', sa.String(length=64), nullable=False),
        sa.Column('alg', sa.String(length=16), nullable=False),
        sa.Column('public_jwk', sa.JSON(), nullable=False),
        sa.Column('private_key_encrypted', sa.Text(), nullable=True),
        sa.Column('active_slot', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('retired_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('publish_until', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('kid', name=op.f('pk_signing_keys')),
        sa.UniqueConstraint('active_slot', name=op.f('uq_signing_keys_active_slot')),
        schema=SCHEMA,
    )
    op.create_table(
        'refresh_tokens',
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('session_id', sa.String(length=36), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['session_id'], [f'{SCHEMA}.sessions.id'],
                                name=op.f('fk_refresh_tokens_session_id_sessions'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('token_hash', name=op.f('pk_refresh_tokens')),
        schema=SCHEMA,
    )
    op.create_index(op.f('ix_refresh_tokens_session_id'), 'refresh_tokens', ['session_id'],
                    unique=False, schema=SCHEMA)


def downgrade():
    op.drop_index(op.f('ix_refresh_tokens_session_id'), table_name='refresh_tokens',
                  schema=SCHEMA)
    op.drop_table('refresh_tokens', schema=SCHEMA)
    op.drop_table('signing_keys', schema=SCHEMA)
    op.drop_index(op.f('ix_sessions_user_id'), table_name='sessions', schema=SCHEMA)
    op.drop_index('ix_sessions_expires_at', table_name='sessions', schema=SCHEMA)
    op.drop_index('ix_sessions_account_key_client_key', table_name='sessions', schema=SCHEMA)
    op.drop_table('sessions', schema=SCHEMA)
    op.drop_table('processed_events', schema=SCHEMA)
    op.drop_index(op.f('ix_outbox_sent_at'), table_name='outbox', schema=SCHEMA)
    op.drop_table('outbox', schema=SCHEMA)
    op.drop_index(op.f('ix_login_throttle_updated_at'), table_name='login_throttle',
                  schema=SCHEMA)
    op.drop_table('login_throttle', schema=SCHEMA)
