import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import UTCDateTime, service_metadata

SCHEMA = "authz"
# assignments and effective permissions store the global scope as '' (a NULL would not take
# part in the primary key); the service exposes it as None
GLOBAL = ""

# Built-in roles, created by the first migration; neither can be deleted and admin cannot be
# changed. ``user`` is every person's self-service role (new users get it on user.created):
#   profile:read    read one's own profile         (GET /users/me)
#   profile:write   update one's own profile       (PATCH /users/me)
#   password:write  change one's own password      (POST /users/me/password)
#   authz:check     check one's own permissions    (GET /authz/check)
# Administrative permissions (held through ``admin``'s ``*``, or granted to a role) include
# users:read/write, roles:read/write, audit:read and sagas:read (GET /api/v1/sagas/{id}).
ADMIN = "admin"
USER = "user"
BUILTIN_ROLES = {
    ADMIN: {"description": "Everything, everywhere", "permissions": ["*"]},
    USER: {"description": "Self-service: own profile, own password, own permissions",
           "permissions": ["authz:check", "password:write", "profile:read", "profile:write"]},
}


class Base(DeclarativeBase):
    metadata = service_metadata(SCHEMA)


def _role_fk():
    return sa.ForeignKey(f"{SCHEMA}.roles.name", ondelete="CASCADE")


class Role(Base):
    __tablename__ = "roles"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    description: Mapped[str] = mapped_column(sa.String(500), nullable=False, default="")
    builtin: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False)
    created_at = mapped_column(UTCDateTime, nullable=False)
    updated_at = mapped_column(UTCDateTime, nullable=False)


class RolePermission(Base):
    __tablename__ = "role_permissions"

    role: Mapped[str] = mapped_column(sa.String(64), _role_fk(), primary_key=True)
    permission: Mapped[str] = mapped_column(sa.String(129), primary_key=True)


class RoleInclude(Base):
    """``role`` includes every permission of ``included`` (and of what that includes)."""

    __tablename__ = "role_includes"

    role: Mapped[str] = mapped_column(sa.String(64), _role_fk(), primary_key=True)
    included: Mapped[str] = mapped_column(sa.String(64), _role_fk(), primary_key=True)

    __table_args__ = (sa.Index("ix_role_includes_included", "included"),)


class Assignment(Base):
    __tablename__ = "assignments"

    user_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    role: Mapped[str] = mapped_column(sa.String(64), _role_fk(), primary_key=True)
    scope: Mapped[str] = mapped_column(sa.String(64), primary_key=True, default=GLOBAL)
    assigned_at = mapped_column(UTCDateTime, nullable=False)
    assigned_by: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)

    __table_args__ = (sa.Index("ix_assignments_role", "role"),)


class EffectivePermissions(Base):
    """A user's simplified permissions in one scope, recomputed whenever a role or assignment
    they depend on changes, so a check is one primary-key read."""

    __tablename__ = "effective_permissions"

    user_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    scope: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    permissions: Mapped[list] = mapped_column(sa.JSON, nullable=False)
    updated_at = mapped_column(UTCDateTime, nullable=False)


class DeletedUser(Base):
    """Users identity announced as deleted: they get no role again, even when an older
    user.created or a stale assignment request arrives after the deletion."""

    __tablename__ = "deleted_users"

    user_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    deleted_at = mapped_column(UTCDateTime, nullable=False)


class Bootstrap(Base):
    """One-time set-up steps of this installation, each a row named after the step.

    ``admin``: the first administrator. Its row is written before the user is created, with
    the id the user will get (``pending``), so an instance that crashed after identity created
    the user recognises it on the next start; then ``done`` (that user was made admin) or
    ``skipped`` (an administrator existed already). Once the row is not pending, the bootstrap
    never runs again, whatever the configuration says.
    """

    __tablename__ = "bootstrap"

    name: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    user_id: Mapped[str | None] = mapped_column(sa.String(36), nullable=True)
    created_at = mapped_column(UTCDateTime, nullable=False)
    updated_at = mapped_column(UTCDateTime, nullable=False)
