"""VLANs in the hub's switch (vlan.py has the policy): learning per (VLAN, MAC), floods
only to ports carrying the VLAN, frames fitted to each port on the way out by the bridge,
drops counted as `vlan`, policy changes flushing, and no policy meaning no change."""

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from fakes import FakeClock, FakePort, FakeSession, edges, hub_config, tcp_super_frame

from l2vpn import guard, loopguard, switch, vlan
from l2vpn.bridge import Bridge
from l2vpn.config import PortConfig, StormConfig, SwitchConfig
from l2vpn.eventloop import EventLoop
from l2vpn.frame import BROADCAST
from l2vpn.hub import Hub
from l2vpn.offload import PLAIN_HDR, VNET_HDR_LEN
from l2vpn.switch import DROP, PROBE, SwitchTable
from l2vpn.vlan import ACCESS, TRUNK, VlanPolicy


def mac(n: int) -> bytes:
    return bytes([0x02, 0, 0, 0, 0, n])


def eth(dst: bytes, src: bytes, vid: int | None = None, pcp: int = 0) -> bytes:
    tag = b"" if vid is None else b"\x81\x00" + (pcp << 13 | vid).to_bytes(2, "big")
    return dst + src + tag + b"\x08\x00" + bytes(46)


def access(vid):
    return VlanPolicy(ACCESS, vid=vid)


def trunk(*allowed, native=None):
    return VlanPolicy(TRUNK, allowed=frozenset(allowed), native=native)


def table(ports: dict, **kw) -> SwitchTable:
    """A table with ports {name: policy or None}, in that order."""
    t = SwitchTable(**kw)
    for name, policy in ports.items():
        t.add_port(name, vlan=policy)
    return t


LAYOUT = {"a10": access(10), "a20": access(20), "tr": trunk(10, 20), "tr30": trunk(30),
          "x": None}


# -- learning and flooding per VLAN ----------------------------------------------------


def test_the_same_mac_lives_in_two_vlans_on_two_ports():
    t = table(LAYOUT)
    assert t.decide(eth(BROADCAST, mac(1)), "a10", 0.0) == ("tr", "x")
    assert t.decide(eth(BROADCAST, mac(1)), "a20", 0.0) == ("tr", "x")
    assert t.counters["learned"] == 2 and t.counters["moves"] == 0
    assert t.vlan_entries(0.0) == [(mac(1), 10, "a10", 0.0), (mac(1), 20, "a20", 0.0)]
    assert t.entries(0.0) == [(mac(1), "a10", 0.0), (mac(1), "a20", 0.0)]
    assert t.decide(eth(mac(1), mac(2), vid=10), "tr", 1.0) == ("a10",)
    assert t.decide(eth(mac(1), mac(2), vid=20), "tr", 1.0) == ("a20",)
    assert t.last_vlan == 20
    assert t.port_info("a10")["macs"] == t.port_info("a20")["macs"] == 1
    assert t.port_info("tr")["macs"] == 2        # mac(2) in VLAN 10 and in VLAN 20
    assert t.entry(switch.key_of(mac(2), 10), 1.0) == ("tr", 0.0)
    assert switch.split_key(switch.key_of(mac(2), 10)) == (mac(2), 10)
    assert switch.split_key(mac(2)) == (mac(2), None)


def test_broadcast_multicast_and_unknown_unicast_flood_only_where_the_vlan_goes():
    t = table(LAYOUT)
    for dst in (BROADCAST, bytes.fromhex("01005e000001"), mac(9)):
        assert t.decide(eth(dst, mac(1)), "a20", 0.0) == ("tr", "x")
        assert t.decide(eth(dst, mac(2), vid=10), "tr", 0.0) == ("a10", "x")
        assert t.decide(eth(dst, mac(3), vid=30), "tr30", 0.0) == ("x",)
        assert t.decide(eth(dst, mac(4), vid=30), "x", 0.0) == ("tr30",)
        assert t.decide(eth(dst, mac(5)), "x", 0.0) == ()    # UNTAGGED: transparent ports only
    assert t.counters["flooded"] == 15


def test_known_unicast_stays_in_its_vlan():
    t = table(LAYOUT)
    t.decide(eth(BROADCAST, mac(1)), "a10", 0.0)
    # mac(1) is known in VLAN 10 only: in VLAN 20 it is unknown, so flooded in VLAN 20
    assert t.decide(eth(mac(1), mac(2), vid=20), "tr", 1.0) == ("a20", "x")
    assert t.decide(eth(mac(1), mac(2), vid=10), "tr", 1.0) == ("a10",)


def test_a_flood_skips_blocked_ports_and_is_one_tuple_per_vlan():
    t = table(LAYOUT)
    first = t.decide(eth(BROADCAST, mac(1)), "a10", 0.0)
    assert t.decide(eth(mac(9), mac(1)), "a10", 0.0) is first
    t.block("x")
    assert t.decide(eth(BROADCAST, mac(1)), "a10", 0.0) == ("tr",)
    t.unblock("x")
    assert t.decide(eth(BROADCAST, mac(1)), "a10", 0.0) == ("tr", "x")


def test_vlans_no_policy_names_flood_to_transparent_ports_from_one_cached_tuple():
    t = table({**LAYOUT, "y": None})
    answers = {t.decide(eth(BROADCAST, mac(1), vid=v), "x", 0.0) for v in range(100, 400)}
    assert answers == {("y",)}
    assert t.decide(eth(BROADCAST, mac(1)), "x", 0.0) == ("y",)
    assert t.decide(eth(BROADCAST, mac(1), vid=30), "x", 0.0) == ("tr30", "y")
    assert t._state["x"].vlan_flood.keys() == {vlan.UNTAGGED, 30}


POLICIES = st.one_of(st.none(), st.sampled_from([10, 20]).map(access),
                     st.sets(st.sampled_from([10, 20, 30]), min_size=1).map(
                         lambda vids: trunk(*vids)),
                     st.just(trunk(20, native=10)))


@settings(max_examples=200, deadline=None)
@given(policies=st.lists(POLICIES, min_size=2, max_size=5),
       frames=st.lists(st.tuples(st.integers(0, 4), st.integers(1, 4), st.integers(0, 5),
                                 st.sampled_from([None, 0, 10, 20, 30, 99])), max_size=40))
def test_a_frame_only_ever_leaves_where_its_vlan_is_carried(policies, frames):
    t = table(dict(enumerate(policies)))
    for n, (ingress, src, dst, vid) in enumerate(frames):
        ingress %= len(policies)
        frame = eth(BROADCAST if dst == 0 else mac(dst), mac(src), vid)
        want = vlan.ingress_vlan(policies[ingress], frame, 0) if t.vlans_on else vlan.UNTAGGED
        out = t.decide(frame, ingress, float(n))
        if want == vlan.DROP:
            assert out is DROP
            continue
        assert ingress not in out
        if t.vlans_on:
            assert t.last_vlan == want
            assert all(vlan.carries(policies[p], want) for p in out)
    for m, v, port, _age in t.vlan_entries(float(len(frames))):
        assert v is None or vlan.carries(policies[port], v)


# -- drops ---------------------------------------------------------------------------


@pytest.mark.parametrize("port, frame", [
    ("a10", eth(BROADCAST, mac(1), vid=10)),      # tagged on an access port
    ("a10", eth(BROADCAST, mac(1), vid=20)),
    ("tr", eth(BROADCAST, mac(1))),               # untagged on a trunk with no native VLAN
    ("tr", eth(BROADCAST, mac(1), vid=30)),       # a VLAN the trunk does not allow
    ("tr", eth(BROADCAST, mac(1))[:14] + b"\x81\x00"),   # a tag cut short
], ids=["access-own-tag", "access-other-tag", "trunk-untagged", "trunk-not-allowed",
        "cut-short"])
def test_frames_the_policy_refuses_are_dropped_as_vlan(port, frame):
    t = table(LAYOUT)
    assert t.decide(frame, port, 0.0) is DROP
    assert t.counters["vlan"] == 1 and t.port_info(port)["drops"]["vlan"] == 1
    assert len(t) == 0


def test_a_priority_tag_is_untagged_on_access_and_native():
    t = table({"a10": access(10), "tr": trunk(20, native=10)})
    assert t.decide(eth(BROADCAST, mac(1), vid=0, pcp=5), "a10", 0.0) == ("tr",)
    assert t.last_vlan == 10
    assert t.decide(eth(BROADCAST, mac(2), vid=0), "tr", 0.0) == ("a10",)
    assert t.last_vlan == 10
    assert t.decide(eth(BROADCAST, mac(3), vid=10), "tr", 0.0) == ("a10",)   # native, tagged


def test_vlan_is_a_drop_reason_explained_and_counted():
    assert "vlan" in switch.DROPS and "vlan" in switch.COUNTERS
    t = table(LAYOUT)
    assert t.port_info("x")["drops"]["vlan"] == 0


# -- the other checks, per port as before -----------------------------------------------


def test_the_probe_is_intercepted_before_any_vlan_check():
    t = table(LAYOUT, intercept=loopguard.PROBE_DST, probe_pps=100)
    probe = loopguard.PROBE_DST + loopguard.PROBE_SRC
    assert t.decide(eth(probe[:6], probe[6:], vid=30), "a10", 0.0) is PROBE   # tagged, foreign
    assert t.decide(eth(probe[:6], probe[6:]), "tr", 0.0) is PROBE            # untagged, no native
    assert t.counters["probes"] == 2 and t.counters["vlan"] == 0


def test_a_blocked_port_drops_as_blocked_not_vlan():
    t = table(LAYOUT)
    t.block("a10")
    assert t.decide(eth(BROADCAST, mac(1), vid=99), "a10", 0.0) is DROP
    assert t.counters["blocked"] == 1 and t.counters["vlan"] == 0


def test_port_security_counts_each_vlan_and_mac():
    t = SwitchTable()
    t.add_port("tr", vlan=trunk(10, 20, 30), max_macs=2)
    t.add_port("x")
    assert t.decide(eth(BROADCAST, mac(1), vid=10), "tr", 0.0) == ("x",)
    assert t.decide(eth(BROADCAST, mac(1), vid=20), "tr", 0.0) == ("x",)
    assert t.decide(eth(BROADCAST, mac(1), vid=30), "tr", 0.0) is DROP
    assert t.port_info("tr")["drops"]["port_limit"] == 1


def test_move_holddown_is_per_vlan():
    t = table({"a": trunk(10, 20), "b": trunk(10, 20)}, holddown_s=5.0)
    t.decide(eth(BROADCAST, mac(1), vid=10), "a", 0.0)
    assert t.decide(eth(BROADCAST, mac(1), vid=20), "b", 1.0) == ("a",)   # another VLAN: new
    assert t.decide(eth(BROADCAST, mac(1), vid=10), "b", 1.0) is DROP     # VLAN 10: held
    assert t.counters["move_held"] == 1
    assert list(t.take_flaps()) == [switch.key_of(mac(1), 10)]


def test_storm_control_and_guards_stay_per_port():
    t = SwitchTable(guards={guard.DHCP}, storm_burst_s=1.0)
    t.add_port("a", vlan=access(10), storm_pps=(1, 0, 0))
    t.add_port("tr", vlan=trunk(10))
    assert t.decide(eth(BROADCAST, mac(1)), "a", 0.0) == ("tr",)
    assert t.decide(eth(BROADCAST, mac(1)), "a", 0.0) is DROP
    assert t.port_info("a")["drops"]["storm_broadcast"] == 1
    dhcp_offer = (BROADCAST + mac(2) + b"\x81\x00\x00\x0a\x08\x00" +
                  bytes.fromhex("45000148000000004011") + bytes(10) +   # IPv4 UDP
                  (67).to_bytes(2, "big") + (68).to_bytes(2, "big") + bytes(4) +
                  b"\x02" + bytes(300))
    assert guard.classify(dhcp_offer, 0) == guard.DHCP
    assert t.decide(dhcp_offer, "tr", 0.0) is DROP
    assert t.port_info("tr")["drops"]["dhcp_guard"] == 1


# -- modes and policy changes ------------------------------------------------------------


def test_no_policy_means_vlan_blind_exactly_as_before():
    t = table({"a": None, "b": None, "c": None})
    assert not t.vlans_on
    t.decide(eth(BROADCAST, mac(1), vid=10), "a", 0.0)
    # the same MAC tagged 20 elsewhere is the same entry, moved: tags are not read
    assert t.decide(eth(BROADCAST, mac(1), vid=20), "b", 1.0) == ("a", "c")
    assert t.counters["moves"] == 1
    assert t.vlan_entries(1.0) == [(mac(1), None, "b", 0.0)]
    assert all(len(key) == 6 for key in t.port_macs("b"))
    assert t.decide(eth(mac(1), mac(2), vid=99), "c", 1.0) == ("b",)
    assert t.last_vlan == vlan.UNTAGGED


def test_vlans_come_on_with_the_first_policy_and_blind_entries_stay():
    t = table({"x": None, "y": None})
    t.decide(eth(BROADCAST, mac(1)), "x", 0.0)
    t.add_port("a10", vlan=access(10))
    assert t.vlans_on and t.vlan_entries(0.0) == [(mac(1), None, "x", 0.0)]
    assert t.decide(eth(mac(1), mac(2)), "y", 1.0) == ("x",)      # UNTAGGED, still known
    t.decide(eth(BROADCAST, mac(3), vid=10), "x", 1.0)
    assert (mac(3), 10, "x", 0.0) in t.vlan_entries(1.0)
    flushed = t.counters["flushed"]
    t.drop_port("a10")                        # the last policy: VLAN keys are forgotten
    assert not t.vlans_on
    assert t.vlan_entries(1.0) == [(mac(1), None, "x", 1.0), (mac(2), None, "y", 0.0)]
    assert t.counters["flushed"] == flushed + 1


def test_a_policy_change_flushes_that_port_only():
    t = table(LAYOUT)
    t.decide(eth(BROADCAST, mac(1)), "a10", 0.0)
    t.decide(eth(BROADCAST, mac(2)), "a20", 0.0)
    assert t.set_port("a10", vlan=access(10)) == 0        # the same policy: kept
    assert t.port_macs("a10") == [switch.key_of(mac(1), 10)]
    assert t.set_port("a10", vlan=access(30)) == 1
    assert t.port_macs("a10") == [] and t.port_macs("a20") == [switch.key_of(mac(2), 20)]
    assert t.decide(eth(BROADCAST, mac(1)), "a10", 1.0) == ("tr30", "x")   # floods in 30 now
    assert t.set_port("x", vlan=None) == 0


def test_the_last_policy_going_by_set_port_leaves_vlan_mode():
    t = table({"a": access(10), "x": None})
    t.decide(eth(BROADCAST, mac(1)), "a", 0.0)
    t.decide(eth(BROADCAST, mac(2), vid=10), "x", 0.0)
    t.decide(eth(BROADCAST, mac(3)), "x", 0.0)
    assert t.set_port("a", vlan=None) == 1
    assert not t.vlans_on
    assert t.vlan_entries(0.0) == [(mac(3), None, "x", 0.0)]
    assert t.known_macs() is not None and mac(3) in t.known_macs()


def test_learn_takes_a_vlan_in_vlan_mode_only():
    t = table({"a": trunk(10), "x": None})
    assert t.learn(mac(1), "a", 0.0, vlan=10)
    assert switch.key_of(mac(1), 10) in t and mac(1) not in t
    assert mac(1) in t.known_macs()
    blind = table({"x": None})
    assert not blind.learn(mac(1), "x", 0.0, vlan=10)


# -- the bridge: frames fitted to each port ---------------------------------------------


HUB_TRUNK = {"hub": trunk(20, 30), "site-a": access(20), "site-b": trunk(10, 20, native=10),
             "site-c": None}


def vnet(frame: bytes) -> bytes:
    return PLAIN_HDR + frame


@pytest.fixture
def bridge():
    loop = EventLoop(clock=FakeClock())
    sw = SwitchConfig(storm=StormConfig(0, 0, 0), loop_detection=False)
    br = Bridge(loop, sw, {n: PortConfig(vlan=p) for n, p in HUB_TRUNK.items()})
    ports = {n: FakePort(n) for n in HUB_TRUNK}
    for name, port in ports.items():
        br.add_port(port, name, 1500)
    yield br, ports
    loop.close()


def sent(ports) -> dict:
    out = {name: p.sent for name, p in ports.items() if p.sent}
    for p in ports.values():
        p.sent = []
    return out


def test_an_untagged_frame_from_an_access_port_leaves_trunks_tagged(bridge):
    br, ports = bridge
    frame = vnet(eth(BROADCAST, mac(1)))
    br.forward(ports["site-a"], frame)
    tagged = vnet(eth(BROADCAST, mac(1), vid=20))
    assert sent(ports) == {"hub": [tagged], "site-b": [tagged], "site-c": [tagged]}


def test_a_tagged_frame_leaves_access_untagged_and_native_untagged(bridge):
    br, ports = bridge
    br.forward(ports["hub"], vnet(eth(BROADCAST, mac(1), vid=20, pcp=3)))
    got = sent(ports)
    assert got["site-a"] == [vnet(eth(BROADCAST, mac(1)))]
    assert got["site-b"] == got["site-c"] == [vnet(eth(BROADCAST, mac(1), vid=20, pcp=3))]
    br.forward(ports["site-b"], vnet(eth(BROADCAST, mac(2))))          # native 10
    assert sent(ports) == {"site-c": [vnet(eth(BROADCAST, mac(2), vid=10))]}
    br.forward(ports["site-c"], vnet(eth(BROADCAST, mac(3), vid=10)))
    assert sent(ports) == {"site-b": [vnet(eth(BROADCAST, mac(3)))]}
    br.forward(ports["site-c"], vnet(eth(BROADCAST, mac(3), vid=30)))
    assert sent(ports) == {"hub": [vnet(eth(BROADCAST, mac(3), vid=30))]}
    br.forward(ports["site-c"], vnet(eth(BROADCAST, mac(3))))          # UNTAGGED: nobody
    assert sent(ports) == {}


def test_known_unicast_is_fitted_too_and_the_answer_finds_its_way_back(bridge):
    br, ports = bridge
    br.forward(ports["site-a"], vnet(eth(BROADCAST, mac(1))))
    sent(ports)
    br.forward(ports["site-b"], vnet(eth(mac(1), mac(2), vid=20)))
    assert sent(ports) == {"site-a": [vnet(eth(mac(1), mac(2)))]}
    br.forward(ports["site-a"], vnet(eth(mac(2), mac(1))))
    assert sent(ports) == {"site-b": [vnet(eth(mac(2), mac(1), vid=20))]}
    st = {(m, v): p.name for m, v, p, _ in br.switch.vlan_entries(0.0)}
    assert st == {(mac(1), 20): "site-a", (mac(2), 20): "site-b"}


def test_a_gso_super_frame_gets_its_offsets_moved_with_the_tag(bridge):
    br, ports = bridge
    frame = tcp_super_frame(bytes(4000))
    br.forward(ports["site-a"], frame)
    got = sent(ports)
    assert got["hub"] == [bytes(vlan.tag(frame, 20, VNET_HDR_LEN))]
    tagged = bytearray(tcp_super_frame(bytes(4000), vlan=20))
    tagged[VNET_HDR_LEN + 6:VNET_HDR_LEN + 12] = mac(7)      # another sender, from the hub
    br.forward(ports["hub"], bytes(tagged))
    assert sent(ports)["site-a"] == [bytes(vlan.untag(tagged, VNET_HDR_LEN))]


def test_refused_frames_are_counted_and_reported_as_vlan(bridge):
    br, ports = bridge
    br.forward(ports["site-a"], vnet(eth(BROADCAST, mac(1), vid=20)))
    assert sent(ports) == {}
    assert br.port_info(ports["site-a"])["drops"]["vlan"] == 1
    from l2vpn import bridge as bridge_module
    assert "VLAN policy" in bridge_module._explain("vlan", br.cfg)


def test_back_pressure_still_pauses_the_sender(bridge):
    br, ports = bridge
    br.forward(ports["site-b"], vnet(eth(BROADCAST, mac(2), vid=20)))
    ports["site-b"].congested = True
    br.forward(ports["site-a"], vnet(eth(mac(2), mac(1))))
    assert ports["site-b"].sent[-1] == vnet(eth(mac(2), mac(1), vid=20))
    assert ports["site-a"].paused and ports["site-b"].waiters == [ports["site-a"]]


def test_a_reload_that_changes_a_policy_flushes_that_port(bridge):
    br, ports = bridge
    br.forward(ports["site-a"], vnet(eth(BROADCAST, mac(1))))
    br.forward(ports["site-b"], vnet(eth(BROADCAST, mac(2), vid=20)))
    cfg = {n: PortConfig(vlan=p) for n, p in HUB_TRUNK.items()}
    br.reconfigure(br.cfg, cfg)
    assert len(br.switch) == 2
    cfg["site-a"] = PortConfig(vlan=access(30))
    br.reconfigure(br.cfg, cfg)
    assert [p.name for _m, _v, p, _a in br.switch.vlan_entries(0.0)] == ["site-b"]
    sent(ports)
    br.forward(ports["site-a"], vnet(eth(BROADCAST, mac(1))))
    assert sent(ports) == {"hub": [vnet(eth(BROADCAST, mac(1), vid=30))],
                           "site-c": [vnet(eth(BROADCAST, mac(1), vid=30))]}


def test_a_bridge_without_policies_sends_the_very_frame_it_got():
    loop = EventLoop(clock=FakeClock())
    br = Bridge(loop, SwitchConfig(loop_detection=False), {"a": PortConfig(max_macs=5)})
    a, b = FakePort("a"), FakePort("b")
    got = []
    b.send_frame = got.append
    for p in (a, b):
        br.add_port(p, p.name, 1500)
    frame = vnet(eth(BROADCAST, mac(1), vid=20))
    br.forward(a, frame)
    assert got == [frame] and got[0] is frame and not br.switch.vlans_on
    loop.close()


@pytest.mark.parametrize("tagged", [False, True], ids=["untagged", "tagged"])
def test_a_loop_probe_is_recognised_when_it_comes_back_tagged_or_not(tagged):
    loop = EventLoop(clock=FakeClock())
    br = Bridge(loop, SwitchConfig(loop_detection=True),
                {"a": PortConfig(vlan=access(20)), "b": PortConfig(vlan=trunk(20))})
    a, b = FakePort("a"), FakePort("b")
    for p in (a, b):
        br.add_port(p, p.name, 1500)
    br.send_probes()
    probe = a.sent[0]
    assert probe[:VNET_HDR_LEN] == PLAIN_HDR and probe[VNET_HDR_LEN + 12:][:2] == b"\x88\xb5"
    back = vlan.tag(probe, 20, VNET_HDR_LEN) if tagged else probe   # a's LAN bridged into b
    br.forward(b, bytes(back))
    assert br.loop_detector.counters["probes_back"] == 1
    assert br.switch.port_info(b)["blocked"] or br.switch.port_info(a)["blocked"]
    assert br.switch.counters["vlan"] == 0
    loop.close()


# -- status ----------------------------------------------------------------------------


@pytest.fixture
def hub(tmp_path):
    loop = EventLoop(clock=FakeClock())
    cfg = dataclasses.replace(hub_config(tmp_path), ports={
        "site-a": PortConfig(vlan=access(20)), "site-b": PortConfig(vlan=trunk(10, 20))})
    h = Hub(cfg, edges(), loop=loop)
    yield h
    loop.close()


def test_status_and_its_stream_show_each_macs_vlan(hub):
    a, b = FakeSession("site-a"), FakeSession("site-b")
    for s in (a, b):
        hub.admission.on_up(s)
    hub.bridge.forward(a, vnet(eth(BROADCAST, mac(1))))
    hub.bridge.forward(b, vnet(eth(BROADCAST, mac(1), vid=10)))
    hub.bridge.forward(b, vnet(eth(BROADCAST, mac(2), vid=20)))
    st = hub.status()
    assert [(m["mac"], m["vlan"], m["port"]) for m in st["macs"]] == [
        ("02:00:00:00:00:01", 20, "site-a"),
        ("02:00:00:00:00:01", 10, "site-b"), ("02:00:00:00:00:02", 20, "site-b")]
    assert all(set(m) == {"mac", "vlan", "port", "age_s", "ips"} for m in st["macs"])
    parts = []
    stream = hub.status_reply()
    while (part := stream.pull(65536)) is not None:
        parts.append(bytes(part))
    assert json.loads(b"".join(parts)) == st
