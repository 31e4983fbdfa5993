"""storm.py's token buckets and flood limiter, and the spoke that applies a hub's limits."""

import dataclasses
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from fakes import FakeClock, FakePort, FakeSession, edges
from hypothesis import given, settings
from hypothesis import strategies as st

from l2vpn import storm, wire
from l2vpn.config import (
    HubEndpoint,
    KeepaliveConfig,
    ManagementConfig,
    ReconnectConfig,
    SpokeConfig,
    TapConfig,
    TLSConfig,
)
from l2vpn.frame import BROADCAST
from l2vpn.eventloop import EventLoop
from l2vpn.loopguard import PROBE_DST
from l2vpn.offload import PLAIN_HDR
from l2vpn.spoke import REPORT_S, Spoke
from l2vpn.switch import SwitchTable

MCAST = bytes.fromhex("01005e000001")
UNICAST = bytes.fromhex("020000000002")
SRC = bytes.fromhex("020000000001")


def eth(dst: bytes, src: bytes = SRC) -> bytes:
    return dst + src + b"\x88\xb5" + bytes(46)


# -- TokenBucket / bucket() -------------------------------------------------------------


def test_a_bucket_starts_full_refills_at_its_rate_and_caps_at_its_burst():
    b = storm.bucket(4, 2.0)                      # 4/s, 8 deep
    assert [b.take(10.0) for _ in range(9)] == [True] * 8 + [False]
    assert b.take(10.25) and not b.take(10.25)    # a quarter second: one token
    assert [b.take(100.0) for _ in range(9)] == [True] * 8 + [False]


def test_a_bucket_never_goes_back_in_time():
    b = storm.bucket(10, 0.1)                     # 1 deep
    assert b.take(5.0)
    assert not b.take(4.0)                        # an earlier time adds nothing
    assert not b.take(5.0)
    assert b.take(5.2)


def test_rate_zero_means_no_bucket_and_a_tiny_rate_still_lets_one_through():
    assert storm.bucket(0, 1.0) is None
    b = storm.bucket(0.1, 1.0)
    assert b.burst == 1.0 and b.take(0.0) and not b.take(1.0)
    with pytest.raises(ValueError):
        storm.bucket(-1, 1.0)


# -- FloodLimiter -----------------------------------------------------------------------


def test_limiter_has_a_bucket_per_class_and_leaves_unicast_alone():
    lim = storm.FloodLimiter(2, 3)
    assert [lim.admit(eth(BROADCAST), 0, 1.0) for _ in range(3)] == [True, True, False]
    assert [lim.admit(eth(MCAST), 0, 1.0) for _ in range(4)] == [True] * 3 + [False]
    assert all(lim.admit(eth(UNICAST), 0, 1.0) for _ in range(100))
    assert lim.drops == {"storm_broadcast": 1, "storm_multicast": 1, "probe_excess": 0}


def test_limiter_reads_past_the_vnet_header_and_lets_runts_through():
    lim = storm.FloodLimiter(1, 1)
    assert lim.admit(PLAIN_HDR + eth(BROADCAST), 10, 0.0)
    assert not lim.admit(PLAIN_HDR + eth(BROADCAST), 10, 0.0)
    assert lim.admit(PLAIN_HDR, 10, 0.0) and lim.admit(b"", 0, 0.0)
    assert lim.admit(memoryview(PLAIN_HDR + eth(MCAST)), 10, 0.0)
    assert lim.drops == {"storm_broadcast": 1, "storm_multicast": 0, "probe_excess": 0}


def test_loop_probes_have_a_bucket_of_their_own_so_a_storm_cannot_hide_a_loop():
    lim = storm.FloodLimiter(1, 1, probe=PROBE_DST, probe_pps=4)
    assert lim.admit(eth(MCAST), 0, 0.0) and not lim.admit(eth(MCAST), 0, 0.0)
    assert [lim.admit(PLAIN_HDR + eth(PROBE_DST), 10, 0.0) for _ in range(6)] == \
        [True] * 4 + [False] * 2
    assert lim.admit(eth(PROBE_DST), 0, 0.25)     # refilled at 4/s
    assert lim.drops == {"storm_broadcast": 0, "storm_multicast": 1, "probe_excess": 2}
    unlimited = storm.FloodLimiter(1, 1, probe=PROBE_DST)
    assert all(unlimited.admit(eth(PROBE_DST), 0, 0.0) for _ in range(1000))


def test_limiter_with_zero_rates_limits_nothing_and_counts_into_the_given_dict():
    totals = {"storm_broadcast": 5, "storm_multicast": 7}
    lim = storm.FloodLimiter(0, 1, drops=totals)
    assert all(lim.admit(eth(BROADCAST), 0, 0.0) for _ in range(1000))
    lim.admit(eth(MCAST), 0, 0.0)
    lim.admit(eth(MCAST), 0, 0.0)
    assert totals == {"storm_broadcast": 5, "storm_multicast": 8}


@settings(max_examples=200, deadline=None)
@given(rates=st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(0, 50)),
       gaps=st.lists(st.tuples(st.floats(0, 0.2),
                               st.sampled_from([BROADCAST, MCAST, UNICAST, PROBE_DST])),
                     max_size=300),
       delay=st.floats(0, 5))
def test_what_the_spoke_admits_the_hub_passes(rates, gaps, delay):
    """Same buckets on both ends: the hub's storm control drops nothing the spoke let through,
    whatever the (constant) delay between them."""
    lim = storm.FloodLimiter(rates[0], rates[1], probe=PROBE_DST, probe_pps=rates[2])
    hub = SwitchTable(storm_pps=(rates[0], rates[1], 0), storm_burst_s=1.0,
                      intercept=PROBE_DST, probe_pps=rates[2])
    hub.add_port("site")
    hub.add_port("other")
    t = 0.0
    sent = 0
    for gap, dst in gaps:
        t += gap
        frame = eth(dst)
        if lim.admit(frame, 0, t):
            sent += 1
            hub.decide(frame, "site", t + delay)
    assert hub.counters["storm_broadcast"] == hub.counters["storm_multicast"] == 0
    assert hub.counters["probe_excess"] == 0
    assert hub.counters["flooded"] + hub.counters["probes"] == sent


# -- the spoke ------------------------------------------------------------------------


class FakeTapPort(FakePort):
    device = SimpleNamespace(name="l2vpn0")

    def snapshot(self) -> dict:
        return {"name": self.device.name, "drops": self.drops}


@pytest.fixture
def make_spoke(tmp_path):
    loops = []

    def make(flood_limits=True) -> Spoke:
        cfg = SpokeConfig(
            path=tmp_path / "spoke.yaml", node="site-a",
            hub=HubEndpoint("198.18.0.1", flood_limits=flood_limits),
            tls=TLSConfig(Path("ca.crt"), Path("site-a.crt"), Path("site-a.key")),
            tap=TapConfig("l2vpn0"), management=ManagementConfig(tmp_path / "spoke.sock"),
            keepalive=KeepaliveConfig(), reconnect=ReconnectConfig())
        loop = EventLoop(clock=FakeClock(1000.0))
        loops.append(loop)
        spoke = Spoke(cfg, edges(), loop=loop)
        spoke.tap = FakeTapPort("site-a")
        spoke.session = FakeSession("hub")
        spoke.check_session_health = lambda session, now: None   # keepalives: not here
        return spoke

    yield make
    for loop in loops:
        loop.close()


def from_tap(spoke, dst, n):
    for _ in range(n):
        spoke._from_tap(spoke.tap, PLAIN_HDR + eth(dst))


def test_spoke_sends_everything_until_the_hub_sends_limits(make_spoke):
    spoke = make_spoke()
    from_tap(spoke, BROADCAST, 50)
    assert len(spoke.session.sent) == 50
    assert spoke.status()["flood_limits"] is None


def test_spoke_drops_floods_past_the_hubs_limits_and_reports_once_per_interval(
        make_spoke, caplog):
    spoke = make_spoke()
    clock = spoke.loop.clock
    spoke._on_limits(spoke.session, wire.Limits(10, 20, 30))
    from_tap(spoke, BROADCAST, 15)
    from_tap(spoke, MCAST, 25)
    from_tap(spoke, UNICAST, 100)                 # the hub's business, never limited here
    from_tap(spoke, PROBE_DST, 30)                # loop probes pass whatever the storm
    assert len(spoke.session.sent) == 10 + 20 + 100 + 30
    st = spoke.status()
    assert st["flood_limits"] == {"broadcast_pps": 10, "multicast_pps": 20}
    assert st["flood_drops"] == {"storm_broadcast": 5, "storm_multicast": 5, "probe_excess": 0}
    with caplog.at_level(logging.WARNING, logger="l2vpn.spoke"):
        spoke._tick()
        clock.advance(1.0)
        from_tap(spoke, BROADCAST, 20)            # 10 refilled, 10 more dropped
        spoke._tick()
        clock.advance(REPORT_S)
        spoke._tick()
    lines = [r.getMessage() for r in caplog.records if "before sending" in r.getMessage()]
    assert lines == [
        "TAP l2vpn0: dropped 5 broadcasts over the hub's limit of 10/s; 5 multicasts over "
        "the hub's limit of 20/s before sending them to the hub",
        "TAP l2vpn0: dropped 10 broadcasts over the hub's limit of 10/s before sending "
        "them to the hub"]


def test_spoke_forgets_the_limits_with_the_session_and_keeps_the_counts(make_spoke):
    spoke = make_spoke()
    session = spoke.session
    spoke._on_limits(session, wire.Limits(1, 1, 1))
    from_tap(spoke, BROADCAST, 3)
    spoke._on_close(session, "test over")
    assert spoke.limiter is None and spoke.status()["flood_limits"] is None
    spoke.session = FakeSession("hub")            # a new hub that limits nothing
    spoke._on_limits(spoke.session, wire.Limits(0, 0, 0))
    from_tap(spoke, BROADCAST, 100)
    assert len(spoke.session.sent) == 100
    assert spoke.status()["flood_drops"]["storm_broadcast"] == 2


def test_spoke_status_shows_its_hub_session_with_its_id(make_spoke):
    spoke = make_spoke()
    first = spoke.session
    assert [x["id"] for x in spoke.status()["sessions"]] == [first.id]
    spoke._on_close(first, "test over")
    assert spoke.status()["sessions"] == []
    spoke.session = FakeSession("hub")            # connected again: a new session
    assert [x["id"] for x in spoke.status()["sessions"]] == [spoke.session.id]
    assert spoke.session.id != first.id


@pytest.mark.parametrize("flood_limits, caps", [(True, wire.CAP_FLOOD_LIMITS), (False, 0)])
def test_spoke_offers_to_apply_flood_limits_unless_told_not_to(make_spoke, monkeypatch,
                                                             flood_limits, caps):
    seen = {}

    class Recorder:
        def __init__(self, *args, **kw):
            seen.update(kw)

    spoke = make_spoke(flood_limits)
    spoke.edges = dataclasses.replace(spoke.edges,
                                      connect=lambda host, port: (None, "198.18.0.1:7443"))
    monkeypatch.setattr("l2vpn.spoke.Session", Recorder)
    spoke.context = None
    spoke._connect()
    assert seen["caps"] & wire.CAP_FLOOD_LIMITS == caps
    assert seen["on_limits"] == spoke._on_limits
