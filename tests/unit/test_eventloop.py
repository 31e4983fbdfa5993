import logging
import os
import signal
import socket

import pytest
from fakes import run_bounded

from l2vpn.eventloop import READ, WRITE, EventLoop


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


# -- timers --------------------------------------------------------------------------


def test_timers_fire_in_deadline_order(loop):
    fired = []
    loop.call_later(0.003, lambda: fired.append("c"))
    loop.call_later(0.001, lambda: fired.append("a"))
    loop.call_later(0.002, lambda: fired.append("b"))
    loop.call_later(0.004, loop.stop)
    run_bounded(loop)
    assert fired == ["a", "b", "c"]


def test_timers_with_the_same_deadline_fire_in_the_order_set(loop):
    fired = []
    for name in "abcde":
        loop.call_later(0, lambda n=name: fired.append(n))
    loop.call_later(0, loop.stop)
    run_bounded(loop)
    assert fired == list("abcde")


def test_cancelled_timer_does_not_fire(loop):
    fired = []
    loop.call_later(0.001, lambda: fired.append("kept"))
    gone = loop.call_later(0.001, lambda: fired.append("cancelled"))
    gone.cancel()
    loop.call_later(0.002, loop.stop)
    run_bounded(loop)
    assert fired == ["kept"]


def test_timer_set_by_a_timer_fires(loop):
    fired = []
    loop.call_later(0, lambda: loop.call_later(0, lambda: (fired.append(1), loop.stop())))
    run_bounded(loop)
    assert fired == [1]


def test_call_every_repeats(loop):
    ticks = []

    def tick():
        ticks.append(loop.clock())
        if len(ticks) == 4:
            loop.stop()

    loop.call_every(0.001, tick)
    run_bounded(loop)
    assert len(ticks) == 4
    assert all(b - a >= 0.001 for a, b in zip(ticks, ticks[1:]))


def test_call_every_handle_cancels_later_ticks(loop):
    ticks = []
    handle = None

    def tick():
        ticks.append(1)
        if len(ticks) == 2:
            handle.cancel()
            loop.call_later(0.005, loop.stop)   # due after a third tick would be

    handle = loop.call_every(0.001, tick)
    run_bounded(loop)
    assert len(ticks) == 2


def test_an_exception_in_a_callback_is_logged_and_the_loop_carries_on(loop, pair, caplog):
    a, b = pair
    fired = []

    def bad_read(_mask):
        a.recv(10)
        raise RuntimeError("read bug")

    loop.watch(a, READ, bad_read)
    loop.call_later(0, lambda: 1 / 0)
    loop.want_flush("k", lambda: [][1])
    loop.again(object(), lambda _m: {}["x"])
    loop.call_later(0.001, lambda: (fired.append(1), loop.stop()))
    b.send(b"x")
    with caplog.at_level(logging.ERROR, logger="l2vpn.eventloop"):
        run_bounded(loop)
    assert fired == [1]
    kinds = sorted(r.exc_info[0].__name__ for r in caplog.records if r.exc_info)
    assert kinds == ["IndexError", "KeyError", "RuntimeError", "ZeroDivisionError"]


def test_call_every_keeps_repeating_after_fn_raises(loop, caplog):
    ticks = []

    def tick():
        ticks.append(1)
        if len(ticks) == 1:
            loop.call_later(0.05, loop.stop)    # due well after two more ticks would be
            raise RuntimeError("one bad tick")
        if len(ticks) == 3:
            loop.stop()

    loop.call_every(0.001, tick)
    with caplog.at_level(logging.CRITICAL, logger="l2vpn.eventloop"):
        run_bounded(loop)
    assert len(ticks) == 3


# -- end-of-pass flushing ------------------------------------------------------------


def test_want_flush_runs_once_per_pass_per_key(loop):
    log = []
    token = object()

    def flush():
        log.append("flush")

    def first(_mask):
        log.append("first")
        for _ in range(3):
            loop.want_flush("k", flush)
        loop.again(token, second)

    def second(_mask):
        log.append("second")
        loop.want_flush("k", flush)
        loop.want_flush("k", flush)
        loop.stop()

    loop.again(token, first)
    run_bounded(loop)
    assert log == ["first", "flush", "second", "flush"]


def test_want_flush_keys_are_independent_and_a_flush_may_ask_for_another(loop):
    log = []
    loop.want_flush("a", lambda: (log.append("a"), loop.want_flush("c", lambda: log.append("c"))))
    loop.want_flush("b", lambda: log.append("b"))
    loop.want_flush("a", lambda: (log.append("a2"), loop.want_flush("c", lambda: log.append("c"))))
    loop.call_later(0, loop.stop)
    run_bounded(loop)
    # The last fn asked for under a key wins; the chained flush runs in the same pass.
    assert log == ["a2", "b", "c"]


# -- readiness -----------------------------------------------------------------------


def test_watch_delivers_read_and_forget_stops_it(loop, pair):
    a, b = pair
    got = []

    def on_read(mask):
        got.append((mask, a.recv(100)))
        loop.forget(a)
        b.send(b"second")               # unwatched now: must not call us again
        loop.call_later(0, loop.stop)

    loop.watch(a, READ, on_read)
    b.send(b"first")
    run_bounded(loop)
    assert got == [(READ, b"first")]
    assert a.recv(100) == b"second"


def test_watch_with_no_events_unwatches(loop, pair):
    a, b = pair
    got = []
    loop.watch(a, READ, lambda m: got.append(m))
    loop.watch(a, 0, None)
    b.send(b"x")
    loop.call_later(0, loop.stop)
    run_bounded(loop)
    assert got == []


def test_watch_again_changes_the_callback_and_events(loop, pair):
    a, b = pair
    got = []
    loop.watch(a, READ, lambda m: got.append(("old", m)))
    loop.watch(a, WRITE, lambda m: (got.append(("new", m)), loop.stop()))
    run_bounded(loop)
    assert got == [("new", WRITE)]


def test_forget_of_an_unknown_or_closed_object_is_harmless(loop, pair):
    a, _ = pair
    loop.forget(a)
    c, d = socket.socketpair()
    loop.watch(c, READ, lambda m: None)
    c.close()
    d.close()
    loop.forget(c)


def test_again_runs_next_pass_without_readiness(loop, pair):
    a, _ = pair                          # nothing to read on `a`
    got = []
    loop.again(a, lambda mask: (got.append(mask), loop.stop()))
    run_bounded(loop)
    assert got == [READ]


def test_again_runs_once(loop):
    token = object()
    got = []
    loop.again(token, lambda mask: got.append(mask))
    loop.again(token, lambda mask: got.append(mask))   # same key: still once
    loop.call_later(0.005, loop.stop)
    run_bounded(loop)
    assert got == [READ]


def test_forget_cancels_a_pending_again(loop, pair):
    a, _ = pair
    got = []
    loop.again(a, lambda mask: got.append(mask))
    loop.forget(a)
    loop.call_later(0, loop.stop)
    run_bounded(loop)
    assert got == []


# -- signals and stopping ------------------------------------------------------------


def test_on_signal_delivers_a_signal(loop):
    old = signal.getsignal(signal.SIGUSR1)
    got = []
    try:
        loop.on_signal(signal.SIGUSR1, lambda: (got.append("usr1"), loop.stop()))
        loop.call_later(0, lambda: os.kill(os.getpid(), signal.SIGUSR1))
        run_bounded(loop)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert got == ["usr1"]


def test_close_releases_the_signal_wakeup_fd():
    lp = EventLoop()
    old = signal.getsignal(signal.SIGUSR2)
    try:
        lp.on_signal(signal.SIGUSR2, lambda: None)
    finally:
        lp.close()
        signal.signal(signal.SIGUSR2, old)
    assert signal.set_wakeup_fd(-1) == -1


def test_stop_ends_run_and_run_can_start_again(loop):
    passes = []
    loop.call_later(0, lambda: (passes.append(1), loop.stop()))
    run_bounded(loop)
    loop.call_later(0, lambda: (passes.append(2), loop.stop()))
    run_bounded(loop)
    assert passes == [1, 2]


def test_stop_from_a_read_callback(loop, pair):
    a, b = pair
    loop.watch(a, READ, lambda m: loop.stop())
    b.send(b"x")
    run_bounded(loop)


def test_run_bounded_fails_when_nothing_stops_the_loop(loop):
    with pytest.raises(AssertionError, match="not stopped"):
        run_bounded(loop, timeout_s=0.01)


def test_rest_stops_watching_for_a_while_then_watches_again(loop):
    a, b = socket.socketpair()
    calls = []
    try:
        b.send(b"x")                                  # a stays readable throughout
        def on_read(_mask):
            calls.append(loop.clock())
            loop.rest(a, on_read, 0.1)
            if len(calls) == 2:
                loop.stop()
        loop.watch(a, READ, on_read)
        loop.call_later(2, loop.stop)
        loop.run()
    finally:
        a.close()
        b.close()
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.1
