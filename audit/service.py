import hashlib
import os
from pathlib import Path

from nameko.dependency_providers import Config

from audit import entries, exports, schemas
from audit.consumer import TrailConsumer
from audit.models import Base
from shared import config as cfg
from shared import service as kernel  # not imported by name: nameko would take it for a service
from shared.actors import guarded
from shared.db import Database
from shared.errors import Conflict, Invalid
from shared.redelivery import describe, is_client_error
from shared.retention import Retention, retention_every
from shared.rpc import load, rpc, rpc_input
from shared.tasks import task

EXPORT_MAX_ENTRIES_KEY = "AUDIT_EXPORT_MAX_ENTRIES"
EXPORT_DIR_KEY = "AUDIT_EXPORT_DIR"
EXPORT_RETENTION_KEY = "AUDIT_EXPORT_RETENTION_DAYS"
EXPORT_ATTEMPTS = 3


class AuditService(kernel.ServiceBase):
    name = "audit"

    db = Database(Base.metadata)
    trail = TrailConsumer()
    config = Config()
    retention = Retention(exports=(EXPORT_RETENTION_KEY, 7))

    @task("audit.retention.purge", every=retention_every())
    def purge_retention(self, task):
        """The kernel's retention, and exports finished more than a week ago (configurable):
        their rows, then their files and any a crashed generation left."""
        keep, expired = self.retention.age("exports"), []

        def expired_exports(session, now):
            expired.extend(exports.expire(session.connection(), now - keep))
            return len(expired)

        self.retention.purge(self.db, also={"exports": expired_exports})  # committed here
        exports.sweep(self._export_dir(), expired)

    def _connection(self, snapshot=False):
        session = self.db.session
        if snapshot and session.get_bind().dialect.name == "postgresql":
            return session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        return session.connection()

    @rpc
    def record(self, entry=None, **fields):
        payload = load(schemas.RecordSchema(), rpc_input(entry, fields))
        entry = entries.from_record(payload, self.context, self.trail.redactor,
                                    self.trail.max_data_bytes)
        rows, _ = entries.append(self._connection(), [entry])
        self.db.commit()
        if rows:
            return entries.to_dict(rows[0])
        return entries.by_event_id(self._connection(), entry["event_id"])

    @rpc
    @guarded("audit:read")
    def query(self, filters=None, **fields):
        return entries.page(self._connection(), load(schemas.QuerySchema(),
                                                     rpc_input(filters, fields)))

    @rpc
    @guarded("audit:read")
    def get(self, entry_id):
        return entries.get(self._connection(), entry_id)

    @rpc
    @guarded("audit:read")
    def verify(self, from_seq=None, to_seq=None):
        payload = load(schemas.VerifySchema(), {"from_seq": from_seq, "to_seq": to_seq})
        return entries.verify(self._connection(snapshot=True), **payload)

    @rpc
    def head(self):
        head = entries.head(self._connection())
        return {"seq": head.seq, "hash": head.hash}

    @rpc
    @guarded("audit:read")
    def export(self, filters=None, **fields):
        """The matching entries, oldest first, one JSON object a line (NDJSON)."""
        payload = load(schemas.FiltersSchema(), rpc_input(filters, fields))
        limit = cfg.setting(self.config, EXPORT_MAX_ENTRIES_KEY, 10_000, int)
        lines = []
        for row in entries.iterate(self._connection(snapshot=True), payload):
            if len(lines) == limit:
                raise Invalid(f"more than {limit} entries match; narrow the filters or use "
                              "export_file", {"_schema": [f"more than {limit} entries match"]})
            lines.append(entries.ndjson_line(row))
        return "".join(lines)

    @rpc
    @guarded("audit:read")
    def export_file(self, filters=None, **fields):
        """Write the matching entries as NDJSON to a new file in the export directory."""
        payload = load(schemas.ExportFileSchema(), rpc_input(filters, fields))
        name = payload.pop("name")
        folder = Path(cfg.setting(self.config, EXPORT_DIR_KEY)
                      or cfg.var_dir() / "audit-exports")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (name if "." in name else f"{name}.ndjson")
        if path.exists():
            raise Conflict(f"export {path.name} already exists", {"name": ["already exists"]})
        digest, count, size = hashlib.sha256(), 0, 0
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        with open(partial, "wb") as out:
            for row in entries.iterate(self._connection(snapshot=True), payload):
                line = entries.ndjson_line(row).encode("utf-8")
                out.write(line)
                digest.update(line)
                count, size = count + 1, size + len(line)
        partial.replace(path)
        return {"path": str(path), "count": count, "bytes": size, "sha256": digest.hexdigest()}

    # -- exports as a task (SPEC §8): asked for here, written by generate_export --
    def _export_dir(self):
        return Path(cfg.setting(self.config, EXPORT_DIR_KEY) or cfg.var_dir() / "audit-exports")

    @rpc
    @guarded("audit:read")
    def start_export(self, filters=None, **fields):
        """Ask for an export of the matching entries: a pending export whose task writes it."""
        schema = schemas.FiltersSchema()
        given = schema.dump(load(schema, rpc_input(filters, fields)))
        stored = {name: value for name, value in given.items() if value is not None}
        export = exports.create(self._connection(), stored, self.context.actor,
                                self.context.request_id)
        self.db.dispatch(exports.GENERATE_TASK, {"export_id": export["id"]})
        self.db.commit()
        return export

    @rpc
    @guarded("audit:read")
    def get_export(self, export_id):
        return exports.get(self._connection(), export_id)

    @rpc
    @guarded("audit:read")
    def read_export(self, export_id, offset=0, limit=exports.PAGE_BYTES):
        """A page of a done export's NDJSON (whole lines) and the offset of the next."""
        return exports.read_page(self._connection(), self._export_dir(), export_id, offset,
                                 limit)

    @task(exports.GENERATE_TASK, max_attempts=EXPORT_ATTEMPTS, dedupe=False)
    def generate_export(self, task):
        # the export's own status is the dedupe mark: a redelivery after it is done is a no-op,
        # one after a crash mid-write writes the (pinned, so identical) file again
        export_id = task["data"].get("export_id")
        row = exports.start(self._connection(), export_id, task["task_id"])
        self.db.commit()
        if row is None:
            return None
        try:
            written = exports.write(self._connection(), row, self._export_dir())
            exports.finish(self._connection(), export_id, written)
            self.db.commit()
        except Exception as exc:  # recorded on the export, then raised: the task is retried
            self.db.rollback()
            final = is_client_error(exc) or task["attempt"] >= EXPORT_ATTEMPTS
            error_type, error = describe(exc)
            exports.failed(self._connection(), export_id, f"{error_type}: {error}", final)
            self.db.commit()
            raise
        return written
