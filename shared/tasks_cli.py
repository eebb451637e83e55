"""Operate a service's dead letters: list, show, replay or drop them.

    python -m shared.tasks_cli --config config/audit.yaml dead list
    python -m shared.tasks_cli --config config/audit.yaml dead show ID
    python -m shared.tasks_cli --config config/audit.yaml dead replay ID
    python -m shared.tasks_cli --config config/audit.yaml dead drop ID

(``make tasks SVC=audit ARGS="dead list"``). The service is named by ``--service`` or by the
config file's name; the broker by the config's ``AMQP_URI`` (else the environment's). ``ID``
is a dead letter's message id: the task id of a task, the event id of an event.

A dead letter is read without being taken: every message looked at goes back to the queue,
in its place, except the one replayed or dropped. ``replay`` sends it back to the queue it
failed from (``plinth-queue``) as a fresh delivery (its attempts count from one again) and
takes it off the dead-letter queue only once the broker has confirmed the copy.
"""

import argparse
import json
import sys
from pathlib import Path

from kombu import Connection

from shared.config import AMQP_URI_KEY, amqp_ssl, setting
from shared.publishing import ConfirmedPublisher
from shared.redelivery import (
    ATTEMPTS_HEADER,
    DEAD_REASON_HEADER,
    ERROR_HEADER,
    ERROR_TYPE_HEADER,
    FAILED_AT_HEADER,
    QUEUE_HEADER,
    Topology,
)
from shared.task_queues import TASK_HEADER
from shared.tasks import RESET_HEADERS

__all__ = ["main", "DeadLetters"]

DEFAULT_AMQP_URI = "amqp://guest:guest@127.0.0.1:5672/"
BROWSE_LIMIT = 10_000


class DeadLetters:
    """A service's dead-letter queue, browsed on a connection of its own."""

    def __init__(self, amqp_uri, service):
        self.amqp_uri = amqp_uri
        self.topology = Topology(service)
        self.queue = self.topology.dead_letter_queue

    def _browse(self, act=None, limit=BROWSE_LIMIT):
        """Look at up to ``limit`` messages; ``act(message)`` may return True to take one off
        the queue. Every other message returns to the queue when the channel closes."""
        seen = []
        with Connection(self.amqp_uri, connect_timeout=5, ssl=amqp_ssl() or False) as conn:
            conn.ensure_connection(max_retries=1)
            channel = conn.channel()
            self.queue(channel).declare()
            while len(seen) < limit:
                message = channel.basic_get(self.queue.name, no_ack=False)
                if message is None:
                    break
                seen.append(message)
                if act is not None and act(message):
                    channel.basic_ack(message.delivery_tag)
                    return [message]
            channel.close()  # the messages not acknowledged go back, in their places
        return seen if act is None else []

    def list(self, limit=BROWSE_LIMIT):
        return [summary(m) for m in self._browse(limit=limit)]

    def show(self, message_id):
        found = [m for m in self._browse() if ident(m) == message_id]
        return detail(found[0]) if found else None

    def drop(self, message_id):
        return bool(self._browse(lambda m: ident(m) == message_id))

    def replay(self, message_id):
        publisher = ConfirmedPublisher(self.amqp_uri)

        def send_back(message):
            if ident(message) != message_id:
                return False
            headers = {k: v for k, v in (message.headers or {}).items()
                       if k not in RESET_HEADERS and k not in _ERROR_HEADERS}
            queue = (message.headers or {}).get(QUEUE_HEADER)
            if not queue:
                raise SystemExit(f"dead letter {message_id} does not say which queue it "
                                 "came from; drop it instead")
            properties = message.properties or {}
            routed = publisher.publish(
                # through the service's queues exchange, where its queues are bound by name
                message.body, exchange=self.topology.queues_exchange,
                routing_key=queue, headers=headers,
                message_id=properties.get("message_id"),
                content_type=properties.get("content_type") or "application/data",
                content_encoding=properties.get("content_encoding") or "binary")
            if not routed:
                raise SystemExit(f"queue {queue} does not exist (its service never started?)")
            return True

        try:
            return bool(self._browse(send_back))
        finally:
            publisher.close()


_ERROR_HEADERS = (ERROR_HEADER, ERROR_TYPE_HEADER, FAILED_AT_HEADER)


def ident(message):
    return (message.properties or {}).get("message_id") or "(none)"


def summary(message):
    headers = message.headers or {}
    return {"id": ident(message), "queue": headers.get(QUEUE_HEADER),
            "task": headers.get(TASK_HEADER), "reason": headers.get(DEAD_REASON_HEADER),
            "attempts": headers.get(ATTEMPTS_HEADER), "error_type": headers.get(ERROR_TYPE_HEADER),
            "error": headers.get(ERROR_HEADER), "failed_at": headers.get(FAILED_AT_HEADER)}


def detail(message):
    body = message.body
    try:
        body = json.loads(body)
    except (TypeError, ValueError, UnicodeDecodeError):
        body = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    return {**summary(message), "headers": message.headers or {}, "body": body}


def load_config(path):
    """A nameko YAML config with its ``${VAR:default}`` values resolved, or {}."""
    if not path:
        return {}
    import yaml
    from nameko.cli.main import setup_yaml_parser

    setup_yaml_parser()
    with open(path) as handle:
        return yaml.safe_load(handle) or {}


def _parser():
    parser = argparse.ArgumentParser(prog="python -m shared.tasks_cli",
                                     description="Operate a service's dead letters.")
    parser.add_argument("--config", help="the service's nameko config (config/audit.yaml)")
    parser.add_argument("--service", help="the service (default: the config file's name)")
    sub = parser.add_subparsers(dest="area", required=True)
    dead = sub.add_parser("dead", help="the service's dead-letter queue")
    actions = dead.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="list the dead letters")
    listing.add_argument("--limit", type=int, default=BROWSE_LIMIT)
    for name, text in (("show", "show one dead letter"),
                       ("replay", "send one back to its queue, attempts from one"),
                       ("drop", "delete one")):
        actions.add_parser(name, help=text).add_argument("id")
    return parser


def main(argv=None, out=sys.stdout):
    args = _parser().parse_args(argv)
    config = load_config(args.config)
    service = args.service or (Path(args.config).stem if args.config else None)
    if not service:
        raise SystemExit("name the service: --service NAME or --config config/NAME.yaml")
    dead = DeadLetters(setting(config, AMQP_URI_KEY, DEFAULT_AMQP_URI), service)
    if args.action == "list":
        rows = dead.list(args.limit)
        for row in rows:
            print(json.dumps(row), file=out)
        print(f"{len(rows)} dead letter(s) in {dead.queue.name}", file=sys.stderr)
        return 0
    if args.action == "show":
        found = dead.show(args.id)
        if found is None:
            print(f"no dead letter {args.id} in {dead.queue.name}", file=sys.stderr)
            return 1
        print(json.dumps(found, indent=2, default=str), file=out)
        return 0
    done = dead.replay(args.id) if args.action == "replay" else dead.drop(args.id)
    if not done:
        print(f"no dead letter {args.id} in {dead.queue.name}", file=sys.stderr)
        return 1
    print(f"{'replayed' if args.action == 'replay' else 'dropped'} {args.id}", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
