"""pcapng blocks for a capture of switch ports: one interface per port, and each packet's
direction, so Wireshark shows which site sent what; pure (bytes out).

A capture is a Section Header Block, then an Interface Description Block for each port
as it first appears, then Enhanced Packet Blocks. Blocks are written little-endian (the
byte-order magic tells readers); timestamps are microseconds since the epoch (the
default if_tsresol); `epb_flags` carries the direction (1 inbound: the port sent it to
the hub; 2 outbound: the hub sent it to the port).
"""

import struct

LINKTYPE_ETHERNET = 1
INBOUND, OUTBOUND = 1, 2
SNAPLEN = 262144

_SHB, _IDB, _EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
_OPT_END, _OPT_COMMENT = 0, 1
_IF_NAME, _IF_DESCRIPTION = 2, 3
_SHB_USERAPPL = 4
_EPB_FLAGS = 2


def _pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def _options(opts) -> bytes:
    body = b"".join(struct.pack("<HH", code, len(value)) + _pad(value)
                    for code, value in opts if value is not None)
    return body + struct.pack("<HH", _OPT_END, 0) if body else b""


def _block(kind: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", kind, length) + body + struct.pack("<I", length)


def section_header(application: str = "l2vpn") -> bytes:
    """The block that opens a capture."""
    body = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)
    return _block(_SHB, body + _options([(_SHB_USERAPPL, application.encode())]))


def interface(name: str, description: str | None = None) -> bytes:
    """An Ethernet interface named after a port; its id is the order it was written in."""
    body = struct.pack("<HHI", LINKTYPE_ETHERNET, 0, SNAPLEN)
    return _block(_IDB, body + _options([
        (_IF_NAME, name.encode()),
        (_IF_DESCRIPTION, description.encode() if description else None)]))


def packet(interface_id: int, time_s: float, frame, direction: int) -> bytes:
    """One frame on an interface at a wall-clock time, inbound or outbound."""
    data = bytes(frame[:SNAPLEN])
    usec = int(time_s * 1_000_000)
    body = struct.pack("<IIIII", interface_id, usec >> 32, usec & 0xFFFFFFFF,
                       len(data), len(frame)) + _pad(data)
    return _block(_EPB, body + _options([(_EPB_FLAGS, struct.pack("<I", direction))]))
