import ast
import hashlib
import hmac
import pathlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l2vpn import loopguard
from l2vpn.loopguard import (BLOCK, ETHERTYPE, PROBE_DST, PROBE_SRC, UNBLOCK, COUNTERS,
                             LoopGuard)

KEY = b"k" * 32
INTERVAL_S = 0.5
HOLD_S = 3.0
MAX_AGE_S = 2.0
VNET_HDR = bytes(10)
PORTS = ("hub", "site-a", "site-b")


def guard(*names, key=KEY) -> LoopGuard:
    g = LoopGuard(key, interval_s=INTERVAL_S, hold_s=HOLD_S, max_age_s=MAX_AGE_S)
    for name in names or PORTS:
        g.add_port(name, name)  # ports are their names here, which keeps asserts readable
    return g


def probe_of(g: LoopGuard, port, now: float) -> bytes:
    """Send a round at `now` and return the probe that went out of `port`."""
    return dict(g.probes(now))[port]


def back(g: LoopGuard, frame: bytes, ingress, now: float) -> list:
    """Feed a probe in the way the hub does: vnet-form, offset 10."""
    return g.on_probe(VNET_HDR + frame, 10, ingress, now)


def counts(g: LoopGuard) -> dict:
    return {k: v for k, v in g.counters.items() if v}


# -- the probe frame -------------------------------------------------------------


def test_probe_frame_layout_is_as_documented():
    g = guard("hub", "site-é")
    frames = dict(g.probes(12.5))
    assert set(frames) == {"hub", "site-é"}
    frame = frames["site-é"]
    assert frame[:6] == PROBE_DST == bytes.fromhex("036c3276706e")
    assert frame[6:12] == PROBE_SRC == bytes.fromhex("026c3276706e")
    assert frame[12:14] == b"\x88\xb5" and ETHERTYPE == 0x88B5
    assert frame[14:23] == b"L2VPNLOOP"
    instance = frame[23:31]
    seq, ts, name_len = struct.unpack("!IdB", frame[31:44])
    name = frame[44:44 + name_len]
    assert (ts, name) == (12.5, "site-é".encode())
    tag = hmac.new(KEY, frame[:44 + name_len], hashlib.sha256).digest()[:16]
    assert frame[44 + name_len:] == tag
    assert frames["hub"][23:31] == instance
    assert struct.unpack("!I", frames["hub"][31:35])[0] == seq


def test_the_shortest_probe_is_the_ethernet_minimum():
    g = guard("")
    (_, frame), = g.probes(0.0)
    assert len(frame) == 60
    assert back(g, frame, "", 0.0) == [] and counts(g) == {"probes_sent": 1, "reflected": 1}


def test_seq_advances_per_round_and_sent_probes_are_counted():
    g = guard()
    seqs = []
    for now in (0.0, 0.5, 1.0):
        frames = g.probes(now)
        assert [p for p, _ in frames] == list(PORTS)
        seqs.append({struct.unpack("!I", f[31:35])[0] for _, f in frames})
    assert [len(s) for s in seqs] == [1, 1, 1]
    first = seqs[0].pop()
    assert [s.pop() for s in seqs[1:]] == [first + 1, first + 2]
    assert g.counters["probes_sent"] == 9


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview], ids=lambda w: w.__name__)
def test_probe_round_trip_via_another_port_is_a_verified_loop(wrap):
    g = guard()
    frame = probe_of(g, "site-a", 5.0)
    actions = g.on_probe(wrap(VNET_HDR + frame), 10, "site-b", 5.1)
    assert actions == [(BLOCK, "site-b", "site-a")]
    assert counts(g) == {"probes_sent": 3, "probes_back": 1}


def test_trailing_bytes_after_the_tag_are_ignored():
    g = guard()
    frame = probe_of(g, "site-a", 0.0)
    assert back(g, frame + bytes(20), "site-b", 0.0) == [(BLOCK, "site-b", "site-a")]
    assert back(g, frame + b"\xff" * 7, "site-b", 0.0) == []
    assert g.counters["probes_back"] == 2 and g.counters["forged"] == 0


# -- blocking ----------------------------------------------------------------------


@pytest.mark.parametrize("egress, ingress", [("site-a", "site-b"), ("site-b", "site-a"),
                                             ("hub", "site-b"), ("site-b", "hub")])
def test_a_loop_blocks_exactly_the_newer_port(egress, ingress):
    g = guard()
    older = "site-a" if "site-a" in (egress, ingress) else "hub"
    frame = probe_of(g, egress, 1.0)
    assert back(g, frame, ingress, 1.25) == [(BLOCK, "site-b", older)]
    assert g.blocked() == {"site-b": (older, 1.25)}


def test_age_is_the_order_of_adding_not_the_name():
    g = guard("zz", "aa")
    frame = probe_of(g, "zz", 0.0)
    assert back(g, frame, "aa", 0.0) == [(BLOCK, "aa", "zz")]


def test_the_other_direction_of_the_same_loop_adds_no_second_block():
    g = guard()
    frames = dict(g.probes(0.0))
    assert back(g, frames["site-a"], "site-b", 0.1) == [(BLOCK, "site-b", "site-a")]
    assert back(g, frames["site-b"], "site-a", 0.1) == []
    assert back(g, frames["site-a"], "site-b", 0.2) == []
    assert g.blocked() == {"site-b": ("site-a", 0.1)}
    assert g.counters["probes_back"] == 3


def test_three_ports_on_one_lan_leave_only_the_oldest_open():
    g = guard()
    frames = dict(g.probes(0.0))
    actions = []
    for egress in PORTS:
        for ingress in PORTS:
            if egress != ingress:
                actions += back(g, frames[egress], ingress, 0.1)
    assert actions == [(BLOCK, "site-a", "hub"), (BLOCK, "site-b", "hub")]
    assert set(g.blocked()) == {"site-a", "site-b"}


def test_blocked_ports_still_get_probes_and_blocked_is_a_copy():
    g = guard()
    back(g, probe_of(g, "site-a", 0.0), "site-b", 0.0)
    view = g.blocked()
    view.clear()
    assert set(g.blocked()) == {"site-b"}
    assert [p for p, _ in g.probes(0.5)] == list(PORTS)


@pytest.mark.parametrize("egress, ingress", [("site-a", "site-b"), ("site-b", "site-a")],
                         ids=["into-blocked", "out-of-blocked"])
def test_evidence_from_either_direction_keeps_the_block(egress, ingress):
    g = guard()
    assert back(g, probe_of(g, "site-a", 0.0), "site-b", 0.0) == [(BLOCK, "site-b", "site-a")]
    now = 0.0
    while now < 4 * HOLD_S:
        now += INTERVAL_S
        assert back(g, probe_of(g, egress, now), ingress, now + 0.01) == []
        assert g.tick(now + 0.01) == []
    assert g.blocked() == {"site-b": ("site-a", 0.0)}
    assert g.tick(now + 0.01 + HOLD_S + 0.01) == [(UNBLOCK, "site-b", "site-a")]


def test_evidence_through_a_third_port_keeps_the_block():
    g = guard()
    back(g, probe_of(g, "hub", 0.0), "site-b", 0.0)
    assert back(g, probe_of(g, "site-b", 2.0), "site-a", 2.0) == []
    assert g.blocked() == {"site-b": ("hub", 0.0)}
    assert g.tick(2.0 + HOLD_S - 0.01) == []


def test_tick_unblocks_after_hold_s_of_silence_and_not_before():
    g = guard()
    back(g, probe_of(g, "site-a", 10.0), "site-b", 10.0)
    assert g.tick(10.0) == []
    assert g.tick(10.0 + HOLD_S - 0.01) == []
    assert g.blocked() == {"site-b": ("site-a", 10.0)}
    assert g.tick(10.0 + HOLD_S + 0.01) == [(UNBLOCK, "site-b", "site-a")]
    assert g.blocked() == {}
    assert g.tick(100.0) == []


def test_a_loop_that_comes_back_after_unblocking_is_blocked_again():
    g = guard()
    back(g, probe_of(g, "site-a", 0.0), "site-b", 0.0)
    assert g.tick(HOLD_S + 1) == [(UNBLOCK, "site-b", "site-a")]
    now = HOLD_S + 1.5
    assert back(g, probe_of(g, "site-b", now), "site-a", now) == [(BLOCK, "site-b", "site-a")]
    assert g.blocked() == {"site-b": ("site-a", now)}


# -- ports coming and going --------------------------------------------------------


def test_removing_a_blocked_port_unblocks_it():
    g = guard()
    back(g, probe_of(g, "site-a", 0.0), "site-b", 0.0)
    assert g.remove_port("site-b") == [(UNBLOCK, "site-b", "site-a")]
    assert g.blocked() == {}
    assert g.remove_port("site-b") == []
    assert [p for p, _ in g.probes(0.5)] == ["hub", "site-a"]


def test_a_block_whose_partner_left_lasts_until_hold_s_of_silence():
    g = guard()
    back(g, probe_of(g, "site-a", 0.0), "site-b", 0.0)
    assert g.remove_port("site-a") == []
    assert g.blocked() == {"site-b": ("site-a", 0.0)}
    assert back(g, probe_of(g, "hub", 1.0), "site-b", 1.0) == []
    assert g.tick(1.0 + HOLD_S - 0.01) == []
    assert g.tick(1.0 + HOLD_S + 0.01) == [(UNBLOCK, "site-b", "site-a")]


def test_probes_naming_a_removed_port_are_forged():
    g = guard()
    frame = probe_of(g, "site-a", 0.0)
    g.remove_port("site-a")
    assert back(g, frame, "site-b", 0.1) == []
    assert g.counters["forged"] == 1 and g.blocked() == {}


def test_a_probe_coming_in_on_a_removed_port_blocks_nothing():
    g = guard()
    frame = probe_of(g, "site-a", 0.0)
    g.remove_port("site-b")
    assert back(g, frame, "site-b", 0.1) == []
    assert g.blocked() == {}


def test_a_port_added_again_is_newer():
    g = guard()
    g.remove_port("hub")
    g.add_port("hub", "hub")
    assert back(g, probe_of(g, "hub", 0.0), "site-a", 0.0) == [(BLOCK, "hub", "site-a")]


def test_ports_and_names_must_be_unique_and_names_short():
    g = guard()
    with pytest.raises(ValueError):
        g.add_port("hub", "other")
    with pytest.raises(ValueError):
        g.add_port(object(), "hub")
    with pytest.raises(ValueError):
        g.add_port(object(), "é" * 128)
    g.add_port("long", "x" * 255)
    assert back(g, probe_of(g, "long", 0.0), "hub", 0.0) == [(BLOCK, "long", "hub")]


@pytest.mark.parametrize("kw", [dict(key=b""), dict(interval_s=0), dict(hold_s=0.5),
                                dict(max_age_s=-1), dict(hold_s=float("nan"))])
def test_bad_settings_are_refused(kw):
    args = dict(key=KEY, interval_s=0.5, hold_s=3.0, max_age_s=2.0) | kw
    with pytest.raises(ValueError):
        LoopGuard(**args)


# -- what must never block --------------------------------------------------------


def test_reflected_probes_are_counted_and_never_block():
    g = guard()
    for now in (0.0, 0.5, 1.0):
        for port, frame in g.probes(now):
            for _ in range(3):
                assert back(g, frame, port, now + 0.1) == []
    assert g.blocked() == {}
    assert counts(g) == {"probes_sent": 9, "reflected": 27}


def test_a_reflected_probe_is_no_evidence_for_a_block():
    g = guard()
    back(g, probe_of(g, "site-a", 0.0), "site-b", 0.0)
    back(g, probe_of(g, "site-b", 2.0), "site-b", 2.0)
    assert g.tick(HOLD_S + 0.01) == [(UNBLOCK, "site-b", "site-a")]


def resign(frame: bytes, key: bytes) -> bytes:
    """`frame` with its fields changed by the caller, signed again with `key`."""
    end = 44 + frame[43]
    body = frame[:end]
    return body + hmac.new(key, body, hashlib.sha256).digest()[:16]


def with_ts(frame: bytes, ts: float) -> bytes:
    return frame[:35] + struct.pack("!d", ts) + frame[43:]


def forgeries():
    """name -> make(guard, probe of site-a sent at 10.0) -> (frame, arrival time)."""
    def other_instance(g, frame):
        twin = guard()
        return probe_of(twin, "site-a", 10.0), 10.0

    def renamed(g, frame):
        name = b"site-x"
        return resign(frame[:43] + bytes([len(name)]) + name, KEY), 10.0

    return {
        "stale": lambda g, f: (f, 10.0 + MAX_AGE_S + 0.01),
        "future-dated": lambda g, f: (f, 10.0 - 0.01),
        "wrong-key": lambda g, f: (resign(f, b"x" * 32), 10.0),
        "other-instance": other_instance,
        "unknown-egress": renamed,
        "ts-moved-unsigned": lambda g, f: (with_ts(f, 11.0), 11.0),
        "nan-ts": lambda g, f: (resign(with_ts(f, float("nan")), KEY), 10.0),
        "tag-cut": lambda g, f: (f[:-1], 10.0),
        "tag-zeroed": lambda g, f: (f[:-16] + bytes(16), 10.0),
        "wrong-ethertype": lambda g, f: (resign(f[:12] + b"\x88\xb6" + f[14:], KEY), 10.0),
        "wrong-magic": lambda g, f: (resign(f[:14] + b"L2VPNLOOQ" + f[23:], KEY), 10.0),
        "wrong-src": lambda g, f: (resign(f[:6] + b"\x02\x00\x00\x00\x00\x01" + f[12:], KEY),
                                   10.0),
    }


FORGERIES = forgeries()


def test_the_forgery_cases_are_well_formed_except_where_they_mean_not_to_be():
    """Guards the test below: the same frame, signed right and sent in time, blocks."""
    g = guard()
    frame = probe_of(g, "site-a", 10.0)
    assert resign(with_ts(frame, 11.0), KEY) != frame
    assert back(g, resign(with_ts(frame, 11.0), KEY), "site-b", 11.0) == [
        (BLOCK, "site-b", "site-a")]
    g = guard()
    frame = probe_of(g, "site-a", 10.0)
    assert back(g, frame, "site-b", 10.0 + MAX_AGE_S) == [(BLOCK, "site-b", "site-a")]


@pytest.mark.parametrize("case", FORGERIES)
def test_forged_probes_are_counted_and_never_block(case):
    g = guard()
    frame = probe_of(g, "site-a", 10.0)
    bad, now = FORGERIES[case](g, frame)
    assert bad != frame or now != 10.0
    assert back(g, bad, "site-b", now) == []
    assert g.blocked() == {}
    assert counts(g) == {"probes_sent": 3, "forged": 1}


def test_truncated_probes_are_forged():
    g = guard()
    frame = probe_of(g, "site-a", 0.0)
    for n in range(len(frame)):
        assert back(g, frame[:n], "site-b", 0.0) == []
    assert g.counters["forged"] == len(frame)
    assert g.blocked() == {} and g.counters["probes_back"] == 0


def test_a_probe_at_an_offset_past_the_end_or_negative_is_forged():
    g = guard()
    frame = VNET_HDR + probe_of(g, "site-a", 0.0)
    assert g.on_probe(frame, len(frame) + 5, "site-b", 0.0) == []
    assert g.on_probe(frame, -len(frame), "site-b", 0.0) == []
    assert g.counters["forged"] == 2 and g.blocked() == {}


@settings(max_examples=300, deadline=None)
@given(data=st.data(), pad=st.integers(0, 30))
def test_a_flipped_byte_is_never_accepted_except_in_the_padding(data, pad):
    g = guard()
    frame = probe_of(g, "site-a", 0.0) + bytes(pad)
    signed = len(frame) - pad
    i = data.draw(st.integers(0, len(frame) - 1), label="index")
    flip = data.draw(st.integers(1, 255), label="xor")
    bad = bytearray(frame)
    bad[i] ^= flip
    actions = back(g, bytes(bad), "site-b", 0.5)
    if i < signed:
        assert actions == [] and g.counters["forged"] == 1 and g.blocked() == {}
    else:
        assert actions == [(BLOCK, "site-b", "site-a")] and g.counters["forged"] == 0


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), offset=st.integers(-5, 420),
       ingress=st.sampled_from(PORTS), now=st.floats(allow_nan=True))
def test_random_bytes_never_raise_and_never_block(data, offset, ingress, now):
    g = guard()
    assert g.on_probe(data, offset, ingress, now) == []
    assert g.blocked() == {} and g.counters["probes_back"] == 0


@settings(max_examples=300, deadline=None)
@given(keep=st.integers(0, 80), tail=st.binary(max_size=300),
       ingress=st.sampled_from(PORTS), dt=st.floats(-1, 3))
def test_a_genuine_head_with_random_bytes_after_it_never_blocks(keep, tail, ingress, dt):
    g = guard()
    frame = probe_of(g, "site-a", 10.0)
    bad = frame[:keep] + tail
    if bad.startswith(frame):
        return  # the genuine probe (with trailing bytes) is allowed to be accepted
    assert back(g, bad, ingress, 10.0 + dt) == []
    assert g.blocked() == {} and g.counters["probes_back"] == 0


@settings(max_examples=100, deadline=None)
@given(order=st.lists(st.tuples(st.integers(0, 7), st.floats(0, 4)), max_size=40))
def test_a_hostile_spoke_replaying_its_own_probes_never_blocks(order):
    """The spoke sees only probes that left by its own port; it may replay them at will."""
    g = guard()
    seen = [probe_of(g, "site-a", r * INTERVAL_S) for r in range(8)]
    for r, delay in order:
        assert back(g, seen[r], "site-a", r * INTERVAL_S + delay) == []
    assert g.blocked() == {}
    assert g.counters["probes_back"] == 0


def test_counters_are_the_documented_ones():
    assert set(guard().counters) == set(COUNTERS) == {"probes_sent", "probes_back",
                                                      "reflected", "forged"}


def test_the_module_is_pure():
    source = pathlib.Path(loopguard.__file__).read_text()
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module.split(".")[0])
    assert names <= {"hmac", "secrets", "struct", "l2vpn"}
