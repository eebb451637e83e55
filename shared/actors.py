"""Proven actors: what a service trusts about who is calling, and the check its sensitive
methods make themselves (SPEC §10).

The actor named in nameko context data (``actor_id`` / ``actor_type``) is a claim; it counts
only with the access token that travels beside it (context key ``access_token``, so the AMQP
header ``nameko.access_token``), verified here with the kernel's validator
(``shared.proof``) against auth's public keys, fetched over RPC and cached, the verified
token cached too.

Who carries which proof:
- a request through the gateway: the caller's access token; it travels on to every
  downstream RPC call of the same unit of work (nameko forwards the context data);
- work the service does on its own (event handlers, tasks, timers, saga steps, the
  bootstrap): the service's own short-lived token, issued by auth against the service's
  credential (``ServiceTokens``) and refreshed before it expires. Events, tasks and saga
  steps run later, after the caller's token may have expired, so they never carry it:
  the envelope's actor travels as a claim only, and a service token beside a claimed user is
  read as "the service, on behalf of that user" (``Proven.on_behalf_of``).

``guarded(permission)`` makes an RPC method check its proven actor before anything else: a
missing, forged, expired or revoked proof is ``Unauthorized``, a proven actor without the
permission (asked of authz) ``Forbidden``; the refusal is logged and written to the audit
trail as ``access.refused``, and nothing else changes. A service token passes only where
``shared.contracts.DELEGATIONS`` lets that service act for a user, and only when that user
holds the permission: a compromised service can then do no more than its delegations, on
behalf of someone who could do it.

Tokens never reach logs, spans, events' payloads or outbox rows: only the keys named here are
ever copied out of context data, and ``access_token`` is not one of them.
"""

import functools
import inspect
import logging
import os
import threading
import time
import uuid
import weakref

from nameko.extensions import DependencyProvider, SharedExtension
from nameko.rpc import Rpc
from nameko.web.handlers import HttpRequestHandler

from shared import config as cfg
from shared.context import ACTOR_ID_KEY, ACTOR_TYPE_KEY, Actor, actor_from, bind
from shared.contracts import DELEGATIONS
from shared.errors import Forbidden, PlinthError, Unauthorized, Unavailable
from shared.proof import Jwks, TokenValidator, development_service_secret
from shared.rpc_client import RpcClient

__all__ = ["TOKEN_KEY", "PROOF_KEY", "CREDENTIAL_KEY", "Proof", "Proven", "ServiceTokens",
           "guarded", "REFUSED_EVENT"]

log = logging.getLogger(__name__)

TOKEN_KEY = "access_token"  # in nameko context data: the header nameko.access_token
PROOF_KEY = "ACTOR_PROOF"  # "enforce" (default) or "off"
CREDENTIAL_KEY = "SERVICE_CREDENTIAL"
ISSUER_KEY, AUDIENCE_KEY = "AUTH_ISSUER", "AUTH_AUDIENCE"
ALGORITHMS_KEY, LEEWAY_KEY = "PROOF_JWT_ALGORITHMS", "PROOF_JWT_LEEWAY"
TIMEOUT_KEY = "PROOF_RPC_TIMEOUT"
REFUSED_EVENT = "access.refused"
FAILED_FETCH_PAUSE = 2.0  # seconds before a failed service-token fetch is tried again


def _enforced(config):
    value = str(cfg.setting(config, PROOF_KEY, "enforce")).strip().lower()
    if value not in ("enforce", "off"):
        raise cfg.ConfigError(f"{PROOF_KEY} must be enforce or off, not {value!r}")
    return value == "enforce"


# what the kernel calls for the proofs (deploy/broker_users.py derives the broker permissions
# of every service from ``Proof.rpc_calls``)
KERNEL_CALLS = {"auth": frozenset({"jwks", "issue_service_token", "session_active"}),
                "authz": frozenset({"check"})}


class ServiceTokens(SharedExtension):
    """The container's RPC client for proof work, and its own service token.

    ``token()`` is the current token, fetched from ``auth.issue_service_token`` with the
    service's credential when there is none or it has used two thirds of its life; a failed
    fetch is retried at the next need after ``FAILED_FETCH_PAUSE`` seconds, so an unreachable
    auth costs one fast failure, not one per worker."""

    def setup(self):
        config = self.container.config
        self.enforced = _enforced(config)
        self.timeout = cfg.setting(config, TIMEOUT_KEY, 3.0, float)
        self.credential = cfg.setting(config, CREDENTIAL_KEY) or None
        if self.credential is None and not cfg.is_production(config):
            self.credential = development_service_secret(self.container.service_name)
        elif self.enforced and cfg.is_production(config):
            problem = cfg.secret_problem(self.credential or "")
            if problem:
                raise cfg.ConfigError(f"{CREDENTIAL_KEY} {problem}")
        self._client = None
        self._token, self._renew_at, self._failed_at = None, 0.0, None
        self._lock = threading.Lock()  # one token fetch at a time
        self._client_lock = threading.Lock()

    @property
    def client(self):
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    service = self.container.service_name
                    # its broker user may read only reply queues named after the service
                    name = f"rpc.reply-{service}-proof-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                    self._client = RpcClient(self.container.config[cfg.AMQP_URI_KEY],
                                             timeout=self.timeout, name=name).start()
        return self._client

    def call(self, target, method, **kwargs):
        """``target.method(**kwargs)`` with no context: a read the kernel makes itself. The
        client's own kinds of Unavailable (not running, timeout, broker) become the plain
        one, which every caller of the service can deserialise."""
        try:
            return self.client.call(target, method, kwargs=kwargs, timeout=self.timeout,
                                    context={})
        except Unavailable as exc:
            raise Unavailable(f"{target} cannot answer now ({type(exc).__name__}); try again",
                              {"service": target}) from None

    def token(self):
        """The service's current token, or None when auth cannot give one now."""
        now = time.monotonic()
        if self._token is not None and now < self._renew_at:
            return self._token
        if self.credential is None or (self._failed_at is not None and
                                       now - self._failed_at < FAILED_FETCH_PAUSE):
            return self._token if now < self._renew_at else None
        with self._lock:
            if self._token is not None and time.monotonic() < self._renew_at:
                return self._token
            try:
                issued = self.call("auth", "issue_service_token",
                                   service=self.container.service_name, secret=self.credential)
            except PlinthError as exc:
                self._failed_at = time.monotonic()
                log.warning("no service token from auth: %s", type(exc).__name__)
                return None
            self._failed_at = None
            self._token = issued["access_token"]
            self._renew_at = time.monotonic() + issued["expires_in"] * 2 / 3
            return self._token

    def stop(self):
        if self._client is not None:
            self._client.close()
            self._client = None


class Proven:
    """One worker's proof: who its token proves (``principal()``), and ``require``."""

    def __init__(self, provider, context_data):
        self._provider = provider
        self.context_data = context_data
        self._result = None

    @property
    def enforced(self):
        return self._provider.enforced

    @property
    def claimed(self):
        return actor_from(self.context_data)

    def principal(self):
        """The proven Principal; Unauthorized when the proof is missing or not valid."""
        if self._result is None:
            self._result = self._provider.verify(self.context_data.get(TOKEN_KEY))
        if isinstance(self._result, PlinthError):
            raise self._result
        return self._result

    @property
    def on_behalf_of(self):
        """The user a service token acts for: the claimed actor, when it is a user."""
        principal = self.principal()
        claimed = self.claimed
        if principal.type == "service" and claimed.type == "user" and claimed.id:
            return claimed.id
        return None

    def require(self, permission, scope=None):
        """The proven principal, when it may do ``permission``; else Unauthorized/Forbidden."""
        principal = self.principal()
        self._provider.ensure_active(principal)
        user = principal.id
        if principal.type == "service":
            user = self.on_behalf_of
            if user is None or permission not in DELEGATIONS.get(principal.id, ()):
                raise Forbidden(f"the service {principal.id} may not do {permission}",
                                {"permission": permission})
        if not self._provider.allows(user, permission, scope):
            raise Forbidden(f"this needs the permission {permission}",
                            {"permission": permission})
        return principal


class Proof(DependencyProvider):
    """Verifies each worker's proof (``self.proof`` in every service, from ServiceBase).

    RPC workers keep the caller's token; a worker of the service's own (event handler, task,
    timer) gets the service's token in its context data, so its downstream calls carry it.
    Verification happens when a worker starts: a token seen before is a cache hit.
    """

    tokens = ServiceTokens()
    rpc_calls = KERNEL_CALLS  # read by deploy/broker_users.py

    def setup(self):
        config = self.container.config
        self.enforced = _enforced(config)
        algorithms = cfg.list_setting(config, ALGORITHMS_KEY, ("RS256", "ES256", "EdDSA"))
        self.jwks = Jwks(self._fetch_jwks, algorithms)
        self.validator = TokenValidator(
            self.jwks, cfg.setting(config, ISSUER_KEY, "plinth"),
            cfg.setting(config, AUDIENCE_KEY, "plinth-api"),
            leeway=cfg.setting(config, LEEWAY_KEY, 30, int), algorithms=algorithms,
            accept_services=True)
        self._proofs = weakref.WeakKeyDictionary()

    def _fetch_jwks(self):
        return self.tokens.call("auth", "jwks")

    def verify(self, token):
        """The Principal a token proves, or the Unauthorized/Unavailable error (returned)."""
        if not token:
            return Unauthorized("no proof of the actor: an access token is required",
                                {"reason": "missing"})
        try:
            return self.validator.validate(token)
        except PlinthError as exc:
            return exc

    def ensure_active(self, principal):
        """Unauthorized when the user's session has ended (logout, password change...)."""
        if principal.session_id is None:
            return
        if not self.tokens.call("auth", "session_active", session_id=principal.session_id):
            raise Unauthorized("invalid access token: the session has ended",
                               {"reason": "revoked"})

    def allows(self, user_id, permission, scope=None):
        return self.tokens.call("authz", "check", user_id=user_id, permission=permission,
                                scope=scope) is True

    def worker_setup(self, worker_ctx):
        if not self.enforced:
            return
        try:
            self._prove(worker_ctx)
        except Exception:  # logged: an error here would kill the container
            log.exception("could not establish the proof of a worker")

    def _prove(self, worker_ctx):
        entrypoint = worker_ctx.entrypoint
        data = worker_ctx.context_data
        if not isinstance(entrypoint, Rpc | HttpRequestHandler) and not data.get(TOKEN_KEY):
            token = self.tokens.token()  # work of the service's own: its own proof
            if token is not None:
                data[TOKEN_KEY] = token
        if isinstance(entrypoint, HttpRequestHandler) or not data.get(TOKEN_KEY):
            return
        proven = self._proofs[worker_ctx] = Proven(self, data)
        try:
            principal = proven.principal()
        except PlinthError:
            return  # unproven: the claim stays a claim; guarded methods refuse it
        if principal.type == "user" and (data.get(ACTOR_ID_KEY), data.get(ACTOR_TYPE_KEY)) \
                != (principal.id, "user"):  # the proof names the actor, whatever the claim
            data[ACTOR_ID_KEY], data[ACTOR_TYPE_KEY] = principal.id, "user"
            bind(data)

    def get_dependency(self, worker_ctx):
        proven = self._proofs.get(worker_ctx)
        if proven is None:
            proven = self._proofs[worker_ctx] = Proven(self, worker_ctx.context_data)
        return proven

    def worker_teardown(self, worker_ctx):
        self._proofs.pop(worker_ctx, None)


def guarded(permission, own=None, scope=None, authz_down_defers=False):
    """Decorate a service's RPC method (below ``@rpc``) so that it runs only for a proven
    actor holding ``permission`` (a string, or a tuple of them all needed).

    ``own=(argument, own_permission)``: when the proven user is the one the ``argument``
    names (their own account), ``own_permission`` is what they need instead (None: a valid
    proof is enough). ``scope``: the argument holding the scope the permission is asked in.
    ``authz_down_defers``: when authz cannot be asked, a valid, live proof is enough for now,
    because each privileged effect of the method is checked again later by its owner (the
    provisioning saga's role assignments by authz, for the same actor); otherwise the call
    is ``Unavailable``.
    """
    own_arg, own_permission = own if own is not None else (None, None)

    def decorate(method):
        signature = inspect.signature(method)

        @functools.wraps(method)
        def checked(self, *args, **kwargs):
            proven = self.proof
            if not proven.enforced:
                return method(self, *args, **kwargs)
            try:
                bound = signature.bind(self, *args, **kwargs)
            except TypeError:
                return method(self, *args, **kwargs)  # nameko answers the bad call
            values = bound.arguments
            try:
                needed = permission
                principal = proven.principal()
                if own_arg is not None and principal.type == "user" and \
                        str(values.get(own_arg)) == principal.id:
                    needed = own_permission
                if needed is None:
                    proven._provider.ensure_active(principal)
                for each in (needed,) if isinstance(needed, str) else needed or ():
                    proven.require(each, values.get(scope) if scope else None)
            except (Unauthorized, Forbidden) as refusal:
                _refused(self, method.__name__, needed, refusal)
                raise
            except Unavailable as exc:
                if not (authz_down_defers and exc.details.get("service") == "authz"):
                    raise
                log.warning("%s.%s: authz cannot answer; its later steps are checked by "
                            "their owners", self.name, method.__name__)
            return method(self, *args, **kwargs)

        checked.guarded_permission = permission
        return checked

    return decorate


def _refused(service, method, permission, refusal):
    """Log and audit a refusal (the claimed actor, never the token)."""
    claimed = actor_from(service.proof.context_data)
    name = f"{service.name}.{method}"
    reason = refusal.details.get("reason") or ("permission" if isinstance(refusal, Forbidden)
                                               else "unauthorized")
    log.warning("refused %s: %s (%s)", name, type(refusal).__name__, reason,
                extra={"event": "access_refused", "method": name, "reason": reason,
                       "permission": permission, "claimed_actor": claimed.to_dict()})
    db = getattr(service, "db", None)
    if db is None:
        return
    try:
        db.rollback()
        db.emit(REFUSED_EVENT, name, {"method": name, "permission": permission,
                                      "outcome": type(refusal).__name__, "reason": reason,
                                      "claimed_actor": claimed.to_dict()},
                actor=claimed if claimed.id else Actor(None, "system"))
        db.commit()
    except Exception as exc:  # noqa: BLE001 - the refusal stands even if its record is lost
        log.error("could not record the refusal of %s: %s", name, type(exc).__name__)
