"""Switch a deployment's durable queues between classic and quorum without losing a message.

RabbitMQ fixes a queue's type when it is declared, so switching means a new queue under the
same name. With the services that consume the queues stopped (publishers -- the gateway, the
outbox relays of the other services -- may keep running), for each durable, shared queue of
the vhost that is not of the target type yet::

    1. declare <name>.migrating (target type, same arguments), bound like <name>
    2. unbind <name>: new routed messages now land in <name>.migrating only
    3. move every message of <name> to <name>.migrating (confirmed publish, then ack)
    4. delete <name> (only when empty: a message sent to it by name meanwhile is moved too)
    5. declare <name> of the target type, bound as before
    6. unbind <name>.migrating, move its messages back to <name>, delete it

A message is acked on the old queue only after the broker confirmed its copy, so none is lost;
one routed to both queues in the instant between 5 and 6 arrives twice, which consumers
already deduplicate (every handler claims the event id). A task published by name while
``<name>`` does not exist (between 4 and 5) comes back unroutable and stays in its outbox.
Then start the services with ``AMQP_QUEUE_TYPE=<target>``. Reply queues and exclusive or
auto-delete queues are left alone. deploy/README.md ("Quorum queues") walks through it.

    python -m shared.queue_migration --to quorum --management-url http://u:p@host:15672 \\
        [--amqp-uri amqp://u:p@host:5672/vhost (default: $AMQP_URI)] [--dry-run]
"""

import argparse
import logging
import os
import sys
from urllib.parse import quote

import amqp
import requests

from shared.broker_nodes import Nodes
from shared.queues import QUEUE_TYPES

__all__ = ["QueueMigration", "main", "TEMPORARY_SUFFIX"]

log = logging.getLogger(__name__)
TEMPORARY_SUFFIX = ".migrating"
SKIPPED_PREFIXES = ("rpc.reply-", "amq.")
CLASSIC_ONLY = ("x-queue-version", "x-max-priority", "x-queue-mode", "x-queue-master-locator")
MAX_ROUNDS = 20


class QueueMigration:
    """Moves the queues of one vhost to ``target`` (see the module docstring)."""

    def __init__(self, management_url, amqp_uri, target, out=print):
        if target not in QUEUE_TYPES:
            raise ValueError(f"target must be one of {QUEUE_TYPES}")
        self.api = management_url.rstrip("/") + "/api"
        self.target, self.out = target, out
        nodes = Nodes(amqp_uri, connect_timeout=5)
        self.vhost = nodes.current["virtual_host"]  # the queues of AMQP_URI's vhost
        self.http = requests.Session()
        self.conn = nodes.connect()
        self.channel = None
        self._fresh_channel()

    def _fresh_channel(self):
        # RabbitMQ 3.10 keeps a channel's state of each queue it used by name: a channel that
        # read from the classic <name> crashes (541) when it publishes to the quorum <name>
        # declared after it. Each phase gets a channel of its own.
        if self.channel is not None and self.channel.is_open:
            self.channel.close()
        self.channel = self.conn.channel()
        self.channel.confirm_select()

    def close(self):
        self.http.close()
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001 - closing a broken connection; nothing to save
            self.conn.collect()

    # -- what there is ------------------------------------------------------------------------
    def _get(self, path):
        response = self.http.get(f"{self.api}/{path}", timeout=10)
        response.raise_for_status()
        return response.json()

    def candidates(self):
        """Durable shared queues of the vhost not of the target type yet."""
        vhost = quote(self.vhost, safe="")
        queues = []
        for queue in self._get(f"queues/{vhost}"):
            name = queue["name"]
            if (not queue.get("durable") or queue.get("auto_delete") or
                    queue.get("exclusive") or name.startswith(SKIPPED_PREFIXES)):
                continue
            if queue.get("type", "classic") != self.target:
                queues.append(queue)
        return queues

    def bindings(self, name):
        vhost, queue = quote(self.vhost, safe=""), quote(name, safe="")
        return [b for b in self._get(f"queues/{vhost}/{queue}/bindings") if b["source"]]

    # -- moving -------------------------------------------------------------------------------
    def arguments(self, queue):
        arguments = {k: v for k, v in (queue.get("arguments") or {}).items()
                     if k != "x-queue-type"}
        if self.target == "quorum":
            for key in CLASSIC_ONLY:
                arguments.pop(key, None)
            arguments["x-queue-type"] = "quorum"
        return arguments

    def _declare(self, name, arguments, bindings):
        self.channel.queue_declare(name, durable=True, auto_delete=False, arguments=arguments)
        for b in bindings:
            self.channel.queue_bind(name, b["source"], routing_key=b["routing_key"],
                                    arguments=b.get("arguments") or {})

    def _unbind(self, name, bindings):
        for b in bindings:
            self.channel.queue_unbind(name, b["source"], routing_key=b["routing_key"],
                                      arguments=b.get("arguments") or {})

    def move(self, source, target):
        """Every message of ``source`` into ``target``, each acked once its copy is
        confirmed. Returns how many."""
        moved = 0
        while (message := self.channel.basic_get(source, no_ack=False)) is not None:
            copy = amqp.Message(message.body, **message.properties)
            # basic_publish waits for the broker's confirm (confirm_select above)
            self.channel.basic_publish(copy, exchange="", routing_key=target, mandatory=True)
            self.channel.basic_ack(message.delivery_tag)
            moved += 1
        return moved

    def _delete_when_empty(self, name, refill, quorum):
        for _ in range(MAX_ROUNDS):
            self.move(name, refill)
            try:
                if not quorum:
                    self.channel.queue_delete(name, if_empty=True)
                    return
                # a quorum queue has no if-empty delete: deleted once seen empty (the
                # temporary queue is unbound by now, and nothing sends to it by name)
                if self.channel.queue_declare(name, passive=True).message_count == 0:
                    self.channel.queue_delete(name)
                    return
            except amqp.exceptions.PreconditionFailed:  # a message arrived after the move
                self.channel = None
                self._fresh_channel()
        raise RuntimeError(f"{name} kept receiving messages; stop what publishes to it by name")

    def migrate(self, queue, dry_run=False):
        name = queue["name"]
        temporary = name + TEMPORARY_SUFFIX
        arguments, bindings = self.arguments(queue), self.bindings(name)
        self.out(f"{name}: {queue.get('type', 'classic')} -> {self.target}, "
                 f"{queue.get('messages', 0)} messages, {len(bindings)} bindings")
        if dry_run:
            return
        self._declare(temporary, arguments, bindings)
        self._unbind(name, bindings)
        self._delete_when_empty(name, temporary, queue.get("type") == "quorum")
        self._fresh_channel()
        self._declare(name, arguments, bindings)
        self._unbind(temporary, bindings)
        self._delete_when_empty(temporary, name, self.target == "quorum")
        self._fresh_channel()

    def run(self, dry_run=False):
        queues = [q for q in self.candidates() if not q["name"].endswith(TEMPORARY_SUFFIX)]
        for queue in queues:
            self.migrate(queue, dry_run)
        self.out(f"{len(queues)} queue(s) {'to move' if dry_run else 'moved'} to {self.target}")
        return [q["name"] for q in queues]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m shared.queue_migration",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--to", required=True, choices=QUEUE_TYPES, dest="target")
    parser.add_argument("--management-url", default="http://guest:guest@127.0.0.1:15672")
    parser.add_argument("--amqp-uri", default=os.environ.get(
        "AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/"), help="names the vhost (AMQP_URI)")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    migration = QueueMigration(args.management_url, args.amqp_uri, args.target)
    try:
        migration.run(args.dry_run)
    finally:
        migration.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
