"""Bridging-loop detection for the hub's switch; pure, no I/O, time passed in.

Theory of operation. Two spokes bridged onto one LAN (or a LAN looped back into the
hub's TAP) close a loop through the overlay: a broadcast leaves by port A, comes back
by port B and is flooded again, forever. MAC learning cannot see that, so the hub looks
for it directly: every `interval_s` it sends a small signed probe out of each port,
naming the port it left by. A probe that comes back in on a *different* port proves a
path between those two ports outside the hub, so one of them is blocked (the switch
drops everything from and to it) and the loop is broken.

The newer port (added later) is the one blocked: it is the one that just closed the
loop, established traffic on the older port keeps flowing, and the choice is the same
whichever direction the evidence came from, so both ends are never blocked at once.
Probes still go out of blocked ports and are still checked when they come in on one,
so a loop behind a block keeps proving itself; the block is lifted only once no probe
has come back for `hold_s`, several rounds, so one lost probe does not let a storm out.

A hostile spoke only ever sees probes sent out of its own port. Replaying them comes
back in on that same port, which is "reflected" and never acted on (the switch never
sends a frame back out of its ingress, so that is no overlay loop). Anything else
must carry a valid HMAC, this instance's random id, a current port name and a fresh
timestamp, or it counts as "forged" and does nothing.

Probe layout (network byte order): dst PROBE_DST | src PROBE_SRC | ETHERTYPE |
b"L2VPNLOOP" | instance id (8) | seq u32 | timestamp f64 | name length u8 | name |
HMAC-SHA256(key, dst..name)[:16]. That is 60 + len(name) bytes, never under the
Ethernet minimum, so no padding is added; bytes after the tag are ignored, so padding
added on the way does not matter.
"""

import hmac
import secrets
import struct

from l2vpn.frame import ETH_HLEN

PROBE_DST = b"\x03l2vpn"  # 03:6c:32:76:70:6e: locally administered multicast, bridges flood it
PROBE_SRC = b"\x02l2vpn"  # 02:6c:32:76:70:6e
# Frames to PROBE_DST a port may bring in per second (the hub's switch and a spoke's flood
# limiter drop the rest unverified, so a host flooding that address cannot make the hub
# check a signature per frame). One probe back finds a loop; 64/s is every probe of 32
# ports looped onto one LAN.
PROBE_PPS = 64
ETHERTYPE = 0x88B5        # IEEE local experimental

BLOCK, UNBLOCK = "block", "unblock"

COUNTERS = ("probes_sent", "probes_back", "reflected", "forged")

MAGIC = b"L2VPNLOOP"
INSTANCE_LEN = 8
TAG_LEN = 16
MAX_NAME = 255

_FIELDS = struct.Struct("!IdB")  # seq, timestamp, name length
_HEAD_LEN = ETH_HLEN + len(MAGIC) + INSTANCE_LEN
_NAME_AT = _HEAD_LEN + _FIELDS.size


class _Block:
    __slots__ = ("other", "since", "seen")

    def __init__(self, other, now: float):
        self.other = other
        self.since = now
        self.seen = now  # the last probe that proved the loop is still there


class LoopGuard:
    """Makes and checks loop probes and keeps which ports are blocked, and why."""

    def __init__(self, key: bytes, interval_s: float = 0.5, hold_s: float = 3.0,
                 max_age_s: float = 2.0):
        if not key:
            raise ValueError("the probe key must not be empty")
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, not {interval_s!r}")
        if not hold_s > interval_s:
            # Otherwise a block would lapse between two rounds of probes and the loop flap.
            raise ValueError(f"hold_s must be > interval_s, not {hold_s!r}")
        if not max_age_s >= 0:
            raise ValueError(f"max_age_s must be >= 0, not {max_age_s!r}")
        self.interval_s = interval_s
        self.hold_s = hold_s
        self.max_age_s = max_age_s
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._key = bytes(key)
        # Random per instance: a second hub (or this one before a restart) using the
        # same key must not have its probes taken for ours.
        self._instance = secrets.token_bytes(INSTANCE_LEN)
        self._head = (PROBE_DST + PROBE_SRC + ETHERTYPE.to_bytes(2, "big") + MAGIC
                      + self._instance)
        self._names: dict[object, bytes] = {}   # port -> encoded name, in age order
        self._ports: dict[bytes, object] = {}   # encoded name -> port
        self._age: dict[object, int] = {}
        self._added = 0
        self._blocks: dict[object, _Block] = {}
        self._seq = 0

    # -- ports ---------------------------------------------------------------

    def add_port(self, port, name: str) -> None:
        """Probe `port` from the next round on; ports added later count as newer."""
        raw = name.encode("utf-8")
        if len(raw) > MAX_NAME:
            raise ValueError(f"port name longer than {MAX_NAME} bytes: {name!r}")
        if port in self._names:
            raise ValueError(f"port already added: {port!r}")
        if raw in self._ports:
            raise ValueError(f"port name already in use: {name!r}")
        self._names[port] = raw
        self._ports[raw] = port
        self._added += 1
        self._age[port] = self._added

    def remove_port(self, port) -> list[tuple]:
        """Forget `port`; lifts its own block, while blocks it was partner of run out."""
        raw = self._names.pop(port, None)
        if raw is None:
            return []
        del self._ports[raw]
        del self._age[port]
        block = self._blocks.pop(port, None)
        # A block whose partner left may still be holding back a loop through a third
        # port; it lasts until hold_s passes with no evidence, like any other.
        return [] if block is None else [(UNBLOCK, port, block.other)]

    # -- sending -------------------------------------------------------------

    def probes(self, now: float) -> list[tuple]:
        """One probe per port, blocked ones included, as [(port, frame)]; starts a round."""
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        out = []
        for port, raw in self._names.items():
            body = self._head + _FIELDS.pack(self._seq, now, len(raw)) + raw
            out.append((port, body + hmac.digest(self._key, body, "sha256")[:TAG_LEN]))
        self.counters["probes_sent"] += len(out)
        return out

    # -- receiving -----------------------------------------------------------

    def on_probe(self, frame, offset: int, ingress, now: float) -> list[tuple]:
        """Check a frame sent to PROBE_DST that came in on `ingress`; maybe block a port."""
        egress = self._verify(frame, offset, now)
        if egress is None:
            self.counters["forged"] += 1
            return []
        if egress == ingress:
            self.counters["reflected"] += 1
            return []
        if ingress not in self._age:
            return []  # a port already removed; nothing left to block
        self.counters["probes_back"] += 1
        blocks = self._blocks
        if egress in blocks or ingress in blocks:
            for port in (egress, ingress):
                block = blocks.get(port)
                if block is not None:
                    block.seen = now
            return []
        if self._age[egress] > self._age[ingress]:
            newer, older = egress, ingress
        else:
            newer, older = ingress, egress
        blocks[newer] = _Block(older, now)
        return [(BLOCK, newer, older)]

    def _verify(self, frame, offset: int, now: float):
        """The egress port a genuine, fresh probe names, or None."""
        if offset < 0 or len(frame) - offset < _NAME_AT:
            return None
        if frame[offset:offset + _HEAD_LEN] != self._head:
            return None
        _seq, sent, name_len = _FIELDS.unpack_from(frame, offset + _HEAD_LEN)
        end = offset + _NAME_AT + name_len
        if len(frame) < end + TAG_LEN:
            return None
        port = self._ports.get(bytes(frame[offset + _NAME_AT:end]))
        if port is None:
            return None
        tag = hmac.digest(self._key, frame[offset:end], "sha256")[:TAG_LEN]
        if not hmac.compare_digest(tag, bytes(frame[end:end + TAG_LEN])):
            return None
        if not 0 <= now - sent <= self.max_age_s:  # also False for NaN
            return None
        return port

    # -- state ---------------------------------------------------------------

    def tick(self, now: float) -> list[tuple]:
        """Lift every block that has had no evidence for more than hold_s."""
        hold_s = self.hold_s
        quiet = [p for p, b in self._blocks.items() if now - b.seen > hold_s]
        return [(UNBLOCK, p, self._blocks.pop(p).other) for p in quiet]

    def blocked(self) -> dict:
        """A copy: {blocked port: (the port it loops with, blocked since)}."""
        return {p: (b.other, b.since) for p, b in self._blocks.items()}
