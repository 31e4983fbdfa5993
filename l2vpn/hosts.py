"""Which IP addresses each MAC uses, learnt from what already crosses the hub; pure.

Operators ask "which site has 198.19.0.7?", not "where is 32:ab:4e:ab:02:da?" (OpenVPN
issue 709). The answer is in frames the hub forwards anyway: address resolution and
address assignment.

Theory of operation: `sightings(frame, offset)` looks at one frame and returns the
(MAC, address) pairs it proves, from
- ARP (0x0806), request or reply, gratuitous included: the sender's MAC and address,
  when the sender MAC is the frame's source (a proxy's answer is not its own address);
  a probe's sender 0.0.0.0 proves nothing;
- IPv6 neighbour discovery: a solicitation's source address (or, during duplicate
  address detection when the source is ::, its target) and an advertisement's target,
  for the frame's source MAC;
- a DHCPv4 ACK (UDP 67->68): the address handed out (yiaddr) for the client (chaddr);
- a DHCPv6 Reply (UDP 547->546) unicast to its client: the IA_NA addresses, for the
  frame's destination MAC.
Like guard.classify it runs on the hot path: ordinary frames are turned away at the
ethertype, the IP protocol byte or the ports, with single-byte reads and no allocation;
a truncated frame raises IndexError, caught once.

`HostTable` keeps at most `per_mac` addresses per MAC, newest first, and at most
`max_macs` MACs (a new MAC past that is not learnt; no one else's entry is pushed out),
so spoofed ARP cannot grow memory without bound. It is aged with the switch: the hub
drops a MAC's addresses when the switch forgets the MAC.
"""

import ipaddress

_MAX_TAGS = 8
_ND_NS, _ND_NA = 135, 136


def sightings(frame, offset: int = 0) -> list[tuple[bytes, str]]:
    """The (MAC, IP address) pairs this frame proves; [] for ordinary traffic."""
    try:
        p = offset + 12
        hi = frame[p]
        lo = frame[p + 1]
        tags = 0
        while (lo == 0 and (hi == 0x81 or hi == 0x91)) or (hi == 0x88 and lo == 0xA8):
            tags += 1
            if tags > _MAX_TAGS:
                return []
            p += 4
            hi = frame[p]
            lo = frame[p + 1]
        p += 2
        if hi == 0x08 and lo == 0x06:
            return _arp(frame, offset, p)
        if hi == 0x86 and lo == 0xDD:
            return _ipv6(frame, offset, p)
        if hi == 0x08 and lo == 0x00:
            return _dhcp4(frame, p)
        return []
    except (IndexError, ValueError):
        return []


def _arp(frame, offset: int, p: int) -> list:
    # htype 1, ptype 0x0800, hlen 6, plen 4
    if frame[p + 1] != 1 or frame[p + 2] != 0x08 or frame[p + 3] != 0 or \
            frame[p + 4] != 6 or frame[p + 5] != 4:
        return []
    sha = bytes(frame[p + 8:p + 14])
    spa = bytes(frame[p + 14:p + 18])
    if len(spa) != 4 or spa == b"\0\0\0\0" or sha != bytes(frame[offset + 6:offset + 12]):
        return []
    return [(sha, str(ipaddress.IPv4Address(spa)))]


def _ipv6(frame, offset: int, p: int) -> list:
    nh = frame[p + 6]
    if nh == 58:                                    # ICMPv6 right after the fixed header
        icmp = p + 40
        kind = frame[icmp]
        if kind != _ND_NS and kind != _ND_NA:
            return []
        src = bytes(frame[p + 8:p + 24])
        target = bytes(frame[icmp + 8:icmp + 24])
        if len(target) != 16:
            return []
        if kind == _ND_NS:
            addr = target if src == bytes(16) else src    # DAD: the tentative address
        else:
            addr = target
        mac = bytes(frame[offset + 6:offset + 12])
        return [(mac, str(ipaddress.IPv6Address(addr)))]
    if nh == 17:                                    # DHCPv6 Reply to the client port
        u = p + 40
        if frame[u] == 2 and frame[u + 1] == 35 and frame[u + 2] == 2 and \
                frame[u + 3] == 34 and frame[u + 8] == 7:
            dst = bytes(frame[offset:offset + 6])
            if dst[0] & 1:
                return []
            return [(dst, a) for a in _dhcp6_addresses(frame, u + 12, u + _u16(frame, u + 4))]
    return []


def _dhcp6_addresses(frame, p: int, end: int) -> list[str]:
    """IA_NA (3) -> IAADDR (5) addresses among the options between p and end."""
    out = []
    end = min(end, len(frame))
    while p + 4 <= end and len(out) < 8:
        code, length = _u16(frame, p), _u16(frame, p + 2)
        if code == 3:                               # IAID 4, T1 4, T2 4, then options
            q, qend = p + 16, min(p + 4 + length, end)
            while q + 4 <= qend:
                sub, sublen = _u16(frame, q), _u16(frame, q + 2)
                if sub == 5 and sublen >= 24:
                    out.append(str(ipaddress.IPv6Address(bytes(frame[q + 4:q + 20]))))
                q += 4 + sublen
        p += 4 + length
    return out


def _dhcp4(frame, p: int) -> list:
    if frame[p + 9] != 17:
        return []
    vihl = frame[p]
    if vihl >> 4 != 4 or frame[p + 6] & 0x1F or frame[p + 7]:
        return []
    u = p + ((vihl & 15) << 2)
    if not (frame[u] == 0 and frame[u + 1] == 67 and frame[u + 2] == 0 and frame[u + 3] == 68):
        return []
    b = u + 8                                       # BOOTP
    if frame[b] != 2 or frame[b + 1] != 1 or frame[b + 2] != 6:   # reply, Ethernet, hlen 6
        return []
    # the DHCP message type option (53) must say ACK (5)
    q, end = b + 240, len(frame)
    if bytes(frame[b + 236:b + 240]) != b"\x63\x82\x53\x63":
        return []
    while q < end and frame[q] != 255:
        if frame[q] == 0:
            q += 1
            continue
        if frame[q] == 53 and frame[q + 1] >= 1:
            if frame[q + 2] != 5:
                return []
            yiaddr = bytes(frame[b + 16:b + 20])
            chaddr = bytes(frame[b + 28:b + 34])
            if yiaddr == b"\0\0\0\0":
                return []
            return [(chaddr, str(ipaddress.IPv4Address(yiaddr)))]
        q += 2 + frame[q + 1]
    return []


def _u16(frame, p: int) -> int:
    return (frame[p] << 8) | frame[p + 1]


class HostTable:
    """Up to `per_mac` addresses per MAC, newest first, for at most `max_macs` MACs."""

    def __init__(self, per_mac: int = 8, max_macs: int = 65536):
        self.per_mac = per_mac
        self.max_macs = max_macs
        self._ips: dict[bytes, list[str]] = {}

    def learn(self, mac: bytes, ip: str) -> bool:
        """Note that `mac` uses `ip`; False when the table is full and the MAC new."""
        ips = self._ips.get(mac)
        if ips is None:
            if len(self._ips) >= self.max_macs:
                return False
            self._ips[mac] = [ip]
            return True
        if ips and ips[0] == ip:
            return True
        if ip in ips:
            ips.remove(ip)
        ips.insert(0, ip)
        del ips[self.per_mac:]
        return True

    def observe(self, frame, offset: int = 0) -> None:
        """Learn whatever this frame proves."""
        for mac, ip in sightings(frame, offset):
            self.learn(mac, ip)

    def ips(self, mac: bytes) -> list[str]:
        return list(self._ips.get(mac, ()))

    def forget(self, mac: bytes) -> None:
        self._ips.pop(mac, None)

    def keep_only(self, alive) -> None:
        """Drop the addresses of every MAC for which `alive(mac)` is false."""
        for mac in [m for m in self._ips if not alive(m)]:
            del self._ips[mac]

    def macs_with(self, ip: str) -> list[bytes]:
        """The MACs that use `ip` (normally one)."""
        want = str(ipaddress.ip_address(ip))
        return [mac for mac, ips in self._ips.items() if want in ips]

    def __len__(self) -> int:
        return len(self._ips)
