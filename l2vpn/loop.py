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
import selectors
import signal
import socket
import time

log = logging.getLogger("l2vpn.loop")

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE


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
        self._sel = selectors.DefaultSelector()
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
        try:
            key = self._sel.get_key(fileobj)
        except (KeyError, ValueError):
            key = None
        if not events:
            if key is not None:
                self._sel.unregister(fileobj)
            return
        if key is None:
            self._sel.register(fileobj, events, fn)
        elif key.events != events or key.data is not fn:
            self._sel.modify(fileobj, events, fn)

    def forget(self, fileobj):
        try:
            self._sel.unregister(fileobj)
        except (KeyError, ValueError):
            pass
        self._again.pop(id(fileobj), None)

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
        sel, timers, clock = self._sel, self._timers, self.clock
        while self._running:
            if self._again or self._flush:
                timeout = 0
            elif timers:
                timeout = max(0.0, timers[0][0] - clock())
            else:
                timeout = None
            for key, mask in sel.select(timeout):
                self._call(key.data, mask)
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
        self._sel.close()

