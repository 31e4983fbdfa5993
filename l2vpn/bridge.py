"""The hub's bridge: frames from its ports through the switch table to other ports, and
the protection the switch decides on (loop blocks, throttling, drop and flap reports).

The switch table decides, the ports carry; frames are in vnet form (virtio-net header
first) and each port turns them into what its far side takes. When a frame's one
destination is backed up, the source is paused until that destination drains, so a
fast sender slows down instead of filling memory; a destination that stops draining is
marked stalled and then loses frames instead, so it cannot hold its senders back.

With VLANs on (some port has a `vlan:` policy) the switch leaves each frame's VLAN in
`last_vlan` and every destination gets the frame as `vlan.egress` fits it to that port:
tag inserted, rewritten or stripped; without, frames go out as they came, unparsed.

Loop probes go out of every port each `loopguard` interval, untagged, and come back
through the switch as PROBE, tagged or not (the switch intercepts them before any VLAN
check, and a tag is stripped before the detector reads them); the detector's block and
unblock actions are applied to the switch and logged. Drops are reported once per
REPORT_S per port, however many frames they were.

A port whose frames the switch refuses wholesale (a storm past the limits from a spoke
that does not apply them, spoofed MACs past the limit) costs the hub a decryption, a
decode and a decision for every frame it then drops, CPU the other sites need. Past
REFUSED_PER_PASS refusals in one pass such a port is throttled: not read for THROTTLE_S,
so its backlog waits in TCP and the excess is lost at the site that made it.
"""

import logging
import os

from l2vpn import guard, loopguard, vlan
from l2vpn.frame import format_mac
from l2vpn.hosts import HostTable
from l2vpn.logs import DropReports, IntervalCounts, RateLimitedLog
from l2vpn.offload import PLAIN_HDR, VNET_HDR_LEN
from l2vpn.switch import DROP, PROBE, SwitchTable, split_key

log = logging.getLogger("l2vpn.hub")

REPORT_S = 10.0
REFUSED_PER_PASS = 128   # half a read's frames (transport.FRAME_BUDGET, node.TAP_BUDGET)
THROTTLE_S = 0.01
ETHERTYPE = VNET_HDR_LEN + 12           # frames on the data path lead with a vnet header
IP4_PROTO = VNET_HDR_LEN + 14 + 9       # an untagged IPv4 packet's protocol byte


class Bridge:
    """Switches frames between the ports added to it; `forward` is every port's `on_frame`."""

    def __init__(self, loop, sw, ports=None):
        self.loop = loop
        self.cfg = sw             # config.SwitchConfig
        self.ports_cfg = dict(ports or {})   # port name -> config.PortConfig (its own limits)
        self.names = {}           # port -> the name it was added under
        self.guards = _guards(sw)
        self.switch = SwitchTable(**_table_settings(sw, self.guards))
        self.loop_detector = loopguard.LoopGuard(os.urandom(32)) if sw.loop_detection else None
        self._probe_timer = None
        self.hosts = HostTable(max_macs=sw.max_entries)   # MAC -> the IPs it uses
        self._hosts_stale = False   # MACs were forgotten: drop their addresses at the tick
        self.drop_reports = DropReports(REPORT_S)   # per port
        self.flap_reports = IntervalCounts(REPORT_S)  # per MAC
        self._flappers = {}       # MAC -> (home, claimer) of the flap not yet logged
        self._refused = {}        # port -> frames the switch refused this pass
        self.throttled = {}       # port -> times throttled
        self.throttle_log = RateLimitedLog(log, burst=1, window_s=REPORT_S)

    # -- ports -----------------------------------------------------------------------
    def add_port(self, port, name, mtu):
        self.names[port] = name
        self.switch.add_port(port, mtu=mtu, **self._port_settings(name))
        if self.loop_detector is not None:
            self.loop_detector.add_port(port, name)

    def _port_settings(self, name) -> dict:
        own = self.ports_cfg.get(name)
        st = own.storm if own is not None else None
        return {"trusted": {kind for kind, names in self.guards.items() if name in names},
                "max_macs": own.max_macs if own is not None else None,
                "storm_pps": None if st is None else
                (st.broadcast_pps, st.multicast_pps, st.unknown_unicast_pps),
                "vlan": own.vlan if own is not None else None}

    def reconfigure(self, sw, ports) -> None:
        """Apply new switch settings and per-port limits live (a reload); MACs stay
        learnt (but those of a port whose VLAN policy changed), blocks and counters stay,
        loop detection starts or stops."""
        self.cfg, self.ports_cfg = sw, dict(ports or {})
        self.guards = _guards(sw)
        self.switch.configure(**_table_settings(sw, self.guards))
        for port, name in self.names.items():
            if self.switch.set_port(port, **self._port_settings(name)):
                self._hosts_stale = True
        self.hosts.max_macs = sw.max_entries
        if sw.loop_detection and self.loop_detector is None:
            self.loop_detector = loopguard.LoopGuard(os.urandom(32))
            for port, name in self.names.items():
                self.loop_detector.add_port(port, name)
            self.start_probes()
        elif not sw.loop_detection and self.loop_detector is not None:
            for port in list(self.names):
                self.loop_detector.remove_port(port)
                self.switch.unblock(port)
            self.loop_detector = None
            self._probe_timer.cancel()
            self._probe_timer = None

    def start_probes(self) -> None:
        """Probe for loops every loopguard interval (with loop detection on)."""
        if self.loop_detector is not None and self._probe_timer is None:
            self._probe_timer = self.loop.call_every(self.loop_detector.interval_s,
                                                     self.send_probes)

    def drop_port(self, port) -> int:
        """Forget the port and what was learnt on it; returns the MACs flushed."""
        if self.loop_detector is not None:
            for _action, _port, other in self.loop_detector.remove_port(port):
                log.warning("port %s, blocked for a loop with %s, is gone", port_name(port),
                            port_name(other))
        gone = {mac for mac, pair in self._flappers.items() if port in pair}
        self.flap_reports.forget(lambda mac: mac in gone)
        for mac in gone:
            del self._flappers[mac]
        self.drop_reports.forget(port)
        self.names.pop(port, None)
        self.throttled.pop(port, None)
        self._refused.pop(port, None)
        self._hosts_stale = True
        return self.switch.drop_port(port)

    # -- data path -------------------------------------------------------------------
    def forward(self, source, frame):
        switch = self.switch
        ports = switch.decide(frame, source, self.loop.clock(), VNET_HDR_LEN)
        if ports is DROP:
            n = self._refused.get(source, 0) + 1
            self._refused[source] = n
            if n == 1:
                self.loop.want_flush("throttle", self._throttle)
            return
        if ports is PROBE:
            if frame[ETHERTYPE] == 0x81 and frame[ETHERTYPE + 1] == 0 and \
                    len(frame) >= ETHERTYPE + 6:   # came back through a trunk: untag it
                frame = vlan.untag(frame, VNET_HDR_LEN)
            self._apply(self.loop_detector.on_probe(frame, VNET_HDR_LEN, source, self.loop.clock()))
            return
        # Hosts: only ARP, IPv6 and IPv4 UDP can prove an address; a TCP frame is turned
        # away by two byte compares.
        if frame[ETHERTYPE] != 0x08 or frame[ETHERTYPE + 1] != 0x00 or \
                (len(frame) > IP4_PROTO and frame[IP4_PROTO] == 17):
            self.hosts.observe(frame, VNET_HDR_LEN)
        if not ports:
            return
        if switch.vlans_on:
            self._send_vlan(ports, frame, switch.last_vlan)
        else:
            for port in ports:
                port.send_frame(frame)
        if len(ports) == 1:
            dest = ports[0]
            if dest.congested and not dest.stalled:
                source.pause()
                dest.add_waiter(source)

    def _send_vlan(self, ports, frame, vid):
        """Send a frame of VLAN `vid` to each port as its VLAN policy wants it."""
        policies, egress = self.switch.vlan_policies, vlan.egress
        for port in ports:
            out = egress(policies[port], vid, frame, VNET_HDR_LEN)
            if out is not None:
                port.send_frame(out)

    def _throttle(self):
        """End of pass: rest the ports whose frames were refused wholesale."""
        refused, self._refused = self._refused, {}
        for port, n in refused.items():
            if n < REFUSED_PER_PASS or port.paused:   # a port gone is gone from here too
                continue
            port.pause()
            self.loop.call_later(THROTTLE_S, port.resume)
            self.throttled[port] = self.throttled.get(port, 0) + 1
            name = port_name(port)
            self.throttle_log.warning(
                f"throttle {name}", "port %s: the switch refused %d of its frames in one "
                "pass; reading it at most every %g ms while that lasts (why: the port's next "
                "drop report)", name, n, THROTTLE_S * 1000)

    # -- loop detection --------------------------------------------------------------
    def send_probes(self):
        """Probe every port for loops, and act on the probes that never came back."""
        now = self.loop.clock()
        for port, probe in self.loop_detector.probes(now):
            port.send_frame(PLAIN_HDR + probe)
        self._apply(self.loop_detector.tick(now))

    def _apply(self, actions):
        for action, port, other in actions:
            name, other_name = port_name(port), port_name(other)
            if action == loopguard.BLOCK:
                self.switch.block(port)
                log.error("bridging loop between ports %s and %s: a probe sent out of one came "
                          "back in on the other; blocking %s until the loop is gone (check how "
                          "the LANs behind them are bridged)", other_name, name, name)
            else:
                # Hosts behind `port` were learnt on `other` through the loop: forget them.
                self.switch.unblock(port)
                self.switch.flush(other)
                self._hosts_stale = True
                log.warning("loop between ports %s and %s gone: unblocking %s", other_name,
                            name, name)

    # -- housekeeping ----------------------------------------------------------------
    def tick(self, now):
        """Age MACs (and their addresses) out, and report drops and flaps."""
        if self.switch.expire(now) or self._hosts_stale:
            self._hosts_stale = False
            self.hosts.keep_only(self.switch.known_macs().__contains__)
        self.report(now)

    def report(self, now):
        """Log drops and MAC flaps, at most one line per port (or MAC) per REPORT_S."""
        sw = self.cfg
        for port in self.switch.ports:
            self.drop_reports.update(port, self.switch.port_info(port)["drops"])
        for port, counts in self.drop_reports.due(now):
            log.warning("port %s dropped frames: %s", port_name(port),
                        "; ".join(f"{n} {_explain(reason, sw)}" for reason, n in counts.items()))
        for mac, (home, claimer, held) in self.switch.take_flaps().items():
            self._flappers[mac] = (home, claimer)   # the latest pair is the one to name
            self.flap_reports.add(mac, held)
        for mac, count in self.flap_reports.due(now):
            home, claimer = self._flappers.pop(mac)
            log.warning("MAC %s lives on port %s but port %s claimed it %d times in the "
                        "last %g s: held on %s (mac_move_holddown_s %g)", format_key(mac),
                        port_name(home), port_name(claimer), count, REPORT_S,
                        port_name(home), sw.mac_move_holddown_s)

    def port_info(self, port) -> dict:
        """The switch's view of one port, for status."""
        info = self.switch.port_info(port)
        info["throttled"] = self.throttled.get(port, 0)
        return info


def _guards(sw) -> dict:
    """guard kind -> the port names trusted for it, for the guards that are on."""
    return {kind: frozenset(g.trusted) for kind, g in
            ((guard.DHCP, sw.dhcp_guard), (guard.RA, sw.ra_guard)) if g is not None}


def _table_settings(sw, guards) -> dict:
    return {"aging_s": sw.aging_s, "max_entries": sw.max_entries,
            "max_macs_per_port": sw.max_macs_per_port, "holddown_s": sw.mac_move_holddown_s,
            "storm_pps": (sw.storm.broadcast_pps, sw.storm.multicast_pps,
                          sw.storm.unknown_unicast_pps),
            "guards": frozenset(guards),
            "intercept": loopguard.PROBE_DST if sw.loop_detection else None,
            "probe_pps": loopguard.PROBE_PPS}


_EXPLAIN = {
    "runt": "runt frames (under 14 bytes)",
    "oversize": "frames over the port MTU plus headers",
    "group_source": "frames with a multicast source MAC",
    "probe_excess": "frames to the loop-probe address over {probe_pps}/s",
    "blocked": "frames while the port is blocked by loop detection",
    "vlan": "frames its VLAN policy (ports.NAME.vlan) refuses: tagged on an access port, "
            "in a VLAN the trunk does not allow, or untagged on a trunk with no native VLAN",
    "dhcp_guard": "DHCP server messages (port not in switch.dhcp_guard.trusted)",
    "ra_guard": "router advertisements (port not in switch.ra_guard.trusted)",
    "port_limit": "frames from new MACs past max_macs_per_port ({max_macs_per_port})",
    "move_held": "frames claiming MACs of another port (mac_move_holddown_s {holddown:g})",
    "storm_broadcast": "broadcasts over storm.broadcast_pps ({storm.broadcast_pps})",
    "storm_multicast": "multicasts over storm.multicast_pps ({storm.multicast_pps})",
    "storm_unknown_unicast": "unknown unicasts over storm.unknown_unicast_pps "
                             "({storm.unknown_unicast_pps})",
}


def _explain(reason: str, sw) -> str:
    return _EXPLAIN[reason].format(probe_pps=loopguard.PROBE_PPS,
                                   max_macs_per_port=sw.max_macs_per_port,
                                   holddown=sw.mac_move_holddown_s, storm=sw.storm)


def format_key(key: bytes) -> str:
    """A switch key as text: the MAC, and its VLAN if it has one."""
    mac, vid = split_key(key)
    return format_mac(mac) if vid is None else f"{format_mac(mac)} (VLAN {vid})"


def port_name(port) -> str:
    return getattr(port, "cn", None) or port.name
