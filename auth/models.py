import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import UTCDateTime, service_metadata

SCHEMA = "auth"
ACTIVE = 1


class Base(DeclarativeBase):
    metadata = service_metadata(SCHEMA)


class SigningKey(Base):
    """A token signing key pair. The private half is stored encrypted (see auth.keys)."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    alg: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    public_jwk = mapped_column(sa.JSON, nullable=False)
    # wiped when the key retires: only the active key can sign
    private_key_encrypted: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    # 1 on the active key, NULL on the others: the unique index lets exactly one key be active,
    # so the first-key insert race and concurrent rotations have exactly one winner
    active_slot: Mapped[int | None] = mapped_column(sa.Integer, nullable=True, unique=True)
    created_at = mapped_column(UTCDateTime, nullable=False)
    retired_at = mapped_column(UTCDateTime, nullable=True)
    # a retired key stays in the JWKS until every token it signed has expired
    publish_until = mapped_column(UTCDateTime, nullable=True)


class Session(Base):
    """A login: the family of refresh tokens that descend from it."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    user_id: Mapped[str] = mapped_column(sa.String(36), nullable=False, index=True)
    # keyed hashes of the login email and the client, for brute-force "known client" checks
    account_key: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    client_key: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    client = mapped_column(sa.JSON, nullable=False)
    created_at = mapped_column(UTCDateTime, nullable=False)
    last_used_at = mapped_column(UTCDateTime, nullable=False)
    expires_at = mapped_column(UTCDateTime, nullable=False)
    revoked_at = mapped_column(UTCDateTime, nullable=True)
    revoke_reason: Mapped[str | None] = mapped_column(sa.String(32), nullable=True)

    __table_args__ = (
        sa.Index("ix_sessions_account_key_client_key", "account_key", "client_key"),
        sa.Index("ix_sessions_expires_at", "expires_at"),
        # the sessions revoked within an access token's lifetime, asked for by every gateway
        # process at (re)connection (sessions.revoked_since)
        sa.Index("ix_sessions_revoked_at", "revoked_at"),
    )


class RefreshToken(Base):
    """One refresh token of a session, known only by its SHA-256."""

    __tablename__ = "refresh_tokens"

    token_hash: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(
        sa.String(36), sa.ForeignKey(f"{SCHEMA}.sessions.id", ondelete="CASCADE"),
        nullable=False, index=True)
    created_at = mapped_column(UTCDateTime, nullable=False)
    used_at = mapped_column(UTCDateTime, nullable=True)


class LoginThrottle(Base):
    """Failed-login pressure on one key (an account, a client, or the pair): a leaky bucket."""

    __tablename__ = "login_throttle"

    scope: Mapped[str] = mapped_column(sa.String(8), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    level: Mapped[float] = mapped_column(sa.Float, nullable=False)
    updated_at = mapped_column(UTCDateTime, nullable=False, index=True)
    blocked_until = mapped_column(UTCDateTime, nullable=True)
    # attempts whose password is being checked right now: counted as failures-to-be, so that
    # concurrent attempts cannot all slip in before the first failure is recorded
    pending: Mapped[int] = mapped_column(sa.Integer, nullable=False, server_default="0")
    # a reservation its worker never settled (a crash) stops counting after this
    pending_until = mapped_column(UTCDateTime, nullable=True)


class ServiceCredential(Base):
    """A service's credential for ``issue_service_token``, known only by its SHA-256. Two
    per service stay valid at once (the newest two), so a rotation has no downtime: the new
    one is deployed while the old one still works, then the old one is retired."""

    __tablename__ = "service_credentials"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    service: Mapped[str] = mapped_column(sa.String(64), nullable=False, index=True)
    secret_hash: Mapped[str] = mapped_column(sa.String(64), nullable=False, unique=True)
    created_at = mapped_column(UTCDateTime, nullable=False)
    retired_at = mapped_column(UTCDateTime, nullable=True)
