"""Ethernet frame facts the switch and the tools share; pure, no I/O.

Frames are bytes-like objects holding an Ethernet header (dst, src, ethertype, optional
802.1Q tags) and payload. MACs are 6-byte `bytes`, which hash fast as dict keys.
"""

import re

_MAC_RE = re.compile(r"[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}")

ETH_HLEN = 14
VLAN_HLEN = 4
VNET_HDR_LEN = 10   # struct virtio_net_hdr, which leads frames from an offloading TAP
MIN_FRAME = ETH_HLEN
TPID_8021Q = 0x8100
TPID_8021AD = 0x88A8

BROADCAST = b"\xff\xff\xff\xff\xff\xff"


def dst_mac(frame) -> bytes:
    return bytes(frame[0:6])


def src_mac(frame) -> bytes:
    return bytes(frame[6:12])


def is_group(mac) -> bool:
    """True for broadcast and multicast MACs (the I/G bit of the first octet)."""
    return bool(mac[0] & 1)


def ethertype(frame) -> int:
    """The ethertype after any 802.1Q/802.1ad tags (0 if the frame is cut short)."""
    off = 12
    while len(frame) >= off + 2:
        etype = (frame[off] << 8) | frame[off + 1]
        if etype in (TPID_8021Q, TPID_8021AD):
            off += VLAN_HLEN
            continue
        return etype
    return 0


def vlan_id(frame) -> int | None:
    """The outer 802.1Q VLAN id, or None for an untagged frame."""
    if len(frame) >= 16 and ((frame[12] << 8) | frame[13]) in (TPID_8021Q, TPID_8021AD):
        return ((frame[14] << 8) | frame[15]) & 0x0FFF
    return None


def format_mac(mac) -> str:
    return ":".join(f"{b:02x}" for b in bytes(mac))


def parse_mac(text: str) -> bytes:
    """Parse "aa:bb:cc:dd:ee:ff" (or with '-'); raises ValueError on anything else."""
    if not _MAC_RE.fullmatch(text):
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes.fromhex(text.replace("-", "").replace(":", ""))
