import logging

from nameko.dependency_providers import Config

from authz import assignments, effective, roles, schemas
from authz.bootstrap import BootstrapAdmin
from authz.models import Base
from shared import service as kernel  # not imported by name: nameko would take it for a service
from shared.actors import guarded
from shared.db import Database
from shared.errors import NotFound
from shared.events import event_handler
from shared.ids import is_uuid
from shared.retention import Retention, retention_every
from shared.rpc import ServiceRpc, call_service, load, rpc, rpc_input, rpc_timeout
from shared.tasks import task

log = logging.getLogger(__name__)


def _as_list(value):
    return [value] if isinstance(value, str) else value


class AuthzService(kernel.ServiceBase):
    name = "authz"

    config = Config()
    db = Database(Base.metadata)
    identity_rpc = ServiceRpc("identity", calls=("get_user",))
    bootstrap_admin = BootstrapAdmin()
    retention = Retention()

    @task("authz.retention.purge", every=retention_every())
    def purge_retention(self, task):
        self.retention.purge(self.db)

    # -- roles --------------------------------------------------------------------------------
    @rpc
    @guarded("roles:write")
    def create_role(self, data=None, **fields):
        return roles.create(self.db, load(schemas.CreateRoleSchema(), rpc_input(data, fields)))

    @rpc
    @guarded("roles:write")
    def update_role(self, name, changes=None, **fields):
        name = load(schemas.RoleNameSchema(), {"role": name})["role"]
        payload = load(schemas.UpdateRoleSchema(), rpc_input(changes, fields))
        return roles.update(self.db, name, payload)

    @rpc
    @guarded("roles:write")
    def delete_role(self, name):
        return roles.delete(self.db, load(schemas.RoleNameSchema(), {"role": name})["role"])

    @rpc
    def get_role(self, name):
        return roles.describe(self.db, load(schemas.RoleNameSchema(), {"role": name})["role"])

    @rpc
    def list_roles(self):
        return roles.list_all(self.db)

    @rpc
    @guarded("roles:write")
    def grant(self, role, permissions=None):
        payload = load(schemas.GrantSchema(), {"role": role, "permissions": _as_list(permissions)})
        return roles.grant(self.db, payload["role"], payload["permissions"])

    @rpc
    @guarded("roles:write")
    def revoke(self, role, permissions=None):
        payload = load(schemas.GrantSchema(), {"role": role, "permissions": _as_list(permissions)})
        return roles.revoke(self.db, payload["role"], payload["permissions"])

    # -- assignments --------------------------------------------------------------------------
    @rpc
    @guarded("roles:write")
    def assign_role(self, user_id, role, scope=None):
        payload = load(schemas.AssignmentSchema(),
                       {"user_id": user_id, "role": role, "scope": scope})
        self._require_user(payload["user_id"])
        assignment, created = assignments.assign(self.db, **payload)
        return {**assignment, "created": created}

    @rpc
    @guarded("roles:write")
    def unassign_role(self, user_id, role, scope=None):
        payload = load(schemas.AssignmentSchema(),
                       {"user_id": user_id, "role": role, "scope": scope})
        removed = assignments.unassign(self.db, **payload, is_active=self._is_active)
        return {**payload, "removed": removed}

    @rpc
    def global_admins(self):
        """Ids of the users holding ``admin`` globally (identity asks before it disables or
        deletes a user, so that the last active administrator stays)."""
        return assignments.global_admins(self.db)

    @rpc
    def roles_of(self, user_id):
        payload = load(schemas.UserSchema(), {"user_id": user_id})
        return assignments.roles_of(self.db, payload["user_id"])

    # -- evaluation ---------------------------------------------------------------------------
    @rpc
    def permissions_of(self, user_id, scope=None):
        payload = load(schemas.UserScopeSchema(), {"user_id": user_id, "scope": scope})
        grants = effective.read(self.db.session, payload["user_id"], payload["scope"])
        return sorted(grants.in_scope(payload["scope"]))

    @rpc
    def effective_permissions(self, user_id):
        """Every scope at once, in the shape ``permissions.Grants.from_dict`` takes (for the
        gateway's cache)."""
        payload = load(schemas.UserSchema(), {"user_id": user_id})
        grants = effective.read(self.db.session, payload["user_id"], every_scope=True)
        return {"user_id": payload["user_id"], **grants.to_dict()}

    @rpc
    def check(self, user_id, permission, scope=None):
        payload = load(schemas.CheckSchema(),
                       {"user_id": user_id, "permission": permission, "scope": scope})
        grants = effective.read(self.db.session, payload["user_id"], payload["scope"])
        return grants.allows(payload["permission"], payload["scope"])

    # -- identity's events --------------------------------------------------------------------
    @event_handler("identity", "user.created")
    def on_user_created(self, payload):
        user_id = self._subject(payload)
        if user_id is None or not self.db.claim(payload):
            return
        assignments.on_user_created(self.db, user_id)

    @event_handler("identity", "user.deleted")
    def on_user_deleted(self, payload):
        user_id = self._subject(payload)
        if user_id is None or not self.db.claim(payload):
            return
        assignments.on_user_deleted(self.db, user_id)

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _subject(payload):
        subject = payload.get("subject") if isinstance(payload, dict) else None
        if not is_uuid(subject):
            log.error("ignoring an identity event without a user id as subject: %r",
                      (payload or {}).get("event_id") if isinstance(payload, dict) else None)
            return None
        return subject

    def _get_user(self, user_id):
        return call_service("identity", self.identity_rpc.get_user, user_id,
                            timeout=rpc_timeout(self.config, "identity"))

    def _require_user(self, user_id):
        """identity's NotFound when the user does not exist (or was deleted)."""
        self._get_user(user_id)

    def _is_active(self, user_id):
        """Whether identity counts the user as active (Unavailable when it cannot say)."""
        try:
            return self._get_user(user_id).get("status") == "active"
        except NotFound:
            return False
