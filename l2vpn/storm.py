"""Storm-control arithmetic: token buckets, and the flood limiter a spoke applies for its
hub; pure, no I/O, time passed in.

Why a spoke limits too: the hub's switch enforces `switch.storm` per port, but by the time
it can drop a storm frame it has already paid for it (TLS decryption, record decoding,
the switching decision: a few microseconds each, so a site blasting 150,000 broadcasts a
second would take most of the hub's one core from every other site). When both hellos
carry CAP_FLOOD_LIMITS the hub tells the spoke its limits (a LIMITS record) and the spoke
drops the excess before encrypting it, at the site that makes the storm. The spoke runs
the same bucket as the hub, so what it lets through the hub lets through too; the hub
still enforces, for spokes that do not limit (older ones, hostile ones).

Only broadcast and multicast are limited at the spoke: whether a unicast destination is
unknown is something only the hub's MAC table knows.
"""

from l2vpn.frame import BROADCAST

DROP_REASONS = ("storm_broadcast", "storm_multicast", "storm_unknown_unicast")
LIMITER_DROPS = ("storm_broadcast", "storm_multicast", "probe_excess")   # FloodLimiter's


class TokenBucket:
    """A token bucket of `rate` frames per second holding at most `burst` frames; full at
    the start."""

    __slots__ = ("rate", "burst", "tokens", "last")

    def __init__(self, rate: float, burst: float):
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = None

    def take(self, now: float) -> bool:
        """Spend one token if there is one; False means drop."""
        last = self.last
        tokens = self.tokens
        if last is None or now > last:
            if last is not None:
                tokens += (now - last) * self.rate
                if tokens > self.burst:
                    tokens = self.burst
            self.last = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return True
        self.tokens = tokens
        return False


def bucket(rate: float, burst_s: float) -> TokenBucket | None:
    """A bucket for `rate` frames per second with `burst_s` seconds' worth of burst (at
    least one frame); None for rate 0, which means no limit."""
    if rate < 0 or burst_s < 0:
        raise ValueError(f"rate and burst must be >= 0, not {rate!r}, {burst_s!r}")
    return TokenBucket(rate, max(1.0, rate * burst_s)) if rate else None


class FloodLimiter:
    """The broadcast and multicast limits a hub asked for, applied to frames before they
    are sent to it."""

    def __init__(self, broadcast_pps: int, multicast_pps: int, burst_s: float = 1.0,
                 probe: bytes | None = None, probe_pps: int = 0, drops: dict | None = None):
        self.broadcast_pps = broadcast_pps
        self.multicast_pps = multicast_pps
        self._broadcast = bucket(broadcast_pps, burst_s)
        self._multicast = bucket(multicast_pps, burst_s)
        # The hub's loop probes (group MAC `probe`) get a bucket of their own, as at the
        # hub: a storm caused by a loop must not drop the probes that reveal it.
        self._probe = probe
        self._probes = bucket(probe_pps, burst_s)
        # counted into the caller's dict, if given, so totals outlive one limiter
        self.drops = drops if drops is not None else dict.fromkeys(LIMITER_DROPS, 0)

    def admit(self, frame, offset: int, now: float) -> bool:
        """False when the frame (Ethernet header at `offset`) is a flood past its limit."""
        if len(frame) <= offset or not frame[offset] & 1:
            return True     # unicast (or a runt, which the hub drops)
        dst = bytes(frame[offset:offset + 6])
        if dst == BROADCAST:
            b, reason = self._broadcast, "storm_broadcast"
        elif dst == self._probe:
            b, reason = self._probes, "probe_excess"
        else:
            b, reason = self._multicast, "storm_multicast"
        if b is None or b.take(now):
            return True
        self.drops[reason] += 1
        return False
