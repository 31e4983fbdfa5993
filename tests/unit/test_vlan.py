"""l2vpn.vlan: ingress and egress rules per port kind, tag surgery, and GSO super-frames.

The rules are Open vSwitch's (access, trunk with native-untagged); a port with no policy
is transparent. Tagging and untagging are checked against offload.to_plain() (a tagged
super-frame must segment into the tagged segments) and against the kernel's own
segmentation of a tagged super-frame (tests/unit/data/kernel_gso.json).
"""

import json
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from fakes import tcp_super_frame
from l2vpn.offload import F_NEEDS_CSUM, GSO_TCPV4, PLAIN_HDR, VNET_HDR_LEN, to_plain
from l2vpn.vlan import (ACCESS, DROP, TRUNK, UNTAGGED, VlanPolicy, carries, egress,
                        ingress_vlan, parse_vids, tag, untag)

FIXTURE = Path(__file__).parent / "data" / "kernel_gso.json"
VNET = struct.Struct("<BBHHHH")
MACS = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01"
IP_BODY = b"\x08\x00" + bytes(46)

ACC10 = VlanPolicy(ACCESS, vid=10)
TRUNK5 = VlanPolicy(TRUNK, allowed=parse_vids([10, "20-22"]), native=5)
TRUNK_NO_NATIVE = VlanPolicy("trunk", allowed=frozenset({10, 20}))
TRUNK_NATIVE_LISTED = VlanPolicy("trunk", allowed=frozenset({5, 10}), native=5)
TRANSPARENT = None


def untagged(body: bytes = IP_BODY) -> bytes:
    return MACS + body


def tagged(vid: int, pcp: int = 0, dei: int = 0, body: bytes = IP_BODY,
           tpid: int = 0x8100) -> bytes:
    return MACS + struct.pack(">HH", tpid, pcp << 13 | dei << 12 | vid) + body


def outer_tci(frame, offset: int = 0):
    """(PCP, DEI, VID) of the outer 802.1Q tag, or None."""
    t = offset + 12
    if frame[t:t + 2] != b"\x81\x00":
        return None
    tci = struct.unpack_from(">H", frame, t + 2)[0]
    return tci >> 13, tci >> 12 & 1, tci & 0xFFF


# ------------------------------------------------------------------------ parse_vids


def test_parse_vids_takes_ids_and_ranges_and_merges_them():
    assert parse_vids([10, "20-22", "21-23", 10]) == {10, 20, 21, 22, 23}
    assert parse_vids(["1-4094"]) == frozenset(range(1, 4095))
    assert parse_vids([1, 4094, "7-7"]) == {1, 4094, 7}
    assert parse_vids((" 3 - 5",)) == {3, 4, 5}
    assert isinstance(parse_vids([1]), frozenset)


@pytest.mark.parametrize("items", [
    [], (), None, "10", 10, {10}, [0], [4095], [-1], ["0-5"], ["4090-4095"], ["5-3"],
    [True], [1.0], ["10"], ["a-b"], ["-5"], ["5-"], ["1-2-3"], [None], ["1 - 2x"],
])
def test_parse_vids_refuses(items):
    with pytest.raises(ValueError):
        parse_vids(items)


# ------------------------------------------------------------------------- policies


@pytest.mark.parametrize("kwargs", [
    dict(mode="hybrid", vid=1),
    dict(mode=ACCESS),
    dict(mode=ACCESS, vid=0),
    dict(mode=ACCESS, vid=4095),
    dict(mode=ACCESS, vid=10, allowed=frozenset({11})),
    dict(mode=ACCESS, vid=10, native=10),
    dict(mode=TRUNK, vid=10, allowed=frozenset({10})),
    dict(mode=TRUNK),                                      # carries nothing
    dict(mode=TRUNK, allowed=frozenset({0, 5})),
    dict(mode=TRUNK, allowed=frozenset({5}), native=4095),
])
def test_a_policy_that_makes_no_sense_is_refused(kwargs):
    with pytest.raises(ValueError):
        VlanPolicy(**kwargs)


def test_policies_compare_by_their_settings_and_take_any_set_of_vids():
    a = VlanPolicy(TRUNK5.mode, allowed={10, 20, 21, 22}, native=5)
    assert a == TRUNK5 and hash(a) == hash(TRUNK5) and isinstance(a.allowed, frozenset)
    assert VlanPolicy(TRUNK5.mode, native=7).vlans == {7}   # native only: allowed
    assert "_tagged" not in repr(a)


def test_the_vlans_a_port_carries():
    assert ACC10.vlans == {10}
    assert TRUNK5.vlans == {5, 10, 20, 21, 22}
    assert TRUNK_NO_NATIVE.vlans == {10, 20}
    assert TRUNK_NATIVE_LISTED.vlans == {5, 10}


@pytest.mark.parametrize("policy,vlan,want", [
    (ACC10, 10, True), (ACC10, 11, False), (ACC10, UNTAGGED, False), (ACC10, DROP, False),
    (TRUNK5, 10, True), (TRUNK5, 21, True), (TRUNK5, 5, True),   # native, not listed
    (TRUNK5, 23, False), (TRUNK5, UNTAGGED, False), (TRUNK5, 4095, False),
    (TRUNK_NO_NATIVE, 5, False), (TRUNK_NATIVE_LISTED, 5, True),
    (TRANSPARENT, UNTAGGED, True), (TRANSPARENT, 1, True), (TRANSPARENT, 4094, True),
    (TRANSPARENT, 4095, True), (TRANSPARENT, DROP, False),
])
def test_carries(policy, vlan, want):
    assert carries(policy, vlan) is want


# -------------------------------------------------------------------------- ingress

INGRESS = [
    # access 10: untagged and priority-tagged frames are VLAN 10; any other tag drops
    (ACC10, untagged(), 10),
    (ACC10, tagged(0, pcp=5), 10),
    (ACC10, tagged(10), DROP),               # even its own VID
    (ACC10, tagged(11), DROP),
    (ACC10, tagged(7, tpid=0x88A8), 10),     # 802.1ad is an ethertype here
    # trunk 10,20-22 native 5
    (TRUNK5, tagged(10), 10),
    (TRUNK5, tagged(22, pcp=7, dei=1), 22),
    (TRUNK5, tagged(23), DROP),
    (TRUNK5, tagged(4095), DROP),
    (TRUNK5, tagged(5), 5),                   # tagged with the native VID: in VLAN 5
    (TRUNK5, untagged(), 5),
    (TRUNK5, tagged(0, pcp=3), 5),
    (TRUNK5, tagged(7, tpid=0x88A8), 5),
    # trunk without a native VLAN drops untagged and priority-tagged frames
    (TRUNK_NO_NATIVE, untagged(), DROP),
    (TRUNK_NO_NATIVE, tagged(0), DROP),
    (TRUNK_NO_NATIVE, tagged(20), 20),
    # transparent: the outer 802.1Q VID, untagged frames their own domain
    (TRANSPARENT, untagged(), UNTAGGED),
    (TRANSPARENT, tagged(0, pcp=6), UNTAGGED),
    (TRANSPARENT, tagged(1), 1),
    (TRANSPARENT, tagged(4094), 4094),
    (TRANSPARENT, tagged(4095), 4095),
    (TRANSPARENT, tagged(9, pcp=7, dei=1), 9),
    (TRANSPARENT, tagged(7, tpid=0x88A8), UNTAGGED),
    (TRANSPARENT, tagged(7, body=tagged(8)[12:]), 7),   # the outer tag counts
]


@pytest.mark.parametrize("offset", [0, VNET_HDR_LEN])
@pytest.mark.parametrize("policy,frame,want", INGRESS)
def test_ingress_vlan(policy, frame, want, offset):
    frame = (PLAIN_HDR + frame) if offset else frame
    assert ingress_vlan(policy, frame, offset) == want
    assert ingress_vlan(policy, bytearray(frame), offset) == want
    assert ingress_vlan(policy, memoryview(frame), offset) == want


@pytest.mark.parametrize("offset", [0, VNET_HDR_LEN])
@pytest.mark.parametrize("size", range(0, 18))
def test_short_frames_never_raise_and_a_cut_off_tag_is_not_a_tag(size, offset):
    frame = (bytes(offset) + tagged(10))[:offset + size]
    cut_tag = size >= 14
    assert ingress_vlan(None, frame, offset) == UNTAGGED
    assert ingress_vlan(ACC10, frame, offset) == (DROP if cut_tag else 10)
    assert ingress_vlan(TRUNK5, frame, offset) == (DROP if cut_tag else 5)
    assert egress(None, UNTAGGED, frame, offset) is frame


# --------------------------------------------------------------------------- egress

EGRESS = [
    # (out port, VLAN, frame as it came in, frame out or None)
    (ACC10, 10, untagged(), untagged()),
    (ACC10, 10, tagged(10, pcp=4), untagged()),           # from a trunk: tag goes
    (ACC10, 10, tagged(0, pcp=4), untagged()),            # priority tag goes too
    (ACC10, 11, tagged(11), None),
    (ACC10, UNTAGGED, untagged(), None),
    (TRUNK5, 10, untagged(), tagged(10)),                  # from an access port: tag comes
    (TRUNK5, 10, tagged(10, pcp=2, dei=1), tagged(10, pcp=2, dei=1)),
    (TRUNK5, 21, tagged(0, pcp=6), tagged(21, pcp=6)),     # priority tag: VID set, PCP kept
    (TRUNK5, 22, tagged(9, pcp=7, dei=1), tagged(22, pcp=7, dei=1)),  # rewritten
    (TRUNK5, 5, untagged(), untagged()),                   # the native VLAN: untagged
    (TRUNK5, 5, tagged(5, pcp=3), untagged()),
    (TRUNK5, 5, tagged(0, pcp=3), untagged()),
    (TRUNK5, 23, tagged(23), None),
    (TRUNK5, UNTAGGED, untagged(), None),
    (TRUNK_NO_NATIVE, 20, untagged(), tagged(20)),
    (TRUNK_NO_NATIVE, 5, untagged(), None),
    (TRUNK_NATIVE_LISTED, 5, tagged(5), untagged()),      # native wins over listed
    (TRUNK5, 10, tagged(7, tpid=0x88A8), tagged(10, body=tagged(7, tpid=0x88A8)[12:])),
    # transparent: its own untagged domain as it came, every VLAN tagged
    (TRANSPARENT, UNTAGGED, untagged(), untagged()),
    (TRANSPARENT, UNTAGGED, tagged(0, pcp=5), tagged(0, pcp=5)),
    (TRANSPARENT, UNTAGGED, tagged(7, tpid=0x88A8), tagged(7, tpid=0x88A8)),
    (TRANSPARENT, 10, tagged(10, pcp=1), tagged(10, pcp=1)),
    (TRANSPARENT, 4095, tagged(4095), tagged(4095)),
    (TRANSPARENT, 10, untagged(), tagged(10)),            # from access 10
    (TRANSPARENT, 5, tagged(0, pcp=2), tagged(5, pcp=2)),  # priority-tagged into native 5
    (TRANSPARENT, DROP, untagged(), None),
    (ACC10, DROP, untagged(), None),
    (TRUNK_NO_NATIVE, DROP, untagged(), None),
]


@pytest.mark.parametrize("offset", [0, VNET_HDR_LEN])
@pytest.mark.parametrize("policy,vlan,frame,want", EGRESS)
def test_egress(policy, vlan, frame, want, offset):
    if offset:
        frame, want = PLAIN_HDR + frame, None if want is None else PLAIN_HDR + want
    out = egress(policy, vlan, frame, offset)
    if want is None:
        assert out is None
    else:
        assert bytes(out) == want
        assert (out is frame) == (want == frame)   # unchanged means not copied
    assert (out is not None) == carries(policy, vlan)


def test_egress_never_changes_the_frame_it_was_given():
    frame = bytearray(tagged(0, pcp=3))
    before = bytes(frame)
    for policy, vlan in ((ACC10, 10), (TRUNK5, 10), (TRUNK5, 5), (None, 5)):
        egress(policy, vlan, frame, 0)
        assert frame == before


def through(policy_in, frame, policy_out, offset=0):
    """What one hub port sends for a frame another read, or None."""
    vlan = ingress_vlan(policy_in, frame, offset)
    return None if vlan == DROP else egress(policy_out, vlan, frame, offset)


def test_access_to_trunk_and_back():
    out = through(ACC10, untagged(), TRUNK5)
    assert out == tagged(10)
    assert through(TRUNK5, out, ACC10) == untagged()
    assert through(TRUNK5, out, VlanPolicy(ACCESS, vid=11)) is None
    assert through(ACC10, untagged(), VlanPolicy(TRUNK, allowed={1}, native=10)) == untagged()


def test_a_transparent_port_sees_an_access_vlan_tagged_and_its_reply_gets_back():
    out = through(ACC10, untagged(), None)
    assert out == tagged(10)
    reply = out                                  # a host behind it answers in VLAN 10
    assert through(None, reply, ACC10) == untagged()
    assert through(None, untagged(), ACC10) is None   # untagged is not VLAN 10


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=100), st.sampled_from([0, VNET_HDR_LEN]))
def test_between_transparent_ports_every_frame_passes_as_it_is(frame, offset):
    assert through(None, frame, None, offset) is frame


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=18, max_size=80), st.integers(1, 4094), st.integers(1, 4094))
def test_every_frame_leaves_a_port_in_the_form_the_port_promises(frame, v, w):
    policies = [VlanPolicy(ACCESS, vid=v), VlanPolicy(TRUNK, allowed={v, w}),
                VlanPolicy(TRUNK, allowed={w}, native=v), None]
    for p_in in policies:
        vlan = ingress_vlan(p_in, frame, 0)
        if vlan == DROP:
            continue
        for p_out in policies:
            out = egress(p_out, vlan, frame, 0)
            assert (out is None) == (not carries(p_out, vlan))
            if out is None:
                continue
            assert len(out) - len(frame) in (-4, 0, 4)
            back = ingress_vlan(p_out, out, 0)
            assert back == vlan     # read back on the port it left, it is the same VLAN
            if p_out is not None and vlan == (p_out.vid or p_out.native):
                assert outer_tci(out) is None


# ------------------------------------------------------------------ tag and untag


def test_tag_puts_the_tag_after_the_macs():
    assert tag(untagged(), 100, pcp=5) == MACS + b"\x81\x00\xa0\x64" + IP_BODY
    assert tag(untagged(), 4095, pcp=7) == MACS + b"\x81\x00\xef\xff" + IP_BODY
    assert untag(tagged(3, pcp=1)) == untagged()
    assert untag(tagged(3, body=tagged(4)[12:])) == tagged(4)   # only the outer tag


@pytest.mark.parametrize("call", [
    lambda: tag(untagged(), 4096), lambda: tag(untagged(), -1),
    lambda: tag(untagged(), 1, pcp=8),
    lambda: tag(MACS, 1, offset=1), lambda: tag(MACS[:11], 1),
    lambda: untag(untagged()), lambda: untag(tagged(7, tpid=0x88A8)),
    lambda: untag(tagged(1)[:17]),
    lambda: tag(bytes(30), 1, offset=4), lambda: untag(bytes(4) + tagged(1), offset=4),
])
def test_tag_and_untag_refuse(call):
    with pytest.raises(ValueError):
        call()


def vnet(flags=0, gso_type=0, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0):
    return VNET.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def test_tag_moves_csum_start_and_hdr_len_past_the_tag_and_nothing_else():
    frame = vnet(F_NEEDS_CSUM, GSO_TCPV4, 54, 1448, 34, 16) + untagged()
    out = tag(frame, 7, VNET_HDR_LEN)
    assert VNET.unpack_from(out) == (F_NEEDS_CSUM, GSO_TCPV4, 58, 1448, 38, 16)
    assert out[VNET_HDR_LEN:] == tag(untagged(), 7)
    assert untag(out, VNET_HDR_LEN) == frame


@pytest.mark.parametrize("hdr_len,csum_start,moved", [
    (0, 0, (0, 0)),          # unset: stays unset
    (12, 11, (12, 11)),      # only the MACs: before the tag
    (13, 12, (17, 16)),      # reaches past the MACs: moves
    (0xFFFF, 0xFFFE, (0xFFFF, 0xFFFE)),   # would overflow: nonsense, left alone
])
def test_which_header_values_move(hdr_len, csum_start, moved):
    frame = vnet(F_NEEDS_CSUM, 0, hdr_len, 0, csum_start, 6) + untagged()
    _, _, h, _, c, _ = VNET.unpack_from(tag(frame, 1, VNET_HDR_LEN))
    assert (h, c) == moved


def test_a_plain_frame_that_happens_to_look_like_a_vnet_header_is_left_alone():
    frame = vnet(F_NEEDS_CSUM, GSO_TCPV4, 54, 1448, 34, 16) + untagged()
    assert tag(frame, 7, 0)[:12] == frame[:12]


# csum_start and hdr_len that 4 more bytes would overflow are nonsense, left alone (above)
vnet_headers = st.builds(vnet, st.integers(0, 255), st.integers(0, 255),
                         st.integers(0, 0xFFFB), st.integers(0, 0xFFFF),
                         st.integers(0, 0xFFFB), st.integers(0, 0xFFFF))
vids = st.integers(0, 4095)
pcps = st.integers(0, 7)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=14, max_size=200), vids, pcps)
def test_untag_undoes_tag_on_plain_frames(frame, vid, pcp):
    out = tag(frame, vid, pcp=pcp)
    assert outer_tci(out) == (pcp, 0, vid)
    assert untag(out) == frame
    assert tag(untag(out), vid, pcp=pcp) == out


@settings(max_examples=300, deadline=None)
@given(vnet_headers, st.binary(min_size=14, max_size=200), vids, pcps)
def test_untag_undoes_tag_on_vnet_frames(hdr, body, vid, pcp):
    frame = hdr + body
    out = tag(frame, vid, VNET_HDR_LEN, pcp)
    assert outer_tci(out, VNET_HDR_LEN) == (pcp, 0, vid)
    assert untag(out, VNET_HDR_LEN) == frame
    assert tag(untag(out, VNET_HDR_LEN), vid, VNET_HDR_LEN, pcp) == out


# ------------------------------------------------------------------ GSO super-frames

payloads = st.integers(1, 20000).map(lambda n: bytes(i * 7 % 251 for i in range(n)))
mss_values = st.integers(100, 9000)
vlan_ids = st.integers(1, 4094)


def plain(frames):
    return [bytes(f) for f in frames]


@settings(max_examples=40, deadline=None)
@given(payloads, mss_values, vlan_ids, pcps)
def test_a_tagged_super_frame_segments_into_the_tagged_segments(payload, mss, vid, pcp):
    frame = tcp_super_frame(payload, mss)
    out = tag(frame, vid, VNET_HDR_LEN, pcp)
    assert plain(to_plain(out)) == plain(tag(s, vid, pcp=pcp) for s in to_plain(frame))
    if pcp == 0:
        assert out == tcp_super_frame(payload, mss, vlan=vid)   # as scapy builds it


@settings(max_examples=40, deadline=None)
@given(payloads, mss_values, vlan_ids)
def test_an_untagged_super_frame_segments_into_the_untagged_segments(payload, mss, vid):
    frame = tcp_super_frame(payload, mss, vlan=vid)
    out = untag(frame, VNET_HDR_LEN)
    assert plain(to_plain(out)) == plain(untag(s) for s in to_plain(frame))
    assert out == tcp_super_frame(payload, mss)


@settings(max_examples=20, deadline=None)
@given(payloads, mss_values, vlan_ids, vlan_ids)
def test_super_frames_through_the_hub_still_segment(payload, mss, v, w):
    access, trunk = VlanPolicy(ACCESS, vid=v), VlanPolicy(TRUNK, allowed={v, w})
    frame = tcp_super_frame(payload, mss)
    want_tagged = plain(to_plain(tcp_super_frame(payload, mss, vlan=v)))
    out = through(access, frame, trunk, VNET_HDR_LEN)
    assert plain(to_plain(out)) == want_tagged
    assert plain(to_plain(through(trunk, out, access, VNET_HDR_LEN))) == plain(to_plain(frame))
    assert plain(to_plain(through(trunk, out, None, VNET_HDR_LEN))) == want_tagged


def test_the_segments_of_a_tagged_super_frame_have_valid_checksums():
    out = tag(tcp_super_frame(bytes(range(256)) * 20, 1000), 42, VNET_HDR_LEN, pcp=3)
    segs = to_plain(out)
    assert len(segs) == 6
    for seg in segs:
        pkt = Ether(bytes(seg))
        assert pkt.vlan == 42 and pkt.prio == 3
        fixed = pkt.copy()
        del fixed[IP].chksum, fixed[TCP].chksum
        fixed = Ether(bytes(fixed))
        assert (pkt[IP].chksum, pkt[TCP].chksum) == (fixed[IP].chksum, fixed[TCP].chksum)


def _kernel_case(name):
    cases = json.loads(FIXTURE.read_text())["cases"]
    case = cases[name]
    return bytes.fromhex(case["vnet"]), [bytes.fromhex(h) for h in case["kernel"]]


@pytest.mark.skipif(not FIXTURE.exists(), reason="no kernel fixture")
def test_the_kernel_segments_our_tagged_super_frame_into_the_tagged_segments():
    """kernel_gso.json's tcp4_vlan is tcp4 tagged 42 (header moved as here), segmented by
    the kernel: so tag() makes what the kernel takes and cuts up right."""
    frame, segs = _kernel_case("tcp4")
    tagged_frame, tagged_segs = _kernel_case("tcp4_vlan")
    assert tag(frame, 42, VNET_HDR_LEN) == tagged_frame
    assert untag(tagged_frame, VNET_HDR_LEN) == frame
    assert [tag(s, 42) for s in segs] == tagged_segs
    assert plain(to_plain(tag(frame, 42, VNET_HDR_LEN))) == tagged_segs
