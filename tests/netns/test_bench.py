"""netns-lab/bench --quick: both systems measured, the JSON complete, the chart a PNG.

No speed is asserted here (the machine may be busy); only that the run completes, every
metric has a positive number for both systems, and nothing of the lab is left behind.
"""

import json
import sys
from pathlib import Path

import pytest

import labnet

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "netns-lab" / "bench"
TIMEOUT_S = 180
METRICS = ["tcp_1_gbit_s", "tcp_4_gbit_s", "lan_tcp_1_gbit_s",
           "udp64_pps", "udp64_offered_pps", "udp64_loss_pct",
           "ping_idle_avg_ms", "ping_idle_min_ms", "ping_idle_max_ms", "ping_idle_loss_pct",
           "ping_loaded_avg_ms", "ping_loaded_min_ms", "ping_loaded_max_ms",
           "ping_loaded_loss_pct", "cpu_hub_pct", "cpu_site_a_pct", "cpu_site_b_pct"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One `bench --quick` run: (exit code, stdout, stderr, out dir, bench pid)."""
    out = tmp_path_factory.mktemp("bench")
    try:
        code, stdout, stderr, pid = labnet.run_tool(
            [sys.executable, str(BENCH), "--quick", "--out", str(out)], TIMEOUT_S, "l2b",
            cwd=REPO)
    except TimeoutError as e:
        pytest.fail(str(e))
    return code, stdout, stderr, out, pid


def test_quick_bench_completes_and_leaves_nothing_behind(quick_run):
    code, _stdout, stderr, _out, pid = quick_run
    assert code == 0, f"bench exited {code}; stderr tail:\n{stderr[-4000:]}"
    left = [ns for ns in labnet.netns.listnetns() if ns.startswith(f"l2b{pid}x")]
    assert not left, f"namespaces left behind: {left}"


def test_json_has_every_metric_for_both_systems(quick_run):
    code, stdout, stderr, out, _pid = quick_run
    assert code == 0, stderr[-4000:]
    report = json.loads(stdout)
    for key in ("date", "host", "config", "results", "ratios", "targets"):
        assert key in report, key
    assert json.loads((out / "latest.json").read_text()) == report
    assert json.loads((out / f"{report['date']}.json").read_text()) == report
    for key in ("kernel", "cpus", "python", "openvpn", "l2vpn_commit"):
        assert report["host"][key], key
    assert report["host"]["openvpn"].startswith("OpenVPN 2.")
    assert report["config"]["reps"] == 1
    for system in ("l2vpn", "openvpn"):
        results = report["results"][system]
        assert set(METRICS) <= set(results), f"{system} lacks {set(METRICS) - set(results)}"
        for metric, s in results.items():
            assert len(s["samples"]) == 1, (system, metric)
            assert s["min"] <= s["median"] <= s["max"], (system, metric, s)
            if metric.endswith("_loss_pct"):
                assert 0 <= s["median"] <= 100, (system, metric, s)
            else:
                assert s["median"] > 0, (system, metric, s)
    for metric in ("tcp_1_gbit_s", "tcp_4_gbit_s", "lan_tcp_1_gbit_s", "ping_idle_avg_ms"):
        assert report["ratios"][metric] > 0, metric
    assert set(report["targets"]) == {"tcp_1", "tcp_4", "ping_idle", "lan_tcp_1"}
    assert all(isinstance(v, bool) for v in report["targets"].values())


def test_chart_is_a_png(quick_run):
    code, stdout, stderr, out, _pid = quick_run
    assert code == 0, stderr[-4000:]
    date = json.loads(stdout)["date"]
    for name in ("latest.png", f"{date}.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) > 10_000, name
