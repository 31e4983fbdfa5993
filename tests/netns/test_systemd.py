"""Real daemons as systemd runs them: readiness, status and watchdog over $NOTIFY_SOCKET
(a socket this test binds, as systemd does), and the units checked by systemd-analyze."""

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WATCHDOG_USEC = 400_000          # so the daemon pings every 0.2 s


class NotifySocket:
    """What systemd listens on: a Unix datagram socket; messages as {KEY: value} dicts."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.seen = []

    def next(self, timeout_s: float) -> dict | None:
        self.sock.settimeout(timeout_s)
        try:
            data = self.sock.recv(4096).decode()
        except socket.timeout:
            return None
        msg = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
        self.seen.append(msg)
        return msg

    def wait_for(self, pred, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            msg = self.next(left)
            if msg is not None and pred(msg):
                return msg
        raise AssertionError(f"no matching notify message in {timeout_s} s; saw {self.seen}")

    def close(self):
        self.sock.close()


@pytest.fixture
def notify(tmp_path, monkeypatch):
    """Bind a notify socket and hand it to daemons started from now on."""
    made = []

    def make(name: str) -> NotifySocket:
        ns = NotifySocket(tmp_path / f"{name}.notify")
        made.append(ns)
        monkeypatch.setenv("NOTIFY_SOCKET", str(ns.path))
        monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
        return ns
    yield make
    for ns in made:
        ns.close()


def test_hub_and_spoke_say_ready_then_status_watchdog_reload_and_stopping(make_lab, notify):
    lab = make_lab(spokes=["site-a"], start=False)
    hub = notify("hub")
    lab.start("hub")
    ready = hub.wait_for(lambda m: "READY" in m, 20)
    assert ready == {"READY": "1", "STATUS": "0 spokes up, 0 MACs"}
    # READY comes once everything is open: the management socket answers at once.
    assert lab.status("hub", timeout_s=2)["role"] == "hub"

    spoke = notify("site-a")
    lab.start("site-a")
    ready_a = spoke.wait_for(lambda m: "READY" in m, 20)
    assert ready_a["READY"] == "1" and ready_a["STATUS"].startswith("hub 198.18.0.1:7443")
    spoke.wait_for(lambda m: m.get("STATUS") == "connected to hub 198.18.0.1:7443", 20)
    hub.wait_for(lambda m: re.fullmatch(r"1 spoke up, \d+ MACs", m.get("STATUS", "")), 20)

    # The watchdog is pinged from the loop at half of WATCHDOG_USEC: 5 pings in 1.5 s.
    t0 = time.monotonic()
    for _ in range(5):
        hub.wait_for(lambda m: m.get("WATCHDOG") == "1", 1.0)
    assert time.monotonic() - t0 < 1.5

    # A reload is bracketed: RELOADING=1 (with the monotonic time) and then READY=1.
    assert lab.l2vpn("reload", "-s", str(lab.nodes["hub"].socket)).returncode == 0
    reloading = hub.wait_for(lambda m: m.get("RELOADING") == "1", 10)
    assert int(reloading["MONOTONIC_USEC"]) > 0
    hub.wait_for(lambda m: m.get("READY") == "1", 10)

    assert lab.stop("site-a") == 0
    stopping = spoke.wait_for(lambda m: "STOPPING" in m, 10)
    assert stopping == {"STOPPING": "1", "STATUS": "stopping (SIGTERM)"}
    hub.wait_for(lambda m: m.get("STATUS", "").startswith("0 spokes up"), 20)
    assert lab.stop("hub") == 0
    hub.wait_for(lambda m: "STOPPING" in m, 10)


def test_without_notify_socket_nothing_changes(make_lab, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    lab = make_lab(spokes=["site-a"])
    assert [s["node"] for s in lab.status("hub")["sessions"]] == ["site-a"]
    assert "notify" not in lab.log("hub")


UNITS = sorted((REPO / "configs").glob("*.service"))


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_units_pass_systemd_analyze_verify(unit, tmp_path):
    """The unit as installed, its l2vpn path pointed at this checkout's, verified offline."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("needs systemd-analyze (apt-get install systemd)")
    l2vpn = Path(shutil.which("l2vpn") or REPO / ".venv" / "bin" / "l2vpn")
    assert l2vpn.exists(), "the l2vpn command is not installed in this venv"
    text = unit.read_text().replace("/opt/l2vpn/bin/l2vpn", str(l2vpn))
    copy = tmp_path / unit.name
    copy.write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                          text=True, timeout=60,
                          env=dict(os.environ, SYSTEMD_LOG_LEVEL="warning"))
    problems = [line for line in (done.stdout + done.stderr).splitlines()
                if unit.name in line or "l2vpn" in line]
    assert done.returncode == 0 and not problems, done.stdout + done.stderr
