"""The first administrator: created through identity when missing, then given ``admin``.

``ensure_admin`` is shared by the service (``BootstrapAdmin``: at start, from
``BOOTSTRAP_ADMIN_EMAIL`` / ``BOOTSTRAP_ADMIN_PASSWORD``) and by ``python -m authz.admin``
(``make admin``). It is idempotent, and safe when several instances run it at once: a lost
race to create the user is a Conflict from identity (then the user is looked up again), and
the assignment is serialised per user.
"""

import logging
import threading

from nameko.extensions import DependencyProvider

from authz import assignments
from authz.models import ADMIN
from shared.config import AMQP_URI_KEY, ConfigError, secret, setting
from shared.context import bind, new_request_id
from shared.db import Database, UnitOfWork
from shared.errors import Conflict, Invalid, NotFound
from shared.health import Health
from shared.rpc_client import RpcClient

__all__ = ["ensure_admin", "BootstrapAdmin", "EMAIL_KEY", "PASSWORD_KEY"]

log = logging.getLogger(__name__)

EMAIL_KEY = "BOOTSTRAP_ADMIN_EMAIL"
PASSWORD_KEY = "BOOTSTRAP_ADMIN_PASSWORD"
IDENTITY_TIMEOUT_KEY = "IDENTITY_RPC_TIMEOUT"
RETRY_MAX_DELAY_KEY = "BOOTSTRAP_RETRY_MAX_DELAY"
ACTOR_ID = "authz-bootstrap"


def system_context():
    return {"request_id": new_request_id(), "actor_type": "system", "actor_id": ACTOR_ID}


def ensure_admin(call_identity, uow, email, password=None, display_name="Administrator"):
    """Make the user with ``email`` a global admin, creating them through identity if missing.

    ``call_identity(method, **kwargs)`` calls identity over RPC. ``password`` is a string or a
    callable returning one (asked only when the user must be created); without one a missing
    user is NotFound. Returns ``{"user", "created_user", "assigned"}``.
    """
    created = False
    try:
        user = call_identity("get_user_by_email", email=email)
    except NotFound:
        if password is None:
            raise
        try:
            user = call_identity("create_user", email=email, display_name=display_name,
                                 password=password() if callable(password) else password)
            created = True
        except Conflict:  # another instance created it a moment ago
            user = call_identity("get_user_by_email", email=email)
    if user.get("status") != "active":
        log.warning("bootstrap admin %s is %s; making them admin anyway", user["id"],
                    user.get("status"))
    _, assigned = assignments.assign(uow, user["id"], ADMIN)
    uow.commit()
    return {"user": user, "created_user": created, "assigned": assigned}


class BootstrapAdmin(DependencyProvider):
    """Runs ``ensure_admin`` once the container runs, retrying until identity answers.

    Config: ``BOOTSTRAP_ADMIN_EMAIL``, ``BOOTSTRAP_ADMIN_PASSWORD`` (a secret: refused when a
    placeholder in production), ``IDENTITY_RPC_TIMEOUT`` (s, default 5),
    ``BOOTSTRAP_RETRY_MAX_DELAY`` (s, default 10). Its state shows in ``/health``.
    """

    def __init__(self):
        self.state = "disabled"
        self.result = None
        self.attempts = 0
        self._stopped = threading.Event()

    def setup(self):
        config = self.container.config
        self.email = (setting(config, EMAIL_KEY) or "").strip() or None
        self.password = secret(config, PASSWORD_KEY) if self.email else None
        if self.email and not self.password:
            raise ConfigError(f"{PASSWORD_KEY} must be set when {EMAIL_KEY} is")
        self.timeout = setting(config, IDENTITY_TIMEOUT_KEY, 5.0, float)
        self.max_delay = setting(config, RETRY_MAX_DELAY_KEY, 10.0, float)
        self.amqp_uri = config[AMQP_URI_KEY]
        self.database = next(d for d in self.container.dependencies if isinstance(d, Database))
        for health in self.container.dependencies:
            if isinstance(health, Health):
                health.extras.append(lambda: {"bootstrap_admin": self.state})
        self.state = "pending" if self.email else "disabled"

    def start(self):
        if self.email:
            self._stopped.clear()
            self.container.spawn_managed_thread(self.run, identifier="bootstrap-admin")

    def stop(self):
        self._stopped.set()

    def kill(self):
        self._stopped.set()

    def run(self):
        client = RpcClient(self.amqp_uri, timeout=self.timeout)
        client.start()
        context = system_context()
        bind(dict(context))  # this thread's log lines carry its request id and actor

        def call_identity(method, **kwargs):
            return client.call("identity", method, kwargs=kwargs, context=context,
                               timeout=self.timeout)

        delay = 0.2
        try:
            while not self._stopped.is_set():
                self.attempts += 1
                uow = UnitOfWork(self.database.sessions, self.container.service_name,
                                 dict(context), on_commit=self.database.relay.wake)
                try:
                    self.result = ensure_admin(call_identity, uow, self.email, self.password)
                    self.state = "done"
                    log.info("bootstrap admin %s is admin (user created: %s, role assigned: "
                             "%s)", self.result["user"]["id"], self.result["created_user"],
                             self.result["assigned"])
                    return
                except Invalid as exc:  # the email or password itself: retrying cannot help
                    self.state = "failed"
                    log.error("bootstrap admin refused by identity: %s %s", exc.message,
                              exc.details)
                    return
                except Exception as exc:  # noqa: BLE001 - identity or the database not up yet
                    log.warning("bootstrap admin attempt %d failed (%s: %s); retrying in "
                                "%.1fs", self.attempts, type(exc).__name__, exc, delay)
                finally:
                    uow.rollback()
                    uow.close()
                self._stopped.wait(delay)
                delay = min(self.max_delay, delay * 2)
        finally:
            client.close()
