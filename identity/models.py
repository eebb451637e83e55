import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared import sagas
from shared.db import UTCDateTime, service_metadata

SCHEMA = "identity"


class Base(DeclarativeBase):
    metadata = service_metadata(SCHEMA)


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(320), nullable=False)
    # lower-cased email: the unique key, so "Ann@x.io" and "ann@x.io" are one account
    email_normalized: Mapped[str] = mapped_column(sa.String(320), nullable=False, unique=True)
    display_name: Mapped[str] = mapped_column(sa.String(200), nullable=False, default="")
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, default="active")
    type: Mapped[str] = mapped_column(sa.String(16), nullable=False, default="user")
    password_hash: Mapped[str | None] = mapped_column(sa.String(255), nullable=True)
    created_at = mapped_column(UTCDateTime, nullable=False)
    updated_at = mapped_column(UTCDateTime, nullable=False)
    password_changed_at = mapped_column(UTCDateTime, nullable=True)
    deleted_at = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (sa.Index("ix_users_status_id", "status", "id"),)


# the state of the sagas identity runs (user provisioning: identity/provisioning.py)
SAGAS = sagas.define_table(Base.metadata)
