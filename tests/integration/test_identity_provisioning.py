"""The provisioning saga (identity orchestrates, authz assigns) over the real broker and
PostgreSQL: success, an unknown role compensated, a compensation refused (failed, stuck)."""

import uuid

import pytest
import requests

from authz.service import AuthzService
from identity.provisioning import PROVISION_USER
from identity.service import IdentityService
from shared.errors import Conflict, Invalid, NotFound
from shared.rpc import rpc as rpc_method
from shared.sagas import LocalAction, RpcAction, Saga, Sagas, Step
from tests.helpers import STRONG_PASSWORD, new_email
from tests.support.authz_helpers import new_role_name, wait_until
from tests.support.events import EventTap

CONTEXT = {"request_id": "req-saga-it", "actor_type": "user", "actor_id": "admin-1"}


def _noop(uow, saga, key):
    return {"key": key}


# a saga whose compensation authz refuses (an invalid user id): the saga ends "failed"
BROKEN = Saga("broken_compensation", steps=[
    Step("first", LocalAction(_noop),
         compensation=RpcAction("authz", "unassign_role",
                                args=lambda saga: {"user_id": "not-a-uuid", "role": "user"})),
    Step("second", RpcAction("authz", "assign_role",
                             args=lambda saga: {"user_id": str(uuid.uuid4()),
                                                "role": "no-such-role"})),
])


class IdentityWithBrokenSaga(IdentityService):
    sagas = Sagas(PROVISION_USER, BROKEN)

    @rpc_method
    def start_broken(self):
        return self.sagas.start(BROKEN.name, {}, wait=10)


@pytest.fixture
def services(start_service):
    identity = start_service(IdentityService, SAGA_POLL_INTERVAL=0.2)
    start_service(AuthzService)
    return identity


def call(rpc, method, *args, **kwargs):
    return rpc.call("identity", method, args=args, kwargs=kwargs, context=CONTEXT, timeout=20)


def provision(rpc, **fields):
    data = {"email": new_email("prov"), "password": STRONG_PASSWORD, "display_name": "Prov"}
    return call(rpc, "provision_user", data={**data, **fields})


def test_provisioning_creates_the_user_and_assigns_every_role(services, rpc, amqp_uri):
    tap = EventTap(amqp_uri, "identity", routing_key="saga.*")
    role = new_role_name()
    rpc.call("authz", "create_role", kwargs={"data": {"name": role, "permissions": ["x:read"]}})
    user = provision(rpc, roles=[role], scoped_roles=[{"role": role, "scope": "billing"}])
    assert user["email"].startswith("prov-") and user["status"] == "active"
    assert user["roles"] == [{"role": role, "scope": None}, {"role": role, "scope": "billing"}]
    held = {(a["role"], a["scope"]) for a in rpc.call("authz", "roles_of", args=[user["id"]])}
    assert {(role, None), (role, "billing")} <= held
    saga = call(rpc, "get_saga", user["saga_id"])
    assert saga["status"] == "completed" and saga["name"] == "provision_user"
    assert "password_hash" not in saga["input"] and STRONG_PASSWORD not in str(saga)
    events = tap.wait_for(2, timeout=10)
    assert [e["event_type"] for e in events] == ["saga.started", "saga.completed"]
    assert all(e["subject"] == user["saga_id"] for e in events)
    assert "argon2" not in str(events) and STRONG_PASSWORD not in str(events)
    tap.close()


def test_an_unknown_role_compensates_and_frees_the_email(services, rpc, amqp_uri):
    tap = EventTap(amqp_uri, "identity", routing_key="saga.*")
    role = new_role_name()
    rpc.call("authz", "create_role", kwargs={"data": {"name": role, "permissions": ["x:read"]}})
    email = new_email("prov")
    with pytest.raises(NotFound) as refused:
        provision(rpc, email=email, roles=[role, "no-such-role"])
    details = refused.value.details
    assert details["role"] == "no-such-role" and details["saga_status"] == "compensated"
    saga = call(rpc, "get_saga", details["saga_id"])
    assert saga["status"] == "compensated" and saga["error"]["step"] == "assign_roles"
    user_id = saga["results"]["create_user"]["id"]
    with pytest.raises(NotFound):
        call(rpc, "get_user_by_email", email)
    wait_until(lambda: rpc.call("authz", "roles_of", args=[user_id]) == [], timeout=10)
    again = call(rpc, "create_user", email=email, password=STRONG_PASSWORD)
    assert again["email"] == email
    events = tap.wait_for(2, timeout=10)
    assert [e["event_type"] for e in events] == ["saga.started", "saga.compensated"]
    tap.close()


def test_bad_input_and_a_taken_email_start_no_saga(services, rpc):
    with pytest.raises(Invalid) as bad:
        provision(rpc, roles=["Not A Role"])
    assert "roles" in bad.value.details
    taken = new_email("taken")
    call(rpc, "create_user", email=taken, password=STRONG_PASSWORD)
    with pytest.raises(Conflict):
        provision(rpc, email=taken)
    with pytest.raises(Invalid):
        call(rpc, "get_saga", "not-a-uuid")
    with pytest.raises(NotFound):
        call(rpc, "get_saga", str(uuid.uuid4()))


def test_a_refused_compensation_fails_the_saga_and_shows_it_as_stuck(start_service, rpc):
    identity = start_service(IdentityWithBrokenSaga, SAGA_POLL_INTERVAL=0.2)
    start_service(AuthzService)
    saga = call(rpc, "start_broken")
    assert saga["status"] == "failed"
    assert saga["error"]["step"] == "first" and saga["error"]["kind"] == "invalid"
    address = identity.config["WEB_SERVER_ADDRESS"]
    body = requests.get(f"http://{address}/health/ready", timeout=5).json()
    assert saga["id"] in [s["id"] for s in body["sagas"]["stuck_sagas"]]
