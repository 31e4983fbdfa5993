"""Capture taps on fake ports: wrapping and unwrapping, the bounded buffer, segmentation,
several captures, ports coming and going; the pcapng read back by scapy."""

import io
import json
import socket
import struct

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.utils import PcapNgReader

from l2vpn import capture, pcapng
from l2vpn.capture import Capture, Taps
from l2vpn.offload import F_NEEDS_CSUM, GSO_TCPV4, PLAIN_HDR, internet_checksum


class FakePort:
    """A switch port as the node has them: on_frame an attribute, send_frame a method."""

    def __init__(self, name, on_frame):
        self.name = name
        self.on_frame = on_frame
        self.sent = []

    def send_frame(self, frame):
        self.sent.append(bytes(frame))

    def receive(self, frame):
        self.on_frame(self, frame)


class FakeNode:
    role = "hub"

    def __init__(self, names=("hub", "site-a")):
        self.received = []
        self.live = {n: FakePort(n, lambda p, f: self.received.append((p.name, bytes(f))))
                     for n in names}
        self.port_watchers = []
        self.cfg = type("Cfg", (), {"node": "hub1"})()

    def ports(self):
        return dict(self.live)

    def up(self, name):
        port = self.live[name] = FakePort(name, lambda p, f: self.received.append((p.name, f)))
        for w in list(self.port_watchers):
            w.port_up(name, port)
        return port

    def down(self, name):
        port = self.live.pop(name)
        for w in list(self.port_watchers):
            w.port_down(name, port)


def eth(n=0, size=60):
    body = bytes(Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b") / IP(
        src="198.18.0.1", dst="198.18.0.2") / TCP(sport=1000 + n, dport=80))
    return body + bytes(max(0, size - len(body)))


def drain(cap, limit=1 << 20):
    out = b""
    while (chunk := cap.pull(limit)):
        out += chunk
    return out


def read(data, tmp_path):
    path = tmp_path / "c.pcapng"
    path.write_bytes(data)
    with PcapNgReader(str(path)) as r:
        return list(r), r


def test_wrappers_copy_both_directions_and_undo_restores_the_originals(tmp_path):
    node = FakeNode()
    port = node.live["site-a"]
    orig_on_frame = port.on_frame
    taps = Taps.of(node)
    cap = Capture(taps, ["site-a"], node="hub1", clock=lambda: 1800000000.5)
    assert node.port_watchers == [taps]
    assert "send_frame" in vars(port) and port.on_frame is not orig_on_frame
    assert "send_frame" not in vars(node.live["hub"])         # not asked for: untouched
    port.receive(PLAIN_HDR + eth(1))
    port.send_frame(PLAIN_HDR + eth(2))
    assert node.received == [("site-a", PLAIN_HDR + eth(1))] and port.sent == [PLAIN_HDR + eth(2)]
    cap.client_done()
    assert "send_frame" not in vars(port) and port.on_frame is orig_on_frame
    assert node.port_watchers == [] and taps.wrapped == {}
    pkts, reader = read(drain(cap), tmp_path)
    assert [bytes(p) for p in pkts] == [eth(1), eth(2)]
    assert [p.direction for p in pkts] == [pcapng.INBOUND, pcapng.OUTBOUND]
    assert [p.sniffed_on for p in pkts] == ["site-a", "site-a"]
    assert float(pkts[0].time) == 1800000000.5
    assert cap.pull(1000) is None


def test_a_full_buffer_loses_frames_counts_them_and_reports_them_in_isb_ifdrop():
    node = FakeNode()
    cap = Capture(Taps.of(node), max_frames=3)
    for i in range(5):
        node.live["site-a"].receive(PLAIN_HDR + eth(i))
    node.live["hub"].send_frame(PLAIN_HDR + eth(9))
    assert cap.lost == {"site-a": 2, "hub": 1} and cap.seen == {"site-a": 5, "hub": 1}
    assert len(node.received) == 5 and node.live["hub"].sent    # forwarding unaffected
    cap.client_done()
    got = {}
    summary = capture.Summary()
    blocks, _ = pcapng.split(drain(cap))
    for kind, block in blocks:
        if kind == pcapng.ISB:
            got[struct.unpack_from("<I", block, 8)[0]] = pcapng.dropped_of(block)
    assert sorted(got.values()) == [1, 2]
    assert summary.lost is None


def test_the_buffer_is_bounded_in_bytes_too():
    node = FakeNode()
    cap = Capture(Taps.of(node), max_bytes=1000)
    for _ in range(30):
        node.live["site-a"].receive(PLAIN_HDR + eth(size=100))
    assert cap.seen["site-a"] == 30 and cap.lost["site-a"] == 30 - 1000 // 110


def test_super_frames_are_segmented_unless_gso(tmp_path):
    payload = bytes(range(256)) * 12         # 3072 bytes, mss 1448: 3 segments
    frame = Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b") / IP(
        src="198.18.0.1", dst="198.18.0.2") / TCP(sport=1, dport=2, flags="PA") / payload
    raw = bytearray(bytes(frame))
    pseudo = bytes.fromhex("c6120001c6120002") + struct.pack(">HH", 6, len(raw) - 34)
    seed = internet_checksum(pseudo) ^ 0xFFFF      # a partial checksum: the pseudo-header's
    raw[14 + 20 + 16:14 + 20 + 18] = struct.pack(">H", seed)
    vnet = struct.pack("<BBHHHH", F_NEEDS_CSUM, GSO_TCPV4, 54, 1448, 34, 16) + raw
    for gso, sizes in ((False, [1502, 1502, 230]), (True, [len(raw)])):
        node = FakeNode()
        cap = Capture(Taps.of(node), gso=gso)
        node.live["site-a"].send_frame(vnet)
        cap.client_done()
        pkts, _ = read(drain(cap), tmp_path)
        assert [len(p) for p in pkts] == sizes
        if not gso:
            assert b"".join(bytes(p[TCP].payload) for p in pkts) == payload
            for p in pkts:                            # checksums complete, as on the wire
                fresh = Ether(bytes(p))
                del fresh[IP].chksum, fresh[TCP].chksum
                assert bytes(Ether(bytes(fresh))) == bytes(p)


def test_count_ends_the_capture_after_that_many_frames_with_statistics():
    node = FakeNode()
    cap = Capture(Taps.of(node), count=2)
    for i in range(4):
        node.live["site-a"].receive(PLAIN_HDR + eth(i))
    blocks, _ = pcapng.split(drain(cap))
    kinds = [k for k, _ in blocks]
    assert kinds.count(pcapng.EPB) == 2 and kinds[-1] == pcapng.ISB
    assert node.port_watchers == [] and cap.pull(100) is None


def test_several_captures_share_one_wrapper_and_each_gets_its_frames():
    node = FakeNode()
    taps = Taps.of(node)
    a = Capture(taps, ["site-a"])
    both = Capture(taps)
    port = node.live["site-a"]
    wrapper = vars(port)["send_frame"]
    port.send_frame(PLAIN_HDR + eth(1))
    node.live["hub"].send_frame(PLAIN_HDR + eth(2))
    assert a.seen == {"site-a": 1} and both.seen == {"site-a": 1, "hub": 1}
    a.close()
    assert vars(port)["send_frame"] is wrapper      # still wanted by the other
    port.send_frame(PLAIN_HDR + eth(3))
    assert a.seen == {"site-a": 1} and both.seen["site-a"] == 2
    both.close()
    assert taps.wrapped == {} and "send_frame" not in vars(port) and node.port_watchers == []
    assert not any("send_frame" in vars(p) for p in node.live.values())


def test_ports_coming_and_going_mid_capture(tmp_path):
    node = FakeNode(names=("hub",))
    cap = Capture(Taps.of(node), ["site-b"])
    assert "site-b" not in cap.taps.wrapped
    port = node.up("site-b")
    port.receive(PLAIN_HDR + eth(1))
    node.down("site-b")
    assert "send_frame" not in vars(port) and cap.taps.wrapped == {}
    port.receive(PLAIN_HDR + eth(2))               # gone: no longer tapped
    again = node.up("site-b")                      # reconnects: same interface
    again.send_frame(PLAIN_HDR + eth(3))
    cap.client_done()
    pkts, reader = read(drain(cap), tmp_path)
    assert [bytes(p) for p in pkts] == [eth(1), eth(3)]
    assert [p.sniffed_on for p in pkts] == ["site-b", "site-b"]


def test_a_wrapper_left_in_a_batch_after_unwrapping_still_forwards():
    node = FakeNode()
    cap = Capture(Taps.of(node))
    port = node.live["site-a"]
    held = port.on_frame               # a reader keeps on_frame for its batch
    cap.close()
    held(port, PLAIN_HDR + eth(1))
    assert node.received == [("site-a", PLAIN_HDR + eth(1))]


def test_pull_sleeps_on_empty_and_take_wakes_once():
    node = FakeNode()
    cap = Capture(Taps.of(node))
    wakes = []
    cap.attach(lambda: wakes.append(1))
    assert cap.pull(1 << 16)            # the header
    assert cap.pull(1 << 16) == b""
    node.live["site-a"].receive(PLAIN_HDR + eth(1))
    node.live["site-a"].receive(PLAIN_HDR + eth(2))
    assert wakes == [1]
    assert cap.pull(1 << 16)


def test_serve_refuses_impossible_names_and_waits_for_possible_ones():
    node = FakeNode()
    err = capture.serve(node, json.dumps({"ports": ["bad name!"]}))
    assert err == {"error": "no port bad name! on hub hub1 (ports: hub, site-a)"}
    cap = capture.serve(node, json.dumps({"ports": ["site-z"], "count": 5}))
    assert isinstance(cap, Capture) and cap.count == 5
    shb, _ = pcapng.split(cap.pull(1 << 16))[0][0]
    assert "site-z not up" in pcapng.comment_of(_)
    cap.close()
    node.role = "spoke"
    assert "error" in capture.serve(node, json.dumps({"ports": ["site-a2"]}))
    assert capture.serve(node, '{"list": true}') == {"node": "hub1", "role": "spoke",
                                                     "ports": ["hub", "site-a"]}
    assert "error" in capture.serve(node, '{"count": 0}')
    assert "error" in capture.serve(node, "not json")


# -- the client ----------------------------------------------------------------------


def stream_of(frames, isb_drop=None):
    data = pcapng.section_header(comment="hello") + pcapng.interface("site-a")
    data += b"".join(pcapng.packet(0, 1.0, f, pcapng.INBOUND) for f in frames)
    if isb_drop is not None:
        data += pcapng.statistics(0, 2.0, 1.0, len(frames) + isb_drop, isb_drop)
    return data


def test_receive_writes_whole_blocks_only_when_the_node_dies_mid_block():
    node_side, client = socket.socketpair()
    data = stream_of([eth(1), eth(2)])
    node_side.sendall(data[:-10])             # the last block cut short
    node_side.close()
    out = io.BytesIO()
    notes = []
    summary = capture.receive(client, out.write, note=notes.append)
    assert out.getvalue() == stream_of([eth(1)]) and summary.frames == 1
    assert summary.lost is None and notes == ["hello"]
    assert "lost count unknown" in summary.line()


def test_receive_stops_asking_on_count_and_reads_the_statistics():
    node_side, client = socket.socketpair()
    node_side.sendall(stream_of([eth(1), eth(2), eth(3)]))
    out = io.BytesIO()
    # with count 2 the client asks for the end (SHUT_WR) and the node sends statistics
    summary_holder = {}

    def node_answers():
        assert node_side.recv(10) == b""          # the client's shutdown
        node_side.sendall(pcapng.statistics(0, 2.0, 1.0, 9, 4))
        node_side.close()
    import threading
    t = threading.Thread(target=node_answers)
    t.start()
    summary_holder["s"] = capture.receive(client, out.write, count=2, grace_s=5)
    t.join(5)
    s = summary_holder["s"]
    assert s.frames == 2 and s.lost == 4
    assert s.line() == "2 frames captured, 4 lost (the reader was too slow)"


def test_receive_stop_twice_ends_at_once_and_seconds_asks_for_the_end():
    node_side, client = socket.socketpair()
    stop_r, stop_w = socket.socketpair()
    node_side.sendall(stream_of([eth(1)]))
    stop_w.send(b"\2")
    stop_w.send(b"\2")
    s = capture.receive(client, io.BytesIO().write, stop=stop_r, grace_s=30)   # not waited
    assert s.frames <= 1 and node_side.recv(10) == b""       # it asked for the end
    node_side2, client2 = socket.socketpair()
    s = capture.receive(client2, io.BytesIO().write, seconds=0.01, grace_s=0.05)
    assert s.frames == 0 and node_side2.recv(10) == b""


def test_receive_turns_an_error_reply_into_one_refusal_line():
    node_side, client = socket.socketpair()
    node_side.sendall(b'{"error": "no port x on hub hub1 (ports: hub)"}\n')
    node_side.close()
    with pytest.raises(capture.CaptureRefused, match=r"^no port x on hub hub1 \(ports: hub\)$"):
        capture.receive(client, io.BytesIO().write)
