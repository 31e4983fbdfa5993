"""pcapng blocks for a capture of switch ports: one interface per port, and each packet's
direction, so Wireshark shows which site sent what; pure (bytes out).

A capture is a Section Header Block, then an Interface Description Block for each port
as it first appears, then Enhanced Packet Blocks. Blocks are written little-endian (the
byte-order magic tells readers); timestamps are microseconds since the epoch (the
default if_tsresol); `epb_flags` carries the direction (1 inbound: the port sent it to
the hub; 2 outbound: the hub sent it to the port). A capture ends with an Interface
Statistics Block per interface: frames seen, and frames lost for a full buffer
(`isb_ifdrop`).

A reader of a live stream takes whole blocks only (`split`), so a capture cut anywhere
still leaves a valid file.
"""

import struct

LINKTYPE_ETHERNET = 1
INBOUND, OUTBOUND = 1, 2
SNAPLEN = 262144

SHB, IDB, EPB, ISB = 0x0A0D0D0A, 0x00000001, 0x00000006, 0x00000005
_OPT_END, _OPT_COMMENT = 0, 1
_IF_NAME, _IF_DESCRIPTION = 2, 3
_SHB_USERAPPL = 4
_EPB_FLAGS = 2
_ISB_STARTTIME, _ISB_ENDTIME, _ISB_IFRECV, _ISB_IFDROP = 2, 3, 4, 5
_BYTE_ORDER = 0x1A2B3C4D


def _pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def _options(opts) -> bytes:
    body = b"".join(struct.pack("<HH", code, len(value)) + _pad(value)
                    for code, value in opts if value is not None)
    return body + struct.pack("<HH", _OPT_END, 0) if body else b""


def _block(kind: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", kind, length) + body + struct.pack("<I", length)


def section_header(application: str = "l2vpn", comment: str | None = None) -> bytes:
    """The block that opens a capture."""
    body = struct.pack("<IHHq", _BYTE_ORDER, 1, 0, -1)
    return _block(SHB, body + _options([
        (_OPT_COMMENT, comment.encode() if comment else None),
        (_SHB_USERAPPL, application.encode())]))


def interface(name: str, description: str | None = None) -> bytes:
    """An Ethernet interface named after a port; its id is the order it was written in."""
    body = struct.pack("<HHI", LINKTYPE_ETHERNET, 0, SNAPLEN)
    return _block(IDB, body + _options([
        (_IF_NAME, name.encode()),
        (_IF_DESCRIPTION, description.encode() if description else None)]))


def _usec(time_s: float) -> tuple[int, int]:
    usec = int(time_s * 1_000_000)
    return usec >> 32, usec & 0xFFFFFFFF


def packet(interface_id: int, time_s: float, frame, direction: int,
           comment: str | None = None) -> bytes:
    """One frame on an interface at a wall-clock time, inbound or outbound."""
    data = bytes(frame[:SNAPLEN])
    body = struct.pack("<IIIII", interface_id, *_usec(time_s), len(data), len(frame)) + _pad(data)
    return _block(EPB, body + _options([
        (_OPT_COMMENT, comment.encode() if comment else None),
        (_EPB_FLAGS, struct.pack("<I", direction))]))


def statistics(interface_id: int, time_s: float, start_s: float, received: int,
               dropped: int) -> bytes:
    """How an interface's capture went: frames seen and frames lost (isb_ifdrop)."""
    body = struct.pack("<III", interface_id, *_usec(time_s))
    return _block(ISB, body + _options([
        (_ISB_STARTTIME, struct.pack("<II", *_usec(start_s))),
        (_ISB_ENDTIME, struct.pack("<II", *_usec(time_s))),
        (_ISB_IFRECV, struct.pack("<Q", received)),
        (_ISB_IFDROP, struct.pack("<Q", dropped))]))


# -- reading (for the client of a live capture) -----------------------------------------


class FormatError(ValueError):
    """Bytes that are not little-endian pcapng blocks as written here."""


def split(data) -> tuple[list, int]:
    """The whole blocks at the start of `data` as (kind, block) pairs, and how many bytes
    they take; a trailing partial block is left for later."""
    blocks, p, n = [], 0, len(data)
    while n - p >= 12:
        kind, length = struct.unpack_from("<II", data, p)
        if length < 12 or length % 4 or length > SNAPLEN + 4096:
            raise FormatError(f"block of type {kind:#x} claims {length} bytes")
        if n - p < length:
            break
        if kind == SHB and struct.unpack_from("<I", data, p + 8)[0] != _BYTE_ORDER:
            raise FormatError("a big-endian section: not written by l2vpn")
        blocks.append((kind, bytes(data[p:p + length])))
        p += length
    return blocks, p


def _read_options(block: bytes, fixed: int) -> dict:
    """Option code -> value, for a block whose fixed fields take `fixed` bytes."""
    out, p, end = {}, 8 + fixed, len(block) - 4
    while p + 4 <= end:
        code, length = struct.unpack_from("<HH", block, p)
        if code == _OPT_END:
            break
        out.setdefault(code, block[p + 4:p + 4 + length])
        p += 4 + length + (-length % 4)
    return out


def comment_of(shb: bytes) -> str | None:
    """The comment a Section Header Block carries, if any."""
    value = _read_options(shb, 16).get(_OPT_COMMENT)
    return value.decode("utf-8", "replace") if value is not None else None


def dropped_of(isb: bytes) -> int:
    """isb_ifdrop of an Interface Statistics Block (0 when absent)."""
    value = _read_options(isb, 12).get(_ISB_IFDROP)
    return struct.unpack("<Q", value)[0] if value is not None and len(value) == 8 else 0
