import logging

import pytest
from fakes import FakeClock

from l2vpn.logs import DropReports, IntervalCounts, RateLimitedLog


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


# -- IntervalCounts ------------------------------------------------------------------


def test_the_first_event_of_a_key_is_due_at_once():
    ic = IntervalCounts(10.0)
    assert ic.due(0.0) == []
    ic.add("k", 3)
    assert ic.due(0.0) == [("k", 3)]
    assert ic.due(0.0) == []


def test_later_events_add_up_until_the_interval_has_passed():
    ic = IntervalCounts(10.0)
    ic.add("k", 1)
    assert ic.due(100.0) == [("k", 1)]
    for t in range(1, 10):
        ic.add("k", 2)
        assert ic.due(100.0 + t) == []
    assert ic.due(109.99) == []
    assert ic.due(110.0) == [("k", 18)]
    ic.add("k", 1)
    assert ic.due(119.0) == []          # a new interval began at 110
    assert ic.due(120.0) == [("k", 1)]


def test_interval_counts_keeps_keys_apart():
    ic = IntervalCounts(10.0)
    ic.add("a", 1)
    assert ic.due(0.0) == [("a", 1)]
    ic.add("a", 1)
    ic.add("b", 5)
    assert ic.due(1.0) == [("b", 5)]
    assert ic.due(10.0) == [("a", 1)]


def test_adding_zero_is_no_event():
    ic = IntervalCounts(10.0)
    ic.add("k", 0)
    assert ic.due(0.0) == []
    ic.add("k", 1)
    assert ic.due(0.0) == [("k", 1)]


def test_update_takes_running_totals():
    ic = IntervalCounts(10.0)
    ic.update("k", 0)
    assert ic.due(0.0) == []
    ic.update("k", 5)
    assert ic.due(0.0) == [("k", 5)]
    ic.update("k", 5)                   # no growth, no event
    ic.update("k", 8)
    ic.update("k", 12)
    assert ic.due(5.0) == []
    assert ic.due(10.0) == [("k", 7)]
    ic.update("k", 12)
    assert ic.due(30.0) == []


def test_forget_drops_every_trace_of_matching_keys():
    ic = IntervalCounts(10.0)
    for key in (("drop", "a", "runt"), ("drop", "b", "runt"), ("flap", "a")):
        ic.update(key, 4)
    assert len(ic.due(0.0)) == 3
    for key in (("drop", "a", "runt"), ("drop", "b", "runt")):
        ic.update(key, 6)
    ic.forget(lambda key: key[0] == "drop" and key[1] == "a")
    assert ic.due(10.0) == [(("drop", "b", "runt"), 2)]
    # forgotten entirely: a total seen again counts from zero and is due at once
    ic.update(("drop", "a", "runt"), 1)
    assert ic.due(10.5) == [(("drop", "a", "runt"), 1)]


def test_keys_quiet_for_two_intervals_are_pruned():
    ic = IntervalCounts(10.0)
    for i in range(100):
        ic.add(i, 1)
    assert len(ic.due(0.0)) == 100
    ic.add("busy", 1)
    ic.due(15.0)
    assert set(ic._last) == {i for i in range(100)} | {"busy"}
    ic.add("busy", 1)
    assert ic.due(20.0) == []
    assert set(ic._last) == {"busy"} and set(ic._pending) == {"busy"}
    ic.add(5, 2)
    assert ic.due(21.0) == [(5, 2)]       # a pruned key is new again: due at once
    assert ic.due(25.0) == [("busy", 1)]



def test_drop_reports_give_one_breakdown_per_subject_per_interval():
    dr = DropReports(10.0)
    dr.update("a", {"runt": 2, "oversize": 0})
    dr.update("b", {"runt": 0, "oversize": 0})
    assert dr.due(0.0) == [("a", {"runt": 2})]           # the first drops at once
    dr.update("a", {"runt": 3, "oversize": 4})
    assert dr.due(5.0) == []                              # then once per interval
    dr.update("a", {"runt": 3, "oversize": 5})
    assert dr.due(10.0) == [("a", {"runt": 1, "oversize": 5})]
    dr.update("a", {"runt": 3, "oversize": 5})
    assert dr.due(30.0) == []                             # nothing new, nothing said


def test_drop_reports_forget_a_subject_entirely():
    dr = DropReports(10.0)
    dr.update("a", {"runt": 1})
    dr.due(0.0)
    dr.update("a", {"runt": 2})
    dr.forget("a")
    assert dr.due(100.0) == []
    dr.update("a", {"runt": 1})                           # a new port of the same name
    assert dr.due(100.0) == [("a", {"runt": 1})]


def test_under_journald_lines_carry_a_priority_and_no_timestamp(tmp_path):
    import os
    from l2vpn import logs
    path = tmp_path / "journal"
    with open(path, "w") as stream:
        st = os.fstat(stream.fileno())
        root = logging.getLogger()
        saved = root.handlers[:]
        root.handlers = []
        try:
            logs.setup(stream=stream, environ={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
            log = logging.getLogger("l2vpn.test")
            log.warning("two\nlines")
            log.info("info")
            log.debug("not shown")
            log.error("bad")
        finally:
            for h in root.handlers:
                h.flush()
            root.handlers = saved
    assert path.read_text() == ("<4>l2vpn.test: two\n<4>lines\n<6>l2vpn.test: info\n"
                                "<3>l2vpn.test: bad\n")


def test_a_journal_stream_of_another_file_keeps_timestamps(tmp_path):
    from l2vpn import logs
    with open(tmp_path / "a", "w") as a, open(tmp_path / "b", "w") as b:
        st = __import__("os").fstat(b.fileno())
        assert logs.to_journal(a, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}) is False
        assert logs.to_journal(b, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}) is True
        assert logs.to_journal(b, {}) is False
