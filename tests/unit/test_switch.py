import ast
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l2vpn import guard, switch
from l2vpn.frame import BROADCAST
from l2vpn.switch import COUNTERS, SwitchTable

AGING_S = 300.0
MCAST = bytes.fromhex("01005e000001")
VNET_HDR = bytes(10)


def mac(n: int) -> bytes:
    return bytes([0x02, 0, 0, 0, 0, n])


def eth(dst: bytes, src: bytes, payload: bytes = b"\x08\x00" + bytes(46)) -> bytes:
    return dst + src + payload


def table(*ports, **kw) -> SwitchTable:
    t = SwitchTable(**kw)
    for p in ports:
        t.add_port(p)
    return t


def live_ports(t: SwitchTable, now: float) -> dict:
    """{mac: port} of the entries alive at `now`, as the hub's status lists them."""
    return {m: p for m, p, _ in t.entries(now)}


def port_of(t: SwitchTable, m: bytes, now: float):
    """The port `m` lives on, or None if it is unknown or aged."""
    return live_ports(t, now).get(m)


def blocked(t: SwitchTable, port) -> bool:
    """Whether `port` is cut off by loop detection (False when it is no port)."""
    return port in t.ports and t.port_info(port)["blocked"]


# -- learning and forwarding ---------------------------------------------------


def test_learns_source_on_ingress():
    t = table("a", "b")
    t.decide(eth(BROADCAST, mac(1)), "a", 0.0)
    assert port_of(t, mac(1), 0.0) == "a"
    assert len(t) == 1
    assert t.counters["learned"] == 1


@pytest.mark.parametrize("dst", [BROADCAST, MCAST], ids=["broadcast", "multicast"])
def test_group_destination_floods_all_but_ingress(dst):
    t = table("a", "b", "c", "d")
    assert t.decide(eth(dst, mac(1)), "b", 0.0) == ("a", "c", "d")
    assert t.counters["flooded"] == 1


def test_group_destination_floods_even_if_a_mac_like_it_was_learnt():
    t = table("a", "b", "c")
    assert not t.learn(BROADCAST, "a", 0.0)
    assert t.decide(eth(BROADCAST, mac(1)), "b", 0.0) == ("a", "c")


def test_unknown_unicast_floods_all_but_ingress():
    t = table("a", "b", "c")
    assert t.decide(eth(mac(9), mac(1)), "c", 0.0) == ("a", "b")
    assert t.counters["flooded"] == 1


def test_known_unicast_goes_to_exactly_its_port():
    t = table("a", "b", "c")
    t.decide(eth(BROADCAST, mac(2)), "b", 0.0)
    assert t.decide(eth(mac(2), mac(1)), "a", 1.0) == ("b",)
    assert t.decide(eth(mac(1), mac(2)), "b", 2.0) == ("a",)
    assert t.counters["forwarded"] == 2


def test_destination_on_ingress_port_is_dropped_not_hairpinned():
    t = table("a", "b", "c")
    t.decide(eth(BROADCAST, mac(2)), "a", 0.0)
    assert t.decide(eth(mac(2), mac(1)), "a", 1.0) == ()
    assert t.counters["ingress_hairpin"] == 1
    assert port_of(t, mac(1), 1.0) == "a"


def test_group_source_is_dropped_and_not_learnt():
    t = table("a", "b")
    assert t.decide(eth(mac(1), MCAST), "a", 0.0) == ()
    assert t.decide(eth(BROADCAST, BROADCAST), "a", 0.0) == ()
    assert t.counters["group_source"] == 2
    assert len(t) == 0
    assert port_of(t, MCAST, 0.0) is None


@pytest.mark.parametrize("size, offset, runt", [
    (13, 0, True), (14, 0, False), (23, 10, True), (24, 10, False), (0, 0, True),
])
def test_runt_boundary(size, offset, runt):
    t = table("a", "b")
    data = (bytes(offset) + eth(BROADCAST, mac(1)))[:size]
    result = t.decide(data, "a", 0.0, offset=offset)
    assert (result == ()) is runt
    assert t.counters["runt"] == int(runt)
    assert len(t) == int(not runt)


def test_unknown_ingress_is_dropped_and_not_learnt():
    t = table("a", "b")
    assert t.decide(eth(BROADCAST, mac(1)), "zz", 0.0) == ()
    assert t.counters["unknown_port"] == 1
    assert len(t) == 0


def test_only_port_floods_to_nobody():
    t = table("a")
    assert t.decide(eth(BROADCAST, mac(1)), "a", 0.0) == ()


def test_answers_are_precomputed_tuples():
    t = table("a", "b", "c")
    t.learn(mac(2), "b", 0.0)
    assert t.decide(eth(BROADCAST, mac(1)), "a", 0.0) is t.decide(eth(mac(7), mac(1)), "a", 0.0)
    assert t.decide(eth(mac(2), mac(1)), "a", 0.0) is t.decide(eth(mac(2), mac(3)), "c", 0.0)


# -- ageing --------------------------------------------------------------------


def test_entry_alive_at_exactly_aging_s_and_gone_after():
    t = table("a", "b", aging_s=10.0)
    t.learn(mac(1), "a", 100.0)
    assert port_of(t, mac(1), 110.0) == "a"
    assert port_of(t, mac(1), 110.5) is None
    assert t.entries(110.5) == []


def test_decide_floods_to_aged_destination():
    t = table("a", "b", "c", aging_s=10.0)
    t.learn(mac(2), "b", 0.0)
    assert t.decide(eth(mac(2), mac(1)), "a", 10.0) == ("b",)
    assert t.decide(eth(mac(2), mac(1)), "a", 10.5) == ("b", "c")


def test_aged_destination_on_ingress_floods_instead_of_dropping():
    t = table("a", "b", aging_s=10.0)
    t.learn(mac(2), "a", 0.0)
    assert t.decide(eth(mac(2), mac(1)), "a", 11.0) == ("b",)
    assert t.counters["ingress_hairpin"] == 0


def test_traffic_refreshes_the_source():
    t = table("a", "b", aging_s=10.0)
    t.decide(eth(BROADCAST, mac(1)), "a", 0.0)
    t.decide(eth(BROADCAST, mac(1)), "a", 8.0)
    assert port_of(t, mac(1), 18.0) == "a"
    assert t.expire(18.0) == 0
    assert port_of(t, mac(1), 18.5) is None


def test_expire_removes_only_aged_entries_and_counts():
    t = table("a", "b", aging_s=10.0)
    t.learn(mac(1), "a", 0.0)
    t.learn(mac(2), "b", 5.0)
    t.learn(mac(3), "a", 10.0)
    assert len(t) == 3
    assert t.expire(10.0) == 0
    assert t.expire(15.5) == 2
    assert t.counters["expired"] == 2
    assert len(t) == 1
    assert port_of(t, mac(3), 15.5) == "a"
    assert t.drop_port("b") == 0
    assert t.drop_port("a") == 1


def test_expire_frees_room_in_a_full_table():
    t = table("a", "b", aging_s=10.0, max_entries=1)
    t.learn(mac(1), "a", 0.0)
    assert not t.learn(mac(2), "a", 20.0)
    t.expire(20.0)
    assert t.learn(mac(2), "a", 20.0)


def test_aged_mac_seen_elsewhere_is_relearnt_not_moved():
    t = table("a", "b", aging_s=10.0)
    t.learn(mac(1), "a", 0.0)
    t.decide(eth(BROADCAST, mac(1)), "b", 20.0)
    assert port_of(t, mac(1), 20.0) == "b"
    assert t.counters["moves"] == 0
    assert t.drop_port("a") == 0
    assert t.drop_port("b") == 1


# -- moves, ports, table size --------------------------------------------------


def test_mac_moves_to_the_new_ingress_port():
    t = table("a", "b", "c")
    t.decide(eth(BROADCAST, mac(1)), "a", 0.0)
    t.decide(eth(BROADCAST, mac(1)), "b", 1.0)
    assert t.counters["moves"] == 1
    assert port_of(t, mac(1), 1.0) == "b"
    assert t.decide(eth(mac(1), mac(2)), "c", 2.0) == ("b",)
    assert len(t) == 2
    assert t.drop_port("a") == 0
    assert port_of(t, mac(1), 2.0) == "b"
    assert t.drop_port("b") == 1
    assert port_of(t, mac(1), 2.0) is None


def test_drop_port_flushes_only_its_macs():
    t = table("a", "b", "c")
    t.learn(mac(1), "a", 0.0)
    t.learn(mac(2), "b", 0.0)
    t.learn(mac(3), "b", 0.0)
    assert t.drop_port("b") == 2
    assert t.counters["flushed"] == 2
    assert port_of(t, mac(1), 0.0) == "a"
    assert port_of(t, mac(2), 0.0) is None
    assert port_of(t, mac(3), 0.0) is None
    assert len(t) == 1


def test_drop_port_leaves_flood_sets_and_ingress():
    t = table("a", "b", "c")
    t.learn(mac(2), "b", 0.0)
    t.drop_port("b")
    assert t.ports == ("a", "c")
    assert t.decide(eth(BROADCAST, mac(1)), "a", 0.0) == ("c",)
    assert t.decide(eth(mac(2), mac(3)), "c", 0.0) == ("a",)
    assert t.decide(eth(BROADCAST, mac(4)), "b", 0.0) == ()
    assert t.counters["unknown_port"] == 1


def test_drop_unknown_port_is_harmless():
    t = table("a")
    assert t.drop_port("nope") == 0
    assert t.ports == ("a",)


def test_dropped_port_can_come_back_empty():
    t = table("a", "b")
    t.learn(mac(1), "a", 0.0)
    t.drop_port("a")
    t.add_port("a")
    assert t.ports == ("b", "a")
    assert port_of(t, mac(1), 0.0) is None
    assert t.decide(eth(BROADCAST, mac(2)), "b", 0.0) == ("a",)


def test_add_port_twice_is_a_bug():
    t = table("a")
    with pytest.raises(ValueError):
        t.add_port("a")


def test_ports_keep_insertion_order_and_may_be_any_hashable():
    hub_tap = object()
    t = table("z", hub_tap, ("spoke", 3))
    assert t.ports == ("z", hub_tap, ("spoke", 3))
    assert t.decide(eth(BROADCAST, mac(1)), hub_tap, 0.0) == ("z", ("spoke", 3))


def test_full_table_does_not_learn_new_macs_but_still_forwards():
    t = table("a", "b", "c", max_entries=2)
    t.learn(mac(1), "a", 0.0)
    t.learn(mac(2), "b", 0.0)
    assert t.decide(eth(mac(1), mac(3)), "c", 1.0) == ("a",)
    assert t.decide(eth(BROADCAST, mac(3)), "c", 1.0) == ("a", "b")
    assert t.counters["table_full"] == 2
    assert port_of(t, mac(3), 1.0) is None
    assert len(t) == 2


def test_full_table_still_refreshes_and_moves_known_macs():
    t = table("a", "b", max_entries=1, aging_s=10.0)
    t.learn(mac(1), "a", 0.0)
    t.decide(eth(BROADCAST, mac(1)), "b", 5.0)
    assert port_of(t, mac(1), 15.0) == "b"
    assert t.counters["table_full"] == 0
    assert t.counters["moves"] == 1


def test_zero_entries_is_a_learning_free_hub():
    t = table("a", "b", "c", max_entries=0)
    assert t.decide(eth(mac(2), mac(1)), "a", 0.0) == ("b", "c")
    assert len(t) == 0


@pytest.mark.parametrize("kw", [{"aging_s": -1.0}, {"max_entries": -1}])
def test_bad_limits_rejected(kw):
    with pytest.raises(ValueError):
        SwitchTable(**kw)


# -- buffers and offsets ---------------------------------------------------------


def test_offset_skips_a_virtio_net_header():
    t = table("a", "b", "c")
    t.learn(mac(2), "b", 0.0)
    # A header of 0xff would read as a broadcast dst and group src if offset were ignored.
    data = b"\xff" * 10 + eth(mac(2), mac(1))
    assert t.decide(data, "a", 0.0, offset=10) == ("b",)
    assert port_of(t, mac(1), 0.0) == "a"
    assert t.counters["group_source"] == 0


@pytest.mark.parametrize("wrap", [bytes, bytearray, lambda b: memoryview(bytearray(b)), memoryview])
def test_bytes_like_frames(wrap):
    t = table("a", "b", "c")
    t.learn(mac(2), "b", 0.0)
    buf = wrap(VNET_HDR + eth(mac(2), mac(1)))
    assert t.decide(buf, "a", 0.0, offset=10) == ("b",)
    assert port_of(t, mac(1), 0.0) == "a"
    assert all(type(m) is bytes for m, _, _ in t.entries(0.0))


def test_learnt_mac_does_not_alias_a_reused_buffer():
    t = table("a", "b")
    buf = bytearray(eth(BROADCAST, mac(1)))
    t.decide(memoryview(buf), "a", 0.0)
    buf[6:12] = mac(5)
    assert port_of(t, mac(1), 0.0) == "a"
    assert port_of(t, mac(5), 0.0) is None


def test_real_frame_from_scapy():
    scapy_all = pytest.importorskip("scapy.all")
    pkt = scapy_all.Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01") / scapy_all.IP() / scapy_all.UDP()
    t = table("a", "b", "c")
    t.learn(mac(2), "c", 0.0)
    assert t.decide(bytes(pkt), "a", 0.0) == ("c",)


# -- table access ----------------------------------------------------------------


def test_entries_give_ages_sorted_by_port_order_then_mac():
    t = table("b", "a", aging_s=10.0)
    t.learn(mac(3), "a", 1.0)
    t.learn(mac(2), "b", 2.0)
    t.learn(mac(1), "a", 4.0)
    t.learn(mac(9), "b", -20.0)
    assert t.entries(5.0) == [
        (mac(2), "b", 3.0),
        (mac(1), "a", 1.0),
        (mac(3), "a", 4.0),
    ]


def test_learn_refuses_group_macs_and_unknown_ports():
    t = table("a")
    assert not t.learn(BROADCAST, "a", 0.0)
    assert not t.learn(MCAST, "a", 0.0)
    assert not t.learn(mac(1), "b", 0.0)
    assert len(t) == 0
    assert t.learn(bytearray(mac(1)), "a", 0.0)
    assert port_of(t, mac(1), 0.0) == "a"


def test_learn_rejects_a_malformed_mac():
    with pytest.raises(ValueError):
        table("a").learn(b"\x02\x00", "a", 0.0)


def test_counters_start_at_zero_with_every_key():
    assert table().counters == dict.fromkeys(COUNTERS, 0)


def test_module_is_pure():
    forbidden = {"socket", "ssl", "fcntl", "threading", "time", "pyroute2", "scapy", "select", "asyncio"}
    tree = ast.parse(pathlib.Path(switch.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported and not imported & forbidden


# -- property tests against a reference model -----------------------------------

P_AGING_S = 5
P_MAX = 3
PORTS = ("a", "b", "c", "d")
MACS = (mac(1), mac(2), mac(3), mac(4), BROADCAST, MCAST)


class Model:
    """The rules written out plainly, with no care for speed."""

    def __init__(self, ports, limit=None, hold=0.0):
        self.ports = list(ports)
        self.table = {}  # mac -> (port, seen)
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.limit = limit
        self.hold = hold

    def full(self, port):
        held = sum(1 for p, _ in self.table.values() if p == port)
        return self.limit is not None and held >= self.limit

    def alive(self, m, now):
        e = self.table.get(m)
        return e if e is not None and now - e[1] <= P_AGING_S else None

    def learn(self, m, port, now):
        """True: learnt; False: not learnt but forwarded; or why the frame is dropped."""
        if m in self.table:
            old_port, seen = self.table[m]
            if old_port != port:
                if now - seen <= P_AGING_S and now - seen < self.hold:
                    return "move_held"
                if self.full(port):
                    return "port_limit"
                if now - seen <= P_AGING_S:
                    self.counters["moves"] += 1
        elif self.full(port):
            return "port_limit"
        elif len(self.table) >= P_MAX:
            self.counters["table_full"] += 1
            return False
        else:
            self.counters["learned"] += 1
        self.table[m] = (port, now)
        return True

    def decide(self, data, ingress, now, offset):
        data = bytes(data)[offset:]
        if len(data) < 14:
            self.counters["runt"] += 1
            return ()
        dst, src = data[:6], data[6:12]
        if src[0] & 1:
            self.counters["group_source"] += 1
            return ()
        if ingress not in self.ports:
            self.counters["unknown_port"] += 1
            return ()
        learnt = self.learn(src, ingress, now)
        if isinstance(learnt, str):
            self.counters[learnt] += 1
            return ()
        others = tuple(p for p in self.ports if p != ingress)
        e = None if dst[0] & 1 else self.alive(dst, now)
        if e is None:
            self.counters["flooded"] += 1
            return others
        if e[0] == ingress:
            self.counters["ingress_hairpin"] += 1
            return ()
        self.counters["forwarded"] += 1
        return (e[0],)

    def drop_port(self, port):
        if port not in self.ports:
            return 0
        self.ports.remove(port)
        gone = [m for m, (p, _) in self.table.items() if p == port]
        for m in gone:
            del self.table[m]
        self.counters["flushed"] += len(gone)
        return len(gone)

    def expire(self, now):
        gone = [m for m in self.table if self.alive(m, now) is None]
        for m in gone:
            del self.table[m]
        self.counters["expired"] += len(gone)
        return len(gone)

    def entries(self, now):
        rows = [(m, p, now - seen) for m, (p, seen) in self.table.items() if now - seen <= P_AGING_S]
        return sorted(rows, key=lambda r: (self.ports.index(r[1]), r[0]))


WRAPS = (bytes, bytearray, lambda b: memoryview(bytearray(b)))

frame_op = st.tuples(
    st.just("frame"),
    st.sampled_from(MACS),
    st.sampled_from(MACS),
    st.sampled_from(PORTS),
    st.integers(0, 7),
    st.sampled_from((0, 10)),
    st.sampled_from(range(len(WRAPS))),
    st.sampled_from((None, 13, 14)),
)
port_op = st.tuples(st.sampled_from(("add", "drop")), st.sampled_from(PORTS))
expire_op = st.tuples(st.just("expire"), st.integers(0, 7))
learn_op = st.tuples(st.just("learn"), st.sampled_from(MACS), st.sampled_from(PORTS), st.integers(0, 7))
ops = st.lists(
    st.one_of(frame_op, frame_op, frame_op, port_op, expire_op, learn_op),
    max_size=60,
)


MODEL_SETTINGS = {"plain": {}, "limit-and-holddown": {"limit": 2, "hold": 2}}


@pytest.mark.parametrize("kw", MODEL_SETTINGS.values(), ids=MODEL_SETTINGS)
@settings(max_examples=200, deadline=None)
@given(script=ops)
def test_matches_reference_model(kw, script):
    start = ("a", "b", "c")
    t = table(*start, aging_s=P_AGING_S, max_entries=P_MAX,
              max_macs_per_port=kw.get("limit"), holddown_s=kw.get("hold", 0.0))
    model = Model(start, **kw)
    now = 0
    for op in script:
        kind = op[0]
        if kind == "frame":
            _, dst, src, ingress, dt, offset, wrap, cut = op
            now += dt
            data = bytes(offset) + eth(dst, src)
            if cut is not None:
                data = data[: offset + cut]
            got = t.decide(WRAPS[wrap](data), ingress, now, offset=offset)
            assert type(got) in (tuple, type(switch.DROP))   # never a list, never a probe
            assert ingress not in got
            assert len(set(got)) == len(got)
            assert set(got) <= set(t.ports)
            assert got == model.decide(data, ingress, now, offset)
        elif kind == "add":
            if op[1] in model.ports:
                with pytest.raises(ValueError):
                    t.add_port(op[1])
            else:
                t.add_port(op[1])
                model.ports.append(op[1])
        elif kind == "drop":
            assert t.drop_port(op[1]) == model.drop_port(op[1])
        elif kind == "expire":
            now += op[1]
            assert t.expire(now) == model.expire(now)
        else:
            _, m, port, dt = op
            now += dt
            expected = not m[0] & 1 and port in model.ports and model.learn(m, port, now) is True
            assert t.learn(m, port, now) == expected
        assert t.ports == tuple(model.ports)
        assert len(t) == len(model.table)
        assert t.counters == model.counters
        assert t.entries(now) == model.entries(now)
        live = live_ports(t, now)
        for m in MACS:
            e = model.alive(m, now)
            assert live.get(m) == (e[0] if e else None)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_dropping_every_port_empties_the_table(script):
    t = table("a", "b", "c", aging_s=P_AGING_S, max_entries=P_MAX)
    now = 0
    for op in script:
        if op[0] == "frame":
            now += op[4]
            t.decide(eth(op[1], op[2]), op[3], now)
        elif op[0] == "learn":
            now += op[3]
            t.learn(op[1], op[2], now)
        elif op[0] == "drop":
            t.drop_port(op[1])
        elif op[0] == "add" and op[1] not in t.ports:
            t.add_port(op[1])
    stored = len(t)
    assert sum(t.drop_port(p) for p in t.ports) == stored
    assert len(t) == 0
    assert t.ports == ()


# -- port security: frames the tests below share -----------------------------------

INTERCEPT = bytes.fromhex("036c3276706e")   # a group address, as loopguard.PROBE_DST is


def dhcp_offer(src: bytes, dst: bytes = BROADCAST) -> bytes:
    """A DHCPv4 server message (UDP 67 -> 68), just long enough for guard.classify."""
    ip = bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0]) + bytes(4) + b"\xff" * 4
    return dst + src + b"\x08\x00" + ip + bytes([0, 67, 0, 68, 0, 8, 0, 0])


def router_advert(src: bytes) -> bytes:
    """An ICMPv6 router advertisement (type 134)."""
    ip6 = bytes([0x60, 0, 0, 0, 0, 16, 58, 255]) + bytes(32)
    return bytes.fromhex("333300000001") + src + b"\x86\xdd" + ip6 + bytes([134, 0, 0, 0]) + bytes(12)


def test_the_guard_frames_are_what_they_claim():
    assert guard.classify(dhcp_offer(mac(1))) == guard.DHCP
    assert guard.classify(router_advert(mac(1))) == guard.RA
    assert guard.classify(eth(BROADCAST, mac(1))) is None


def drops(t: SwitchTable, port) -> dict:
    """The port's non-zero drop counts."""
    return {k: v for k, v in t.port_info(port)["drops"].items() if v}


def nonzero(t: SwitchTable) -> dict:
    return {k: v for k, v in t.counters.items() if v}


# -- per-port MAC limit --------------------------------------------------------------


def test_new_macs_past_the_port_limit_are_dropped_and_counted():
    t = table("a", "b", max_macs_per_port=2)
    assert t.decide(eth(BROADCAST, mac(1)), "a", 0.0) == ("b",)
    assert t.decide(eth(BROADCAST, mac(2)), "a", 0.0) == ("b",)
    assert t.decide(eth(BROADCAST, mac(3)), "a", 0.0) == ()
    assert t.decide(eth(mac(9), mac(4)), "a", 0.0) == ()
    assert port_of(t, mac(3), 0.0) is None and port_of(t, mac(4), 0.0) is None
    assert t.counters["port_limit"] == 2 and t.counters["learned"] == 2
    assert drops(t, "a") == {"port_limit": 2}
    assert t.port_info("a")["macs"] == 2 and t.port_info("a")["blocked"] is False


def test_known_macs_still_pass_on_a_full_port():
    t = table("a", "b", max_macs_per_port=2)
    t.learn(mac(1), "a", 0.0)
    t.learn(mac(2), "a", 0.0)
    t.learn(mac(7), "b", 0.0)
    assert t.decide(eth(mac(7), mac(1)), "a", 1.0) == ("b",)
    assert t.decide(eth(BROADCAST, mac(2)), "a", 1.0) == ("b",)
    assert t.counters["port_limit"] == 0


def test_a_full_port_does_not_limit_the_others():
    t = table("a", "b", "c", max_macs_per_port=1)
    t.learn(mac(1), "a", 0.0)
    assert t.decide(eth(BROADCAST, mac(2)), "a", 0.0) == ()
    assert t.decide(eth(BROADCAST, mac(2)), "b", 0.0) == ("a", "c")
    assert t.decide(eth(BROADCAST, mac(3)), "c", 0.0) == ("a", "b")
    assert drops(t, "b") == {} and drops(t, "c") == {}
    assert [row[:2] for row in t.entries(0.0)] == [(mac(1), "a"), (mac(2), "b"), (mac(3), "c")]


def test_a_move_into_a_full_port_is_refused():
    t = table("a", "b", max_macs_per_port=1, aging_s=10.0)
    t.learn(mac(1), "a", 0.0)
    t.learn(mac(2), "b", 0.0)
    assert t.decide(eth(BROADCAST, mac(1)), "b", 1.0) == ()
    assert port_of(t, mac(1), 1.0) == "a" and port_of(t, mac(2), 1.0) == "b"
    assert t.counters["moves"] == 0 and drops(t, "b") == {"port_limit": 1}
    assert not t.learn(mac(1), "b", 1.0)
    # an aged MAC is no exception: the full port still has no room for it
    assert t.decide(eth(BROADCAST, mac(1)), "b", 20.0) == ()
    assert t.port_info("b")["macs"] == 1


def test_drop_port_frees_the_room_of_the_macs_it_held():
    t = table("a", "b", max_macs_per_port=1, max_entries=2)
    t.learn(mac(1), "a", 0.0)
    t.learn(mac(2), "b", 0.0)
    assert t.decide(eth(BROADCAST, mac(3)), "a", 0.0) == ()
    assert t.drop_port("a") == 1
    t.add_port("a")
    assert t.port_info("a")["macs"] == 0
    assert t.decide(eth(BROADCAST, mac(3)), "a", 0.0) == ("b",)
    assert port_of(t, mac(3), 0.0) == "a"
    assert t.counters["table_full"] == 0 and len(t) == 2


def test_moving_a_mac_away_frees_room_on_its_old_port():
    t = table("a", "b", max_macs_per_port=1)
    t.learn(mac(1), "a", 0.0)
    assert t.decide(eth(BROADCAST, mac(1)), "b", 1.0) == ("a",)
    assert t.port_info("a")["macs"] == 0
    assert t.decide(eth(BROADCAST, mac(2)), "a", 1.0) == ("b",)


def test_expire_frees_room_on_the_port_but_aged_entries_count_until_then():
    t = table("a", "b", max_macs_per_port=1, aging_s=10.0)
    t.learn(mac(1), "a", 0.0)
    assert t.decide(eth(BROADCAST, mac(2)), "a", 20.0) == ()      # aged, not yet expired
    assert t.expire(20.0) == 1
    assert t.port_info("a")["macs"] == 0
    assert t.decide(eth(BROADCAST, mac(2)), "a", 20.0) == ("b",)
    assert port_of(t, mac(2), 20.0) == "a"


def test_port_limit_and_global_cap_together():
    t = table("a", "b", max_macs_per_port=5, max_entries=2)
    t.learn(mac(1), "a", 0.0)
    t.learn(mac(2), "b", 0.0)
    # table full: a new MAC is not learnt but still forwarded and flooded
    assert t.decide(eth(mac(2), mac(3)), "a", 0.0) == ("b",)
    assert t.decide(eth(BROADCAST, mac(4)), "a", 0.0) == ("b",)
    assert t.counters["table_full"] == 2 and t.counters["port_limit"] == 0
    assert len(t) == 2 and t.port_info("a")["macs"] == 1
    assert drops(t, "a") == {}


@pytest.mark.parametrize("limit", [0, 1])
def test_a_port_limit_below_one_mac_learns_nothing(limit):
    t = table("a", "b", max_macs_per_port=limit)
    answer = t.decide(eth(BROADCAST, mac(1)), "a", 0.0)
    assert (answer == ("b",)) is (limit == 1)


# -- hold-down of MAC moves ------------------------------------------------------------


def test_a_move_within_the_holddown_is_held_and_noted():
    t = table("a", "b", "c", holddown_s=5.0)
    t.decide(eth(BROADCAST, mac(1)), "a", 0.0)
    assert t.decide(eth(BROADCAST, mac(1)), "b", 4.9) == ()
    assert port_of(t, mac(1), 4.9) == "a"
    assert t.counters["move_held"] == 1 and t.counters["moves"] == 0
    assert drops(t, "b") == {"move_held": 1} and drops(t, "a") == {}
    # traffic to it still goes to its home
    assert t.decide(eth(mac(1), mac(3)), "c", 4.9) == ("a",)


def test_the_holddown_runs_from_the_home_ports_last_frame():
    t = table("a", "b", holddown_s=5.0)
    t.decide(eth(BROADCAST, mac(1)), "a", 0.0)
    t.decide(eth(BROADCAST, mac(1)), "a", 3.0)                  # the home refreshes it
    assert t.decide(eth(BROADCAST, mac(1)), "b", 7.9) == ()     # 4.9 s after a's frame
    assert t.decide(eth(BROADCAST, mac(1)), "b", 8.0) == ("a",)  # 5 s: it moves
    assert port_of(t, mac(1), 8.0) == "b"
    assert t.counters["moves"] == 1
    assert t.port_info("a")["macs"] == 0 and t.port_info("b")["macs"] == 1


def test_held_claims_do_not_refresh_the_entry():
    t = table("a", "b", holddown_s=5.0)
    t.decide(eth(BROADCAST, mac(1)), "a", 0.0)
    for now in (1.0, 2.0, 3.0, 4.0):
        assert t.decide(eth(BROADCAST, mac(1)), "b", now) == ()
    assert t.decide(eth(BROADCAST, mac(1)), "b", 5.0) == ("a",)


def test_holddown_zero_moves_at_once():
    t = table("a", "b")
    assert t.holddown_s == 0.0
    t.decide(eth(BROADCAST, mac(1)), "a", 0.0)
    assert t.decide(eth(BROADCAST, mac(1)), "b", 0.0) == ("a",)
    assert port_of(t, mac(1), 0.0) == "b" and t.counters["moves"] == 1
    assert t.take_flaps() == {}


def test_an_aged_entry_moves_freely_despite_the_holddown():
    t = table("a", "b", aging_s=2.0, holddown_s=5.0)
    t.decide(eth(BROADCAST, mac(1)), "a", 0.0)
    assert t.decide(eth(BROADCAST, mac(1)), "b", 2.5) == ("a",)
    assert port_of(t, mac(1), 2.5) == "b"
    assert t.counters["moves"] == 0 and t.counters["move_held"] == 0
    assert t.take_flaps() == {}


def test_learn_respects_the_holddown():
    t = table("a", "b", holddown_s=5.0)
    assert t.learn(mac(1), "a", 0.0)
    assert not t.learn(mac(1), "b", 1.0)
    assert port_of(t, mac(1), 1.0) == "a"
    assert t.learn(mac(1), "b", 6.0)


def test_take_flaps_reports_each_mac_once_and_resets():
    t = table("a", "b", "c", holddown_s=5.0)
    t.decide(eth(BROADCAST, mac(1)), "a", 0.0)
    t.decide(eth(BROADCAST, mac(2)), "a", 0.0)
    for _ in range(3):
        t.decide(eth(BROADCAST, mac(1)), "b", 1.0)
    t.decide(eth(BROADCAST, mac(2)), "c", 1.0)
    assert t.take_flaps() == {mac(1): ("a", "b", 3), mac(2): ("a", "c", 1)}
    assert t.take_flaps() == {}
    t.decide(eth(BROADCAST, mac(1)), "c", 2.0)
    assert t.take_flaps() == {mac(1): ("a", "c", 1)}


def test_flaps_are_bounded():
    t = table("a", "b", holddown_s=5.0, max_macs_per_port=10_000)
    n = switch.MAX_FLAPS + 50
    macs = [bytes([2, 0, 0, 0, i >> 8, i & 0xFF]) for i in range(n)]
    for m in macs:
        t.decide(eth(BROADCAST, m), "a", 0.0)
    for m in macs:
        t.decide(eth(BROADCAST, m), "b", 1.0)
    assert t.counters["move_held"] == n
    flaps = t.take_flaps()
    assert len(flaps) == switch.MAX_FLAPS
    assert set(flaps.values()) == {("a", "b", 1)}
    # a MAC already noted keeps counting even while the notes are full
    t2 = table("a", "b", holddown_s=5.0, max_macs_per_port=10_000)
    for m in macs:
        t2.decide(eth(BROADCAST, m), "a", 0.0)
        t2.decide(eth(BROADCAST, m), "b", 1.0)
    t2.decide(eth(BROADCAST, macs[0]), "b", 1.0)
    assert t2.take_flaps()[macs[0]] == ("a", "b", 2)


def test_drop_port_forgets_the_flaps_it_was_part_of():
    t = table("a", "b", "c", holddown_s=5.0)
    t.learn(mac(1), "a", 0.0)
    t.learn(mac(2), "c", 0.0)
    t.decide(eth(BROADCAST, mac(1)), "b", 1.0)
    t.decide(eth(BROADCAST, mac(2)), "a", 1.0)
    t.drop_port("b")
    assert t.take_flaps() == {mac(2): ("c", "a", 1)}


def test_flap_notes_name_the_current_home():
    t = table("a", "b", holddown_s=0.5)
    t.decide(eth(BROADCAST, mac(1)), "a", 0.0)
    assert t.decide(eth(BROADCAST, mac(1)), "b", 0.1) == ()          # held: flap a <- b
    assert t.decide(eth(BROADCAST, mac(1)), "b", 0.7) == ("a",)      # a silent 0.7 s: moves
    assert t.decide(eth(BROADCAST, mac(1)), "a", 0.8) == ()          # held: flap b <- a
    home, claimer, _held = t.take_flaps()[mac(1)]
    assert home != claimer
    assert (home, claimer) == ("b", "a")


# -- storm control ----------------------------------------------------------------------

STORM_CLASSES = [
    ("storm_broadcast", 0, lambda src: eth(BROADCAST, src)),
    ("storm_multicast", 1, lambda src: eth(MCAST, src)),
    ("storm_unknown_unicast", 2, lambda src: eth(mac(99), src)),
]


@pytest.mark.parametrize("reason, index, make", STORM_CLASSES, ids=[c[0] for c in STORM_CLASSES])
def test_storm_bucket_per_class_rate_and_burst(reason, index, make):
    rates = [0, 0, 0]
    rates[index] = 4
    t = table("a", "b", storm_pps=tuple(rates), storm_burst_s=2.0)
    f = make(mac(1))
    assert [t.decide(f, "a", 10.0) for _ in range(9)] == [("b",)] * 8 + [()]   # burst 4 * 2
    assert t.counters[reason] == 1 and drops(t, "a") == {reason: 1}
    assert t.decide(f, "a", 10.25) == ("b",)        # a quarter second: one frame's worth
    assert t.decide(f, "a", 10.25) == ()
    # the other two classes are not limited
    others = [c for c in STORM_CLASSES if c[1] != index]
    for _, _, other in others:
        assert all(t.decide(other(mac(1)), "a", 10.25) == ("b",) for _ in range(20))
    # a long pause refills to the burst, not past it
    assert [t.decide(f, "a", 1000.0) for _ in range(9)] == [("b",)] * 8 + [()]
    assert t.counters[reason] == 3
    assert t.counters["flooded"] == 8 + 1 + 40 + 8


def test_storm_burst_is_at_least_one_frame():
    t = table("a", "b", storm_pps=(1, 0, 0), storm_burst_s=0.1)
    assert t.decide(eth(BROADCAST, mac(1)), "a", 0.0) == ("b",)
    assert t.decide(eth(BROADCAST, mac(1)), "a", 0.5) == ()
    assert t.decide(eth(BROADCAST, mac(1)), "a", 1.0) == ("b",)


def test_storm_buckets_are_per_ingress_port():
    t = table("a", "b", "c", storm_pps=(2, 2, 2), storm_burst_s=1.0)
    for port in ("a", "b"):
        assert t.decide(eth(BROADCAST, mac(1 if port == "a" else 2)), port, 0.0)
        assert t.decide(eth(BROADCAST, mac(1 if port == "a" else 2)), port, 0.0)
    assert t.decide(eth(BROADCAST, mac(1)), "a", 0.0) == ()
    assert t.decide(eth(BROADCAST, mac(3)), "c", 0.0) == ("a", "b")
    assert drops(t, "a") == {"storm_broadcast": 1}
    assert drops(t, "b") == {} and drops(t, "c") == {}


def test_storm_limits_off_by_default_and_with_zero():
    for t in (table("a", "b"), table("a", "b", storm_pps=(0, 0, 0))):
        for i in range(5000):
            assert t.decide(eth(BROADCAST, mac(1)), "a", 0.0) == ("b",)
            assert t.decide(eth(mac(9), mac(1)), "a", 0.0) == ("b",)
        assert nonzero(t) == {"learned": 1, "flooded": 10_000}


def test_known_unicast_is_never_storm_limited():
    t = table("a", "b", "c", storm_pps=(1, 1, 1))
    t.learn(mac(2), "b", 0.0)
    for _ in range(1000):
        assert t.decide(eth(mac(2), mac(1)), "a", 0.0) == ("b",)
    assert t.counters["forwarded"] == 1000
    assert all(t.counters[r] == 0 for r in ("storm_broadcast", "storm_multicast",
                                               "storm_unknown_unicast"))


def test_aged_unicast_counts_as_unknown_for_storm_control():
    t = table("a", "b", "c", aging_s=1.0, storm_pps=(0, 0, 1))
    t.learn(mac(2), "b", 0.0)
    assert t.decide(eth(mac(2), mac(1)), "a", 5.0) == ("b", "c")
    assert t.decide(eth(mac(2), mac(1)), "a", 5.0) == ()
    assert t.counters["storm_unknown_unicast"] == 1


def test_time_going_backwards_does_not_mint_tokens():
    t = table("a", "b", storm_pps=(1, 0, 0))
    assert t.decide(eth(BROADCAST, mac(1)), "a", 10.0) == ("b",)
    assert t.decide(eth(BROADCAST, mac(1)), "a", 5.0) == ()
    assert t.decide(eth(BROADCAST, mac(1)), "a", 10.5) == ()
    assert t.decide(eth(BROADCAST, mac(1)), "a", 11.0) == ("b",)


@pytest.mark.parametrize("kw", [{"holddown_s": -1.0}, {"storm_pps": (1, 2)},
                                {"storm_pps": (1, -1, 0)}, {"guards": {"dhcp", "arp"}}])
def test_bad_protection_settings_rejected(kw):
    with pytest.raises(ValueError):
        SwitchTable(**kw)


# -- DHCP and RA guards -----------------------------------------------------------------


def test_guards_drop_server_messages_from_untrusted_ports():
    t = SwitchTable(guards={guard.DHCP, guard.RA})
    t.add_port("site-a", trusted={guard.DHCP})
    t.add_port("site-b")
    t.add_port("hub", trusted={guard.DHCP, guard.RA})
    assert t.decide(dhcp_offer(mac(2)), "site-b", 0.0) == ()
    assert t.decide(router_advert(mac(2)), "site-b", 0.0) == ()
    assert drops(t, "site-b") == {"dhcp_guard": 1, "ra_guard": 1}
    assert port_of(t, mac(2), 0.0) is None                  # dropped before learning
    assert t.decide(dhcp_offer(mac(1)), "site-a", 0.0) == ("site-b", "hub")
    assert t.decide(router_advert(mac(1)), "site-a", 0.0) == ()
    assert drops(t, "site-a") == {"ra_guard": 1}
    assert t.decide(dhcp_offer(mac(3)), "hub", 0.0) == ("site-a", "site-b")
    assert t.decide(router_advert(mac(3)), "hub", 0.0) == ("site-a", "site-b")
    assert t.counters["dhcp_guard"] == 1 and t.counters["ra_guard"] == 2
    # ordinary traffic from the untrusted port is untouched
    assert t.decide(eth(BROADCAST, mac(2)), "site-b", 0.0) == ("site-a", "hub")


def test_guards_look_past_a_vnet_header():
    t = SwitchTable(guards={guard.DHCP})
    t.add_port("a")
    t.add_port("b")
    assert t.decide(VNET_HDR + dhcp_offer(mac(1)), "a", 0.0, offset=10) == ()
    assert drops(t, "a") == {"dhcp_guard": 1}


def test_only_the_configured_guard_applies():
    t = table("a", "b", guards={guard.RA})
    assert t.decide(dhcp_offer(mac(1)), "a", 0.0) == ("b",)
    assert t.decide(router_advert(mac(1)), "a", 0.0) == ()


def test_no_guards_pass_everything():
    t = table("a", "b")
    assert t.guards == frozenset()
    assert t.decide(dhcp_offer(mac(1)), "a", 0.0) == ("b",)
    assert t.decide(router_advert(mac(1)), "a", 0.0) == ("b",)
    assert t.counters["dhcp_guard"] == t.counters["ra_guard"] == 0


def test_guarded_unicast_dhcp_to_a_known_host_is_dropped_too():
    t = table("a", "b", guards={guard.DHCP})
    t.learn(mac(2), "b", 0.0)
    assert t.decide(dhcp_offer(mac(1), dst=mac(2)), "a", 0.0) == ()


# -- oversize -----------------------------------------------------------------------------


def sized(n: int, src: bytes = mac(1), dst: bytes = BROADCAST) -> bytes:
    return eth(dst, src, b"\x08\x00" + bytes(n - 14))


def test_frames_over_mtu_plus_headers_and_two_tags_are_dropped():
    t = SwitchTable()
    t.add_port("a", mtu=1500)
    t.add_port("b")
    assert t.decide(sized(1500 + 14 + 8), "a", 0.0) == ("b",)
    assert t.decide(sized(1500 + 14 + 8 + 1), "a", 0.0) == ()
    assert drops(t, "a") == {"oversize": 1}
    assert t.decide(sized(100_000), "b", 0.0) == ("a",)      # no mtu: no limit


def test_a_gso_super_frame_may_exceed_the_mtu():
    t = SwitchTable()
    t.add_port("a", mtu=1500)
    t.add_port("b")
    big = sized(1500 + 14 + 8 + 1)
    gso = bytes([1, 1]) + bytes(8) + big                     # gso_type (byte 1) non-zero
    assert t.decide(gso, "a", 0.0, offset=10) == ("b",)
    assert t.decide(bytes([1, 0]) + bytes(8) + big, "a", 0.0, offset=10) == ()
    # without a vnet header, byte 1 is part of the destination MAC and means nothing
    assert t.decide(b"\xff\x01" + big[2:], "a", 0.0) == ()
    assert t.decide(bytes(10) + sized(1522), "a", 0.0, offset=10) == ("b",)
    assert drops(t, "a") == {"oversize": 2}


# -- blocked ports --------------------------------------------------------------------------


def test_a_blocked_port_gets_nothing_and_sends_nothing():
    t = table("a", "b", "c")
    t.learn(mac(2), "b", 0.0)
    t.learn(mac(3), "b", 0.0)
    t.learn(mac(1), "a", 0.0)
    assert t.block("b") == 2                                   # its MACs are forgotten
    assert blocked(t, "b") and not blocked(t, "a") and not blocked(t, "zz")
    assert port_of(t, mac(2), 0.0) is None and port_of(t, mac(1), 0.0) == "a"
    assert t.port_info("b")["macs"] == 0 and len(t) == 1
    assert t.counters["flushed"] == 2
    assert t.decide(eth(BROADCAST, mac(1)), "a", 0.0) == ("c",)
    assert t.decide(eth(mac(9), mac(1)), "c", 0.0) == ("a",)
    assert t.decide(eth(mac(2), mac(1)), "a", 0.0) == ("c",)    # found again by flooding
    assert t.decide(eth(BROADCAST, mac(5)), "b", 0.0) == ()
    assert t.decide(eth(mac(1), mac(2)), "b", 0.0) == ()
    assert port_of(t, mac(5), 0.0) is None and port_of(t, mac(2), 0.0) is None
    assert drops(t, "b") == {"blocked": 2} and drops(t, "a") == {}
    assert t.counters["blocked"] == 2
    assert t.port_info("b")["blocked"] is True


def test_a_stray_entry_on_a_blocked_port_gets_nothing_either():
    t = table("a", "b")
    t.block("b")
    t.learn(mac(2), "b", 0.0)                  # only learn() can put one there
    assert t.decide(eth(mac(2), mac(1)), "a", 0.0) == ()
    assert t.counters["blocked"] == 1
    assert drops(t, "a") == {}                 # a is not blocked: not its drop


def test_flush_forgets_a_ports_macs_and_keeps_the_port():
    t = table("a", "b", max_macs_per_port=2)
    t.learn(mac(1), "a", 0.0)
    t.learn(mac(2), "a", 0.0)
    t.learn(mac(3), "b", 0.0)
    assert t.flush("a") == 2 and t.flush("a") == 0 and t.flush("zz") == 0
    assert t.ports == ("a", "b") and len(t) == 1
    assert t.counters["flushed"] == 2
    assert t.decide(eth(BROADCAST, mac(4)), "a", 0.0) == ("b",)
    assert t.decide(eth(BROADCAST, mac(5)), "a", 0.0) == ("b",)   # room again
    assert t.port_info("a")["macs"] == 2
    assert t.drop_port("a") == 2


def test_unblock_does_not_bring_back_the_macs():
    t = table("a", "b")
    t.learn(mac(2), "b", 0.0)
    t.block("b")
    t.unblock("b")
    assert port_of(t, mac(2), 0.0) is None


def test_block_and_unblock_apply_to_flood_answers_already_made():
    t = table("a", "b", "c")
    assert t.decide(eth(BROADCAST, mac(1)), "a", 0.0) == ("b", "c")
    t.block("b")
    assert t.decide(eth(BROADCAST, mac(1)), "a", 0.0) == ("c",)
    assert t.decide(eth(mac(9), mac(3)), "c", 0.0) == ("a",)
    t.unblock("b")
    assert t.decide(eth(BROADCAST, mac(1)), "a", 0.0) == ("b", "c")


def test_unblock_restores_the_port():
    t = table("a", "b", "c")
    t.block("b")
    before = t.decide(eth(BROADCAST, mac(1)), "a", 0.0)
    t.unblock("b")
    t.unblock("b")
    t.unblock("zz")
    assert before == ("c",)
    assert t.decide(eth(BROADCAST, mac(1)), "a", 0.0) == ("b", "c")
    assert t.decide(eth(BROADCAST, mac(2)), "b", 0.0) == ("a", "c")
    assert not blocked(t, "b")


def test_block_unknown_port_is_a_bug():
    with pytest.raises(KeyError):
        table("a").block("zz")


def test_dropping_a_blocked_port_and_adding_it_back_starts_unblocked():
    t = table("a", "b")
    t.block("b")
    t.drop_port("b")
    t.add_port("b")
    assert t.decide(eth(BROADCAST, mac(1)), "a", 0.0) == ("b",)


# -- loop probes ----------------------------------------------------------------------------


def test_a_probe_is_returned_as_probe_and_not_learnt():
    t = table("a", "b", intercept=INTERCEPT)
    got = t.decide(eth(INTERCEPT, mac(1)), "a", 0.0)
    assert got is switch.PROBE and got == () and not got
    assert len(t) == 0 and t.counters["probes"] == 1
    assert nonzero(t) == {"probes": 1}


def test_a_probe_from_a_blocked_port_is_still_returned():
    t = table("a", "b", intercept=INTERCEPT)
    t.block("b")
    assert t.decide(VNET_HDR + eth(INTERCEPT, mac(1)), "b", 0.0, offset=10) is switch.PROBE
    assert drops(t, "b") == {}


def test_probes_past_probe_pps_are_dropped_per_port_before_anyone_checks_them():
    t = table("a", "b", intercept=INTERCEPT, probe_pps=3)
    t.block("b")
    got = [t.decide(eth(INTERCEPT, mac(1)), "b", 0.0) for _ in range(5)]
    assert [g is switch.PROBE for g in got] == [True] * 3 + [False] * 2
    assert drops(t, "b") == {"probe_excess": 2}
    assert t.decide(eth(INTERCEPT, mac(2)), "a", 0.0) is switch.PROBE   # a's own bucket
    assert t.decide(eth(INTERCEPT, mac(1)), "b", 1 / 3) is switch.PROBE  # refilled at 3/s
    assert t.counters["probes"] == 5 and t.counters["probe_excess"] == 2
    with pytest.raises(ValueError):
        SwitchTable(probe_pps=-1)


def test_only_the_intercept_address_is_a_probe():
    t = table("a", "b", intercept=INTERCEPT)
    other = bytes.fromhex("036c3276706f")
    assert t.decide(eth(other, mac(1)), "a", 0.0) == ("b",)
    assert t.decide(eth(MCAST, mac(1)), "a", 0.0) is not switch.PROBE
    assert t.counters["probes"] == 0
    plain = table("a", "b")
    assert plain.decide(eth(INTERCEPT, mac(1)), "a", 0.0) == ("b",)
    assert plain.counters["probes"] == 0


def test_a_probe_from_an_unknown_port_is_not_a_probe():
    t = table("a", intercept=INTERCEPT)
    assert t.decide(eth(INTERCEPT, mac(1)), "zz", 0.0) is not switch.PROBE
    assert t.counters["unknown_port"] == 1


def test_drop_answers_are_not_probes():
    t = table("a", "b", intercept=INTERCEPT)
    for answer in (t.decide(b"", "a", 0.0), t.decide(eth(mac(1), MCAST), "a", 0.0)):
        assert answer == () and answer is not switch.PROBE


def test_port_info_and_drops_cover_every_reason():
    t = table("a")
    info = t.port_info("a")
    assert info == {"macs": 0, "blocked": False, "drops": dict.fromkeys(switch.DROPS, 0)}
    assert set(switch.DROPS) <= set(COUNTERS)
    info["drops"]["runt"] = 5
    assert t.port_info("a")["drops"]["runt"] == 0       # a copy


def test_ingress_drop_counts_land_on_the_right_port():
    t = table("a", "b", max_macs_per_port=1)
    t.decide(b"\x00" * 5, "a", 0.0)
    t.decide(eth(mac(1), MCAST), "b", 0.0)
    t.decide(eth(BROADCAST, mac(1)), "a", 0.0)
    t.decide(eth(BROADCAST, mac(2)), "a", 0.0)
    assert drops(t, "a") == {"runt": 1, "port_limit": 1}
    assert drops(t, "b") == {"group_source": 1}


# -- stateful fuzz: any sequence of operations keeps the table consistent -------------------

from hypothesis.stateful import (  # noqa: E402
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

F_PORTS = ("a", "b", "c", "d", "e")
F_LIMIT = 2
F_MAX = 5
F_MACS = tuple(mac(i) for i in range(1, 8))
F_DSTS = F_MACS + (BROADCAST, MCAST, INTERCEPT)
F_SRCS = F_MACS + (MCAST, BROADCAST)


def _fuzz_frame(draw_kind, dst, src, body, pad, gso):
    """A frame of one of several shapes: plain, DHCP, RA, long, in vnet form or not."""
    if draw_kind == "plain":
        f = eth(dst, src)
    elif draw_kind == "dhcp":
        f = dhcp_offer(src, dst)
    elif draw_kind == "ra":
        f = router_advert(src)
    else:
        f = eth(dst, src, b"\x08\x00" + bytes(pad))
    return f + body


structured_frames = st.builds(
        lambda kind, dst, src, body, pad, vnet, gso: (
            (bytes([1, gso]) + bytes(8) if vnet else b"")
            + _fuzz_frame(kind, dst, src, body, pad, gso), 10 if vnet else 0),
        st.sampled_from(("plain", "dhcp", "ra", "long")),
        st.sampled_from(F_DSTS), st.sampled_from(F_SRCS), st.binary(max_size=8),
        st.sampled_from((100, 121, 122, 123, 400)), st.booleans(), st.sampled_from((0, 0, 4)))
garbage_frames = st.one_of(st.binary(max_size=40).map(lambda b: (b, 0)),
                           st.tuples(st.binary(max_size=12), st.integers(0, 12)))
fuzz_frames = st.one_of(structured_frames, structured_frames, structured_frames, garbage_frames)


class SwitchFuzz(RuleBasedStateMachine):
    """Random ports, blocks, frames, time and ageing; the invariants hold after each step."""

    @initialize(hold=st.sampled_from((0.0, 2.0)), storm=st.sampled_from(((0, 0, 0), (2, 3, 1))))
    def setup(self, hold, storm):
        self.t = SwitchTable(aging_s=10.0, max_entries=F_MAX, max_macs_per_port=F_LIMIT,
                             holddown_s=hold, storm_pps=storm, storm_burst_s=1.0,
                             guards={guard.DHCP, guard.RA}, intercept=INTERCEPT)
        self.now = 0.0
        self.current = []        # ports in the order added
        self.blocked = set()
        for port in F_PORTS[:3]:
            self.t.add_port(port)
            self.current.append(port)

    @rule(port=st.sampled_from(F_PORTS), mtu=st.sampled_from((None, 100)),
          trusted=st.sampled_from((frozenset(), {guard.DHCP}, {guard.DHCP, guard.RA})))
    def add_port(self, port, mtu, trusted):
        if port in self.current:
            with pytest.raises(ValueError):
                self.t.add_port(port, mtu=mtu, trusted=trusted)
            return
        self.t.add_port(port, mtu=mtu, trusted=trusted)
        self.current.append(port)

    @rule(port=st.sampled_from(F_PORTS))
    def drop_port(self, port):
        held = self.t.port_info(port)["macs"] if port in self.current else 0
        assert self.t.drop_port(port) == held
        if port in self.current:
            self.current.remove(port)
            self.blocked.discard(port)

    @precondition(lambda self: self.current)
    @rule(data=st.data())
    def block(self, data):
        port = data.draw(st.sampled_from(self.current))
        held = self.t.port_info(port)["macs"]
        assert self.t.block(port) == held
        assert self.t.port_info(port)["macs"] == 0
        self.blocked.add(port)

    @rule(port=st.sampled_from(F_PORTS))
    def flush(self, port):
        held = self.t.port_info(port)["macs"] if port in self.current else 0
        assert self.t.flush(port) == held
        if port in self.current:
            assert self.t.port_info(port)["macs"] == 0

    @rule(port=st.sampled_from(F_PORTS))
    def unblock(self, port):
        self.t.unblock(port)
        self.blocked.discard(port)

    @rule(frame=fuzz_frames, ingress=st.sampled_from(F_PORTS + ("zz",)),
          dt=st.sampled_from((0.0, 0.0, 0.25, 1.0, 3.0, 11.0)),
          wrap=st.sampled_from(range(len(WRAPS))))
    def decide(self, frame, ingress, dt, wrap):
        data, offset = frame
        self.now += dt
        before = dict(self.t.counters)
        size = len(self.t)
        known = ingress in self.current
        port_drops = sum(self.t.port_info(ingress)["drops"].values()) if known else 0
        got = self.t.decide(WRAPS[wrap](data), ingress, self.now, offset)
        assert type(got) in (tuple, type(switch.PROBE), type(switch.DROP))
        # DROP means refused, and every refusal is counted against the ingress port
        now_drops = sum(self.t.port_info(ingress)["drops"].values()) if known else 0
        assert (got is switch.DROP) == (now_drops > port_drops or not known)
        assert ingress not in got
        assert not set(got) & self.blocked
        assert set(got) <= set(self.current)
        assert len(set(got)) == len(got)
        changed = {k for k in COUNTERS if self.t.counters[k] != before[k]}
        if got is switch.PROBE:
            assert ingress in self.current and changed == {"probes"}
        if len(got) > 1:   # only a flood names several ports: all the others, in order
            assert got == tuple(p for p in self.current if p != ingress and p not in self.blocked)
        if ingress not in self.current or ingress in self.blocked:
            assert len(self.t) == size and "learned" not in changed

    @rule(frame=structured_frames, ingress=st.sampled_from(F_PORTS),
          dt=st.sampled_from((0.0, 0.5, 2.5)))
    def decide_known(self, frame, ingress, dt):
        self.decide(frame, ingress, dt, 0)

    @rule(mac_=st.sampled_from(F_SRCS), port=st.sampled_from(F_PORTS),
          dt=st.sampled_from((0.0, 1.0, 11.0)))
    def learn(self, mac_, port, dt):
        self.now += dt
        if self.t.learn(mac_, port, self.now):
            assert port_of(self.t, mac_, self.now) == port

    @rule(dt=st.sampled_from((0.0, 5.0, 11.0)))
    def expire(self, dt):
        self.now += dt
        self.t.expire(self.now)
        assert all(age <= self.t.aging_s for _, _, age in self.t.entries(self.now))

    @rule()
    def take_flaps(self):
        for home, claimer, held in self.t.take_flaps().values():
            assert home in self.current and claimer in self.current and held >= 1

    @invariant()
    def consistent(self):
        t = self.t
        assert t.ports == tuple(self.current)
        assert len(t) <= F_MAX
        assert len(t.flaps) <= switch.MAX_FLAPS
        per_port = {p: t._state[p].macs for p in self.current}
        assert set(t._state) == set(self.current)
        for p, macs in per_port.items():
            assert len(macs) <= F_LIMIT
            assert t.port_info(p)["macs"] == len(macs)
            assert blocked(t, p) == (p in self.blocked)
        union = set().union(*per_port.values()) if per_port else set()
        assert union == set(t._macs)
        assert sum(len(m) for m in per_port.values()) == len(t._macs)   # disjoint
        for m, entry in t._macs.items():
            assert entry.home is t._state[entry.home.port] and m in entry.home.macs
            assert not m[0] & 1
        assert set(t.counters) == set(COUNTERS)
        assert all(v >= 0 for v in t.counters.values())
        for reason in switch.DROPS:
            assert sum(t.port_info(p)["drops"][reason] for p in self.current) \
                <= t.counters[reason]
        live = live_ports(t, self.now)
        for m in F_MACS:
            found = live.get(m)
            assert found is None or found in self.current


SwitchFuzz.TestCase.settings = settings(max_examples=250, stateful_step_count=40,
                                        deadline=None)
test_switch_fuzz = SwitchFuzz.TestCase
