"""Daemons killed, restarted, stopped, attacked and impersonated, each in a fresh lab."""

import contextlib
import os
import re
import signal
import ssl
import time

import pytest

import labnet

pytestmark = pytest.mark.netns


def assert_ping(lab, src, dst, count=5):
    r = lab.ping(lab.ns(src), lab.ip(dst), count=count)
    assert r.ok, f"ping {src} -> {dst}: {r}\n{r.output}"


def hub_sessions_named(lab, name):
    return [s for s in lab.status("hub")["sessions"] if s["node"] == name]


# ----------------------------------------------------------------------------- 8


def test_spoke_kill9_and_restart(make_lab):
    lab = make_lab(keepalive=(1, 4))
    lab.wait_ping(lab.ns("site-a"), lab.ip("site-b"))
    mac_before = lab.tap_mac("site-a")
    old = hub_sessions_named(lab, "site-a")[0]
    old_remote = old["remote"]

    lab.kill("site-a")
    assert lab.nodes["site-a"].proc.returncode == -signal.SIGKILL
    lab.start("site-a")

    def back():
        sessions = hub_sessions_named(lab, "site-a")
        return len(sessions) == 1 and sessions[0]["remote"] != old_remote
    lab.wait_until(back, 30, what="site-a's new session at the hub", alive=["hub", "site-a"])
    lab.wait_sessions()
    assert lab.tap_mac("site-a") == mac_before, "TAP MAC changed across a restart"
    lab.wait_ping(lab.ns("site-a"), lab.ip("site-b"))
    assert_ping(lab, "site-a", "site-b")
    assert_ping(lab, "site-b", "site-a")
    new = hub_sessions_named(lab, "site-a")
    assert len(new) == 1
    assert new[0]["id"] != old["id"], "the new session kept the old session's id"
    assert len(hub_sessions_named(lab, "site-b")) == 1


# ----------------------------------------------------------------------------- 9


def test_hub_kill9_and_restart_spokes_reconnect(make_lab):
    lab = make_lab(keepalive=(1, 4), reconnect=(0.5, 2))
    lab.wait_ping(lab.ns("site-a"), lab.ip("site-b"))
    hub_mac = lab.tap_mac("hub")

    lab.kill("hub")
    lab.wait_until(lambda: not lab.sessions("site-a") and not lab.sessions("site-b"), 15,
                   what="spokes to notice the hub is gone", alive=["site-a", "site-b"])
    lab.start("hub")
    lab.wait_sessions(timeout_s=30)
    assert lab.tap_mac("hub") == hub_mac, "hub TAP MAC changed across a restart"
    lab.wait_ping(lab.ns("site-a"), lab.ip("site-b"))
    assert_ping(lab, "site-a", "site-b")
    assert_ping(lab, "site-b", "hub")
    assert sorted(s["node"] for s in lab.status("hub")["sessions"]) == ["site-a", "site-b"]


# ---------------------------------------------------------------------------- 10


def test_spoke_with_foreign_ca_certificate_is_refused(make_lab):
    lab = make_lab(spokes=["site-a", "site-b", "rogue"], start=False)
    lab.start("hub")
    lab.wait_ready("hub")
    lab.start("site-a")
    lab.start("site-b")
    lab.wait_sessions(spokes=["site-a", "site-b"])
    before = {s["node"]: s for s in lab.status("hub")["sessions"]}

    foreign = lab.foreign_pki("rogue")
    # trusts the real CA (so it would accept the hub) but shows a foreign certificate
    lab.update_config("rogue", {"tls": {"cert": str(foreign / "rogue.crt"),
                                        "key": str(foreign / "rogue.key")}})
    log_mark = len(lab.log("hub"))
    lab.start("rogue")

    def attempts():
        hub_says = len(re.findall(r"refused", lab.log("hub")[log_mark:]))
        rogue_says = len(re.findall(r"refused", lab.log("rogue", since_start=True)))
        assert "rogue" not in {s["node"] for s in lab.status("hub")["sessions"]}
        return hub_says >= 1 and (max(hub_says, rogue_says) >= 2 or not lab.running("rogue"))
    lab.wait_until(attempts, 20, what="the hub to refuse the rogue (twice, or it gives up)",
                   alive=["hub"])
    refused = [ln for ln in lab.log("hub")[log_mark:].splitlines() if "refused" in ln]
    assert any(re.search(r"verif|certificate|unknown ca", ln, re.I) for ln in refused), refused
    st = lab.status("hub")
    assert sorted(s["node"] for s in st["sessions"]) == ["site-a", "site-b"]
    assert all(s["cn"] != "rogue" for s in st["sessions"])
    if lab.running("rogue"):
        assert lab.status("rogue")["sessions"] == []
    for s in st["sessions"]:     # same sessions as before, not re-established
        assert s["id"] == before[s["node"]]["id"], f"{s['node']}'s session was re-established"
        assert s["remote"] == before[s["node"]]["remote"]
    assert_ping(lab, "site-a", "site-b")


# ---------------------------------------------------------------------------- 11


def _garbage_connections(lab, n=20):
    """Open n hostile connections to the hub from site-b's underlay; returns the sockets."""
    hub = (lab.nodes["hub"].underlay_ip, lab.port)
    socks = []
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    for i in range(n):
        s = lab.socket_in(lab.ns("site-b"))
        s.settimeout(5)
        s.connect(hub)
        kind = i % 5
        with contextlib.suppress(OSError):
            if kind == 0:
                s.sendall(os.urandom(4096))                       # random bytes
            elif kind == 1:
                s.sendall(b"GET / HTTP/1.1\r\nHost: hub\r\n\r\n")  # plaintext
            elif kind == 2:
                pass                                              # half-open, silent
            elif kind == 3:
                s.sendall(b"\x16\x03\x01\x40\x00\x01")            # a stalled TLS record
            else:                                                 # TLS without a client cert
                s.settimeout(5)
                try:
                    t = tls.wrap_socket(s, server_hostname="hub")
                    t.sendall(b"x" * 100)
                    t.recv(100)
                    s = t
                except (ssl.SSLError, OSError):
                    pass
        socks.append(s)
    return socks


def test_garbage_connections_leave_the_hub_forwarding(make_lab):
    lab = make_lab(keepalive=(1, 5))
    lab.wait_ping(lab.ns("site-a"), lab.ip("site-b"))
    before = {s["node"]: s for s in lab.status("hub")["sessions"]}
    socks = _garbage_connections(lab)
    try:
        assert_ping(lab, "site-a", "site-b")           # while they are still open
        assert_ping(lab, "site-b", "hub")
        during = lab.status("hub")
        assert sorted(s["node"] for s in during["sessions"]) == ["site-a", "site-b"]
    finally:
        for s in socks:
            s.close()
    assert lab.running("hub"), lab.log_tail("hub")
    assert_ping(lab, "site-a", "site-b")
    after = {s["node"]: s for s in lab.status("hub")["sessions"]}
    assert sorted(after) == ["site-a", "site-b"]
    for name, s in after.items():      # the spokes' sessions lived through it
        assert s["id"] == before[name]["id"], f"{name}'s session was re-established"
        assert s["remote"] == before[name]["remote"]


# ---------------------------------------------------------------------------- 14


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_spoke_stops_cleanly_and_says_goodbye(make_lab, sig):
    lab = make_lab(keepalive=(5, 30))   # a timeout could not explain a prompt drop
    assert labnet.link_exists(lab.ns("site-a"), "l2vpn0")
    log_mark = len(lab.log("hub"))
    t0 = time.monotonic()
    rc = lab.stop("site-a", sig, timeout_s=10)
    assert rc == 0, lab.log_tail("site-a")
    assert not labnet.link_exists(lab.ns("site-a"), "l2vpn0"), "TAP left behind"
    lab.wait_until(lambda: not hub_sessions_named(lab, "site-a"), 5,
                   what="the hub to drop site-a", alive=["hub"])
    assert time.monotonic() - t0 < 5
    down = [ln for ln in lab.log("hub")[log_mark:].splitlines() if "site-a" in ln]
    assert any("goodbye" in ln for ln in down), down
    assert "Traceback" not in lab.log("site-a")
    assert [s["node"] for s in lab.status("hub")["sessions"]] == ["site-b"]
    assert_ping(lab, "site-b", "hub")


def test_hub_stops_cleanly_and_spokes_notice_at_once(make_lab):
    lab = make_lab(keepalive=(5, 30))
    rc = lab.stop("hub", signal.SIGTERM, timeout_s=10)
    assert rc == 0, lab.log_tail("hub")
    assert not labnet.link_exists(lab.ns("hub"), "l2hub0"), "hub TAP left behind"
    lab.wait_until(lambda: not lab.sessions("site-a") and not lab.sessions("site-b"), 5,
                   what="spokes to see the hub leave", alive=["site-a", "site-b"])
    assert "goodbye" in lab.log("site-a")
    assert "Traceback" not in lab.log("hub")
