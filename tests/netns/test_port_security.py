"""Port security at the hub, seen from the sites: the per-port MAC limit, the MAC move
hold-down (and its log lines when a MAC flaps), and the DHCP and RA guards.

Each test builds its own small lab with the hub's `switch:` settings it needs (a lab
starts in about two seconds). Frames are built with scapy and injected into a spoke's
TAP (or the hub's) from the namespace side, so the spoke daemon carries them to the hub
as if a host behind it had sent them. "Not delivered" is proved as in
test_forwarding.py: after the frames under test, a fence frame is sent on the same path
and awaited; the hub keeps each port's order, so anything that was going to arrive
would have arrived before the fence. Counters come from the hub's status JSON, taken
before and after, so the assertions hold exactly for the frames this test sent.
"""

import json
import re
import time
import uuid

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dhcp6 import DHCP6_Advertise, DHCP6_Solicit
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import (ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6ND_RA, ICMPv6ND_RS,
                                ICMPv6NDOptSrcLLAddr, IPv6, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop)
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

import labnet
from l2vpn.config import load_hub

pytestmark = pytest.mark.netns

BCAST = "ff:ff:ff:ff:ff:ff"
ETH_TEST = 0x88B5                    # IEEE local experimental ethertype
SPOKES = ("site-a", "site-b", "site-c")
SITES = ("hub",) + SPOKES
GUARDS = ("dhcp_guard", "ra_guard")


# ------------------------------------------------------------------------- helpers


def new_marker() -> bytes:
    return b"l2vpn-test-" + uuid.uuid4().hex.encode()


def fake_mac(tag: str) -> str:
    return labnet.stable_mac(f"{tag}-{uuid.uuid4().hex}")


def make_frame(dst: str, src: str, marker: bytes) -> bytes:
    """An Ethernet frame carrying marker, padded well past the 60-byte minimum."""
    return bytes(Ether(dst=dst, src=src, type=ETH_TEST) / Raw(marker.ljust(80, b".")))


def start_lab(make_lab, switch: dict | None = None, spokes=SPOKES, **kw):
    """A lab whose hub runs with `switch:` merged into its config, all sessions up."""
    lab = make_lab(spokes=spokes, start=False, **kw)
    if switch:
        lab.update_config("hub", {"switch": switch})
    lab.start_all()
    lab.wait_sessions()
    return lab


def send_from(lab, site, frames):
    """Frames into site's TAP from its namespace: its daemon carries them into the VPN."""
    lab.send_frame(lab.ns(site), lab.overlay_if(site), frames)


def sniffers(lab, sites):
    return {s: lab.sniff(s) for s in sites}


def close_all(sn):
    for s in sn.values():
        s.close()


def fence(lab, sender, receivers, sn):
    """A broadcast from a fresh MAC at sender, awaited at every receiver."""
    m = new_marker()
    send_from(lab, sender, make_frame(BCAST, fake_mac("fence"), m))
    for r in receivers:
        sn[r].wait_for(labnet.has_marker(m), timeout_s=10)


def got(sniffer, marker) -> list:
    return sniffer.matching(labnet.has_marker(marker))


def port_switch(status: dict, site: str) -> dict:
    """The switch facts (macs, blocked, drops) of one port in the hub's status."""
    if site == "hub":
        return status["tap"]["switch"]
    (s,) = [s for s in status["sessions"] if s["node"] == site]
    return s["switch"]


def mac_table(status: dict) -> dict:
    return {m["mac"]: m["port"] for m in status["macs"]}


def assert_ping(lab, src, dst, count=3):
    r = lab.ping(lab.ns(src), lab.ip(dst), count=count)
    assert r.ok, f"ping {src} -> {dst}: {r}\n{r.output}"


def learn_site_macs(lab, sites):
    """Ping around until the hub has each site's own TAP MAC on that site's port."""
    for a, b in zip(sites, sites[1:] + sites[:1]):
        lab.wait_ping(lab.ns(a), lab.ip(b))
    want = {lab.mac(s): s for s in sites}
    return lab.wait_until(
        lambda: (st := lab.status("hub")) and all(mac_table(st).get(m) == p
                                                  for m, p in want.items()) and st,
        10, what=f"hub to learn {want}")


def log_lines(lab, pattern: str) -> list[str]:
    rx = re.compile(pattern)
    return [line for line in lab.log("hub").splitlines() if rx.search(line)]


# --------------------------------------------------------------------- MAC limit


LIMIT = 20
FLOOD_MACS = 60


def test_mac_limit_per_port_drops_new_sources_and_counts_them(make_lab):
    lab = start_lab(make_lab, {"max_macs_per_port": LIMIT})
    before = learn_site_macs(lab, list(SPOKES))
    held_a = port_switch(before, "site-a")["macs"]     # site-a's TAP MAC at least
    b_mac, c_mac, a_mac = lab.mac("site-b"), lab.mac("site-c"), lab.mac("site-a")
    b_before = port_switch(before, "site-b")
    assert 1 <= held_a < LIMIT
    room = LIMIT - held_a
    marker = new_marker()
    srcs = [labnet.stable_mac(f"limit-{i}-{marker.decode()}") for i in range(FLOOD_MACS)]
    sn = sniffers(lab, ["hub", "site-b", "site-c"])
    try:
        send_from(lab, "site-a", [make_frame(BCAST, s, marker) for s in srcs])
        # already learnt MACs on the full port still pass: the TAP's own, and the first fake
        old_own, old_fake = new_marker(), new_marker()
        send_from(lab, "site-a", [make_frame(BCAST, a_mac, old_own),
                                  make_frame(BCAST, srcs[0], old_fake)])
        for r in ("hub", "site-b", "site-c"):
            sn[r].wait_for(labnet.has_marker(old_fake), timeout_s=10)
            assert len(got(sn[r], old_own)) == 1, f"{r}: a learnt MAC of site-a was dropped"
            seen = [f.src for f in got(sn[r], marker)]
            assert len(seen) == len(set(seen)) == room, \
                f"{r} got frames from {len(set(seen))} new MACs of site-a, want {room}"
            assert seen == srcs[:room], f"{r}: not the first {room} new MACs were admitted"
    finally:
        close_all(sn)

    after = lab.status("hub")
    dropped = FLOOD_MACS - room
    a_after = port_switch(after, "site-a")
    assert a_after["macs"] == LIMIT
    assert a_after["drops"]["port_limit"] == dropped
    assert after["switch"]["counters"]["port_limit"] == \
        before["switch"]["counters"]["port_limit"] + dropped
    table = mac_table(after)
    assert sum(1 for p in table.values() if p == "site-a") == LIMIT
    assert not set(srcs[room:]) & set(table), "a MAC past the limit was learnt"
    # the other ports are untouched
    b_after = port_switch(after, "site-b")
    assert b_after["macs"] == b_before["macs"] and not any(b_after["drops"].values())
    assert table.get(b_mac) == "site-b" and table.get(c_mac) == "site-c"
    assert_ping(lab, "site-b", "site-c")
    assert_ping(lab, "site-c", "site-b")
    assert_ping(lab, "site-a", "site-b")          # a full port still serves its hosts

    # one summary line for the burst, not one per dropped frame
    pattern = (r"port site-a dropped frames: \d+ frames from new MACs past "
               rf"max_macs_per_port \({LIMIT}\)")
    lines = lab.wait_until(lambda: log_lines(lab, pattern), 5,
                           what="the hub to log site-a's port_limit drops")
    lines = log_lines(lab, pattern)
    assert 1 <= len(lines) <= 2, lines
    counts = [int(re.search(r"dropped frames: (\d+)", line).group(1)) for line in lines]
    assert 1 <= sum(counts) <= dropped, lines


# ------------------------------------------------------------- MAC move hold-down


HOLD_S = 2.0
FLAPS = 100
FLAP_WINDOW_S = 10.0


def test_mac_move_held_down_then_converges_and_flaps_log_little(make_lab):
    lab = start_lab(make_lab, {"mac_move_holddown_s": HOLD_S})
    sn = sniffers(lab, SITES)
    try:
        # -- flapping: F lives on site-a, site-b claims it FLAPS times in between
        flapper = fake_mac("flapper")
        m = new_marker()
        t_flap = time.monotonic()
        send_from(lab, "site-a", make_frame(BCAST, flapper, m))
        sn["site-c"].wait_for(labnet.has_marker(m), timeout_s=10)
        base = lab.status("hub")
        from_a, from_b = new_marker(), new_marker()
        for i in range(FLAPS):
            send_from(lab, "site-b", make_frame(BCAST, flapper, from_b + b"-%d" % i))
            send_from(lab, "site-a", make_frame(BCAST, flapper, from_a + b"-%d" % i))
        sn["site-c"].wait_for(labnet.has_marker(from_a), count=FLAPS, timeout_s=10)
        fence(lab, "site-b", ["site-c", "hub"], sn)
        assert got(sn["site-c"], from_b) == [] and got(sn["hub"], from_b) == [], \
            "a claim on site-a's MAC from site-b was delivered during the hold-down"
        st = lab.status("hub")
        assert port_switch(st, "site-b")["drops"]["move_held"] == \
            port_switch(base, "site-b")["drops"]["move_held"] + FLAPS
        assert mac_table(st).get(flapper) == "site-a"
        flap_rx = (rf"MAC {flapper} lives on port site-a but port site-b claimed it (\d+) "
                   rf"times .*mac_move_holddown_s {HOLD_S:g}\)")
        lab.wait_until(lambda: log_lines(lab, flap_rx), 5, what="the hub to log the flap")

        # -- hold-down: M speaks on site-a, then stays silent there
        mover = fake_mac("mover")
        m = new_marker()
        held0 = port_switch(lab.status("hub"), "site-b")["drops"]["move_held"]
        t_last_a = time.monotonic()
        send_from(lab, "site-a", make_frame(BCAST, mover, m))
        sn["site-c"].wait_for(labnet.has_marker(m), timeout_s=10)
        claim, to_m = new_marker(), new_marker()
        send_from(lab, "site-b", make_frame(BCAST, mover, claim))
        send_from(lab, "site-c", make_frame(mover, fake_mac("talker"), to_m))
        sent_by = time.monotonic() - t_last_a
        assert sent_by < HOLD_S, f"too slow to test the hold-down ({sent_by:.2f} s)"
        sn["site-a"].wait_for(labnet.has_marker(to_m), timeout_s=10)
        fence(lab, "site-b", ["site-a", "site-c", "hub"], sn)
        fence(lab, "site-c", ["site-a", "site-b", "hub"], sn)
        for r in ("site-a", "site-c", "hub"):
            assert got(sn[r], claim) == [], f"{r} got the claim on M during the hold-down"
        assert got(sn["site-b"], to_m) == [], "unicast to M went to the claimer"
        assert len(got(sn["site-a"], to_m)) == 1

        # a genuine move: site-b keeps claiming M until one claim gets through
        claims = []
        first = None
        deadline = t_last_a + HOLD_S + 3.0
        while first is None and time.monotonic() < deadline:
            mk = new_marker()
            claims.append(mk)
            send_from(lab, "site-b", make_frame(BCAST, mover, mk))
            sn["site-c"].poll(0.05)
            hits = [f for f in sn["site-c"].matching(lambda f: f.src == mover)
                    if any(c in f.data for c in claims)]
            first = hits[0] if hits else None
        assert first is not None, f"M never moved to site-b ({len(claims)} claims)"
        converged_s = first.t - t_last_a
        assert HOLD_S <= converged_s <= HOLD_S + 1.5, \
            f"M moved {converged_s:.2f} s after its last frame on site-a"
        print(f"M moved to site-b {converged_s:.2f} s after its last frame on site-a "
              f"(hold-down {HOLD_S:g} s, {len(claims)} claims)")
        fence(lab, "site-b", ["site-c"], sn)
        delivered = [c for c in claims if got(sn["site-c"], c)]
        st = lab.status("hub")
        assert mac_table(st).get(mover) == "site-b"
        held = port_switch(st, "site-b")["drops"]["move_held"] - held0
        assert held == 1 + len(claims) - len(delivered), \
            "every claim from site-b is either delivered or counted as held"
        assert delivered == claims[len(claims) - len(delivered):], \
            "a claim was delivered, then a later one held"
        back = new_marker()
        send_from(lab, "site-c", make_frame(mover, fake_mac("talker"), back))
        sn["site-b"].wait_for(labnet.has_marker(back), timeout_s=10)
        fence(lab, "site-c", ["site-a"], sn)
        assert got(sn["site-a"], back) == [], "unicast to M still goes to its old port"

        # -- the flapper made one line (two if its claims spanned a report), not 100
        def too_many():
            return len(log_lines(lab, flap_rx)) > 2
        left = t_flap + FLAP_WINDOW_S - time.monotonic()
        if left > 0:
            with pytest.raises(TimeoutError):
                lab.wait_until(too_many, left, what="more than 2 lines about the flapper")
        lines = log_lines(lab, flap_rx)
        assert 1 <= len(lines) <= 2, lines
        assert sum(int(re.search(flap_rx, ln).group(1)) for ln in lines) <= FLAPS
    finally:
        close_all(sn)


# ---------------------------------------------------------------- DHCP and RA guard


SERVER_IP, CLIENT_IP = "198.19.0.250", "198.19.0.77"
LL_SERVER, LL_CLIENT = "fe80::2:250", "fe80::2:77"
VLANS = {
    "untagged": lambda: [],
    "802.1Q": lambda: [Dot1Q(vlan=42)],
    "802.1ad+802.1Q": lambda: [Dot1AD(vlan=100), Dot1Q(vlan=42)],
}


def _eth(dst, src, tags, payload) -> bytes:
    pkt = Ether(dst=dst, src=src)
    for t in tags:
        pkt = pkt / t
    return bytes(pkt / payload)


def dhcp_offer(src, marker, tags):
    return _eth(BCAST, src, tags,
                IP(src=SERVER_IP, dst="255.255.255.255") / UDP(sport=67, dport=68) /
                BOOTP(op=2, xid=0x1234, yiaddr=CLIENT_IP, siaddr=SERVER_IP, sname=marker,
                      chaddr=bytes.fromhex("020000000077")) /
                DHCP(options=[("message-type", "offer"), ("server_id", SERVER_IP), "end"]))


def dhcp_discover(src, marker, tags):
    return _eth(BCAST, src, tags,
                IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67) /
                BOOTP(op=1, xid=0x1234, sname=marker, chaddr=bytes.fromhex(src.replace(":", ""))) /
                DHCP(options=[("message-type", "discover"), "end"]))


def dhcp6_advertise(src, marker, tags):
    return _eth("33:33:00:01:00:02", src, tags,
                IPv6(src=LL_SERVER, dst="ff02::1:2") / UDP(sport=547, dport=546) /
                DHCP6_Advertise(trid=0x1234) / Raw(marker))


def dhcp6_solicit(src, marker, tags):
    return _eth("33:33:00:01:00:02", src, tags,
                IPv6(src=LL_CLIENT, dst="ff02::1:2") / UDP(sport=546, dport=547) /
                DHCP6_Solicit(trid=0x1234) / Raw(marker))


def router_advert(src, marker, tags):
    # router lifetime 0 and no prefix: a receiving kernel learns nothing from it
    return _eth("33:33:00:00:00:01", src, tags,
                IPv6(src=LL_SERVER, dst="ff02::1", hlim=255) /
                ICMPv6ND_RA(routerlifetime=0) / ICMPv6NDOptSrcLLAddr(lladdr=src) /
                Raw(marker))


def router_advert_hbh(src, marker, tags):
    """An RA behind a Hop-by-Hop header (the RFC 7113 evasion of naive RA guards)."""
    return _eth("33:33:00:00:00:01", src, tags,
                IPv6(src=LL_SERVER, dst="ff02::1", hlim=255) / IPv6ExtHdrHopByHop() /
                ICMPv6ND_RA(routerlifetime=0) / Raw(marker))


def router_advert_frag(src, marker, tags):
    """An RA whole in a first (and only) fragment: still an RA."""
    return _eth("33:33:00:00:00:01", src, tags,
                IPv6(src=LL_SERVER, dst="ff02::1", hlim=255) /
                IPv6ExtHdrFragment(offset=0, m=0, id=0x1234) /
                ICMPv6ND_RA(routerlifetime=0) / Raw(marker))


def router_solicit(src, marker, tags):
    return _eth("33:33:00:00:00:02", src, tags,
                IPv6(src=LL_CLIENT, dst="ff02::2", hlim=255) / ICMPv6ND_RS() / Raw(marker))


def neighbor_solicit(src, marker, tags):
    return _eth("33:33:ff:02:02:50", src, tags,
                IPv6(src=LL_CLIENT, dst="ff02::1:ff02:250", hlim=255) /
                ICMPv6ND_NS(tgt=LL_SERVER) / Raw(marker))


def neighbor_advert(src, marker, tags):
    return _eth("33:33:00:00:00:01", src, tags,
                IPv6(src=LL_CLIENT, dst="ff02::1", hlim=255) /
                ICMPv6ND_NA(tgt=LL_CLIENT, R=0, S=0, O=1) / Raw(marker))


SERVER_MSGS = {"dhcp-offer": (dhcp_offer, "dhcp_guard"),
               "dhcpv6-advertise": (dhcp6_advertise, "dhcp_guard"),
               "router-advert": (router_advert, "ra_guard"),
               "router-advert-hbh": (router_advert_hbh, "ra_guard"),
               "router-advert-frag": (router_advert_frag, "ra_guard")}
CLIENT_MSGS = {"dhcp-discover": dhcp_discover, "dhcpv6-solicit": dhcp6_solicit,
               "router-solicit": router_solicit, "neighbor-solicit": neighbor_solicit,
               "neighbor-advert": neighbor_advert}


def build(kinds: dict, src: str):
    """{name/vlan: (marker, frame)} from src for every kind in every VLAN variant."""
    out = {}
    for kind, make in kinds.items():
        make = make[0] if isinstance(make, tuple) else make
        for vlan, tags in VLANS.items():
            marker = new_marker()
            out[f"{kind}/{vlan}"] = (marker, make(src, marker, tags()))
    return out


def guard_counts(status: dict, site: str) -> dict:
    drops = port_switch(status, site)["drops"]
    return {g: (status["switch"]["counters"][g], drops[g]) for g in GUARDS}


def expect_delivered(lab, sender, receivers, frames):
    sn = sniffers(lab, receivers)
    try:
        send_from(lab, sender, [f for _, f in frames.values()])
        for r in receivers:
            for name, (marker, frame) in frames.items():
                (f,) = sn[r].wait_for(labnet.has_marker(marker), timeout_s=10)
                assert f.data[:len(frame)] == frame, f"{r} got {name} from {sender} altered"
    finally:
        close_all(sn)


def expect_dropped(lab, sender, receivers, frames):
    sn = sniffers(lab, receivers)
    try:
        send_from(lab, sender, [f for _, f in frames.values()])
        fence(lab, sender, receivers, sn)
        for r in receivers:
            leaked = [n for n, (m, _) in frames.items() if got(sn[r], m)]
            assert leaked == [], f"{r} got these from {sender}: {leaked}"
    finally:
        close_all(sn)


def test_dhcp_and_ra_guards_drop_server_messages_from_untrusted_ports(make_lab):
    lab = start_lab(make_lab, {"dhcp_guard": {"trusted": ["site-a"]},
                               "ra_guard": {"trusted": ["site-a"]}}, ipv6=True)
    others_of = {s: [r for r in SITES if r != s] for s in SITES}
    rogue = fake_mac("rogue-server")
    servers = build(SERVER_MSGS, rogue)
    n_dhcp = sum(1 for k in servers if SERVER_MSGS[k.split("/")[0]][1] == "dhcp_guard")
    n_ra = len(servers) - n_dhcp
    st0 = lab.status("hub")

    # untrusted site-b: every server message, tagged or not, stops at the hub
    expect_dropped(lab, "site-b", others_of["site-b"], servers)
    st1 = lab.status("hub")
    c0, c1 = guard_counts(st0, "site-b"), guard_counts(st1, "site-b")
    assert c1["dhcp_guard"] == (c0["dhcp_guard"][0] + n_dhcp, c0["dhcp_guard"][1] + n_dhcp)
    assert c1["ra_guard"] == (c0["ra_guard"][0] + n_ra, c0["ra_guard"][1] + n_ra)
    assert rogue not in mac_table(st1), "a guarded frame taught the switch its source"

    # trusted site-a: the very same messages are delivered everywhere
    servers_a = build(SERVER_MSGS, fake_mac("dhcp-server-a"))
    expect_delivered(lab, "site-a", others_of["site-a"], servers_a)
    # clients at the untrusted site are not hindered
    clients = build(CLIENT_MSGS, fake_mac("client-b"))
    expect_delivered(lab, "site-b", others_of["site-b"], clients)
    # ARP, IPv4 ping and IPv6 neighbour discovery through the guards
    assert_ping(lab, "site-b", "site-c")
    assert_ping(lab, "site-c", "site-b")
    # Both ends' addresses past DAD: a reply to a still-tentative address is discarded.
    link_local(lab, "site-b")
    ll_c = link_local(lab, "site-c")
    r = lab.ping(lab.ns("site-b"), f"{ll_c}%{lab.overlay_if('site-b')}", count=3)
    assert r.ok, f"ping6 site-b -> site-c {ll_c}: {r}\n{r.output}"

    # nothing after the rogue burst was counted as a server message (no false positives
    # from the clients above or the kernels' own IPv6 chatter), on any port
    st2 = lab.status("hub")
    for g in GUARDS:
        assert st2["switch"]["counters"][g] == st1["switch"]["counters"][g], g
    for site in SITES:
        assert guard_counts(st2, site) == guard_counts(st1, site), site


def link_local(lab, site) -> str:
    def find():
        out = lab.exec(lab.ns(site), ["ip", "-6", "-j", "addr", "show", "dev",
                                      lab.overlay_if(site), "scope", "link"], check=True)
        for link in json.loads(out.stdout or "[]"):
            for a in link.get("addr_info", []):
                if not a.get("tentative"):
                    return a["local"]
        return None
    return lab.wait_until(find, 10, what=f"{site}'s IPv6 link-local address")


def test_ra_guard_trusts_the_hub_tap_port_by_name(make_lab):
    lab = start_lab(make_lab, {"ra_guard": {"trusted": ["hub"]}}, spokes=("site-a", "site-b"))
    st0 = lab.status("hub")
    from_hub = build({"router-advert": router_advert}, fake_mac("router-at-hub"))
    expect_delivered(lab, "hub", ["site-a", "site-b"], from_hub)
    from_a = build({"router-advert": router_advert}, fake_mac("router-at-a"))
    expect_dropped(lab, "site-a", ["hub", "site-b"], from_a)
    st1 = lab.status("hub")
    assert guard_counts(st1, "site-a")["ra_guard"] == \
        (st0["switch"]["counters"]["ra_guard"] + len(from_a),
         port_switch(st0, "site-a")["drops"]["ra_guard"] + len(from_a))
    assert port_switch(st1, "hub")["drops"]["ra_guard"] == 0
    # dhcp_guard is not configured here: it stays off while ra_guard is on
    offers = build({"dhcp-offer": dhcp_offer}, fake_mac("dhcp-at-b"))
    expect_delivered(lab, "site-b", ["hub", "site-a"], offers)
    assert lab.status("hub")["switch"]["counters"]["dhcp_guard"] == 0


# ------------------------------------------------------------------------ defaults


def test_defaults_neither_limit_a_normal_site_nor_guard_anything(make_lab):
    lab = start_lab(make_lab, spokes=("site-a", "site-b"))
    sw = load_hub(lab.nodes["hub"].config).switch
    assert sw.max_macs_per_port == 1024 and sw.mac_move_holddown_s == 5.0
    assert sw.dhcp_guard is None and sw.ra_guard is None
    # server messages from any site are delivered when the guards are absent
    servers = build(SERVER_MSGS, fake_mac("server-b"))
    expect_delivered(lab, "site-b", ["hub", "site-a"], servers)
    # 60 hosts behind one site are far from the default limit
    marker = new_marker()
    srcs = [labnet.stable_mac(f"host-{i}-{marker.decode()}") for i in range(FLOOD_MACS)]
    sn = sniffers(lab, ["site-a"])
    try:
        send_from(lab, "site-b", [make_frame(BCAST, s, marker) for s in srcs])
        seen = {f.src for f in sn["site-a"].wait_for(labnet.has_marker(marker),
                                                     count=FLOOD_MACS, timeout_s=10)}
        assert seen == set(srcs)
    finally:
        close_all(sn)
    st = lab.status("hub")
    for g in GUARDS + ("port_limit", "move_held"):
        assert st["switch"]["counters"][g] == 0, g
    assert port_switch(st, "site-b")["macs"] >= FLOOD_MACS
