"""registry: what Consul registration and health-aware routing cost, and how fast they react.

- per request at the gateway: ``ServiceView.has_passing`` (a cache read) and a circuit breaker
  around a call, against a bare function call;
- 16 threads making 20 ms calls through one breaker: ours against pybreaker's ``call()``
  (which holds its lock during the call), against no breaker;
- how long a registry change takes to reach the view (blocking query), against one plain
  query's round trip;
- with real `nameko run` identity processes: start to passing in Consul, SIGKILL to critical
  in the view, SIGTERM to deregistered.

Consul is the stand-in (or the real agent when a consul binary is on PATH).
"""

import tempfile
import threading
import time

import pybreaker
import requests
from nameko.testing.utils import find_free_port

from gateway.breakers import Breakers
from gateway.discovery import ServiceView
from tests.support.breakers import call as guarded_call
from tests.support.consul import ConsulAgent
from tests.support.discovery import wait_for

INTERVAL = 1.0


def per_call_us(fn, n=20000):
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n * 1e6


def threaded_throughput(call, threads=16, calls_each=10):
    def worker():
        for _ in range(calls_each):
            call()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    started = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return threads * calls_each / (time.perf_counter() - started)


def ms(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] * 1000


def propagation(agent, view, rounds=20):
    """Seconds from a registration (and a deregistration) to the view seeing it."""
    seen = []
    for n in range(rounds):
        ident = f"bench-{n}"
        body = {"ID": ident, "Name": "bench", "Address": "127.0.0.1", "Port": 1,
                "Check": {"HTTP": "http://127.0.0.1:1/", "Interval": "10s",
                          "Status": "passing"}}
        started = time.perf_counter()
        agent.put("/v1/agent/service/register", body)
        assert wait_for(view, lambda v: v.has_passing("bench") is True, 5)
        seen.append(time.perf_counter() - started)
        started = time.perf_counter()
        agent.put(f"/v1/agent/service/deregister/{ident}")
        assert wait_for(view, lambda v: v.has_passing("bench") is False, 5)
        seen.append(time.perf_counter() - started)
    return seen


def processes(env, agent, view):
    """Timings with real identity processes registering themselves."""
    settings = {"CONSUL_HTTP_ADDR": agent.address, "CONSUL_CHECK_INTERVAL": f"{INTERVAL:g}s",
                "CONSUL_CHECK_TIMEOUT": "1s", "CONSUL_RESYNC_INTERVAL": "1s",
                "ARGON2_TIME_COST": 1, "ARGON2_MEMORY_KIB": 1024}
    results = {}
    started = time.monotonic()
    ports = [find_free_port(), find_free_port()]
    procs = [env.start_service("identity", port, **settings) for port in ports]
    ready = time.monotonic()

    def statuses():
        service = view.snapshot()["services"].get("identity") or {}
        return {int(i["id"].rsplit("-", 1)[1]): i["status"]
                for i in service.get("instances", []) if int(i["id"].rsplit("-", 1)[1]) in ports}

    assert wait_for(view, lambda v: list(statuses().values()) == ["passing"] * 2, 15)
    results["ready_to_passing"] = time.monotonic() - ready
    results["start_to_passing"] = time.monotonic() - started
    procs[0].kill()
    killed = time.monotonic()
    assert wait_for(view, lambda v: statuses().get(ports[0]) == "critical", 10)
    results["sigkill_to_critical"] = time.monotonic() - killed
    procs[1].terminate()
    termed = time.monotonic()
    assert wait_for(view, lambda v: ports[1] not in statuses(), 10)
    results["sigterm_to_deregistered"] = time.monotonic() - termed
    procs[1].wait(timeout=15)
    return results


def run(env):
    with tempfile.TemporaryDirectory() as tmp:
        agent = ConsulAgent(tmp).start()
        view = ServiceView.from_config({"CONSUL_HTTP_ADDR": agent.address},
                                       services=["identity", "bench"], wait=30).start()
        try:
            assert wait_for(view, lambda v: v.has_passing("bench") is False, 5)
            return _measure(env, agent, view)
        finally:
            view.stop()
            agent.stop()


def _measure(env, agent, view):
    breakers = Breakers(fail_max=5, reset_timeout=30)
    theirs = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)

    def noop():
        return None

    bare_us = per_call_us(noop)
    view_us = per_call_us(lambda: view.has_passing("identity"))
    ours_us = per_call_us(lambda: guarded_call(breakers.get("identity"), noop))
    theirs_us = per_call_us(lambda: theirs.call(noop))

    def slow():
        time.sleep(0.02)

    free = threaded_throughput(slow)
    ours_rate = threaded_throughput(lambda: guarded_call(breakers.get("identity"), slow))
    theirs_rate = threaded_throughput(lambda: theirs.call(slow))

    plain = []
    for _ in range(50):
        started = time.perf_counter()
        requests.get(f"{agent.url}/v1/health/service/bench", timeout=5)
        plain.append(time.perf_counter() - started)
    seen = propagation(agent, view)
    timings = processes(env, agent, view)

    agent_kind = "real Consul agent" if agent.real else "Consul stand-in (test mode)"
    return "\n".join([
        "## registry",
        "",
        f"Against the {agent_kind}; services and the view in the same machine.",
        "",
        "Per request at the gateway (single thread):",
        "",
        "| operation | µs per call |",
        "| --- | ---: |",
        f"| bare function call (baseline) | {bare_us:.2f} |",
        f"| `ServiceView.has_passing` (cache read) | {view_us:.2f} |",
        f"| call through `gateway.breakers` (closed) | {ours_us:.2f} |",
        f"| call through `pybreaker.CircuitBreaker.call` (closed) | {theirs_us:.2f} |",
        "",
        "16 threads × 10 calls of 20 ms each through one breaker:",
        "",
        "| breaker | calls/s |",
        "| --- | ---: |",
        f"| none (baseline) | {free:.0f} |",
        f"| `gateway.breakers` | {ours_rate:.0f} |",
        f"| `pybreaker` `call()` (holds its lock during the call) | {theirs_rate:.0f} |",
        "",
        "A registry change reaching the gateway's view (blocking query wakes up), "
        f"{len(seen)} changes:",
        "",
        "| measure | p50 ms | p99 ms |",
        "| --- | ---: | ---: |",
        f"| one plain `/v1/health/service` query (baseline) | {ms(plain, 0.5):.1f} | "
        f"{ms(plain, 0.99):.1f} |",
        f"| register/deregister → view updated | {ms(seen, 0.5):.1f} | {ms(seen, 0.99):.1f} |",
        "",
        f"Two `nameko run` identity processes, check interval {INTERVAL:g} s "
        "(expected: within one interval plus the check):",
        "",
        "| event | seconds |",
        "| --- | ---: |",
        f"| process start → both passing in the view | {timings['start_to_passing']:.2f} |",
        f"| /health/ready answering → passing in the view | {timings['ready_to_passing']:.2f} |",
        f"| SIGKILL → critical in the view | {timings['sigkill_to_critical']:.2f} |",
        f"| SIGTERM → gone from the view | {timings['sigterm_to_deregistered']:.2f} |",
    ])
