"""Session lifetime at the edges: frozen peers are noticed, a CN connecting twice replaces."""

import os
import signal
import time

import pytest

pytestmark = pytest.mark.netns

KEEPALIVE = (1, 3)   # interval_s, timeout_s: a dead peer must be noticed within timeout_s + a tick


def _freeze(lab, name):
    os.killpg(lab.nodes[name].proc.pid, signal.SIGSTOP)


def _thaw(lab, name):
    os.killpg(lab.nodes[name].proc.pid, signal.SIGCONT)


def test_frozen_spoke_is_dropped_by_keepalive_timeout_others_unaffected(make_lab):
    lab = make_lab(keepalive=KEEPALIVE, reconnect=(0.5, 1))
    _freeze(lab, "site-a")
    try:
        t0 = time.monotonic()
        lab.wait_until(lambda: "site-a" not in lab.sessions("hub"), 15,
                       what="the hub to drop the frozen spoke", alive=["hub"])
        noticed_s = time.monotonic() - t0
        assert noticed_s <= KEEPALIVE[1] + 3, f"noticed after {noticed_s:.1f} s"
        assert "peer silent" in lab.log("hub")
        assert "site-b" in lab.sessions("hub")
        assert lab.ping(lab.ns("site-b"), lab.ip("hub"), count=3).ok
    finally:
        _thaw(lab, "site-a")
    lab.wait_sessions(timeout_s=20)
    lab.wait_ping(lab.ns("site-a"), lab.ip("site-b"))


def test_frozen_hub_is_noticed_by_spokes_and_they_come_back(make_lab):
    lab = make_lab(keepalive=KEEPALIVE, reconnect=(0.5, 1))
    _freeze(lab, "hub")
    try:
        t0 = time.monotonic()
        lab.wait_until(lambda: not lab.sessions("site-a") and not lab.sessions("site-b"), 15,
                       what="spokes to notice the frozen hub", alive=["site-a", "site-b"])
        noticed_s = time.monotonic() - t0
        assert noticed_s <= KEEPALIVE[1] + 3, f"noticed after {noticed_s:.1f} s"
        assert "peer silent" in lab.log("site-a")
        state = lab.status("site-a")["hub"]["state"]
        assert state != "up"
    finally:
        _thaw(lab, "hub")
    lab.wait_sessions(timeout_s=30)
    lab.wait_ping(lab.ns("site-a"), lab.ip("site-b"))


def test_second_session_with_same_cn_replaces_the_first(make_lab):
    lab = make_lab(spokes=["site-a", "site-b", "site-c"], start=False)
    lab.start("hub")
    lab.wait_ready("hub")
    lab.start("site-a")
    lab.wait_sessions(spokes=["site-a"])
    first = lab.sessions("hub")["site-a"]
    first_remote = first["remote"]
    # site-a's certificate, run from site-c's namespace under its own TAP and socket.
    clone = lab.update_config("site-a", {
        "tap": {"name": "l2clone0", "address": "198.19.0.99/24"},
        "management": {"socket": str(lab.workdir / "clone.sock")},
        "reconnect": {"initial_s": 30, "max_s": 30},
    }, path=lab.workdir / "site-a-clone.yaml")
    lab.start("site-c", config=clone)
    clone_ip = lab.nodes["site-c"].underlay_ip

    def replaced():
        sessions = [s for s in lab.status("hub")["sessions"] if s["node"] == "site-a"]
        assert len(sessions) <= 1, sessions
        return sessions and sessions[0]["remote"].startswith(f"{clone_ip}:") and sessions[0]
    clone_session = lab.wait_until(replaced, 15, what="the clone's session to replace site-a's",
                                   alive=["hub", "site-c"])
    assert first_remote.split(":")[0] != clone_ip
    assert clone_session["id"] != first["id"], "the replacing session kept the old id"
    assert "connected again" in lab.log("hub")
    assert "replaced by a newer session" in lab.log("site-a")
