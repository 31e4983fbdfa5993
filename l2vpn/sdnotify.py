"""systemd's readiness and watchdog protocol, spoken directly (no dependency).

A service with `Type=notify` gets `$NOTIFY_SOCKET`: a Unix datagram socket (a leading `@`
names an abstract one) to which it sends newline-separated `KEY=value` lines: `READY=1`
once it serves, `STATUS=...` for `systemctl status`, `WATCHDOG=1` at least every
`$WATCHDOG_USEC` (or systemd kills and restarts it), `STOPPING=1` on the way out.

The socket is connected when the notifier is made, before the node drops privileges, and
a failed send is logged once and otherwise ignored: telling systemd must never stop the
node.
"""

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages; `from_environ()` gives None outside systemd."""

    def __init__(self, address: str, watchdog_usec: int | None = None):
        self.address = address
        self.watchdog_s = watchdog_usec / 1e6 if watchdog_usec else None
        target = "\0" + address[1:] if address.startswith("@") else address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setblocking(False)
        self.sock.connect(target)
        self._status = None
        self._failed = False

    @classmethod
    def from_environ(cls, environ=None) -> "Notifier | None":
        """The notifier systemd asked for, or None when not run as a notify service."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET")
        if not address:
            return None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        watchdog = int(usec) if usec and usec.isdigit() and int(usec) > 0 and \
            (not pid or pid == str(os.getpid())) else None
        try:
            return cls(address, watchdog)
        except OSError as e:
            log.warning("cannot reach systemd's notify socket %s: %s", address, e)
            return None

    def send(self, **fields) -> None:
        data = "".join(f"{k}={v}\n" for k, v in fields.items()).encode()
        try:
            self.sock.send(data)
        except OSError as e:
            if not self._failed:
                self._failed = True
                log.warning("cannot notify systemd at %s: %s", self.address, e)

    def ready(self, status: str) -> None:
        self._status = status
        self.send(READY=1, STATUS=status)

    def status(self, status: str) -> None:
        """Tell systemd a new one-line summary, if it changed."""
        if status != self._status:
            self._status = status
            self.send(STATUS=status)

    def reloading(self) -> None:
        """A reload begins; ready() says it is over. MONOTONIC_USEC is what systemd's
        notify-reload wants with it (newer than Debian 12's 252, harmless there)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send(RELOADING=1, MONOTONIC_USEC=usec, STATUS="reloading the config")

    def watchdog(self) -> None:
        self.send(WATCHDOG=1)

    def stopping(self, why: str) -> None:
        self.send(STOPPING=1, STATUS=f"stopping ({why})")

    def close(self) -> None:
        self.sock.close()
