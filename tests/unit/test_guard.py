import ast
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import (
    ARP,
    BOOTP,
    DHCP6_Advertise,
    DHCP6_Reply,
    DHCP6_Solicit,
    DNS,
    DNSQR,
    ICMPv6EchoRequest,
    ICMPv6MLQuery,
    ICMPv6MLReport,
    ICMPv6MLReport2,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    IP,
    TCP,
    UDP,
    Dot1AD,
    Dot1Q,
    Ether,
    IPOption_Router_Alert,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    Packet,
    RouterAlert,
)
from scapy.all import DHCP as DHCPOptions
from scapy.layers.ipsec import AH

from l2vpn import guard
from l2vpn.guard import RA, classify

DHCP = guard.DHCP
SITE_MAC = "02:00:00:00:00:01"
PREFIX = bytes(range(0xA0, 0xAA))                  # stands in for the virtio-net header
UDP_HLEN = 8
ICMP6_HLEN = 4


def ether(l3: Packet, *tags: Packet, etype: int | None = None) -> Packet:
    """`l3` in Ethernet, behind `tags` (outermost first); `etype` overrides the first TPID."""
    pkt = Ether(dst="ff:ff:ff:ff:ff:ff", src=SITE_MAC)
    if etype is not None:
        pkt.type = etype
    for tag in tags:
        pkt = pkt / tag
    return pkt / l3


def eth(l3: Packet, *tags: Packet, etype: int | None = None) -> bytes:
    return bytes(ether(l3, *tags, etype=etype))


def v4(sport: int, dport: int, **ip) -> Packet:
    return IP(src="192.0.2.1", dst="255.255.255.255", **ip) / UDP(sport=sport, dport=dport)


def v6(**ip6) -> IPv6:
    return IPv6(src="fe80::1", dst="ff02::1", **ip6)


def dhcp4(op: int, kind: str) -> Packet:
    return BOOTP(op=op, xid=7) / DHCPOptions(options=[("message-type", kind), "end"])


def views(frame: bytes):
    """The same frame as the hub may hand it over: each (buffer, offset)."""
    return [
        (frame, 0),
        (bytearray(frame), 0),
        (memoryview(frame), 0),
        (memoryview(bytearray(frame)), 0),
        (PREFIX + frame, 10),
        (bytearray(PREFIX + frame), 10),
        (memoryview(bytearray(PREFIX + frame)), 10),
    ]


def answers(frame: bytes) -> set:
    return {classify(buf, off) for buf, off in views(frame)}


def header_end(pkt: Packet, layer) -> int:
    """Where the UDP or ICMPv6 header of `pkt` ends: the bytes classify() may look at."""
    hlen = UDP_HLEN if layer is UDP else ICMP6_HLEN
    return len(bytes(pkt)) - len(bytes(pkt[layer])) + hlen


# -- the cases -----------------------------------------------------------------------

# id -> (layer-3 packet, answer, layer whose header decides)
POSITIVE = {
    "dhcpv4-offer": (v4(67, 68) / dhcp4(2, "offer"), DHCP, UDP),
    "dhcpv4-ack": (v4(67, 68) / dhcp4(2, "ack"), DHCP, UDP),
    "dhcpv4-ip-options": (IP(dst="255.255.255.255", options=[IPOption_Router_Alert()])
                          / UDP(sport=67, dport=68) / dhcp4(2, "offer"), DHCP, UDP),
    "dhcpv4-first-fragment": (v4(67, 68, flags="MF", frag=0) / dhcp4(2, "offer"), DHCP, UDP),
    "dhcpv6-advertise": (v6() / UDP(sport=547, dport=546) / DHCP6_Advertise(), DHCP, UDP),
    "dhcpv6-reply": (v6() / UDP(sport=547, dport=546) / DHCP6_Reply(), DHCP, UDP),
    "dhcpv6-behind-hbh": (v6() / IPv6ExtHdrHopByHop() / UDP(sport=547, dport=546)
                          / DHCP6_Reply(), DHCP, UDP),
    "dhcpv6-first-fragment": (v6() / IPv6ExtHdrFragment(offset=0, m=1, id=9)
                              / UDP(sport=547, dport=546) / DHCP6_Reply(), DHCP, UDP),
    "ra": (v6() / ICMPv6ND_RA(), RA, ICMPv6ND_RA),
    "ra-hbh-destopt": (v6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / ICMPv6ND_RA(),
                       RA, ICMPv6ND_RA),
    "ra-first-fragment": (v6() / IPv6ExtHdrFragment(offset=0, m=1, id=9) / ICMPv6ND_RA(),
                          RA, ICMPv6ND_RA),
    "ra-hbh-destopt-fragment": (v6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
                                / IPv6ExtHdrFragment(offset=0, m=1) / ICMPv6ND_RA(),
                                RA, ICMPv6ND_RA),
    "ra-routing": (v6() / IPv6ExtHdrRouting(addresses=["2001:db8::1"]) / ICMPv6ND_RA(),
                   RA, ICMPv6ND_RA),
    # AH: 12 fixed bytes + 12 of ICV = 24 = (4 + 2) * 4
    "ra-ah": (v6() / AH(nh=58, spi=1, payloadlen=4, icv=bytes(12)) / ICMPv6ND_RA(),
              RA, ICMPv6ND_RA),
}

NEGATIVE = {
    "dhcpv4-discover": v4(68, 67) / dhcp4(1, "discover"),
    "dhcpv4-request": v4(68, 67) / dhcp4(1, "request"),
    "dhcpv4-server-to-server": v4(67, 67) / dhcp4(2, "offer"),
    "dhcpv4-ports-over-tcp": IP() / TCP(sport=67, dport=68),
    "dhcpv4-ports-over-ipv6": v6() / UDP(sport=67, dport=68) / dhcp4(2, "offer"),
    "dhcpv4-non-first-fragment": v4(67, 68, frag=185) / dhcp4(2, "offer"),
    "dhcpv6-solicit": v6() / UDP(sport=546, dport=547) / DHCP6_Solicit(),
    "dhcpv6-ports-over-ipv4": v4(547, 546) / DHCP6_Reply(),
    "dhcpv6-ports-over-tcp": v6() / TCP(sport=547, dport=546),
    "dhcpv6-non-first-fragment": v6() / IPv6ExtHdrFragment(offset=1, id=9)
                                 / UDP(sport=547, dport=546) / DHCP6_Reply(),
    "rs": v6() / ICMPv6ND_RS(),
    "ns": v6() / ICMPv6ND_NS(tgt="fe80::2"),
    "na": v6() / ICMPv6ND_NA(tgt="fe80::2"),
    "echo-request": v6() / ICMPv6EchoRequest(),
    "mld-query": v6() / IPv6ExtHdrHopByHop(options=[RouterAlert()]) / ICMPv6MLQuery(),
    "mld-report": v6() / IPv6ExtHdrHopByHop(options=[RouterAlert()]) / ICMPv6MLReport(),
    "mldv2-report": v6() / IPv6ExtHdrHopByHop(options=[RouterAlert()]) / ICMPv6MLReport2(),
    "ra-non-first-fragment": v6() / IPv6ExtHdrFragment(offset=1, id=9) / ICMPv6ND_RA(),
    "ra-after-no-next-header": v6() / IPv6ExtHdrDestOpt(nh=59) / ICMPv6ND_RA(),
    "arp": ARP(op=2, psrc="192.0.2.1", pdst="192.0.2.2"),
    "tcp": IP() / TCP(sport=1234, dport=80),
    "tcp6": v6() / TCP(sport=1234, dport=80),
    "dns": IP() / UDP(sport=53, dport=33000) / DNS(qd=DNSQR(qname="example.org")),
    "mdns": IP(dst="224.0.0.251") / UDP(sport=5353, dport=5353) / DNS(),
    "mdns6": IPv6(dst="ff02::fb") / UDP(sport=5353, dport=5353) / DNS(),
}

TAGGINGS = {
    "untagged": (),
    "dot1q": (Dot1Q(vlan=10),),
    "qinq": (Dot1AD(vlan=20), Dot1Q(vlan=10)),
}


@pytest.mark.parametrize("tags", TAGGINGS.values(), ids=TAGGINGS.keys())
@pytest.mark.parametrize("case", POSITIVE.values(), ids=POSITIVE.keys())
def test_server_messages_and_ras_are_named(case, tags):
    l3, expected, _ = case
    assert answers(eth(l3, *tags)) == {expected}


@pytest.mark.parametrize("tags", TAGGINGS.values(), ids=TAGGINGS.keys())
@pytest.mark.parametrize("l3", NEGATIVE.values(), ids=NEGATIVE.keys())
def test_clients_and_other_traffic_are_not(l3, tags):
    assert answers(eth(l3, *tags)) == {None}


def near_misses(sport: int, dport: int):
    """The port pair with one bit flipped in each of its four bytes."""
    return [(sport ^ 0x100, dport), (sport ^ 1, dport), (sport, dport ^ 0x100), (sport, dport ^ 1)]


@pytest.mark.parametrize("sport, dport", near_misses(67, 68) + [(68, 68), (67, 67)])
def test_dhcpv4_needs_both_ports_whole(sport, dport):
    assert answers(eth(v4(sport, dport) / dhcp4(2, "offer"))) == {None}


@pytest.mark.parametrize("sport, dport", near_misses(547, 546) + [(546, 546), (547, 547)])
def test_dhcpv6_needs_both_ports_whole(sport, dport):
    assert answers(eth(v6() / UDP(sport=sport, dport=dport) / DHCP6_Reply())) == {None}


def test_the_legacy_9100_tpid_counts_as_a_tag():
    assert answers(eth(v4(67, 68), Dot1Q(vlan=3), etype=0x9100)) == {DHCP}


@pytest.mark.parametrize("etype", [0x88CC, 0x8847, 0x8137, 0x8101, 0x9101, 0x0806])
def test_other_ethertypes_are_not_tags(etype):
    # read as a tag, the 4 bytes after it would lead to an offer
    assert answers(eth(v4(67, 68), Dot1Q(vlan=1), etype=etype)) == {None}


def test_eight_tags_are_skipped_but_a_ninth_gives_up():
    offer = v4(67, 68) / dhcp4(2, "offer")
    assert answers(eth(offer, *[Dot1Q(vlan=n) for n in range(1, 9)])) == {DHCP}
    assert answers(eth(offer, *[Dot1Q(vlan=n) for n in range(1, 10)])) == {None}


def test_eight_extension_headers_are_walked_but_a_ninth_gives_up():
    def ra_behind(n):
        l3 = v6()
        for _ in range(n):
            l3 = l3 / IPv6ExtHdrDestOpt()
        return l3 / ICMPv6ND_RA()

    assert answers(eth(ra_behind(8))) == {RA}
    assert answers(eth(ra_behind(9))) == {None}


# -- the IPv4 header is read, not assumed --------------------------------------------


def test_the_udp_header_is_found_through_ihl():
    # the option bytes spell 67 -> 68 where a 20-byte header would end
    decoy = IP(options=[b"\x94\x04\x00\x00", b"\x00\x43\x00\x44"]) / UDP(sport=53, dport=53)
    real = IP(options=[b"\x01" * 40]) / UDP(sport=67, dport=68)
    assert answers(eth(decoy)) == {None}
    assert answers(eth(real)) == {DHCP}


@pytest.mark.parametrize("ihl", [3, 4])
def test_an_ihl_below_five_is_malformed(ihl):
    # ports 67 -> 68 where that IHL would put UDP (inside the addresses)
    raw = bytearray(eth(v4(67, 68)))
    raw[14] = 0x40 | ihl
    raw[14 + 4 * ihl: 14 + 4 * ihl + 4] = b"\x00\x43\x00\x44"
    assert answers(bytes(raw)) == {None}


def test_the_ip_version_must_match_the_ethertype():
    v4_as_v6 = bytearray(eth(v6() / ICMPv6ND_RA()))
    v4_as_v6[14] = 0x40 | (v4_as_v6[14] & 0x0F)
    v6_as_v4 = bytearray(eth(v4(67, 68)))
    v6_as_v4[14] = 0x65
    assert answers(bytes(v4_as_v6)) == {None}
    assert answers(bytes(v6_as_v4)) == {None}


@pytest.mark.parametrize("frag", [1, 0x100, 0x1FFF])
def test_any_nonzero_ipv4_fragment_offset_is_not_first(frag):
    assert answers(eth(v4(67, 68, frag=frag))) == {None}


@pytest.mark.parametrize("offset", [1, 0x100, 0x1FFF])
def test_any_nonzero_ipv6_fragment_offset_is_not_first(offset):
    assert answers(eth(v6() / IPv6ExtHdrFragment(offset=offset) / ICMPv6ND_RA())) == {None}


# -- truncation and offsets ----------------------------------------------------------


def with_header_ends(cases):
    """(frame, answer, header end) for each (packet, answer, deciding layer)."""
    return [(bytes(pkt), expected, header_end(pkt, layer)) for pkt, expected, layer in cases]


POSITIVE_FRAMES = with_header_ends(
    (ether(l3, *tags), expected, layer)
    for l3, expected, layer in POSITIVE.values() for tags in TAGGINGS.values())
POSITIVE_IDS = [f"{name}-{tagging}" for name in POSITIVE for tagging in TAGGINGS]


@pytest.mark.parametrize("frame, expected, need", POSITIVE_FRAMES, ids=POSITIVE_IDS)
def test_every_prefix_is_named_only_once_its_headers_are_whole(frame, expected, need):
    assert 14 < need <= len(frame)
    for n in range(len(frame) + 1):
        want = expected if n >= need else None
        assert classify(frame[:n]) == want, n
        assert classify(memoryview(PREFIX + frame)[:10 + n], 10) == want, n


def test_offsets_past_the_end_or_negative_are_none():
    offer = eth(v4(67, 68) / dhcp4(2, "offer"))
    for off in (len(offer) - 1, len(offer), len(offer) + 1, 10**6, 10**30):
        assert classify(offer, off) is None
        assert classify(memoryview(offer), off) is None
    # a negative offset would otherwise index from the end and find the offer
    assert classify(offer, -len(offer)) is None


def test_the_empty_buffer_is_none():
    for buf in (b"", bytearray(), memoryview(b"")):
        assert classify(buf) is None
        assert classify(buf, 10) is None


# -- the fast path -------------------------------------------------------------------


class Counting:
    """A frame that counts what classify() reads from it."""

    def __init__(self, data: bytes):
        self.data = data
        self.reads = 0
        self.lens = 0

    def __getitem__(self, i):
        self.reads += 1
        return self.data[i]

    def __len__(self):
        self.lens += 1
        return len(self.data)


@pytest.mark.parametrize("l3, most", [
    (IP() / TCP(sport=1234, dport=80), 3),
    (ARP(), 2),
    (v6() / TCP(sport=1234, dport=80), 5),
])
def test_ordinary_frames_are_rejected_in_a_few_reads(l3, most):
    f = Counting(PREFIX + eth(l3))
    assert classify(f, 10) is None
    assert f.reads <= most
    assert f.lens == 0


# -- properties ----------------------------------------------------------------------

HEADS = [eth(l3, *tags)[:n]
         for l3, _, _ in POSITIVE.values()
         for tags in TAGGINGS.values()
         for n in (14, 18, 34, 40, 54, 62)]


@settings(max_examples=2000, deadline=None)
@given(data=st.one_of(st.binary(max_size=128),
                      st.tuples(st.sampled_from(HEADS), st.binary(max_size=96))
                      .map(lambda t: t[0] + t[1])),
       offset=st.integers(min_value=0, max_value=160),
       kind=st.sampled_from([bytes, bytearray, memoryview]))
def test_any_bytes_at_any_offset_never_raise(data, offset, kind):
    assert classify(kind(data), offset) in (None, DHCP, RA)


MUTABLE = POSITIVE_FRAMES + with_header_ends(
    (ether(NEGATIVE[name]), None, layer) for name, layer in (
        ("dhcpv4-discover", UDP), ("dhcpv6-solicit", UDP), ("rs", ICMPv6ND_RS),
        ("ns", ICMPv6ND_NS), ("mld-report", ICMPv6MLReport)))


@settings(max_examples=300, deadline=None)
@given(case=st.sampled_from(MUTABLE), tail=st.binary(max_size=64), data=st.data())
def test_bytes_past_the_udp_or_icmpv6_header_never_change_the_answer(case, tail, data):
    frame, expected, need = case
    body = bytearray(frame)
    for i in data.draw(st.lists(st.integers(need, len(frame) - 1), max_size=8)
                       if need < len(frame) else st.just([])):
        body[i] ^= data.draw(st.integers(1, 255))
    assert classify(bytes(body)) == expected
    assert classify(frame[:need] + tail) == expected


def test_the_module_imports_nothing():
    tree = ast.parse(pathlib.Path(guard.__file__).read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
