"""Bridging loops through the overlay: the hub's loop detection blocks the looped port,
lets it go when the loop is gone, and cannot be fooled into blocking by a hostile spoke.

A loop is closed with a veth pair whose ends are ports of LAN bridges in two namespaces
(two spokes' br-lan, or the hub's TAP bridged with a spoke's br-lan); it is opened again
by deleting the veth, which each test does itself and again in a `finally`. Times are
measured from the moment both veth ends are up (or the veth is gone) to the hub's log
line, which is written in the same step that blocks or unblocks the port; the log is
polled, not slept on. Storms are counted as copies of marked broadcasts at site-c's TAP
(read as they arrive) and as the growth of the switch's "flooded" counter.
"""

import contextlib
import os
import re
import time
import uuid

import pytest
from scapy.layers.l2 import Ether
from scapy.packet import Raw

import labnet

pytestmark = pytest.mark.netns

SPOKES = ["site-a", "site-b", "site-c"]
LANS = {"site-a": ["lan-a"], "site-b": ["lan-b"]}
BCAST = "ff:ff:ff:ff:ff:ff"
ETH_TEST = 0x88B5
PROBE_DST = "03:6c:32:76:70:6e"           # loopguard.PROBE_DST
PROBE_DST_BYTES = bytes.fromhex("036c3276706e")
HOLD_S = 3.0                               # loopguard's hold_s (the hub's default)
INTERVAL_S = 0.5                           # loopguard's interval_s
MAX_AGE_S = 2.0                            # loopguard's max_age_s
BLOCK_BOUND_S = 2.5                        # the issue says 2 s; 0.5 s of lab slack
UNBLOCK_BOUND_S = 5.0
STORM_WINDOW_S = 2.0
BURST = 20
BR_STATE_FORWARDING = 3
CUT_REACH_S = 6.0                          # > mac_move_holddown_s (5 s)

BLOCK_RX = re.compile(r"ERROR\s+l2vpn\.hub: bridging loop between ports (\S+) and (\S+):"
                      r".*blocking (\S+) until")
UNBLOCK_RX = re.compile(r"loop between ports (\S+) and (\S+) gone: unblocking (\S+)")


# ------------------------------------------------------------------------- helpers


class LogWatch:
    """What a daemon's log gained since this watch was made; cheap to poll."""

    def __init__(self, lab, name: str):
        self.path = lab.nodes[name].log
        self.offset = self.path.stat().st_size
        self.text = ""

    def read(self) -> str:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        self.offset += len(chunk)
        self.text += chunk.decode(errors="replace")
        return self.text

    def search(self, rx: re.Pattern):
        return rx.search(self.read())

    def wait(self, rx: re.Pattern, timeout_s: float, what: str):
        """(match, monotonic time it was seen); polled every 20 ms, bounded."""
        m = labnet.wait_until(lambda: self.search(rx), timeout_s, interval_s=0.02, what=what)
        return m, time.monotonic()


def _index(ipr, ifname: str):
    return (ipr.link_lookup(ifname=ifname) or [None])[0]


def _delete_link(ns: str, ifname: str) -> bool:
    """Delete ifname in ns if it is there (a veth takes its peer along); True if it was."""
    if not (labnet.NETNS_DIR / ns).exists():
        return False
    with labnet.NetNS(ns) as ipr:
        idx = _index(ipr, ifname)
        if idx is None:
            return False
        ipr.link("del", index=idx)
        return True


def forwarding(ns: str, ifname: str) -> bool:
    """ifname is an operationally up bridge port in the forwarding state."""
    with labnet.NetNS(ns) as ipr:
        link = ipr.get_links(_index(ipr, ifname))[0]
        slave = link.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_SLAVE_DATA")
        return (link.get_attr("IFLA_OPERSTATE") == "UP"
                and slave.get_attr("IFLA_BRPORT_STATE") == BR_STATE_FORWARDING)


@contextlib.contextmanager
def veth_between(ns1: str, master1: str, ns2: str, master2: str,
                 names=("loop0", "loop1")):
    """A veth from ns1 (a port of bridge master1) to ns2 (a port of master2), both ends up.

    Yields the monotonic time the second end came up; the veth is deleted on the way
    out whatever happened (deleting it earlier, to open the loop, is fine)."""
    a, b = names
    try:
        with labnet.NetNS(ns1) as ip1:
            labnet.add_veth(ip1, a, b, ns2)
            ia = labnet.wait_until(lambda: _index(ip1, a), 5, what=f"{a} in {ns1}")
            ip1.link("set", index=ia, address=labnet.stable_mac(f"{ns1}/{a}"))
            ip1.link("set", index=ia, master=_index(ip1, master1), state="up")
        with labnet.NetNS(ns2) as ip2:
            ib = labnet.wait_until(lambda: _index(ip2, b), 5, what=f"{b} in {ns2}")
            ip2.link("set", index=ib, address=labnet.stable_mac(f"{ns2}/{b}"))
            ip2.link("set", index=ib, master=_index(ip2, master2), state="up")
        t_up = time.monotonic()
        # the carrier reaches the bridges a moment later (linkwatch); frames sent before
        # that are dropped by the port, so wait for both ends to forward
        labnet.wait_until(lambda: forwarding(ns1, a) and forwarding(ns2, b), 5,
                          interval_s=0.01, what=f"{a} and {b} to forward")
        yield t_up
    finally:
        if not _delete_link(ns1, a):
            _delete_link(ns2, b)


def switch_of(lab) -> dict:
    return lab.status("hub")["switch"]


def mac_port(lab, mac: str):
    """The hub port the switch holds mac on, or None."""
    return {m["mac"]: m["port"] for m in lab.status("hub")["macs"]}.get(mac)


def marked_broadcast(src: str) -> tuple[bytes, bytes]:
    marker = b"l2vpn-loop-" + uuid.uuid4().hex.encode()
    frame = bytes(Ether(dst=BCAST, src=src, type=ETH_TEST) / Raw(marker.ljust(80, b".")))
    return frame, marker


def copies(sniffer, marker: bytes) -> int:
    return len(sniffer.matching(labnet.has_marker(marker)))


def timed_ping(lab, src: str, dst: str, timeout_s: float) -> float:
    t0 = time.monotonic()
    lab.wait_ping(lab.ns(src), lab.ip(dst), timeout_s=timeout_s)
    return time.monotonic() - t0


def lan_lab(make_lab, **kw):
    """site-a, site-b, site-c; lan-a behind site-a and lan-b behind site-b, both on
    their own br-lan; site-c reaches both LANs through their own spokes."""
    lab = make_lab(spokes=SPOKES, lan=LANS, **kw)
    for host in ("lan-a", "lan-b"):
        lab.wait_ping(lab.ns("site-c"), lab.ip(host), timeout_s=20)
    assert mac_port(lab, lab.mac("lan-b")) == "site-b"
    return lab


# ----------------------------------------------------------------------------- 1


def test_two_spokes_bridged_onto_one_lan_are_cut_apart_then_rejoined(make_lab):
    lab = lan_lab(make_lab)
    hub_log = LogWatch(lab, "hub")
    tap_c = lab.sniff("site-c", "l2vpn0")
    try:
        with veth_between(lab.ns("site-a"), labnet.LAN_BRIDGE,
                          lab.ns("site-b"), labnet.LAN_BRIDGE) as t_up:
            # one broadcast let loose as the loop closes: it must die out by itself
            storm, marker = marked_broadcast(labnet.stable_mac("storm-src"))
            lab.send_frame(lab.ns("lan-a"), "eth0", storm)

            m, t_seen = hub_log.wait(BLOCK_RX, 10, "the hub to log a bridging loop")
            to_block = t_seen - t_up
            assert to_block <= BLOCK_BOUND_S, f"blocked {to_block:.2f} s after the loop closed"
            assert {m.group(1), m.group(2)} == {"site-a", "site-b"}, m.group(0)
            blocked = switch_of(lab)["blocked"]
            assert len(blocked) == 1, blocked
            cut, kept = blocked[0]["port"], blocked[0]["loop_with"]
            assert {cut, kept} == {"site-a", "site-b"}, blocked
            assert m.group(3) == cut, m.group(0)

            # the storm the loop started has stopped: no more copies reach site-c
            before = copies(tap_c, marker)
            tap_c.poll(1.0)
            after = copies(tap_c, marker)
            assert after == before, (f"the broadcast still circulates while {cut} is blocked:"
                                     f" {after - before} more copies in 1 s")

            # and no storm develops while blocked: broadcasts from the looped LAN reach
            # site-c once each (a loop would bring copies back within milliseconds)
            burst = [marked_broadcast(labnet.stable_mac("burst-src")) for _ in range(BURST)]
            flooded0, t0 = switch_of(lab)["counters"]["flooded"], time.monotonic()
            lab.send_frame(lab.ns("lan-a"), "eth0", [f for f, _ in burst])
            for _, mk in burst:
                tap_c.wait_for(labnet.has_marker(mk), timeout_s=5)
            tap_c.poll(STORM_WINDOW_S)
            sw = switch_of(lab)
            flooded, secs = sw["counters"]["flooded"] - flooded0, time.monotonic() - t0
            seen = [copies(tap_c, mk) for _, mk in burst]
            assert seen == [1] * BURST, f"copies of each broadcast at site-c: {seen}"
            assert flooded < 200, f"{flooded} frames flooded in {secs:.1f} s while blocked"
            # the loop is still there and still proves itself, so the block holds
            assert [b["port"] for b in sw["blocked"]] == [cut], sw["blocked"]
            assert sw["loop_detection"]["probes_back"] > 0, sw["loop_detection"]

            # both LANs stay reachable from site-c: the one behind the spoke that stayed
            # up as before, the one behind the cut spoke across the looped LAN. Checked
            # here, asserted after the unblock below so that a failure still measures it.
            behind = {"site-a": "lan-a", "site-b": "lan-b"}
            h_cut, h_kept = behind[cut], behind[kept]
            reach = {h_kept: timed_ping(lab, "site-c", h_kept, 10)}
            try:
                reach[h_cut] = timed_ping(lab, "site-c", h_cut, CUT_REACH_S)
            except TimeoutError:
                sessions = {s["node"]: s["switch"] for s in lab.status("hub")["sessions"]}
                reach[h_cut] = (f"unreachable for {CUT_REACH_S} s while {cut} is blocked; "
                                f"the hub holds {h_cut}'s MAC on port "
                                f"{mac_port(lab, lab.mac(h_cut))}; site-c's frames dropped as "
                                f"'blocked': {sessions['site-c']['drops']['blocked']}")

            t_down = time.monotonic()
            assert _delete_link(lab.ns("site-a"), "loop0")
        m, t_seen = hub_log.wait(UNBLOCK_RX, 10, "the hub to unblock after the loop is gone")
        to_unblock = t_seen - t_down
        assert m.group(3) == cut and {m.group(1), m.group(2)} == {"site-a", "site-b"}, m.group(0)
        assert HOLD_S - 2 * INTERVAL_S <= to_unblock <= UNBLOCK_BOUND_S, \
            f"unblocked {to_unblock:.2f} s after the loop was opened (hold_s {HOLD_S})"
        assert switch_of(lab)["blocked"] == []
        # site-c reaches both LANs through their own spokes again
        back = {h: timed_ping(lab, "site-c", h, 15) for h in ("lan-a", "lan-b")}
        for spoke, h in behind.items():
            lab.wait_until(lambda: mac_port(lab, lab.mac(h)) == spoke, 10,
                           what=f"{h}'s MAC back on port {spoke}")
        print(f"\nloop site-a<->site-b: blocked {cut} after {to_block:.2f} s; storm copies at "
              f"site-c {before} (all before the block); while blocked {BURST} broadcasts "
              f"flooded {flooded} frames in {secs:.1f} s; ping from site-c while blocked: "
              + f"{reach}; unblocked {to_unblock:.2f} s after the veth went; reached again in "
              + ", ".join(f"{h} {t:.1f} s" for h, t in back.items()))
        assert isinstance(reach[h_cut], float), f"site-c -> {h_cut}: {reach[h_cut]}"
    finally:
        tap_c.close()


def test_without_loop_detection_one_broadcast_circulates(make_lab):
    """The contrast to test 1: the same loop with switch.loop_detection off."""
    lab = make_lab(spokes=SPOKES, lan=LANS, start=False)
    lab.update_config("hub", {"switch": {"loop_detection": False}})
    lab.start_all()
    lab.wait_sessions()
    lab.wait_ping(lab.ns("site-c"), lab.ip("lan-a"), timeout_s=20)
    assert "loop_detection" not in switch_of(lab)
    tap_c = lab.sniff("site-c", "l2vpn0")
    try:
        with veth_between(lab.ns("site-a"), labnet.LAN_BRIDGE,
                          lab.ns("site-b"), labnet.LAN_BRIDGE):
            storm, marker = marked_broadcast(labnet.stable_mac("storm-src"))
            flooded0 = switch_of(lab)["counters"]["flooded"]
            t0 = time.monotonic()
            lab.send_frame(lab.ns("lan-a"), "eth0", storm)
            tap_c.poll(STORM_WINDOW_S)         # read as they arrive: the times are real
            got = tap_c.matching(labnet.has_marker(marker))
            sw = switch_of(lab)
            assert sw["blocked"] == []
            assert len(got) > 100, f"only {len(got)} copies at site-c: the loop did not circulate"
        tap_c.poll(1.0)                        # the loop is open: nothing more may come
        settled = copies(tap_c, marker)
        tap_c.poll(1.0)
        assert copies(tap_c, marker) == settled
        drops = {s["node"]: s["switch"]["drops"] for s in lab.status("hub")["sessions"]}
        held = {p: d["move_held"] for p, d in drops.items() if d["move_held"]}
        stormed = {p: d["storm_broadcast"] for p, d in drops.items() if d["storm_broadcast"]}
        print(f"\nno loop detection: one broadcast from lan-a came to site-c {len(got)} times "
              f"over {got[-1].t - got[0].t:.2f} s (first {got[0].t - t0:.3f} s after sending); "
              f"flooded +{sw['counters']['flooded'] - flooded0}; move_held drops {held}, "
              f"storm_broadcast drops {stormed}")
    finally:
        tap_c.close()


# ----------------------------------------------------------------------------- 2


def test_lan_looped_back_into_the_hub_tap_blocks_the_spoke(make_lab):
    lab = make_lab(spokes=["site-a", "site-b"], lan={"site-a": ["lan-a"]})
    hub_ns, hub_tap = lab.ns("hub"), lab.nodes["hub"].tap
    hub_log = LogWatch(lab, "hub")
    try:
        with labnet.NetNS(hub_ns) as ipr:
            ipr.link("add", ifname="br-loop", kind="bridge", br_mcast_snooping=0,
                     address=labnet.stable_mac("hub/br-loop"))
            br = _index(ipr, "br-loop")
            ipr.link("set", index=br, state="up")
            ipr.link("set", index=_index(ipr, hub_tap), master=br)
        with veth_between(hub_ns, "br-loop", lab.ns("site-a"), labnet.LAN_BRIDGE) as t_up:
            m, t_seen = hub_log.wait(BLOCK_RX, 10, "the hub to log a bridging loop")
            to_block = t_seen - t_up
            assert to_block <= BLOCK_BOUND_S, f"blocked {to_block:.2f} s after the loop closed"
            assert (m.group(1), m.group(2), m.group(3)) == ("hub", "site-a", "site-a"), m.group(0)
            blocked = switch_of(lab)["blocked"]
            assert [(b["port"], b["loop_with"]) for b in blocked] == [("site-a", "hub")]
            t_down = time.monotonic()
            assert _delete_link(hub_ns, "loop0")
        m, t_seen = hub_log.wait(UNBLOCK_RX, 10, "the hub to unblock after the loop is gone")
        to_unblock = t_seen - t_down
        assert m.group(3) == "site-a", m.group(0)
        assert HOLD_S - 2 * INTERVAL_S <= to_unblock <= UNBLOCK_BOUND_S, \
            f"unblocked {to_unblock:.2f} s after the loop was opened (hold_s {HOLD_S})"
        assert switch_of(lab)["blocked"] == []
        print(f"\nloop hub TAP<->site-a: blocked site-a after {to_block:.2f} s, unblocked "
              f"{to_unblock:.2f} s after the veth went")
    finally:
        _delete_link(hub_ns, "br-loop")      # sets the hub's TAP free again
    assert labnet.link_info(hub_ns, hub_tap).get("master") is None


# ----------------------------------------------------------------------------- 3


def test_hostile_spoke_cannot_get_a_port_blocked(make_lab):
    lab = make_lab(spokes=SPOKES)
    ns_c, tap = lab.ns("site-c"), "l2vpn0"
    hub_log = LogWatch(lab, "hub")
    sn = lab.sniff("site-c", tap)
    try:
        # a genuine probe, as site-c sees it: the material for replays and forgeries
        probe = sn.wait_for(lambda f: f.data[:6] == PROBE_DST_BYTES, timeout_s=5)[0]
        name_at = 14 + len(b"L2VPNLOOP") + 8 + 13
        assert probe.data[name_at - 1:name_at + 6] == b"\x06site-c", probe.data.hex()
        sw = switch_of(lab)
        assert sw["loop_detection"]["reflected"] == 0 and sw["blocked"] == [], sw
        base = sw["loop_detection"]

        # site-c's LAN hands back everything the hub sends it: a one-port bridge in
        # hairpin mode floods each probe back out of the TAP it came in by
        with labnet.NetNS(ns_c) as ipr:
            ipr.link("add", ifname="br-refl", kind="bridge", br_mcast_snooping=0,
                     address=labnet.stable_mac("site-c/br-refl"))
            br = _index(ipr, "br-refl")
            ipr.link("set", index=br, state="up")
            ti = _index(ipr, tap)
            ipr.link("set", index=ti, master=br)
            ipr.brport("set", index=ti, mode=1)
        try:
            lab.wait_until(lambda: switch_of(lab)["loop_detection"]["reflected"]
                           >= base["reflected"] + 3, 5, what="probes reflected by site-c")

            # forgeries from site-c: garbage, a probe renamed to site-a (bad HMAC), one cut
            # short (no HMAC), and a genuine probe replayed after max_age_s (stale)
            renamed = bytearray(probe.data)
            renamed[name_at:name_at + 6] = b"site-a"
            forged = [
                bytes(Ether(dst=PROBE_DST, src=labnet.stable_mac("forger"), type=ETH_TEST)
                      / Raw(os.urandom(64))),
                bytes(renamed),
                probe.data[:name_at + 6],
            ]
            # the replay must be stale: waiting for the clock is the point here
            time.sleep(max(0.0, probe.t + MAX_AGE_S + 0.5 - time.monotonic()))
            forged.append(probe.data)
            before = switch_of(lab)["loop_detection"]
            lab.send_frame(ns_c, tap, forged)
            lab.wait_until(lambda: switch_of(lab)["loop_detection"]["forged"]
                           >= before["forged"] + len(forged), 5, what="forged probes counted")
            # several more rounds of probes go and (from site-c) come back: nothing blocked
            sent = switch_of(lab)["loop_detection"]["probes_sent"]
            lab.wait_until(lambda: switch_of(lab)["loop_detection"]["probes_sent"]
                           >= sent + 3 * 4, 5, what="three more rounds of probes")
            sw = switch_of(lab)
        finally:
            _delete_link(ns_c, "br-refl")
        ld = sw["loop_detection"]
        assert sw["blocked"] == [], sw["blocked"]
        assert ld["forged"] - before["forged"] == len(forged), ld
        assert ld["reflected"] > before["reflected"], ld
        assert ld["probes_back"] == base["probes_back"] == 0, ld
        assert not BLOCK_RX.search(hub_log.read()), "the hub logged a loop"
        print(f"\nhostile site-c: reflected {ld['reflected']}, forged {ld['forged']}, "
              f"probes_back {ld['probes_back']}, blocked {sw['blocked']}")
    finally:
        sn.close()
