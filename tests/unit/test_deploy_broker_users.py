"""deploy/broker_users.py: each process's broker permissions, derived from the code."""

import re
import uuid

import pytest

from deploy import broker_users
from gateway.app import SYSTEM_CALLS
from gateway.routes import load_routes
from shared.calls import UndeclaredCall
from shared.rpc import ServiceRpc
from shared.senders import Senders


@pytest.fixture(scope="module")
def identities():
    return {i.name: i for i in broker_users.derive(["identity", "auth", "authz", "audit"],
                                                   routes_dir=None, prefix="p-")}


def _matches(pattern, name):
    return re.fullmatch(pattern, name) is not None


def test_a_service_may_publish_only_the_calls_it_declares(identities):
    write = identities["auth"].topics["nameko-rpc"]["write"]
    assert _matches(write, "identity.verify_credentials") and _matches(write, "identity.get_user")
    for forbidden in ("authz.assign_role", "identity.set_password", "identity.get_user.x",
                      "identity.*", "identity.#"):
        assert not _matches(write, forbidden), forbidden
    assert _matches(write, str(uuid.uuid4()))  # a reply to a nameko caller


def test_the_sagas_and_the_bootstrap_calls_are_derived_too(identities):
    identity_calls = identities["identity"].topics["nameko-rpc"]["write"]
    assert _matches(identity_calls, "authz.assign_role")  # the provisioning saga
    assert _matches(identity_calls, "authz.unassign_role")  # its compensation
    authz_calls = identities["authz"].topics["nameko-rpc"]["write"]
    assert _matches(authz_calls, "identity.create_user")  # the bootstrap administrator
    assert not _matches(authz_calls, "identity.delete_user")


def test_the_gateway_may_publish_every_route_target_and_its_system_calls(identities):
    write = identities["gateway"].topics["nameko-rpc"]["write"]
    for route in load_routes(None):
        if route.target:
            assert _matches(write, route.target), route.target
    for service, methods in SYSTEM_CALLS.items():
        for method in methods:
            assert _matches(write, f"{service}.{method}")
    assert not _matches(write, "identity.verify_credentials")  # no route calls it
    assert not _matches(write, str(uuid.uuid4()))  # the gateway answers no calls


def test_a_service_consumes_only_its_own_queues(identities):
    read = identities["auth"].read
    for own in ("rpc-auth", "auth.tasks", "auth.dead-letters", f"rpc.reply-auth-{uuid.uuid4()}",
                "evt-identity-user.deleted--auth.on_user_deleted"):
        assert _matches(read, own), own
    for other in ("rpc-authz", "rpc-identity", "authz.tasks", "audit.events",
                  "evt-identity-user.created--authz.on_user_created", "rpc.reply-authz-x"):
        assert not _matches(read, other), other


def test_the_gateway_may_configure_only_its_reply_and_event_queues(identities):
    gateway = identities["gateway"]
    assert _matches(gateway.configure, "rpc.reply-gateway-host-1-2-3")
    for other in ("nameko-rpc", "authz.events", "rpc-authz", "amq.default"):
        assert not _matches(gateway.configure, other)
    assert not _matches(gateway.write, "amq.default")
    assert gateway.topics["authz.events"]["write"] == broker_users.NOTHING


def test_no_process_may_publish_through_the_default_exchange(identities):
    # through it a message reaches any queue of the vhost, rpc-authz included
    for identity in identities.values():
        assert not _matches(identity.write, "amq.default"), identity.name


def test_a_catalogued_task_may_be_sent_only_to_its_owners_task_queue(identities):
    topic = identities["auth"].topics["audit.queues"]["write"]
    assert _matches(topic, "audit.tasks") and not _matches(topic, "audit.dead-letters")
    assert _matches(identities["auth"].write, "audit.queues")
    assert not _matches(identities["gateway"].write, "audit.queues")


def test_consumers_may_bind_only_the_event_types_they_handle(identities):
    read = identities["authz"].topics["identity.events"]["read"]
    assert _matches(read, "user.created") and not _matches(read, "#")
    assert _matches(identities["audit"].topics["identity.events"]["read"], "#")


def test_a_declared_proxy_refuses_a_method_it_did_not_declare():
    class FakeProxy:
        def __getattr__(self, name):
            return f"called {name}"

    from shared.rpc import _DeclaredProxy

    proxy = _DeclaredProxy(FakeProxy(), "identity", frozenset({"get_user"}))
    assert proxy.get_user == "called get_user"
    with pytest.raises(UndeclaredCall, match="identity.delete_user"):
        proxy.delete_user  # noqa: B018 - the attribute access is what is refused
    assert ServiceRpc("identity", calls=("get_user",)).rpc_calls == {
        "identity": frozenset({"get_user"})}


def test_senders_accept_only_the_sources_identity_or_their_own():
    senders = Senders({"BROKER_USER_PREFIX": "p-"}, own="auth")
    assert senders.accepts("p-identity", "identity")
    assert senders.accepts("p-auth", "identity")  # its own retry or replay
    assert not senders.accepts("p-authz", "identity")
    assert not senders.accepts(None, "identity")
    assert not senders.accepts("guest", "identity")
    assert Senders({}).accepts(None, "identity")  # one shared credential: nothing to check


def test_a_password_comes_from_its_setting_or_from_the_processs_own_uri():
    env = {"AUTH_BROKER_PASSWORD": "s3cret-one",
           "GATEWAY_AMQP_URI": "amqp://plinth-gateway:p%40ss@rabbitmq:5672/;amqp://x:y@b/"}
    assert broker_users.password_of("auth", env) == "s3cret-one"
    assert broker_users.password_of("gateway", env) == "p@ss"
    assert broker_users.password_of("identity", env) is None


def test_amqp_ssl_is_a_mapping_from_the_config_or_the_environment(monkeypatch):
    from shared.config import ConfigError, amqp_ssl

    monkeypatch.delenv("AMQP_SSL", raising=False)
    assert amqp_ssl({}) is None and amqp_ssl({"AMQP_SSL": None}) is None
    monkeypatch.setenv("AMQP_SSL", "")
    assert amqp_ssl({}) is None  # compose's and Kubernetes' default: plain TCP
    monkeypatch.setenv("AMQP_SSL", "{ca_certs: /tls/ca.pem, cert_reqs: 2}")
    assert amqp_ssl({}) == {"ca_certs": "/tls/ca.pem", "cert_reqs": 2}
    assert amqp_ssl({"AMQP_SSL": {"ca_certs": "/other.pem"}}) == {"ca_certs": "/other.pem"}
    monkeypatch.setenv("AMQP_SSL", "verify please")
    with pytest.raises(ConfigError, match="AMQP_SSL"):
        amqp_ssl({})
