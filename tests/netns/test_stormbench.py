"""netns-lab/stormbench, cut short: every storm-control mode runs, each drops where it
should, and nothing of the lab is left behind.

No speed is asserted (the machine may be busy): only where storm frames were dropped
(site-a's spoke with the defaults, the hub when site-a does not apply the limits, nowhere
with storm control off) and that the busy_lan replays lost nothing.
"""

import json
import sys
from pathlib import Path

import pytest

import labnet

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
STORMBENCH = REPO / "netns-lab" / "stormbench"
TIMEOUT_S = 240
ARGS = ["--quick", "--layouts", "shared", "--rates", "max", "--seconds", "2",
        "--replay-s", "3"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(exit code, report or None, stderr, pid) of one short stormbench run."""
    out = tmp_path_factory.mktemp("stormbench") / "report.json"
    try:
        code, stdout, stderr, pid = labnet.run_tool(
            [sys.executable, str(STORMBENCH), *ARGS, "--out", str(out)], TIMEOUT_S, "l2s",
            cwd=REPO)
    except TimeoutError as e:
        pytest.fail(str(e))
    report = json.loads(stdout) if code == 0 else None
    if report is not None:
        assert report == json.loads(out.read_text())
    return code, report, stderr, pid


def row(report, mode, rate):
    (r,) = [r for r in report["runs"]
            if r["storm_control"] == mode and str(r["storm_pps_offered"]) == rate]
    return r


def test_stormbench_completes_and_leaves_nothing_behind(run):
    code, report, stderr, pid = run
    assert code == 0, f"stormbench exited {code}; stderr tail:\n{stderr[-4000:]}"
    left = [ns for ns in labnet.netns.listnetns() if ns.startswith(f"l2s{pid}x")]
    assert not left, f"namespaces left behind: {left}"
    modes = {(r["storm_control"], str(r["storm_pps_offered"])) for r in report["runs"]}
    assert modes == {(m, rate) for m in ("defaults", "hub_only", "off")
                     for rate in ("none", "max")}
    assert all(r["tcp_gbit_s"] > 0 for r in report["runs"])


def test_each_mode_drops_the_storm_where_it_should(run):
    code, report, stderr, _ = run
    assert code == 0, stderr[-2000:]
    at_spoke, at_hub, off = (row(report, m, "max") for m in ("defaults", "hub_only", "off"))
    assert all(r["generator_pps"] > 5000 for r in (at_spoke, at_hub, off)), "no storm made"
    # the defaults: site-a's spoke drops the storm, the hub hardly sees it
    assert at_spoke["spoke_storm_drops_pps"] > 5000
    assert at_spoke["hub_storm_drops_pps"] < 0.05 * at_spoke["spoke_storm_drops_pps"]
    # site-a told not to: the hub drops it
    assert at_hub["spoke_storm_drops_pps"] == 0 and at_hub["hub_storm_drops_pps"] > 5000
    # either way about the limit reaches site-c; with storm control off, the storm does
    limit = report["config"]["storm_defaults"]["broadcast_pps"]
    for r in (at_spoke, at_hub):
        assert 0.5 * limit < r["storm_to_site_c_pps"] < 2.5 * limit
    assert off["spoke_storm_drops_pps"] == off["hub_storm_drops_pps"] == 0
    assert off["storm_to_site_c_pps"] > 3 * limit


def test_busy_lan_replays_lose_nothing_at_the_defaults(run):
    code, report, stderr, _ = run
    assert code == 0, stderr[-2000:]
    assert set(report["busy_lan"]) == {"steady", "power_restore", "scan"}
    for name, scenario in report["busy_lan"].items():
        assert scenario["frames"] > 0, name
        assert scenario["zero_drops"], (name, scenario["hub_storm_drops"],
                                        scenario["spoke_storm_drops"])
    assert report["summary"]["busy_lan_zero_drops"] is True
