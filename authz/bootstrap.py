"""The installation's first administrator, made once; and ``make admin``'s promotion.

``bootstrap_admin`` (run at start by ``BootstrapAdmin`` from ``BOOTSTRAP_ADMIN_EMAIL`` /
``BOOTSTRAP_ADMIN_PASSWORD``) creates a new account through identity and makes it admin, once
per installation, recorded in authz's ``bootstrap`` table. It never promotes an account it did
not create: sign-up is public and emails are not verified, so whoever holds the configured
email may be a stranger who registered it first.

It is safe against crashes and against several instances starting together. The id the new
user will get is chosen and committed first (``pending``); the rest happens under a lock on
that row: create the user with that id (identity refuses an id it has seen, naming the id),
assign ``admin`` and mark the row ``done`` in one transaction. A retry after a crash between
"user created" and "recorded" finds the user by its id and finishes; a second instance waits
for the lock and then finds the row done.

``ensure_admin`` is ``python -m authz.admin`` (``make admin``): the operator's deliberate way
to make an existing account (or a new one) admin.
"""

import logging
import threading
import uuid

import sqlalchemy as sa
from nameko.extensions import DependencyProvider
from sqlalchemy.exc import IntegrityError

from authz import assignments, effective
from authz.models import ADMIN, GLOBAL, Assignment, Bootstrap
from shared.actors import TOKEN_KEY, ServiceTokens
from shared.backoff import NO_JITTER, Backoff
from shared.calls import check_declared
from shared.config import AMQP_URI_KEY, ConfigError, secret, setting
from shared.context import bind, new_request_id
from shared.db import UnitOfWork
from shared.errors import Conflict, Invalid, NotFound
from shared.hub import Hub
from shared.ids import uuid7
from shared.rpc import rpc_timeout
from shared.rpc_client import RpcClient

__all__ = ["bootstrap_admin", "ensure_admin", "BootstrapAdmin", "Refused", "EMAIL_KEY",
           "PASSWORD_KEY"]

log = logging.getLogger(__name__)

EMAIL_KEY = "BOOTSTRAP_ADMIN_EMAIL"
PASSWORD_KEY = "BOOTSTRAP_ADMIN_PASSWORD"
RETRY_MAX_DELAY_KEY = "BOOTSTRAP_RETRY_MAX_DELAY"
ACTOR_ID = "authz-bootstrap"
ADMIN_STEP = "admin"
PENDING, DONE, SKIPPED = "pending", "done", "skipped"


class Refused(Exception):
    """The bootstrap will make nobody admin: the account it would use is not its own."""


def system_context():
    return {"request_id": new_request_id(), "actor_type": "system", "actor_id": ACTOR_ID}


def _password(password):
    return password() if callable(password) else password


# -- the bootstrap ----------------------------------------------------------------------------

def record_intent(uow):
    """Commit the bootstrap's row (``pending``, with a fresh id for its user) unless there is
    one: then that row, written by an earlier start or by another instance, is the intent."""
    session = uow.session
    if session.get(Bootstrap, ADMIN_STEP) is not None:
        return
    stamp = effective.now()
    session.add(Bootstrap(name=ADMIN_STEP, status=PENDING, user_id=uuid7(), created_at=stamp,
                          updated_at=stamp))
    try:
        uow.commit()
    except IntegrityError:  # another instance wrote its row first: that one is the intent
        uow.rollback()


def _locked_row(session):
    """The bootstrap's row, locked until the transaction ends (re-read, not a cached copy)."""
    return session.scalars(sa.select(Bootstrap).where(Bootstrap.name == ADMIN_STEP)
                           .with_for_update().execution_options(populate_existing=True)).one()


def _another_admin(session, user_id):
    return session.scalar(sa.select(Assignment.user_id).where(
        Assignment.role == ADMIN, Assignment.scope == GLOBAL, Assignment.user_id != user_id)
        .limit(1))


def _create_or_recognise(call_identity, user_id, email, password, display_name):
    """The bootstrap's own user, ``(user, created)``: created now with ``user_id``, or found
    by that id when an earlier attempt created it. Never an account found by email."""
    try:
        user = call_identity("create_user", id=user_id, email=email, display_name=display_name,
                             password=_password(password))
        return user, True
    except Conflict as conflict:
        try:
            return call_identity("get_user", user_id=user_id), False
        except NotFound:
            if "id" in conflict.details:
                raise Refused(f"the account this bootstrap created ({user_id}) was deleted "
                              "before it was made admin") from None
            raise Refused(f"the email in {EMAIL_KEY} belongs to an account this bootstrap did "
                          "not create; it is not made admin") from None


def bootstrap_admin(call_identity, uow, email, password, display_name="Administrator"):
    """Create the installation's first administrator, once.

    ``call_identity(method, **kwargs)`` calls identity over RPC; ``password`` is a string or
    a callable returning one. Returns ``{"status", "user_id", "created_user", "made_admin"}``:
    ``done`` (``made_admin`` now, or at an earlier start: then identity is not asked anything)
    or ``skipped`` (an administrator existed already, e.g. from ``make admin``; nobody is
    promoted). Raises
    ``Refused`` when the account would not be its own, identity's ``Invalid`` when it refuses
    the email or password, and whatever else identity or the database raise (retry later).
    """
    record_intent(uow)
    session = uow.session
    row = _locked_row(session)  # held until the commit: instances starting together take turns
    if row.status != PENDING:
        uow.rollback()
        return {"status": row.status, "user_id": row.user_id, "created_user": False,
                "made_admin": False}
    if _another_admin(session, row.user_id) is not None:
        row.status, row.updated_at = SKIPPED, effective.now()
        uow.commit()
        return {"status": SKIPPED, "user_id": None, "created_user": False, "made_admin": False}
    user, created = _create_or_recognise(call_identity, row.user_id, email, password,
                                         display_name)
    row.status, row.updated_at = DONE, effective.now()
    try:
        assignments.assign(uow, row.user_id, ADMIN)  # commits the row with the assignment
    except NotFound:  # authz heard of the user's deletion already
        raise Refused(f"the account this bootstrap created ({row.user_id}) was deleted before "
                      "it was made admin") from None
    uow.commit()
    return {"status": DONE, "user_id": user["id"], "created_user": created, "made_admin": True}


# -- make admin -------------------------------------------------------------------------------

def ensure_admin(call_identity, uow, email, password=None, display_name="Administrator"):
    """Make the user with ``email`` a global admin, creating them through identity if missing
    (``make admin``: an operator's deliberate choice, so an existing account is promoted).

    ``password`` is a string or a callable returning one (asked only when the user must be
    created); without one a missing user is NotFound. Returns ``{"user", "created_user",
    "assigned"}``.
    """
    created = False
    try:
        user = call_identity("get_user_by_email", email=email)
    except NotFound:
        if password is None:
            raise
        try:
            user = call_identity("create_user", email=email, display_name=display_name,
                                 password=_password(password))
            created = True
        except Conflict:  # created a moment ago by someone else
            user = call_identity("get_user_by_email", email=email)
    if user.get("status") != "active":
        log.warning("user %s is %s; making them admin anyway", user["id"], user.get("status"))
    _, assigned = assignments.assign(uow, user["id"], ADMIN)
    uow.commit()
    return {"user": user, "created_user": created, "assigned": assigned}


# -- the provider -----------------------------------------------------------------------------

def _describe(error):
    """An identity refusal in one line, without the values refused."""
    fields = "; ".join(f"{field}: {', '.join(map(str, problems))}"
                       if isinstance(problems, list) else f"{field}: {problems}"
                       for field, problems in error.details.items())
    return f"{error.message} ({fields})" if fields else error.message


# what the bootstrap (and `make admin`) call on identity: the one list deploy/broker_users.py
# allows authz's broker user to send for them
IDENTITY_CALLS = frozenset({"create_user", "get_user", "get_user_by_email"})


def identity_caller(client, context, timeout=None):
    """``call_identity(method, **kwargs)`` over ``client`` (an ``RpcClient``), limited to
    ``IDENTITY_CALLS``."""
    def call_identity(method, **kwargs):
        check_declared(IDENTITY_CALLS, "identity", method)
        return client.call("identity", method, kwargs=kwargs, context=context, timeout=timeout)

    return call_identity


class BootstrapAdmin(DependencyProvider):
    """Runs ``bootstrap_admin`` once the container runs, retrying until identity answers.

    Config: ``BOOTSTRAP_ADMIN_EMAIL``, ``BOOTSTRAP_ADMIN_PASSWORD`` (a secret: refused when a
    placeholder in production), ``IDENTITY_RPC_TIMEOUT`` (s, default 5),
    ``BOOTSTRAP_RETRY_MAX_DELAY`` (s, default 10). ``/health`` shows its state
    (``bootstrap_admin``: disabled, pending, done, skipped, failed or refused) and, when it
    failed or was refused, why (``bootstrap_admin_problem``). Its calls carry authz's own
    service token as their proof (shared.actors).
    """

    hub = Hub()
    rpc_calls = {"identity": IDENTITY_CALLS}  # read by deploy/broker_users.py
    tokens = ServiceTokens()

    def __init__(self):
        self.state = "disabled"
        self.problem = None
        self.result = None
        self.attempts = 0
        self._stopped = threading.Event()

    def setup(self):
        config = self.container.config
        self.email = (setting(config, EMAIL_KEY) or "").strip() or None
        self.password = secret(config, PASSWORD_KEY) if self.email else None
        if self.email and not self.password:
            raise ConfigError(f"{PASSWORD_KEY} must be set when {EMAIL_KEY} is")
        self.timeout = rpc_timeout(config, "identity")
        self.max_delay = setting(config, RETRY_MAX_DELAY_KEY, 10.0, float)
        self.amqp_uri = config[AMQP_URI_KEY]
        self.hub.add_info(self.health_info)
        self.state = "pending" if self.email else "disabled"

    def health_info(self):
        info = {"bootstrap_admin": self.state}
        if self.problem:
            info["bootstrap_admin_problem"] = self.problem
        return info

    def start(self):
        if self.email:
            self.database = self.hub.database()
            self._stopped.clear()
            self.container.spawn_managed_thread(self.run, identifier="bootstrap-admin")

    def stop(self):
        self._stopped.set()

    def kill(self):
        self._stopped.set()

    def _finish(self, state, problem=None):
        self.state, self.problem = state, problem

    def run(self):
        client = RpcClient(self.amqp_uri, timeout=self.timeout,
                           name=f"rpc.reply-authz-bootstrap-{uuid.uuid4().hex}")
        client.start()
        context = system_context()
        bind(dict(context))  # this thread's log lines carry its request id and actor

        def call_identity(method, **kwargs):  # with authz's own token as its proof
            token = self.tokens.token() if self.tokens.enforced else None
            proven = {**context, TOKEN_KEY: token} if token else context
            return identity_caller(client, proven, self.timeout)(method, **kwargs)

        backoff = Backoff(initial=0.2, maximum=self.max_delay, jitter=NO_JITTER)
        try:
            while not self._stopped.is_set():
                self.attempts += 1
                delay = backoff.next()
                if self._attempt(call_identity, context, delay):
                    return
                self._stopped.wait(delay)
        finally:
            client.close()

    def _attempt(self, call_identity, context, delay):
        """One try of the bootstrap; True when it is over (done, skipped, or refused)."""
        uow = UnitOfWork(self.database.sessions, self.container.service_name, dict(context),
                         on_commit=self.database.relay.wake)
        try:
            self.result = bootstrap_admin(call_identity, uow, self.email, self.password)
            self._report(self.result)
        except Refused as exc:
            self._finish("refused", str(exc))
            log.error("bootstrap admin refused: %s. Nobody was made admin; make someone admin "
                      "with `make admin` (python -m authz.admin)", exc)
        except Invalid as exc:  # the email or password itself: retrying cannot help
            self._finish("failed", _describe(exc))
            log.error("bootstrap admin refused by identity: %s. Nobody was made admin; fix "
                      "%s / %s and restart authz", _describe(exc), EMAIL_KEY, PASSWORD_KEY)
        except Exception as exc:  # noqa: BLE001 - identity or the database not up yet
            log.warning("bootstrap admin attempt %d failed (%s: %s); retrying in %.1fs",
                        self.attempts, type(exc).__name__, exc, delay)
            return False
        finally:
            uow.rollback()
            uow.close()
        return True

    def _report(self, result):
        self._finish(result["status"])
        if result["status"] == SKIPPED:
            log.warning("bootstrap admin skipped: an administrator exists already; nobody "
                        "was promoted, and %s is not used again", EMAIL_KEY)
        elif result["made_admin"]:
            how = "created" if result["created_user"] else "found by its id (created by an " \
                "attempt interrupted before it was recorded)"
            log.info("bootstrap admin %s %s and made admin", result["user_id"], how)
        else:
            log.info("bootstrap admin done (user %s); it happens once per installation, so "
                     "%s is not used again", result["user_id"], EMAIL_KEY)
