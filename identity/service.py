from nameko.dependency_providers import Config

from identity import provisioning, schemas, users
from identity.dependencies import Passwords
from identity.models import Base
from shared import service as kernel  # not imported by name: nameko would take it for a service
from shared.actors import guarded
from shared.config import setting
from shared.db import Database
from shared.errors import NotFound
from shared.retention import Retention, retention_every
from shared.rpc import ServiceRpc, call_service, load, rpc, rpc_input, rpc_timeout
from shared.sagas import Sagas
from shared.tasks import task

# seconds provision_user waits for its saga before answering "accepted, still running"
PROVISIONING_WAIT_KEY = "PROVISIONING_WAIT"
SENSITIVE = ("password", "old_password", "new_password", "data")


class IdentityService(kernel.ServiceBase):
    name = "identity"

    config = Config()
    db = Database(Base.metadata)
    passwords = Passwords()
    authz_rpc = ServiceRpc("authz", calls=("global_admins",))
    sagas = Sagas(provisioning.PROVISION_USER)
    retention = Retention()

    @task("identity.retention.purge", every=retention_every())
    def purge_retention(self, task):
        self.retention.purge(self.db)

    @rpc(sensitive_arguments=SENSITIVE)
    def create_user(self, data=None, **fields):
        payload = load(schemas.CreateUserSchema(), rpc_input(data, fields))
        return users.to_dict(users.create(self.db, self.passwords, payload))

    @rpc
    def get_user(self, user_id):
        return users.to_dict(users.read(self.db, user_id))

    @rpc
    def get_user_by_email(self, email):
        user = users.by_email(self.db, email)
        if user is None or user.status == "deleted":
            raise NotFound("no user with that email", {"email": ["not found"]})
        return users.to_dict(user)

    @rpc
    def list_users(self, filters=None, **fields):
        return users.page(self.db, load(schemas.ListUsersSchema(), rpc_input(filters, fields)))

    @rpc
    @guarded("users:write", own=("user_id", "profile:write"))
    def update_user(self, user_id, changes=None, **fields):
        users.check_id(user_id)
        payload = load(schemas.UpdateUserSchema(), rpc_input(changes, fields))
        return users.to_dict(users.update(self.db, user_id, payload))

    @rpc(sensitive_arguments=SENSITIVE)
    def change_password(self, user_id, old_password=None, new_password=None):
        users.check_id(user_id)
        payload = load(schemas.ChangePasswordSchema(),
                       {"old_password": old_password, "new_password": new_password})
        user = users.change_password(self.db, self.passwords, user_id, **payload)
        return users.to_dict(user)

    @rpc(sensitive_arguments=SENSITIVE)
    @guarded("users:write")
    def set_password(self, user_id, password=None):
        users.check_id(user_id)
        payload = load(schemas.SetPasswordSchema(), {"password": password})
        user = users.set_password(self.db, self.passwords, user_id, payload["password"],
                                  by="admin")
        return users.to_dict(user)

    @rpc
    @guarded("users:write")
    def disable_user(self, user_id):
        users.check_id(user_id)
        return users.to_dict(users.set_status(self.db, user_id, "disabled",
                                              admin_ids=self._global_admins()))

    @rpc
    @guarded("users:write")
    def enable_user(self, user_id):
        return users.to_dict(users.set_status(self.db, user_id, "active"))

    @rpc
    @guarded("users:write")
    def delete_user(self, user_id):
        users.check_id(user_id)
        return users.to_dict(users.delete(self.db, user_id, admin_ids=self._global_admins()))

    @rpc(sensitive_arguments=SENSITIVE)
    def verify_credentials(self, email=None, password=None):
        payload = load(schemas.CredentialsSchema(), {"email": email, "password": password})
        return users.to_dict(users.verify(self.db, self.passwords, **payload))

    @rpc(sensitive_arguments=SENSITIVE)
    # with authz down the saga still starts (SPEC §8: 202, it completes when authz returns):
    # the user it creates is what anyone may make by signing up, and authz checks each role
    # assignment for this same actor when it runs
    @guarded(("users:write", "roles:write"), authz_down_defers=True)
    def provision_user(self, data=None, **fields):
        """A user with roles, as a saga: the user and its roles when it completed in time,
        the failing step's error (with ``saga_id``) when it was compensated, else
        ``{accepted, saga_id, status}`` (it goes on by itself; ``get_saga`` follows it)."""
        payload = load(schemas.ProvisionUserSchema(), rpc_input(data, fields))
        saga_input = provisioning.prepare(self.db, self.passwords, payload)
        self.db.close()  # the saga runs in units of its own: give this connection back
        wait = setting(self.config, PROVISIONING_WAIT_KEY, 5.0, float)
        saga = self.sagas.start(provisioning.PROVISION_USER.name, saga_input, wait=wait)
        return provisioning.answer(saga)

    @rpc
    def get_saga(self, saga_id):
        payload = load(schemas.SagaIdSchema(), {"saga_id": saga_id})
        return self.sagas.get(str(payload["saga_id"]))

    def _global_admins(self):
        """Who holds ``admin`` globally, from authz (identity knows no roles). When authz does
        not answer, the change waits: Unavailable, rather than a guess that could remove the
        last administrator."""
        return call_service("authz", self.authz_rpc.global_admins,
                            timeout=rpc_timeout(self.config, "authz"))
