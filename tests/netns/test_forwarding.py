"""Forwarding through a running hub and three spokes: ARP/ping, flooding, unicast, VLANs,
the bridged LAN host, a bulk TCP transfer and the hub's status.

All tests share one lab (see conftest.py) and only send traffic. Frames are built with
scapy and sent into a TAP with an AF_PACKET socket; every sniffer is bound before the
first frame leaves. "Not delivered" is proved without sleeping: after the frame under
test, a fence frame is sent on the same path and awaited; the switch keeps each port's
order, so a frame that was going to arrive would have arrived before the fence.
"""

import json
import uuid

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

import labnet

pytestmark = pytest.mark.netns

BCAST = "ff:ff:ff:ff:ff:ff"
ETH_TEST = 0x88B5          # IEEE local experimental ethertype

# Where each endpoint of the shared lab sees frames that come out of the VPN:
# a node's TAP (site-a's TAP is a port of br-lan), or the LAN host's NIC.
ENDPOINTS = {"hub": "l2hub0", "site-a": "l2vpn0", "site-b": "l2vpn0", "site-c": "l2vpn0",
             "lan-a": "eth0"}
SITE_OF = {"hub": "hub", "site-a": "site-a", "site-b": "site-b", "site-c": "site-c",
           "lan-a": "site-a"}


def new_marker() -> bytes:
    return b"l2vpn-test-" + uuid.uuid4().hex.encode()


def make_frame(dst: str, src: str, marker: bytes, ethertype: int = ETH_TEST) -> bytes:
    """An Ethernet frame carrying marker, padded well past the 60-byte minimum."""
    return bytes(Ether(dst=dst, src=src, type=ethertype) / Raw(marker.ljust(80, b".")))


def fake_mac(tag: str) -> str:
    return labnet.stable_mac(f"{tag}-{uuid.uuid4().hex}")


def sniffers(lab, names):
    return {n: lab.sniff(n, ENDPOINTS[n]) for n in names}


def close_all(sn):
    for s in sn.values():
        s.close()


def send_from(lab, name, frame):
    """Send a frame as if it came from endpoint name (into its TAP or out of its NIC)."""
    lab.send_frame(lab.ns(name), ENDPOINTS[name], frame)


def fence(lab, sender, receivers, sn):
    """Send a broadcast fence from sender and wait until every receiver has it."""
    m = new_marker()
    send_from(lab, sender, make_frame(BCAST, fake_mac("fence"), m))
    for r in receivers:
        sn[r].wait_for(labnet.has_marker(m), timeout_s=10)


# ----------------------------------------------------------------------------- 1


@pytest.mark.parametrize("src,dst", [("site-a", "site-b"), ("site-b", "site-a"),
                                     ("site-b", "hub"), ("hub", "site-c"),
                                     ("site-c", "site-b")])
def test_arp_and_ping_across_sites(lab, src, dst):
    lab.wait_ping(lab.ns(src), lab.ip(dst), timeout_s=20)
    r = lab.ping(lab.ns(src), lab.ip(dst), count=5)
    assert r.ok, f"ping {src} -> {dst}: {r}\n{r.output}"
    # ARP resolved the far site's real MAC (learnt through the VPN, not some proxy)
    neigh = lab.exec(lab.ns(src), ["ip", "-j", "neigh", "show", lab.ip(dst)], check=True)
    entries = json.loads(neigh.stdout or "[]")
    assert [e.get("lladdr") for e in entries] == [lab.mac(dst)]


# ------------------------------------------------------------------------- 2 and 4


FLOOD_DST = {
    "broadcast": BCAST,
    "ipv4-multicast": "01:00:5e:01:02:03",
    "ipv6-multicast": "33:33:00:00:00:fb",
}


@pytest.mark.parametrize("sender", ["site-b", "lan-a"])
@pytest.mark.parametrize("kind", sorted(FLOOD_DST))
def test_flood_reaches_every_other_site_exactly_once(lab, kind, sender):
    marker = new_marker()
    src = fake_mac(sender)
    if kind == "ipv4-multicast":
        frame = bytes(Ether(dst=FLOOD_DST[kind], src=src) /
                      IP(src=lab.ip(sender), dst="239.1.2.3", ttl=1) /
                      UDP(sport=5000, dport=5000) / Raw(marker))
    else:
        frame = make_frame(FLOOD_DST[kind], src, marker)
    home = [n for n in ENDPOINTS if SITE_OF[n] == SITE_OF[sender]]
    others = [n for n in ENDPOINTS if n not in home]
    sn = sniffers(lab, ENDPOINTS)
    try:
        send_from(lab, sender, frame)
        for r in others:
            sn[r].wait_for(labnet.has_marker(marker), timeout_s=10)
        fence(lab, sender, others, sn)        # anything duplicated would be here by now
        fence(lab, "hub", home, sn)           # an echo to the sender's site too
        for r in others:
            got = sn[r].matching(labnet.has_marker(marker))
            assert len(got) == 1, f"{r} got the {kind} {len(got)} times"
            assert got[0].data[:len(frame)] == frame, f"{r} got the frame altered"
        for h in home:
            echoed = sn[h].matching(labnet.has_marker(marker))
            assert echoed == [], f"the {kind} from {sender} came back to {h}"
    finally:
        close_all(sn)


# ----------------------------------------------------------------------------- 3


def test_known_unicast_goes_only_to_its_port(lab):
    x, y = fake_mac("x-behind-b"), fake_mac("y-behind-c")
    # learning: X speaks from site-b, Y from site-c
    send_from(lab, "site-b", make_frame(BCAST, x, new_marker()))
    send_from(lab, "site-c", make_frame(BCAST, y, new_marker()))

    def learnt():
        table = {m["mac"]: m["port"] for m in lab.status("hub")["macs"]}
        return table.get(x) == "site-b" and table.get(y) == "site-c"
    lab.wait_until(learnt, 10, what="hub to learn X at site-b and Y at site-c")

    sn = sniffers(lab, ENDPOINTS)
    try:
        to_y, to_x = new_marker(), new_marker()
        send_from(lab, "site-b", make_frame(y, x, to_y))
        send_from(lab, "site-c", make_frame(x, y, to_x))
        sn["site-c"].wait_for(labnet.has_marker(to_y), timeout_s=10)
        sn["site-b"].wait_for(labnet.has_marker(to_x), timeout_s=10)
        fence(lab, "site-b", ["hub", "site-a", "lan-a", "site-c"], sn)
        fence(lab, "site-c", ["hub", "site-a", "lan-a", "site-b"], sn)
        assert len(sn["site-c"].matching(labnet.has_marker(to_y))) == 1
        assert len(sn["site-b"].matching(labnet.has_marker(to_x))) == 1
        for bystander in ("hub", "site-a", "lan-a"):
            leaked = sn[bystander].matching(lambda f: to_y in f.data or to_x in f.data)
            assert leaked == [], f"known unicast leaked to {bystander}"
    finally:
        close_all(sn)


# ----------------------------------------------------------------------------- 5


@pytest.mark.parametrize("tags", ["802.1Q", "802.1ad+802.1Q"])
def test_vlan_tags_cross_unchanged(lab, tags):
    marker = new_marker()
    if tags == "802.1Q":
        frame = bytes(Ether(dst=BCAST, src=fake_mac("vlan")) /
                      Dot1Q(vlan=42, prio=5, type=ETH_TEST) / Raw(marker.ljust(80, b".")))
        outer = (0x8100, (5 << 13) | 42)
    else:
        frame = bytes(Ether(dst=BCAST, src=fake_mac("qinq")) / Dot1AD(vlan=100) /
                      Dot1Q(vlan=42, type=ETH_TEST) / Raw(marker.ljust(80, b".")))
        outer = (0x88A8, 100)
    sn = sniffers(lab, ["site-c", "hub", "lan-a"])
    try:
        send_from(lab, "site-b", frame)
        for name, s in sn.items():
            got = s.wait_for(labnet.has_marker(marker), timeout_s=10)[0]
            # the kernel hands the outer tag over as metadata; it must be the one we sent
            assert (got.vlan_tpid, got.vlan_tci) == outer, f"{name}: tag lost or changed"
            assert got.data[:len(frame)] == frame, f"{name}: tagged frame altered"
    finally:
        close_all(sn)


# ----------------------------------------------------------------------------- 6


@pytest.mark.parametrize("src", ["site-b", "site-c", "hub"])
def test_lan_host_behind_bridged_spoke_is_reachable(lab, src):
    lab.wait_ping(lab.ns(src), lab.ip("lan-a"), timeout_s=20)
    r = lab.ping(lab.ns(src), lab.ip("lan-a"), count=5)
    assert r.ok, f"ping {src} -> lan-a: {r}\n{r.output}"
    r = lab.ping(lab.ns("lan-a"), lab.ip(src), count=3)
    assert r.ok, f"ping lan-a -> {src}: {r}\n{r.output}"


# ----------------------------------------------------------------------------- 7


def test_32_mib_tcp_transfer_arrives_intact(lab):
    lab.wait_ping(lab.ns("site-a"), lab.ip("site-b"))
    t = lab.tcp_transfer("site-a", "site-b", 32 << 20, timeout_s=120)
    assert t.received == t.size and t.intact
    print(f"32 MiB site-a -> site-b ({lab.mode}) in {t.seconds:.2f} s ({t.mbit_s:.0f} Mbit/s)")


# ---------------------------------------------------------------------------- 13


def test_status_json_lists_spokes_and_the_macs_behind_them(lab):
    for src in ("lan-a", "site-a", "site-b", "site-c"):
        lab.wait_ping(lab.ns(src), lab.ip("hub"))
    want = {lab.mac("site-a"): "site-a", lab.mac("lan-a"): "site-a",
            lab.mac("site-b"): "site-b", lab.mac("site-c"): "site-c", lab.mac("hub"): "hub"}

    def table_has_all():
        st = lab.status("hub")
        table = {m["mac"]: m["port"] for m in st["macs"]}
        return st if all(table.get(mac) == port for mac, port in want.items()) else None
    st = lab.wait_until(table_has_all, 10, what=f"hub MAC table to hold {want}")

    assert st["node"] == "hub" and st["role"] == "hub"
    assert isinstance(st["uptime_s"], (int, float)) and st["uptime_s"] > 0
    by_node = {}
    for s in st["sessions"]:
        by_node.setdefault(s["node"], []).append(s)
    assert sorted(by_node) == sorted(["site-a", "site-b", "site-c"])
    for name, (s,) in by_node.items():
        assert s["cn"] == name and s["state"] == "up"
        assert s["remote"].rsplit(":", 1)[0] == lab.nodes[name].underlay_ip
        for k in ("frames_in", "frames_out", "bytes_in", "bytes_out", "drops"):
            assert isinstance(s[k], int) and s[k] >= 0, k
        assert s["frames_in"] > 0 and s["frames_out"] > 0
        assert s["bytes_in"] >= 14 * s["frames_in"]
    for m in st["macs"]:
        assert isinstance(m["age_s"], (int, float)) and m["age_s"] >= 0
    for name in ("site-a", "site-b", "site-c"):
        sp = lab.status(name)
        assert sp["node"] == name and sp["role"] == "spoke"
        assert [(s["node"], s["state"]) for s in sp["sessions"]] == [("hub", "up")]
        assert not sp.get("macs"), "macs belong to the hub's status only"
