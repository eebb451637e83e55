"""Brute-force defence: the delay schedule, decay, scopes and the counters' store."""

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from auth import throttle
from auth.models import LoginThrottle, Session
from shared.errors import TooManyRequests
from tests.support.auth_helpers import sqlite_database

POLICY = throttle.Policy(pair_threshold=3, client_threshold=6, account_threshold=10,
                         base_delay=1.0, max_delay=60.0, decay_seconds=10.0, known_client_days=30)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
HASH_KEY = b"k" * 32
HOLD = 15.0


def at(seconds):
    return T0 + timedelta(seconds=seconds)


def keys_for(email="ann@example.test", ip="198.51.100.1"):
    return throttle.Keys.of(HASH_KEY, email, {"ip": ip, "user_agent": "x"})


@pytest.fixture
def db(tmp_path):
    engine, sessions = sqlite_database(tmp_path)
    yield sessions
    engine.dispose()


# -- the schedule -----------------------------------------------------------------------------
def test_no_delay_below_the_threshold_then_doubling_delays():
    delays = [throttle.delay_for(level, 3, POLICY) for level in range(1, 10)]
    assert delays == [0, 0, 1, 2, 4, 8, 16, 32, 60]


def test_pressure_is_capped_so_that_it_always_decays_within_the_prune_horizon():
    level, updated = 0.0, None
    for _ in range(500):
        level, _delay = throttle.after_failure(level, updated, at(0), "pair", POLICY)
        updated = at(0)
    assert level == POLICY.pair_threshold + throttle.LEVEL_HEADROOM


def test_delay_is_capped_even_for_huge_pressure():
    assert throttle.delay_for(10_000, 3, POLICY) == POLICY.max_delay


def test_pressure_leaks_away_with_quiet_time():
    assert throttle.decayed(5.0, T0, at(0), POLICY) == 5.0
    assert throttle.decayed(5.0, T0, at(20), POLICY) == 3.0
    assert throttle.decayed(5.0, T0, at(500), POLICY) == 0.0
    assert throttle.decayed(5.0, at(10), T0, POLICY) == 5.0  # clocks a little apart


def test_failures_spread_out_slower_than_the_decay_never_throttle():
    level, updated = 0.0, None
    for n in range(50):
        level, delay = throttle.after_failure(level, updated, at(n * 11), "pair", POLICY)
        updated = at(n * 11)
        assert delay == 0
    assert level < POLICY.pair_threshold


def test_burst_of_failures_throttles_then_relaxes_after_quiet_time():
    level, updated, delays = 0.0, None, []
    for n in range(5):
        level, delay = throttle.after_failure(level, updated, at(n), "pair", POLICY)
        updated = at(n)
        delays.append(delay)
    assert delays[:2] == [0, 0] and delays[2] > 0 and delays[4] > delays[3] > delays[2]
    # after a long pause the next failure starts from a low level again
    _, later = throttle.after_failure(level, updated, at(3600), "pair", POLICY)
    assert later == 0


# -- what counts as a client ------------------------------------------------------------------
def test_ipv6_clients_are_grouped_by_their_64_prefix():
    a = throttle.client_identity({"ip": "2001:db8:1:2:aaaa::1"})
    b = throttle.client_identity({"ip": "2001:db8:1:2:ffff::9"})
    c = throttle.client_identity({"ip": "2001:db8:1:3::1"})
    assert a == b != c


def test_ipv4_mapped_ipv6_counts_as_the_ipv4_address():
    assert throttle.client_identity({"ip": "::ffff:198.51.100.1"}) == \
        throttle.client_identity({"ip": "198.51.100.1"})


def test_user_agent_does_not_split_a_client():
    assert keys_for().client == throttle.Keys.of(HASH_KEY, "ann@example.test",
                                                 {"ip": "198.51.100.1",
                                                  "user_agent": "other"}).client


def test_client_without_ip_is_named_by_its_id_or_is_anonymous():
    assert throttle.client_identity({"id": "cli"}) == "id:cli"
    assert throttle.client_identity({}) == throttle.client_identity(None) == "anonymous"


def test_keys_are_opaque_and_case_insensitive_in_the_email():
    k = keys_for("Ann@Example.test")
    assert k == keys_for("ann@example.test")
    assert "ann" not in k.account and "198.51" not in k.client
    assert len({k.account, k.client, k.pair}) == 3
    assert throttle.Keys.of(b"other-key" * 4, "ann@example.test", {}).account != k.account


# -- the store --------------------------------------------------------------------------------
def fail(sessions, keys, when, policy=POLICY):
    with sessions() as session:
        blocked = throttle.record_failure(session, keys, when, policy)
        session.commit()
        return blocked


def check(sessions, keys, when, policy=POLICY):
    """Would an attempt go ahead now? (Its reservation is rolled back: nothing changes.)"""
    with sessions() as session:
        throttle.reserve(session, keys, when, policy, hold=HOLD)


def test_account_and_client_pair_is_throttled_after_its_threshold(db):
    k = keys_for()
    assert [fail(db, k, at(0)) for _ in range(2)] == [0, 0]
    check(db, k, at(0))
    assert fail(db, k, at(0)) == 1.0
    with pytest.raises(TooManyRequests) as excinfo:
        check(db, k, at(0.2))
    assert excinfo.value.details == {"retry_after": 1}
    check(db, k, at(1.01))  # the delay has passed


def test_throttled_client_does_not_throttle_the_account_from_another_client(db):
    attacker, user = keys_for(ip="203.0.113.66"), keys_for(ip="198.51.100.1")
    for _ in range(5):
        fail(db, attacker, at(0))
    with pytest.raises(TooManyRequests):
        check(db, attacker, at(1))
    check(db, user, at(1))


def test_one_client_failing_on_many_accounts_is_throttled_everywhere(db):
    for n in range(6):
        fail(db, keys_for(email=f"user{n}@example.test"), at(0))
    with pytest.raises(TooManyRequests):
        check(db, keys_for(email="someone-else@example.test"), at(0.5))
    check(db, keys_for(email="someone-else@example.test", ip="198.51.100.200"), at(0.5))


def test_account_wide_throttle_spares_clients_that_logged_in_before(db):
    k_known = keys_for(ip="198.51.100.1")
    with db() as session:
        session.add(Session(id="s1", user_id="u1", account_key=k_known.account,
                            client_key=k_known.client, client={}, created_at=at(-3600),
                            last_used_at=at(-3600), expires_at=at(86400)))
        session.commit()
    for n in range(10):  # a guess spread over ten clients, one failure each
        fail(db, keys_for(ip=f"203.0.113.{n}"), at(0))
    with pytest.raises(TooManyRequests):
        check(db, keys_for(ip="203.0.113.200"), at(0.5))
    check(db, k_known, at(0.5))


def test_known_client_is_forgotten_after_known_client_days(db):
    k = keys_for()
    with db() as session:
        session.add(Session(id="s1", user_id="u1", account_key=k.account, client_key=k.client,
                            client={}, created_at=at(-31 * 86400), last_used_at=at(0),
                            expires_at=at(86400)))
        session.commit()
        assert not throttle.is_known_client(session, k, at(0), POLICY)
        assert throttle.is_known_client(session, k, at(-2 * 86400), POLICY)


def test_retry_after_is_the_longest_wait_of_all_scopes(db):
    k = keys_for()
    for _ in range(6):
        fail(db, k, at(0))  # pair at 6 → 8 s; client at 6 → 1 s
    with pytest.raises(TooManyRequests) as excinfo:
        check(db, k, at(0))
    assert excinfo.value.details["retry_after"] == 8


def test_block_never_shrinks_when_a_later_failure_has_a_shorter_delay(db):
    k = keys_for()
    for _ in range(5):
        fail(db, k, at(0))  # pair blocked 4 s
    fail(db, k, at(100))  # decayed to 0 + 1: no new delay
    with db() as session:
        row = session.get(LoginThrottle, ("pair", k.pair))
        assert row.blocked_until == at(4)


def test_success_clears_only_the_pair_counter(db):
    k = keys_for()
    for _ in range(2):
        fail(db, k, at(0))
    with db() as session:
        throttle.reserve(session, k, at(0), POLICY, hold=HOLD)
        throttle.release(session, k, at(0), POLICY, success=True)
        session.commit()
        scopes = set(session.scalars(sa.select(LoginThrottle.scope)))
    assert scopes == {"client", "account"}


def test_counters_are_keyed_hashes_not_emails_or_addresses(db):
    fail(db, keys_for(), at(0))
    with db() as session:
        stored = " ".join(f"{r.scope} {r.key}" for r in session.scalars(sa.select(LoginThrottle)))
    assert "example.test" not in stored and "198.51.100.1" not in stored


def test_prune_forgets_quiet_counters_but_not_blocked_ones(db):
    quiet, blocked = keys_for(email="quiet@example.test"), keys_for(email="b@example.test",
                                                                    ip="203.0.113.9")
    fail(db, quiet, at(0))
    long_policy = throttle.Policy(pair_threshold=1, client_threshold=1, account_threshold=1,
                                  base_delay=10**6, max_delay=10**6, decay_seconds=10.0)
    fail(db, blocked, at(0), long_policy)
    with db() as session:
        gone = throttle.prune(session, at(10**5), POLICY)
        session.commit()
        left = {(r.scope, r.key) for r in session.scalars(sa.select(LoginThrottle))}
    assert gone == 3
    assert left == {(s, blocked.of_scope(s)) for s in throttle.SCOPES}


def test_policy_thresholds_by_scope():
    assert [POLICY.threshold(s) for s in ("pair", "client", "account")] == [3, 6, 10]
