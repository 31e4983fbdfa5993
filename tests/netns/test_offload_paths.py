"""The offload data path: super-frames carried whole where both ends take them, and
segmented and checksummed in software where they do not.

Runs on each build of the shared lab (conftest.py): offloads everywhere, none, and mixed
(the hub's TAP plain behind offloading sessions; site-b with no offloads; site-c with an
offloading TAP behind a plain session). Every transfer is hashed end to end, so a bad
segment or checksum shows up as a stall, a reset or a wrong hash.
"""

import os
import socket

import pytest
from fakes import tcp_super_frame
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

import labnet

pytestmark = pytest.mark.netns

PAIRS = [("site-a", "site-b"), ("site-b", "site-a"), ("site-a", "site-c"),
         ("site-c", "site-a"), ("site-a", "hub"), ("hub", "site-c"),
         ("lan-a", "site-b"), ("site-c", "lan-a")]
SOL_UDP = 17
UDP_SEGMENT = 103
VLAN_ID = 42
SOL_PACKET = 263
PACKET_VNET_HDR = 15


@pytest.mark.parametrize("src,dst", PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_tcp_between_every_kind_of_port_arrives_intact(lab, src, dst):
    lab.wait_ping(lab.ns(src), lab.ip(dst))
    t = lab.tcp_transfer(src, dst, 4 << 20, timeout_s=60)
    assert t.received == t.size and t.intact, f"{src} -> {dst} ({lab.mode}): {t}"


def _sessions(lab, name):
    return _sessions_of(lab.status(name))


def test_sessions_negotiate_what_both_ends_offer(lab):
    want = {name: lab.offload_of(name)["session"] and lab.offload_of("hub")["session"]
            for name in lab.spoke_names}
    hub = _sessions(lab, "hub")
    assert {name: s["vnet"] for name, s in hub.items()} == want
    for name in lab.spoke_names:
        assert _sessions(lab, name)["hub"]["vnet"] == want[name]


def test_super_frames_cross_whole_or_are_segmented_where_needed(lab):
    before = {n: lab.status(n) for n in ("hub", "site-a", "site-b", "site-c")}
    for src, dst in (("site-a", "site-b"), ("site-c", "site-a"), ("site-a", "hub")):
        lab.wait_ping(lab.ns(src), lab.ip(dst))
        assert lab.tcp_transfer(src, dst, 8 << 20).intact
    after = {n: lab.status(n) for n in ("hub", "site-a", "site-b", "site-c")}

    def delta(node, key, session=None):
        if session is None:
            return after[node]["tap"][key] - before[node]["tap"][key]
        return (_sessions_of(after[node])[session][key]
                - _sessions_of(before[node])[session][key])

    frames_in = delta("hub", "frames_in", "site-a")
    bytes_in = delta("hub", "bytes_in", "site-a")
    if lab.mode == "offload":
        # 8 MiB in 1500-byte frames would be ~5,800 frames; super-frames are ~40x fewer
        assert bytes_in / frames_in > 4000, f"no super-frames: {bytes_in} B in {frames_in}"
        for node in ("hub", "site-a", "site-b", "site-c"):
            assert all(s["soft_offloads"] == 0 for s in after[node]["sessions"])
    elif lab.mode == "plain":
        assert bytes_in / frames_in < 1600
        assert all(s["soft_offloads"] == 0 for n in after for s in after[n]["sessions"])
    else:
        assert bytes_in / frames_in > 4000
        assert delta("hub", "soft_offloads", "site-b") > 0     # hub segments for site-b
        assert delta("site-c", "soft_offloads", "hub") > 0     # site-c segments its TAP's
        assert delta("hub", "soft_offloads") > 0               # hub's plain TAP
    for node in after:
        assert all(s["offload_errors"] == 0 for s in after[node]["sessions"])
        assert after[node]["tap"]["offload_errors"] == 0


def _sessions_of(status):
    return {s["node"]: s for s in status["sessions"]}


@pytest.mark.parametrize("src,dst", [("site-a", "site-b"), ("site-a", "site-c"),
                                     ("site-c", "hub")])
def test_udp_gso_datagrams_arrive_one_by_one(lab, src, dst):
    lab.wait_ping(lab.ns(src), lab.ip(dst))
    rx = lab.socket_in(lab.ns(dst), socket.AF_INET, socket.SOCK_DGRAM)
    tx = lab.socket_in(lab.ns(src), socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind((lab.ip(dst), 0))
        rx.settimeout(5)
        tx.setsockopt(SOL_UDP, UDP_SEGMENT, 1200)
        chunks = [bytes([i]) * 1200 for i in range(12)] + [b"tail" * 50]
        tx.sendto(b"".join(chunks), rx.getsockname())     # one send, 13 datagrams
        got = [rx.recv(65536) for _ in chunks]
    finally:
        rx.close()
        tx.close()
    assert got == chunks


def send_super_frame(lab, name, data):
    """Transmit a vnet-form frame on name's TAP, so its daemon reads it as the kernel's
    own super-frame (PACKET_VNET_HDR: the kernel takes the virtio-net header with it)."""
    with labnet.in_netns(lab.ns(name)):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        sock.bind((lab.nodes[name].tap, 0))
        sock.send(data)
    finally:
        sock.close()


def test_vlan_tagged_super_frame_crosses_whole_or_as_tagged_segments(lab):
    """This kernel has no 8021q module, so the tagged super-frame is made by hand; the
    segmenter's handling of tags is checked against the kernel's in test_offload_kernel."""
    payload = os.urandom(20000)
    frame = tcp_super_frame(payload, vlan=VLAN_ID)
    # whole if every hop takes super-frames, else 14 tagged segments of <= 1448 bytes
    whole = all(lab.offload_of(n)["session"] for n in ("hub", "site-b", "site-c"))
    count = 1 if whole else 14
    with lab.sniff("site-c", "l2vpn0") as sn:
        send_super_frame(lab, "site-b", frame)
        got = sn.wait_for(lambda f: (f.vlan_tci or 0) & 0xFFF == VLAN_ID and len(f.data) > 100,
                          count=count, timeout_s=10)
    carried = b"".join(bytes(Ether(f.data)[TCP].payload) for f in got)
    assert carried == payload
    assert len(got) == count
    if not whole:
        for f in got:
            fresh = Ether(f.data)
            sent = (fresh[IP].chksum, fresh[TCP].chksum)
            del fresh[IP].chksum, fresh[TCP].chksum
            fresh = Ether(bytes(fresh))
            assert (fresh[IP].chksum, fresh[TCP].chksum) == sent
