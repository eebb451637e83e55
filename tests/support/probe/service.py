from pathlib import Path

from shared import service as kernel
from shared.db import Database
from shared.events import event_handler
from shared.rpc import rpc
from tests.support.probe.models import Base, Tally

MIGRATIONS = Path(__file__).with_name("migrations")


class ProbeService(kernel.ServiceBase):
    name = "probe"
    db = Database(Base.metadata, migrations=MIGRATIONS)

    @event_handler("identity", "user.created")
    def count(self, payload):
        if not self.db.claim(payload):
            return
        tally = self.db.session.get(Tally, payload["subject"]) or Tally(
            subject=payload["subject"], count=0)
        tally.count += 1
        self.db.session.add(tally)
        self.db.commit()

    @rpc
    def ping(self):
        """No dependency touched: the cost of an RPC through nameko itself."""
        return "pong"

    @rpc
    def tally(self, subject):
        row = self.db.session.get(Tally, subject)
        return row.count if row else 0

    @rpc
    def bump(self, subject):
        """Count ``subject`` directly and announce it (an outbox round trip)."""
        tally = self.db.session.get(Tally, subject) or Tally(subject=subject, count=0)
        tally.count += 1
        self.db.session.add(tally)
        self.db.emit("tally.bumped", subject, {"count": tally.count})
        self.db.commit()
        return tally.count
