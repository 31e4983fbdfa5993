import logging
import os
import socket
import stat

import pytest
from fakes import call_in_thread

from l2vpn.errors import L2VPNError, TransportError
from l2vpn.management import ManagementServer, query


@pytest.fixture
def sock_path(tmp_path):
    return tmp_path / "run" / "node.sock"      # the folder does not exist yet


@pytest.fixture
def server(loop, sock_path):
    requests = []

    def handler(command):
        requests.append(command)
        return {"node": "hub", "role": "hub", "sessions": [{"node": "site-a", "drops": 0}],
                "echo": command}

    srv = ManagementServer(loop, sock_path, handler)
    srv.requests = requests
    yield srv
    srv.close()


def ask(loop, path, command="status", timeout_s=5.0):
    """query() in a thread while the loop serves it."""
    return call_in_thread(loop, lambda: query(path, command, timeout_s=timeout_s), timeout_s + 1)


def test_status_round_trip(loop, server, sock_path):
    reply = ask(loop, sock_path)
    assert reply == {"node": "hub", "role": "hub", "sessions": [{"node": "site-a", "drops": 0}],
                     "echo": "status"}
    assert server.requests == ["status"]


def test_other_commands_reach_the_handler(loop, server, sock_path):
    assert ask(loop, sock_path, "macs")["echo"] == "macs"


def test_socket_mode_is_0600(server, sock_path):
    st = os.stat(sock_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_second_server_on_a_live_path_is_refused(loop, server, sock_path):
    with pytest.raises(TransportError, match="in use"):
        ManagementServer(loop, sock_path, lambda c: {})
    assert ask(loop, sock_path)["node"] == "hub"     # the first one still answers


def test_stale_socket_file_is_replaced(loop, tmp_path):
    path = tmp_path / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()                                   # the file stays, nobody listens
    assert path.exists()
    srv = ManagementServer(loop, path, lambda c: {"fresh": True})
    try:
        assert ask(loop, path) == {"fresh": True}
    finally:
        srv.close()
    assert not path.exists()


def test_close_removes_the_socket_file(loop, tmp_path):
    path = tmp_path / "x.sock"
    ManagementServer(loop, path, lambda c: {}).close()
    assert not path.exists()


def test_query_on_a_missing_path():
    with pytest.raises(L2VPNError, match="not found"):
        query("/nonexistent/l2vpn-test.sock")


def test_query_on_a_stale_socket(tmp_path):
    path = tmp_path / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()
    with pytest.raises(L2VPNError, match="stale socket"):
        query(path)


def test_query_on_a_regular_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(L2VPNError):
        query(path)


def test_handler_exception_becomes_an_error_reply_and_the_server_keeps_serving(loop, tmp_path):
    calls = []

    def handler(command):
        calls.append(command)
        if len(calls) == 1:
            raise RuntimeError("status is broken")
        return {"ok": True}

    srv = ManagementServer(loop, tmp_path / "h.sock", handler)
    try:
        assert ask(loop, tmp_path / "h.sock") == {"error": "RuntimeError: status is broken"}
        assert ask(loop, tmp_path / "h.sock") == {"ok": True}
    finally:
        srv.close()


def test_cannot_create_the_folder(loop, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(TransportError, match="cannot create"):
        ManagementServer(loop, blocker / "sub" / "n.sock", lambda c: {})


def test_unserialisable_reply_becomes_an_error_reply(loop, tmp_path):
    srv = ManagementServer(loop, tmp_path / "j.sock", lambda c: {"mac": b"\x02\x00"})
    try:
        reply = ask(loop, tmp_path / "j.sock", timeout_s=0.2)
    finally:
        srv.close()
    assert "error" in reply


def test_a_regular_file_at_the_socket_path_is_not_deleted(loop, tmp_path):
    path = tmp_path / "precious.yaml"
    path.write_text("node: hub\n")
    try:
        with pytest.raises(TransportError):
            ManagementServer(loop, path, lambda c: {}).close()
    finally:
        assert path.exists() and path.read_text() == "node: hub\n"


def test_a_failed_request_is_not_served_again_on_eof(loop, tmp_path, caplog):
    calls = []

    def handler(command):
        calls.append(command)
        return {"mac": b"\x02\x00"}

    srv = ManagementServer(loop, tmp_path / "k.sock", handler)
    try:
        with caplog.at_level(logging.CRITICAL, logger="l2vpn"):
            reply = ask(loop, tmp_path / "k.sock", timeout_s=0.2)
        assert "error" in reply
        loop.call_later(0.05, loop.stop)
        with caplog.at_level(logging.CRITICAL, logger="l2vpn"):
            loop.run()
    finally:
        srv.close()
    assert len(calls) == 1


def test_a_big_reply_to_a_slow_reader_never_blocks_the_loop(loop, tmp_path):
    """8 MiB of status to a client that reads only after a pause: the loop keeps ticking
    while it waits (the old blocking sendall stalled forwarding), and the reply arrives
    whole even though reading it takes longer than the request timeout."""
    import json
    import time
    big = {"macs": [{"mac": f"02:00:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                     "port": "site-a", "age_s": 1.0, "ips": []} for i in range(110_000)]}
    path = tmp_path / "big.sock"
    srv = ManagementServer(loop, path, lambda command: big)
    ticks = []
    loop.call_every(0.05, lambda: ticks.append(time.monotonic()))

    def slow_client():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(path))
        sock.sendall(b"status\n")
        time.sleep(2.5)                    # past CLIENT_TIMEOUT_S, reading nothing
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
            time.sleep(0.0005)
        sock.close()
        return json.loads(b"".join(chunks))

    try:
        t0 = time.monotonic()
        reply = call_in_thread(loop, slow_client, timeout_s=20)
        assert len(reply["macs"]) == 110_000
        during = [t for t in ticks if t0 + 0.5 < t < t0 + 2.5]
        gaps = [b - a for a, b in zip(during, during[1:])]
        assert len(during) >= 20 and max(gaps) < 0.5, (len(during), max(gaps, default=None))
    finally:
        srv.close()
