"""shared/hub.py: one hub per container, through which the kernel's providers meet."""

import pytest
import sqlalchemy as sa
from nameko.containers import ServiceContainer

from shared import service as kernel
from shared.db import Database, service_metadata
from shared.hub import Hub
from shared.rpc import rpc, rpc_timeout

metadata = service_metadata("hubprobe")
sa.Table("things", metadata, sa.Column("id", sa.Integer, primary_key=True))


class HubProbe(kernel.ServiceBase):
    name = "hubprobe"

    db = Database(metadata)

    @rpc
    def ping(self):
        return "pong"


def test_every_kernel_provider_of_a_container_shares_one_hub():
    container = ServiceContainer(HubProbe, {"AMQP_URI": "memory://"})
    hubs = {id(getattr(d, "hub", None)) for d in container.dependencies if hasattr(d, "hub")}
    entrypoint_hubs = {id(e.hub) for e in container.entrypoints if hasattr(e, "hub")}
    assert len(hubs | entrypoint_hubs) == 1
    assert isinstance(container.shared_extensions[Hub], Hub)
    other = ServiceContainer(HubProbe, {"AMQP_URI": "memory://"})
    assert other.shared_extensions[Hub] is not container.shared_extensions[Hub]


def test_the_hub_merges_infos_runs_advisories_and_tells_of_the_stop():
    hub = ServiceContainer(HubProbe, {"AMQP_URI": "memory://"}).shared_extensions[Hub]
    told = []
    hub.add_info(lambda: {"a": 1})
    hub.add_info(lambda: {"b": 2})
    hub.add_advisory(lambda: "checked")
    hub.add_stopping(told.append)
    hub.add_stopping(lambda timeout: told.append("readiness fails"), first=True)
    assert hub.info() == {"a": 1, "b": 2}
    assert hub.run_advisories() == ["checked"]
    hub.stopping(1.5)
    assert told == ["readiness fails", 1.5]


def test_the_hub_names_the_service_when_its_database_is_not_one():
    container = ServiceContainer(HubProbe, {"AMQP_URI": "memory://"})
    hub = container.shared_extensions[Hub]
    with pytest.raises(RuntimeError, match="hubprobe declares 0 Database"):
        hub.database()
    hub.add_database("db")
    assert hub.database() == "db"


def test_rpc_timeouts_are_named_after_the_service_called(caplog):
    assert rpc_timeout({"IDENTITY_RPC_TIMEOUT": "2.5"}, "identity") == 2.5
    assert rpc_timeout({}, "authz") == 5.0
    old = {"AUTH_IDENTITY_TIMEOUT": "7"}
    assert rpc_timeout(old, "identity", 10.0, old_key="AUTH_IDENTITY_TIMEOUT") == 7.0
    assert "AUTH_IDENTITY_TIMEOUT is deprecated: set IDENTITY_RPC_TIMEOUT" in caplog.text
