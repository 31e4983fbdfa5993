"""Spot DHCP server messages and IPv6 router advertisements; pure, no I/O.

One site's DHCP server or router must not hand out addresses or routes at another site
(ANCHORS.md complaint #9: rogue DHCP / RAs leaking between sites). With
`switch.dhcp_guard` / `switch.ra_guard` on, the switch runs every frame from an untrusted
port through `classify()` and drops what it names; this module only names.

Theory of operation: it runs on the hot path, so it reads single bytes and compares
them (no slices, no struct, no allocation) and rejects an ordinary frame at the
ethertype or the IP protocol byte. A read past the end raises IndexError, caught once,
so a truncated frame costs no length checks; the one `len()` call is on the way to a
positive answer. Malformed, truncated or unknown frames answer None: a host's stack
drops those too, so forwarding them leaks nothing.
"""

DHCP = "dhcp"
RA = "ra"

_MAX_TAGS = 8
_MAX_EXT_HEADERS = 8


def classify(frame, offset: int = 0) -> str | None:
    """DHCP, RA or None.

    `frame` is bytes, bytearray or memoryview; the Ethernet header starts at `offset`
    (frames inside a node carry a 10-byte virtio-net header first, so the hub calls it
    with offset=10).
    """
    if offset < 0:
        return None
    try:
        p = offset + 12
        hi = frame[p]
        lo = frame[p + 1]
        tags = 0
        # 802.1Q 0x8100, 802.1ad 0x88a8, legacy QinQ 0x9100
        while (lo == 0 and (hi == 0x81 or hi == 0x91)) or (hi == 0x88 and lo == 0xA8):
            tags += 1
            if tags > _MAX_TAGS:
                return None
            p += 4
            hi = frame[p]
            lo = frame[p + 1]
        p += 2
        if hi == 0x08 and lo == 0x00:
            if frame[p + 9] != 17:
                return None
            vihl = frame[p]
            if vihl >> 4 != 4 or vihl & 15 < 5 or frame[p + 6] & 0x1F or frame[p + 7]:
                return None                                # not v4, bad IHL, non-first fragment
            u = p + ((vihl & 15) << 2)
            if (frame[u] == 0 and frame[u + 1] == 67 and frame[u + 2] == 0
                    and frame[u + 3] == 68 and len(frame) >= u + 8):
                return DHCP
            return None
        if hi == 0x86 and lo == 0xDD:
            return _ipv6(frame, p)
        return None
    except IndexError:
        return None


def _ipv6(frame, p: int) -> str | None:
    """The IPv6 half of classify(): walk the extension headers to UDP or ICMPv6."""
    if frame[p] >> 4 != 6:
        return None
    nh = frame[p + 6]
    q = p + 40
    for _ in range(_MAX_EXT_HEADERS + 1):
        if nh == 17:
            if (frame[q] == 2 and frame[q + 1] == 35 and frame[q + 2] == 2
                    and frame[q + 3] == 34 and len(frame) >= q + 8):
                return DHCP
            return None
        if nh == 58:
            if frame[q] == 134 and len(frame) >= q + 4:
                return RA
            return None
        if nh == 0 or nh == 43 or nh == 60:
            nh, q = frame[q], q + ((frame[q + 1] + 1) << 3)
        elif nh == 44:
            if frame[q + 2] or frame[q + 3] & 0xF8:
                return None                                # not the first fragment
            nh, q = frame[q], q + 8
        elif nh == 51:
            nh, q = frame[q], q + ((frame[q + 1] + 2) << 2)
        else:
            return None
    return None
