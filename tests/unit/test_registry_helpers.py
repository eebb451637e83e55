"""The registry's plain parts: addresses, durations, statuses, instances, checks."""

import pytest

from shared.registry import (
    CheckSpec,
    ConsulRegistry,
    Instance,
    format_duration,
    parse_address,
    parse_duration,
    worst_status,
)


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:8500", ("http", "127.0.0.1", 8500)),
    ("consul:8501", ("http", "consul", 8501)),
    ("consul", ("http", "consul", 8500)),
    ("http://consul.internal:8500", ("http", "consul.internal", 8500)),
    ("https://consul.internal", ("https", "consul.internal", 443)),
    ("http://10.0.0.5:8500/", ("http", "10.0.0.5", 8500)),
    ("  127.0.0.1:8500 ", ("http", "127.0.0.1", 8500)),
])
def test_consul_addresses_in_every_documented_form_are_understood(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "ftp://consul:21", "consul:notaport",
                                  "http://consul:8500/v1/agent", "http://:8500", None])
def test_malformed_consul_addresses_are_refused_with_a_clear_error(text):
    with pytest.raises(ValueError, match="address"):
        parse_address(text)


def test_a_malformed_address_fails_when_the_registry_is_built():
    with pytest.raises(ValueError):
        ConsulRegistry("consul:http")


@pytest.mark.parametrize("value, seconds", [
    ("10s", 10.0), ("1m", 60.0), ("1m30s", 90.0), ("250ms", 0.25), ("1h", 3600.0),
    ("1.5s", 1.5), (3, 3.0), (0.5, 0.5), ("7", 7.0), (" 2s ", 2.0),
])
def test_durations_read_go_syntax_and_plain_seconds(value, seconds):
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["ten seconds", "10x", "s", "-1s", -2, "1m garbage", True,
                                   ""])
def test_bad_durations_are_refused(value):
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize("seconds, text", [(10, "10s"), (60.0, "60s"), (0.5, "500ms"),
                                           (1.25, "1250ms"), (0, "0s")])
def test_durations_are_written_the_way_consul_reads_them(seconds, text):
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("statuses, worst", [
    ([], "passing"), (["passing"], "passing"), (["passing", "warning"], "warning"),
    (["warning", "critical", "passing"], "critical"), (["passing", "maintenance"], "critical"),
])
def test_the_aggregate_status_is_the_worst_check(statuses, worst):
    assert worst_status(statuses) == worst


def _entry(status="passing", service_address="10.0.0.7", output="HTTP GET ...: 200 OK"):
    return {
        "Node": {"Node": "n1", "Address": "10.0.0.1"},
        "Service": {"ID": "identity-h-8101", "Service": "identity", "Address": service_address,
                    "Port": 8101, "Tags": ["plinth"], "Meta": {"version": "1.2.3"}},
        "Checks": [
            {"CheckID": "serfHealth", "Status": "passing", "ServiceID": "",
             "Output": "Agent alive and reachable"},
            {"CheckID": "service:identity-h-8101", "Status": status,
             "ServiceID": "identity-h-8101", "Output": output},
        ],
    }


def test_an_instance_is_built_from_a_consul_health_entry():
    instance = Instance.from_health_entry(_entry())
    assert instance.id == "identity-h-8101" and instance.name == "identity"
    assert (instance.address, instance.port) == ("10.0.0.7", 8101)
    assert instance.tags == ("plinth",) and instance.meta == {"version": "1.2.3"}
    assert instance.status == "passing" and instance.passing
    # the node's own check counts for the status but its output is not the service's
    assert instance.output == "HTTP GET ...: 200 OK"
    assert instance.to_dict()["status"] == "passing"


def test_an_instance_without_its_own_address_takes_the_nodes_and_a_failing_check_wins():
    instance = Instance.from_health_entry(_entry(status="critical", service_address=""))
    assert instance.address == "10.0.0.1"
    assert instance.status == "critical" and not instance.passing


def test_an_http_check_becomes_consuls_check_definition():
    check = CheckSpec("http://10.0.0.7:8101/health/ready", interval=10, timeout=3,
                      deregister_after=60).to_consul()
    assert check["http"] == "http://10.0.0.7:8101/health/ready"
    assert check["interval"] == "10s" and check["timeout"] == "3s"
    assert check["DeregisterCriticalServiceAfter"] == "60s"
    assert "DeregisterCriticalServiceAfter" not in CheckSpec("http://x/", 1, 1, None).to_consul()
