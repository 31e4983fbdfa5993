"""What `status` and `systemctl status` show of a hub, read from its live state.

Rendering lives apart from the hub's admission and bridge so that neither grows a view
of the other: this module reads both, and nothing here is on the data path.

A hub with 100,000 MACs has a 7 MB status; building it in one go holds the loop for
about a second (measured: 0.1 s to list the table, 0.6 s to make the rows, 0.2 s to
encode them). Over the management socket the status is therefore a `StatusStream`:
everything but the MAC table at once, then the table port by port, ROWS_PER_PULL rows
each time the client can take more, read from the live table at that moment. A MAC
that ages out or moves meanwhile is listed where it is when its turn comes, or not at
all; a MAC learnt meanwhile may be missing. The document is the same JSON as status().
"""

import json

from l2vpn.bridge import port_name
from l2vpn.frame import format_mac
from l2vpn.management import Stream
from l2vpn.switch import split_key
from l2vpn.tcp import format_addr

ROWS_PER_PULL = 800     # ~60 KB of JSON and ~6 ms of the loop


def summary(hub) -> str:
    """One line for `systemctl status`; cheap, since it is asked every tick."""
    n = len(hub.sessions)
    return f"{n} spoke{'s' * (n != 1)} up, {len(hub.switch)} MACs"


def status(hub, with_macs: bool = True) -> dict:
    now = hub.loop.clock()
    bridge, cfg = hub.bridge, hub.cfg
    out = hub.base_status()
    out["listen"] = format_addr((cfg.listen.address, cfg.listen.port))
    out["sessions"] = []
    for s in sorted(hub.sessions.values(), key=lambda s: s.cn):
        snap = s.snapshot(now)
        snap["switch"] = bridge.port_info(s)
        out["sessions"].append(snap)
    if hub.tap is not None:
        out["tap"]["switch"] = bridge.port_info(hub.tap)
    out["pending"] = len(hub.admission.pending)
    out["switch"] = switch_status(bridge, now)
    if with_macs:
        out["macs"] = macs(hub, now)
    return out


def macs(hub, now) -> list:
    """The live MAC table, one entry per (VLAN, MAC); `vlan` is None for untagged."""
    hosts = hub.bridge.hosts
    return [mac_row(mac, vlan, port, age, hosts)
            for mac, vlan, port, age in hub.switch.vlan_entries(now)]


def mac_row(mac: bytes, vlan, port, age_s: float, hosts) -> dict:
    return {"mac": format_mac(mac), "vlan": vlan, "port": port.name, "age_s": round(age_s, 3),
            "ips": hosts.ips(mac)}


def switch_status(bridge, now) -> dict:
    sw, table, detector = bridge.cfg, bridge.switch, bridge.loop_detector
    blocked = detector.blocked() if detector is not None else {}
    out = {
        "entries": len(table), "aging_s": sw.aging_s,
        "max_entries": sw.max_entries, "max_macs_per_port": sw.max_macs_per_port,
        "mac_move_holddown_s": sw.mac_move_holddown_s,
        "storm": {"broadcast_pps": sw.storm.broadcast_pps,
                  "multicast_pps": sw.storm.multicast_pps,
                  "unknown_unicast_pps": sw.storm.unknown_unicast_pps},
        "dhcp_guard": list(sw.dhcp_guard.trusted) if sw.dhcp_guard else None,
        "ra_guard": list(sw.ra_guard.trusted) if sw.ra_guard else None,
        "counters": dict(table.counters),
        "blocked": [{"port": port_name(p), "loop_with": port_name(other),
                     "since_s": round(now - since, 3)}
                    for p, (other, since) in blocked.items()],
    }
    if detector is not None:
        out["loop_detection"] = dict(detector.counters)
    return out


class StatusStream(Stream):
    """status(hub) as JSON, its MAC table made a slice at a time as the client reads."""

    pass_budget_b = 64 << 10     # about one slice of rows per loop pass

    def __init__(self, hub):
        self.hub = hub
        head = json.dumps(status(hub, with_macs=False))
        self._head = head[:-1] + ', "macs": ['     # the object stays open for the rows
        self._ports = list(hub.switch.ports)     # in the order added, as entries() lists
        self._port = None
        self._queue = []                         # keys of self._port still to list
        self._first = True
        self._done = False

    def pull(self, limit):
        if self._head is not None:
            head, self._head = self._head, None
            return head.encode()
        if self._done:
            return None
        rows = self._rows(ROWS_PER_PULL)
        if not rows:
            self._done = True
            return b"]}\n"
        text = json.dumps(rows)[1:-1]
        if not self._first:
            text = ", " + text
        self._first = False
        return text.encode()

    def _rows(self, n) -> list:
        table, hosts, now = self.hub.switch, self.hub.bridge.hosts, self.hub.loop.clock()
        rows = []
        while len(rows) < n:
            if not self._queue:
                if not self._ports:
                    break
                self._port = self._ports.pop(0)
                self._queue = table.port_macs(self._port)
                self._queue.reverse()            # pop() from the end takes the lowest MAC
                continue
            key = self._queue.pop()
            found = table.entry(key, now)
            if found is None or found[0] is not self._port:
                continue                         # aged out or moved since the listing began
            rows.append(mac_row(*split_key(key), self._port, found[1], hosts))
        return rows
