"""Security: credential stuffing (issue 9, item 8).

1,000 wrong logins through the gateway, from many clients (X-Forwarded-For, with the gateway
trusting one proxy) over many accounts, in three shapes at once:

- stuffing: 5 clients x 100 attempts over 40 accounts (existing and not);
- spraying: 100 clients x 4 attempts at one account ("victim");
- guessing: 1 client x 100 attempts at another account ("target").

The gateway's per-IP limit for the auth routes is the production one (20/minute per process);
auth's brute-force throttle has its production thresholds. Everything is refused with 401 or
429, every 429 says when to come back, few attempts ever reach a password check, and the real
users still log in from their own clients.
"""

import random
import threading
import time
import uuid
from collections import Counter, defaultdict

import pytest
import requests

from tests.support.fault_helpers import PASSWORD, record
from tests.support.platform import API, platform_fixture

platform = platform_fixture(name="sec-stuffing", gateway_env={
    "GATEWAY_TRUSTED_PROXIES": "1", "GATEWAY_RATE_LIMIT_AUTH_IP": "20/minute;200/hour"})

STUFFERS = [f"203.0.113.{i}" for i in range(1, 6)]
SPRAYERS = [f"198.18.{i // 250}.{i % 250 + 1}" for i in range(100)]
GUESSER = "192.0.2.66"
VICTIM_HOME = "198.51.100.7"  # where the victim logged in before the attack
TARGET_NEW_CLIENT = "198.51.100.99"
THREADS = 10


def login(base_url, email, password, ip, http=requests):
    return http.post(f"{base_url}{API}/auth/login", timeout=30,
                     json={"email": email, "password": password},
                     headers={"X-Forwarded-For": ip})


@pytest.fixture(scope="module")
def accounts(platform):
    client = platform.rpc_client()
    emails = [f"stuffed-{i}-{uuid.uuid4().hex[:6]}@example.test" for i in range(30)]
    for email in emails:
        client.call("identity", "create_user", kwargs={"data": {
            "email": email, "password": PASSWORD, "display_name": "Stuffed"}})
    ghosts = [f"ghost-{i}-{uuid.uuid4().hex[:6]}@example.test" for i in range(10)]
    return {"existing": emails, "all": emails + ghosts, "victim": emails[0],
            "target": emails[1], "bystander": emails[2]}


def attack_plan(accounts):
    attempts = []
    for ip in STUFFERS:
        attempts += [("stuffing", ip, random.choice(accounts["all"])) for _ in range(100)]
    for ip in SPRAYERS:
        attempts += [("spraying", ip, accounts["victim"]) for _ in range(4)]
    attempts += [("guessing", GUESSER, accounts["target"]) for _ in range(100)]
    random.shuffle(attempts)
    return attempts


def run(base_url, attempts):
    results, lock, queue = [], threading.Lock(), list(attempts)

    def worker():
        http = requests.Session()
        while True:
            with lock:
                if not queue:
                    break
                shape, ip, email = queue.pop()
            response = login(base_url, email, f"Wrong-{uuid.uuid4().hex[:8]}", ip, http)
            with lock:
                results.append((shape, ip, email, response))
        http.close()

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def source(response):
    """Who refused a 429: the gateway's rate limit or auth's brute-force throttle."""
    detail = response.json()["detail"]
    if detail.startswith("rate limit exceeded"):
        return "gateway"
    if detail.startswith("too many failed logins"):
        return "auth"
    return detail


def test_a_thousand_wrong_logins_are_throttled_and_real_users_still_get_in(platform, accounts):
    base = platform.base_url
    # the victim's usual client, known to auth from an earlier login
    assert login(base, accounts["victim"], PASSWORD, VICTIM_HOME).status_code == 200

    attempts = attack_plan(accounts)
    assert len(attempts) == 1000
    started = time.monotonic()
    results = run(base, attempts)
    elapsed = time.monotonic() - started
    assert len(results) == 1000
    # a stuffing client is refused whatever account it tries — asked at once, while its
    # block (and the gateway's per-minute window) from the attack still holds
    stuffer = login(base, accounts["bystander"], PASSWORD, STUFFERS[0])
    assert stuffer.status_code == 429 and int(stuffer.headers["Retry-After"]) >= 1

    statuses = Counter(r.status_code for *_, r in results)
    assert set(statuses) <= {401, 429}, statuses  # nobody got in, nothing broke
    checked = defaultdict(Counter)  # shape -> client -> attempts that reached a password check
    refusals = Counter()
    for shape, ip, _, response in results:
        if response.status_code == 401:
            checked[shape][ip] += 1
            continue
        assert response.headers["Content-Type"] == "application/problem+json"
        retry_after = response.headers["Retry-After"]
        assert retry_after.isdigit() and int(retry_after) >= 1, retry_after
        refusals[source(response)] += 1
    # both layers took part: the gateway's per-IP limit and auth's throttle
    assert refusals["gateway"] > 0 and refusals["auth"] > 0, refusals
    assert set(refusals) == {"gateway", "auth"}, refusals
    # few attempts reach a password check: each scope stops its shape near its threshold
    # (20 per client, 5 per account and client, 50 per account), plus the attempts let
    # through when a short block ends and those already in flight when it began
    assert max(checked["stuffing"].values()) <= 20 + THREADS + 5, checked["stuffing"]
    assert checked["guessing"][GUESSER] <= 5 + THREADS + 5, checked["guessing"]
    assert sum(checked["spraying"].values()) <= 50 + THREADS + 10, checked["spraying"]
    reached = sum(sum(c.values()) for c in checked.values())
    assert statuses[429] >= 600, statuses

    # the real users: the victim from the client they always use, the target from a new one
    assert login(base, accounts["victim"], PASSWORD, VICTIM_HOME).status_code == 200
    assert login(base, accounts["target"], PASSWORD, TARGET_NEW_CLIENT).status_code == 200
    # what the throttle is for: the sprayed account is closed to clients it has never seen
    new_client = login(base, accounts["victim"], PASSWORD, "198.51.100.200")
    assert new_client.status_code == 429 and int(new_client.headers["Retry-After"]) >= 1
    # while the bystander logs in from anywhere else
    assert login(base, accounts["bystander"], PASSWORD, "198.51.100.150").status_code == 200

    record("credential_stuffing", {
        "attempts": len(results), "seconds": round(elapsed, 1),
        "answers": dict(statuses), "429 by layer": dict(refusals),
        "password checks reached": reached,
        "max checks per stuffing client": max(checked["stuffing"].values()),
        "checks of the guessed account": checked["guessing"][GUESSER],
        "checks of the sprayed account": sum(checked["spraying"].values()),
    })
