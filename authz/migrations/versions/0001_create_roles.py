"""create roles, assignments, effective permissions; built-in roles admin and user

Revision ID: 7507b14aa548
Revises:
Create Date: 2026-11-22 09:05:59.121643
"""
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

SCHEMA = "authz"
revision = "7507b14aa548"
down_revision = None
branch_labels = None
depends_on = None

# frozen here, not imported: a migration must keep doing what it did when it was written
BUILTIN_ROLES = {
    "admin": ("Everything, everywhere", ["*"]),
    "user": ("Self-service: own profile, own password, own permissions",
             ["authz:check", "password:write", "profile:read", "profile:write"]),
}


def upgrade():
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("event_type", sa.String(length=128), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sa.UniqueConstraint("event_id", name=op.f("uq_outbox_event_id")),
        schema=SCHEMA,
    )
    op.create_index(op.f("ix_outbox_sent_at"), "outbox", ["sent_at"], unique=False,
                    schema=SCHEMA)
    op.create_table(
        "processed_events",
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_processed_events")),
        schema=SCHEMA,
    )
    roles = op.create_table(
        "roles",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("builtin", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_roles")),
        schema=SCHEMA,
    )
    role_permissions = op.create_table(
        "role_permissions",
        sa.Column("role", sa.String(length=64), nullable=False),
        sa.Column("permission", sa.String(length=129), nullable=False),
        sa.ForeignKeyConstraint(["role"], [f"{SCHEMA}.roles.name"],
                                name=op.f("fk_role_permissions_role_roles"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("role", "permission", name=op.f("pk_role_permissions")),
        schema=SCHEMA,
    )
    op.create_table(
        "role_includes",
        sa.Column("role", sa.String(length=64), nullable=False),
        sa.Column("included", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["included"], [f"{SCHEMA}.roles.name"],
                                name=op.f("fk_role_includes_included_roles"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["role"], [f"{SCHEMA}.roles.name"],
                                name=op.f("fk_role_includes_role_roles"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("role", "included", name=op.f("pk_role_includes")),
        schema=SCHEMA,
    )
    op.create_index("ix_role_includes_included", "role_includes", ["included"], unique=False,
                    schema=SCHEMA)
    op.create_table(
        "assignments",
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("role", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("assigned_by", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["role"], [f"{SCHEMA}.roles.name"],
                                name=op.f("fk_assignments_role_roles"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "role", "scope", name=op.f("pk_assignments")),
        schema=SCHEMA,
    )
    op.create_index("ix_assignments_role", "assignments", ["role"], unique=False,
                    schema=SCHEMA)
    op.create_table(
        "effective_permissions",
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("permissions", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "scope", name=op.f("pk_effective_permissions")),
        schema=SCHEMA,
    )
    op.create_table(
        "deleted_users",
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_deleted_users")),
        schema=SCHEMA,
    )
    stamp = datetime.now(UTC)
    op.bulk_insert(roles, [
        {"name": name, "description": description, "builtin": True, "created_at": stamp,
         "updated_at": stamp}
        for name, (description, _) in BUILTIN_ROLES.items()
    ])
    op.bulk_insert(role_permissions, [
        {"role": name, "permission": permission}
        for name, (_, permissions) in BUILTIN_ROLES.items() for permission in permissions
    ])


def downgrade():
    op.drop_table("deleted_users", schema=SCHEMA)
    op.drop_table("effective_permissions", schema=SCHEMA)
    op.drop_index("ix_assignments_role", table_name="assignments", schema=SCHEMA)
    op.drop_table("assignments", schema=SCHEMA)
    op.drop_index("ix_role_includes_included", table_name="role_includes", schema=SCHEMA)
    op.drop_table("role_includes", schema=SCHEMA)
    op.drop_table("role_permissions", schema=SCHEMA)
    op.drop_table("roles", schema=SCHEMA)
    op.drop_table("processed_events", schema=SCHEMA)
    op.drop_index(op.f("ix_outbox_sent_at"), table_name="outbox", schema=SCHEMA)
    op.drop_table("outbox", schema=SCHEMA)
