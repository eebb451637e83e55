import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared import sagas
from shared.db import service_metadata


class Base(DeclarativeBase):
    metadata = service_metadata("probe")


class Tally(Base):
    """How many times each subject was counted by the event handler."""

    __tablename__ = "tallies"

    subject: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    count: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)


# the probe's sagas (tests/support/probe/tasks_service.py: SagaProbe; the tasks benchmark)
SAGAS = sagas.define_table(Base.metadata)
