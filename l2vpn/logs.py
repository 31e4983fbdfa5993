"""Logging set-up, and a limiter so a hostile peer cannot flood the log."""

import logging
import sys
import time


def setup(verbose: bool = False) -> None:
    """Our own debug lines with -v; libraries (pyroute2) stay at warnings."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    logging.getLogger("l2vpn").setLevel(logging.DEBUG if verbose else logging.INFO)


class RateLimitedLog:
    """At most `burst` lines per key per `window_s`; later lines are counted, then summarised."""

    def __init__(self, logger, burst: int = 5, window_s: float = 10.0, clock=time.monotonic,
                 max_keys: int = 256):
        self.max_keys = max_keys
        self.logger = logger
        self.burst = burst
        self.window_s = window_s
        self.clock = clock
        self._windows = {}

    def log(self, level: int, key: str, msg: str, *args) -> None:
        now = self.clock()
        start, count, suppressed = self._windows.get(key, (now, 0, 0))
        if now - start >= self.window_s:
            if suppressed:
                self.logger.log(level, "%d more like: %s", suppressed, key)
            start, count, suppressed = now, 0, 0
        if count < self.burst:
            self.logger.log(level, msg, *args)
            count += 1
        else:
            suppressed += 1
        if key not in self._windows and len(self._windows) >= self.max_keys:
            self._windows = {k: v for k, v in self._windows.items() if now - v[0] < self.window_s}
            while len(self._windows) >= self.max_keys:
                del self._windows[next(iter(self._windows))]
        self._windows[key] = (start, count, suppressed)

    def warning(self, key: str, msg: str, *args) -> None:
        self.log(logging.WARNING, key, msg, *args)

    def info(self, key: str, msg: str, *args) -> None:
        self.log(logging.INFO, key, msg, *args)
