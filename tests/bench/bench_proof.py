"""Proven actors: what verifying the caller's token costs on the RPC round trip.

identity (``nameko run``, PostgreSQL, ``ACTOR_PROOF=enforce``) answers ``get_user`` to the
platform's RpcClient, with the context data the gateway sends: once without a token, once
with a user's valid access token, which identity verifies before the worker runs
(shared/actors.py; after the first call, a hit in the verified-token cache). The two are
measured in interleaved rounds in the same sitting, so the machine's drift hits both.
"""

import statistics
import time
import uuid

from shared.rpc_client import RpcClient
from tests.bench.bench_rpc import _sequential
from tests.bench.env import AUTH_SECRET
from tests.bench.procstat import cpu_seconds

ROUNDS = 10
CALLS = 500
MICRO = 100_000
PASSWORD = "violet-Lantern-42-orbit"


def _in_process(amqp_uri, token):
    """µs per check of ``token`` by the kernel's validator, as a service runs it: the first
    (signature, keys fetched from auth) and then cache hits."""
    from shared.actors import TOKEN_KEY, Proven
    from shared.proof import Jwks, TokenValidator

    client = RpcClient(amqp_uri)
    client.wait_connected(10)
    jwks = Jwks(lambda: client.call("auth", "jwks"), ("RS256", "ES256", "EdDSA"))
    validator = TokenValidator(jwks, "plinth", "plinth-api", accept_services=True)

    class Provider:  # what a worker's Proven asks: here only the verification
        enforced = True

        @staticmethod
        def verify(value):
            return validator.validate(value)

    started = time.perf_counter()
    validator.validate(token)
    first = (time.perf_counter() - started) * 1e6
    context = {TOKEN_KEY: token}
    started = time.perf_counter()
    for _ in range(MICRO):
        Proven(Provider, context).principal()
    hit = (time.perf_counter() - started) / MICRO * 1e6
    client.close()
    return first, hit


def run(env):
    identity = env.start_service("identity", 8183, ARGON2_MEMORY_KIB=1024, ARGON2_TIME_COST=1,
                                 ACTOR_PROOF="enforce")
    env.start_service("auth", 8184, AUTH_KEY_ENCRYPTION_SECRET=AUTH_SECRET,
                      ACTOR_PROOF="enforce")
    client = RpcClient(env.amqp_uri)
    client.wait_connected(10)
    email = f"bench-{uuid.uuid4().hex[:6]}@example.test"
    user = client.call("identity", "create_user", kwargs={"email": email, "password": PASSWORD})
    token = client.call("auth", "login", kwargs={"email": email, "password": PASSWORD})[
        "access_token"]
    base = {"request_id": "bench-proof", "actor_id": user["id"], "actor_type": "user"}
    proven = {**base, "access_token": token}

    results = {"without": [], "with": []}
    cpu = {"without": 0.0, "with": 0.0}
    for _ in range(ROUNDS):
        for name, context in (("without", base), ("with", proven)):
            before = cpu_seconds(identity.pid)
            results[name].append(_sequential(
                lambda c=context: client.call("identity", "get_user", [user["id"]], context=c),
                count=CALLS))
            cpu[name] += cpu_seconds(identity.pid) - before
    first, hit = _in_process(env.amqp_uri, token)
    client.close()

    def median(name, key):
        return statistics.median(r[key] for r in results[name])

    per_call = {n: cpu[n] / (ROUNDS * (CALLS + 200)) * 1000 for n in cpu}
    p50 = {n: median(n, "p50") for n in results}
    p99 = {n: median(n, "p99") for n in results}
    added = (p50["with"] / p50["without"] - 1) * 100
    return "\n".join([
        "## proof — verifying the caller's token on the RPC round trip",
        "",
        f"identity.get_user over the platform's RpcClient, one caller, {ROUNDS} interleaved "
        f"rounds of {CALLS:,} calls (after 200 warm-up each); medians of the rounds. identity "
        "runs `nameko run` with ACTOR_PROOF=enforce: with a token in the context data it "
        "verifies it before the worker runs (a hit in the verified-token cache after the "
        "first call); without one it trusts nothing and skips the check.",
        "",
        "| context data | p50 ms | p99 ms | identity CPU ms/call |",
        "| --- | ---: | ---: | ---: |",
        f"| request id and actor, no token | {p50['without']:.2f} | {p99['without']:.2f} | "
        f"{per_call['without']:.2f} |",
        f"| the same and the user's access token (verified, cache hit) | {p50['with']:.2f} | "
        f"{p99['with']:.2f} | {per_call['with']:.2f} |",
        "",
        f"Measured through the broker, the proof changes the round trip's p50 by "
        f"**{added:+.1f}%** (target: at most +10%), carrying the token ({len(token)} bytes) "
        "in the request's headers included; on a busy machine that figure is mostly noise. "
        f"The check itself, timed in this process: the first sight of a token costs "
        f"{first:,.0f} µs (the key set fetched from auth over RPC, the signature checked); "
        f"every later call with it **{hit:.2f} µs** (a worker's Proven over the "
        f"verified-token cache, {MICRO:,} calls), "
        f"{hit / 1000 / p50['without'] * 100:.2f}% of this run's round trip without a token.",
    ])
