"""netns-lab/loadgen --quick: a small hub-scale run against the real hub daemon.

20 synthetic spokes with their own certificates announce 2000 MACs, then send unicast
between each other for 2 s; the report must show every session and MAC held, frames
forwarded (none flooded or misdelivered) and the hub's memory measured.
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
