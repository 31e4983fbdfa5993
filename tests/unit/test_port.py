"""The port protocol and FlowControl, the one copy of back-pressure (no sockets), and the
TAP port on a pipe."""

import logging
import os

import pytest
from fakes import FakeClock, FakePort

from l2vpn.logs import RateLimitedLog
from l2vpn.node import TapPort
from l2vpn.offload import PLAIN_HDR
from l2vpn.port import STALL_S, FlowControl, Port


class TimerLoop:
    """Only the timers of an event loop, on a clock the test moves."""

    class Timer:
        def __init__(self, when, fn):
            self.when, self.fn, self.cancelled = when, fn, False

        def cancel(self):
            self.cancelled = True

    def __init__(self):
        self.clock = FakeClock()
        self.timers = []

    def call_later(self, delay_s, fn):
        t = self.Timer(self.clock() + delay_s, fn)
        self.timers.append(t)
        return t

    def advance(self, seconds):
        self.clock.advance(seconds)
        due = [t for t in self.timers if t.when <= self.clock() and not t.cancelled]
        self.timers = [t for t in self.timers if t not in due]
        for t in due:
            t.fn()


class Recorder(FlowControl):
    """A port that only records what pausing meant to it."""

    name = "rec"

    def __init__(self, loop, stall_s=STALL_S):
        super().__init__(loop, RateLimitedLog(logging.getLogger("test.port")), stall_s)
        self.io = []

    def _pause_io(self):
        self.io.append("pause")

    def _resume_io(self):
        self.io.append("resume")


@pytest.fixture
def tloop():
    return TimerLoop()


def test_pause_and_resume_reach_the_port_once_each(tloop):
    p = Recorder(tloop)
    p.pause()
    p.pause()
    assert p.paused and p.io == ["pause"]
    p.resume()
    p.resume()
    assert not p.paused and p.io == ["pause", "resume"]


def test_waiters_share_one_stall_timer_and_go_on_once_drained(tloop):
    p = Recorder(tloop, stall_s=0.5)
    a, b = FakePort("a"), FakePort("b")
    a.pause()
    b.pause()
    p.add_waiter(a)
    timer = p._stall_timer
    p.add_waiter(b)
    assert p._stall_timer is timer and len(tloop.timers) == 1
    p._drained()
    assert (a.resumes, b.resumes) == (1, 1) and not a.paused and not b.paused
    assert timer.cancelled and p._stall_timer is None and p.waiters == set()
    tloop.advance(1.0)
    assert not p.stalled and (a.resumes, b.resumes) == (1, 1)


def test_a_port_that_keeps_its_waiters_stalls_and_lets_them_go(tloop, caplog):
    p = Recorder(tloop, stall_s=0.5)
    a = FakePort("a")
    p.add_waiter(a)
    tloop.advance(0.4)
    assert not p.stalled and a.resumes == 0
    with caplog.at_level(logging.WARNING, "test.port"):
        tloop.advance(0.1)
    assert p.stalled and a.resumes == 1 and p.waiters == set() and p._stall_timer is None
    assert "rec is not reading fast enough" in caplog.text
    p._drained()                       # below low water again: no longer stalled
    assert not p.stalled


def test_a_port_without_waiters_never_stalls(tloop):
    p = Recorder(tloop, stall_s=0.5)
    p.add_waiter(FakePort("a"))
    p._release_waiters()               # as close() does
    tloop.advance(1.0)
    assert not p.stalled


# -- the TAP port, on a pipe ---------------------------------------------------------


class PipeDevice:
    """Stands in for tap.Tap: frames written to `w` are what the TAP reads."""

    def __init__(self):
        self.fd, self.w = os.pipe()
        os.set_blocking(self.fd, False)
        self.name, self.vnet_hdr, self.read_size = "tap0", False, 65536
        self.mac, self.mtu, self.offloads = bytes(6), 1500, 0

    def close(self):
        os.close(self.fd)
        os.close(self.w)


@pytest.fixture
def tap(loop):
    got = []
    port = TapPort(loop, PipeDevice(), "hub", lambda p, frame: got.append(bytes(frame)))
    port.got = got
    yield port
    port.close()


def test_the_tap_port_is_a_port(tap):
    assert isinstance(tap, Port)       # the session: test_transport
    assert {"frames_in", "bytes_in", "frames_out", "bytes_out", "drops"} <= set(tap.snapshot(0.0))


def test_a_paused_tap_is_not_read_and_a_resumed_one_is_read_at_once(tap, loop):
    os.write(tap.device.w, b"\x01" * 60)
    tap.pause()
    assert tap.device.fd not in loop._fds
    loop.call_later(0.02, loop.stop)
    loop.run()
    assert tap.got == []
    tap.resume()
    loop.call_later(0, loop.stop)
    loop.run()
    assert tap.got == [PLAIN_HDR + b"\x01" * 60] and tap.frames_in == 1


def test_on_frame_replaced_on_the_instance_takes_the_next_frames(tap, loop):
    wrapped = []
    tap.on_frame = lambda p, frame: wrapped.append(bytes(frame))   # as capture does
    os.write(tap.device.w, b"\x02" * 60)
    loop.call_later(0.02, loop.stop)
    loop.run()
    assert wrapped == [PLAIN_HDR + b"\x02" * 60] and tap.got == []
