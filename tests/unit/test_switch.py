import ast
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l2vpn import switch
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


# -- learning and forwarding ---------------------------------------------------


def test_learns_source_on_ingress():
    t = table("a", "b")
    t.decide(eth(BROADCAST, mac(1)), "a", 0.0)
    assert t.lookup(mac(1), 0.0) == "a"
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
    assert t.lookup(mac(1), 1.0) == "a"


def test_group_source_is_dropped_and_not_learnt():
    t = table("a", "b")
    assert t.decide(eth(mac(1), MCAST), "a", 0.0) == ()
    assert t.decide(eth(BROADCAST, BROADCAST), "a", 0.0) == ()
    assert t.counters["group_source"] == 2
    assert len(t) == 0
    assert t.lookup(MCAST, 0.0) is None


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
    assert t.lookup(mac(1), 110.0) == "a"
    assert t.lookup(mac(1), 110.5) is None
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
    assert t.lookup(mac(1), 18.0) == "a"
    assert t.expire(18.0) == 0
    assert t.lookup(mac(1), 18.5) is None


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
    assert t.lookup(mac(3), 15.5) == "a"
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
    assert t.lookup(mac(1), 20.0) == "b"
    assert t.counters["moves"] == 0
    assert t.drop_port("a") == 0
    assert t.drop_port("b") == 1


# -- moves, ports, table size --------------------------------------------------


def test_mac_moves_to_the_new_ingress_port():
    t = table("a", "b", "c")
    t.decide(eth(BROADCAST, mac(1)), "a", 0.0)
    t.decide(eth(BROADCAST, mac(1)), "b", 1.0)
    assert t.counters["moves"] == 1
    assert t.lookup(mac(1), 1.0) == "b"
    assert t.decide(eth(mac(1), mac(2)), "c", 2.0) == ("b",)
    assert len(t) == 2
    assert t.drop_port("a") == 0
    assert t.lookup(mac(1), 2.0) == "b"
    assert t.drop_port("b") == 1
    assert t.lookup(mac(1), 2.0) is None


def test_drop_port_flushes_only_its_macs():
    t = table("a", "b", "c")
    t.learn(mac(1), "a", 0.0)
    t.learn(mac(2), "b", 0.0)
    t.learn(mac(3), "b", 0.0)
    assert t.drop_port("b") == 2
    assert t.counters["flushed"] == 2
    assert t.lookup(mac(1), 0.0) == "a"
    assert t.lookup(mac(2), 0.0) is None
    assert t.lookup(mac(3), 0.0) is None
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
    assert t.lookup(mac(1), 0.0) is None
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
    assert t.lookup(mac(3), 1.0) is None
    assert len(t) == 2


def test_full_table_still_refreshes_and_moves_known_macs():
    t = table("a", "b", max_entries=1, aging_s=10.0)
    t.learn(mac(1), "a", 0.0)
    t.decide(eth(BROADCAST, mac(1)), "b", 5.0)
    assert t.lookup(mac(1), 15.0) == "b"
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
    assert t.lookup(mac(1), 0.0) == "a"
    assert t.counters["group_source"] == 0


@pytest.mark.parametrize("wrap", [bytes, bytearray, lambda b: memoryview(bytearray(b)), memoryview])
def test_bytes_like_frames(wrap):
    t = table("a", "b", "c")
    t.learn(mac(2), "b", 0.0)
    buf = wrap(VNET_HDR + eth(mac(2), mac(1)))
    assert t.decide(buf, "a", 0.0, offset=10) == ("b",)
    assert t.lookup(mac(1), 0.0) == "a"
    assert all(type(m) is bytes for m, _, _ in t.entries(0.0))


def test_learnt_mac_does_not_alias_a_reused_buffer():
    t = table("a", "b")
    buf = bytearray(eth(BROADCAST, mac(1)))
    t.decide(memoryview(buf), "a", 0.0)
    buf[6:12] = mac(5)
    assert t.lookup(mac(1), 0.0) == "a"
    assert t.lookup(mac(5), 0.0) is None


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
    assert t.lookup(memoryview(mac(1)), 0.0) == "a"


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

    def __init__(self, ports):
        self.ports = list(ports)
        self.table = {}  # mac -> (port, seen)
        self.counters = dict.fromkeys(COUNTERS, 0)

    def alive(self, m, now):
        e = self.table.get(m)
        return e if e is not None and now - e[1] <= P_AGING_S else None

    def learn(self, m, port, now):
        if m in self.table:
            old_port, seen = self.table[m]
            if old_port != port and now - seen <= P_AGING_S:
                self.counters["moves"] += 1
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
        self.learn(src, ingress, now)
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


@settings(max_examples=200, deadline=None)
@given(ops)
def test_matches_reference_model(script):
    start = ("a", "b", "c")
    t = table(*start, aging_s=P_AGING_S, max_entries=P_MAX)
    model = Model(start)
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
            assert type(got) is tuple
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
            expected = not m[0] & 1 and port in model.ports and model.learn(m, port, now)
            assert t.learn(m, port, now) == expected
        assert t.ports == tuple(model.ports)
        assert len(t) == len(model.table)
        assert t.counters == model.counters
        assert t.entries(now) == model.entries(now)
        for m in MACS:
            e = model.alive(m, now)
            assert t.lookup(m, now) == (e[0] if e else None)


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
