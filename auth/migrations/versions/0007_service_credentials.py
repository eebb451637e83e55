"""service credentials: what a service presents to auth for its short-lived service tokens

Revision ID: 7c1e2d4b9a10
Revises: 3a5ab9c3f675
Create Date: 2026-12-04 17:40:00
"""
import sqlalchemy as sa
from alembic import op

SCHEMA = "auth"
revision = "7c1e2d4b9a10"
down_revision = "3a5ab9c3f675"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "service_credentials",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("service", sa.String(length=64), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_service_credentials")),
        sa.UniqueConstraint("secret_hash", name=op.f("uq_service_credentials_secret_hash")),
        schema=SCHEMA,
    )
    op.create_index(op.f("ix_service_credentials_service"), "service_credentials", ["service"],
                    unique=False, schema=SCHEMA)


def downgrade():
    op.drop_index(op.f("ix_service_credentials_service"), table_name="service_credentials",
                  schema=SCHEMA)
    op.drop_table("service_credentials", schema=SCHEMA)
