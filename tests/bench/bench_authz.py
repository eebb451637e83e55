"""authz: permission checks in process (what the gateway does from its cache) and over RPC,
and the cost of recomputing effective permissions when a widely held role changes."""

import statistics
import time
import uuid

import eventlet
from nameko.testing.utils import find_free_port
from sqlalchemy.orm import sessionmaker

from authz import effective, permissions, roles
from authz.models import USER, Assignment
from shared.db import UnitOfWork, make_engine
from shared.errors import Invalid
from shared.rpc_client import RpcClient

HOLDERS = 2000
RPC_CALLS = 1500
CONCURRENCY = 8
CONTEXT = {"request_id": "bench-authz", "actor_type": "system", "actor_id": "bench"}


def _timed_loop(fn, count):
    """Per-call latencies (s) of ``count`` sequential calls."""
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        fn()
        latencies.append(time.perf_counter() - started)
    return latencies


def _in_process():
    effective_set = frozenset(permissions.simplify(
        ["authz:check", "password:write", "profile:read", "profile:write", "reports:*",
         "*:list", "billing.invoices:read"]))
    grants = permissions.Grants(effective_set, {"billing": {"invoices:*"}})
    cases = {
        "`allows(set, 'reports:export')` (granted by a wildcard)":
            lambda: permissions.allows(effective_set, "reports:export"),
        "`allows(set, 'users:delete')` (denied)":
            lambda: permissions.allows(effective_set, "users:delete"),
        "`Grants.allows('invoices:refund', 'billing')` (scoped)":
            lambda: grants.allows("invoices:refund", "billing"),
        "baseline: `'profile:read' in frozenset`":
            lambda: "profile:read" in effective_set,
    }
    rows = []
    batch = 1000
    for label, fn in cases.items():
        for _ in range(batch):  # warm the parse cache
            fn()
        samples = []
        deadline = time.perf_counter() + 1.0
        while time.perf_counter() < deadline:
            started = time.perf_counter_ns()
            for _ in range(batch):
                fn()
            samples.append((time.perf_counter_ns() - started) / batch)
        p50 = statistics.median(samples)
        rows.append(f"| {label} | {1e9 / p50:,.0f} | {p50 / 1000:.3f} |")
    return rows


def _seed(db_uri):
    """``HOLDERS`` users holding ``user`` plus a three-role chain, written in one go."""
    engine = make_engine(db_uri, "authz", pool_size=2)
    uow = UnitOfWork(sessionmaker(bind=engine, expire_on_commit=False), "authz", dict(CONTEXT))
    try:
        tag = uuid.uuid4().hex[:6]
        names = [f"bench-{tag}-{level}" for level in ("viewer", "editor", "manager")]
        roles.create(uow, {"name": names[0], "description": "", "permissions": ["reports:read"],
                           "includes": []})
        roles.create(uow, {"name": names[1], "description": "", "permissions": ["reports:*"],
                           "includes": [names[0]]})
        roles.create(uow, {"name": names[2], "description": "", "permissions": ["*:list"],
                           "includes": [names[1]]})
        users = [str(uuid.uuid4()) for _ in range(HOLDERS)]
        stamp = effective.now()
        uow.session.add_all([Assignment(user_id=u, role=USER, scope="", assigned_at=stamp)
                             for u in users])
        uow.session.add_all([Assignment(user_id=u, role=names[2], scope="", assigned_at=stamp)
                             for u in users[:10]])
        uow.session.flush()
        started = time.perf_counter()
        effective.recompute(uow.session, users)
        uow.commit()
        seed_s = time.perf_counter() - started
        # a change to the role everyone holds: every holder recomputed, one event naming them
        started = time.perf_counter()
        roles.grant(uow, USER, ["bench:read"])
        grant_s = time.perf_counter() - started
        started = time.perf_counter()
        roles.grant(uow, names[0], ["reports:share"])
        chain_s = time.perf_counter() - started
    finally:
        uow.close()
        engine.dispose()
    return users, seed_s, grant_s, chain_s


def _rpc(client, users):
    allowed = users[:10]  # managers: reports:export through the chain

    def check():
        return client.call("authz", "check", [allowed[0], "reports:export"], timeout=10)

    def invalid():
        try:
            client.call("authz", "check", ["not-a-user", "reports:export"], timeout=10)
        except Invalid:  # the answer being timed
            pass

    assert check() is True
    for _ in range(100):  # warm-up: connections, pools, caches
        check()
    sequential = _timed_loop(check, RPC_CALLS)
    baseline = _timed_loop(invalid, RPC_CALLS // 3)

    pool = eventlet.GreenPool(CONCURRENCY)
    started = time.perf_counter()
    list(pool.imap(lambda i: client.call("authz", "check", [users[i % len(users)],
                                                            "profile:read"], timeout=10),
                   range(RPC_CALLS)))
    concurrent_s = time.perf_counter() - started
    return sequential, baseline, concurrent_s


def _ms(latencies, q):
    return statistics.quantiles(latencies, n=100)[q - 1] * 1000


def run(env):
    port = find_free_port()
    env.start_service("authz", port, AUTHZ_MAX_WORKERS=10)
    users, seed_s, grant_s, chain_s = _seed(env.db_uri)
    client = RpcClient(env.amqp_uri, timeout=10)
    client.start()
    client.wait_connected(10)
    try:
        sequential, baseline, concurrent_s = _rpc(client, users)
    finally:
        client.close()
    in_process = _in_process()
    seq_rate = len(sequential) / sum(sequential)
    lines = [
        "## authz",
        "",
        "In-process evaluation with `authz.permissions` (what the gateway runs against its "
        "cache; one core, p50 of 1,000-call batches over one second):",
        "",
        "| evaluation | checks/s | p50 µs |",
        "| --- | ---: | ---: |",
        *in_process,
        "",
        "`check(user_id, permission)` over RPC through `shared.rpc_client.RpcClient` to one "
        "`nameko run` instance on PostgreSQL (materialised permissions: one primary-key read "
        "per check). Baseline: the same call rejected by input validation, which never "
        "touches the database.",
        "",
        "| RPC | calls | checks/s | p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| `check`, one caller, sequential | {len(sequential)} | {seq_rate:,.0f} | "
        f"{_ms(sequential, 50):.2f} | {_ms(sequential, 99):.2f} |",
        f"| baseline: `check` refused as Invalid (no DB) | {len(baseline)} | "
        f"{len(baseline) / sum(baseline):,.0f} | {_ms(baseline, 50):.2f} | "
        f"{_ms(baseline, 99):.2f} |",
        f"| `check`, {CONCURRENCY} concurrent callers | {RPC_CALLS} | "
        f"{RPC_CALLS / concurrent_s:,.0f} | | |",
        "",
        "Recomputing effective permissions (the write side that keeps checks cheap), in "
        "process against the same PostgreSQL:",
        "",
        "| change | users recomputed | ms |",
        "| --- | ---: | ---: |",
        f"| first materialisation of {HOLDERS:,} users | {HOLDERS:,} | {seed_s * 1000:.0f} |",
        f"| `grant('user', …)`: every holder of `user` recomputed, one `role.updated` | "
        f"{HOLDERS:,} | {grant_s * 1000:.0f} |",
        f"| `grant` at the bottom of a three-role inclusion chain | 10 | {chain_s * 1000:.0f} |",
    ]
    return "\n".join(lines)
