"""The hub: accepts spoke sessions and switches frames between them and its own TAP.

Every session that finished its hello is a switch port named after its certificate CN;
the hub's own TAP, when configured, is the port named `hub`. The switch table decides,
the ports carry; frames are in vnet form (virtio-net header first) and each port turns
them into what its far side takes. When a frame's one destination is backed up, the
source is paused until that destination drains, so a fast sender slows down instead of
filling memory; a destination that stops draining is marked stalled and then loses
frames instead, so it cannot hold its senders back.

Protection (switch.py does the deciding): loop probes go out of every port each
`loopguard` interval and come back through the switch as PROBE; the detector's block
and unblock actions are applied to the switch and logged. Drops are reported once per
REPORT_S per port, however many frames they were.

A port whose frames the switch refuses wholesale (a storm past the limits from a spoke
that does not apply them, spoofed MACs past the limit) costs the hub a decryption, a
decode and a decision for every frame it then drops, CPU the other sites need. Past
REFUSED_PER_PASS refusals in one pass such a port is throttled: not read for THROTTLE_S,
so its backlog waits in TCP and the excess is lost at the site that made it.
"""

import errno
import logging
import os
import resource

from l2vpn import guard, loopguard, pki
from l2vpn.hosts import HostTable
from l2vpn.config import NODE_NAME
from l2vpn.errors import PKIError
from l2vpn.frame import format_mac
from l2vpn.logs import DropReports, IntervalCounts, RateLimitedLog
from l2vpn.node import Node
from l2vpn.eventloop import READ
from l2vpn.offload import PLAIN_HDR, VNET_HDR_LEN
from l2vpn.switch import DROP, PROBE, SwitchTable
from l2vpn.transport import (CLOSED, FAILURES, NAME_MISMATCH, PROTOCOL, UNTRUSTED, Session,
                             format_addr, listen)
from l2vpn.wire import CAP_FLOOD_LIMITS, CAP_VNET_HDR

log = logging.getLogger("l2vpn.hub")

HUB_PORT = "hub"
ACCEPT_BUDGET = 64
ACCEPT_REST_S = 0.5
MAX_PENDING = 1024    # handshakes in progress; past it new connections are closed at once
REPORT_S = 10.0
REFUSED_PER_PASS = 128   # half a read's frames (transport.FRAME_BUDGET, node.TAP_BUDGET)
THROTTLE_S = 0.01
ETHERTYPE = VNET_HDR_LEN + 12           # frames on the data path lead with a vnet header
IP4_PROTO = VNET_HDR_LEN + 14 + 9       # an untagged IPv4 packet's protocol byte
# accept() errors that will repeat until something is freed: rest instead of spinning
_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Hub(Node):
    role = "hub"

    def __init__(self, cfg, loop=None, notifier=None):
        super().__init__(cfg, loop, notifier)
        sw = cfg.switch
        self.guards = {kind: frozenset(g.trusted) for kind, g in
                       ((guard.DHCP, sw.dhcp_guard), (guard.RA, sw.ra_guard)) if g is not None}
        self.switch = SwitchTable(
            aging_s=sw.aging_s, max_entries=sw.max_entries,
            max_macs_per_port=sw.max_macs_per_port, holddown_s=sw.mac_move_holddown_s,
            storm_pps=(sw.storm.broadcast_pps, sw.storm.multicast_pps,
                       sw.storm.unknown_unicast_pps),
            guards=frozenset(self.guards),
            intercept=loopguard.PROBE_DST if sw.loop_detection else None,
            probe_pps=loopguard.PROBE_PPS)
        self.loop_detector = loopguard.LoopGuard(os.urandom(32)) if sw.loop_detection else None
        self.hosts = HostTable(max_macs=sw.max_entries)   # MAC -> the IPs it uses
        self._hosts_stale = False   # MACs were forgotten: drop their addresses at the tick
        self.sessions = {}        # CN -> Session, only sessions that are up
        self.pending = set()      # handshaking or waiting for the hello
        self.refusals = RateLimitedLog(log)
        self.drop_reports = DropReports(REPORT_S)   # per port
        self.flap_reports = IntervalCounts(REPORT_S)  # per MAC
        self._flappers = {}       # MAC -> (home, claimer) of the flap not yet logged
        self._refused = {}        # port -> frames the switch refused this pass
        self.throttled = {}       # port -> times throttled
        self.throttle_log = RateLimitedLog(log, burst=1, window_s=REPORT_S)
        self.listener = None
        self.handshakes = 0       # connections a handshake began on
        self.handshake_failures = dict.fromkeys(FAILURES, 0)   # by transport.FAILURES

    def _start(self):
        _raise_fd_limit()
        self.context = pki.hub_context(self.cfg.tls)
        self.listener = listen(self.cfg.listen.address, self.cfg.listen.port)
        self._closers.append(self.listener.close)
        if self.cfg.tap is not None:
            self.tap = self.open_tap(self.cfg.tap, HUB_PORT, self._forward)
            self._add_port(self.tap, HUB_PORT, self.cfg.tap.mtu)
        self.loop.watch(self.listener, READ, self._accept)
        if self.loop_detector is not None:
            self.loop.call_every(self.loop_detector.interval_s, self._send_probes)
        log.info("hub %s listening on %s", self.cfg.node,
                 format_addr((self.cfg.listen.address, self.cfg.listen.port)))

    # -- sessions --------------------------------------------------------------------
    def _accept(self, _mask):
        for _ in range(ACCEPT_BUDGET):
            try:
                sock, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in _EXHAUSTED:
                    self.refusals.warning("accept-exhausted", "accept failed: %s; not accepting "
                                          "for %g s (raise LimitNOFILE / ulimit -n)",
                                          e.strerror, ACCEPT_REST_S)
                    self.loop.rest(self.listener, self._accept, ACCEPT_REST_S)
                else:
                    self.refusals.warning("accept", "accept failed: %s", e)
                return
            if len(self.pending) >= MAX_PENDING:
                sock.close()
                self.refusals.warning("pending", "%d handshakes in progress: closing the "
                                      "connection from %s at once", len(self.pending),
                                      format_addr(addr))
                continue
            sock.setblocking(False)
            self.handshakes += 1
            session = Session(
                self.loop, sock, format_addr(addr), context=self.context, server_side=True,
                node=self.cfg.node, mtu=self._mtu(),
                caps=(CAP_VNET_HDR if self.cfg.listen.offload else 0) | CAP_FLOOD_LIMITS,
                on_secure=self._on_secure,
                on_up=self._on_up, on_frame=self._forward, on_close=self._on_close)
            if session.state != CLOSED:
                self.pending.add(session)

    def _mtu(self) -> int:
        return self.cfg.tap.mtu if self.cfg.tap is not None else 1500

    def _on_secure(self, session):
        try:
            cn = pki.peer_common_name(session.tls)
        except PKIError as e:
            session.failure = UNTRUSTED
            return f"refused: {e}"
        if not NODE_NAME.fullmatch(cn):
            session.failure = NAME_MISMATCH
            return f"refused: certificate CN {cn!r} is not a valid node name"
        if cn == HUB_PORT and self.tap is not None:
            session.failure = NAME_MISMATCH
            return f"refused: CN {cn!r} is the name of the hub's own TAP port"
        session.cn = cn
        return self.revoked(session)

    def _on_up(self, session):
        if session.name != session.cn:
            session.failure = NAME_MISMATCH
            return (f"refused: hello names node {session.name!r} but the certificate CN is "
                    f"{session.cn!r}; set node: {session.cn} in the spoke's config")
        if session.peer.mtu != self._mtu():
            log.warning("spoke %s has MTU %d, we have %d: frames above the smaller one will "
                        "be dropped by a TAP", session.name, session.peer.mtu, self._mtu())
        old = self.sessions.pop(session.cn, None)
        if old is not None:
            log.warning("spoke %s connected again from %s: replacing its session from %s",
                        session.cn, session.remote, old.remote)
            self._drop_port(old)
            old.goodbye("replaced by a newer session", linger_s=0.2)
        self.pending.discard(session)
        self.sessions[session.cn] = session
        self._add_port(session, session.cn, session.peer.mtu)
        if session.flood_limits:   # the spoke drops a storm before it costs us anything
            st = self.cfg.switch.storm
            session.send_limits(st.broadcast_pps, st.multicast_pps, st.unknown_unicast_pps)
        log.info("spoke %s up from %s (%s%s)", session.cn, session.remote,
                 "super-frames carried whole" if session.vnet else "plain frames",
                 "" if session.flood_limits else "; it does not apply flood limits itself")
        return None

    def _on_close(self, session, reason):
        self.pending.discard(session)
        if self.sessions.get(session.cn) is session:
            del self.sessions[session.cn]
            flushed = self._drop_port(session)
            log.info("spoke %s down: %s (%d MACs flushed)", session.cn, reason, flushed)
        elif session.up_since is None:
            if not self.stopping:
                self.handshake_failures[session.failure or PROTOCOL] += 1
            self.refusals.warning("refused", "session from %s refused: %s",
                                  session.remote, reason.removeprefix("refused: "))

    def peer_sessions(self) -> list:
        return list(self.sessions.values()) + list(self.pending)

    # -- switch ports ----------------------------------------------------------------
    def _add_port(self, port, name, mtu):
        self.switch.add_port(port, mtu=mtu,
                             trusted={kind for kind, names in self.guards.items() if name in names})
        if self.loop_detector is not None:
            self.loop_detector.add_port(port, name)

    def _drop_port(self, port) -> int:
        if self.loop_detector is not None:
            for _action, _port, other in self.loop_detector.remove_port(port):
                log.warning("port %s, blocked for a loop with %s, is gone", _port_name(port),
                            _port_name(other))
        gone = {mac for mac, pair in self._flappers.items() if port in pair}
        self.flap_reports.forget(lambda mac: mac in gone)
        for mac in gone:
            del self._flappers[mac]
        self.drop_reports.forget(port)
        self.throttled.pop(port, None)
        self._refused.pop(port, None)
        self._hosts_stale = True
        return self.switch.drop_port(port)

    # -- data path -------------------------------------------------------------------
    def _forward(self, source, frame):
        ports = self.switch.decide(frame, source, self.loop.clock(), VNET_HDR_LEN)
        if ports is DROP:
            n = self._refused.get(source, 0) + 1
            self._refused[source] = n
            if n == 1:
                self.loop.want_flush("throttle", self._throttle)
            return
        if ports is PROBE:
            self._apply(self.loop_detector.on_probe(frame, VNET_HDR_LEN, source, self.loop.clock()))
            return
        # Hosts: only ARP, IPv6 and IPv4 UDP can prove an address; a TCP frame is turned
        # away by two byte compares.
        if frame[ETHERTYPE] != 0x08 or frame[ETHERTYPE + 1] != 0x00 or \
                (len(frame) > IP4_PROTO and frame[IP4_PROTO] == 17):
            self.hosts.observe(frame, VNET_HDR_LEN)
        if not ports:
            return
        for port in ports:
            port.send_frame(frame)
        if len(ports) == 1:
            dest = ports[0]
            if dest.congested and not dest.stalled:
                source.pause()
                dest.add_waiter(source)

    def _throttle(self):
        """End of pass: rest the ports whose frames were refused wholesale."""
        refused, self._refused = self._refused, {}
        for port, n in refused.items():
            if n < REFUSED_PER_PASS or port.paused:   # a port gone is gone from here too
                continue
            port.pause()
            self.loop.call_later(THROTTLE_S, port.resume)
            self.throttled[port] = self.throttled.get(port, 0) + 1
            name = _port_name(port)
            self.throttle_log.warning(
                f"throttle {name}", "port %s: the switch refused %d of its frames in one "
                "pass; reading it at most every %g ms while that lasts (why: the port's next "
                "drop report)", name, n, THROTTLE_S * 1000)

    # -- loop detection --------------------------------------------------------------
    def _send_probes(self):
        now = self.loop.clock()
        for port, probe in self.loop_detector.probes(now):
            port.send_frame(PLAIN_HDR + probe)
        self._apply(self.loop_detector.tick(now))

    def _apply(self, actions):
        for action, port, other in actions:
            name, other_name = _port_name(port), _port_name(other)
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
    def _tick(self):
        now = self.loop.clock()
        if self.switch.expire(now) or self._hosts_stale:
            self._hosts_stale = False
            self.hosts.keep_only(self.switch.__contains__)
        for session in list(self.sessions.values()):
            self.check_session_health(session, now)
        self._report(now)

    def _report(self, now):
        """Log drops and MAC flaps, at most one line per port (or MAC) per REPORT_S."""
        sw = self.cfg.switch
        for port in self.switch.ports:
            self.drop_reports.update(port, self.switch.port_info(port)["drops"])
        for port, counts in self.drop_reports.due(now):
            log.warning("port %s dropped frames: %s", _port_name(port),
                        "; ".join(f"{n} {_explain(reason, sw)}" for reason, n in counts.items()))
        for mac, (home, claimer, held) in self.switch.take_flaps().items():
            self._flappers[mac] = (home, claimer)   # the latest pair is the one to name
            self.flap_reports.add(mac, held)
        for mac, count in self.flap_reports.due(now):
            home, claimer = self._flappers.pop(mac)
            log.warning("MAC %s lives on port %s but port %s claimed it %d times in the "
                        "last %g s: held on %s (mac_move_holddown_s %g)", format_mac(mac),
                        _port_name(home), _port_name(claimer), count, REPORT_S,
                        _port_name(home), sw.mac_move_holddown_s)

    def _say_goodbye(self):
        for session in list(self.sessions.values()) + list(self.pending):
            session.goodbye("hub shutting down", linger_s=0.5)

    def summary(self) -> str:
        n = len(self.sessions)
        return f"{n} spoke{'s' * (n != 1)} up, {len(self.switch)} MACs"

    def status(self) -> dict:
        now = self.loop.clock()
        out = self.base_status()
        out["listen"] = format_addr((self.cfg.listen.address, self.cfg.listen.port))
        out["sessions"] = []
        for s in sorted(self.sessions.values(), key=lambda s: s.cn):
            snap = s.snapshot(now)
            snap["switch"] = self.switch.port_info(s)
            snap["switch"]["throttled"] = self.throttled.get(s, 0)
            out["sessions"].append(snap)
        if self.tap is not None:
            out["tap"]["switch"] = self.switch.port_info(self.tap)
            out["tap"]["switch"]["throttled"] = self.throttled.get(self.tap, 0)
        out["pending"] = len(self.pending)
        out["macs"] = [{"mac": format_mac(mac), "port": port.name, "age_s": round(age, 3),
                        "ips": self.hosts.ips(mac)}
                       for mac, port, age in self.switch.entries(now)]
        blocked = self.loop_detector.blocked() if self.loop_detector is not None else {}
        sw = self.cfg.switch
        out["switch"] = {
            "entries": len(self.switch), "aging_s": sw.aging_s,
            "max_entries": sw.max_entries, "max_macs_per_port": sw.max_macs_per_port,
            "mac_move_holddown_s": sw.mac_move_holddown_s,
            "storm": {"broadcast_pps": sw.storm.broadcast_pps,
                      "multicast_pps": sw.storm.multicast_pps,
                      "unknown_unicast_pps": sw.storm.unknown_unicast_pps},
            "dhcp_guard": list(sw.dhcp_guard.trusted) if sw.dhcp_guard else None,
            "ra_guard": list(sw.ra_guard.trusted) if sw.ra_guard else None,
            "counters": dict(self.switch.counters),
            "blocked": [{"port": _port_name(p), "loop_with": _port_name(other),
                         "since_s": round(now - since, 3)}
                        for p, (other, since) in blocked.items()],
        }
        if self.loop_detector is not None:
            out["switch"]["loop_detection"] = dict(self.loop_detector.counters)
        return out


_EXPLAIN = {
    "runt": "runt frames (under 14 bytes)",
    "oversize": "frames over the port MTU plus headers",
    "group_source": "frames with a multicast source MAC",
    "probe_excess": "frames to the loop-probe address over {probe_pps}/s",
    "blocked": "frames while the port is blocked by loop detection",
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


def _port_name(port) -> str:
    return getattr(port, "cn", None) or port.name


def _raise_fd_limit():
    """Each spoke costs a descriptor: take the hard limit, not the 1024 soft default."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open-file limit from %d: %s", soft, e)
