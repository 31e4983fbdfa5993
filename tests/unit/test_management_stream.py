"""Streamed replies on the management socket, with the real event loop and real Unix
sockets: pulled as the client reads, bounded per pass, woken, ended by the client's
shutdown, closed when the client leaves or the server stops."""

import socket
import time

import pytest
from fakes import call_in_thread

from l2vpn.management import STREAM_BUDGET_B, ManagementServer, Stream, query


class Scripted(Stream):
    """A stream that says what the test puts in `chunks`; None there ends it."""

    timeout_s = None

    def __init__(self, chunks=()):
        self.chunks = list(chunks)
        self.pulls = []
        self.events = []

    def pull(self, limit):
        self.pulls.append(limit)
        if not self.chunks:
            return b""
        if self.chunks[0] is None:
            return None
        return self.chunks.pop(0)

    def client_done(self):
        self.events.append("client_done")
        self.chunks.append(b"bye")
        self.chunks.append(None)
        self.wake()

    def close(self):
        self.events.append("close")


@pytest.fixture
def served(loop, tmp_path):
    streams = []

    def handler(command):
        if command == "status":
            return {"ok": True}
        s = Scripted([b"hello "])
        streams.append(s)
        return s

    srv = ManagementServer(loop, tmp_path / "m.sock", handler)
    srv.streams = streams
    srv.path = str(tmp_path / "m.sock")
    yield srv
    srv.close()


def connect(path, command=b"stream\n"):
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(path)
    c.sendall(command)
    c.settimeout(5)
    return c


def recv_exactly(loop, sock, n):
    def read():
        got = b""
        while len(got) < n:
            chunk = sock.recv(n - len(got))
            assert chunk, got
            got += chunk
        return got
    return call_in_thread(loop, read)


def test_dict_replies_are_unchanged(loop, served):
    assert call_in_thread(loop, lambda: query(served.path)) == {"ok": True}


def test_a_stream_sleeps_until_woken_then_ends_on_client_shutdown(loop, served):
    c = connect(served.path)
    assert recv_exactly(loop, c, 6) == b"hello "
    s = served.streams[0]
    n = len(s.pulls)
    loop.call_later(0.1, loop.stop)
    loop.run()                              # nothing to say: not pulled again
    assert len(s.pulls) == n
    s.chunks.append(b"world")
    s.wake()
    assert recv_exactly(loop, c, 5) == b"world"
    c.shutdown(socket.SHUT_WR)

    def rest():
        out = b""
        while chunk := c.recv(100):
            out += chunk
        return out
    assert call_in_thread(loop, rest) == b"bye"
    assert s.events == ["client_done", "close"]
    c.close()


def test_the_client_leaving_closes_the_stream(loop, served):
    c = connect(served.path)
    assert recv_exactly(loop, c, 6) == b"hello "
    c.close()
    s = served.streams[0]
    deadline = time.monotonic() + 5
    while "close" not in s.events and time.monotonic() < deadline:
        loop.call_later(0.02, loop.stop)
        loop.run()
    assert "close" in s.events


def test_stopping_the_server_lets_streams_finish_then_closes_them(loop, served):
    c = connect(served.path)
    assert recv_exactly(loop, c, 6) == b"hello "
    s = served.streams[0]
    served.close()
    assert s.events == ["client_done", "close"]
    assert c.recv(100) == b"bye" and c.recv(100) == b""


class Endless(Stream):
    """Says as much as asked, forever; notes how much was pulled in each loop pass."""

    timeout_s = None

    def __init__(self, loop):
        self.loop = loop
        self.this_pass = 0
        self.passes = []

    def pull(self, limit):
        self.this_pass += limit
        self.loop.want_flush(self, self._pass_ends)
        return b"x" * limit

    def _pass_ends(self):
        self.passes.append(self.this_pass)
        self.this_pass = 0


def test_one_fast_reader_gets_a_bounded_share_of_each_pass(loop, tmp_path):
    endless = Endless(loop)
    srv = ManagementServer(loop, tmp_path / "e.sock", lambda c: endless)
    try:
        c = connect(str(tmp_path / "e.sock"))

        def reader():
            total = 0
            while total < 64 << 20:
                total += len(c.recv(1 << 20))
            return total
        assert call_in_thread(loop, reader, timeout_s=30) >= 64 << 20
        c.close()
        # the socket never stopped being writable, yet each pass pulled a budget at most
        assert len(endless.passes) >= 64 and max(endless.passes) <= STREAM_BUDGET_B
    finally:
        srv.close()
