"""Hub wiring of port security and loop detection, with fake ports: no sockets, no TAP."""

import dataclasses
import heapq
import json
import logging
import socket
from pathlib import Path

import pytest
from fakes import FakeClock, FakePort, FakeSession, edges

from l2vpn import guard, loopguard
from l2vpn import bridge as bridge_module
from l2vpn import hub as hub_module
from l2vpn.config import (
    GuardConfig,
    HubConfig,
    KeepaliveConfig,
    ListenConfig,
    ManagementConfig,
    PortConfig,
    StormConfig,
    SwitchConfig,
    TLSConfig,
)
from l2vpn.frame import BROADCAST
from l2vpn.bridge import REPORT_S
from l2vpn.hub import HUB_PORT, Hub
from l2vpn.eventloop import EventLoop
from l2vpn.offload import PLAIN_HDR
from l2vpn.switch import DROPS

MCAST = bytes.fromhex("01005e000001")


def mac(n: int) -> bytes:
    return bytes([0x02, 0, 0, 0, 0, n])


def eth(dst: bytes, src: bytes, size: int = 60) -> bytes:
    """A frame in vnet form (zero virtio-net header first), `size` bytes past the header."""
    return PLAIN_HDR + dst + src + b"\x08\x00" + bytes(size - 14)


def dhcp_offer(src: bytes) -> bytes:
    ip = bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0]) + bytes(4) + b"\xff" * 4
    return PLAIN_HDR + BROADCAST + src + b"\x08\x00" + ip + bytes([0, 67, 0, 68, 0, 8, 0, 0])


def router_advert(src: bytes) -> bytes:
    ip6 = bytes([0x60, 0, 0, 0, 0, 16, 58, 255]) + bytes(32)
    return (PLAIN_HDR + bytes.fromhex("333300000001") + src + b"\x86\xdd" + ip6
            + bytes([134, 0, 0, 0]) + bytes(12))


class FakeTap(FakePort):
    """The hub's own TAP port: a FakePort with the snapshot status reads."""

    def snapshot(self) -> dict:
        return {"name": "l2hub0", "frames_out": self.frames_out, "drops": self.drops}


@pytest.fixture
def clock():
    return FakeClock(1000.0)


@pytest.fixture
def make_hub(tmp_path, clock):
    loops = []

    def make(**switch_kw) -> Hub:
        cfg = HubConfig(
            path=tmp_path / "hub.yaml", node="hub", listen=ListenConfig("127.0.0.1", 7443),
            tls=TLSConfig(Path("ca.crt"), Path("hub.crt"), Path("hub.key")), tap=None,
            switch=SwitchConfig(**switch_kw),
            management=ManagementConfig(socket=tmp_path / "hub.sock"),
            keepalive=KeepaliveConfig())
        loop = EventLoop(clock=clock)
        loops.append(loop)
        return Hub(cfg, edges(), loop=loop)

    yield make
    for loop in loops:
        loop.close()


def up(hub, *cns) -> list:
    """Sessions that finished their hello, made ports in this order (later = newer)."""
    sessions = [FakeSession(cn) for cn in cns]
    for s in sessions:
        assert hub.admission.on_up(s) is None
    return sessions


def with_tap(hub, mtu: int = 1500) -> FakeTap:
    tap = FakeTap(HUB_PORT)
    hub.tap = tap
    hub.bridge.add_port(tap, HUB_PORT, mtu)
    return tap


def clear(*ports):
    for p in ports:
        p.sent.clear()


def hub_lines(caplog, level=logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "l2vpn.hub" and r.levelno == level]


def port_of(sw, m: bytes, now: float):
    """The port the switch's live entries put `m` on, or None if unknown or aged."""
    return {mac_: port for mac_, port, _ in sw.entries(now)}.get(m)


def blocked(sw, port) -> bool:
    """Whether `port` is cut off by loop detection (False when it is no port)."""
    return port in sw.ports and sw.port_info(port)["blocked"]


# -- config reaches the switch -------------------------------------------------------


def test_switch_keys_reach_the_switch_table(make_hub):
    hub = make_hub(max_macs_per_port=7, mac_move_holddown_s=2.5,
                   storm=StormConfig(broadcast_pps=11, multicast_pps=22, unknown_unicast_pps=33),
                   dhcp_guard=GuardConfig(("site-a",)), ra_guard=GuardConfig(()))
    sw = hub.switch
    assert sw.max_macs_per_port == 7
    assert sw.holddown_s == 2.5
    assert sw.storm_pps == (11, 22, 33)
    assert sw.guards == {guard.DHCP, guard.RA}
    assert sw.intercept == loopguard.PROBE_DST
    assert hub.bridge.loop_detector is not None


def test_defaults_reach_the_switch_table(make_hub):
    sw = make_hub().switch
    assert (sw.max_macs_per_port, sw.holddown_s, sw.storm_pps) == (1024, 5.0, (1000, 2000, 2000))
    assert sw.guards == frozenset()


def test_a_ports_own_limits_override_the_switch_and_follow_a_reload(make_hub, clock):
    hub = make_hub(max_macs_per_port=2)
    own = {"site-a": PortConfig(max_macs=3, storm=StormConfig(broadcast_pps=1))}
    hub.bridge.reconfigure(hub.cfg.switch, own)          # as a reload hands them over
    a, b = up(hub, "site-a", "site-b")
    for n in (1, 2, 3, 4):
        hub.bridge.forward(a, eth(mac(9), mac(n)))       # unicast: no storm limit
        hub.bridge.forward(b, eth(mac(9), mac(10 + n)))
    assert hub.switch.port_info(a)["macs"] == 3 and hub.switch.port_info(b)["macs"] == 2
    hub.bridge.forward(a, eth(BROADCAST, mac(1)))
    hub.bridge.forward(a, eth(BROADCAST, mac(1)))        # past site-a's own 1/s
    hub.bridge.forward(b, eth(BROADCAST, mac(11)))
    hub.bridge.forward(b, eth(BROADCAST, mac(11)))       # site-b: the switch's 1000/s
    assert hub.switch.port_info(a)["drops"]["storm_broadcast"] == 1
    assert hub.switch.port_info(b)["drops"]["storm_broadcast"] == 0
    hub.bridge.reconfigure(hub.cfg.switch, {})           # the override removed: 2 again
    hub.bridge.forward(a, eth(mac(9), mac(5)))
    assert hub.switch.port_info(a)["drops"]["port_limit"] == 2   # 4 then 5 refused
    assert hub.switch.port_info(a)["macs"] == 3                  # learnt ones stay


def test_port_limit_through_the_hub(make_hub):
    hub = make_hub(max_macs_per_port=2)
    a, b = up(hub, "site-a", "site-b")
    for n in (1, 2, 3, 4):
        hub.bridge.forward(a, eth(BROADCAST, mac(n)))
    assert len(b.sent) == 2
    assert hub.switch.port_info(a)["drops"]["port_limit"] == 2


def test_guards_trust_ports_by_name_including_hub_for_the_tap(make_hub):
    hub = make_hub(dhcp_guard=GuardConfig(("hub", "site-a")), ra_guard=GuardConfig(("site-b",)))
    tap = with_tap(hub)
    a, b = up(hub, "site-a", "site-b")
    hub.bridge.forward(tap, dhcp_offer(mac(1)))
    hub.bridge.forward(a, dhcp_offer(mac(2)))
    hub.bridge.forward(b, dhcp_offer(mac(3)))
    assert len(tap.sent) == 1 and len(a.sent) == 1 and len(b.sent) == 2   # b's was dropped
    clear(tap, a, b)
    hub.bridge.forward(b, router_advert(mac(3)))
    hub.bridge.forward(tap, router_advert(mac(1)))
    hub.bridge.forward(a, router_advert(mac(2)))
    assert len(tap.sent) == 1 and len(a.sent) == 1 and b.sent == []
    assert hub.switch.port_info(b)["drops"]["dhcp_guard"] == 1
    assert hub.switch.port_info(tap)["drops"]["ra_guard"] == 1
    assert hub.switch.port_info(a)["drops"]["ra_guard"] == 1


def test_guards_off_when_not_configured(make_hub):
    hub = make_hub()
    tap = with_tap(hub)
    (a,) = up(hub, "site-a")
    hub.bridge.forward(a, dhcp_offer(mac(2)))
    hub.bridge.forward(a, router_advert(mac(2)))
    assert len(tap.sent) == 2


def test_a_sessions_mtu_bounds_its_frames(make_hub):
    hub = make_hub()
    a, b = up(hub, "site-a", "site-b")
    hub.bridge.forward(a, eth(BROADCAST, mac(1), size=1500 + 14 + 8))
    hub.bridge.forward(a, eth(BROADCAST, mac(1), size=1500 + 14 + 8 + 1))
    assert len(b.sent) == 1
    assert hub.switch.port_info(a)["drops"]["oversize"] == 1


def test_holddown_through_the_hub(make_hub, clock):
    hub = make_hub(mac_move_holddown_s=5.0)
    a, b, c = up(hub, "site-a", "site-b", "site-c")
    hub.bridge.forward(a, eth(BROADCAST, mac(1)))
    clock.advance(1.0)
    hub.bridge.forward(b, eth(BROADCAST, mac(1)))       # held
    clear(a, b, c)
    hub.bridge.forward(c, eth(mac(1), mac(3)))
    assert len(a.sent) == 1 and b.sent == []


# -- loop detection ------------------------------------------------------------------


def probe_out_of(port) -> bytes:
    """The probe the last round sent out of `port` (vnet form, as ports carry it)."""
    frame = port.sent[-1]
    assert frame[10:16] == loopguard.PROBE_DST
    return frame


def test_send_probes_sends_one_probe_out_of_every_port(make_hub):
    hub = make_hub()
    tap = with_tap(hub)
    a, b = up(hub, "site-a", "site-b")
    hub.bridge.send_probes()
    for p in (tap, a, b):
        assert len(p.sent) == 1
        assert p.sent[0][:10] == PLAIN_HDR and p.sent[0][10:16] == loopguard.PROBE_DST
    assert hub.bridge.loop_detector.counters["probes_sent"] == 3


def test_a_probe_frame_from_a_session_goes_to_the_loop_guard(make_hub, clock, monkeypatch):
    hub = make_hub()
    a, b = up(hub, "site-a", "site-b")
    seen = []
    real = hub.bridge.loop_detector.on_probe
    monkeypatch.setattr(hub.bridge.loop_detector, "on_probe",
                        lambda *args: seen.append(args) or real(*args))
    forged = PLAIN_HDR + loopguard.PROBE_DST + mac(9) + b"\x88\xb5" + bytes(60)
    hub.bridge.forward(a, forged)
    assert [(f, off, port, now) for f, off, port, now in seen] == [(forged, 10, a, clock())]
    assert b.sent == [] and a.sent == []                 # intercepted, never flooded
    assert hub.bridge.loop_detector.counters["forged"] == 1
    assert port_of(hub.switch, mac(9), clock()) is None
    assert hub.switch.counters["probes"] == 1


def test_a_real_loop_blocks_the_newer_port(make_hub, clock, caplog):
    hub = make_hub()
    a, b, c = up(hub, "site-a", "site-b", "site-c")
    hub.bridge.send_probes()
    probe = probe_out_of(a)
    with caplog.at_level(logging.INFO, logger="l2vpn.hub"):
        hub.bridge.forward(b, probe)                     # what left by a came back in on b
    (line,) = hub_lines(caplog, logging.ERROR)
    assert "site-a" in line and "site-b" in line and "blocking site-b" in line
    assert blocked(hub.switch, b) and not blocked(hub.switch, a)
    st = hub.status()
    assert st["switch"]["blocked"] == [{"port": "site-b", "loop_with": "site-a", "since_s": 0.0}]
    by_cn = {s["cn"]: s for s in st["sessions"]}
    assert by_cn["site-b"]["switch"]["blocked"] is True
    assert by_cn["site-a"]["switch"]["blocked"] is False
    assert st["switch"]["loop_detection"]["probes_back"] == 1
    # the block holds: nothing from b, nothing to b
    clear(a, b, c)
    hub.bridge.forward(a, eth(BROADCAST, mac(1)))
    hub.bridge.forward(b, eth(BROADCAST, mac(2)))
    assert b.sent == [] and len(c.sent) == 1 and a.sent == []


def test_the_loop_blocks_the_newer_port_whichever_way_the_probe_went(make_hub, caplog):
    hub = make_hub()
    a, b = up(hub, "site-a", "site-b")
    hub.bridge.send_probes()
    with caplog.at_level(logging.ERROR, logger="l2vpn.hub"):
        hub.bridge.forward(a, probe_out_of(b))               # left by b (newer), back in on a
        hub.bridge.forward(b, probe_out_of(a))               # more evidence: no second block
    assert blocked(hub.switch, b) and not blocked(hub.switch, a)
    assert len(hub_lines(caplog, logging.ERROR)) == 1


def test_a_probe_reflected_back_into_its_own_port_blocks_nothing(make_hub):
    hub = make_hub()
    a, b = up(hub, "site-a", "site-b")
    hub.bridge.send_probes()
    hub.bridge.forward(a, probe_out_of(a))
    assert not blocked(hub.switch, a) and not blocked(hub.switch, b)
    assert hub.bridge.loop_detector.counters["reflected"] == 1


def test_a_loop_through_the_hub_tap_blocks_the_newer_session(make_hub):
    hub = make_hub()
    tap = with_tap(hub)
    (a,) = up(hub, "site-a")
    hub.bridge.send_probes()
    hub.bridge.forward(tap, probe_out_of(a))
    assert blocked(hub.switch, a) and not blocked(hub.switch, tap)
    assert hub.status()["tap"]["switch"]["blocked"] is False


def test_a_block_lifts_after_hold_s_without_evidence(make_hub, clock, caplog):
    hub = make_hub()
    a, b = up(hub, "site-a", "site-b")
    hub.bridge.send_probes()
    hub.bridge.forward(b, probe_out_of(a))
    assert blocked(hub.switch, b)
    with caplog.at_level(logging.INFO, logger="l2vpn.hub"):
        clock.advance(hub.bridge.loop_detector.hold_s)                  # not more than hold_s yet
        hub.bridge.send_probes()
        assert blocked(hub.switch, b)
        clock.advance(0.01)
        hub.bridge.send_probes()
    assert not blocked(hub.switch, b)
    (line,) = hub_lines(caplog, logging.WARNING)
    assert "site-a" in line and "site-b" in line and "unblocking site-b" in line
    assert hub.status()["switch"]["blocked"] == []
    clear(a, b)
    hub.bridge.forward(a, eth(BROADCAST, mac(1)))
    assert len(b.sent) == 1


def test_a_block_holds_while_probes_keep_coming_back(make_hub, clock):
    hub = make_hub()
    a, b = up(hub, "site-a", "site-b")
    hub.bridge.send_probes()
    hub.bridge.forward(b, probe_out_of(a))
    for _ in range(4 * int(hub.bridge.loop_detector.hold_s)):
        clock.advance(hub.bridge.loop_detector.interval_s)
        hub.bridge.send_probes()
        hub.bridge.forward(b, probe_out_of(a))                 # the loop is still there
        assert blocked(hub.switch, b)
    assert hub.status()["switch"]["blocked"][0]["since_s"] == pytest.approx(
        4 * int(hub.bridge.loop_detector.hold_s) * hub.bridge.loop_detector.interval_s)


def test_closing_a_blocked_session_forgets_it_in_the_loop_guard(make_hub, clock, caplog):
    hub = make_hub()
    a, b = up(hub, "site-a", "site-b")
    hub.bridge.forward(b, eth(BROADCAST, mac(2)))
    hub.bridge.send_probes()
    old_probe_of_b = probe_out_of(b)
    hub.bridge.forward(b, probe_out_of(a))
    assert hub.switch.port_info(b)["macs"] == 0           # flushed when it was blocked
    with caplog.at_level(logging.INFO, logger="l2vpn.hub"):
        hub.admission.on_close(b, "peer closed the connection")
    assert hub_lines(caplog, logging.WARNING) == [
        "port site-b, blocked for a loop with site-a, is gone"]
    assert hub_lines(caplog, logging.INFO) == [
        "spoke site-b down: peer closed the connection (0 MACs flushed)"]
    assert hub.bridge.loop_detector.blocked() == {}
    assert hub.status()["switch"]["blocked"] == []
    clear(a, b)
    hub.bridge.send_probes()
    assert b.sent == [] and len(a.sent) == 1              # no probes for a gone port
    hub.bridge.forward(a, old_probe_of_b)                       # names a port that is gone
    assert hub.bridge.loop_detector.counters["forged"] == 1 and not blocked(hub.switch, a)
    # the name is free again: a new session of site-b is a port like any other
    (b2,) = up(hub, "site-b")
    hub.bridge.send_probes()
    assert len(b2.sent) == 1 and not blocked(hub.switch, b2)


def test_when_the_older_partner_leaves_the_block_runs_out_on_its_own(make_hub, clock, caplog):
    hub = make_hub()
    a, b = up(hub, "site-a", "site-b")
    hub.bridge.send_probes()
    hub.bridge.forward(b, probe_out_of(a))
    with caplog.at_level(logging.WARNING, logger="l2vpn.hub"):
        hub.admission.on_close(a, "peer closed the connection")
    assert hub_lines(caplog) == []                       # only the blocked port's own leaving
    assert blocked(hub.switch, b)
    clock.advance(hub.bridge.loop_detector.hold_s + 0.1)
    hub.bridge.send_probes()
    assert not blocked(hub.switch, b)


def test_blocking_forgets_the_hosts_learnt_on_the_blocked_port(make_hub, clock):
    hub = make_hub()
    a, b, c = up(hub, "site-a", "site-b", "site-c")
    hub.bridge.forward(b, eth(BROADCAST, mac(2)))
    hub.bridge.send_probes()
    hub.bridge.forward(b, probe_out_of(a))
    assert port_of(hub.switch, mac(2), clock()) is None
    clear(a, b, c)
    hub.bridge.forward(c, eth(mac(2), mac(3)))                 # flooded to what is left
    assert len(a.sent) == 1 and b.sent == []


def test_unblocking_forgets_the_hosts_learnt_on_the_partner(make_hub, clock):
    hub = make_hub()
    a, b, c = up(hub, "site-a", "site-b", "site-c")
    hub.bridge.send_probes()
    hub.bridge.forward(b, probe_out_of(a))
    # through the loop, a host behind b was learnt on a
    hub.bridge.forward(a, eth(BROADCAST, mac(2)))
    hub.bridge.forward(c, eth(BROADCAST, mac(3)))
    assert port_of(hub.switch, mac(2), clock()) is a
    clock.advance(hub.bridge.loop_detector.hold_s + 0.1)
    hub.bridge.send_probes()
    assert not blocked(hub.switch, b)
    assert port_of(hub.switch, mac(2), clock()) is None
    assert port_of(hub.switch, mac(3), clock()) is c       # other ports keep theirs


def test_a_replaced_session_leaves_the_loop_guard_for_its_successor(make_hub):
    hub = make_hub()
    a, b = up(hub, "site-a", "site-b")
    hub.bridge.send_probes()
    hub.bridge.forward(b, probe_out_of(a))
    b2 = FakeSession("site-b", remote="192.0.2.9:1")
    assert hub.admission.on_up(b2) is None
    assert hub.bridge.loop_detector.blocked() == {}
    assert not blocked(hub.switch, b2)
    clear(a, b2)
    hub.bridge.forward(a, eth(BROADCAST, mac(1)))
    assert len(b2.sent) == 1


# -- without loop detection ------------------------------------------------------------


def test_loop_detection_off_means_no_guard_no_intercept(make_hub, clock):
    hub = make_hub(loop_detection=False)
    assert hub.bridge.loop_detector is None and hub.switch.intercept is None
    a, b = up(hub, "site-a", "site-b")
    probe_like = PLAIN_HDR + loopguard.PROBE_DST + loopguard.PROBE_SRC + b"\x88\xb5" + bytes(60)
    hub.bridge.forward(a, probe_like)
    assert b.sent == [probe_like]                        # an ordinary multicast
    assert hub.switch.counters["probes"] == 0
    st = hub.status()
    assert st["switch"]["blocked"] == [] and "loop_detection" not in st["switch"]
    hub.admission.on_close(a, "gone")                             # no guard to forget it in


@pytest.mark.parametrize("on", [True, False])
def test_probes_are_scheduled_only_with_loop_detection(make_hub, monkeypatch, on):
    hub = make_hub(loop_detection=on)
    listener = socket.socket()
    monkeypatch.setattr(hub_module, "_raise_fd_limit", lambda: None)
    monkeypatch.setattr(hub_module.pki, "hub_context", lambda tls: None)
    hub.edges = dataclasses.replace(hub.edges, listen=lambda address, port: listener)
    every = []
    monkeypatch.setattr(hub.loop, "call_every", lambda s, fn: every.append((s, fn)))
    try:
        hub._start()
    finally:
        hub.loop.forget(listener)
        listener.close()
    assert every == ([(hub.bridge.loop_detector.interval_s, hub.bridge.send_probes)] if on else [])


# -- backpressure ----------------------------------------------------------------------


def test_a_stalled_destination_does_not_pause_its_source(make_hub):
    hub = make_hub()
    a, b = up(hub, "site-a", "site-b")
    hub.bridge.forward(b, eth(BROADCAST, mac(2)))
    b.congested = True
    b.stalled = True
    f = eth(mac(2), mac(1))
    hub.bridge.forward(a, f)
    assert b.sent[-1] == f
    assert a.pauses == 0 and not a.paused and b.waiters == []
    b.stalled = False                                    # drained and congested again
    hub.bridge.forward(a, f)
    assert a.pauses == 1 and b.waiters == [a]


# -- reporting drops and flaps -----------------------------------------------------------


def test_every_drop_reason_has_an_explanation_that_formats(make_hub):
    hub = make_hub(max_macs_per_port=3, mac_move_holddown_s=2.5)
    assert set(bridge_module._EXPLAIN) == set(DROPS)
    sw = hub.cfg.switch
    texts = {r: bridge_module._explain(r, sw) for r in DROPS}
    assert "(3)" in texts["port_limit"] and "2.5" in texts["move_held"]
    assert "(1000)" in texts["storm_broadcast"] and "(2000)" in texts["storm_multicast"]
    assert "(2000)" in texts["storm_unknown_unicast"]


def test_many_drops_make_one_line_per_port_per_interval(make_hub, clock, caplog):
    hub = make_hub(max_macs_per_port=1)
    a, b = up(hub, "site-a", "site-b")
    hub.bridge.forward(a, eth(BROADCAST, mac(1)))
    with caplog.at_level(logging.WARNING, logger="l2vpn.hub"):
        for n in range(2, 52):
            hub.bridge.forward(a, eth(BROADCAST, mac(n)))
        hub.bridge.report(clock())
        assert hub_lines(caplog) == [
            "port site-a dropped frames: 50 frames from new MACs past max_macs_per_port (1)"]
        caplog.clear()
        for second in range(1, int(REPORT_S)):
            clock.advance(1.0)
            for n in range(100, 120):
                hub.bridge.forward(a, eth(BROADCAST, mac(n)))
            hub.bridge.report(clock())
        assert hub_lines(caplog) == []
        clock.advance(1.0)
        hub.bridge.report(clock())
        assert hub_lines(caplog) == [
            f"port site-a dropped frames: {20 * (int(REPORT_S) - 1)} frames from new MACs "
            "past max_macs_per_port (1)"]
        caplog.clear()
        for _ in range(3):
            clock.advance(REPORT_S)
            hub.bridge.report(clock())                     # nothing new: nothing to say
    assert hub_lines(caplog) == []


def test_reasons_seen_together_share_one_line(make_hub, clock, caplog):
    hub = make_hub(max_macs_per_port=1)
    a, b = up(hub, "site-a", "site-b")
    hub.bridge.forward(a, eth(BROADCAST, mac(1)))
    hub.bridge.forward(a, eth(BROADCAST, mac(2)))
    hub.bridge.forward(a, eth(BROADCAST, mac(1), size=2000))
    hub.bridge.forward(b, eth(BROADCAST, MCAST))
    with caplog.at_level(logging.WARNING, logger="l2vpn.hub"):
        hub.bridge.report(clock())
    lines = sorted(hub_lines(caplog))
    assert len(lines) == 2
    assert lines[0].startswith("port site-a dropped frames: ")
    assert "1 frames over the port MTU plus headers" in lines[0]
    assert "1 frames from new MACs past max_macs_per_port (1)" in lines[0]
    assert lines[1] == "port site-b dropped frames: 1 frames with a multicast source MAC"


def test_a_port_gets_at_most_one_line_per_interval_whatever_the_reasons(make_hub, clock,
                                                                        caplog):
    hub = make_hub(max_macs_per_port=1)
    a, b = up(hub, "site-a", "site-b")
    hub.bridge.forward(a, eth(BROADCAST, mac(1)))
    with caplog.at_level(logging.WARNING, logger="l2vpn.hub"):
        hub.bridge.forward(a, eth(BROADCAST, mac(2)))                  # port_limit
        hub.bridge.report(clock())
        clock.advance(1.0)
        hub.bridge.forward(a, eth(BROADCAST, mac(1), size=2000))       # oversize
        hub.bridge.report(clock())
        clock.advance(1.0)
        hub.bridge.forward(a, eth(BROADCAST, MCAST))                   # group source
        hub.bridge.report(clock())
    assert len([x for x in hub_lines(caplog) if x.startswith("port site-a ")]) == 1


def test_drops_of_a_closed_port_are_forgotten(make_hub, clock, caplog):
    hub = make_hub(max_macs_per_port=1)
    a, b = up(hub, "site-a", "site-b")
    hub.bridge.forward(a, eth(BROADCAST, mac(1)))
    hub.bridge.forward(a, eth(BROADCAST, mac(2)))
    hub.bridge.report(clock())
    clock.advance(1.0)
    hub.bridge.forward(a, eth(BROADCAST, mac(3)))
    hub.bridge.report(clock())                                  # counted, not due yet
    assert a in hub.bridge.drop_reports._latest
    hub.admission.on_close(a, "gone")
    assert a not in hub.bridge.drop_reports._latest and a not in hub.bridge.drop_reports._told
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="l2vpn.hub"):
        clock.advance(REPORT_S)
        hub.bridge.report(clock())
    assert hub_lines(caplog) == []


def test_flaps_are_logged_once_per_interval(make_hub, clock, caplog):
    hub = make_hub(mac_move_holddown_s=5.0)
    a, b = up(hub, "site-a", "site-b")
    hub.bridge.forward(a, eth(BROADCAST, mac(1)))
    with caplog.at_level(logging.WARNING, logger="l2vpn.hub"):
        for _ in range(30):
            hub.bridge.forward(b, eth(BROADCAST, mac(1)))
        hub.bridge.report(clock())
        flaps = [x for x in hub_lines(caplog) if x.startswith("MAC ")]
        assert flaps == [
            "MAC 02:00:00:00:00:01 lives on port site-a but port site-b claimed it 30 times in "
            f"the last {REPORT_S:g} s: held on site-a (mac_move_holddown_s 5)"]
        caplog.clear()
        for _ in range(int(REPORT_S) - 1):
            clock.advance(1.0)
            hub.bridge.forward(a, eth(BROADCAST, mac(1)))     # the home keeps it alive
            for _ in range(5):
                hub.bridge.forward(b, eth(BROADCAST, mac(1)))
            hub.bridge.report(clock())
        assert not [x for x in hub_lines(caplog) if x.startswith("MAC ")]
        clock.advance(1.0)
        hub.bridge.report(clock())
    flaps = [x for x in hub_lines(caplog) if x.startswith("MAC ")]
    assert len(flaps) == 1 and f"claimed it {5 * (int(REPORT_S) - 1)} times" in flaps[0]
    drops = [x for x in hub_lines(caplog) if x.startswith("port ")]
    assert len(drops) == 1 and "frames claiming MACs of another port" in drops[0]


def test_a_mac_flapping_both_ways_gets_one_line_per_interval_naming_its_home_now(
        make_hub, clock, caplog):
    hub = make_hub(mac_move_holddown_s=0.5)
    a, b = up(hub, "site-a", "site-b")
    with caplog.at_level(logging.WARNING, logger="l2vpn.hub"):
        hub.bridge.forward(a, eth(BROADCAST, mac(1)))
        hub.bridge.forward(b, eth(BROADCAST, mac(1)))           # held: lives on a
        hub.bridge.report(clock())
        clock.advance(1.0)
        hub.bridge.forward(b, eth(BROADCAST, mac(1)))           # a silent 1 s: moves to b
        hub.bridge.forward(a, eth(BROADCAST, mac(1)))           # held: now lives on b
        hub.bridge.report(clock())
        first = [x for x in hub_lines(caplog) if x.startswith("MAC ")]
        clock.advance(REPORT_S)
        hub.bridge.report(clock())
    flaps = [x for x in hub_lines(caplog) if x.startswith("MAC ")]
    assert len(first) == 1 and "lives on port site-a but port site-b" in first[0]
    assert len(flaps) == 2
    assert "lives on port site-b but port site-a claimed it 1 times" in flaps[1]


def test_flaps_of_a_closed_port_are_forgotten(make_hub, clock, caplog):
    hub = make_hub(mac_move_holddown_s=5.0)
    a, b = up(hub, "site-a", "site-b")
    hub.bridge.forward(a, eth(BROADCAST, mac(1)))
    hub.bridge.forward(b, eth(BROADCAST, mac(1)))
    hub.bridge.report(clock())                                  # the first flap line
    clock.advance(1.0)
    hub.bridge.forward(b, eth(BROADCAST, mac(1)))
    hub.bridge.report(clock())                                  # counted, not due yet
    hub.admission.on_close(b, "gone")
    assert not hub.bridge._flappers and not hub.bridge.flap_reports._pending
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="l2vpn.hub"):
        clock.advance(REPORT_S)
        hub.bridge.report(clock())
    assert hub_lines(caplog) == []


def test_the_hub_tells_spokes_that_can_apply_them_its_flood_limits(make_hub):
    hub = make_hub(storm=StormConfig(broadcast_pps=7, multicast_pps=0, unknown_unicast_pps=9))
    able, unable = FakeSession("site-a", flood_limits=True), FakeSession("site-b")
    assert hub.admission.on_up(able) is None and hub.admission.on_up(unable) is None
    assert able.limits == [(7, 0, 9)]
    assert unable.limits == []


# -- throttling a port whose frames are refused wholesale -------------------------------


def end_of_pass(hub):
    """What the loop does after a pass's callbacks: run the flush hooks asked for."""
    pending, hub.loop._flush = hub.loop._flush, {}
    for fn in pending.values():
        fn()


def run_timers(hub):
    """Run the loop's timers that are due by its (fake) clock."""
    loop, now = hub.loop, hub.loop.clock()
    while loop._timers and loop._timers[0][0] <= now:
        timer = heapq.heappop(loop._timers)[2]
        if not timer.cancelled:
            timer.fn()


def test_a_port_refused_wholesale_in_one_pass_is_not_read_for_a_while(make_hub, clock,
                                                                       caplog):
    hub = make_hub(storm=StormConfig(broadcast_pps=10, multicast_pps=0, unknown_unicast_pps=0))
    a, b, c = up(hub, "site-a", "site-b", "site-c")
    with caplog.at_level(logging.WARNING, logger="l2vpn.hub"):
        for _ in range(10 + bridge_module.REFUSED_PER_PASS):        # a storm from site-a
            hub.bridge.forward(a, eth(BROADCAST, mac(1)))
        for _ in range(bridge_module.REFUSED_PER_PASS - 1):          # one short, from site-b
            hub.bridge.forward(b, eth(BROADCAST, mac(2)))
        hub.bridge.forward(c, eth(mac(1), mac(3)))                       # known unicast: no refusal
        end_of_pass(hub)
    assert a.paused and not b.paused and not c.paused
    assert hub.status()["sessions"][0]["switch"]["throttled"] == 1
    assert [line for line in hub_lines(caplog) if "refused" in line] == [
        f"port site-a: the switch refused {bridge_module.REFUSED_PER_PASS} of its frames in one "
        f"pass; reading it at most every {bridge_module.THROTTLE_S * 1000:g} ms while that "
        f"lasts (why: the port's next drop report)"]
    clock.advance(bridge_module.THROTTLE_S)
    run_timers(hub)
    assert not a.paused
    # the count is per pass: the next pass starts from nothing
    for _ in range(bridge_module.REFUSED_PER_PASS - 1):
        hub.bridge.forward(a, eth(BROADCAST, mac(1)))
    end_of_pass(hub)
    assert not a.paused and hub.bridge.throttled[a] == 1


def test_an_empty_flood_or_a_hairpin_is_no_refusal(make_hub):
    hub = make_hub()
    (a,) = up(hub, "site-a")
    for n in range(2 * bridge_module.REFUSED_PER_PASS):   # no other port to flood to
        hub.bridge.forward(a, eth(BROADCAST, mac(n % 50 + 1)))
        hub.bridge.forward(a, eth(mac(1), mac(2)))           # both behind site-a
    end_of_pass(hub)
    assert not a.paused and hub.bridge.throttled == {}


def test_a_port_gone_before_the_end_of_the_pass_is_not_throttled(make_hub):
    hub = make_hub(max_macs_per_port=1)
    a, b = up(hub, "site-a", "site-b")
    for n in range(bridge_module.REFUSED_PER_PASS + 2):
        hub.bridge.forward(a, eth(BROADCAST, mac(n + 1)))    # past the MAC limit
    hub.admission.on_close(a, "gone")
    end_of_pass(hub)
    assert not a.paused and hub.bridge.throttled == {}


# -- status ------------------------------------------------------------------------------


def test_status_has_switch_facts_per_session_and_for_the_tap(make_hub, clock):
    hub = make_hub(max_macs_per_port=1)
    tap = with_tap(hub)
    a, b = up(hub, "site-a", "site-b")
    hub.bridge.forward(a, eth(BROADCAST, mac(1)))
    hub.bridge.forward(a, eth(BROADCAST, mac(2)))
    hub.bridge.forward(tap, eth(BROADCAST, mac(3)))
    st = hub.status()
    by_cn = {s["cn"]: s["switch"] for s in st["sessions"]}
    assert by_cn["site-a"]["macs"] == 1 and by_cn["site-a"]["blocked"] is False
    assert by_cn["site-a"]["drops"]["port_limit"] == 1
    assert set(by_cn["site-a"]["drops"]) == set(DROPS)
    assert by_cn["site-b"] == {"macs": 0, "blocked": False, "drops": dict.fromkeys(DROPS, 0),
                               "throttled": 0}
    assert st["tap"]["switch"]["macs"] == 1 and st["tap"]["name"] == "l2hub0"
    assert st["switch"]["counters"]["port_limit"] == 1
    assert st["switch"]["loop_detection"] == dict.fromkeys(loopguard.COUNTERS, 0)
    assert json.loads(json.dumps(st)) == st
