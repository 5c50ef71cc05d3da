"""The restart policy on its own: backoff growth, cap, jitter, reset and giving up."""

from __future__ import annotations

from lsif_agg.supervise.restart import JITTER, RestartPolicy


def policy(max_early_exits: int = 3) -> RestartPolicy:
    return RestartPolicy(
        backoff_initial=1.0,
        backoff_max=5.0,
        early_exit_seconds=10.0,
        max_early_exits=max_early_exits,
    )


def test_backoff_doubles_up_to_cap() -> None:
    restart = policy(max_early_exits=0)
    expected = [1.0, 2.0, 4.0, 5.0, 5.0]
    for full in expected:
        restart.record_exit(0.1)
        delay = restart.next_delay()
        assert full * (1 - JITTER) <= delay <= full, (restart.failures, delay)


def test_backoff_resets_after_long_run() -> None:
    restart = policy()
    restart.record_exit(0.1)
    restart.record_exit(0.1)

    restart.record_exit(60.0)

    assert restart.early_exits == 0
    assert restart.next_delay() <= 1.0
    assert not restart.should_give_up


def test_gives_up_after_limit() -> None:
    restart = policy(max_early_exits=3)
    for _ in range(2):
        restart.record_exit(0.1)
        assert not restart.should_give_up

    restart.record_exit(0.1)

    assert restart.should_give_up


def test_zero_limit_never_gives_up() -> None:
    restart = policy(max_early_exits=0)
    for _ in range(1000):
        restart.record_exit(0.0)

    assert not restart.should_give_up
    assert restart.next_delay() <= 5.0


def test_busy_port_grows_delay_only() -> None:
    restart = policy(max_early_exits=1)
    for _ in range(4):
        restart.record_busy_port()

    assert not restart.should_give_up
    assert restart.next_delay() >= 5.0 * (1 - JITTER)
