"""The supervisor restarts a child that ran healthily at once, and backs off only
for a crash loop."""

from __future__ import annotations

from ops.supervisor import HEALTHY_SECONDS, restart_delay


def test_a_healthy_child_that_dies_is_back_at_once_however_often() -> None:
    restarts = 0
    for _ in range(3):  # three kill -9 within a minute, 20 s apart
        delay, restarts = restart_delay(20.0, restarts)
        assert delay == 0.0 and restarts == 0


def test_a_crash_loop_backs_off_doubling_to_thirty_seconds() -> None:
    restarts, delays = 0, []
    for _ in range(8):
        delay, restarts = restart_delay(1.0, restarts)
        delays.append(delay)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    delay, restarts = restart_delay(HEALTHY_SECONDS, restarts)  # it came up and stayed up
    assert (delay, restarts) == (0.0, 0)
