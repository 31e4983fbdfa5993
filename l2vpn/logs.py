"""Logging set-up, and a limiter so a hostile peer cannot flood the log."""

import logging
import os
import sys
import time

# syslog priorities journald reads from a "<N>" line prefix (sd-daemon.h)
JOURNAL_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                    logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """`<N>name: message`: journald stamps the time itself and files the priority."""

    def format(self, record):
        prio = JOURNAL_PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING
                                    else 3)
        return "\n".join(f"<{prio}>{line}" for line in super().format(record).splitlines())


def to_journal(stream, environ=None) -> bool:
    """True when `stream` is the journal systemd gave us (JOURNAL_STREAM is its dev:inode)."""
    env = os.environ if environ is None else environ
    try:
        dev, ino = (int(x) for x in env.get("JOURNAL_STREAM", "").split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def setup(verbose: bool = False, stream=None, environ=None) -> None:
    """Our own debug lines with -v; libraries (pyroute2) stay at warnings."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JournalFormatter("%(name)s: %(message)s")
                         if to_journal(stream, environ) else
                         logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    global _verbose
    _verbose = verbose
    logging.getLogger("l2vpn").setLevel(logging.DEBUG if verbose else logging.INFO)


_verbose = False
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


def set_level(name: str) -> None:
    """The config's log.level (at start and on reload); -v on the command line wins."""
    if not _verbose:
        logging.getLogger("l2vpn").setLevel(LEVELS[name])


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


class IntervalCounts:
    """Counts per key, reported at most once per `interval_s`: the first event of a key is
    due at once, later ones add up until the interval has passed. So a flood of drops
    or a flapping MAC makes one line per interval, not one per frame."""

    def __init__(self, interval_s: float = 10.0):
        self.interval_s = interval_s
        self._pending = {}   # key -> count not yet reported
        self._last = {}      # key -> when it was last reported
        self._totals = {}    # key -> the running total update() saw last

    def add(self, key, count: int) -> None:
        if count:
            self._pending[key] = self._pending.get(key, 0) + count

    def update(self, key, total: int) -> None:
        """Add the growth of a running total since the last update of `key`."""
        before = self._totals.get(key, 0)
        if total != before:
            self._totals[key] = total
            self.add(key, total - before)

    def due(self, now: float) -> list:
        """[(key, count)] to report now; those keys start a new interval."""
        out = []
        for key, count in list(self._pending.items()):
            last = self._last.get(key)
            if last is None or now - last >= self.interval_s:
                out.append((key, count))
                del self._pending[key]
                self._last[key] = now
        for key in [k for k, t in self._last.items()
                    if now - t >= 2 * self.interval_s and k not in self._pending]:
            del self._last[key]
        return out

    def forget(self, pred) -> None:
        """Drop every key `pred(key)` holds for (a port that is gone)."""
        for table in (self._pending, self._last, self._totals):
            for key in [k for k in table if pred(k)]:
                del table[key]


class DropReports:
    """Drop counters per subject (a port), {reason: running total}, reported at most once
    per `interval_s` per subject, as {reason: count since that subject's last report}, so
    a port dropping for several reasons still makes one line per interval."""

    def __init__(self, interval_s: float = 10.0):
        self._counts = IntervalCounts(interval_s)
        self._latest = {}   # subject -> the totals update() saw last
        self._told = {}     # subject -> the totals when it was last reported

    def update(self, subject, totals: dict) -> None:
        self._counts.update(subject, sum(totals.values()))
        self._latest[subject] = totals

    def due(self, now: float) -> list:
        """[(subject, {reason: count})] to report now."""
        out = []
        for subject, _count in self._counts.due(now):
            totals = self._latest[subject]
            told = self._told.get(subject, {})
            out.append((subject, {r: n - told.get(r, 0) for r, n in totals.items()
                                  if n != told.get(r, 0)}))
            self._told[subject] = dict(totals)
        return out

    def forget(self, subject) -> None:
        self._counts.forget(lambda key: key is subject)
        self._latest.pop(subject, None)
        self._told.pop(subject, None)
