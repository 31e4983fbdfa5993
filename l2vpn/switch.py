"""The hub's MAC-learning switch with port security; pure, no I/O, time passed in.

Theory of operation: `decide()` is called once per frame with the port it came in on
and the current monotonic time. It checks the frame, learns its source on that port,
then answers with a tuple of ports to send it out of. An empty answer sends
nothing; it `is DROP` when a check below refused the frame. The caller does
the sending, so one table serves the hub's own TAP and every spoke session alike.

Every check that can drop a frame sits in `decide()` in this order, each counted in
`counters` and in the ingress port's own drop counts:
  runt / oversize / group source  malformed or impossible frames
  probe / probe_excess            a loop probe (dst == `intercept`): returned as PROBE,
                                  or dropped past `probe_pps` for its port
  blocked                         the port is cut off by loop detection
  vlan                            the port's VLAN policy refuses the frame (VLAN mode)
  dhcp_guard / ra_guard           a server message from a port not trusted for it
  port_limit                      a new source past `max_macs_per_port`
  move_held                       a MAC claimed from another port within the hold-down
  storm_*                         flooding past the port's token bucket for that class
Known unicast, the bulk of traffic, passes only the cheap checks; guards run only when
configured, token buckets only when flooding.

An entry is alive while `now - seen <= aging_s`; an older one is treated as absent
by every query but stays stored (and counts against `max_entries` and its port's limit)
until `expire()` removes it, which the caller runs about once a second. So the hot path
never scans. A full table (`max_entries`) learns nothing new but still forwards, so
hosts keep working; the per-port limit is what stops one port filling it.

The flood tuple for each ingress port (all other unblocked ports, in the order they
were added) is built on its first use after the ports change, so neither flooding nor
forwarding allocates an answer per frame.

VLANs (vlan.py has their semantics). While no port has a VLAN policy the table is
VLAN-blind, as it always was: a key is the 6-byte MAC and tags are not read. Once a port
has one (`vlans_on`), `decide()` gives every frame past the probe intercept and the
block its VLAN (`vlan.ingress_vlan`, or drops it as `vlan`), learns and looks up by
(VLAN, MAC) and floods only to the ports that carry that VLAN (a tuple per ingress port
and VLAN, cached like the plain one). A key is then the MAC followed by the VID's two
bytes, or the bare MAC for UNTAGGED, the VLAN of untagged frames on transparent ports:
so entries learnt blind keep their meaning when VLANs come on (none of them lives on a
port with a policy: a port that gets one is flushed), and turning VLANs off forgets only
the 8-byte keys. `decide()` still answers with ports; the frame's VLAN is left in
`last_vlan` for the caller, which fits the frame to each port with `vlan.egress`.
"""

from l2vpn import guard, storm
from l2vpn.frame import BROADCAST, ETH_HLEN, VLAN_HLEN
from l2vpn.vlan import UNTAGGED, carries, ingress_vlan


class _Drop(tuple):
    """An empty answer that also says "refused" (a flood with no other port to go to is
    an empty answer too, but not a refusal)."""


class _Probe(tuple):
    """An empty answer that also says "this was a loop probe; hand it to the detector"."""


DROP = _Drop()
PROBE = _Probe()

# Why a frame was dropped, per port and in total.
DROPS = (
    "runt",
    "oversize",
    "group_source",
    "probe_excess",
    "blocked",
    "vlan",
    "dhcp_guard",
    "ra_guard",
    "port_limit",
    "move_held",
    "storm_broadcast",
    "storm_multicast",
    "storm_unknown_unicast",
)

COUNTERS = DROPS + (
    "unknown_port",
    "probes",
    "learned",
    "moves",
    "table_full",
    "ingress_hairpin",
    "flooded",
    "forwarded",
    "expired",
    "flushed",
)

_STORM = storm.DROP_REASONS
# Room for 802.1Q/802.1ad tags above the MTU (a QinQ frame of full MTU is legal).
TAG_ROOM = 2 * VLAN_HLEN
NO_LIMIT = 1 << 62
MAX_FLAPS = 256
_VID = tuple(v.to_bytes(2, "big") for v in range(4096))   # VID -> its key suffix


def key_of(mac: bytes, vlan: int | None) -> bytes:
    """The table key of `mac` in `vlan` (None or UNTAGGED: the bare MAC)."""
    return mac if not vlan else mac + _VID[vlan]


def split_key(key: bytes) -> tuple:
    """(MAC, VLAN) of a table key; the VLAN is None for a bare MAC (untagged)."""
    return (key, None) if len(key) == 6 else (key[:6], int.from_bytes(key[6:], "big"))


class _Port:
    """What the table keeps per port."""

    __slots__ = ("port", "solo", "flood", "macs", "max_frame", "blocked", "guarded", "drops",
                 "buckets", "probes", "max_macs", "own_max_macs", "trusted", "storm_pps",
                 "vlan", "vlan_flood")

    def __init__(self, port, max_frame: int, guarded: frozenset, buckets: tuple, probes,
                 max_macs: int):
        self.port = port
        self.solo = (port,)   # returned as is when forwarding to this port
        self.flood = None     # all other unblocked ports; built on first use
        self.macs: set[bytes] = set()   # keys: see key_of()
        self.max_frame = max_frame
        self.blocked = False
        self.guarded = guarded  # guard kinds this port is not trusted for
        self.drops = dict.fromkeys(DROPS, 0)
        self.buckets = buckets  # (broadcast, multicast, unknown unicast); None: no limit
        self.probes = probes    # a bucket for frames to the probe address, or None
        self.max_macs = max_macs     # in force: its own limit, else the table's
        self.own_max_macs = None     # this port's own limit, or None
        self.trusted = frozenset()   # guard kinds trusted here, as add_port was told
        self.storm_pps = None        # this port's own rates, or None: the table's
        self.vlan = None             # its vlan.VlanPolicy, or None: transparent
        self.vlan_flood = {}         # VLAN -> the other unblocked ports carrying it


class _Entry:
    __slots__ = ("home", "seen")

    def __init__(self, home: _Port, seen: float):
        self.home = home
        self.seen = seen


class SwitchTable:
    """Maps MACs to the port they were last seen on, and frames to egress ports."""

    def __init__(self, aging_s: float = 300.0, max_entries: int = 65536, *,
                 max_macs_per_port: int | None = None, holddown_s: float = 0.0,
                 storm_pps: tuple = (0, 0, 0), storm_burst_s: float = 1.0,
                 guards=frozenset(), intercept: bytes | None = None, probe_pps: float = 0):
        if aging_s < 0:
            raise ValueError(f"aging_s must be >= 0, not {aging_s!r}")
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, not {max_entries!r}")
        if holddown_s < 0:
            raise ValueError(f"holddown_s must be >= 0, not {holddown_s!r}")
        if probe_pps < 0:
            raise ValueError(f"probe_pps must be >= 0, not {probe_pps!r}")
        if len(storm_pps) != 3 or any(r < 0 for r in storm_pps):
            raise ValueError(f"storm_pps must be three rates >= 0, not {storm_pps!r}")
        unknown = set(guards) - {guard.DHCP, guard.RA}
        if unknown:
            raise ValueError(f"unknown guards: {sorted(unknown)}")
        self.aging_s = aging_s
        self.max_entries = max_entries
        self.max_macs_per_port = NO_LIMIT if max_macs_per_port is None else max_macs_per_port
        self.holddown_s = holddown_s
        self.storm_pps = tuple(storm_pps)
        self.storm_burst_s = storm_burst_s
        self.guards = frozenset(guards)
        self.intercept = intercept
        self.probe_pps = probe_pps
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        # MAC -> [home port, port claiming it, frames held] since the caller last took them
        self.flaps: dict[bytes, list] = {}
        self._macs: dict[bytes, _Entry] = {}   # key (see key_of) -> entry
        self._state: dict[object, _Port] = {}
        self._ports: tuple = ()
        self.vlans_on = False      # some port has a VLAN policy: see the module docstring
        self.last_vlan = UNTAGGED  # the VLAN of the frame decide() saw last (VLAN mode)
        self.vlan_policies: dict = {}   # port -> its VlanPolicy or None, for egress
        self._vlans_named = frozenset()  # every VLAN some port's policy carries

    # -- ports ---------------------------------------------------------------

    @property
    def ports(self) -> tuple:
        return self._ports

    def add_port(self, port, *, mtu: int | None = None, trusted=frozenset(),
                 max_macs: int | None = None, storm_pps: tuple | None = None,
                 vlan=None) -> None:
        """Attach a port; frames from a port not added are dropped.

        `mtu` bounds the frames it may send (plus the Ethernet header and two VLAN tags);
        `trusted` names the guards (guard.DHCP, guard.RA) that do not apply to it;
        `max_macs` and `storm_pps` are this port's own limits (None: the table's);
        `vlan` is its vlan.VlanPolicy (None: transparent)."""
        if port in self._state:
            raise ValueError(f"port already added: {port!r}")
        max_frame = NO_LIMIT if mtu is None else mtu + ETH_HLEN + TAG_ROOM
        p = _Port(port, max_frame, frozenset(), (), None, NO_LIMIT)
        self._state[port] = p
        self._limit(p, frozenset(trusted), max_macs, storm_pps)
        p.probes = storm.bucket(self.probe_pps, self.storm_burst_s)
        p.vlan = vlan
        self.vlan_policies[port] = vlan
        self._ports_changed()
        self._vlans_changed()

    def set_port(self, port, *, trusted=frozenset(), max_macs: int | None = None,
                 storm_pps: tuple | None = None, vlan=None) -> int:
        """Change a port's own limits, trusted guards and VLAN policy live (a config
        reload); returns the MACs flushed. Its MACs stay learnt, even past a lower
        `max_macs` (new ones are refused until under it), unless its `vlan` changes:
        then they are forgotten, since they were learnt in VLANs it may no longer have."""
        p = self._state[port]
        self._limit(p, frozenset(trusted), max_macs, storm_pps)
        if vlan == p.vlan:
            return 0
        p.vlan = vlan
        self.vlan_policies[port] = vlan
        flushed = self.flush(port)
        self._ports_changed()
        self._vlans_changed()
        return flushed

    def configure(self, *, aging_s: float, max_entries: int, max_macs_per_port: int,
                  holddown_s: float, storm_pps: tuple, guards, intercept: bytes | None,
                  probe_pps: float) -> None:
        """Apply new table-wide settings live; ports with limits of their own keep them
        (see set_port). Learnt MACs stay."""
        self.aging_s, self.max_entries, self.holddown_s = aging_s, max_entries, holddown_s
        self.max_macs_per_port = max_macs_per_port
        self.storm_pps = tuple(storm_pps)
        self.guards = frozenset(guards)
        self.intercept = intercept
        if probe_pps != self.probe_pps:
            self.probe_pps = probe_pps
            for p in self._state.values():
                p.probes = storm.bucket(probe_pps, self.storm_burst_s)
        for p in self._state.values():
            self._limit(p, p.trusted, p.own_max_macs, p.storm_pps)

    def _limit(self, p: _Port, trusted: frozenset, max_macs, storm_pps) -> None:
        p.trusted = trusted
        p.guarded = self.guards - trusted
        p.own_max_macs = max_macs
        p.max_macs = self.max_macs_per_port if max_macs is None else max_macs
        p.storm_pps = None if storm_pps is None else tuple(storm_pps)
        rates = self.storm_pps if storm_pps is None else p.storm_pps
        # Buckets are made again only when their rates change: a reload keeps the tokens.
        if not p.buckets or tuple(b.rate if b else 0 for b in p.buckets) != rates:
            p.buckets = tuple(storm.bucket(rate, self.storm_burst_s) for rate in rates)

    def drop_port(self, port) -> int:
        """Detach a port and forget its MACs; returns how many. Unknown ports give 0."""
        p = self._state.pop(port, None)
        if p is None:
            return 0
        del self.vlan_policies[port]
        for mac in p.macs:
            del self._macs[mac]
        self._ports_changed()
        self.counters["flushed"] += len(p.macs)
        for mac in [m for m, f in self.flaps.items() if f[0] is port or f[1] is port]:
            del self.flaps[mac]
        if p.vlan is not None:
            self._vlans_changed()
        return len(p.macs)

    def block(self, port) -> int:
        """Cut a port off (loop detection): nothing in, nothing out, probes excepted.

        Its MACs are forgotten, so hosts it carried are found again by flooding through
        whatever path remains (a loop means there is one); returns how many."""
        p = self._state[port]
        p.blocked = True
        self._ports_changed()
        return self.flush(port)

    def flush(self, port) -> int:
        """Forget the MACs learnt on `port` (it stays a port); returns how many."""
        p = self._state.get(port)
        if p is None:
            return 0
        for mac in p.macs:
            del self._macs[mac]
        flushed = len(p.macs)
        p.macs = set()
        self.counters["flushed"] += flushed
        return flushed

    def unblock(self, port) -> None:
        p = self._state.get(port)
        if p is not None and p.blocked:
            p.blocked = False
            self._ports_changed()

    def _ports_changed(self) -> None:
        # Flood tuples are made on first use per ingress port, not here: rebuilding every
        # port's tuple on each change cost O(ports^2) (6 ms per change at 500 spokes).
        self._ports = tuple(self._state)
        for p in self._state.values():
            p.flood = None
            if p.vlan_flood:
                p.vlan_flood = {}

    def _flood_of(self, p: _Port) -> tuple:
        p.flood = tuple(q.port for q in self._state.values() if q is not p and not q.blocked)
        return p.flood

    def _vlan_flood_of(self, p: _Port, vlan: int) -> tuple:
        # A VLAN no policy names (any VID a transparent port may send) floods to the
        # transparent ports alone, as UNTAGGED does: one tuple for them all, so a port
        # cycling through VIDs cannot grow the cache past the configured VLANs.
        if vlan != UNTAGGED and vlan not in self._vlans_named:
            flood = p.vlan_flood.get(UNTAGGED)
            if flood is not None:
                return flood
            vlan = UNTAGGED
        flood = tuple(q.port for q in self._state.values()
                      if q is not p and not q.blocked and carries(q.vlan, vlan))
        p.vlan_flood[vlan] = flood
        return flood

    def _vlans_changed(self) -> None:
        """Enter or leave VLAN mode as ports with a policy come and go; leaving it forgets
        the entries of VLANs (8-byte keys), which VLAN-blind lookups would never find."""
        self._vlans_named = frozenset().union(
            *(p.vlan.vlans for p in self._state.values() if p.vlan is not None))
        on = bool(self._vlans_named)
        if on == self.vlans_on:
            return
        self.vlans_on = on
        self.last_vlan = UNTAGGED
        if on:
            return
        tagged = [key for key in self._macs if len(key) != 6]
        for key in tagged:
            self._macs.pop(key).home.macs.discard(key)
            self.flaps.pop(key, None)
        self.counters["flushed"] += len(tagged)

    # -- the hot path ----------------------------------------------------------

    def decide(self, frame, ingress, now: float, offset: int = 0) -> tuple:
        """Check the frame, learn its source on `ingress`; return the ports to send it to.

        With `offset` 10 the frame leads with a virtio-net header; a GSO super-frame
        (gso_type, byte 1, non-zero) may exceed the port MTU."""
        counters = self.counters
        size = len(frame) - offset
        p = self._state.get(ingress)
        if size < ETH_HLEN:
            return self._drop(p, "runt")
        hdr = frame[offset:offset + 12]
        if type(hdr) is not bytes:
            hdr = bytes(hdr)  # keys must not pin or alias the caller's buffer
        if hdr[6] & 1:
            return self._drop(p, "group_source")
        if p is None:
            counters["unknown_port"] += 1
            return DROP
        if size > p.max_frame and not (offset and frame[1]):
            return self._drop(p, "oversize")
        if hdr[0] & 1 and self.intercept is not None and hdr[:6] == self.intercept:
            b = p.probes
            if b is not None and not b.take(now):
                return self._drop(p, "probe_excess")
            counters["probes"] += 1
            return PROBE
        if p.blocked:
            return self._drop(p, "blocked")
        if self.vlans_on:
            return self._decide_vlan(frame, offset, hdr, p, now)
        if p.guarded:
            kind = guard.classify(frame, offset)
            if kind is not None and kind in p.guarded:
                return self._drop(p, "dhcp_guard" if kind == guard.DHCP else "ra_guard")
        src = hdr[6:]
        entry = self._macs.get(src)
        if entry is not None and entry.home is p:
            entry.seen = now
        else:
            reason = self._learn(src, p, now)
            if reason is not None:
                return self._drop(p, reason)
        return self._forward(hdr[:6], p, now)

    def _decide_vlan(self, frame, offset: int, hdr: bytes, p: _Port, now: float) -> tuple:
        """decide() from the VLAN check on, in VLAN mode: keys and floods per VLAN.

        The guard and learning steps repeat decide()'s on purpose: a shared helper would
        cost a call on every frame of the plain path."""
        vlan = ingress_vlan(p.vlan, frame, offset)
        if vlan < 0:
            return self._drop(p, "vlan")
        self.last_vlan = vlan
        if p.guarded:
            kind = guard.classify(frame, offset)
            if kind is not None and kind in p.guarded:
                return self._drop(p, "dhcp_guard" if kind == guard.DHCP else "ra_guard")
        src = hdr[6:] if vlan == UNTAGGED else hdr[6:] + _VID[vlan]
        entry = self._macs.get(src)
        if entry is not None and entry.home is p:
            entry.seen = now
        else:
            reason = self._learn(src, p, now)
            if reason is not None:
                return self._drop(p, reason)
        counters = self.counters
        dst = hdr[:6]
        if dst[0] & 1:
            bucket = p.buckets[0 if dst == BROADCAST else 1]
            if bucket is not None and not bucket.take(now):
                return self._drop(p, _STORM[0 if dst == BROADCAST else 1])
        else:
            entry = self._macs.get(dst if vlan == UNTAGGED else dst + _VID[vlan])
            if entry is not None and now - entry.seen <= self.aging_s:
                home = entry.home
                if home is p:
                    counters["ingress_hairpin"] += 1
                    return ()
                if home.blocked:
                    counters["blocked"] += 1
                    return ()
                counters["forwarded"] += 1
                return home.solo
            bucket = p.buckets[2]
            if bucket is not None and not bucket.take(now):
                return self._drop(p, "storm_unknown_unicast")
        counters["flooded"] += 1
        flood = p.vlan_flood.get(vlan)
        return flood if flood is not None else self._vlan_flood_of(p, vlan)

    def _drop(self, p, reason: str) -> tuple:
        self.counters[reason] += 1
        if p is not None:
            p.drops[reason] += 1
        return DROP

    def _learn(self, mac: bytes, p: _Port, now: float):
        """Admit a new MAC or move one; None, or why the frame must be dropped.

        The refresh of a known MAC on its own port is inline in `decide`."""
        counters = self.counters
        entry = self._macs.get(mac)
        if entry is None:
            if len(p.macs) >= p.max_macs:
                return "port_limit"
            if len(self._macs) >= self.max_entries:
                counters["table_full"] += 1
                return None   # not learnt, still forwarded: see the module docstring
            self._macs[mac] = _Entry(p, now)
            p.macs.add(mac)
            counters["learned"] += 1
            return None
        home = entry.home
        if home is not p:
            alive = now - entry.seen <= self.aging_s
            if alive and now - entry.seen < self.holddown_s:
                self._note_flap(mac, home.port, p.port)
                return "move_held"
            if len(p.macs) >= p.max_macs:
                return "port_limit"
            if alive:
                counters["moves"] += 1
            home.macs.discard(mac)
            p.macs.add(mac)
            entry.home = p
        entry.seen = now
        return None

    def _note_flap(self, mac: bytes, home, claimer) -> None:
        flap = self.flaps.get(mac)
        if flap is not None:
            flap[0] = home   # the MAC may have moved since the first held claim
            flap[1] = claimer
            flap[2] += 1
        elif len(self.flaps) < MAX_FLAPS:
            self.flaps[mac] = [home, claimer, 1]

    def _forward(self, dst: bytes, p: _Port, now: float) -> tuple:
        counters = self.counters
        if dst[0] & 1:
            bucket = p.buckets[0 if dst == BROADCAST else 1]
            if bucket is not None and not bucket.take(now):
                return self._drop(p, _STORM[0 if dst == BROADCAST else 1])
            counters["flooded"] += 1
            return p.flood if p.flood is not None else self._flood_of(p)
        entry = self._macs.get(dst)
        if entry is None or now - entry.seen > self.aging_s:
            bucket = p.buckets[2]
            if bucket is not None and not bucket.take(now):
                return self._drop(p, "storm_unknown_unicast")
            counters["flooded"] += 1
            return p.flood if p.flood is not None else self._flood_of(p)
        home = entry.home
        if home is p:
            counters["ingress_hairpin"] += 1
            return ()     # nothing to do, but nothing refused either
        if home.blocked:  # not after block() flushed it; kept so a stray entry cannot leak
            counters["blocked"] += 1
            return ()
        counters["forwarded"] += 1
        return home.solo

    # -- table access ----------------------------------------------------------

    def learn(self, mac: bytes, port, now: float, vlan: int | None = None) -> bool:
        """Map `mac` (in `vlan`, VLAN mode only) to `port` as if a frame from it arrived;
        False if it was not learnt."""
        mac = bytes(mac)
        if len(mac) != 6:
            raise ValueError(f"a MAC is 6 bytes, not {len(mac)}")
        p = self._state.get(port)
        if mac[0] & 1 or p is None or (vlan and not self.vlans_on):
            return False
        key = key_of(mac, vlan)
        if self._learn(key, p, now) is not None:
            return False
        entry = self._macs.get(key)
        return entry is not None and entry.home is p

    def take_flaps(self) -> dict:
        """{mac: (home port, claiming port, frames held)} since the last call."""
        flaps, self.flaps = self.flaps, {}
        return {mac: tuple(f) for mac, f in flaps.items()}

    def port_info(self, port) -> dict:
        """Per-port facts for status: MACs held, blocked, and drops by reason."""
        p = self._state[port]
        return {"macs": len(p.macs), "blocked": p.blocked, "drops": dict(p.drops)}

    def expire(self, now: float) -> int:
        """Remove aged entries, freeing their room; returns how many."""
        aging_s = self.aging_s
        stale = [mac for mac, e in self._macs.items() if now - e.seen > aging_s]
        for mac in stale:
            entry = self._macs.pop(mac)
            entry.home.macs.discard(mac)
        self.counters["expired"] += len(stale)
        return len(stale)

    def entries(self, now: float) -> list[tuple[bytes, object, float]]:
        """Live (mac, port, age_s) rows, by port in the order added, then by MAC (a MAC
        in several VLANs has a row in each: vlan_entries() tells them apart)."""
        return [(mac, port, age) for mac, _vlan, port, age in self.vlan_entries(now)]

    def vlan_entries(self, now: float) -> list[tuple[bytes, int | None, object, float]]:
        """Live (mac, vlan, port, age_s) rows, by port in the order added, then by MAC and
        VLAN; `vlan` is None for untagged frames (and always when no port has a policy)."""
        order = {p: i for i, p in enumerate(self._ports)}
        aging_s = self.aging_s
        rows = [
            (key, e.home.port, now - e.seen)
            for key, e in self._macs.items()
            if now - e.seen <= aging_s
        ]
        rows.sort(key=lambda row: (order[row[1]], row[0]))
        return [(*split_key(key), port, age) for key, port, age in rows]

    def port_macs(self, port) -> list[bytes]:
        """The keys (see key_of; the MACs when no port has a VLAN policy) learnt on
        `port`, sorted; none for a port that is gone."""
        p = self._state.get(port)
        return sorted(p.macs) if p is not None else []

    def entry(self, key: bytes, now: float):
        """(port, age_s) of a live entry for `key` (a MAC, or see key_of), or None."""
        e = self._macs.get(key)
        if e is None or now - e.seen > self.aging_s:
            return None
        return e.home.port, now - e.seen

    def __contains__(self, key) -> bool:
        """True while `key` (a MAC, or see key_of) has an entry (aged or not: expire()
        removes those)."""
        return key in self._macs

    def known_macs(self):
        """What `in` tells whether a MAC has an entry in any VLAN (aged or not)."""
        if not self.vlans_on:
            return self._macs
        return {key[:6] for key in self._macs}

    def __len__(self) -> int:
        """Entries stored, aged ones included until `expire()` removes them."""
        return len(self._macs)
