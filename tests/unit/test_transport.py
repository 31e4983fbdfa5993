"""Session over real loopback TCP and real TLS 1.3, driven by a real EventLoop."""

import array
import fcntl
import os
import random
import select
import socket
import ssl
import struct
import termios
import threading
import time
from types import SimpleNamespace

import pytest
from fakes import FakePort, run_bounded, run_until, tcp_super_frame

from l2vpn import pki, tcp, transport, wire
from l2vpn.config import TLSConfig
from l2vpn.errors import LocalProtocolError, TransportError
from l2vpn.eventloop import READ
from l2vpn.node import GOODBYE_WAIT_S, Node
from l2vpn.offload import PLAIN_HDR
from l2vpn.port import Port
from l2vpn.transport import Session, Thresholds

SNAPSHOT_KEYS = {"id", "node", "cn", "remote", "state", "uptime_s", "frames_in", "frames_out",
                 "bytes_in", "bytes_out", "drops"}


# -- certificates and contexts (made once) -------------------------------------------


def tls_for(directory, name, ca_dir=None):
    return TLSConfig(ca=(ca_dir or directory) / "ca.crt", cert=directory / f"{name}.crt",
                     key=directory / f"{name}.key")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, pki_dir):
    good = pki_dir
    rogue = tmp_path_factory.mktemp("rogue-pki")
    pki.init_ca(rogue, common_name="someone else's CA")
    pki.issue(rogue, "site-a", "spoke")
    return {
        "hub": pki.hub_context(tls_for(good, "hub")),
        "spoke": pki.spoke_context(tls_for(good, "site-a"), None),
        # trusts our CA (so it accepts the hub) but shows a certificate from another CA
        "rogue": pki.spoke_context(tls_for(rogue, "site-a", ca_dir=good), None),
    }


class Link:
    """A server-side Session (accepted) and optionally a client-side one, with callback logs."""

    def __init__(self, loop, server_ctx, client_ctx=None, server_up_problem=None,
                 server_caps=0, client_caps=0, thresholds=transport.DEFAULTS):
        self.loop = loop
        self.thresholds = thresholds
        self.caps = {"server": server_caps, "client": client_caps}
        self.server_ctx = server_ctx
        self.server_up_problem = server_up_problem
        self.listener = tcp.listen("127.0.0.1", 0)
        self.port = self.listener.getsockname()[1]
        self.server = self.client = None
        self.frames = {"server": [], "client": []}
        self.vnet_frames = {"server": [], "client": []}
        self.ups = {}
        self.cns = {}
        self.limits = {"server": [], "client": []}
        self.closes = []
        loop.watch(self.listener, READ, self._accept)
        if client_ctx is not None:
            sock, remote = tcp.connect("127.0.0.1", self.port)
            self.client = self._session("client", sock, remote, client_ctx, False, "site-a")

    def _session(self, side, sock, remote, context, server_side, node):
        def on_secure(s):
            s.cn = self.cns[side] = pki.peer_common_name(s.tls)

        def on_up(s):
            self.ups[side] = s.name
            return self.server_up_problem if server_side else None

        return Session(self.loop, sock, remote, context=context, server_side=server_side,
                       node=node, mtu=1500, caps=self.caps[side], on_secure=on_secure,
                       on_up=on_up, on_frame=lambda s, data: self._got(side, data),
                       on_close=lambda s, reason: self.closes.append((side, reason)),
                       on_limits=lambda s, limits: self.limits[side].append(limits),
                       thresholds=self.thresholds)

    def _got(self, side, data):
        """Frames arrive in vnet form; plain ones (zero header) are kept as plain frames."""
        self.vnet_frames[side].append(bytes(data))
        self.frames[side].append(bytes(data[10:]) if data[:10] == PLAIN_HDR else bytes(data))

    def _accept(self, _mask):
        sock, addr = self.listener.accept()
        sock.setblocking(False)
        self.loop.forget(self.listener)
        self.server = self._session("server", sock, tcp.format_addr(addr),
                                    self.server_ctx, True, "hub")

    def reason(self, side):
        found = [r for s, r in self.closes if s == side]
        return found[0] if found else None

    def up(self):
        return (self.server is not None and self.client is not None
                and self.server.state == self.client.state == "up")

    def close(self):
        for s in (self.server, self.client):
            if s is not None:
                s.close("test over")
        self.loop.forget(self.listener)
        self.listener.close()


@pytest.fixture
def make_link(loop):
    links = []

    def make(*args, **kw):
        link = Link(loop, *args, **kw)
        links.append(link)
        return link

    yield make
    for link in links:
        link.close()


@pytest.fixture
def link_with(loop, ctx, make_link):
    """Makes a hub-side and a spoke-side session given Thresholds(**kw), both up."""
    def make(**kw):
        lk = make_link(ctx["hub"], ctx["spoke"], thresholds=Thresholds(**kw))
        run_until(loop, lk.up, what="both sessions up")
        return lk
    return make


@pytest.fixture
def link(link_with):
    """A hub-side and a spoke-side session, both up."""
    return link_with()


def numbered(seq: int, size: int, rng: random.Random) -> bytes:
    return struct.pack(">I", seq) + rng.randbytes(size - 4)


# -- listening -----------------------------------------------------------------------


def test_listen_on_a_port_in_use_is_one_clear_error():
    first = tcp.listen("127.0.0.1", 0)
    try:
        port = first.getsockname()[1]
        with pytest.raises(TransportError, match="already in use"):
            tcp.listen("127.0.0.1", port)
    finally:
        first.close()


def test_listen_on_a_foreign_address_says_so():
    with pytest.raises(TransportError, match="no interface has that address"):
        tcp.listen("192.0.2.254", 0)


def test_format_addr():
    assert tcp.format_addr(("127.0.0.1", 7443)) == "127.0.0.1:7443"
    assert tcp.format_addr(("::1", 7443, 0, 0)) == "[::1]:7443"


# -- coming up -----------------------------------------------------------------------


def test_a_session_is_a_port(link):
    assert isinstance(link.server, Port) and isinstance(link.client, Port)


def test_both_sides_come_up_and_know_each_other(link):
    assert link.ups == {"server": "site-a", "client": "hub"}
    assert link.cns == {"server": "site-a", "client": "hub"}
    assert link.server.cn == "site-a" and link.client.cn == "hub"
    assert link.server.peer == wire.Hello(1, "site-a", 1500, 0)
    assert link.client.peer.node == "hub"
    assert link.server.up_since is not None and link.client.up_since is not None
    assert link.closes == []


def test_snapshot_has_the_documented_keys(link, loop):
    link.client.send_frame(PLAIN_HDR + bytes(60))
    run_until(loop, lambda: link.frames["server"], what="one frame")
    snap = link.server.snapshot(loop.clock() + 2.0)
    assert SNAPSHOT_KEYS <= set(snap)
    assert snap["node"] == "site-a" and snap["cn"] == "site-a"
    assert snap["remote"].startswith("127.0.0.1:")
    assert snap["state"] == "up"
    assert snap["uptime_s"] >= 2.0
    assert (snap["frames_in"], snap["bytes_in"], snap["frames_out"], snap["drops"]) == (1, 60, 0, 0)
    client = link.client.snapshot(loop.clock())
    assert client["remote"] == f"127.0.0.1:{link.port}"
    assert (client["frames_out"], client["bytes_out"]) == (1, 60)
    assert type(snap["id"]) is int and type(client["id"]) is int
    assert snap["id"] != client["id"]
    assert link.server.snapshot(loop.clock() + 60.0)["id"] == snap["id"]   # time moves, id stays


def test_a_new_session_gets_an_id_never_used_before(link, loop, ctx, make_link):
    first = {link.server.snapshot(loop.clock())["id"], link.client.snapshot(loop.clock())["id"]}
    link.client.goodbye("reconnecting")
    run_until(loop, lambda: link.reason("server"), what="the first session to end")
    again = make_link(ctx["hub"], ctx["spoke"])     # the same peers, connected again
    run_until(loop, again.up, what="the second session up")
    second = {again.server.snapshot(loop.clock())["id"], again.client.snapshot(loop.clock())["id"]}
    assert len(first) == len(second) == 2
    assert not first & second, (first, second)


# -- frames --------------------------------------------------------------------------


def test_frames_both_ways_arrive_intact_and_in_order(link, loop):
    rng = random.Random(1)
    up = [numbered(i, rng.randint(14, 1514), rng) for i in range(50)]
    down = [numbered(i, rng.randint(14, 1514), rng) for i in range(50)]
    for a, b in zip(up, down):
        link.client.send_frame(PLAIN_HDR + a)
        link.server.send_frame(PLAIN_HDR + b)
    run_until(loop, lambda: len(link.frames["server"]) == 50 and len(link.frames["client"]) == 50,
              what="50 frames each way")
    assert link.frames["server"] == up
    assert link.frames["client"] == down


def test_many_frames_sent_in_one_pass_arrive(link, loop):
    rng = random.Random(2)
    frames = [numbered(i, rng.randint(14, 1514), rng) for i in range(2000)]

    buffered = []

    def burst():
        for f in frames:
            link.client.send_frame(PLAIN_HDR + f)
        buffered.append(link.client.buffered)

    loop.call_later(0, burst)
    run_until(loop, lambda: len(link.frames["server"]) >= 2000, what="2000 frames")
    assert buffered[0] > transport.READ_BUDGET_B     # all queued before one flush
    assert link.frames["server"] == frames
    total = sum(map(len, frames))
    assert (link.client.frames_out, link.client.bytes_out) == (2000, total)
    assert (link.server.frames_in, link.server.bytes_in) == (2000, total)
    assert link.client.drops == link.server.drops == 0


def test_a_60_kib_frame(link, loop):
    big = random.Random(3).randbytes(60 * 1024)
    link.server.send_frame(PLAIN_HDR + big)
    run_until(loop, lambda: link.frames["client"], what="the big frame")
    assert link.frames["client"] == [big]


def test_keepalive_is_accepted(link, loop):
    seen = []
    events = link.server.conn.events

    def recording():
        out = events()
        seen.extend(out)
        return out

    link.server.conn.events = recording
    link.client.send_keepalive()
    run_until(loop, lambda: wire.Keepalive() in seen, what="the keepalive")
    link.client.send_frame(PLAIN_HDR + bytes(64))
    run_until(loop, lambda: link.frames["server"], what="a frame after the keepalive")
    assert link.server.state == "up" and link.closes == []


def test_frames_are_dropped_and_counted_when_not_up(link):
    link.client.close("done")
    link.client.send_frame(PLAIN_HDR + bytes(64))
    link.client.send_keepalive()
    assert link.client.drops == 1 and link.client.frames_out == 0


# -- ending --------------------------------------------------------------------------


def test_goodbye_closes_both_sides_with_the_reason(link, loop):
    link.client.goodbye("maintenance")
    assert link.client.state == "closed"
    assert link.reason("client") == "goodbye: maintenance"
    run_until(loop, lambda: link.reason("server"), what="the server to close")
    assert link.reason("server") == "peer said goodbye (maintenance)"
    assert [side for side, _ in link.closes] == ["client", "server"]


def fill_a_peer_that_reads_nothing(link, loop) -> None:
    """Pause the server and send to it until the kernel holds all it will and frames
    queue in the client session (congested)."""
    link.server.pause()
    frame = PLAIN_HDR + bytes(1500)

    def pump():
        if link.client.congested:     # checked after the last pass flushed what it could
            loop.stop()
            return
        for _ in range(64):
            link.client.send_frame(frame)
        loop.call_later(0, pump)

    loop.call_later(0, pump)
    run_bounded(loop, timeout_s=10)


def test_goodbye_to_a_peer_that_reads_nothing_returns_at_once_and_the_timer_closes(
        link, loop):
    c = link.client
    fill_a_peer_that_reads_nothing(link, loop)
    drops = c.drops
    t0 = time.perf_counter()
    c.goodbye("bye", linger_s=0.3)
    assert time.perf_counter() - t0 < 0.05           # it used to block the loop for linger_s
    assert c.state == "closing" and link.reason("client") is None
    c.send_frame(PLAIN_HDR + bytes(60))              # nothing goes after the goodbye
    assert c.drops == drops + 1
    started = loop.clock()
    served = []
    loop.call_later(0.05, lambda: served.append(loop.clock() - started))
    run_until(loop, lambda: link.reason("client"), timeout_s=2, what="the linger to end")
    assert served and served[0] < 0.2                 # the loop went on meanwhile
    assert link.reason("client") == "goodbye: bye" and c.state == "closed"
    assert loop.clock() - started >= 0.25


def test_goodbye_closes_once_the_backlog_has_left_not_at_the_linger(link, loop):
    rng = random.Random(6)
    frames = [numbered(i, 1500, rng) for i in range(3000)]
    link.server.pause()                               # the backlog waits in the session
    for f in frames:
        link.client.send_frame(PLAIN_HDR + f)
    started = loop.clock()
    link.client.goodbye("bye", linger_s=5)
    link.server.resume()
    run_until(loop, lambda: link.reason("server"), timeout_s=4, what="the server to close")
    assert link.frames["server"] == frames            # every frame, then the goodbye
    assert link.reason("server") == "peer said goodbye (bye)"
    assert link.reason("client") == "goodbye: bye"
    assert loop.clock() - started < 4


def stub_node(loop, session, linger_s):
    """What Node.stop uses of a node, with one peer."""
    return SimpleNamespace(stopping=False, notifier=None, loop=loop,
                           peer_sessions=lambda: [session],
                           _say_goodbye=lambda: session.goodbye("stopping", linger_s=linger_s))


def test_stop_ends_the_loop_once_the_goodbye_has_left(link, loop):
    loop.call_later(0, lambda: Node.stop(stub_node(loop, link.client, 0.5), "SIGTERM"))
    started = loop.clock()
    run_bounded(loop, timeout_s=2)
    assert loop.clock() - started < 0.1
    assert link.reason("client") == "goodbye: stopping"


def test_stop_waits_for_a_goodbye_at_most_goodbye_wait_s(link, loop):
    fill_a_peer_that_reads_nothing(link, loop)
    loop.call_later(0, lambda: Node.stop(stub_node(loop, link.client, 10), "SIGTERM"))
    started = loop.clock()
    run_bounded(loop, timeout_s=5)
    assert GOODBYE_WAIT_S <= loop.clock() - started < GOODBYE_WAIT_S + 0.3
    assert link.client.state == "closed" and link.reason("client") == "goodbye: stopping"


def test_peer_closing_the_tcp_connection(link, loop):
    link.client.close("just gone")
    run_until(loop, lambda: link.reason("server"), what="the server to close")
    assert link.reason("server") == "peer closed the connection"


def test_on_up_problem_closes_with_it_and_the_peer_hears_a_goodbye(loop, ctx, make_link):
    lk = make_link(ctx["hub"], ctx["spoke"], server_up_problem="refused: not today")
    run_until(loop, lambda: lk.reason("server") and lk.reason("client"), what="both to close")
    assert lk.reason("server") == "refused: not today"
    assert lk.reason("client") == "peer said goodbye (refused: not today)"
    assert lk.server.up_since is None


def test_garbage_after_the_hellos_is_a_protocol_violation(link, loop):
    link.client.out.put(b"\xee" + bytes(7))          # raw bytes inside TLS
    link.client.flush()
    run_until(loop, lambda: link.reason("server") and link.reason("client"),
              what="both to close")
    assert link.reason("server") == "protocol violation: unknown record type 0xee"
    assert link.reason("client") == "peer said goodbye (unknown record type 0xee)"


def test_plain_tls_client_sending_garbage_is_a_protocol_violation(loop, ctx, make_link):
    lk = make_link(ctx["hub"])
    heard = []

    def client():
        with socket.create_connection(("127.0.0.1", lk.port), timeout=5) as raw:
            with ctx["spoke"].wrap_socket(raw) as tls:
                tls.sendall(b"GET / HTTP/1.1\r\n\r\n")
                try:
                    while chunk := tls.recv(4096):
                        heard.append(chunk)
                except (ssl.SSLError, OSError):
                    pass

    t = threading.Thread(target=client, daemon=True)
    t.start()
    try:
        run_until(loop, lambda: lk.reason("server"), what="the server to close")
    finally:
        t.join(5)
    assert not t.is_alive()
    assert lk.reason("server").startswith("protocol violation: ")
    # the client heard our hello and then a goodbye naming the fault
    conn = wire.Connection("probe", 1500)
    conn.hello()
    conn.receive_data(b"".join(heard))
    events = conn.events()
    assert isinstance(events[0], wire.Hello) and events[0].node == "hub"
    assert isinstance(events[-1], wire.Goodbye) and "unknown record type 0x47" in events[-1].reason


def test_handshake_timeout(loop, ctx, make_link):
    lk = make_link(ctx["hub"], thresholds=Thresholds(handshake_timeout_s=0.05))
    with socket.create_connection(("127.0.0.1", lk.port), timeout=5):   # never speaks TLS
        run_until(loop, lambda: lk.reason("server"), what="the handshake timeout")
    assert lk.reason("server").startswith("no handshake within")
    assert lk.server.state == "closed"


def test_client_certificate_from_another_ca_is_refused(loop, ctx, make_link):
    lk = make_link(ctx["hub"], ctx["rogue"])
    run_until(loop, lambda: lk.reason("server") and lk.reason("client"), what="both to close")
    assert lk.reason("server").startswith("handshake refused")
    assert lk.ups == {}
    assert lk.client.state == "closed" and lk.client.up_since is None
    # normally the hub's alert ("hub refused us: tlsv1 alert unknown ca"); a reset may win
    assert lk.reason("client").startswith(("hub refused us: ", "connection lost"))


def test_server_with_a_certificate_from_another_ca_is_refused(loop, ctx, make_link, tmp_path):
    pki.init_ca(tmp_path)
    pki.issue(tmp_path, "hub", "hub")
    lk = make_link(pki.hub_context(tls_for(tmp_path, "hub")), ctx["spoke"])
    run_until(loop, lambda: lk.reason("client"), what="the client to refuse")
    assert lk.reason("client").startswith("handshake refused: certificate verify failed")
    assert lk.ups == {}


# -- backpressure --------------------------------------------------------------------


SMALL_WATER = {"high_water_b": 64 * 1024, "low_water_b": 16 * 1024}


def test_backpressure_pauses_and_resumes_the_source(link_with, loop):
    link = link_with(**SMALL_WATER)
    rng = random.Random(4)
    sent = []
    source = FakePort("tap")
    link.server.pause()

    def pump():
        # Checked at the start of a pass, after the last pass flushed what it could.
        if link.client.congested:
            loop.stop()
            return
        for _ in range(64):
            f = numbered(len(sent), 1500, rng)
            link.client.send_frame(PLAIN_HDR + f)
            sent.append(f)
        loop.call_later(0, pump)

    loop.call_later(0, pump)
    run_bounded(loop, timeout_s=10)
    assert link.client.congested
    link.client.add_waiter(source)
    loop.call_later(0.02, loop.stop)                 # a few passes with the reader paused
    loop.run()
    assert link.client.congested and source.resumes == 0
    received_while_paused = len(link.frames["server"])
    assert received_while_paused < len(sent)

    link.server.resume()
    run_until(loop, lambda: len(link.frames["server"]) == len(sent), timeout_s=10,
              what="every frame after resume")
    assert source.resumes == 1
    assert link.client.waiters == set()
    assert link.client.buffered < SMALL_WATER["low_water_b"] and not link.client.congested
    assert link.frames["server"] == sent
    assert link.client.drops == 0


def test_closing_a_session_resumes_its_waiters(link):
    source = FakePort("tap")
    link.client.add_waiter(source)
    link.client.close("gone")
    assert source.resumes == 1


def test_frames_past_the_hard_cap_are_dropped_and_counted(link_with, loop):
    link = link_with(hard_cap_b=100_000, **SMALL_WATER)
    frame = bytes(1000)
    for _ in range(200):                              # one pass: nothing is flushed yet
        link.client.send_frame(PLAIN_HDR + frame)
    c = link.client
    assert c.drops > 0 and c.frames_out + c.drops == 200
    assert c.buffered <= 100_000 + wire.HEADER_LEN + len(frame)
    assert c.bytes_out == c.frames_out * len(frame)
    run_until(loop, lambda: len(link.frames["server"]) == c.frames_out, what="the kept frames")
    assert c.snapshot(loop.clock())["drops"] == c.drops


# -- stalled destinations ------------------------------------------------------------


class KernelGate:
    """Stands in for a peer that reads nothing: while closed, the session's hand-off to
    the kernel takes nothing (as when the socket buffers are full); opened, it is real."""

    def __init__(self, session, monkeypatch):
        self.closed = True
        self.trickle_b = 0
        self.session = session
        self.real = session._send_out
        monkeypatch.setattr(session, "_send_out", self)

    def __call__(self, out, sock):
        if self.trickle_b:            # the kernel takes a little, then is full again
            out.consume(min(self.trickle_b, out.end - out.start))
            return False
        return False if self.closed else self.real(out, sock)

    def open(self):
        self.closed = False
        self.session.loop.want_flush(self.session, self.session.flush)


def congest(session) -> list:
    """Queue numbered frames until the session is congested; return them."""
    rng = random.Random(5)
    sent = []
    while not session.congested:
        f = numbered(len(sent), 1500, rng)
        session.send_frame(PLAIN_HDR + f)
        sent.append(f)
    return sent


def queued(session) -> int:
    return session.out.end - session.out.start


def test_a_destination_that_stays_paused_stalls_then_drops_past_high_water(
        link_with, loop, monkeypatch):
    link = link_with(stall_s=0.05, **SMALL_WATER)
    c = link.client
    high, low = SMALL_WATER["high_water_b"], SMALL_WATER["low_water_b"]
    cap = c.thresholds.hard_cap_b
    gate = KernelGate(c, monkeypatch)
    sent = congest(c)
    source = FakePort("tap")
    source.pause()
    started = loop.clock()
    c.add_waiter(source)
    loop.call_later(0.02, loop.stop)
    loop.run()
    assert not c.stalled and source.resumes == 0           # not before STALL_S
    run_until(loop, lambda: c.stalled, timeout_s=2, what="the session to stall")
    assert loop.clock() - started >= 0.05
    assert source.resumes == 1 and not source.paused
    assert c.waiters == set() and c._stall_timer is None
    assert c.snapshot(loop.clock())["stalled"] is True

    # stalled: frames past high water are dropped, far below the hard cap
    frame = PLAIN_HDR + bytes(1500)
    n = 2 * high // 1500
    for _ in range(n):
        c.send_frame(frame)
    kept = c.frames_out - len(sent)
    assert c.drops > 0 and kept + c.drops == n
    assert queued(c) <= high + wire.HEADER_LEN + 1500
    assert high + wire.HEADER_LEN + 1500 < cap

    # it stays stalled while nothing drains
    loop.call_later(0.05, loop.stop)
    loop.run()
    assert c.stalled

    # and clears once drained below low water, not before
    cleared_at = []
    flush = c.flush

    def watched_flush():
        was = c.stalled
        flush()
        if was and not c.stalled:
            cleared_at.append(queued(c))

    monkeypatch.setattr(c, "flush", watched_flush)
    gate.open()
    run_until(loop, lambda: not c.stalled, timeout_s=10, what="the stall to clear")
    assert cleared_at and cleared_at[0] < low
    run_until(loop, lambda: len(link.frames["server"]) == c.frames_out, timeout_s=10,
              what="every frame kept")
    assert link.frames["server"][:len(sent)] == sent

    # no longer stalled: past high water frames are queued again (up to the hard cap)
    drops = c.drops
    for _ in range(n):
        c.send_frame(frame)
    assert c.drops == drops and c.congested


def test_a_stall_clears_only_below_low_water(link_with, loop, monkeypatch):
    link = link_with(stall_s=0.01, **SMALL_WATER)
    c = link.client
    gate = KernelGate(c, monkeypatch)
    congest(c)
    c.add_waiter(FakePort("tap"))
    run_until(loop, lambda: c.stalled, timeout_s=2, what="the session to stall")
    gate.trickle_b = 4096               # bytes taken per flush; the stream is lost after this
    levels = []
    while c.stalled:
        assert len(levels) < 100
        c.flush()
        levels.append((queued(c), c.stalled))
    assert len(levels) > 5
    assert all(stalled == (q >= SMALL_WATER["low_water_b"]) for q, stalled in levels)


def test_a_destination_that_drains_in_time_never_stalls(link_with, loop, monkeypatch):
    link = link_with(stall_s=0.25, **SMALL_WATER)
    c = link.client
    gate = KernelGate(c, monkeypatch)
    congest(c)
    first, second = FakePort("tap"), FakePort("site-b")
    c.add_waiter(first)
    timer = c._stall_timer
    assert timer is not None and not timer.cancelled
    c.add_waiter(second)
    assert c._stall_timer is timer                   # one timer for all the waiters
    gate.open()
    run_until(loop, lambda: first.resumes and second.resumes, timeout_s=2,
              what="the waiters to be resumed")
    assert timer.cancelled and c._stall_timer is None
    assert not c.congested
    loop.call_later(0.3, loop.stop)                  # past STALL_S
    loop.run()
    assert not c.stalled and first.resumes == second.resumes == 1


def test_close_cancels_the_stall_timer(link_with, loop):
    link = link_with(stall_s=0.02)
    source = FakePort("tap")
    link.client.add_waiter(source)
    timer = link.client._stall_timer
    link.client.close("gone")
    assert timer.cancelled and link.client._stall_timer is None
    assert source.resumes == 1
    loop.call_later(0.05, loop.stop)
    loop.run()
    assert not link.client.stalled and source.resumes == 1


# -- closing on a dead connection ----------------------------------------------------


def test_close_with_goodbye_on_a_reset_connection_reports_once(link, loop):
    client_sock = link.client.sock
    client_sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    loop.forget(client_sock)
    client_sock.close()                                # RST
    readable, _, _ = select.select([link.server.sock], [], [], 5)
    assert readable
    link.server.close("peer silent for 20 s", goodbye="timeout")
    assert [r for side, r in link.closes if side == "server"] == ["peer silent for 20 s"]


# -- offloads ------------------------------------------------------------------------


def test_both_offering_vnet_carry_super_frames_whole(loop, ctx, make_link):
    lk = make_link(ctx["hub"], ctx["spoke"], server_caps=wire.CAP_VNET_HDR,
                   client_caps=wire.CAP_VNET_HDR)
    run_until(loop, lk.up, what="both sessions up")
    assert lk.server.vnet and lk.client.vnet
    big = tcp_super_frame(b"x" * 20000)
    lk.client.send_frame(big)
    run_until(loop, lambda: lk.vnet_frames["server"], what="the super-frame")
    assert lk.vnet_frames["server"] == [big]
    assert lk.server.snapshot(loop.clock())["vnet"] is True
    assert lk.client.soft_offloads == 0


@pytest.mark.parametrize("server_caps,client_caps", [(wire.CAP_VNET_HDR, 0),
                                                     (0, wire.CAP_VNET_HDR)])
def test_a_peer_without_offloads_gets_segmented_plain_frames(loop, ctx, make_link,
                                                             server_caps, client_caps):
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    lk = make_link(ctx["hub"], ctx["spoke"], server_caps=server_caps, client_caps=client_caps)
    run_until(loop, lk.up, what="both sessions up")
    assert not lk.server.vnet and not lk.client.vnet
    lk.client.send_frame(tcp_super_frame(b"x" * 20000))
    run_until(loop, lambda: len(lk.frames["server"]) >= 14, what="the segments")
    got = lk.frames["server"]
    assert len(got) == 14 and lk.client.soft_offloads == 1
    assert all(len(f) <= 1514 for f in got)
    assert all(v[:10] == PLAIN_HDR for v in lk.vnet_frames["server"])
    payload = b""
    for f in got:
        pkt = Ether(f)
        ip, tcp = pkt[IP], pkt[TCP]
        fresh = Ether(f)     # checksums as sent must equal what scapy recomputes
        del fresh[IP].chksum, fresh[TCP].chksum
        fresh = Ether(bytes(fresh))
        assert (fresh[IP].chksum, fresh[TCP].chksum) == (ip.chksum, tcp.chksum)
        payload += bytes(tcp.payload)
    assert payload == b"x" * 20000


def test_a_frame_that_cannot_be_segmented_is_dropped_and_counted(link, loop):
    bad = struct.pack("<BBHHHH", 1, 1, 54, 1448, 200, 16) + bytes(60)   # csum_start past end
    link.client.send_frame(bad)
    link.client.send_frame(PLAIN_HDR + bytes(64))
    run_until(loop, lambda: link.frames["server"], what="the good frame")
    assert link.frames["server"] == [bytes(64)]
    assert link.client.offload_errors == 1 and link.client.state == "up"
    assert link.client.snapshot(loop.clock())["offload_errors"] == 1


# -- the send buffer -----------------------------------------------------------------


def test_flood_limits_reach_a_peer_that_offered_to_apply_them(loop, ctx, make_link):
    lk = make_link(ctx["hub"], ctx["spoke"], server_caps=wire.CAP_FLOOD_LIMITS,
                   client_caps=wire.CAP_FLOOD_LIMITS | wire.CAP_VNET_HDR)
    run_until(loop, lk.up, what="both sessions up")
    assert lk.server.flood_limits and lk.client.flood_limits and not lk.server.vnet
    lk.server.send_limits(1000, 2000, 3000)
    lk.server.send_frame(PLAIN_HDR + bytes(60))
    run_until(loop, lambda: lk.frames["client"], what="the frame after the limits")
    assert lk.limits["client"] == [wire.Limits(1000, 2000, 3000)]
    assert lk.server.snapshot(loop.clock())["flood_limits"] is True


@pytest.mark.parametrize("server_caps,client_caps", [(wire.CAP_FLOOD_LIMITS, 0),
                                                     (0, wire.CAP_FLOOD_LIMITS)])
def test_flood_limits_are_not_sent_unless_both_offer(loop, ctx, make_link, server_caps,
                                                     client_caps):
    lk = make_link(ctx["hub"], ctx["spoke"], server_caps=server_caps, client_caps=client_caps)
    run_until(loop, lk.up, what="both sessions up")
    assert not lk.server.flood_limits and not lk.client.flood_limits
    assert lk.server.snapshot(loop.clock())["flood_limits"] is False
    with pytest.raises(LocalProtocolError, match="not negotiated"):
        lk.server.send_limits(1, 2, 3)


def test_send_buffer_keeps_order_across_puts_and_partial_consumes():
    buf = transport.SendBuffer()
    buf.put(b"abc")
    buf.put2(b"HD", memoryview(b"payload"))
    assert len(buf) == 12 and bytes(buf.data[buf.start:buf.end]) == b"abcHDpayload"
    buf.consume(5)
    assert bytes(buf.data[buf.start:buf.end]) == b"payload"
    buf.put(b"!")
    buf.consume(8)
    assert len(buf) == 0 and (buf.start, buf.end) == (0, 0)


def test_send_buffer_reuses_its_storage_once_drained():
    buf = transport.SendBuffer()
    buf.put(bytes(64 * 1024))
    storage = buf.data
    buf.consume(64 * 1024)
    buf.put2(b"\x02\x00\x00\x10", bytes(16))       # written into the same memory
    assert buf.data is storage and len(buf) == 20 and len(storage) == 64 * 1024


def test_send_buffer_gives_back_big_storage_and_compacts_a_long_sent_prefix():
    buf = transport.SendBuffer()
    buf.put(bytes(transport.KEEP_B + 1))
    buf.consume(transport.KEEP_B + 1)
    assert len(buf.data) == 0                       # released, not kept at 2 MiB
    buf.put(bytes(transport.HIGH_WATER_B + 10))
    buf.put(b"tail")
    buf.consume(transport.HIGH_WATER_B + 5)         # most of it sent: the prefix goes
    assert buf.start == 0 and bytes(buf.data[:buf.end]) == bytes(5) + b"tail"


SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def queued_in(sock) -> int:
    """Bytes waiting in a socket's receive queue."""
    n = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, n)
    return n[0]


def _frames_per_read(session, monkeypatch) -> list:
    """Frames each read of `session` delivered (the first entry is before any read)."""
    marks = []
    recv = session._recv

    def counted():
        marks.append(session.frames_in)
        return recv()
    monkeypatch.setattr(session, "_recv", counted)
    return marks


def test_reads_are_budgeted_in_frames_so_small_frames_get_no_more_than_large(
        link, loop, monkeypatch):
    """A peer flooding 60-byte frames gets about FRAME_BUDGET frames a read, as one
    sending 1500-byte frames does, instead of a byte budget's 20 times more. The frames
    wait in the kernel first (the receiver paused), as they do when the hub is busy, so
    any read could take a full READ_BUDGET_B."""
    if os.geteuid() != 0:
        pytest.skip("needs root for SO_RCVBUFFORCE (a receive queue past net.core.rmem_max)")
    link.server.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
    rng = random.Random(4)
    for size, count in ((60, 40000), (1500, 3000)):
        frames = [numbered(i, size, rng) for i in range(count)]
        link.frames["server"].clear()
        link.server.pause()
        for f in frames:
            link.client.send_frame(PLAIN_HDR + f)
        run_until(loop, lambda: link.client.buffered == 0
                  and queued_in(link.server.sock) >= 2 * transport.READ_BUDGET_B,
                  what="the frames in the receiver's queue")
        marks = _frames_per_read(link.server, monkeypatch)
        link.server.resume()
        run_until(loop, lambda: len(link.frames["server"]) >= count, what=f"{count} frames")
        assert link.frames["server"] == frames
        per_read = [b - a for a, b in zip(marks, marks[1:] + [link.server.frames_in])]
        # the first read is sized by the one before it; from the second on:
        assert max(per_read[2:]) <= 2 * transport.FRAME_BUDGET, (size, per_read[:8])
    assert link.server._read_budget >= 200 * 1024   # large frames still read in big gulps
