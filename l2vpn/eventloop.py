"""One event loop per process: epoll readiness, timers, signals and end-of-pass flushing.

Theory of operation. Each pass waits for readiness (or the next timer), runs the ready
callbacks, then calls every flush hook that asked for it. Readers only enqueue: a TAP
read or a TLS read may put frames into many output buffers, and the flush at the end of
the pass turns each buffer into one large TLS write. That batching is what makes Python
fast enough here (ANCHORS.md: ~3x over one write per frame).
"""

import heapq
import itertools
import logging
import select
import selectors
import signal
import socket
import time

log = logging.getLogger("l2vpn.eventloop")

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE
_EPOLL_OF = {0: 0, READ: select.EPOLLIN, WRITE: select.EPOLLOUT,
             READ | WRITE: select.EPOLLIN | select.EPOLLOUT}
_NOT_IN = ~select.EPOLLIN
_NOT_OUT = ~select.EPOLLOUT


class Timer:
    __slots__ = ("when", "fn", "cancelled")

    def __init__(self, when, fn):
        self.when = when
        self.fn = fn
        self.cancelled = False

    def cancel(self):
        self.cancelled = True


class EventLoop:
    """Readiness callbacks `fn(mask)`, timers `fn()`, and flush hooks run once per pass."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        # epoll itself, not `selectors`: its wrapper costs microseconds on every wake-up,
        # and a frame crossing the VPN wakes three processes each way.
        self._epoll = select.epoll()
        self._fds = {}   # fd -> [fileobj, events, fn]
        self._timers = []
        self._seq = itertools.count()
        self._flush = {}
        self._again = {}
        self._running = False
        self._signals = {}
        self._wake_r = self._wake_w = None

    # -- readiness -------------------------------------------------------------------
    def watch(self, fileobj, events, fn):
        """Start, change or (events=0) stop watching `fileobj`."""
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        if fd < 0:
            raise ValueError(f"cannot watch {fileobj!r}: it is closed")
        entry = self._fds.get(fd)
        if not events:
            if entry is not None:
                del self._fds[fd]
                self._epoll.unregister(fd)
            return
        if entry is None:
            self._epoll.register(fd, _EPOLL_OF[events])
            self._fds[fd] = [fileobj, events, fn]
        elif entry[1] != events or entry[2] is not fn:
            if entry[1] != events:
                self._epoll.modify(fd, _EPOLL_OF[events])
            entry[:] = (fileobj, events, fn)

    def forget(self, fileobj):
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        if fd < 0:   # closed already: find it by identity
            fd = next((f for f, e in self._fds.items() if e[0] is fileobj), -1)
        if self._fds.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass
        self._again.pop(id(fileobj), None)

    def rest(self, fileobj, fn, seconds):
        """Stop watching `fileobj` for a while, then watch it for READ with `fn` again: for
        a listener that stays readable while accept() fails (out of file descriptors)."""
        self.watch(fileobj, 0, None)

        def wake():
            if fileobj.fileno() >= 0:
                self.watch(fileobj, READ, fn)
        self.call_later(seconds, wake)

    def again(self, fileobj, fn):
        """Run `fn(READ)` next pass without waiting: for data OpenSSL holds that epoll cannot see."""
        self._again[id(fileobj)] = fn

    # -- timers ----------------------------------------------------------------------
    def call_later(self, delay_s, fn):
        t = Timer(self.clock() + delay_s, fn)
        heapq.heappush(self._timers, (t.when, next(self._seq), t))
        return t

    def call_every(self, interval_s, fn):
        """Run `fn()` every `interval_s` until the returned handle is cancelled."""
        handle = Timer(None, fn)

        def tick():
            if not handle.cancelled:
                self.call_later(interval_s, tick)  # re-armed first: a raise in fn must not end it
                fn()
        self.call_later(interval_s, tick)
        return handle

    # -- flushing --------------------------------------------------------------------
    def want_flush(self, key, fn):
        """Ask for `fn()` once at the end of this pass (idempotent per key)."""
        self._flush[key] = fn

    # -- signals ---------------------------------------------------------------------
    def on_signal(self, signum, fn):
        if self._wake_r is None:
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
            self.watch(self._wake_r, READ, self._drain_signals)
        self._signals[signum] = fn
        signal.signal(signum, lambda *_: None)

    def _drain_signals(self, _mask):
        try:
            data = self._wake_r.recv(64)
        except BlockingIOError:
            return
        for signum in data:
            fn = self._signals.get(signum)
            if fn is not None:
                fn()

    # -- running ---------------------------------------------------------------------
    def stop(self):
        self._running = False

    def run(self):
        self._running = True
        poll, fds, timers, clock = self._epoll.poll, self._fds, self._timers, self.clock
        while self._running:
            if self._again or self._flush:
                timeout = 0
            elif timers:
                timeout = max(0.0, timers[0][0] - clock())
            else:
                timeout = -1
            try:
                ready = poll(timeout)
            except InterruptedError:
                continue
            for fd, ev in ready:
                entry = fds.get(fd)
                if entry is not None:   # an earlier callback this pass may have dropped it
                    mask = (WRITE if ev & _NOT_IN else 0) | (READ if ev & _NOT_OUT else 0)
                    try:                # _call, inlined: this runs for every wake-up
                        entry[2](mask & entry[1])
                    except Exception:
                        log.exception("internal error in %r; carrying on", entry[2])
            if self._again:
                again, self._again = self._again, {}
                for fn in again.values():
                    self._call(fn, READ)
            if timers:
                now = clock()
                while timers and timers[0][0] <= now:
                    t = heapq.heappop(timers)[2]
                    if not t.cancelled:
                        self._call(t.fn)
            while self._flush:
                pending, self._flush = self._flush, {}
                for fn in pending.values():
                    self._call(fn)

    @staticmethod
    def _call(fn, *args):
        # A bug met by one peer's traffic must not stop the loop that serves all the others.
        try:
            fn(*args)
        except Exception:
            log.exception("internal error in %r; carrying on", fn)

    def close(self):
        if self._wake_r is not None:
            signal.set_wakeup_fd(-1)
            self._wake_r.close()
            self._wake_w.close()
        self._epoll.close()

