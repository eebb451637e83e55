"""create entries, chain head, outbox and processed_events; entries are append-only

Revision ID: e96607a13839
Revises:
Create Date: 2026-11-22 09:08:07.251577

``entries`` refuses UPDATE, DELETE and TRUNCATE through triggers (PostgreSQL and SQLite),
and ``chain_head`` can only move forward. A trigger stops mistakes and the service's own
code; it does not stop the table's owner, who can disable it. So in a deployment the role
the service runs as must not own the schema. Migrate as an owner role (``make migrate``
with that role's AUDIT_DB_URI), run the service as another with MIGRATE_ON_START=false, and
give that role only what appending and reading need:

    GRANT USAGE ON SCHEMA audit TO audit_app;
    GRANT SELECT, INSERT ON audit.entries TO audit_app;            -- never UPDATE, DELETE
    GRANT SELECT, UPDATE ON audit.chain_head TO audit_app;         -- the chain lock and head
    GRANT SELECT ON audit.alembic_version TO audit_app;            -- readiness check
    GRANT SELECT, INSERT, UPDATE, DELETE ON audit.outbox, audit.processed_events
        TO audit_app;                                              -- kernel tables, unused
    REVOKE TRUNCATE, REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA audit FROM audit_app;
"""
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

SCHEMA = "audit"
GENESIS_HASH = "0" * 64
revision = "e96607a13839"
down_revision = None
branch_labels = None
depends_on = None

REFUSE = "audit.entries is append-only: {op} refused"

POSTGRES_GUARDS = f"""
CREATE FUNCTION {SCHEMA}.refuse_entry_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit.entries is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE ON {SCHEMA}.entries
    FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.refuse_entry_change();
CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON {SCHEMA}.entries
    FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.refuse_entry_change();

CREATE FUNCTION {SCHEMA}.guard_chain_head() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NEW.id = OLD.id AND NEW.seq >= OLD.seq THEN
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION 'audit.chain_head only moves forward: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER chain_head_forward_only BEFORE UPDATE OR DELETE ON {SCHEMA}.chain_head
    FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.guard_chain_head();
CREATE TRIGGER chain_head_no_truncate BEFORE TRUNCATE ON {SCHEMA}.chain_head
    FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.guard_chain_head();
"""

SQLITE_GUARDS = [
    "CREATE TRIGGER entries_no_update BEFORE UPDATE ON entries "
    f"BEGIN SELECT RAISE(ABORT, '{REFUSE.format(op='UPDATE')}'); END",
    "CREATE TRIGGER entries_no_delete BEFORE DELETE ON entries "
    f"BEGIN SELECT RAISE(ABORT, '{REFUSE.format(op='DELETE')}'); END",
    "CREATE TRIGGER chain_head_no_delete BEFORE DELETE ON chain_head "
    "BEGIN SELECT RAISE(ABORT, 'audit.chain_head only moves forward: DELETE refused'); END",
    "CREATE TRIGGER chain_head_forward_only BEFORE UPDATE ON chain_head "
    "WHEN NEW.id <> OLD.id OR NEW.seq < OLD.seq "
    "BEGIN SELECT RAISE(ABORT, 'audit.chain_head only moves forward: UPDATE refused'); END",
]


def upgrade():
    chain_head = op.create_table(
        "chain_head",
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chain_head")),
        schema=SCHEMA,
    )
    op.create_table(
        "entries",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=128), nullable=False),
        sa.Column("actor_id", sa.String(length=128), nullable=True),
        sa.Column("actor_type", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_entries")),
        sa.UniqueConstraint("event_id", name=op.f("uq_entries_event_id")),
        sa.UniqueConstraint("id", name=op.f("uq_entries_id")),
        schema=SCHEMA,
    )
    op.create_index("ix_entries_action_seq", "entries", ["action", "seq"], schema=SCHEMA)
    op.create_index("ix_entries_actor_id_seq", "entries", ["actor_id", "seq"], schema=SCHEMA)
    op.create_index("ix_entries_occurred_at", "entries", ["occurred_at"], schema=SCHEMA)
    op.create_index("ix_entries_request_id", "entries", ["request_id"], schema=SCHEMA)
    op.create_index("ix_entries_source_seq", "entries", ["source", "seq"], schema=SCHEMA)
    op.create_index("ix_entries_subject_seq", "entries", ["subject", "seq"], schema=SCHEMA)
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
    op.create_index(op.f("ix_outbox_sent_at"), "outbox", ["sent_at"], schema=SCHEMA)
    op.create_table(
        "processed_events",
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_processed_events")),
        schema=SCHEMA,
    )
    op.bulk_insert(chain_head, [{"id": 1, "seq": 0, "hash": GENESIS_HASH,
                                 "updated_at": datetime.now(UTC)}])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(POSTGRES_GUARDS)
    else:
        for statement in SQLITE_GUARDS:
            op.execute(statement)


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION {SCHEMA}.refuse_entry_change() CASCADE")
        op.execute(f"DROP FUNCTION {SCHEMA}.guard_chain_head() CASCADE")
    op.drop_table("processed_events", schema=SCHEMA)
    op.drop_index(op.f("ix_outbox_sent_at"), table_name="outbox", schema=SCHEMA)
    op.drop_table("outbox", schema=SCHEMA)
    for name in ("ix_entries_subject_seq", "ix_entries_source_seq", "ix_entries_request_id",
                 "ix_entries_occurred_at", "ix_entries_actor_id_seq", "ix_entries_action_seq"):
        op.drop_index(name, table_name="entries", schema=SCHEMA)
    op.drop_table("entries", schema=SCHEMA)
    op.drop_table("chain_head", schema=SCHEMA)
