"""The l2vpn wire protocol: records inside a TLS 1.3 stream; pure, bytes in and events out.

Theory of operation
-------------------
TLS already gives a reliable, ordered, authenticated byte stream, so this layer only cuts
that stream into records and keeps each endpoint honest. The protocol is symmetric: hub
and spoke speak it the same way.

Every record is a 4-byte header followed by its payload::

    type (u8) | payload length (u24, big-endian) | payload

A decoder caps the payload at `max_payload` (default `MAX_PAYLOAD`, 64 KiB for a GSO
super-frame plus 1 KiB for a virtio-net header and slack). Limits are checked when the
header arrives, before the payload is read, so a peer cannot make us buffer more than one
record. Record types:

HELLO (0x01)
    ``b"L2VP" | version u8 | reserved u8 | mtu u16 | caps u32 | name_len u8 | name``.
    Each side sends one, first. `version` is `PROTOCOL_VERSION` (1), anything else is
    refused; `reserved` is sent as 0 and ignored; `name` is 1..64 bytes of UTF-8,
    printable, without whitespace; no bytes may follow it. `caps` is a bitmask; unknown
    bits are ignored and the session uses the AND of both sides' caps. A HELLO record may
    announce up to 1024 bytes, so a longer hello from a later version still reads as
    "unsupported protocol version" rather than as garbage.
FRAME (0x02)
    One Ethernet frame, as-is. The codec does not judge frame contents; the switch does.
FRAME_VNET (0x03)
    A 10-byte virtio_net_hdr then an Ethernet frame, for offloads (GSO/checksum). Allowed
    only when both hellos carry `CAP_VNET_HDR`.
KEEPALIVE (0x04)
    Empty. Proves the peer is alive when no frames flow.
GOODBYE (0x05)
    A UTF-8 reason of at most 256 bytes. The sender sends nothing after it.
LIMITS (0x06)
    ``broadcast_pps u32 | multicast_pps u32 | unknown_unicast_pps u32``, exactly 12 bytes:
    the rates at which the sender accepts flooded frames from the receiver (0: no limit),
    so the receiver can drop the excess before it is sent. Allowed only when both hellos
    carry `CAP_FLOOD_LIMITS`; may come any time after the hello, the latest counts. A
    hub sends one right after the spoke's hello; spokes send none.

A peer that breaks any rule (unknown type, record out of order, a bad hello, EOF in the
middle of a record) gets a `RemoteProtocolError` and the connection is dead: one bad
session ends, nothing else. Misusing the encoder raises `LocalProtocolError`.

Each direction moves AWAIT_HELLO -> OPEN -> CLOSED through `_TRANSITIONS` (ERROR once
the peer broke the protocol); EOF at a record boundary is a clean `ConnectionClosed`
from any state.
"""

import struct
from dataclasses import dataclass

from l2vpn.errors import LocalProtocolError, RemoteProtocolError
from l2vpn.frame import VNET_HDR_LEN

PROTOCOL_VERSION = 1
MAGIC = b"L2VP"

HELLO = 0x01
FRAME = 0x02
FRAME_VNET = 0x03
KEEPALIVE = 0x04
GOODBYE = 0x05
LIMITS = 0x06

CAP_VNET_HDR = 1 << 0
CAP_FLOOD_LIMITS = 1 << 1

HEADER_LEN = 4
MAX_PAYLOAD = 65536 + 1024
MAX_NAME = 64
MAX_REASON = 256

_MAX_U24 = 0xFFFFFF
# Room for a longer hello from a future version, so its peer hears "unsupported version".
_MAX_HELLO = 1024
_HEADER = struct.Struct(">I")
_HELLO = struct.Struct(">4sBBHIB")
_LIMITS = struct.Struct(">III")
_MAX_U32 = 0xFFFFFFFF

_TYPE_LIMITS = {HELLO: _MAX_HELLO, GOODBYE: MAX_REASON}   # LIMITS: exactly _LIMITS.size
_TYPE_NAMES = {
    HELLO: "HELLO",
    FRAME: "FRAME",
    FRAME_VNET: "FRAME_VNET",
    KEEPALIVE: "KEEPALIVE",
    GOODBYE: "GOODBYE",
    LIMITS: "LIMITS",
}


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name):
        self._name = name

    def __repr__(self):
        return self._name


NEED_DATA = _Sentinel("NEED_DATA")

AWAIT_HELLO = _Sentinel("AWAIT_HELLO")
OPEN = _Sentinel("OPEN")
CLOSED = _Sentinel("CLOSED")
ERROR = _Sentinel("ERROR")


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    node: str
    mtu: int
    caps: int


@dataclass(slots=True)
class Frame:
    """One Ethernet frame; with `vnet` it starts with a 10-byte virtio_net_hdr.

    Not frozen, unlike the other events: one is made per frame, and a frozen dataclass
    pays for object.__setattr__ on every field (treat it as read-only all the same)."""

    data: bytes
    vnet: bool = False


@dataclass(frozen=True, slots=True)
class Keepalive:
    pass


@dataclass(frozen=True, slots=True)
class Goodbye:
    reason: str


@dataclass(frozen=True, slots=True)
class Limits:
    """Flood rates (frames per second, 0 = no limit) the peer accepts from us."""

    broadcast_pps: int
    multicast_pps: int
    unknown_unicast_pps: int


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer's stream ended cleanly, at a record boundary."""


_KEEPALIVE = Keepalive()
_CLOSED = ConnectionClosed()

_EVENT_OF = {
    HELLO: Hello,
    FRAME: Frame,
    FRAME_VNET: Frame,
    KEEPALIVE: Keepalive,
    GOODBYE: Goodbye,
    LIMITS: Limits,
}

# The same table rules what we send and what we accept from the peer.
_TRANSITIONS = {
    AWAIT_HELLO: {Hello: OPEN, ConnectionClosed: CLOSED},
    OPEN: {Frame: OPEN, Keepalive: OPEN, Limits: OPEN, Goodbye: CLOSED,
           ConnectionClosed: CLOSED},
    CLOSED: {ConnectionClosed: CLOSED},
}


def _copy(buf: bytearray, start: int, end: int) -> bytes:
    """buf[start:end] as bytes in one copy (slicing a bytearray first would make two)."""
    if end - start <= 2048:
        return bytes(buf[start:end])
    with memoryview(buf) as view, view[start:end] as part:
        return bytes(part)


def pack_header(rtype: int, length: int) -> bytes:
    """The 4-byte header of a record of type `rtype` with `length` payload bytes."""
    if not 0 <= rtype <= 0xFF or not 0 <= length <= _MAX_U24:
        raise LocalProtocolError(f"record type {rtype} / length {length} out of range")
    return _HEADER.pack(rtype << 24 | length)


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a node name in a hello, or None if it can."""
    if not isinstance(name, str):
        return f"node name must be a string, not {type(name).__name__}"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return f"node name {name!r} is not valid UTF-8"
    if not 1 <= size <= MAX_NAME:
        return f"node name is {size} bytes of UTF-8 (must be 1..{MAX_NAME})"
    if not name.isprintable() or any(ch.isspace() for ch in name):
        return f"node name {name!r} must be printable and contain no whitespace"
    return None


def _parse_hello(payload: bytes) -> Hello:
    if len(payload) < 5:
        raise RemoteProtocolError(f"hello of {len(payload)} bytes is too short")
    if payload[:4] != MAGIC:
        raise RemoteProtocolError(f"hello magic {payload[:4]!r} is not {MAGIC!r}")
    if payload[4] != PROTOCOL_VERSION:
        raise RemoteProtocolError(
            f"unsupported protocol version {payload[4]} (we speak {PROTOCOL_VERSION})"
        )
    if len(payload) < _HELLO.size:
        raise RemoteProtocolError(f"hello of {len(payload)} bytes is too short")
    _, version, _, mtu, caps, name_len = _HELLO.unpack_from(payload)
    if not 1 <= name_len <= MAX_NAME:
        raise RemoteProtocolError(f"hello name length {name_len} (must be 1..{MAX_NAME})")
    end = _HELLO.size + name_len
    if len(payload) < end:
        raise RemoteProtocolError(
            f"hello name cut short: {len(payload) - _HELLO.size} of {name_len} bytes"
        )
    if len(payload) > end:
        raise RemoteProtocolError(f"{len(payload) - end} trailing bytes after hello")
    try:
        node = payload[_HELLO.size :].decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError("hello name is not valid UTF-8") from None
    problem = name_problem(node)
    if problem:
        raise RemoteProtocolError(f"hello: {problem}")
    return Hello(version, node, mtu, caps)


class Connection:
    """One endpoint of a session: encodes what we send and decodes what the peer sends.

    Bad constructor arguments raise `LocalProtocolError` (they would break the protocol),
    except `max_payload`, which raises ValueError.
    """

    def __init__(self, node: str, mtu: int, caps: int = 0, max_payload: int = MAX_PAYLOAD):
        problem = name_problem(node)
        if problem:
            raise LocalProtocolError(problem)
        if not 0 <= mtu <= 0xFFFF:
            raise LocalProtocolError(f"mtu {mtu} does not fit in 16 bits")
        if not 0 <= caps <= 0xFFFFFFFF:
            raise LocalProtocolError(f"caps {caps:#x} do not fit in 32 bits")
        if not 0 < max_payload <= _MAX_U24:
            raise ValueError(f"max_payload {max_payload} not in 1..{_MAX_U24}")
        self.node = node
        self.mtu = mtu
        self.max_payload = max_payload
        self._our_caps = caps
        self._our_state = AWAIT_HELLO
        self._their_state = AWAIT_HELLO
        self._peer = None
        self._vnet = False
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._failure = None

    # -- state ---------------------------------------------------------------

    @property
    def our_state(self):
        return self._our_state

    @property
    def their_state(self):
        return self._their_state

    @property
    def peer(self) -> Hello | None:
        """The peer's hello, once received."""
        return self._peer

    @property
    def caps(self) -> int:
        """Capabilities both sides have (0 until the peer's hello)."""
        return self._our_caps & self._peer.caps if self._peer else 0

    @property
    def vnet(self) -> bool:
        """Whether both hellos carry CAP_VNET_HDR, so FRAME_VNET may flow both ways."""
        return self._vnet

    @property
    def flood_limits(self) -> bool:
        """Whether both hellos carry CAP_FLOOD_LIMITS, so LIMITS records may flow."""
        return bool(self.caps & CAP_FLOOD_LIMITS)

    @property
    def bytes_buffered(self) -> int:
        """Received bytes not yet turned into events, so the I/O layer can bound memory."""
        return len(self._buf) - self._pos

    # -- sending -------------------------------------------------------------

    def _send(self, event_type):
        new = _TRANSITIONS[self._our_state].get(event_type)
        if new is None:
            if self._our_state is AWAIT_HELLO:
                raise LocalProtocolError(f"cannot send {event_type.__name__} before our hello")
            if event_type is Hello:
                raise LocalProtocolError("hello already sent")
            raise LocalProtocolError(f"cannot send {event_type.__name__} after our goodbye")
        self._our_state = new

    def hello(self) -> bytes:
        """Our hello record; the first thing we send."""
        self._send(Hello)
        name = self.node.encode("utf-8")
        payload = _HELLO.pack(MAGIC, PROTOCOL_VERSION, 0, self.mtu, self._our_caps, len(name))
        return _HEADER.pack(HELLO << 24 | len(payload) + len(name)) + payload + name

    def frame_header(self, data, vnet: bool = False) -> bytes:
        """The 4-byte header of a frame record for `data`, so the caller can place header
        and payload in its own buffer without joining them first."""
        if self._our_state is not OPEN:
            self._send(Frame)
        n = len(data)
        if n > self.max_payload:
            raise LocalProtocolError(f"frame of {n} bytes exceeds max_payload {self.max_payload}")
        if vnet:
            if not self._vnet:
                raise LocalProtocolError("FRAME_VNET sent but CAP_VNET_HDR was not negotiated")
            if n < VNET_HDR_LEN:
                raise LocalProtocolError(f"FRAME_VNET of {n} bytes has no room for its header")
            return _HEADER.pack(FRAME_VNET << 24 | n)
        return _HEADER.pack(FRAME << 24 | n)

    def frame(self, data, vnet: bool = False) -> bytes:
        """A FRAME record (FRAME_VNET if `vnet`, `data` then starting with the vnet header)."""
        return self.frame_header(data, vnet) + data

    def frame_into(self, buf: bytearray, data, vnet: bool = False) -> None:
        """Append a frame record to `buf`, so many frames go out in one TLS write."""
        buf += self.frame_header(data, vnet)
        buf += data

    def keepalive(self) -> bytes:
        self._send(Keepalive)
        return _HEADER.pack(KEEPALIVE << 24)

    def limits(self, broadcast_pps: int, multicast_pps: int, unknown_unicast_pps: int) -> bytes:
        """A LIMITS record: the flood rates we accept from the peer."""
        rates = (broadcast_pps, multicast_pps, unknown_unicast_pps)
        if not all(isinstance(r, int) and 0 <= r <= _MAX_U32 for r in rates):
            raise LocalProtocolError(f"flood limits {rates} must be integers in 0..{_MAX_U32}")
        if self._our_state is not OPEN:
            self._send(Limits)
        if not self.flood_limits:
            raise LocalProtocolError("LIMITS sent but CAP_FLOOD_LIMITS was not negotiated")
        return _HEADER.pack(LIMITS << 24 | _LIMITS.size) + _LIMITS.pack(*rates)

    def goodbye(self, reason: str = "") -> bytes:
        """Our last record; a reason over 256 bytes is cut at a character boundary."""
        self._send(Goodbye)
        raw = reason.encode("utf-8", "replace")
        if len(raw) > MAX_REASON:
            raw = raw[:MAX_REASON].decode("utf-8", "ignore").encode("utf-8")
        return _HEADER.pack(GOODBYE << 24 | len(raw)) + raw

    # -- receiving -----------------------------------------------------------

    def receive_data(self, data) -> None:
        """Buffer (copy) bytes from the peer, so the caller may reuse its buffer; b"" is EOF."""
        if self._failure is not None:
            return
        if not data:
            self._eof = True
            return
        if self._eof:
            raise LocalProtocolError("data received after EOF")
        buf = self._buf
        pos = self._pos
        # Copy the unread tail only once at least as much was read: O(1) per byte.
        if pos and pos >= len(buf) - pos:
            del buf[:pos]
            self._pos = 0
        buf += data

    def next_event(self):
        """The next event from the peer, or NEED_DATA."""
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail >= HEADER_LEN and self._their_state is OPEN:
            # the fast path: a whole frame record in an open stream
            (word,) = _HEADER.unpack_from(buf, pos)
            n = word & _MAX_U24
            start = pos + HEADER_LEN
            end = start + n
            if n <= self.max_payload and end <= len(buf):
                rtype = word >> 24
                if rtype == FRAME_VNET and self._vnet and n >= VNET_HDR_LEN:
                    self._pos = end
                    return Frame(_copy(buf, start, end), True)
                if rtype == FRAME:
                    self._pos = end
                    return Frame(_copy(buf, start, end))
        elif not avail and not self._eof and self._failure is None:
            return NEED_DATA
        try:
            return self._next_event_slow()
        except RemoteProtocolError as exc:
            if self._failure is None:
                self._failure = str(exc)
                self._their_state = ERROR
                self._buf = bytearray()
                self._pos = 0
            raise

    def events(self) -> list:
        """Every complete event buffered now; a protocol error discards the batch."""
        out = []
        next_event = self.next_event
        while True:
            event = next_event()
            if event is NEED_DATA:
                return out
            out.append(event)
            if event is _CLOSED:
                return out

    def _next_event_slow(self):
        if self._failure is not None:
            raise RemoteProtocolError(self._failure)
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < HEADER_LEN:
            return self._at_end(avail)
        (word,) = _HEADER.unpack_from(buf, pos)
        rtype = word >> 24
        n = word & _MAX_U24
        event_type = self._check_header(rtype, n)
        if avail < HEADER_LEN + n:
            return self._at_end(avail)
        start = pos + HEADER_LEN
        self._pos = end = start + n
        self._their_state = _TRANSITIONS[self._their_state][event_type]
        if rtype == FRAME:
            return Frame(bytes(buf[start:end]))
        if rtype == FRAME_VNET:
            return Frame(bytes(buf[start:end]), True)
        if rtype == KEEPALIVE:
            return _KEEPALIVE
        payload = bytes(buf[start:end])
        if rtype == LIMITS:
            return Limits(*_LIMITS.unpack(payload))
        if rtype == GOODBYE:
            try:
                return Goodbye(payload.decode("utf-8"))
            except UnicodeDecodeError:
                raise RemoteProtocolError("goodbye reason is not valid UTF-8") from None
        self._peer = _parse_hello(payload)
        self._vnet = bool(self._our_caps & self._peer.caps & CAP_VNET_HDR)
        return self._peer

    def _at_end(self, avail):
        if not self._eof:
            return NEED_DATA
        if avail:
            raise RemoteProtocolError("connection closed mid-record")
        self._their_state = _TRANSITIONS[self._their_state][ConnectionClosed]
        return _CLOSED

    def _check_header(self, rtype, n):
        """Refuse a record from its header alone, before its payload is buffered."""
        event_type = _EVENT_OF.get(rtype)
        if event_type is None:
            raise RemoteProtocolError(f"unknown record type {rtype:#04x}")
        name = _TYPE_NAMES[rtype]
        state = self._their_state
        if event_type not in _TRANSITIONS[state]:
            if state is AWAIT_HELLO:
                raise RemoteProtocolError(f"expected HELLO first, got {name}")
            if state is OPEN:
                raise RemoteProtocolError("second HELLO")
            raise RemoteProtocolError(f"{name} after GOODBYE")
        if rtype == FRAME_VNET and not self._vnet:
            raise RemoteProtocolError("FRAME_VNET received but CAP_VNET_HDR was not negotiated")
        if rtype == KEEPALIVE and n:
            raise RemoteProtocolError(f"KEEPALIVE with a {n}-byte payload (must be empty)")
        if rtype == LIMITS:
            if not self.flood_limits:
                raise RemoteProtocolError("LIMITS received but CAP_FLOOD_LIMITS was not negotiated")
            if n != _LIMITS.size:
                raise RemoteProtocolError(f"LIMITS of {n} bytes (must be {_LIMITS.size})")
        limit = _TYPE_LIMITS.get(rtype, self.max_payload)
        if n > limit:
            raise RemoteProtocolError(f"{name} record of {n} bytes exceeds the limit of {limit}")
        if rtype == FRAME_VNET and n < VNET_HDR_LEN:
            raise RemoteProtocolError(
                f"FRAME_VNET of {n} bytes is shorter than its {VNET_HDR_LEN}-byte header"
            )
        return event_type
