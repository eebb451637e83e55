"""shared/backoff.py: the one retry schedule of the kernel."""

from shared.backoff import NO_JITTER, WIDE_JITTER, Backoff


def test_backoff_grows_exponentially_with_jitter_and_is_capped():
    lowest = Backoff(initial=0.5, maximum=4.0, rng=lambda: 0.0)
    highest = Backoff(initial=0.5, maximum=4.0, rng=lambda: 1.0)
    assert [lowest.next() for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert [highest.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    highest.reset()
    assert highest.next() == 0.5


def test_backoff_jitter_spreads_retries():
    backoff = Backoff(initial=1.0, maximum=1.0)
    delays = {round(backoff.next(), 6) for _ in range(20)}
    assert len(delays) > 1 and all(0.5 <= d <= 1.0 for d in delays)


def test_a_delay_without_jitter_is_the_plain_schedule_and_keeps_no_state():
    backoff = Backoff(initial=0.2, maximum=2.0, jitter=NO_JITTER)
    assert [backoff.delay(n) for n in range(6)] == [0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    assert backoff.attempt == 0 and backoff.delay(10_000) == 2.0


def test_wide_jitter_spreads_around_the_ceiling_by_its_factor():
    assert Backoff(1.0, 8.0, factor=3.0, jitter=WIDE_JITTER, rng=lambda: 0.0).delay(1) == 1.5
    assert Backoff(1.0, 8.0, factor=3.0, jitter=WIDE_JITTER, rng=lambda: 1.0).delay(2) == 12.0
