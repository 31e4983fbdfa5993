"""Storm control through a real hub: a busy LAN's start-up passes the defaults untouched;
a storm from one site is cut to its limit while the other sites keep talking, by the
storming site's own spoke where it applies the hub's limits, else by the hub.

Storm frames are counted where they come out (site-b's TAP) with a sniffer bound before
the first frame leaves. The end of a flood is proved without sleeping: a known-unicast
fence from the flooding site to site-b is not rate-limited and keeps its port's order,
so once it arrives every storm frame the hub was going to pass has arrived too.
"""

import collections
import contextlib
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

import labnet

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "netns-lab"))

import busy_lan  # noqa: E402

pytestmark = pytest.mark.netns

STORM_KEYS = ("storm_broadcast", "storm_multicast", "storm_unknown_unicast")
TAP = labnet.SPOKE_TAP
ETH_TEST = b"\x88\xb5"
# The power_restore stretch replayed in real time: its busiest 10 s, from the start.
REPLAY_S = 12.0
LIMIT_PPS = 200               # the small limits of the flood tests, every class
FLOOD_FRAMES = 20_000
PROBE_DST = bytes.fromhex("036c3276706e")   # loopguard.PROBE_DST
PROBE_PPS = 64                               # loopguard.PROBE_PPS
PROBE_FLOOD = 5_000


def big_sniffer(lab, name, ifname=TAP):
    return labnet.Sniffer(lab.ns(name), ifname, rcvbuf=64 << 20)


def raw_socket(ns, ifname):
    s = labnet.socket_in(ns, socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.bind((ifname, 0))
    return s


def unpadded(frame: bytes) -> bytes:
    """A frame without its trailing zero padding: a bridge with br_netfilter trims IPv4
    frames to the IP length, so the 60-byte padding of a short one may not arrive."""
    return frame.rstrip(b"\0")


def hub_storm(lab):
    st = lab.status("hub")
    return st, {k: st["switch"]["counters"][k] for k in STORM_KEYS}


def session(st, name):
    (s,) = [s for s in st["sessions"] if s["node"] == name]
    return s


# ------------------------------------------------------------------------------ (a)


def test_busy_lan_start_up_crosses_default_limits_untouched(make_lab):
    lab = make_lab(spokes=["site-a", "site-b"], lan={"site-a": ["lan-a"]})
    st0, before = hub_storm(lab)
    assert lab.config("hub").get("switch", {}).get("storm") is None, "defaults, not a config"
    # only what the hub floods (the site's bridge keeps local unicast at home), in real time
    frames = [(t, f) for t, f, _ in busy_lan.flooded(busy_lan.trace("power_restore", 0))
              if t < REPLAY_S]
    sources = {f[6:12] for _, f in frames}
    want = collections.Counter(unpadded(f) for _, f in frames)
    sn = big_sniffer(lab, "site-b")
    sock = raw_socket(lab.ns("lan-a"), "eth0")
    try:
        t0 = time.monotonic()
        for t, f in frames:
            left = t0 + t - time.monotonic()
            if left > 0:
                sn.poll(left)         # pace the replay; drain the sniffer meanwhile
            sock.send(f)
        late_s = time.monotonic() - t0 - frames[-1][0]
        got = sn.wait_for(lambda fr: fr.data[6:12] in sources, count=len(frames),
                          timeout_s=30)
        seen = collections.Counter(unpadded(fr.data) for fr in got)
    finally:
        sock.close()
        sn.close()
    print(f"replayed {len(frames)} frames of power_restore's first {REPLAY_S:g} s "
          f"({late_s:.2f} s behind schedule at the end)")
    missing = want - seen
    assert not missing, f"{sum(missing.values())} frames never reached site-b"
    assert seen == want, "frames arrived altered or more than once"
    st1, after = hub_storm(lab)
    assert after == before == dict.fromkeys(STORM_KEYS, 0)
    drops = session(st1, "site-a")["switch"]["drops"]
    assert {k: drops[k] for k in STORM_KEYS} == dict.fromkeys(STORM_KEYS, 0)


# ---------------------------------------------------------------------------- (b, c)


@pytest.fixture(scope="module")
def limited_lab():
    """site-a and site-d flood, site-b watches, site-c is the other end of site-b's traffic;
    every storm limit at LIMIT_PPS. site-a applies the hub's limits itself (the default);
    site-d is told not to (hub.flood_limits: false, as a spoke from before LIMITS), so the
    hub has to drop its storm after paying for it."""
    lab = labnet.Lab(spokes=["site-a", "site-b", "site-c", "site-d"])
    try:
        lab.build()
        lab.update_config("hub", {"switch": {"storm": {
            "broadcast_pps": LIMIT_PPS, "multicast_pps": LIMIT_PPS,
            "unknown_unicast_pps": LIMIT_PPS}}})
        lab.update_config("site-d", {"hub": {"flood_limits": False}})
        lab.start_all()
        lab.wait_sessions()
        lab.wait_ping(lab.ns("site-b"), lab.ip("site-c"))
        yield lab
    finally:
        lab.close()


FLOOD_DST = {"broadcast": "ff:ff:ff:ff:ff:ff", "multicast": "01:00:5e:7f:00:01"}


def flood_frames(cls, marker):
    dst = FLOOD_DST.get(cls) or labnet.stable_mac(f"nobody-{uuid.uuid4().hex}")
    src = labnet.stable_mac(f"flooder-{uuid.uuid4().hex}")
    head = bytes.fromhex(dst.replace(":", "") + src.replace(":", "")) + ETH_TEST
    return head, [head + marker + i.to_bytes(4, "big") + bytes(30) for i in range(FLOOD_FRAMES)]


def flood_then_fence(lab, sock, sn, frames, src: bytes) -> tuple[int, float]:
    """Send frames out of sock, then a known-unicast fence from src to site-b until sn
    (on site-b's TAP) sees it: every flood frame the hub passed has arrived by then.
    Returns (fences sent, seconds from the first frame to the fence's arrival)."""
    fence_mark = b"fence-" + uuid.uuid4().hex.encode()
    fence = bytes.fromhex(lab.tap_mac("site-b").replace(":", "")) + src + ETH_TEST + \
        fence_mark.ljust(46, b".")
    fences = 0
    t_start = time.monotonic()
    for f in frames:
        with contextlib.suppress(BlockingIOError, OSError):
            sock.send(f)           # a full TAP queue drops; the spoke counts what came
    deadline = time.monotonic() + 20
    while True:                    # the fence itself may meet a full queue: resend
        sock.send(fence)
        fences += 1
        try:
            sn.wait_for(labnet.has_marker(fence_mark), timeout_s=1)
            break
        except TimeoutError:
            if time.monotonic() > deadline:
                raise
    return fences, time.monotonic() - t_start


class Background:
    """Runs fn in a thread; result() re-raises what it raised."""

    def __init__(self, fn):
        self.out = {}
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn):
        try:
            self.out["value"] = fn()
        except BaseException as exc:   # handed to the test thread
            self.out["error"] = exc

    def result(self, timeout_s):
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), f"background work still running after {timeout_s} s"
        if "error" in self.out:
            raise self.out["error"]
        return self.out["value"]


@pytest.mark.parametrize("flooder", ["site-a", "site-d"])
@pytest.mark.parametrize("cls", ["broadcast", "multicast", "unknown_unicast"])
def test_a_storm_is_cut_to_its_limit_and_the_other_sites_keep_talking(limited_lab, cls,
                                                                      flooder):
    lab = limited_lab
    key = f"storm_{cls}"
    # site-a drops broadcast and multicast storms itself; unknown unicast only the hub
    # can tell, and site-d leaves everything to the hub
    cut_at_spoke = flooder == "site-a" and cls != "unknown_unicast"
    marker = b"storm-" + uuid.uuid4().hex.encode()
    head, frames = flood_frames(cls, marker)
    st0, before = hub_storm(lab)
    a0 = session(st0, flooder)
    f0 = lab.status(flooder)
    sn = big_sniffer(lab, "site-b")
    sock = raw_socket(lab.ns(flooder), TAP)
    try:
        # site-b <-> site-c traffic runs through the storm
        ping = Background(lambda: lab.ping(lab.ns("site-b"), lab.ip("site-c"), count=20,
                                           interval_s=0.05, wait_s=2))
        xfer = Background(lambda: lab.tcp_transfer("site-b", "site-c", 32 << 20,
                                                   timeout_s=60))
        fences, elapsed_s = flood_then_fence(lab, sock, sn, frames, head[6:12])
        delivered = len(sn.matching(labnet.has_marker(marker)))
        r = ping.result(30)
        t = xfer.result(90)
    finally:
        sock.close()
        sn.close()
    st1, after = hub_storm(lab)
    a1 = session(st1, flooder)
    f1 = lab.status(flooder)
    hub_dropped = after[key] - before[key]
    read = f1["tap"]["frames_in"] - f0["tap"]["frames_in"] - fences   # the spoke got
    reached = a1["frames_in"] - a0["frames_in"] - fences               # the hub got
    spoke_dropped = f1["flood_drops"].get(key, 0) - f0["flood_drops"].get(key, 0)
    print(f"{cls} from {flooder}: {read} of {FLOOD_FRAMES} read by the spoke, {reached} "
          f"reached the hub, {delivered} passed; dropped {spoke_dropped} at the spoke, "
          f"{hub_dropped} at the hub, in {elapsed_s:.2f} s")
    assert read > 5 * LIMIT_PPS, "the flood hardly reached the spoke: nothing was tested"
    # what passes is bounded by the bucket: full at the start, refilled at the limit
    assert delivered <= LIMIT_PPS * 1.0 + LIMIT_PPS * elapsed_s + 2
    assert delivered >= min(reached, LIMIT_PPS) * 0.9, "storm control dropped too much"
    # the other spokes on the hub flood path: every frame the hub passed reached site-b
    assert abs(reached - hub_dropped - delivered) <= 3
    assert a1["switch"]["drops"][key] - a0["switch"]["drops"][key] == hub_dropped
    assert all(after[k] == before[k] for k in STORM_KEYS if k != key)
    if cut_at_spoke:
        # the storm stopped at its own site: the hub never paid for it
        assert a1["flood_limits"] is True
        assert f1["flood_limits"] == {"broadcast_pps": LIMIT_PPS, "multicast_pps": LIMIT_PPS}
        assert abs(read - reached - spoke_dropped) <= 3
        assert reached <= 2 * LIMIT_PPS + LIMIT_PPS * elapsed_s
        assert hub_dropped <= 5
    else:
        assert spoke_dropped == 0 and abs(read - reached) <= 3
        assert reached > 5 * LIMIT_PPS, "the flood hardly reached the hub: nothing was tested"
        assert a1["flood_limits"] is (flooder == "site-a")
    # the port is limited, not cut off: same session, still up, still forwarding
    assert a1["state"] == "up" and a1["remote"] == a0["remote"]
    assert a1["id"] == a0["id"], f"{flooder}'s session was re-established"
    assert not a1["switch"]["blocked"]
    assert r.ok, f"ping site-b -> site-c during the storm: {r}"
    assert t.received == t.size and t.intact
    assert lab.ping(lab.ns(flooder), lab.ip("site-b"), count=2).ok


@pytest.mark.parametrize("flooder", ["site-a", "site-d"])
def test_a_flood_to_the_probe_address_costs_the_hub_at_most_probe_pps_checks(limited_lab,
                                                                             flooder):
    """Frames to the loop-probe address skip storm control (a storm must not hide the loop
    that causes it) but each would cost the hub a signature check: past PROBE_PPS a port
    they are dropped unchecked, at site-a's spoke (which limits) or at the hub (site-d)."""
    lab = limited_lab
    src = bytes.fromhex(labnet.stable_mac("probe-flooder").replace(":", ""))
    frames = [PROBE_DST + src + ETH_TEST + os.urandom(64) for _ in range(PROBE_FLOOD)]
    st0 = lab.status("hub")
    a0, f0, ld0 = session(st0, flooder), lab.status(flooder), st0["switch"]["loop_detection"]
    sn = big_sniffer(lab, "site-b")
    sock = raw_socket(lab.ns(flooder), TAP)
    try:
        fences, elapsed_s = flood_then_fence(lab, sock, sn, frames, src)
    finally:
        sock.close()
        sn.close()
    st1 = lab.status("hub")
    a1, f1, ld1 = session(st1, flooder), lab.status(flooder), st1["switch"]["loop_detection"]
    read = f1["tap"]["frames_in"] - f0["tap"]["frames_in"] - fences
    reached = a1["frames_in"] - a0["frames_in"] - fences
    checked = ld1["forged"] - ld0["forged"]
    hub_dropped = a1["switch"]["drops"]["probe_excess"] - a0["switch"]["drops"]["probe_excess"]
    spoke_dropped = f1["flood_drops"]["probe_excess"] - f0["flood_drops"]["probe_excess"]
    print(f"probe-address flood from {flooder}: {read} read by the spoke, {reached} reached "
          f"the hub, {checked} checked; dropped {spoke_dropped} at the spoke, {hub_dropped} "
          f"at the hub, in {elapsed_s:.2f} s")
    assert read > 5 * PROBE_PPS, "the flood hardly reached the spoke: nothing was tested"
    assert checked <= PROBE_PPS * (1.0 + elapsed_s) + 2
    assert checked >= min(reached, PROBE_PPS) * 0.9
    assert abs(reached - hub_dropped - checked) <= 3
    if flooder == "site-a":
        assert abs(read - reached - spoke_dropped) <= 3
        assert hub_dropped <= 5
    else:
        assert spoke_dropped == 0 and abs(read - reached) <= 3
    # nothing else was counted as a loop, and the port still works
    assert ld1["probes_back"] == ld0["probes_back"] and not st1["switch"]["blocked"]
    assert a1["state"] == "up" and a1["remote"] == a0["remote"]
    assert lab.ping(lab.ns(flooder), lab.ip("site-b"), count=2).ok
