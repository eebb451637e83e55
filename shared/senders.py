"""Who sent a message: its broker-validated ``user_id`` against the identity owning it.

Every publisher of the platform sets the AMQP ``user_id`` property to its broker user
(``shared.publishing``), and RabbitMQ refuses a message whose ``user_id`` is not the user of
the connection it came on, so a consumer can trust it. With per-process identities on
(``BROKER_USER_PREFIX`` set; deploy/broker_users.py names users ``<prefix><service>``), a
consumer accepts an event of ``<source>.events`` only from ``<prefix><source>`` -- or from its
own user, which is how its own retries and replays come back -- and drops anything else
(acknowledged, never requeued), logged and counted. Without the prefix every process shares
one credential and there is nothing to tell apart: nothing is checked.
"""

import logging

from shared.config import setting

__all__ = ["PREFIX_KEY", "Senders", "user_of"]

log = logging.getLogger(__name__)
PREFIX_KEY = "BROKER_USER_PREFIX"


def user_of(message):
    """The ``user_id`` of a kombu or py-amqp message (None when it has none)."""
    properties = getattr(message, "properties", None) or {}
    return properties.get("user_id")


class Senders:
    """Which broker users a consumer accepts messages from (see the module docstring)."""

    def __init__(self, config, own=None):
        self.prefix = setting(config or {}, PREFIX_KEY) or None
        self.own = None if own is None or self.prefix is None else self.prefix + own

    @property
    def enabled(self):
        return self.prefix is not None

    def accepts(self, user_id, source):
        """True when a message of ``source`` carrying ``user_id`` may be handled."""
        if self.prefix is None:
            return True
        return user_id is not None and (user_id == self.prefix + str(source)
                                        or user_id == self.own)

    def refuse(self, consumer, source, user_id, message_id=None):
        """Log a dropped message (the caller acknowledges it and counts it)."""
        log.warning("%s dropped a message claiming to come from %s, sent by broker user %r "
                    "(message %s)", consumer, source, user_id, message_id or "(no id)")
