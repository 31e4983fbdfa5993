"""sd_notify over a socket the test binds, as systemd does: what is sent, and when not."""

import os
import socket
import time

import pytest

from l2vpn.sdnotify import Notifier


@pytest.fixture
def listener(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(2)
    yield path, sock
    sock.close()


def received(sock) -> dict:
    return dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())


def test_not_under_systemd_there_is_no_notifier():
    assert Notifier.from_environ({}) is None


def test_ready_status_watchdog_stopping_reach_the_socket(listener):
    path, sock = listener
    n = Notifier.from_environ({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "10000000"})
    assert n.watchdog_s == 10.0
    n.ready("0 spokes up, 0 MACs")
    assert received(sock) == {"READY": "1", "STATUS": "0 spokes up, 0 MACs"}
    n.status("0 spokes up, 0 MACs")                 # unchanged: not sent again
    n.status("1 spoke up, 3 MACs")
    assert received(sock) == {"STATUS": "1 spoke up, 3 MACs"}
    n.watchdog()
    assert received(sock) == {"WATCHDOG": "1"}
    n.reloading()
    got = received(sock)
    assert got["RELOADING"] == "1" and got["STATUS"] == "reloading the config"
    assert abs(int(got["MONOTONIC_USEC"]) - time.monotonic_ns() // 1000) < 5_000_000
    n.stopping("SIGTERM")
    assert received(sock) == {"STOPPING": "1", "STATUS": "stopping (SIGTERM)"}
    n.close()


def test_an_abstract_socket_name_starts_with_at():
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"l2vpn-test-{os.getpid()}"
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        n = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        n.watchdog()
        assert received(sock) == {"WATCHDOG": "1"}
        assert n.watchdog_s is None
    finally:
        sock.close()


def test_a_watchdog_meant_for_another_pid_is_not_ours(listener):
    path, _ = listener
    n = Notifier.from_environ({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "5000000",
                               "WATCHDOG_PID": str(os.getpid() + 1)})
    assert n.watchdog_s is None
    n = Notifier.from_environ({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "5000000",
                               "WATCHDOG_PID": str(os.getpid())})
    assert n.watchdog_s == 5.0


def test_an_unreachable_socket_is_a_warning_not_a_failure(tmp_path, caplog):
    assert Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone")}) is None
    assert "cannot reach systemd's notify socket" in caplog.text


def test_a_send_that_fails_is_logged_once(listener, caplog):
    path, sock = listener
    n = Notifier(str(path))
    sock.close()
    path.unlink()
    for _ in range(3):
        n.watchdog()
    assert caplog.text.count("cannot notify systemd") == 1
