"""The storm-control defaults against a model of a busy /24 (netns-lab/busy_lan.py).

The whole LAN sits behind one port, the worst case: one spoke's session carries its
whole site. Every scenario of the model goes through a real SwitchTable with the
default StormConfig() limits and must lose nothing, with HEADROOM to spare; a real
storm must be cut to rate * 1 s + burst.
"""

import ipaddress
import sys
from pathlib import Path

import pytest

from l2vpn import config
from l2vpn.switch import SwitchTable

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "netns-lab"))

import busy_lan  # noqa: E402

# The default must be at least this many times the smallest bucket that passes the
# busiest scenario: room for hosts chattier than their specs and LANs busier than ours.
HEADROOM = 3.0
# power_restore decides the defaults, so it is drawn several times.
CASES = [("steady", 0), ("scan", 0)] + [("power_restore", seed) for seed in range(3)]
STORM_KEYS = ("storm_broadcast", "storm_multicast", "storm_unknown_unicast")
OVERLAY = ipaddress.IPv4Network("198.18.0.0/15")

_traces: dict = {}


def lan_trace(scenario, seed):
    """Traces take seconds to make: one per (scenario, seed) for the whole module."""
    key = (scenario, seed)
    if key not in _traces:
        _traces[key] = busy_lan.trace(scenario, seed)
    return _traces[key]


def default_pps():
    s = config.StormConfig()
    return {"broadcast": s.broadcast_pps, "multicast": s.multicast_pps,
            "unknown_unicast": s.unknown_unicast_pps}


def feed(frames, pps, ports=("site", "elsewhere")):
    """Run (t, frame) through a SwitchTable, all in on ports[0]; returns the table."""
    table = SwitchTable(storm_pps=(pps["broadcast"], pps["multicast"],
                                   pps["unknown_unicast"]), storm_burst_s=1.0)
    for p in ports:
        table.add_port(p)
    for t, frame in frames:
        table.decide(frame, ports[0], t)
    return table


def storm_counts(table):
    return {k: table.counters[k] for k in STORM_KEYS}


# ------------------------------------------------------------------- the model itself


@pytest.mark.parametrize("scenario,seed", CASES[:3])
def test_trace_is_real_frames_with_lab_safe_addresses(scenario, seed):
    tr = lan_trace(scenario, seed)
    times = [t for t, _ in tr]
    assert times == sorted(times)
    assert 0.0 <= times[0] and times[-1] < busy_lan.SCENARIOS[scenario]
    sources = set()
    for _, f in tr:
        assert len(f) >= busy_lan.MIN_FRAME
        src = f[6:12]
        assert src[0] & 0x02 and not src[0] & 0x01, f"not a local unicast source: {src.hex()}"
        sources.add(src)
        ethertype = f[12:14]
        if ethertype == b"\x08\x00":
            addrs = [f[26:30], f[30:34]]
        elif ethertype == b"\x08\x06":
            addrs = [f[28:32], f[38:42]]
        else:
            continue
        for raw in addrs:
            a = ipaddress.IPv4Address(raw)
            if a.is_multicast or a in (ipaddress.IPv4Address("0.0.0.0"),
                                       ipaddress.IPv4Address("255.255.255.255")):
                continue    # protocol-defined: groups, DHCP's unspecified and broadcast
            assert a in OVERLAY, f"{a} in a {scenario} frame is outside 198.18.0.0/15"
    assert len(sources) == 254, "254 stations: the router and 253 hosts"


def test_the_scenarios_differ_as_described():
    steady = busy_lan.peaks(lan_trace("steady", 0))
    restore = busy_lan.peaks(lan_trace("power_restore", 0))
    scan = busy_lan.peaks(lan_trace("scan", 0))
    # every host's start-up within 10 s dwarfs a normal hour; the sweep is ~254 ARPs in 1 s
    for cls in ("broadcast", "multicast"):
        assert restore[cls]["max_1s"] > 5 * steady[cls]["max_1s"]
    assert 250 <= scan["broadcast"]["max_1s"] <= 254 + steady["broadcast"]["max_1s"]
    assert steady["multicast"]["frames"] > 3600, "a busy hour multicasts more than 1/s"


@pytest.mark.parametrize("scenario,seed", CASES[:3])
def test_min_bucket_is_the_smallest_that_passes(scenario, seed):
    classes = busy_lan.classify(lan_trace(scenario, seed))
    for cls, row in busy_lan.peaks(lan_trace(scenario, seed)).items():
        times = [t for (t, _), c in zip(lan_trace(scenario, seed), classes) if c == cls]
        need = row["bucket_pps"]
        assert busy_lan.passes(times, need)
        if need > 0:
            assert not busy_lan.passes(times, need - 1)
        # a bucket of depth rate * 1 s covers any 1 s of up to 2 * rate frames at most
        assert row["max_1s"] <= 2 * need + 1


def test_window_counts_match_a_brute_force_count():
    times = [0.0, 0.05, 0.5, 0.99, 1.0, 1.02, 1.03, 2.5, 2.55, 2.56, 2.57]
    for w in (0.1, 1.0):
        brute = max(sum(1 for u in times if t <= u < t + w) for t in times)
        assert busy_lan._max_in_window(times, w)[0] == brute


# -------------------------------------------------------------- the defaults (switch)


@pytest.mark.parametrize("scenario,seed", CASES)
def test_default_limits_drop_nothing_of_a_busy_lan(scenario, seed):
    table = feed(lan_trace(scenario, seed), default_pps())
    assert storm_counts(table) == dict.fromkeys(STORM_KEYS, 0)
    assert table.counters["flooded"] > 0


@pytest.mark.parametrize("scenario,seed", CASES)
def test_default_limits_have_headroom(scenario, seed):
    need = {cls: row["bucket_pps"]
            for cls, row in busy_lan.peaks(lan_trace(scenario, seed)).items()}
    have = default_pps()
    for cls in busy_lan.CLASSES:
        assert have[cls] == 0 or have[cls] >= HEADROOM * need[cls], \
            f"{scenario}/{seed}: {cls} default {have[cls]} pps is under {HEADROOM}x " \
            f"the {need[cls]} pps bucket this LAN needs"
    # and the switch itself agrees: a third of the defaults still drops nothing
    third = {cls: int(v // HEADROOM) for cls, v in have.items()}
    assert storm_counts(feed(lan_trace(scenario, seed), third)) == \
        dict.fromkeys(STORM_KEYS, 0)


STORM_DST = {"broadcast": b"\xff" * 6, "multicast": bytes.fromhex("01005e7f0001"),
             "unknown_unicast": bytes.fromhex("02badbadbad1")}


def storm_frame(cls, src=bytes.fromhex("02000000a001")):
    return STORM_DST[cls] + src + b"\x88\xb5" + bytes(46)


@pytest.mark.parametrize("cls", busy_lan.CLASSES)
def test_a_storm_is_cut_to_rate_plus_burst(cls):
    rate = default_pps()[cls]
    n = 20_000
    table = feed([(i / n, storm_frame(cls)) for i in range(n)], default_pps())
    passed = table.counters["flooded"]
    # full bucket (rate * 1 s) plus what drips in over the 1 s of the storm
    assert abs(passed - 2 * rate) <= 2, passed
    key = f"storm_{cls}"
    assert table.counters[key] == n - passed
    assert table.port_info("site")["drops"][key] == n - passed
    assert table.port_info("elsewhere")["drops"][key] == 0


def test_a_broadcast_storm_does_not_cut_the_port_off():
    """The storm is cut, the same port's other classes and known unicast still pass, and
    another port's broadcasts have their own bucket."""
    pps = default_pps()
    storm = [(10.0 + i / 20_000, storm_frame("broadcast")) for i in range(20_000)]
    lan = busy_lan.trace("scan", 0)
    table = SwitchTable(storm_pps=(pps["broadcast"], pps["multicast"],
                                   pps["unknown_unicast"]), storm_burst_s=1.0)
    for p in ("site", "other"):
        table.add_port(p)
    peer = bytes.fromhex("02000000b001")
    table.learn(peer, "other", 0.0)
    known = []
    for t, f in sorted(storm + [(t, f) for t, f in lan if f[0] & 1 and f[0:6] != b"\xff" * 6],
                       key=lambda x: x[0]):
        table.decide(f, "site", t)
        if 10.0 <= t < 11.0 and len(known) < 100:
            known.append(table.decide(peer + f[6:12] + b"\x88\xb5" + bytes(46), "site", t))
    assert table.counters["storm_broadcast"] > 15_000
    assert table.counters["storm_multicast"] == 0
    assert known and all(ports == ("other",) for ports in known)
    assert table.decide(storm_frame("broadcast", peer), "other", 10.5) == ("site",)
