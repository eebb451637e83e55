"""Request context (request id and actor) carried through RPC calls, events and log lines."""

import re
import uuid
from contextvars import ContextVar
from dataclasses import asdict, dataclass

from nameko.extensions import DependencyProvider

from shared.contracts import ACTOR_TYPES, REQUEST_ID_PATTERN

__all__ = [
    "REQUEST_ID_KEY",
    "ACTOR_ID_KEY",
    "ACTOR_TYPE_KEY",
    "ACTOR_TYPES",
    "Actor",
    "RequestContext",
    "Context",
    "new_request_id",
    "valid_request_id",
    "current",
    "bind",
]

REQUEST_ID_KEY = "request_id"
ACTOR_ID_KEY = "actor_id"
ACTOR_TYPE_KEY = "actor_type"
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)

request_id_var = ContextVar("plinth_request_id", default=None)
actor_var = ContextVar("plinth_actor", default=None)


@dataclass(frozen=True)
class Actor:
    id: str | None
    type: str = "system"

    def to_dict(self):
        return asdict(self)


SYSTEM = Actor(None, "system")


def new_request_id():
    return str(uuid.uuid4())


def valid_request_id(value):
    return isinstance(value, str) and bool(_REQUEST_ID.match(value))


def actor_from(context_data):
    actor_type = context_data.get(ACTOR_TYPE_KEY)
    if actor_type not in ACTOR_TYPES:
        return SYSTEM
    actor_id = context_data.get(ACTOR_ID_KEY)
    return Actor(str(actor_id) if actor_id is not None else None, actor_type)


def current():
    """(request_id, actor) of the code running now, as seen by log lines."""
    return request_id_var.get(), actor_var.get()


def bind(context_data):
    """Normalise nameko context data in place and make it the current context.

    A missing or malformed request id is replaced by a fresh one, so every unit of work has one
    and it is what travels to every downstream call and event.
    """
    if not valid_request_id(context_data.get(REQUEST_ID_KEY)):
        context_data[REQUEST_ID_KEY] = new_request_id()
    actor = actor_from(context_data)
    request_id_var.set(context_data[REQUEST_ID_KEY])
    actor_var.set(actor)
    return context_data[REQUEST_ID_KEY], actor


class Context:
    """What a worker sees of its request: ``request_id`` and ``actor``."""

    def __init__(self, context_data):
        self.data = context_data
        self.request_id, _ = bind(context_data)

    @property
    def actor(self):
        # read each time: shared.actors replaces a claimed actor by the one its token proves
        return actor_from(self.data)


class RequestContext(DependencyProvider):
    """Binds each worker's request id and actor for its logs, calls and events."""

    def get_dependency(self, worker_ctx):
        return Context(worker_ctx.context_data)

    def worker_setup(self, worker_ctx):
        # get_dependency already ran in this greenthread; bind again in case another provider
        # replaced the context data meanwhile.
        bind(worker_ctx.context_data)

    def worker_teardown(self, worker_ctx):
        request_id_var.set(None)
        actor_var.set(None)
