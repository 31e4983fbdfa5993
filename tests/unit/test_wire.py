import ast
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l2vpn import wire
from l2vpn.errors import LocalProtocolError, RemoteProtocolError
from l2vpn.wire import (
    AWAIT_HELLO,
    CAP_FLOOD_LIMITS,
    CAP_VNET_HDR,
    CLOSED,
    ERROR,
    FRAME,
    FRAME_VNET,
    GOODBYE,
    HEADER_LEN,
    HELLO,
    KEEPALIVE,
    LIMITS,
    MAX_PAYLOAD,
    NEED_DATA,
    OPEN,
    Connection,
    ConnectionClosed,
    Frame,
    Goodbye,
    Hello,
    Keepalive,
    Limits,
    pack_header,
)

CI = settings(max_examples=200, deadline=None)

ETH = bytes.fromhex("ffffffffffff020000000001 0806") + bytes(28)
VNET_HDR = bytes(10)


def feed(conn, data, chunk=None):
    """Feed `data` in chunks of `chunk` bytes (all at once if None); return all events."""
    out = []
    step = chunk or max(len(data), 1)
    for i in range(0, len(data), step):
        conn.receive_data(data[i : i + step])
        out += conn.events()
    return out


def hello_payload(magic=b"L2VP", version=1, reserved=0, mtu=1500, caps=0, name=b"hub",
                  name_len=None, trailing=b""):
    n = len(name) if name_len is None else name_len
    return struct.pack(">4sBBHIB", magic, version, reserved, mtu, caps, n) + name + trailing


def record(rtype, payload):
    return pack_header(rtype, len(payload)) + payload


def fresh(**kw):
    return Connection("spoke1", 1500, **kw)


def opened(**kw):
    """A connection that has sent its hello and received a plain one from 'hub'."""
    conn = fresh(**kw)
    conn.hello()
    assert feed(conn, record(HELLO, hello_payload(caps=kw.get("caps", 0)))) == [
        Hello(1, "hub", 1500, kw.get("caps", 0))
    ]
    return conn


class ConnectionPair:
    """Two endpoints joined back to back, no sockets."""

    def __init__(self, spoke_caps=0, hub_caps=0, max_payload=MAX_PAYLOAD):
        self.spoke = Connection("spoke1", 1500, spoke_caps, max_payload)
        self.hub = Connection("hub", 9000, hub_caps, max_payload)

    def peer_of(self, conn):
        return self.hub if conn is self.spoke else self.spoke

    def send(self, conn, data, chunk=None):
        return feed(self.peer_of(conn), data, chunk)

    def handshake(self):
        assert self.send(self.spoke, self.spoke.hello()) == [self.hub.peer]
        assert self.send(self.hub, self.hub.hello()) == [self.spoke.peer]
        return self


def expect_remote_error(data, match, conn=None, eof=False):
    conn = conn or fresh()
    conn.receive_data(data)
    if eof:
        conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match=match):
        conn.events()
    return conn


# -- handshake --------------------------------------------------------------


def test_handshake_both_ways():
    pair = ConnectionPair(spoke_caps=CAP_VNET_HDR, hub_caps=CAP_VNET_HDR | 0x80)
    assert pair.spoke.peer is None and pair.spoke.caps == 0
    pair.handshake()
    assert pair.hub.peer == Hello(1, "spoke1", 1500, CAP_VNET_HDR)
    assert pair.spoke.peer == Hello(1, "hub", 9000, CAP_VNET_HDR | 0x80)
    assert pair.spoke.caps == pair.hub.caps == CAP_VNET_HDR
    for conn in (pair.spoke, pair.hub):
        assert conn.our_state is OPEN and conn.their_state is OPEN


def test_caps_are_the_and_and_unknown_bits_are_ignored():
    pair = ConnectionPair(spoke_caps=0xFFFFFFFF, hub_caps=0).handshake()
    assert pair.spoke.caps == pair.hub.caps == 0
    pair = ConnectionPair(spoke_caps=0xF0 | CAP_VNET_HDR, hub_caps=0x0F).handshake()
    assert pair.spoke.caps == CAP_VNET_HDR


def test_hello_layout_is_the_documented_one():
    data = Connection("hub-1", 1500, caps=CAP_VNET_HDR).hello()
    assert data == (
        b"\x01\x00\x00\x12" + b"L2VP" + b"\x01\x00" + b"\x05\xdc" + b"\x00\x00\x00\x01"
        + b"\x05" + b"hub-1"
    )


def test_hello_accepts_utf8_names_and_ignores_reserved():
    name = "nœud-é"
    conn = fresh()
    payload = hello_payload(reserved=0xAA, name=name.encode())
    assert feed(conn, record(HELLO, payload)) == [Hello(1, name, 1500, 0)]


def test_we_may_send_frames_before_the_peers_hello():
    pair = ConnectionPair()
    data = pair.spoke.hello() + pair.spoke.frame(ETH) + pair.spoke.keepalive()
    assert pair.send(pair.spoke, data) == [pair.hub.peer, Frame(ETH), Keepalive()]
    assert pair.spoke.their_state is AWAIT_HELLO


# -- round trips -------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", ETH, bytes(range(256)) * 6, bytes(MAX_PAYLOAD)])
def test_frame_round_trip(payload):
    pair = ConnectionPair().handshake()
    assert pair.send(pair.spoke, pair.spoke.frame(payload)) == [Frame(payload)]
    assert pair.hub.bytes_buffered == 0


def test_frame_accepts_bytearray_and_memoryview():
    pair = ConnectionPair().handshake()
    data = pair.spoke.frame(bytearray(ETH)) + pair.spoke.frame(memoryview(ETH)[:20])
    events = pair.send(pair.spoke, memoryview(data))
    assert events == [Frame(ETH), Frame(ETH[:20])]
    assert all(type(ev.data) is bytes for ev in events)


def test_keepalive_round_trip():
    pair = ConnectionPair().handshake()
    assert pair.hub.keepalive() == b"\x04\x00\x00\x00"
    assert pair.send(pair.hub, pair.hub.keepalive()) == [Keepalive()]


@pytest.mark.parametrize("reason", ["", "shutting down", "über ☃"])
def test_goodbye_round_trip(reason):
    pair = ConnectionPair().handshake()
    assert pair.send(pair.hub, pair.hub.goodbye(reason)) == [Goodbye(reason)]
    assert pair.hub.our_state is CLOSED and pair.spoke.their_state is CLOSED


def test_long_goodbye_reason_is_cut_at_a_character_boundary():
    pair = ConnectionPair().handshake()
    data = pair.hub.goodbye("x" + "€" * 200)
    assert len(data) - 4 <= 256
    [event] = pair.send(pair.hub, data)
    assert event.reason == "x" + "€" * 85


def test_vnet_frame_round_trip_when_negotiated():
    pair = ConnectionPair(spoke_caps=CAP_VNET_HDR, hub_caps=CAP_VNET_HDR).handshake()
    data = VNET_HDR + ETH
    wire_bytes = pair.spoke.frame(data, vnet=True)
    assert wire_bytes[0] == FRAME_VNET
    assert pair.send(pair.spoke, wire_bytes) == [Frame(data, vnet=True)]


def test_frame_into_appends_the_same_bytes_as_frame():
    pair = ConnectionPair(spoke_caps=CAP_VNET_HDR, hub_caps=CAP_VNET_HDR).handshake()
    buf = bytearray(b"prefix")
    pair.spoke.frame_into(buf, ETH)
    pair.spoke.frame_into(buf, memoryview(VNET_HDR + ETH), vnet=True)
    assert buf == b"prefix" + pair.spoke.frame(ETH) + pair.spoke.frame(VNET_HDR + ETH, True)
    events = pair.send(pair.spoke, bytes(buf[6:]))
    assert events == [Frame(ETH), Frame(VNET_HDR + ETH, True)]


def test_pack_header():
    assert pack_header(FRAME, 0x0105DC) == b"\x02\x01\x05\xdc"
    assert pack_header(0xFF, 0xFFFFFF) == b"\xff\xff\xff\xff"
    for bad in [(256, 0), (-1, 0), (FRAME, 1 << 24), (FRAME, -1)]:
        with pytest.raises(LocalProtocolError):
            pack_header(*bad)


# -- chunking and buffering --------------------------------------------------

def _stream():
    src = Connection("hub", 9000)
    data = src.hello() + src.frame(ETH) + src.keepalive() + src.frame(b"")
    data += src.frame(bytes(3000)) + src.goodbye("bye")
    return data


def test_one_byte_at_a_time_gives_the_same_events():
    data = _stream()
    whole = feed(fresh(), data)
    assert whole == [Hello(1, "hub", 9000, 0), Frame(ETH), Keepalive(), Frame(b""),
                     Frame(bytes(3000)), Goodbye("bye")]
    conn = fresh()
    assert feed(conn, data, chunk=1) == whole
    conn.receive_data(b"")
    assert conn.events() == [ConnectionClosed()]


def test_bytes_buffered_counts_unparsed_input():
    conn = fresh()
    data = _stream()
    conn.receive_data(data[:10])
    assert conn.next_event() is NEED_DATA
    assert conn.bytes_buffered == 10
    conn.receive_data(data[10:])
    assert conn.bytes_buffered == len(data)
    assert isinstance(conn.next_event(), Hello)
    assert conn.bytes_buffered == len(data) - 4 - len(hello_payload(mtu=9000))
    conn.events()
    assert conn.bytes_buffered == 0


def test_interleaved_feeding_and_draining_keeps_every_frame():
    src = Connection("hub", 9000)
    conn = fresh()
    conn.receive_data(src.hello())
    assert isinstance(conn.next_event(), Hello)
    frames = [bytes([i % 256]) * (i % 97) for i in range(2000)]
    data = b"".join(src.frame(f) for f in frames)
    got = []
    for i in range(0, len(data), 37):
        conn.receive_data(data[i : i + 37])
        event = conn.next_event()
        if event is not NEED_DATA:
            got.append(event.data)
    got += [ev.data for ev in conn.events()]
    assert got == frames
    assert conn.bytes_buffered == 0


def test_read_input_is_released_while_the_reader_keeps_up():
    # Reaches into the buffer: the bound on held memory is the point of this test.
    src = Connection("hub", 9000)
    conn = fresh()
    conn.receive_data(src.hello())
    conn.events()
    record_ = src.frame(bytes(100))
    for _ in range(5000):
        conn.receive_data(record_[:50])
        conn.events()
        conn.receive_data(record_[50:])
        assert conn.events() == [Frame(bytes(100))]
        assert len(conn._buf) <= 2 * len(record_)


def test_events_is_empty_without_a_whole_record():
    conn = fresh()
    assert conn.events() == []
    conn.receive_data(b"\x01\x00")
    assert conn.events() == [] and conn.next_event() is NEED_DATA


# -- end of stream -------------------------------------------------------------


def test_eof_before_anything_is_a_clean_close():
    conn = fresh()
    conn.receive_data(b"")
    assert conn.events() == [ConnectionClosed()]
    assert conn.their_state is CLOSED
    assert conn.next_event() == ConnectionClosed()


def test_eof_at_record_boundary_while_open():
    conn = opened()
    conn.receive_data(pack_header(KEEPALIVE, 0))
    conn.receive_data(b"")
    assert conn.events() == [Keepalive(), ConnectionClosed()]


@pytest.mark.parametrize("cut", [1, 3, 4, 10])
def test_eof_mid_record(cut):
    conn = opened()
    data = pack_header(FRAME, len(ETH)) + ETH
    expect_remote_error(data[:cut], "connection closed mid-record", conn, eof=True)


def test_eof_mid_hello():
    data = record(HELLO, hello_payload())
    expect_remote_error(data[:-1], "mid-record", eof=True)


def test_data_after_eof_is_a_local_error():
    conn = fresh()
    conn.receive_data(b"")
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"x")


# -- garbage --------------------------------------------------------------------


def test_http_request_as_first_record():
    expect_remote_error(b"GET / HTTP/1.1\r\n", r"unknown record type 0x47")


@pytest.mark.parametrize("rtype", [0x00, 0x07, 0x7F, 0xFF])
def test_unknown_record_type_after_hello(rtype):
    expect_remote_error(pack_header(rtype, 0), f"unknown record type {rtype:#04x}", opened())


@pytest.mark.parametrize("rtype", [FRAME, KEEPALIVE, GOODBYE])
def test_first_record_must_be_hello(rtype):
    expect_remote_error(pack_header(rtype, 0), "expected HELLO first")


@pytest.mark.parametrize(
    "payload, match",
    [
        (b"", "too short"),
        (b"L2V", "too short"),
        (hello_payload(magic=b"L2VQ"), "magic"),
        (hello_payload(magic=b"\x00" * 4, version=9), "magic"),
        (hello_payload(version=7), r"unsupported protocol version 7 \(we speak 1\)"),
        (hello_payload(version=0), "unsupported protocol version 0"),
        (b"L2VP\x02", "unsupported protocol version 2"),
        (b"L2VP\x01\x00\x05\xdc", "too short"),
        (hello_payload(name=b"", name_len=0), "name length 0"),
        (hello_payload(name=b"x" * 65), "name length 65"),
        (hello_payload(name=b"hub", name_len=5), "name cut short"),
        (hello_payload(trailing=b"\x00"), "1 trailing bytes"),
        (hello_payload(name=b"hub", name_len=2), "1 trailing bytes"),
        (hello_payload(name=b"\xff\xfe"), "not valid UTF-8"),
        (hello_payload(name=b"hub one"), "whitespace"),
        (hello_payload(name=b"hub\x00"), "printable"),
        (hello_payload(name=b"hub\n"), "printable"),
        (hello_payload(name="hub\u00a0x".encode()), "whitespace"),
    ],
)
def test_bad_hello(payload, match):
    conn = expect_remote_error(record(HELLO, payload), match)
    assert conn.peer is None and conn.their_state is ERROR


def test_second_hello():
    expect_remote_error(record(HELLO, hello_payload()), "second HELLO", opened())


def test_non_empty_keepalive():
    expect_remote_error(record(KEEPALIVE, b"\x00"), "KEEPALIVE with a 1-byte payload", opened())


def test_goodbye_reason_limits():
    expect_remote_error(pack_header(GOODBYE, 257), "GOODBYE record of 257 bytes", opened())
    expect_remote_error(record(GOODBYE, b"\xc3"), "reason is not valid UTF-8", opened())
    assert feed(opened(), record(GOODBYE, "é".encode() * 128)) == [Goodbye("é" * 128)]


# -- size caps -------------------------------------------------------------------


def test_oversize_frame_is_refused_from_its_header_alone():
    conn = opened()
    expect_remote_error(pack_header(FRAME, MAX_PAYLOAD + 1), "exceeds the limit of 66560", conn)


def test_a_smaller_max_payload_is_enforced_both_ways():
    pair = ConnectionPair(max_payload=1000).handshake()
    assert pair.send(pair.spoke, pair.spoke.frame(bytes(1000))) == [Frame(bytes(1000))]
    with pytest.raises(LocalProtocolError, match="exceeds max_payload"):
        pair.spoke.frame(bytes(1001))
    with pytest.raises(LocalProtocolError):
        pair.spoke.frame_into(bytearray(), bytes(1001))
    expect_remote_error(pack_header(FRAME, 1001), "exceeds the limit of 1000", pair.hub)


def test_oversize_frame_is_refused_even_when_it_arrives_whole():
    conn = Connection("spoke1", 1500, max_payload=1000)
    conn.hello()
    feed(conn, record(HELLO, hello_payload()))
    expect_remote_error(record(FRAME, bytes(1001)), "exceeds the limit of 1000", conn)


def test_huge_hello_is_refused_from_its_header_alone():
    expect_remote_error(pack_header(HELLO, 0xFFFFFF), "HELLO record of 16777215 bytes")


# -- FRAME_VNET negotiation ------------------------------------------------------


@pytest.mark.parametrize("spoke_caps, hub_caps", [(0, 0), (CAP_VNET_HDR, 0), (0, CAP_VNET_HDR)])
def test_vnet_without_negotiation_is_refused_both_ways(spoke_caps, hub_caps):
    pair = ConnectionPair(spoke_caps, hub_caps).handshake()
    with pytest.raises(LocalProtocolError, match="not negotiated"):
        pair.spoke.frame(VNET_HDR + ETH, vnet=True)
    with pytest.raises(LocalProtocolError, match="not negotiated"):
        pair.spoke.frame_into(bytearray(), VNET_HDR + ETH, vnet=True)
    expect_remote_error(record(FRAME_VNET, VNET_HDR + ETH), "not negotiated", pair.hub)


def test_vnet_before_the_peers_hello_is_refused():
    conn = fresh(caps=CAP_VNET_HDR)
    conn.hello()
    with pytest.raises(LocalProtocolError, match="not negotiated"):
        conn.frame(VNET_HDR + ETH, vnet=True)


def test_vnet_frame_shorter_than_its_header():
    pair = ConnectionPair(CAP_VNET_HDR, CAP_VNET_HDR).handshake()
    with pytest.raises(LocalProtocolError, match="no room"):
        pair.spoke.frame(bytes(9), vnet=True)
    expect_remote_error(record(FRAME_VNET, bytes(9)), "shorter than its 10-byte", pair.hub)
    pair = ConnectionPair(CAP_VNET_HDR, CAP_VNET_HDR).handshake()
    assert pair.send(pair.spoke, record(FRAME_VNET, bytes(10))) == [Frame(bytes(10), True)]


# -- ordering after goodbye and errors -------------------------------------------


@pytest.mark.parametrize("rtype, name", [(FRAME, "FRAME"), (KEEPALIVE, "KEEPALIVE"),
                                         (GOODBYE, "GOODBYE"), (HELLO, "HELLO")])
def test_records_after_goodbye_are_refused(rtype, name):
    conn = opened()
    data = record(GOODBYE, b"bye") + pack_header(rtype, 0)
    conn.receive_data(data)
    assert conn.next_event() == Goodbye("bye")
    with pytest.raises(RemoteProtocolError, match=f"{name} after GOODBYE"):
        conn.next_event()


def test_eof_after_goodbye_is_a_clean_close():
    conn = opened()
    conn.receive_data(record(GOODBYE, b""))
    conn.receive_data(b"")
    assert conn.events() == [Goodbye(""), ConnectionClosed()]


def test_after_a_remote_error_the_connection_stays_dead():
    conn = opened()
    conn.receive_data(pack_header(0x42, 0))
    with pytest.raises(RemoteProtocolError, match="0x42"):
        conn.next_event()
    conn.receive_data(pack_header(KEEPALIVE, 0))
    for call in (conn.next_event, conn.events, conn.next_event):
        with pytest.raises(RemoteProtocolError, match="0x42"):
            call()
    assert conn.their_state is ERROR and conn.bytes_buffered == 0


def test_an_error_mid_batch_raises_from_events():
    conn = opened()
    conn.receive_data(record(FRAME, ETH) + pack_header(0x42, 0))
    with pytest.raises(RemoteProtocolError):
        conn.events()


# -- local misuse ----------------------------------------------------------------


def test_sending_out_of_order_is_a_local_error():
    conn = fresh()
    for send in (conn.keepalive, conn.goodbye, lambda: conn.frame(ETH),
                 lambda: conn.frame_into(bytearray(), ETH)):
        with pytest.raises(LocalProtocolError, match="before our hello"):
            send()
    conn.hello()
    with pytest.raises(LocalProtocolError, match="hello already sent"):
        conn.hello()
    conn.goodbye("done")
    for send in (conn.keepalive, conn.goodbye, conn.hello, lambda: conn.frame(ETH),
                 lambda: conn.frame_into(bytearray(), ETH)):
        with pytest.raises(LocalProtocolError):
            send()
    assert conn.our_state is CLOSED


@pytest.mark.parametrize(
    "args",
    [("", 1500), ("x" * 65, 1500), ("a b", 1500), ("tab\t", 1500), ("é" * 33, 1500),
     ("hub", -1), ("hub", 65536), ("hub", 1500, -1), ("hub", 1500, 1 << 32)],
)
def test_bad_constructor_arguments(args):
    with pytest.raises(LocalProtocolError):
        Connection(*args)


@pytest.mark.parametrize("max_payload", [0, 1 << 24])
def test_bad_max_payload(max_payload):
    with pytest.raises(ValueError):
        Connection("hub", 1500, max_payload=max_payload)


def test_name_problem():
    assert wire.name_problem("hub-1.example") is None
    assert wire.name_problem("é" * 32) is None
    assert "1..64" in wire.name_problem("é" * 33)
    assert "whitespace" in wire.name_problem("a\u2003b")


def test_wire_is_pure():
    tree = ast.parse(open(wire.__file__).read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    forbidden = {"socket", "ssl", "fcntl", "threading", "time", "pyroute2", "scapy", "select"}
    assert not imported & forbidden


# -- properties --------------------------------------------------------------------

frames = st.binary(max_size=2000)
ops = st.lists(st.one_of(frames.map(lambda b: ("frame", b)), st.just(("keepalive", None))),
               max_size=30)


def chunked(data, cuts):
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


@CI
@given(ops=ops, cuts=st.lists(st.integers(min_value=0), max_size=40),
       goodbye=st.none() | st.text(max_size=100))
def test_property_round_trip_through_any_chunking(ops, cuts, goodbye):
    src = Connection("hub", 9000)
    data = bytearray(src.hello())
    expected = [Hello(1, "hub", 9000, 0)]
    for kind, payload in ops:
        if kind == "frame":
            src.frame_into(data, payload)
            expected.append(Frame(payload))
        else:
            data += src.keepalive()
            expected.append(Keepalive())
    if goodbye is not None:
        data += src.goodbye(goodbye)
        expected.append(Goodbye(goodbye.encode("utf-8", "replace").decode()))
    expected.append(ConnectionClosed())
    conn = fresh()
    events = []
    for piece in chunked(bytes(data), cuts):
        conn.receive_data(piece)
        events += conn.events()
    conn.receive_data(b"")
    events += conn.events()
    assert events == expected
    assert conn.bytes_buffered == 0


@CI
@given(node=st.text(min_size=1, max_size=64).filter(lambda s: wire.name_problem(s) is None),
       mtu=st.integers(0, 0xFFFF), caps=st.integers(0, 0xFFFFFFFF))
def test_property_any_valid_hello_round_trips(node, mtu, caps):
    conn = fresh(caps=caps)
    assert feed(conn, Connection(node, mtu, caps).hello(), chunk=3) == [
        Hello(1, node, mtu, caps)
    ]
    assert conn.caps == caps


def _only_remote_errors(conn, chunks):
    try:
        for piece in chunks:
            conn.receive_data(piece)
            for event in conn.events():
                assert isinstance(event, (Hello, Frame, Keepalive, Goodbye, ConnectionClosed))
        conn.receive_data(b"")
        events = conn.events()
        assert events == [] or isinstance(events[-1], ConnectionClosed)
    except RemoteProtocolError:
        assert conn.their_state is ERROR
        with pytest.raises(RemoteProtocolError):
            conn.next_event()


@CI
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(min_value=0), max_size=10))
def test_property_arbitrary_bytes_only_ever_raise_remote_protocol_error(data, cuts):
    _only_remote_errors(fresh(), chunked(data, cuts))


@CI
@given(data=st.binary(max_size=300), caps=st.sampled_from([0, CAP_VNET_HDR]),
       cuts=st.lists(st.integers(min_value=0), max_size=10))
def test_property_arbitrary_bytes_after_a_good_hello(data, caps, cuts):
    conn = opened(caps=caps)
    _only_remote_errors(conn, chunked(data, cuts))


@CI
@given(rtype=st.integers(0, 255), body=st.binary(max_size=120),
       cuts=st.lists(st.integers(min_value=0), max_size=5))
def test_property_well_framed_records_of_any_type(rtype, body, cuts):
    conn = opened(caps=CAP_VNET_HDR)
    _only_remote_errors(conn, chunked(record(rtype, body), cuts))


# -- decoder fuzz: hostile streams of plausible records --------------------------------

_LENGTHS = st.one_of(st.integers(0, 80), st.sampled_from(
    [255, 256, 257, 1023, 1024, 1025, MAX_PAYLOAD, MAX_PAYLOAD + 1, 0xFFFFFF]))

# A record header with any type and any claimed length, then up to 100 bytes of body (so
# a long claim is left incomplete), or raw garbage between records.
_pieces = st.one_of(
    st.builds(lambda rtype, n, body: pack_header(rtype, n) + body[:n],
              st.sampled_from([HELLO, FRAME, FRAME_VNET, KEEPALIVE, GOODBYE, LIMITS])
              | st.integers(0, 255),
              _LENGTHS, st.binary(max_size=100)),
    st.binary(max_size=6),
)


def _buffer_bound(conn) -> int:
    """What may wait in the buffer between events(): less than one record the current
    state accepts, header included (nothing once the connection is dead)."""
    state = conn.their_state
    if state is AWAIT_HELLO:
        return HEADER_LEN + wire._MAX_HELLO
    if state is OPEN:
        return HEADER_LEN + max(conn.max_payload, wire.MAX_REASON)
    if state is CLOSED:
        return HEADER_LEN
    return 1


@CI
@given(hello=st.booleans(), pieces=st.lists(_pieces, max_size=12),
       max_payload=st.sampled_from([16, 100, 2000, MAX_PAYLOAD]),
       caps=st.sampled_from([0, CAP_VNET_HDR, CAP_FLOOD_LIMITS, CAP_VNET_HDR | CAP_FLOOD_LIMITS]),
       cuts=st.lists(st.integers(min_value=0), max_size=12), eof=st.booleans())
def test_property_hostile_streams_stay_bounded_and_raise_only_remote_errors(
        hello, pieces, max_payload, caps, cuts, eof):
    conn = Connection("spoke1", 1500, caps, max_payload)
    data = (Connection("hub", 1500, caps).hello() if hello else b"") + b"".join(pieces)
    events = []
    try:
        for piece in chunked(data, cuts) + ([b""] if eof else []):
            conn.receive_data(piece)
            got = conn.events()
            events += got
            assert conn.bytes_buffered < _buffer_bound(conn)
            for ev in got:
                assert isinstance(ev, (Hello, Frame, Keepalive, Goodbye, ConnectionClosed))
                if type(ev) is Frame:
                    assert len(ev.data) <= max_payload
                    assert not ev.vnet or (conn.vnet and len(ev.data) >= wire.VNET_HDR_LEN)
    except RemoteProtocolError:
        assert conn.their_state is ERROR and conn.bytes_buffered == 0
        conn.receive_data(b"more")                      # ignored once dead
        assert conn.bytes_buffered == 0
        with pytest.raises(RemoteProtocolError):
            conn.events()
    if events and type(events[0]) is not ConnectionClosed:
        assert type(events[0]) is Hello


def test_a_long_claim_is_refused_before_its_payload_is_buffered():
    conn = opened(max_payload=100)
    conn.receive_data(pack_header(FRAME, 100) + bytes(99))
    assert conn.events() == [] and conn.bytes_buffered == HEADER_LEN + 99
    conn.receive_data(b"\x00" + pack_header(FRAME, 101))
    with pytest.raises(RemoteProtocolError, match="exceeds the limit of 100"):
        conn.events()
    assert conn.bytes_buffered == 0


@CI
@given(frames=st.lists(st.tuples(st.binary(max_size=300), st.booleans()), max_size=20),
       cuts=st.lists(st.integers(min_value=0), max_size=30))
def test_property_vnet_stream_round_trips_through_any_chunking(frames, cuts):
    src = Connection("hub", 9000, CAP_VNET_HDR)
    conn = fresh(caps=CAP_VNET_HDR)
    data = bytearray(src.hello())
    assert feed(src, conn.hello()) == [Hello(1, "spoke1", 1500, CAP_VNET_HDR)]
    assert src.vnet
    expected = [Hello(1, "hub", 9000, CAP_VNET_HDR)]
    for body, vnet in frames:
        payload = VNET_HDR + body if vnet else body
        src.frame_into(data, payload, vnet)
        expected.append(Frame(payload, vnet))
    data += src.goodbye("done")
    expected += [Goodbye("done"), ConnectionClosed()]
    events = []
    for piece in chunked(bytes(data), cuts) + [b""]:
        conn.receive_data(piece)
        events += conn.events()
        assert conn.bytes_buffered < HEADER_LEN + MAX_PAYLOAD
    assert events == expected and conn.vnet


# -- LIMITS: the flood rates a hub accepts, negotiated with CAP_FLOOD_LIMITS ---------------


def test_limits_cross_when_both_sides_offer_the_capability():
    pair = ConnectionPair(spoke_caps=CAP_FLOOD_LIMITS | CAP_VNET_HDR,
                          hub_caps=CAP_FLOOD_LIMITS).handshake()
    assert pair.hub.flood_limits and pair.spoke.flood_limits
    rec = pair.hub.limits(1000, 2000, 0)
    assert rec == bytes([LIMITS, 0, 0, 12]) + struct.pack(">III", 1000, 2000, 0)
    assert pair.send(pair.hub, rec, chunk=1) == [Limits(1000, 2000, 0)]
    # any number of times, frames in between, the latest counts
    data = pair.hub.limits(5, 6, 7) + pair.hub.frame(ETH) + pair.hub.limits(0xFFFFFFFF, 0, 1)
    assert pair.send(pair.hub, data) == [Limits(5, 6, 7), Frame(ETH), Limits(0xFFFFFFFF, 0, 1)]


@pytest.mark.parametrize("spoke_caps, hub_caps", [(0, CAP_FLOOD_LIMITS),
                                                  (CAP_FLOOD_LIMITS, 0), (CAP_VNET_HDR,) * 2])
def test_limits_need_both_sides(spoke_caps, hub_caps):
    pair = ConnectionPair(spoke_caps=spoke_caps, hub_caps=hub_caps).handshake()
    assert not pair.hub.flood_limits and not pair.spoke.flood_limits
    with pytest.raises(LocalProtocolError, match="CAP_FLOOD_LIMITS was not negotiated"):
        pair.hub.limits(1, 2, 3)
    # a peer that sends one anyway breaks the protocol
    rogue = record(LIMITS, struct.pack(">III", 1, 2, 3))
    with pytest.raises(RemoteProtocolError, match="CAP_FLOOD_LIMITS was not negotiated"):
        pair.send(pair.hub, rogue)


@pytest.mark.parametrize("n", [0, 11, 13, 255])
def test_limits_of_the_wrong_size_are_refused_from_the_header(n):
    conn = opened(caps=CAP_FLOOD_LIMITS)
    conn.receive_data(pack_header(LIMITS, n))      # no payload yet: refused at the header
    with pytest.raises(RemoteProtocolError, match=r"LIMITS .*12"):
        conn.events()


def test_limits_before_the_hello_are_refused():
    expect_remote_error(record(LIMITS, bytes(12)), "expected HELLO first",
                        fresh(caps=CAP_FLOOD_LIMITS))


@pytest.mark.parametrize("rates", [(-1, 0, 0), (0, 1 << 32, 0), (0, 0, 1.5)])
def test_limits_out_of_range_are_a_local_error(rates):
    pair = ConnectionPair(CAP_FLOOD_LIMITS, CAP_FLOOD_LIMITS).handshake()
    with pytest.raises(LocalProtocolError, match="must be integers"):
        pair.hub.limits(*rates)


def test_limits_cannot_be_sent_before_our_hello_or_after_goodbye():
    conn = fresh(caps=CAP_FLOOD_LIMITS)
    with pytest.raises(LocalProtocolError, match="before our hello"):
        conn.limits(1, 1, 1)
    pair = ConnectionPair(CAP_FLOOD_LIMITS, CAP_FLOOD_LIMITS).handshake()
    pair.hub.goodbye("bye")
    with pytest.raises(LocalProtocolError, match="after our goodbye"):
        pair.hub.limits(1, 1, 1)
