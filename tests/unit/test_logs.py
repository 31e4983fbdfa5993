import logging

import pytest
from fakes import FakeClock

from l2vpn.logs import RateLimitedLog


class ListLogger:
    """Just the Logger.log signature, keeping (level, formatted line)."""

    def __init__(self):
        self.lines = []

    def log(self, level, msg, *args):
        self.lines.append((level, msg % args if args else msg))

    def texts(self):
        return [text for _, text in self.lines]


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def logger():
    return ListLogger()


def limiter(logger, clock, burst=3, window_s=10.0):
    return RateLimitedLog(logger, burst=burst, window_s=window_s, clock=clock)


def test_burst_passes_then_lines_are_suppressed(logger, clock):
    rl = limiter(logger, clock)
    for i in range(10):
        rl.warning("refused", "refused %d", i)
        clock.advance(0.1)
    assert logger.texts() == ["refused 0", "refused 1", "refused 2"]


def test_summary_with_suppressed_count_after_the_window(logger, clock):
    rl = limiter(logger, clock)
    for i in range(10):
        rl.warning("refused", "refused %d", i)
    clock.advance(10.0)
    rl.warning("refused", "refused %d", 10)
    assert logger.texts() == ["refused 0", "refused 1", "refused 2",
                              "7 more like: refused", "refused 10"]
    assert {level for level, _ in logger.lines} == {logging.WARNING}


def test_new_window_has_a_fresh_burst(logger, clock):
    rl = limiter(logger, clock)
    for i in range(5):
        rl.info("k", "a%d", i)
    clock.advance(10.5)
    for i in range(5):
        rl.info("k", "b%d", i)
    assert logger.texts() == ["a0", "a1", "a2", "2 more like: k", "b0", "b1", "b2"]
    assert {level for level, _ in logger.lines} == {logging.INFO}


def test_no_summary_when_nothing_was_suppressed(logger, clock):
    rl = limiter(logger, clock)
    rl.warning("k", "one")
    clock.advance(60)
    rl.warning("k", "two")
    assert logger.texts() == ["one", "two"]


def test_window_not_yet_over_keeps_suppressing(logger, clock):
    rl = limiter(logger, clock, burst=1)
    rl.warning("k", "one")
    clock.advance(9.99)
    rl.warning("k", "two")
    assert logger.texts() == ["one"]


def test_keys_are_independent(logger, clock):
    rl = limiter(logger, clock, burst=2)
    for i in range(4):
        rl.warning("a", "a%d", i)
        rl.warning("b", "b%d", i)
    assert logger.texts() == ["a0", "b0", "a1", "b1"]
    clock.advance(10)
    rl.warning("b", "b-late")
    assert logger.texts()[4:] == ["2 more like: b", "b-late"]


def test_arguments_are_passed_to_the_logger_unformatted():
    seen = []

    class Recorder:
        def log(self, level, msg, *args):
            seen.append((level, msg, args))

    RateLimitedLog(Recorder(), clock=FakeClock()).warning("k", "from %s: %s", "1.2.3.4", "bad")
    assert seen == [(logging.WARNING, "from %s: %s", ("1.2.3.4", "bad"))]


def test_works_with_a_real_logger(caplog, clock):
    rl = RateLimitedLog(logging.getLogger("l2vpn.test"), burst=1, clock=clock)
    with caplog.at_level(logging.INFO, logger="l2vpn.test"):
        rl.info("k", "hello %s", "there")
        rl.info("k", "dropped")
    assert [r.getMessage() for r in caplog.records] == ["hello there"]


def test_expired_keys_are_pruned_when_the_cap_is_reached(logger, clock):
    rl = RateLimitedLog(logger, clock=clock, max_keys=4)
    for i in range(4):
        rl.warning(f"key{i}", "line")
    assert len(rl._windows) == 4
    clock.advance(10.0)
    rl.warning("fresh", "line")
    assert set(rl._windows) == {"fresh"}


def test_pruning_keeps_keys_inside_their_window(logger, clock):
    rl = RateLimitedLog(logger, clock=clock, max_keys=4)
    for i in range(3):
        rl.warning(f"old{i}", "line")
    clock.advance(5.0)
    rl.warning("young", "line")
    assert len(rl._windows) == 4
    clock.advance(5.0)
    rl.warning("young2", "line")             # at the cap: the old keys' windows have ended
    assert set(rl._windows) == {"young", "young2"}


def test_memory_is_bounded_even_for_many_keys_in_one_window(logger, clock):
    rl = limiter(logger, clock)
    for i in range(5000):
        rl.warning(f"refused:peer {i}", "line")
    assert len(rl._windows) <= rl.max_keys == 256
