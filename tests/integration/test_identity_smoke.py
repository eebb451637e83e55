from identity.service import IdentityService
from tests.helpers import STRONG_PASSWORD, new_email
from tests.support.events import EventTap


def test_created_user_can_be_read_back_and_announced(start_service, rpc, amqp_uri):
    start_service(IdentityService)
    tap = EventTap(amqp_uri, "identity")
    email = new_email()
    user = rpc.call("identity", "create_user",
                    kwargs={"email": email, "password": STRONG_PASSWORD},
                    context={"request_id": "req-smoke-1", "actor_type": "user",
                             "actor_id": "someone"})
    assert rpc.call("identity", "get_user", [user["id"]])["email"] == email
    [event] = tap.wait_for(1, event_type="user.created")
    assert event["subject"] == user["id"]
    assert event["request_id"] == "req-smoke-1"
    assert event["actor"] == {"id": "someone", "type": "user"}
    assert "password" not in str(event)
    tap.close()
