"""SIGTERM to a service under steady RPC load: it leaves Consul first, finishes what it holds,
and no caller sees an error (what it had not started goes to the other instance)."""

import re
import signal
import threading
import time
from dataclasses import replace

import pytest

from tests.support.consul import ConsulAgent, wait_until
from tests.support.platform import Platform, free_port

CALLERS = 6


@pytest.fixture
def consul(tmp_path):
    agent = ConsulAgent(tmp_path)
    agent.start()
    yield agent
    agent.stop()


@pytest.fixture
def pair(consul):
    platform = Platform(name="drain", services=("identity",), gateway=False, admin_email=None,
                        env={"CONSUL_HTTP_ADDR": consul.address,
                             "CONSUL_CHECK_INTERVAL": "1s", "CONSUL_CHECK_TIMEOUT": "1s"})
    platform.start()
    first = platform.processes["identity"]
    port = free_port()
    platform.processes["identity2"] = replace(
        first, name="identity2", port=port, popen=None, starts=0,
        env={**first.env, "IDENTITY_WEB_ADDRESS": f"127.0.0.1:{port}"},
        log_path=first.log_path.with_name("identity2.log"))
    platform.instance_of["identity2"] = "identity"  # same broker identity as identity
    platform.start_process("identity2")
    try:
        yield platform
    finally:
        if platform.running("identity2"):
            platform.stop_process("identity2")
        platform.stop()


def test_sigterm_under_load_deregisters_first_and_loses_no_call(pair, consul):
    wait_until(lambda: len(consul.health("identity", passing=True)) == 2, timeout=15,
               message="both instances passing")
    rpc = pair.rpc_client(timeout=15)
    user = rpc.call("identity", "create_user",
                    kwargs={"email": "drain@example.test", "password": "violet-Lantern-42-orbit"})
    results = {"ok": 0, "errors": []}
    lock = threading.Lock()
    stop = threading.Event()

    def caller():
        while not stop.is_set():
            try:
                assert rpc.call("identity", "get_user", [user["id"]])["id"] == user["id"]
                with lock:
                    results["ok"] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is what the test counts
                with lock:
                    results["errors"].append(repr(exc))

    threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(2.0)  # steady load on both instances
        before = results["ok"]
        draining = pair.processes["identity2"]
        draining.popen.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        wait_until(lambda: all(s["Service"]["Port"] != draining.port
                               for s in consul.health("identity")),
                   timeout=5, interval=0.02, message="identity2 deregistered")
        deregistered_after = time.monotonic() - signalled
        code = draining.popen.wait(timeout=30)
        time.sleep(1.5)  # the load goes on against the survivor
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=20)
        rpc.close()

    assert code == 0, pair.tail("identity2")
    assert results["errors"] == [], results["errors"][:5]
    assert results["ok"] > before > 50
    assert deregistered_after < 2.0
    # the log shows the order: deregistration before the container finished stopping
    log = pair.log("identity2")
    deregistered = log.find("deregistered identity")
    assert deregistered != -1, log[-2000:]
    assert not re.search(r'"level": "(error|critical)"', log[deregistered:]), log[-2000:]
