import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from l2vpn import frame
from l2vpn.frame import (
    BROADCAST,
    TPID_8021AD,
    TPID_8021Q,
    dst_mac,
    ethertype,
    format_mac,
    is_group,
    parse_mac,
    src_mac,
    vlan_id,
)

DST = bytes.fromhex("020000000001")
SRC = bytes.fromhex("020000000002")
IPV4 = 0x0800
ARP = 0x0806


def tag(tpid: int, vid: int, pcp: int = 0) -> bytes:
    return struct.pack(">HH", tpid, pcp << 13 | vid)


def eth(*tags: bytes, etype: int = IPV4, payload: bytes = bytes(46)) -> bytes:
    return DST + SRC + b"".join(tags) + struct.pack(">H", etype) + payload


# -- addresses -----------------------------------------------------------------------


def test_dst_and_src_are_bytes_even_from_a_memoryview():
    f = memoryview(bytearray(eth()))
    assert dst_mac(f) == DST and type(dst_mac(f)) is bytes
    assert src_mac(f) == SRC and type(src_mac(f)) is bytes


@pytest.mark.parametrize("mac, group", [
    (BROADCAST, True),
    (bytes.fromhex("01005e000001"), True),     # IPv4 multicast
    (bytes.fromhex("333300000001"), True),     # IPv6 multicast
    (bytes.fromhex("0180c2000000"), True),     # STP
    (bytes.fromhex("020000000001"), False),
    (bytes.fromhex("00163e000001"), False),
    (bytes(6), False),
])
def test_is_group(mac, group):
    assert is_group(mac) is group


# -- ethertype and VLANs -------------------------------------------------------------


def test_untagged_ethertype_and_no_vlan():
    f = eth(etype=ARP)
    assert ethertype(f) == ARP
    assert vlan_id(f) is None


def test_8021q_tag():
    f = eth(tag(TPID_8021Q, 100, pcp=5))
    assert vlan_id(f) == 100                   # priority bits are not part of the VID
    assert ethertype(f) == IPV4


def test_qinq_gives_outer_vid_and_inner_ethertype():
    f = eth(tag(TPID_8021AD, 200), tag(TPID_8021Q, 300), etype=0x86DD)
    assert vlan_id(f) == 200
    assert ethertype(f) == 0x86DD


def test_old_style_double_8021q():
    f = eth(tag(TPID_8021Q, 4095), tag(TPID_8021Q, 1), etype=ARP)
    assert vlan_id(f) == 4095
    assert ethertype(f) == ARP


@pytest.mark.parametrize("f", [
    b"",
    DST + SRC,                                  # no ethertype
    DST + SRC + b"\x08",                        # half an ethertype
    DST + SRC + tag(TPID_8021Q, 5),             # tag but nothing after it
    DST + SRC + tag(TPID_8021Q, 5) + b"\x08",
])
def test_ethertype_of_a_cut_short_frame_is_zero(f):
    assert ethertype(f) == 0


def test_vlan_id_of_a_cut_short_tag_is_none():
    assert vlan_id(DST + SRC + b"\x81\x00\x00") is None


@given(st.binary(max_size=64))
def test_helpers_never_raise_on_any_bytes(data):
    assert 0 <= ethertype(data) <= 0xFFFF
    vid = vlan_id(data)
    assert vid is None or 0 <= vid <= 4095


@given(st.lists(st.tuples(st.sampled_from([TPID_8021Q, TPID_8021AD]),
                          st.integers(0, 4095)), max_size=4),
       st.integers(0, 0xFFFF).filter(lambda e: e not in (TPID_8021Q, TPID_8021AD)))
def test_ethertype_skips_any_stack_of_tags(tags, etype):
    f = eth(*(tag(tpid, vid) for tpid, vid in tags), etype=etype)
    assert ethertype(f) == etype
    assert vlan_id(f) == (tags[0][1] if tags else None)


# -- MAC text ------------------------------------------------------------------------


def test_format_mac():
    assert format_mac(bytes.fromhex("02aBcDeF0109")) == "02:ab:cd:ef:01:09"
    assert format_mac(bytearray(BROADCAST)) == "ff:ff:ff:ff:ff:ff"


@pytest.mark.parametrize("text", ["02:AB:cd:EF:01:09", "02-ab-cd-ef-01-09", "02:ab-cd:ef-01:09"])
def test_parse_mac_accepts_colons_dashes_and_any_case(text):
    assert parse_mac(text) == bytes.fromhex("02abcdef0109")


@given(st.binary(min_size=6, max_size=6))
def test_format_parse_round_trip(mac):
    text = format_mac(mac)
    assert parse_mac(text) == mac
    assert parse_mac(text.upper().replace(":", "-")) == mac
    assert format_mac(parse_mac(text)) == text


@pytest.mark.parametrize("text", [
    "",
    "02:00:00:00:00",
    "02:00:00:00:00:00:00",
    "2:0:0:0:0:1",
    "020:00:00:00:00:01",
    "02:00:00:00:00:0g",
    "0200.0000.0001",
    "020000000001",
    "02:00:00:00:00:01:",
])
def test_parse_mac_errors(text):
    with pytest.raises(ValueError, match="not a MAC address|invalid literal"):
        parse_mac(text)


@pytest.mark.parametrize("text", ["+2:00:00:00:00:01", " 2:00:00:00:00:01", "02:00:00:00:00:1 "])
def test_parse_mac_refuses_signs_and_spaces(text):
    with pytest.raises(ValueError):
        parse_mac(text)


def test_size_constants():
    assert frame.ETH_HLEN == 14 and frame.MIN_FRAME == 14 and frame.VLAN_HLEN == 4
