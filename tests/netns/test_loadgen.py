"""netns-lab/loadgen --quick: a small hub-scale run against the real hub daemon.

20 synthetic spokes with their own certificates announce 2000 MACs, then send unicast
between each other for 2 s, then time two metrics scrapes and two status requests against
steady streams; the report must show every session and MAC held, frames forwarded (none
flooded or misdelivered), the hub's memory measured and each request's forwarding stall
measured beside a quiet baseline (the figures are reported, not judged: CI is no bench).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns

LOADGEN = Path(__file__).resolve().parents[2] / "netns-lab" / "loadgen"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("loadgen") / "report.json"
    proc = subprocess.run([sys.executable, str(LOADGEN), "--quick", "--json-out", str(out)],
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, (f"loadgen exited {proc.returncode}\n--- stderr ---\n"
                                  f"{proc.stderr[-4000:]}\n--- stdout ---\n{proc.stdout[-4000:]}")
    data = json.loads(proc.stdout)
    assert data == json.loads(out.read_text())
    return data


def test_every_session_and_mac_is_held(report):
    n, m = report["params"]["sessions"], report["params"]["macs"]
    assert report["ok"] and all(t["met"] for t in report["targets"].values())
    assert report["sessions"]["held_at_end"] == n
    assert report["sessions"]["lost_after_up"] == 0
    assert report["macs"]["table_entries"] == m
    assert report["macs"]["held_at_end"] == m
    assert report["macs"]["on_wrong_port"] == 0


def test_unicast_is_forwarded_not_flooded(report):
    fwd = report["forwarding"]
    assert fwd["frames_received"] > 0 and fwd["frames_per_s"] > 0
    assert fwd["misdelivered"] == 0
    assert fwd["hub_flooded"] == 0
    assert fwd["hub_forwarded"] >= fwd["frames_received"]
    assert report["sessions"]["unexpected_frames_outside_phase3"] == 0
    # the hub's loop probes reach every synthetic spoke and are told apart from traffic
    assert report["sessions"]["loop_probes_received"] >= report["params"]["sessions"]


def test_hub_memory_and_lookup_cost_are_reported(report):
    hub = report["hub"]
    assert hub["pid_is_daemon"]
    assert 0 < hub["memory_at_end"]["rss_mb"] <= hub["memory_at_end"]["peak_rss_mb"]
    assert report["targets"]["hub_rss_mb"]["got_peak"] < 300
    costs = report["lookup_bench"]["ns_per_decide"]
    assert set(costs) == {"1000", "10000", "100000"} and all(v > 0 for v in costs.values())


@pytest.mark.parametrize("kind", ["scrape", "status_json"])
def test_request_stalls_are_measured_against_a_baseline(report, kind):
    stalls, m = report["stalls"], report["params"]["macs"]
    assert stalls["pace"]["streams"] >= 2 and stalls["pace"]["misdelivered"] == 0
    got = stalls[kind]
    rounds = report["params"]["stall_rounds"]
    assert len(got["duration_ms"]) == len(got["per_round"]) == rounds
    assert all(d > 0 for d in got["duration_ms"]) and got["bytes"] > 1000
    assert got["mac_table_entries"] == m          # the reply saw the whole table
    assert got["frames_sent"] > 0 and got["frames_lost"] == 0
    for key in ("max_delay_ms", "max_gap_ms", "baseline_max_delay_ms", "baseline_max_gap_ms"):
        assert 0 < got[key] < 10_000, key
        median = key.replace("max_", "median_round_max_", 1)
        assert got[median] <= got[key], median
    assert 0 < got["baseline_median_delay_ms"] <= got["baseline_max_delay_ms"]
