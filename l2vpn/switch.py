"""The hub's MAC-learning switch table; pure, no I/O, time passed in.

Theory of operation: `decide()` is called once per frame with the port it came in on
and the current monotonic time. It learns the source MAC on that port, then answers
with a tuple of ports to send the frame out of; `()` means drop. The caller does the
sending, so one table serves the hub's own TAP and every spoke session alike.

An entry is alive while `now - seen <= aging_s`; an older one is treated as absent
by every query but stays stored (and counts against `max_entries`) until `expire()`
removes it, which the caller runs about once a second. So the hot path never scans.

The flood tuple for each ingress port (all other ports, in the order they were added)
is built on its first use after the ports change, and each port's one-element tuple
when it is added, so neither flooding nor forwarding allocates an answer per frame. Each port keeps the set of its MACs so
`drop_port()` costs that port's MACs, not the whole table; moves and expiry keep the
sets in step.

The steps of `decide()` stand apart (`_learn` for admission of a source, `_forward`
for the destination) so later checks (per-port limits, move hold-down, storm control,
guards, blocked ports) each slot into one place.
"""

from l2vpn.frame import ETH_HLEN

DROP = ()

COUNTERS = (
    "runt",
    "group_source",
    "unknown_port",
    "learned",
    "moves",
    "table_full",
    "ingress_hairpin",
    "flooded",
    "forwarded",
    "expired",
    "flushed",
)


class _Entry:
    __slots__ = ("port", "seen", "out")

    def __init__(self, port, seen: float, out: tuple):
        self.port = port
        self.seen = seen
        self.out = out  # (port,), shared with the table, returned as is when forwarding


class SwitchTable:
    """Maps MACs to the port they were last seen on, and frames to egress ports."""

    def __init__(self, aging_s: float = 300.0, max_entries: int = 65536):
        if aging_s < 0:
            raise ValueError(f"aging_s must be >= 0, not {aging_s!r}")
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, not {max_entries!r}")
        self.aging_s = aging_s
        self.max_entries = max_entries
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._macs: dict[bytes, _Entry] = {}
        self._port_macs: dict[object, set[bytes]] = {}
        self._solo: dict[object, tuple] = {}
        self._flood: dict[object, tuple] = {}
        self._ports: tuple = ()

    # -- ports ---------------------------------------------------------------

    @property
    def ports(self) -> tuple:
        return self._ports

    def add_port(self, port) -> None:
        """Attach a port; frames from a port not added are dropped."""
        if port in self._port_macs:
            raise ValueError(f"port already added: {port!r}")
        self._port_macs[port] = set()
        self._solo[port] = (port,)
        self._rebuild_ports()

    def drop_port(self, port) -> int:
        """Detach a port and forget its MACs; returns how many. Unknown ports give 0."""
        macs = self._port_macs.pop(port, None)
        if macs is None:
            return 0
        for mac in macs:
            del self._macs[mac]
        del self._solo[port]
        self._rebuild_ports()
        self.counters["flushed"] += len(macs)
        return len(macs)

    def _rebuild_ports(self) -> None:
        # Flood tuples are made on first use per ingress port, not here: rebuilding every
        # port's tuple on each change cost O(ports^2) (6 ms per change at 500 spokes).
        self._ports = tuple(self._port_macs)
        self._flood = {}

    def _flood_for(self, ingress):
        """All ports but `ingress` (cached until the ports change); None if not a port."""
        if ingress not in self._port_macs:
            return None
        flood = self._flood[ingress] = tuple(q for q in self._ports if q != ingress)
        return flood

    # -- the hot path ----------------------------------------------------------

    def decide(self, frame, ingress, now: float, offset: int = 0) -> tuple:
        """Learn the frame's source on `ingress`; return the ports to send it to."""
        counters = self.counters
        if len(frame) - offset < ETH_HLEN:
            counters["runt"] += 1
            return DROP
        hdr = frame[offset:offset + 12]
        if type(hdr) is not bytes:
            hdr = bytes(hdr)  # keys must not pin or alias the caller's buffer
        if hdr[6] & 1:
            counters["group_source"] += 1
            return DROP
        flood = self._flood.get(ingress)
        if flood is None:
            flood = self._flood_for(ingress)
        if flood is None:
            counters["unknown_port"] += 1
            return DROP
        src = hdr[6:]
        entry = self._macs.get(src)
        if entry is not None and entry.port == ingress:
            entry.seen = now
        else:
            self._learn(src, ingress, now)
        return self._forward(hdr[:6], ingress, flood, now)

    def _learn(self, mac: bytes, port, now: float) -> bool:
        """Admit a new MAC or move one; the refresh of a known MAC on its port is inline."""
        counters = self.counters
        entry = self._macs.get(mac)
        if entry is None:
            if len(self._macs) >= self.max_entries:
                counters["table_full"] += 1
                return False
            self._macs[mac] = _Entry(port, now, self._solo[port])
            self._port_macs[port].add(mac)
            counters["learned"] += 1
            return True
        if entry.port != port:
            if now - entry.seen <= self.aging_s:
                counters["moves"] += 1
            self._port_macs[entry.port].discard(mac)
            self._port_macs[port].add(mac)
            entry.port = port
            entry.out = self._solo[port]
        entry.seen = now
        return True

    def _forward(self, dst: bytes, ingress, flood: tuple, now: float) -> tuple:
        counters = self.counters
        if dst[0] & 1:
            counters["flooded"] += 1
            return flood
        entry = self._macs.get(dst)
        if entry is None or now - entry.seen > self.aging_s:
            counters["flooded"] += 1
            return flood
        if entry.port == ingress:
            counters["ingress_hairpin"] += 1
            return DROP
        counters["forwarded"] += 1
        return entry.out

    # -- table access ----------------------------------------------------------

    def learn(self, mac: bytes, port, now: float) -> bool:
        """Map `mac` to `port` as if a frame from it arrived; False if it was not learnt."""
        mac = bytes(mac)
        if len(mac) != 6:
            raise ValueError(f"a MAC is 6 bytes, not {len(mac)}")
        if mac[0] & 1 or port not in self._port_macs:
            return False
        return self._learn(mac, port, now)

    def lookup(self, mac: bytes, now: float):
        """The port `mac` lives on, or None if unknown or aged."""
        entry = self._macs.get(bytes(mac))
        if entry is None or now - entry.seen > self.aging_s:
            return None
        return entry.port

    def expire(self, now: float) -> int:
        """Remove aged entries, freeing their room; returns how many."""
        aging_s = self.aging_s
        stale = [mac for mac, e in self._macs.items() if now - e.seen > aging_s]
        for mac in stale:
            entry = self._macs.pop(mac)
            self._port_macs[entry.port].discard(mac)
        self.counters["expired"] += len(stale)
        return len(stale)

    def entries(self, now: float) -> list[tuple[bytes, object, float]]:
        """Live (mac, port, age_s) rows, by port in the order added, then by MAC."""
        order = {p: i for i, p in enumerate(self._ports)}
        aging_s = self.aging_s
        rows = [
            (mac, e.port, now - e.seen)
            for mac, e in self._macs.items()
            if now - e.seen <= aging_s
        ]
        rows.sort(key=lambda row: (order[row[1]], row[0]))
        return rows

    def __len__(self) -> int:
        """Entries stored, aged ones included until `expire()` removes them."""
        return len(self._macs)
