"""Audit throughput: events published to the source exchanges until they are chained rows.

audit runs as a real ``nameko run`` process on PostgreSQL. A separate publisher process (kombu
connection, frames written straight to the socket: see ``publish``) sends envelopes whose
``occurred_at`` is the moment of publishing, so each row's lag is ``recorded_at -
occurred_at`` (same clock, same machine).

1. steady: STEADY_EVENTS at STEADY_RATE (5,000) per second, paced: does audit keep up, and
   with what lag (p50/p95/p99/max)?
2. burst: BURST_EVENTS published as fast as possible: the rate audit drains them at.
CPU per process is read from /proc for both runs. Baselines from the same run: the publisher
alone (no consumer) and the chained append alone (``audit.entries.append`` in batches, no
broker), the two halves of the pipeline.
"""

import json
import os
import struct
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import requests
import sqlalchemy as sa
from kombu import Connection, Queue
from nameko.standalone.events import get_event_exchange

from shared.db import make_engine
from tests.bench import procstat

SOURCES = ("identity", "auth", "authz")
STEADY_RATE = int(os.environ.get("AUDIT_BENCH_RATE", 5000))
STEADY_EVENTS = int(os.environ.get("AUDIT_BENCH_STEADY", 48000))
BURST_EVENTS = int(os.environ.get("AUDIT_BENCH_BURST", 40000))
ROOT = Path(__file__).resolve().parents[2]


def _body(action, n, occurred_at=None):
    """An envelope as the outbox relay publishes it; ``occurred_at`` is stamped by the caller
    when ``None`` stays in as a placeholder (see ``publish``)."""
    return json.dumps({
        "event_id": str(uuid.uuid4()), "event_type": action, "source": SOURCES[n % 3],
        "version": 1, "occurred_at": occurred_at or "@OCCURRED_AT@",
        "actor": {"id": "6f1c3c5e-8a53-4a4b-9d0e-3f4f5a0c2b7d", "type": "user"},
        "request_id": f"bench-{n}", "subject": f"user-{n % 1000}",
        "data": {"n": n, "email": f"user{n}@example.test", "changes": {"display_name": "B"},
                 "password": "never-stored"},
    })


def _frames(channel_id, exchange, routing_key, body):
    """One basic.publish as AMQP 0-9-1 frames: method, content header, body."""
    def frame(kind, payload):
        return struct.pack(">BHI", kind, channel_id, len(payload)) + payload + b"\xce"

    def short(text):
        return struct.pack(">B", len(text)) + text

    method = struct.pack(">HHH", 60, 40, 0) + short(exchange) + short(routing_key) + b"\x00"
    # content-type, content-encoding, delivery-mode (2, persistent)
    properties = short(b"application/json") + short(b"utf-8") + b"\x02"
    header = struct.pack(">HHQH", 60, 0, len(body), 0x8000 | 0x4000 | 0x1000) + properties
    return frame(1, method) + frame(2, header) + frame(3, body)


def publish(amqp_uri, action, count, rate=0):
    """Publish ``count`` events, paced at ``rate`` per second if given; returns seconds.

    The load generator, in a process of its own without eventlet (``python -m
    tests.bench.bench_audit``). It must take as little of the two cores as it can, since it
    shares them with what it measures: kombu opens the connection and channel, the bodies
    are built beforehand, and each publish is its AMQP frames written straight to the
    socket, 50 at a time, with ``occurred_at`` filled in at that moment.
    """
    before, after = zip(*(_body(action, n).encode().split(b'"@OCCURRED_AT@"')
                          for n in range(count)), strict=True)
    with Connection(amqp_uri, heartbeat=0) as conn:
        channel = conn.channel()
        for source in SOURCES:
            get_event_exchange(source, {})(channel).declare()
        sock = conn.connection.transport.sock
        exchanges = [f"{source}.events".encode() for source in SOURCES]
        key = action.encode()
        started = time.monotonic()
        pending = []
        for n in range(count):
            stamp = datetime.now(UTC).isoformat().encode()
            body = before[n] + b'"' + stamp + b'"' + after[n]
            pending.append(_frames(channel.channel_id, exchanges[n % 3], key, body))
            if n % 50 == 49 or n == count - 1:
                sock.sendall(b"".join(pending))
                pending.clear()
                if rate:
                    ahead = started + (n + 1) / rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
        # a round trip: the broker has taken every publish before it answers this
        channel.basic_qos(0, 1, False)
        return time.monotonic() - started


def _publish_in_process(amqp_uri, action, count, rate=0):
    out = subprocess.run([sys.executable, "-m", "tests.bench.bench_audit", amqp_uri, action,
                          str(count), str(rate)], capture_output=True, text=True, check=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return float(out.stdout.strip().splitlines()[-1])


def _cpu_by_process(audit_pid):
    """CPU seconds used so far by audit, RabbitMQ, PostgreSQL and the bench's own children."""
    import resource

    totals = procstat.cpu_by_group({
        "audit": lambda pid, name: pid == audit_pid,
        "rabbitmq": lambda pid, name: name in ("beam.smp", "erl_child_setup", "epmd"),
        "postgres": lambda pid, name: name == "postgres",
    })
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped ones: the publisher
    totals["publisher"] = children.ru_utime + children.ru_stime
    return totals


def _wait_rows(engine, action, count, timeout=60):
    deadline = time.monotonic() + timeout
    query = sa.text("SELECT count(*) FROM audit.entries WHERE action = :a")
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            done = conn.execute(query, {"a": action}).scalar()
        if done >= count:
            return done
        time.sleep(0.1)
    return done


def _figures(engine, action):
    with engine.connect() as conn:
        row = conn.execute(sa.text("""
            SELECT count(*) AS n,
                   extract(epoch FROM max(recorded_at) - min(occurred_at)) AS span,
                   percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (
                       ORDER BY extract(epoch FROM recorded_at - occurred_at)) AS lag,
                   extract(epoch FROM max(recorded_at - occurred_at)) AS lag_max,
                   count(DISTINCT recorded_at) AS batches,
                   bool_and(data::text NOT LIKE '%never-stored%') AS redacted
            FROM audit.entries WHERE action = :a"""), {"a": action}).mappings().one()
    return dict(row)


def _baseline_publish(amqp_uri, count=20000):
    with Connection(amqp_uri) as conn:
        channel = conn.channel()
        for source in SOURCES:
            exchange = get_event_exchange(source, {})
            Queue(f"bench.sink.{source}", exchange=exchange, routing_key="bench.sink",
                  auto_delete=True, max_length=1000)(channel).declare()
    seconds = _publish_in_process(amqp_uri, "bench.sink", count)
    return count / seconds


def _baseline_append(db_uri, count=20000, batch=1000):
    from audit import entries

    engine = make_engine(db_uri, "audit", pool_size=1)
    stamp = datetime.now(UTC).isoformat()
    bodies = [entries.from_event(json.loads(_body("bench.append", n, stamp)), "bench.append",
                                 "bench") for n in range(count)]
    started = time.monotonic()
    for start in range(0, count, batch):
        with engine.begin() as conn:
            entries.append(conn, bodies[start:start + batch])
    rate = count / (time.monotonic() - started)
    engine.dispose()
    return rate


def _phase(env, proc, engine, action, count, rate=0):
    cpu0, busy0, wall0 = _cpu_by_process(proc.pid), procstat.machine_busy(), time.monotonic()
    seconds = _publish_in_process(env.amqp_uri, action, count, rate)
    rows = _wait_rows(engine, action, count)
    elapsed = time.monotonic() - wall0
    busy1, cpu1 = procstat.machine_busy(), _cpu_by_process(proc.pid)
    figures = _figures(engine, action)
    share = {k: (cpu1[k] - cpu0[k]) / elapsed for k in cpu0}
    per_event = {k: (cpu1[k] - cpu0[k]) / count * 1e6 for k in cpu0}
    machine = (busy1[0] - busy0[0]) / (busy1[1] - busy0[1]) * (os.cpu_count() or 1)
    share["everything else"] = max(0.0, machine - sum(share.values()))
    figures.update(rows=rows, published=count / seconds, audit_cpu=share["audit"],
                   per_event=per_event,
                   machine=machine / (os.cpu_count() or 1), share=share,
                   lag_ms=[round(v * 1000) for v in figures["lag"]])
    return figures


def _shares(figures):
    return ", ".join(f"{name} {value:.0%}" for name, value in figures["share"].items())


def _per_event(figures):
    return ", ".join(f"{name} {value:.0f} µs" for name, value in figures["per_event"].items())


def _line(name, f):
    return (f"| {name} | {f['rows']:,} | {f['published']:,.0f}/s | {f['n'] / f['span']:,.0f} "
            f"| {' / '.join(map(str, f['lag_ms']))} / {f['lag_max'] * 1000:.0f} ms "
            f"| {f['audit_cpu']:.0%} | {f['machine']:.0%} |")


HEADER = ("| run | events | published at | rows/s, first publish to last row "
          "| lag p50 / p95 / p99 / max | audit CPU (of one core) | machine CPU (2 cores) |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")


def run(env):
    publish_only = _baseline_publish(env.amqp_uri)  # before audit binds its queue
    proc = env.start_service("audit", 8104, AUDIT_SOURCES=",".join(SOURCES))
    engine = make_engine(env.db_uri, "audit", pool_size=1)
    try:
        _publish_in_process(env.amqp_uri, "bench.warmup", 2000)
        _wait_rows(engine, "bench.warmup", 2000)
        steady = _phase(env, proc, engine, "bench.steady", STEADY_EVENTS, STEADY_RATE)
        burst = _phase(env, proc, engine, "bench.burst", BURST_EVENTS)
        consumer = requests.get("http://127.0.0.1:8104/health", timeout=5).json()["consumer"]
        chain_ok = _verify(engine)
    finally:
        engine.dispose()
    append_only = _baseline_append(env.db_uri)
    cores = os.cpu_count() or 1
    per_event = burst["per_event"]
    pipeline = sum(per_event.values())
    # kept up with a 5,000/s stream: every event in, and the slowest 1% within a second
    kept_up = steady["rows"] == STEADY_EVENTS and steady["published"] >= 0.99 * 5000 \
        and steady["lag_ms"][2] <= 1000
    target = "met" if kept_up else "NOT met in this run"
    return f"""## audit — events to chained rows

audit (`nameko run`, one process, PostgreSQL, batch 1000 / 200 ms, prefetch 2000) consuming
`identity.events`, `auth.events` and `authz.events` (persistent messages, a durable classic
v2 queue); events published by a separate process on one kept connection. Lag is
`recorded_at` minus the `occurred_at` the publisher stamped as it published.

{HEADER}
{_line("steady, paced", steady)}
{_line("burst, unpaced", burst)}

Target (≥ 5,000 events/s sustained, lag p99 ≤ 1 s): {target}.

CPU by process, in cores (100% = one of {cores}): steady run {_shares(steady)}; burst run
{_shares(burst)}. "Everything else" is other work on the machine during the run (other
benchmarks and test suites on a shared build machine); it takes cores the pipeline needs.

CPU per event in the burst run: {_per_event(burst)}. The whole pipeline (publisher, broker,
audit, database) needs {pipeline:.0f} µs of CPU per event, so on {cores} cores it tops out
near {cores * 1e6 / pipeline:,.0f} events/s with nothing else running; audit's own share
would let one audit process keep up with {1e6 / per_event["audit"]:,.0f} events/s on a core
of its own.

Baselines, same run: the publisher alone (a queue with no consumer) publishes
{publish_only:,.0f} events/s; `audit.entries.append` alone (batches of 1000 with hashing, no
broker) writes {append_only:,.0f} rows/s. Batches written in the steady run:
{steady["batches"]:,}. The whole trail verifies after the run: {chain_ok}. No stored row
holds the events' password: {steady["redacted"] and burst["redacted"]}.

What limits it: the two shared cores first. RabbitMQ (persistent messages), PostgreSQL and the
load generator need together about as much CPU per event as audit itself, and audit is one
Python thread (eventlet) that per event parses three AMQP frames, decodes and redacts the
envelope, hashes the entry and adds it to its batch's single INSERT. Then audit's one writer:
batches are written one after another under the chain lock, each acknowledged only once
committed (the last took {consumer["last_batch"]["ms"]:.0f} ms for {consumer["last_batch"]["size"]}
rows), so while PostgreSQL works audit waits for it part of the time (it used
{burst["audit_cpu"]:.0%} of a core in the burst). More throughput takes more cores: a second
audit instance consumes in parallel, and only the chained INSERT is serialised.
"""


def _verify(engine):
    from audit import entries

    with engine.connect() as conn:
        report = entries.verify(conn)
    return f"ok, {report['checked']:,} entries" if report["ok"] else \
        f"FAILED ({report['problem']} at {report['first_bad']})"


if __name__ == "__main__":
    uri, action, count, rate = sys.argv[1:5]
    print(publish(uri, action, int(count), float(rate)))
