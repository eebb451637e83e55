"""The cost of replication: audit ingest and RPC round trips on a three-node cluster with
quorum queues against the single node with classic queues, in the same run.

The single node is the machine's RabbitMQ (the bench's own vhost); the cluster is started for
the run (``tests.support.rabbit_cluster``: three more RabbitMQ nodes on the same two cores).
On each, audit runs as a real ``nameko run`` process on a database of its own, and:

- audit burst: events published as fast as possible by a separate process (bench_audit's
  load generator) until they are chained rows: the rate audit drains them at;
- RPC: ``audit.head`` (one indexed read) through ``shared.rpc_client.RpcClient``, one caller
  sequentially (p50 / p99) and eight callers for a few seconds (calls/s).

Publishers and callers use node 1; services are given all three nodes and quorum queues.
"""

import os
import statistics
import threading
import time
import uuid

from shared.db import make_engine
from shared.rpc_client import RpcClient
from tests.bench import bench_audit
from tests.bench.env import ROOT, BenchEnv
from tests.conftest import create_database
from tests.support.rabbit_cluster import RabbitCluster, available

BURST = int(os.environ.get("CLUSTER_BENCH_BURST", 20000))
SEQUENTIAL_CALLS = 500
PARALLEL_SECONDS = 5.0
TARGET = 2500  # events/s on the cluster: half the single-node target (SPEC §11, issue 19)


class ClusterEnv(BenchEnv):
    """BenchEnv on the cluster: its own vhost and database; services get every node."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.vhost = f"plinth_bench_{uuid.uuid4().hex[:8]}"
        cluster.add_vhost(self.vhost)
        self.amqp_uri = cluster.nodes[0].uri(self.vhost)
        self.db_uri = create_database("plinth_bench")
        self.processes = []
        self.var = ROOT / "var" / "bench"
        self.var.mkdir(parents=True, exist_ok=True)

    def service_env(self, service, **extra):
        env = super().service_env(service, **extra)
        env.update(AMQP_URI=self.cluster.amqp_uri(self.vhost), AMQP_QUEUE_TYPE="quorum")
        return env

    def close(self):
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes:
            proc.wait(15)
        self.cluster.delete_vhost(self.vhost)
        from tests.conftest import drop_database

        drop_database(self.db_uri)


def _audit_burst(env, port):
    proc = env.start_service("audit", port, AUDIT_SOURCES=",".join(bench_audit.SOURCES))
    engine = make_engine(env.db_uri, "audit", pool_size=1)
    try:
        bench_audit._publish_in_process(env.amqp_uri, "bench.warmup", 2000)
        bench_audit._wait_rows(engine, "bench.warmup", 2000)
        return bench_audit._phase(env, proc, engine, "bench.burst", BURST)
    finally:
        engine.dispose()


def _rpc(env):
    client = RpcClient(env.amqp_uri, timeout=10).start()
    try:
        assert client.wait_connected(10), client.last_error
        for _ in range(50):
            client.call("audit", "head")
        latencies = []
        for _ in range(SEQUENTIAL_CALLS):
            started = time.perf_counter()
            client.call("audit", "head")
            latencies.append((time.perf_counter() - started) * 1000)
        latencies.sort()
        done, stop = [0], time.monotonic() + PARALLEL_SECONDS

        def caller():
            while time.monotonic() < stop:
                client.call("audit", "head")
                done[0] += 1

        threads = [threading.Thread(target=caller) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return {"p50": statistics.median(latencies),
                "p99": latencies[int(len(latencies) * 0.99) - 1],
                "rate": done[0] / PARALLEL_SECONDS}
    finally:
        client.close()


HEADER = ("| broker | events | rows/s, first publish to last row | lag p50 / p95 / p99 "
          "| audit CPU (of one core) | RPC p50 / p99, 1 caller | RPC, 8 callers |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")


def run(env):
    reason = available()
    if reason:
        return f"## cluster — replication's cost\n\nNot measured: {reason}.\n"
    single = {"audit": _audit_burst(env, 8191), "rpc": _rpc(env)}
    with RabbitCluster(name="bench") as cluster:
        cluster_env = ClusterEnv(cluster)
        try:
            quorum = {"audit": _audit_burst(cluster_env, 8192), "rpc": _rpc(cluster_env)}
        finally:
            cluster_env.close()
    rate = quorum["audit"]["n"] / quorum["audit"]["span"]
    target = "met" if rate >= TARGET and quorum["audit"]["rows"] == BURST else \
        "NOT met in this run"
    rows = "\n".join(
        f"| {name} | {r['audit']['rows']:,} | {r['audit']['n'] / r['audit']['span']:,.0f} "
        f"| {' / '.join(map(str, r['audit']['lag_ms']))} ms | {r['audit']['audit_cpu']:.0%} "
        f"| {r['rpc']['p50']:.2f} / {r['rpc']['p99']:.2f} ms | {r['rpc']['rate']:,.0f}/s |"
        for name, r in (("1 node, classic queues", single),
                        ("3-node cluster, quorum queues", quorum)))
    return f"""## cluster — replication's cost (quorum queues on three nodes)

Same run, same machine: audit (one `nameko run`) draining a burst of {BURST:,} events
published as fast as one process can, and `audit.head` RPC round trips, first on the single
RabbitMQ node with classic queues, then on a three-node cluster on the same two cores with
every durable queue a quorum queue (each message written on three nodes before it is
confirmed and delivered). Publishers and callers use node 1.

{HEADER}
{rows}

Audit ingest on the cluster: {rate:,.0f} events/s against the target of {TARGET:,} (half the
single-node target, three brokers sharing the two cores): {target}. CPU by process on the
cluster: {bench_audit._shares(quorum["audit"])}.
"""
