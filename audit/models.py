import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import UTCDateTime, service_metadata

SCHEMA = "audit"
HEAD_ID = 1


class Base(DeclarativeBase):
    metadata = service_metadata(SCHEMA)


class Entry(Base):
    """One line of the trail. Rows are only ever inserted (a trigger refuses the rest)."""

    __tablename__ = "entries"

    # assigned under the chain lock, gap-free: the order of the hash chain
    seq: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    id: Mapped[str] = mapped_column(sa.String(36), nullable=False, unique=True)
    event_id: Mapped[str] = mapped_column(sa.String(64), nullable=False, unique=True)
    occurred_at = mapped_column(UTCDateTime, nullable=False)
    recorded_at = mapped_column(UTCDateTime, nullable=False)
    source: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    action: Mapped[str] = mapped_column(sa.String(128), nullable=False)
    actor_id: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    actor_type: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    subject: Mapped[str | None] = mapped_column(sa.String(255), nullable=True)
    request_id: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    # the trace the event belongs to (32 hex digits): correlation, outside the hash chain
    trace_id: Mapped[str | None] = mapped_column(sa.String(32), nullable=True)
    outcome: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    # json, not jsonb: the text is kept as written, so numbers read back exactly as hashed
    data = mapped_column(sa.JSON, nullable=False)
    prev_hash: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    hash: Mapped[str] = mapped_column(sa.String(64), nullable=False)

    __table_args__ = (
        sa.Index("ix_entries_actor_id_seq", "actor_id", "seq"),
        sa.Index("ix_entries_action_seq", "action", "seq"),
        sa.Index("ix_entries_subject_seq", "subject", "seq"),
        sa.Index("ix_entries_source_seq", "source", "seq"),
        sa.Index("ix_entries_request_id", "request_id"),
        sa.Index("ix_entries_trace_id", "trace_id"),
        sa.Index("ix_entries_occurred_at", "occurred_at"),
    )


class ChainHead(Base):
    """The single row naming the last entry of the chain; appends lock it, so they queue."""

    __tablename__ = "chain_head"

    id: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    hash: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    updated_at = mapped_column(UTCDateTime, nullable=False)


class Export(Base):
    """An export asked for: its filters, the last entry it may hold, and how far it got.

    The task ``audit.export.generate`` writes the file; this row is its state."""

    __tablename__ = "exports"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    filters = mapped_column(sa.JSON, nullable=False)
    # the chain head when it was asked for: retries write the same entries
    upto_seq: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    requested_by: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    actor_type: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    request_id: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    task_id: Mapped[str | None] = mapped_column(sa.String(36), nullable=True)
    attempts: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    count: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    bytes: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    sha256: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(sa.String(300), nullable=True)
    created_at = mapped_column(UTCDateTime, nullable=False)
    started_at = mapped_column(UTCDateTime, nullable=True)
    finished_at = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (sa.Index("ix_exports_created_at", "created_at"),)
