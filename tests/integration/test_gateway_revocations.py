"""Ended sessions at the gateway, against the real auth, identity and authz on RabbitMQ and
PostgreSQL: a gateway that cannot read auth's list of ended sessions is not ready and takes
no token on trust (a listener on a dead connection: tests/integration/test_gateway_events.py)."""

import pytest

from authz.service import AuthzService
from identity.service import IdentityService
from tests.support.auth_helpers import start_auth
from tests.support.gateway_helpers import (
    API,
    bearer,
    close_app,
    make_app,
    user_with_token,
    wait_until,
)

CONTEXT = {"request_id": "gw-revocations", "actor_type": "system"}


@pytest.fixture
def apps(amqp_uri):
    made = []

    def make(**config):
        app = make_app(amqp_uri, **config)
        made.append(app)
        return app.test_client()

    yield make
    for app in made:
        close_app(app)


def me(client, pair):
    return client.get(f"{API}/users/me", headers=bearer(pair["access_token"]))


def log_out(rpc, pair):
    assert rpc.call("auth", "logout", kwargs={"refresh_token": pair["refresh_token"]},
                    context=CONTEXT) == {"revoked": True}


def ready(client):
    return client.get("/health/ready")


def test_a_gateway_started_while_auth_is_down_is_not_ready_until_it_knows_the_ended_sessions(
        start_service, apps, rpc):
    start_service(IdentityService)
    start_service(AuthzService)
    auth = start_auth(start_service)
    # tokens from a gateway of their own: one of a session that ends before ours starts
    first = apps()
    _, ended = user_with_token(first)
    _, live = user_with_token(first)
    log_out(rpc, ended)
    auth.stop()

    client = apps()
    refused = ready(client)
    assert refused.status_code == 503
    assert refused.get_json()["checks"]["revocations"]["status"] == "down"
    assert me(client, live).status_code == 503  # no token is taken on trust
    start_auth(start_service)
    # the moment the gateway says ready, it knows the session ended before it started
    wait_until(lambda: ready(client).status_code == 200, timeout=15, interval=0.02,
               what="the gateway to be ready")
    refused = me(client, ended)
    assert refused.status_code == 401, refused.get_json()
    assert refused.get_json()["reason"] == "revoked"
    assert me(client, live).status_code == 200
