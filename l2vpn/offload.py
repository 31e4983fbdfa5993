"""Software GSO and checksum completion: vnet-form frames made fit for a plain port.

Theory of operation
-------------------
A TAP opened with IFF_VNET_HDR leads every frame with a 10-byte `struct virtio_net_hdr`
(linux/virtio_net.h; little-endian here): flags u8, gso_type u8, hdr_len u16, gso_size u16,
csum_start u16, csum_offset u16. Inside l2vpn every frame carries it ("vnet form").

- flags NEEDS_CSUM: the L4 checksum is partial. The field at csum_start + csum_offset
  holds the pseudo-header sum; the ones'-complement sum from csum_start (counted from the
  Ethernet header) to the end of the frame, folded and inverted, completes it.
  DATA_VALID only says a receiver may skip checking; a plain port needs nothing for it.
- gso_type TCPV4 / TCPV6 / UDP_L4 (+ the ECN bit for TCP): a super-frame of up to 64 KiB
  that stands for several packets of at most gso_size L4 payload bytes each. hdr_len is
  only a hint (how much to keep linear) and is ignored here.

A port that took no offloads gets what the kernel would give a device without
NETIF_F_HW_CSUM/TSO/USO, and the rules follow the kernel's software paths, so that
`to_plain` matches a real TAP byte for byte (tests/unit/data/kernel_gso.json, made by
netns-lab/gso_capture.py; a frame the kernel drops raises OffloadError here):

- virtio_net_hdr_to_skb(): GSO needs gso_size > 0 (and not GSO_BY_FRAGS, 0xFFFF); USO
  needs NEEDS_CSUM with csum_offset 6 and at most UDP_MAX_SEGMENTS segments. A frame with
  no more than gso_size bytes after its headers is "not really GSO" and passes whole,
  its checksum completed if partial. The headers counted are csum_start + 20 (TCP) or + 8
  (UDP); without NEEDS_CSUM, tun has set no network header yet and the kernel counts a
  bare IP header (20 or 40) + 20 from the start of the frame.
- skb_checksum_help(): a partial checksum is completed over csum_start..end, and a
  result of 0 is sent as 0xFFFF (CSUM_MANGLED_0).
- inet_gso_segment() / ipv6_gso_segment(): every segment gets the L2/L3/L4 headers copied,
  IPv4 total length, ID (the super-frame's ID plus the segment's index, wrapping) and
  header checksum, or the IPv6 payload length. Sizes come from the frame's length; the
  incoming length fields are not trusted.
- tcp_gso_segment(): the checksum field's pseudo-header sum is moved from the whole L4
  length to each segment's (whatever the sender put there is respected, as in the
  kernel), the sequence number advances by gso_size, FIN and PSH stay only on the last
  segment and CWR only on the first. A GSO TCP frame without NEEDS_CSUM gets its
  pseudo-header computed first, as tcp4/tcp6_gso_segment() do; one whose payload after
  the TCP options fits in gso_size is dropped, as tcp_gso_segment() does.
- __udp_gso_segment(): each datagram gets its UDP length; its checksum seed is the
  incoming one with the old UDP length field swapped for the new; 0 becomes 0xFFFF.

Supported: Ethernet with any number of 802.1Q/802.1ad tags, IPv4 (options included) and
IPv6 with hop-by-hop, routing and destination-options extension headers. Rejected with
OffloadError: GSO_UDP (UFO; we never offer it), unknown GSO types, GSO on non-IP frames,
other IPv6 extension headers (fragment, AH, ESP, ...), a csum_start or csum_offset that
does not name the parsed TCP/UDP checksum, truncated headers, and, stricter than Linux,
IPv4 fragments and more than MAX_TCP_SEGMENTS segments (a hostile gso_size of 1 would
cost 64 Ki segments). A NEEDS_CSUM frame without GSO is completed wherever csum_start
points, as the kernel does (tunnels point it at an inner header), if inside the frame.

Checksums use the identity sum16(words) ≡ int.from_bytes(data, "big") (mod 0xFFFF): one
C-speed conversion instead of a loop over 16-bit words.
"""

import struct

from l2vpn.frame import ETH_HLEN, TPID_8021AD, TPID_8021Q, VLAN_HLEN, VNET_HDR_LEN

PLAIN_HDR = bytes(VNET_HDR_LEN)

F_NEEDS_CSUM = 1
F_DATA_VALID = 2

GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80

GSO_BY_FRAGS = 0xFFFF  # a kernel-internal gso_size that virtio_net_hdr_to_skb() refuses
UDP_MAX_SEGMENTS = 128  # include/linux/udp.h
MAX_TCP_SEGMENTS = 2048  # ours: 64 KiB at TCP's minimum MSS (48) needs 1366

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
IPPROTO_TCP = 6
IPPROTO_UDP = 17
_IPV6_EXT = (0, 43, 60)  # hop-by-hop, routing, destination options: what the kernel skips
_TCP_FIN, _TCP_PSH, _TCP_CWR = 0x01, 0x08, 0x80
_TCP_MIN_HLEN = 20
_UDP_HLEN = 8

_VNET = struct.Struct("<BBHHHH")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


class OffloadError(ValueError):
    """A vnet-form frame that cannot be segmented or checksummed (the message says why)."""


# (h, 2**h - 1) for h = 2**19 .. 2**8 bits: x ≡ (x >> h) + (x & mask) (mod 0xFFFF) when
# 16 divides h, and shifting halves is much cheaper than long division by 0xFFFF.
_FOLDS = tuple((1 << k, (1 << (1 << k)) - 1) for k in range(19, 7, -1))


def _sum(data) -> int:
    """The folded ones'-complement sum of data's big-endian 16-bit words (0 only for zeros)."""
    x = int.from_bytes(data, "big")
    if len(data) & 1:
        x <<= 8
    bits = x.bit_length()
    if bits > 256:
        for h, mask in _FOLDS[max(0, 20 - (bits - 1).bit_length()):]:
            x = (x >> h) + (x & mask)
    return (x - 1) % 0xFFFF + 1 if x else 0


def _fold(x: int) -> int:
    """End-around-carry fold of a non-negative sum into 16 bits, as csum_fold() without ~."""
    return (x - 1) % 0xFFFF + 1 if x else 0


def internet_checksum(data, initial: int = 0) -> int:
    """The RFC 1071 checksum of data, starting from the partial sum `initial`."""
    return _fold(initial + _sum(data)) ^ 0xFFFF


def complete_checksum(buf: bytearray, csum_start: int, csum_offset: int) -> None:
    """Finish a partial checksum in a plain Ethernet frame, in place (skb_checksum_help)."""
    pos = csum_start + csum_offset
    if csum_start < ETH_HLEN or pos + 2 > len(buf):
        raise OffloadError(f"csum_start {csum_start}/csum_offset {csum_offset} outside a "
                           f"{len(buf)}-byte frame")
    with memoryview(buf) as view:
        x = _sum(view[csum_start:])
    _U16.pack_into(buf, pos, (_fold(x) ^ 0xFFFF) or 0xFFFF)


def needs_work(frame) -> bool:
    """True when a vnet-form frame asks for a checksum or segmentation (cheap)."""
    return bool(frame[0] & F_NEEDS_CSUM or frame[1])


def to_plain(frame) -> list:
    """The plain Ethernet frames a port without offloads must get for one vnet-form frame."""
    if len(frame) < VNET_HDR_LEN:
        raise OffloadError(f"{len(frame)} bytes: shorter than a vnet header")
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = _VNET.unpack_from(frame)
    if not (flags & F_NEEDS_CSUM or gso_type):
        return [frame[VNET_HDR_LEN:]]
    body = memoryview(frame)[VNET_HDR_LEN:]
    if gso_type == GSO_NONE:
        buf = bytearray(body)
        complete_checksum(buf, csum_start, csum_offset)
        return [buf]
    return _segment(body, flags, gso_type, gso_size, csum_start, csum_offset)


def _l3(body, n: int):
    """(ethertype, L3 offset) after any VLAN tags."""
    off = 12
    while True:
        if n < off + 2:
            raise OffloadError("frame cut short in its Ethernet header")
        etype = (body[off] << 8) | body[off + 1]
        if etype != TPID_8021Q and etype != TPID_8021AD:
            return etype, off + 2
        off += VLAN_HLEN


def _ipv4(body, n: int, l3: int):
    """(L4 offset, protocol) of an IPv4 header at l3."""
    if n < l3 + 20:
        raise OffloadError("frame cut short in its IPv4 header")
    vihl = body[l3]
    ihl = (vihl & 15) * 4
    if vihl >> 4 != 4 or ihl < 20:
        raise OffloadError(f"bad IPv4 version/IHL byte {vihl:#04x}")
    if n < l3 + ihl:
        raise OffloadError("frame cut short in its IPv4 options")
    if ((body[l3 + 6] << 8) | body[l3 + 7]) & 0x3FFF:
        raise OffloadError("GSO on an IPv4 fragment")
    return l3 + ihl, body[l3 + 9]


def _ipv6(body, n: int, l3: int):
    """(L4 offset, protocol) after an IPv6 header and the extension headers GSO skips."""
    if n < l3 + 40:
        raise OffloadError("frame cut short in its IPv6 header")
    if body[l3] >> 4 != 6:
        raise OffloadError(f"bad IPv6 version byte {body[l3]:#04x}")
    proto, off = body[l3 + 6], l3 + 40
    while proto in _IPV6_EXT:
        if n < off + 8:
            raise OffloadError("frame cut short in an IPv6 extension header")
        proto, off = body[off], off + (body[off + 1] + 1) * 8
    if off > n:
        raise OffloadError("frame cut short in an IPv6 extension header")
    return off, proto


def _segment(body, flags, gso_type, gso_size, csum_start, csum_offset) -> list:
    """Check a GSO frame's headers against its vnet header, then cut it up."""
    kind = gso_type & ~GSO_ECN
    if kind == GSO_UDP:
        raise OffloadError("GSO_UDP (UFO) is not supported")
    if kind not in (GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4):
        raise OffloadError(f"unknown gso_type {gso_type:#04x}")
    if kind == GSO_UDP_L4 and gso_type & GSO_ECN:
        raise OffloadError("ECN bit on UDP GSO")
    if gso_size == 0 or gso_size == GSO_BY_FRAGS:
        raise OffloadError(f"gso_size {gso_size}")
    n = len(body)
    etype, l3 = _l3(body, n)
    if etype == ETH_P_IP and kind != GSO_TCPV6:
        l4, proto = _ipv4(body, n, l3)
    elif etype == ETH_P_IPV6 and kind != GSO_TCPV4:
        l4, proto = _ipv6(body, n, l3)
    else:
        raise OffloadError(f"gso_type {gso_type:#04x} on ethertype {etype:#06x}")
    tcp = kind != GSO_UDP_L4
    if proto != (IPPROTO_TCP if tcp else IPPROTO_UDP):
        raise OffloadError(f"gso_type {gso_type:#04x} on IP protocol {proto}")
    base_hlen = _TCP_MIN_HLEN if tcp else _UDP_HLEN
    partial = flags & F_NEEDS_CSUM
    if partial:
        if csum_start != l4 or csum_offset != (16 if tcp else 6):
            raise OffloadError(f"csum_start {csum_start}/csum_offset {csum_offset} do not "
                               f"name the {'TCP' if tcp else 'UDP'} checksum at {l4}")
    elif not tcp:
        raise OffloadError("UDP GSO without NEEDS_CSUM")
    if n < l4 + base_hlen:
        raise OffloadError("frame cut short in its transport header")
    # "Not really GSO": one frame, as it is. Without NEEDS_CSUM virtio_net_hdr_to_skb()
    # (for tun) counts the headers as a bare IP header and base_hlen from the frame start.
    hdrs = (l4 if partial else (40 if kind == GSO_TCPV6 else 20)) + base_hlen
    if n - hdrs <= gso_size:
        buf = bytearray(body)
        if partial:
            complete_checksum(buf, csum_start, csum_offset)
        return [buf]
    if tcp:
        return _tcp(body, n, etype, l3, l4, gso_size, partial)
    return _udp(body, n, etype, l3, l4, gso_size)


def _pseudo_tcp(body, etype: int, l3: int, l4_len: int) -> int:
    """The folded TCP pseudo-header sum the kernel seeds a GSO frame without NEEDS_CSUM with."""
    addrs = body[l3 + 12:l3 + 20] if etype == ETH_P_IP else body[l3 + 8:l3 + 40]
    return _fold(_sum(addrs) + IPPROTO_TCP + l4_len)


def _ip_template(tmpl: bytearray, etype: int, l3: int):
    """(is IPv4, first IPv4 ID, IPv4 header sum without length/ID/checksum); zeroes those."""
    if etype == ETH_P_IPV6:
        return False, 0, 0
    ihl = (tmpl[l3] & 15) * 4
    id0 = (tmpl[l3 + 4] << 8) | tmpl[l3 + 5]
    tmpl[l3 + 2:l3 + 6] = bytes(4)
    tmpl[l3 + 10:l3 + 12] = bytes(2)
    return True, id0, _sum(tmpl[l3:l3 + ihl])


def _tcp(body, n, etype, l3, l4, mss, partial) -> list:
    """tcp_gso_segment() and the IP header fix-ups around it."""
    hlen = (body[l4 + 12] >> 4) * 4
    if hlen < _TCP_MIN_HLEN or n < l4 + hlen:
        raise OffloadError(f"bad TCP header length {hlen}")
    hdr_end = l4 + hlen
    if n - hdr_end <= mss:  # options made it look like GSO; tcp_gso_segment() drops it
        raise OffloadError(f"TCP payload of {n - hdr_end} bytes marked GSO with gso_size "
                           f"{mss}")
    tmpl = bytearray(body[:hdr_end])
    if not partial:
        _U16.pack_into(tmpl, l4 + 16, _pseudo_tcp(body, etype, l3, n - l4))
    nseg = -(-(n - hdr_end) // mss)
    if nseg > MAX_TCP_SEGMENTS:
        raise OffloadError(f"{nseg} segments (gso_size {mss}) is more than "
                           f"{MAX_TCP_SEGMENTS}")
    v4, id0, ip_base = _ip_template(tmpl, etype, l3)
    check_in = (tmpl[l4 + 16] << 8) | tmpl[l4 + 17]
    seq0 = _U32.unpack_from(tmpl, l4 + 4)[0]
    doff_byte, tflags = tmpl[l4 + 12], tmpl[l4 + 13]
    tmpl[l4 + 4:l4 + 8] = bytes(4)
    tmpl[l4 + 12:l4 + 14] = bytes(2)
    tmpl[l4 + 16:l4 + 18] = bytes(2)
    tcp_base = _sum(tmpl[l4:hdr_end])
    oldlen = ~(n - l4) & 0xFFFF
    pack_into, last = struct.pack_into, nseg - 1
    out = []
    for i in range(nseg):
        a = hdr_end + i * mss
        chunk = body[a:a + mss]
        seg = tmpl + chunk
        seg_len = len(seg)
        if v4:
            tot_len, ip_id = seg_len - l3, (id0 + i) & 0xFFFF
            pack_into(">HH", seg, l3 + 2, tot_len, ip_id)
            pack_into(">H", seg, l3 + 10, _fold(ip_base + tot_len + ip_id) ^ 0xFFFF)
        else:
            pack_into(">H", seg, l3 + 4, seg_len - l3 - 40)
        seq = (seq0 + i * mss) & 0xFFFFFFFF
        f = tflags
        if i != last:
            f &= ~(_TCP_FIN | _TCP_PSH)
        if i:
            f &= ~_TCP_CWR
        # tcp_gso_segment(): th->check += htonl(oldlen + segment L4 length)
        delta = oldlen + seg_len - l4
        seed = _fold(check_in + (delta >> 16) + (delta & 0xFFFF))
        x = _sum(chunk) + seed + tcp_base + (seq >> 16) + (seq & 0xFFFF) + (doff_byte << 8) + f
        pack_into(">I", seg, l4 + 4, seq)
        seg[l4 + 12] = doff_byte
        seg[l4 + 13] = f
        pack_into(">H", seg, l4 + 16, ((x - 1) % 0xFFFF + 1) ^ 0xFFFF)
        out.append(seg)
    return out


def _csum16_add(a: int, b: int) -> int:
    """16-bit ones'-complement addition, as the kernel's csum16_add()."""
    s = a + b
    return (s & 0xFFFF) + (s >> 16)


def _udp(body, n, etype, l3, l4, mss) -> list:
    """__udp_gso_segment() and the IP header fix-ups around it."""
    hdr_end = l4 + _UDP_HLEN
    nseg = -(-(n - hdr_end) // mss)
    if nseg > UDP_MAX_SEGMENTS:
        raise OffloadError(f"{nseg} UDP segments is more than {UDP_MAX_SEGMENTS}")
    tmpl = bytearray(body[:hdr_end])
    v4, id0, ip_base = _ip_template(tmpl, etype, l3)
    len_in = (tmpl[l4 + 4] << 8) | tmpl[l4 + 5]
    check_in = (tmpl[l4 + 6] << 8) | tmpl[l4 + 7]
    seed_base = _csum16_add(check_in, len_in ^ 0xFFFF)  # csum16_sub(uh->check, uh->len)
    ports = _sum(tmpl[l4:l4 + 4])
    pack_into = struct.pack_into
    out = []
    for i in range(nseg):
        a = hdr_end + i * mss
        chunk = body[a:a + mss]
        seg = tmpl + chunk
        seg_len = len(seg)
        if v4:
            tot_len, ip_id = seg_len - l3, (id0 + i) & 0xFFFF
            pack_into(">HH", seg, l3 + 2, tot_len, ip_id)
            pack_into(">H", seg, l3 + 10, _fold(ip_base + tot_len + ip_id) ^ 0xFFFF)
        else:
            pack_into(">H", seg, l3 + 4, seg_len - l3 - 40)
        ulen = seg_len - l4
        x = _sum(chunk) + _csum16_add(seed_base, ulen) + ports + ulen
        pack_into(">HH", seg, l4 + 4, ulen, (((x - 1) % 0xFFFF + 1) ^ 0xFFFF) or 0xFFFF)
        out.append(seg)
    return out
