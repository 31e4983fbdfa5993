"""VLANs at a real hub, seen from the sites: access ports of one VLAN talk, access ports
of different VLANs cannot, and a trunk site sees every VLAN it carries tagged.

The lab: the hub's own TAP and site-a, site-b are access ports of VLAN 20, site-c one of
VLAN 30, site-d a trunk of 20 and 30 with no native VLAN. This kernel has no 802.1Q
module, so tagged frames are made with scapy and injected into site-d's TAP, and the
Sniffer puts back the tag the kernel moves into metadata. "Not delivered" is proved as
in test_port_security.py: a fence frame sent after the frames under test, on the same
path, is awaited first.
"""

import uuid

import pytest
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

import labnet

pytestmark = pytest.mark.netns

BCAST = "ff:ff:ff:ff:ff:ff"
ETH_TEST = 0x88B5
PORTS = {"hub": {"vlan": {"mode": "access", "vid": 20}},
         "site-a": {"vlan": {"mode": "access", "vid": 20}},
         "site-b": {"vlan": {"mode": "access", "vid": 20}},
         "site-c": {"vlan": {"mode": "access", "vid": 30}},
         "site-d": {"vlan": {"mode": "trunk", "allowed": [20, 30]}}}


def marker() -> bytes:
    return b"l2vpn-vlan-" + uuid.uuid4().hex.encode()


def frame(src: str, mark: bytes, vid: int | None = None) -> bytes:
    eth = Ether(dst=BCAST, src=src, type=ETH_TEST)
    if vid is not None:
        eth = Ether(dst=BCAST, src=src) / Dot1Q(vlan=vid, type=ETH_TEST)
    return bytes(eth / Raw(mark.ljust(80, b".")))


def vid_of(f: labnet.Frame):
    """The frame's 802.1Q VID, or None if it came untagged."""
    if f.data[12:14] == b"\x81\x00":
        return int.from_bytes(f.data[14:16], "big") & 0x0FFF
    return None


@pytest.fixture
def lab(make_lab):
    lab = make_lab(spokes=["site-a", "site-b", "site-c", "site-d"], start=False)
    lab.update_config("hub", {"ports": PORTS})
    lab.start_all()
    lab.wait_sessions()
    return lab


def macs(lab) -> dict:
    return {(m["mac"], m["vlan"]): m["port"] for m in lab.status("hub")["macs"]}


def test_access_sites_of_one_vlan_talk_and_other_vlans_are_apart(lab):
    trunk = lab.sniff("site-d")
    apart = lab.sniff("site-c")
    with trunk, apart:
        lab.wait_ping(lab.ns("site-a"), lab.ip("site-b"))
        assert lab.ping(lab.ns("site-a"), lab.ip("hub"), count=2).ok
        assert not lab.ping(lab.ns("site-a"), lab.ip("site-c"), count=2, wait_s=1).ok
        assert not lab.ping(lab.ns("site-c"), lab.ip("hub"), count=2, wait_s=1).ok
        # site-a's ARP requests reached the trunk tagged 20, never site-c's VLAN 30
        arps = trunk.wait_for(lambda f: f.src == lab.mac("site-a") and f.dst == BCAST)
        assert {vid_of(f) for f in arps} == {20}
        assert not apart.matching(lambda f: f.src in (lab.mac("site-a"), lab.mac("site-b")))
        # site-c's own ARP requests went to the trunk tagged 30
        arps = trunk.wait_for(lambda f: f.src == lab.mac("site-c") and f.dst == BCAST)
        assert {vid_of(f) for f in arps} == {30}

    where = macs(lab)
    assert where[lab.mac("site-a"), 20] == "site-a"
    assert where[lab.mac("site-b"), 20] == "site-b"
    assert where[lab.mac("site-c"), 30] == "site-c"
    assert (lab.mac("site-c"), 20) not in where


def test_a_trunk_site_reaches_each_vlan_with_its_tag(lab):
    src = labnet.stable_mac(f"site-d-host-{uuid.uuid4().hex}")
    in30, in20, untagged = marker(), marker(), marker()
    sniffers = {name: lab.sniff(name) for name in ("site-a", "site-b", "site-c")}
    try:
        before = lab.sessions("hub")["site-d"]["switch"]["drops"]["vlan"]
        lab.send_frame(lab.ns("site-d"), labnet.SPOKE_TAP, frame(src, in30, vid=30))
        lab.send_frame(lab.ns("site-d"), labnet.SPOKE_TAP, frame(src, untagged))
        lab.send_frame(lab.ns("site-d"), labnet.SPOKE_TAP, frame(src, in20, vid=20))
        for name in ("site-a", "site-b"):         # VLAN 20 arrives untagged, the fence
            (got,) = sniffers[name].wait_for(labnet.has_marker(in20))
            assert vid_of(got) is None
        (got,) = sniffers["site-c"].wait_for(labnet.has_marker(in30))
        assert vid_of(got) is None
        for name in ("site-a", "site-b"):
            assert not sniffers[name].matching(labnet.has_marker(in30))
            assert not sniffers[name].matching(labnet.has_marker(untagged))
        sniffers["site-c"].poll(0.5)
        assert not sniffers["site-c"].matching(labnet.has_marker(in20))
        assert not sniffers["site-c"].matching(labnet.has_marker(untagged))
    finally:
        for s in sniffers.values():
            s.close()
    assert lab.sessions("hub")["site-d"]["switch"]["drops"]["vlan"] >= before + 1
    where = macs(lab)
    assert where[src, 20] == where[src, 30] == "site-d"
    macs_out = lab.l2vpn("macs", "-s", str(lab.nodes["hub"].socket), "--vlan", "30")
    assert macs_out.returncode == 0 and src in macs_out.stdout
    assert lab.mac("site-a") not in macs_out.stdout
