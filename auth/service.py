import functools
import logging
from datetime import timedelta

from nameko.dependency_providers import Config
from nameko.timer import timer

from auth import credentials, keys, logins, schemas, sessions, throttle
from auth.dependencies import Guard, TokenKeys
from auth.models import Base
from shared import config as cfg
from shared import service as kernel  # not imported by name: nameko would take it for a service
from shared.actors import guarded
from shared.db import Database
from shared.errors import Conflict, Unauthorized
from shared.events import event_handler
from shared.retention import Retention, retention_every
from shared.rpc import ServiceRpc, call_service, load, rpc
from shared.tasks import task

log = logging.getLogger(__name__)

MAINTENANCE_INTERVAL = 300
# days an expired session (and its refresh tokens) is kept: longer than an access token lives
SESSION_RETENTION_KEY = "AUTH_SESSION_RETENTION_DAYS"
KEY_ROTATED = "signing_key.rotated"
# built once: a schema's construction costs more than a load, and loads share no state
LOGIN, REFRESH_TOKEN, ACCESS_TOKEN = (schemas.LoginSchema(), schemas.RefreshTokenSchema(),
                                      schemas.AccessTokenSchema())
USER_ID, END_SESSION = schemas.UserIdSchema(), schemas.EndSessionSchema()
SESSION_ID = schemas.SessionIdSchema()


class AuthService(kernel.ServiceBase):
    name = "auth"

    config = Config()
    db = Database(Base.metadata)
    tokens = TokenKeys()
    guard = Guard()
    retention = Retention(sessions=(SESSION_RETENTION_KEY, 1))
    identity_rpc = ServiceRpc("identity", calls=("verify_credentials", "get_user"))

    def _identity(self, method):
        return functools.partial(call_service, "identity", getattr(self.identity_rpc, method),
                                 timeout=self.guard.identity_timeout)

    @rpc(sensitive_arguments=("password",))
    def login(self, email=None, password=None, client=None):
        data = {"email": email, "password": password}
        if client is not None:
            data["client"] = client
        payload = load(LOGIN, data)
        return logins.login(self.db, self.tokens, self.guard,
                            self._identity("verify_credentials"), **payload)

    @rpc(sensitive_arguments=("refresh_token",))
    def refresh(self, refresh_token=None):
        payload = load(REFRESH_TOKEN, {"refresh_token": refresh_token})
        return logins.refresh(self.db, self.tokens, self.guard, self._identity("get_user"),
                              payload["refresh_token"])

    @rpc(sensitive_arguments=("refresh_token",))
    def logout(self, refresh_token=None):
        payload = load(REFRESH_TOKEN, {"refresh_token": refresh_token})
        return {"revoked": sessions.logout(self.db, payload["refresh_token"])}

    @rpc
    @guarded("sessions:write", own=("user_id", None))
    def end_session(self, session_id=None, user_id=None):
        payload = load(END_SESSION, {"session_id": session_id, "user_id": user_id})
        return {"revoked": sessions.end(self.db, **payload)}

    @rpc
    @guarded("sessions:write", own=("user_id", None))
    def logout_all(self, user_id=None):
        payload = load(USER_ID, {"user_id": user_id})
        revoked = sessions.revoke_all(self.db, payload["user_id"], "logout_all")
        self.db.commit()
        return {"revoked": revoked}

    @rpc
    def sessions_of(self, user_id=None):
        payload = load(USER_ID, {"user_id": user_id})
        return sessions.active_of(self.db, payload["user_id"])

    @rpc
    def revoked_sessions(self):
        """Sessions revoked while access tokens they were issued may still be valid: the
        gateway refuses those tokens (it also hears each session.revoked event)."""
        settings = self.tokens.settings
        window = settings.access_ttl + settings.leeway
        since = sessions.now_utc() - timedelta(seconds=window)
        return {"session_ids": sessions.revoked_since(self.db, since), "window": window}

    @rpc(sensitive_arguments=("access_token",))
    def verify_token(self, access_token=None):
        payload = load(ACCESS_TOKEN, {"access_token": access_token})
        return self.tokens.verify(payload["access_token"])

    @rpc
    def session_active(self, session_id=None):
        """Is this session (an access token's ``sid``) still live? Services ask before a
        sensitive method trusts a user's token."""
        payload = load(SESSION_ID, {"session_id": session_id})
        return sessions.is_active(self.db, payload["session_id"])

    @rpc(sensitive_arguments=("secret",))
    def issue_service_token(self, service=None, secret=None):
        """A short-lived token proving ``service``, for its credential (auth.credentials)."""
        development = not cfg.is_production(self.config)
        if not credentials.valid(self.db.session, service, secret, development=development):
            log.warning("refused a service token", extra={"service": str(service)[:64]})
            raise Unauthorized("invalid service credential", {"reason": "credential"})
        return self.tokens.issue_service(service)

    @rpc
    def jwks(self):
        return self.tokens.jwks()

    @rpc
    @guarded("keys:write")
    def rotate_keys(self):
        return self._rotate("manual")

    def _rotate(self, reason):
        row, previous = self.tokens.rotate(self.db.session)
        self.db.emit(KEY_ROTATED, row.kid, {"kid": row.kid, "alg": row.alg,
                                            "previous_kid": previous, "reason": reason})
        self.db.commit()
        self.tokens.keyring.forget()
        log.info("signing key rotated", extra={"kid": row.kid, "previous_kid": previous})
        return {"kid": row.kid, "alg": row.alg, "previous_kid": previous}

    @event_handler("identity", "user.password_changed")
    def on_password_changed(self, payload):
        self._revoke_all_for(payload, "password_changed")

    @event_handler("identity", "user.disabled")
    def on_user_disabled(self, payload):
        self._revoke_all_for(payload, "user_disabled")

    @event_handler("identity", "user.deleted")
    def on_user_deleted(self, payload):
        self._revoke_all_for(payload, "user_deleted")

    def _revoke_all_for(self, payload, reason):
        """None of the user's sessions may outlive these identity events (idempotent)."""
        if not self.db.claim(payload):
            return
        count = sessions.revoke_all(self.db, payload["subject"], reason)
        self.db.commit()
        log.info("revoked %d session(s) after %s", count, payload["event_type"],
                 extra={"user_id": payload["subject"]})

    @task("auth.retention.purge", every=retention_every())
    def purge_retention(self, task):
        """The kernel's retention, and the sessions expired more than a day ago (configurable)."""
        keep = self.retention.age("sessions")
        self.retention.purge(self.db, also={
            "sessions": lambda session, now: sessions.prune(session, now, keep)})

    @timer(interval=MAINTENANCE_INTERVAL)
    def maintenance(self):
        """Forget what has expired, and rotate the signing key when it reaches its age."""
        stamp = sessions.now_utc()
        session = self.db.session
        pruned = (throttle.prune(session, stamp, self.guard.policy), keys.prune(session, stamp))
        self.db.commit()
        if any(pruned):
            log.info("pruned %d throttle counters, %d retired keys", *pruned)
        max_age = self.tokens.key_max_age_days
        active = keys.active_row(session)
        if max_age and active is not None and stamp - active.created_at > timedelta(days=max_age):
            try:
                self._rotate("scheduled")
            except Conflict:
                pass  # another instance rotated at the same moment
