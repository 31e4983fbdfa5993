"""l2vpn.offload: checksums, segmentation rules, hostile input, and the kernel's own output.

Super-frames are built here with scapy the way Linux builds them (the L4 checksum field
holds the pseudo-header sum over the whole L4 length) and every segment is checked with
scapy's independent checksum code. tests/unit/data/kernel_gso.json holds frames a real
TAP produced and the kernel's own segmentation of them (netns-lab/gso_capture.py); those
must match byte for byte.
"""

import ast
import json
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP, in4_chksum
from scapy.layers.inet6 import (IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop,
                                IPv6ExtHdrRouting, in6_chksum)
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Raw
from scapy.utils import checksum as scapy_checksum

from l2vpn import offload
from l2vpn.offload import (F_DATA_VALID, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4,
                           GSO_TCPV6, GSO_UDP, GSO_UDP_L4, PLAIN_HDR, VNET_HDR_LEN,
                           OffloadError, complete_checksum, internet_checksum, needs_work,
                           to_plain)

FIXTURE = Path(__file__).parent / "data" / "kernel_gso.json"
MOD = Path(offload.__file__)
SRC_MAC, DST_MAC = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
FIN, PSH, CWR = 0x01, 0x08, 0x80
VNET = struct.Struct("<BBHHHH")


# ------------------------------------------------------------------------ references


def ref_sum(data: bytes) -> int:
    """Ones'-complement sum of 16-bit words, a word at a time (the obvious way)."""
    if len(data) % 2:
        data += b"\0"
    s = 0
    for (w,) in struct.iter_unpack(">H", data):
        s += w
        s = (s & 0xFFFF) + (s >> 16)
    return s


def l4_of(pkt):
    return pkt.getlayer(TCP) or pkt.getlayer(UDP)


def expected_l4_checksum(pkt) -> int:
    """scapy's own checksum for the TCP/UDP layer of a parsed packet."""
    l4 = l4_of(pkt)
    raw = bytearray(bytes(l4))
    at = 16 if isinstance(l4, TCP) else 6
    raw[at:at + 2] = b"\0\0"
    proto = 6 if isinstance(l4, TCP) else 17
    if pkt.haslayer(IP):
        c = in4_chksum(proto, pkt[IP], bytes(raw))
    else:
        c = in6_chksum(proto, l4.underlayer, bytes(raw))
    return 0xFFFF if (proto == 17 and c == 0) else c


# --------------------------------------------------------------------------- builders


def build(*, v6=False, udp=False, vlans=(), ip_opts=0, exts=(), tcp_opts=0, payload=b"",
          seq=1000, tcp_flags="PA", ip_id=1, tos=0):
    """A plain Ethernet frame with a correct L4 checksum, as scapy builds it."""
    pkt = Ether(src=SRC_MAC, dst=DST_MAC)
    for tpid, vid in vlans:
        pkt = pkt / (Dot1AD(vlan=vid) if tpid == 0x88A8 else Dot1Q(vlan=vid))
    if v6:
        pkt = pkt / IPv6(src="fe80::a", dst="fe80::b", tc=tos)
        for kind in exts:
            pkt = pkt / {0: IPv6ExtHdrHopByHop, 43: IPv6ExtHdrRouting,
                         60: IPv6ExtHdrDestOpt}[kind]()
    else:
        pkt = pkt / IP(src="198.18.0.1", dst="198.18.0.2", id=ip_id, flags="DF", tos=tos,
                       options=[IPOption_NOP()] * ip_opts)
    if udp:
        pkt = pkt / UDP(sport=4000, dport=5000)
    else:
        pkt = pkt / TCP(sport=4000, dport=5000, seq=seq, ack=7, flags=tcp_flags,
                        options=[("NOP", None)] * tcp_opts)
    return bytes(pkt / Raw(payload))


def offsets(eth: bytes):
    """(L3 offset, L4 offset, is TCP) of a frame build() made."""
    pkt = Ether(eth)
    l4 = l4_of(pkt)
    l4_off = len(eth) - len(bytes(l4))
    ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
    return len(eth) - len(bytes(ip)), l4_off, isinstance(l4, TCP)


def as_partial(eth: bytes, gso_type=GSO_NONE, gso_size=0) -> bytes:
    """The vnet-form frame Linux would hand over: NEEDS_CSUM, pseudo-header sum seeded."""
    l3, l4, tcp = offsets(eth)
    buf = bytearray(eth)
    at = l4 + (16 if tcp else 6)
    if eth[l3] >> 4 == 4:
        pseudo = buf[l3 + 12:l3 + 20]
    else:
        pseudo = buf[l3 + 8:l3 + 40]
    seed = ref_sum(bytes(pseudo) + struct.pack(">HH", 6 if tcp else 17, len(eth) - l4))
    buf[at:at + 2] = struct.pack(">H", seed)
    hdr_len = l4 + ((buf[l4 + 12] >> 4) * 4 if tcp else 8) if gso_type else 0
    return VNET.pack(F_NEEDS_CSUM, gso_type, hdr_len, gso_size, l4, at - l4) + bytes(buf)


def gso_kind(v6: bool, udp: bool) -> int:
    return GSO_UDP_L4 if udp else (GSO_TCPV6 if v6 else GSO_TCPV4)


# ----------------------------------------------------------------------- basic API


def test_constants_match_linux_virtio_net_h():
    assert (VNET_HDR_LEN, PLAIN_HDR) == (10, bytes(10))
    assert (F_NEEDS_CSUM, F_DATA_VALID) == (1, 2)
    assert (GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4, GSO_ECN) == (0, 1, 3, 4, 5,
                                                                              0x80)
    assert issubclass(OffloadError, ValueError)


@pytest.mark.parametrize("hdr,want", [
    (PLAIN_HDR, False),
    (VNET.pack(F_DATA_VALID, 0, 0, 0, 0, 0), False),
    (VNET.pack(F_NEEDS_CSUM, 0, 0, 0, 34, 16), True),
    (VNET.pack(0, GSO_TCPV4, 54, 1448, 0, 0), True),
    (VNET.pack(F_NEEDS_CSUM | F_DATA_VALID, GSO_UDP_L4, 0, 0, 0, 0), True),
])
def test_needs_work_reads_flags_and_gso_type(hdr, want):
    assert needs_work(hdr + bytes(60)) is want


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_frames_without_work_come_back_as_slices(kind):
    eth = build(payload=b"x" * 50)
    frame = kind(VNET.pack(F_DATA_VALID, 0, 0, 0, 0, 0) + eth)
    (out,) = to_plain(frame)
    assert bytes(out) == eth
    if kind is memoryview:
        assert isinstance(out, memoryview) and out.obj is frame.obj


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x01", b"\xff\xff", b"\x12\x34\x56",
                                  bytes(1000), b"\xff" * 1001, b"\xff" * 33, b"\xff" * 65,
                                  b"\xff" * 1448, b"\xfe\xff" * 32768, b"\xff" * 65537,
                                  b"\xff" * 131073, b"\x80" * 200001])
def test_internet_checksum_edge_cases(data):
    assert internet_checksum(data) == ref_sum(data) ^ 0xFFFF
    assert internet_checksum(data, 0x1234) == ref_sum(b"\x12\x34" + data) ^ 0xFFFF


@given(st.binary(max_size=3000), st.integers(0, 0xFFFF))
def test_internet_checksum_matches_a_word_loop(data, initial):
    assert internet_checksum(data, initial) == ref_sum(struct.pack(">H", initial) + data) ^ \
        0xFFFF


@given(st.binary(max_size=70000))
@settings(max_examples=30)
def test_the_fold_shortcut_holds_for_long_data(data):
    assert offload._sum(data) == ref_sum(data)


# ------------------------------------------------------------------ NEEDS_CSUM only


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("udp", [False, True])
@pytest.mark.parametrize("size", [0, 1, 2, 101, 1400])
def test_needs_csum_frames_get_the_checksum_scapy_computes(v6, udp, size):
    eth = build(v6=v6, udp=udp, payload=bytes(i * 7 % 256 for i in range(size)))
    (out,) = to_plain(as_partial(eth))
    assert bytes(out) == eth  # scapy put the complete checksum in eth
    pkt = Ether(bytes(out))
    assert l4_of(pkt).chksum == expected_l4_checksum(pkt)


def _force_zero_checksum(eth: bytes) -> bytes:
    """eth with two payload bytes chosen so its L4 checksum comes out 0 (sent as 0xFFFF)."""
    _, l4, tcp = offsets(eth)
    buf = bytearray(as_partial(eth)[VNET_HDR_LEN:])
    at = l4 + (16 if tcp else 6)
    pos = len(buf) - 2 if (len(buf) - l4) % 2 == 0 else len(buf) - 3
    buf[pos:pos + 2] = b"\0\0"
    s = ref_sum(bytes(buf[l4:]))
    buf[pos:pos + 2] = struct.pack(">H", 0xFFFF - s)
    assert ref_sum(bytes(buf[l4:])) == 0xFFFF
    return VNET.pack(F_NEEDS_CSUM, 0, 0, 0, l4, at - l4) + bytes(buf)


@pytest.mark.parametrize("udp", [False, True])
def test_a_zero_result_is_sent_as_ffff_as_skb_checksum_help_does(udp):
    frame = _force_zero_checksum(build(udp=udp, payload=b"abcdefgh"))
    (out,) = to_plain(frame)
    _, l4, tcp = offsets(bytes(out))
    at = l4 + (16 if tcp else 6)
    assert out[at:at + 2] == b"\xff\xff"


def test_complete_checksum_works_in_place_on_any_offset():
    buf = bytearray(b"\0" * 14 + b"\x01\x02\x03\x04\x00\x00\x05")
    complete_checksum(buf, 14, 4)
    assert buf[18:20] == struct.pack(">H", ref_sum(b"\x01\x02\x03\x04\x00\x00\x05") ^ 0xFFFF)
    buf = bytearray(b"\0" * 15 + b"\x10\x00\x00\x20")   # odd csum_start, as tunnels may have
    complete_checksum(buf, 15, 1)
    assert buf[16:18] == struct.pack(">H", ref_sum(b"\x10\x00\x00\x20") ^ 0xFFFF)


@pytest.mark.parametrize("start,off", [(13, 0), (40, 0), (30, 10), (0, 16), (60, 60)])
def test_complete_checksum_refuses_offsets_outside_the_frame(start, off):
    with pytest.raises(OffloadError):
        complete_checksum(bytearray(41), start, off)


# ---------------------------------------------------------------- segmentation


def check_segments(frame: bytes, segs: list, mss: int) -> None:
    """Everything the kernel's software GSO promises, checked with scapy."""
    flags, gso_type, _, _, _, _ = VNET.unpack_from(frame)
    orig = frame[VNET_HDR_LEN:]
    l3, l4, tcp = offsets(orig)
    v4 = orig[l3] >> 4 == 4
    hlen = (orig[l4 + 12] >> 4) * 4 if tcp else 8
    data = orig[l4 + hlen:]
    assert len(segs) == -(-len(data) // mss) and len(segs) > 1
    got = b""
    for i, seg in enumerate(segs):
        seg = bytes(seg)
        chunk = seg[l4 + hlen:]
        assert 0 < len(chunk) <= mss and (i == len(segs) - 1 or len(chunk) == mss)
        got += chunk
        pkt = Ether(seg)
        assert l4_of(pkt).chksum == expected_l4_checksum(pkt), f"segment {i}"
        assert seg[:l3] == orig[:l3]  # MACs and tags
        if v4:
            assert scapy_checksum(seg[l3:l4]) == 0
            assert pkt[IP].len == len(seg) - l3
            assert pkt[IP].id == (struct.unpack_from(">H", orig, l3 + 4)[0] + i) & 0xFFFF
            same = [(0, 2), (6, 10), (12, l4 - l3)]   # all but length, ID, checksum
        else:
            assert pkt[IPv6].plen == len(seg) - l3 - 40
            same = [(0, 4), (6, l4 - l3)]
        for a, b in same:
            assert seg[l3 + a:l3 + b] == orig[l3 + a:l3 + b]
        if tcp:
            t0 = orig[l4 + 13]
            assert pkt[TCP].seq == (struct.unpack_from(">I", orig, l4 + 4)[0] + i * mss) % \
                (1 << 32)
            want = t0
            if i != len(segs) - 1:
                want &= ~(FIN | PSH)
            if i:
                want &= ~CWR
            assert seg[l4 + 13] == want
            assert seg[l4 + 8:l4 + 13] == orig[l4 + 8:l4 + 13]
            assert seg[l4 + 14:l4 + 16] == orig[l4 + 14:l4 + 16]
            assert seg[l4 + 18:l4 + hlen] == orig[l4 + 18:l4 + hlen]   # urg ptr, options
        else:
            assert pkt[UDP].len == len(seg) - l4
            assert pkt[UDP].chksum != 0
        assert seg[l4:l4 + 4] == orig[l4:l4 + 4]   # ports
    assert got == data


frames = st.fixed_dictionaries({
    "v6": st.booleans(),
    "udp": st.booleans(),
    "vlans": st.lists(st.tuples(st.sampled_from([0x8100, 0x88A8]), st.integers(0, 4095)),
                      max_size=2),
    "ip_opts": st.sampled_from([0, 0, 4, 40]),
    "exts": st.sampled_from([(), (), (60,), (0, 43, 60)]),
    "tcp_opts": st.sampled_from([0, 12, 12, 40]),
    "tcp_flags": st.integers(0, 255),
    "seq": st.integers(0, (1 << 32) - 1),
    "ip_id": st.integers(0, 0xFFFF),
    "tos": st.integers(0, 255),
})


@given(frames, st.one_of(st.integers(1, 64), st.integers(500, 1600)),
       st.sampled_from([2, 1, 3, 0, 4, 1, 6]),
       st.floats(0, 1), st.booleans(), st.randoms())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example({"v6": False, "udp": False, "vlans": [(0x88A8, 7), (0x8100, 8)], "ip_opts": 4,
          "exts": (), "tcp_opts": 12, "tcp_flags": 0xD9, "seq": (1 << 32) - 100,
          "ip_id": 0xFFFF, "tos": 2}, 1448, 3, 0.5, True, None)
@example({"v6": True, "udp": True, "vlans": [], "ip_opts": 0, "exts": (0, 60),
          "tcp_opts": 0, "tcp_flags": 0, "seq": 0, "ip_id": 0, "tos": 0}, 48, 62, 0.9, False,
         None)
def test_super_frames_segment_like_the_kernel(spec, mss, full, tail, ecn, rnd):
    """Payloads of `full` whole segments and a partial one (0 whole: "not really GSO")."""
    if not spec["v6"]:
        spec = {**spec, "exts": ()}
    udp = spec["udp"]
    size = full * mss + max(1, round(tail * mss))
    payload = bytes((rnd.randrange(256) if rnd else i % 251) for i in range(size))
    eth = build(payload=payload, **spec)
    gso = gso_kind(spec["v6"], udp) | (GSO_ECN if ecn and not udp else 0)
    frame = as_partial(eth, gso, mss)
    _, l4, tcp = offsets(eth)
    hlen = (eth[l4 + 12] >> 4) * 4 if tcp else 8
    if len(eth) - l4 - (20 if tcp else 8) <= mss:
        event("not really GSO")
        (out,) = to_plain(frame)            # only the checksum is done
        assert bytes(out) == eth
    elif len(eth) - l4 - hlen <= mss or (udp and -(-size // mss) > offload.UDP_MAX_SEGMENTS):
        event("refused")
        with pytest.raises(OffloadError):
            to_plain(frame)
    else:
        event("segmented")
        check_segments(frame, to_plain(frame), mss)


@pytest.mark.parametrize("v6", [False, True])
def test_gso_tcp_without_needs_csum_gets_the_pseudo_header_computed(v6):
    eth = build(v6=v6, payload=bytes(range(256)) * 12, tcp_opts=12)
    frame = bytearray(as_partial(eth, gso_kind(v6, False), 1000))
    _, l4, _ = offsets(eth)
    frame[:VNET_HDR_LEN] = VNET.pack(0, gso_kind(v6, False), 0, 1000, 0, 0)
    frame[VNET_HDR_LEN + l4 + 16:VNET_HDR_LEN + l4 + 18] = b"\xde\xad"   # ignored
    check_segments(bytes(frame), to_plain(bytes(frame)), 1000)


def test_the_sequence_number_wraps_and_the_ip_id_too():
    eth = build(payload=bytes(3000), seq=(1 << 32) - 1000, ip_id=0xFFFF)
    segs = to_plain(as_partial(eth, GSO_TCPV4, 1000))
    ids = [Ether(bytes(s))[IP].id for s in segs]
    seqs = [Ether(bytes(s))[TCP].seq for s in segs]
    assert ids == [0xFFFF, 0, 1] and seqs == [(1 << 32) - 1000, 0, 1000]


def test_segments_are_independent_buffers():
    eth = build(payload=bytes(5000))
    segs = to_plain(as_partial(eth, GSO_TCPV4, 1448))
    segs[0][0] ^= 0xFF
    assert segs[1][0] == eth[0]


# ------------------------------------------------------------------- rejections


def _good(udp=False, v6=False) -> bytearray:
    return bytearray(as_partial(build(udp=udp, v6=v6, payload=bytes(4000)),
                                gso_kind(v6, udp), 1000))


def _with_hdr(frame: bytearray, **fields) -> bytes:
    names = ("flags", "gso_type", "hdr_len", "gso_size", "csum_start", "csum_offset")
    vals = dict(zip(names, VNET.unpack_from(frame)))
    vals.update(fields)
    return VNET.pack(*(vals[n] for n in names)) + bytes(frame[VNET_HDR_LEN:])


REJECTED = [
    ("shorter than a vnet header", b"\x01\x01\x00"),
    ("UFO", _with_hdr(_good(udp=True), gso_type=GSO_UDP)),
    ("unknown GSO type", _with_hdr(_good(), gso_type=0x02)),
    ("tunnel GSO type", _with_hdr(_good(), gso_type=0x20 | GSO_TCPV4)),
    ("gso_size 0", _with_hdr(_good(), gso_size=0)),
    ("GSO_BY_FRAGS", _with_hdr(_good(), gso_size=0xFFFF)),
    ("TCPv4 GSO on IPv6", _with_hdr(_good(v6=True), gso_type=GSO_TCPV4)),
    ("TCPv6 GSO on IPv4", _with_hdr(_good(), gso_type=GSO_TCPV6)),
    ("UDP GSO on TCP", _with_hdr(_good(), gso_type=GSO_UDP_L4, csum_offset=6)),
    ("TCP GSO on UDP", _with_hdr(_good(udp=True), gso_type=GSO_TCPV4, csum_offset=16)),
    ("ECN bit on UDP GSO", _with_hdr(_good(udp=True), gso_type=GSO_UDP_L4 | GSO_ECN)),
    ("UDP GSO without NEEDS_CSUM", _with_hdr(_good(udp=True), flags=0)),
    ("csum_start off the L4 header", _with_hdr(_good(), csum_start=38)),
    ("csum_offset off the TCP checksum", _with_hdr(_good(), csum_offset=6)),
    ("csum_offset off the UDP checksum", _with_hdr(_good(udp=True), csum_offset=16)),
    ("NEEDS_CSUM past the end", _with_hdr(_good(), gso_type=0, csum_start=60000)),
    ("NEEDS_CSUM inside the MACs", _with_hdr(_good(), gso_type=0, csum_start=2)),
    ("too many UDP segments", _with_hdr(_good(udp=True), gso_size=30)),
    ("too many TCP segments", _with_hdr(_good(), gso_size=1)),
]


@pytest.mark.parametrize("why,frame", REJECTED, ids=[why for why, _ in REJECTED])
def test_frames_that_cannot_be_segmented_raise_offload_error(why, frame):
    with pytest.raises(OffloadError):
        to_plain(frame)


def test_non_ip_gso_is_refused():
    frame = _good()
    frame[VNET_HDR_LEN + 12:VNET_HDR_LEN + 14] = b"\x88\xb5"
    with pytest.raises(OffloadError, match="ethertype"):
        to_plain(bytes(frame))


def test_ipv4_fragments_are_refused():
    frame = _good()
    frame[VNET_HDR_LEN + 14 + 6] |= 0x20   # MF
    with pytest.raises(OffloadError, match="fragment"):
        to_plain(bytes(frame))


def test_ipv6_fragment_header_is_refused():
    frame = _good(v6=True)
    frame[VNET_HDR_LEN + 14 + 6] = 44
    with pytest.raises(OffloadError):
        to_plain(bytes(frame))


def test_bad_tcp_header_length_is_refused():
    frame = _good()
    frame[VNET_HDR_LEN + 34 + 12] = 0x40   # doff 4
    with pytest.raises(OffloadError, match="TCP header length"):
        to_plain(bytes(frame))


@pytest.mark.parametrize("cut", [13, 20, 33, 40, 47, 53])
def test_truncated_headers_are_refused(cut):
    frame = _good()
    with pytest.raises(OffloadError):
        to_plain(bytes(frame[:VNET_HDR_LEN + cut]))


def _mutate(frame: bytes, data) -> bytes:
    buf = bytearray(frame)
    for _ in range(data.draw(st.integers(0, 6))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        buf = buf[:data.draw(st.integers(0, len(buf)))]
    return bytes(buf)


@given(st.data())
@settings(max_examples=400, deadline=None)
def test_hostile_frames_only_ever_raise_offload_error(data):
    """Random vnet headers on random bytes, and valid super-frames with bytes changed."""
    if data.draw(st.booleans()):
        hdr = VNET.pack(data.draw(st.integers(0, 255)),
                        data.draw(st.sampled_from([0, 1, 3, 4, 5, 0x81, 0x84, 0x85, 0x21]) |
                                  st.integers(0, 255)),
                        data.draw(st.integers(0, 0xFFFF)), data.draw(st.integers(0, 0xFFFF)),
                        data.draw(st.integers(0, 120)), data.draw(st.integers(0, 40)))
        frame = hdr + data.draw(st.binary(max_size=300))
    else:
        spec = data.draw(frames)
        if not spec["v6"]:
            spec["exts"] = ()
        mss = data.draw(st.integers(1, 1500))
        eth = build(payload=bytes(data.draw(st.integers(0, 3000))), **spec)
        frame = _mutate(as_partial(eth, gso_kind(spec["v6"], spec["udp"]), mss), data)
    try:
        out = to_plain(frame)
    except OffloadError:
        return
    assert isinstance(out, list) and all(len(f) >= 0 for f in out)


# ------------------------------------------------------------ the kernel's own frames


def _kernel_cases():
    if not FIXTURE.exists():
        return []
    return sorted(json.loads(FIXTURE.read_text())["cases"].items())


def test_the_kernel_fixture_is_there_and_says_where_it_came_from():
    doc = json.loads(FIXTURE.read_text())
    assert doc["kernel"] and doc["made_by"] == "netns-lab/gso_capture.py"
    assert {"tcp4", "tcp4_fin", "tcp6", "tcp4_vlan", "tcp4_qinq_fin", "udp4_uso", "udp6_uso",
            "tcp4_ecn_cwr", "tcp4_csum", "udp4_csum", "udp6_csum"} <= set(doc["cases"])


@pytest.mark.parametrize("name,case", _kernel_cases(), ids=[n for n, _ in _kernel_cases()])
def test_to_plain_matches_the_kernel_byte_for_byte(name, case):
    frame = bytes.fromhex(case["vnet"])
    if case["kernel"] is None:       # the kernel drops it; so do we
        with pytest.raises(OffloadError):
            to_plain(frame)
        return
    want = [bytes.fromhex(h) for h in case["kernel"]]
    got = [bytes(f) for f in to_plain(frame)]
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"{name}: segment {i} differs at byte " \
            f"{next(j for j in range(min(len(g), len(w)) + 1) if g[j:j + 1] != w[j:j + 1])}"


def test_kernel_super_frames_also_pass_our_own_checks():
    for name, case in _kernel_cases():
        frame = bytes.fromhex(case["vnet"])
        flags, gso_type, _, gso_size, _, _ = VNET.unpack_from(frame)
        if gso_type and case["kernel"] and len(case["kernel"]) > 1 and \
                not name.startswith("syn_"):
            check_segments(frame, to_plain(frame), gso_size)


# ----------------------------------------------------------------------- purity


def test_offload_is_pure():
    tree = ast.parse(MOD.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert imported <= {"struct", "l2vpn.frame", "l2vpn.errors"}, imported
