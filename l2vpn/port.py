"""What a switch port is, written down once, and the back-pressure every port shares.

A port is one of the things a node switches frames between: its TAP (`node.TapPort`) or
a TLS session with a peer (`transport.Session`). Hub and spoke see a port only through
`Port`, as wireguard-go's device sees its TUN only through `tun.Device`; tests hand in
fakes of the same shape (tests/fakes.py).

Back-pressure. When a frame's one destination is backed up (`congested`), its source is
paused and waits on the destination (`add_waiter`) until the destination drains below
its low-water mark. A destination that keeps its waiters for `stall_s` is `stalled`: it
lets them go and, until it drains, drops frames instead of holding its senders back.
`FlowControl` is that logic for every port; a port says only what pausing means to it
(`_pause_io`, `_resume_io`) and calls `_drained()` once its output is below low water.
"""

from typing import Callable, Protocol, runtime_checkable

STALL_S = 0.5


@runtime_checkable
class Port(Protocol):
    """A switch port. Frames cross it in vnet form: a virtio-net header first.

    `on_frame(port, frame)` is where the port hands each frame it receives; it is an
    instance attribute read at every read, and `send_frame` a method looked up at every
    call, so a wrapper (packet capture) may replace either on the instance.
    """

    name: str
    on_frame: Callable[["Port", bytes], None]
    frames_in: int
    frames_out: int
    bytes_in: int
    bytes_out: int
    drops: int

    @property
    def congested(self) -> bool:
        """Past its high-water mark: the source of a frame sent here should wait."""

    @property
    def stalled(self) -> bool:
        """Kept its waiters too long: drops instead of holding senders back."""

    @property
    def paused(self) -> bool:
        """Not read until resume()."""

    def send_frame(self, frame) -> None:
        """Queue or write one frame; a frame it cannot take is dropped and counted."""

    def pause(self) -> None:
        """Stop reading this port: its frames have nowhere to go."""

    def resume(self) -> None:
        """Read this port again."""

    def add_waiter(self, source: "Port") -> None:
        """Resume `source` once this port has drained (or stalled)."""

    def snapshot(self, now: float) -> dict:
        """What `status` shows of this port, counters included."""

    def close(self, reason: str) -> None:
        """Stop for good; a port with a peer reports `reason`."""


class FlowControl:
    """Both ends of back-pressure for one port: being paused (as a source) and holding
    waiters under a stall timer (as a destination).

    `paused` and `stalled` are plain attributes, not properties: they are read for every
    frame. A subclass sets `name` and provides `_pause_io` and `_resume_io`.
    """

    buffered = 0   # bytes queued to send; a port that writes straight through keeps none

    def __init__(self, loop, port_log, stall_s: float = STALL_S):
        self.loop = loop
        self.port_log = port_log      # a RateLimitedLog: what the peer causes is capped
        self.stall_s = stall_s
        self.paused = False
        self.stalled = False
        self.waiters = set()
        self._stall_timer = None

    def pause(self) -> None:
        """Stop reading this port until resume(): its frames have nowhere to go."""
        if not self.paused:
            self.paused = True
            self._pause_io()

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self._resume_io()

    def add_waiter(self, source) -> None:
        """Resume `source` once this port's output has drained (or it stalls)."""
        if not self.waiters:
            self._stall_timer = self.loop.call_later(self.stall_s, self._stall)
        self.waiters.add(source)

    def _drained(self) -> None:
        """The output fell below low water: the waiters go on, and a stall is over."""
        self._release_waiters()
        self.stalled = False

    def _release_waiters(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        waiters, self.waiters = self.waiters, set()
        for w in waiters:
            w.resume()

    def _stall(self) -> None:
        self._stall_timer = None
        if not self.waiters:
            return
        self.stalled = True
        self.port_log.warning("stalled", "%s is not reading fast enough (%d KiB queued for "
                              "%g s): dropping frames to it instead of holding back its "
                              "senders", self.name, self.buffered >> 10, self.stall_s)
        self._release_waiters()

    def _pause_io(self) -> None:
        raise NotImplementedError

    def _resume_io(self) -> None:
        raise NotImplementedError
