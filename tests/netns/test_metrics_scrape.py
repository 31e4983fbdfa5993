"""Prometheus metrics from real daemons: GET /metrics inside each node's namespace (curl),
counters that follow a ping, `l2vpn metrics`, and a metrics port in use."""

import shutil

import pytest
from fakes import metric_samples as samples
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.netns

PORT = 9477
URL = f"http://127.0.0.1:{PORT}/metrics"




def scrape(lab, name) -> str:
    if shutil.which("curl"):
        argv = ["curl", "-sf", URL]
    else:
        argv = [lab.python, "-c", f"import urllib.request, sys; "
                f"sys.stdout.write(urllib.request.urlopen({URL!r}, timeout=5).read().decode())"]
    out = lab.exec(lab.ns(name), argv, timeout_s=15)
    assert out.returncode == 0, f"scraping {name}: {out.stderr}"
    return out.stdout


def port_value(got, name, port):
    return got[(name, (("port", port),))]


def test_hub_and_spokes_serve_metrics(make_lab):
    lab = make_lab(start=False)
    for name in lab.nodes:
        lab.update_config(name, {"metrics": {"listen": f"127.0.0.1:{PORT}"}})
    lab.start_all()
    lab.wait_sessions()
    lab.wait_ping(lab.ns("site-a"), lab.ip("site-b"))

    before = samples(scrape(lab, "hub"))
    assert before[("l2vpn_sessions", ())] == 2
    assert before[("l2vpn_handshake_failures_total", (("reason", "untrusted"),))] == 0
    assert lab.ping(lab.ns("site-a"), lab.ip("site-b"), count=5, interval_s=0.05).ok
    hub_text = scrape(lab, "hub")
    after = samples(hub_text)
    for port in ("site-a", "site-b"):
        for name in ("l2vpn_port_receive_frames_total", "l2vpn_port_transmit_frames_total"):
            assert port_value(after, name, port) >= port_value(before, name, port) + 5, name
    assert port_value(after, "l2vpn_port_macs", "site-a") >= 1
    assert port_value(after, "l2vpn_port_blocked", "site-a") == 0
    assert after[("l2vpn_mac_table_entries", ())] >= 2
    assert after[("l2vpn_handshakes_total", ())] >= 2
    assert "process_resident_memory_bytes" in hub_text

    spoke = samples(scrape(lab, "site-a"))
    assert spoke[("l2vpn_hub_connected", ())] == 1
    assert port_value(spoke, "l2vpn_port_transmit_frames_total", "hub") >= 5
    assert spoke[("l2vpn_flood_limited_total", (("class", "broadcast"),))] == 0

    out = lab.l2vpn("metrics", "-s", str(lab.nodes["hub"].socket))
    assert out.returncode == 0, out.stderr
    names = {fam.name for fam in text_string_to_metric_families(out.stdout)}
    assert names == {fam.name for fam in text_string_to_metric_families(hub_text)}
    assert samples(out.stdout)[("l2vpn_sessions", ())] == 2


def test_a_metrics_port_in_use_is_one_line_and_exit_1(make_lab):
    lab = make_lab(spokes=["site-a"], start=False)
    # the hub's own listener holds 0.0.0.0:port first, so 127.0.0.1:port is taken
    path = lab.update_config("hub", {"metrics": {"listen": f"127.0.0.1:{lab.port}"}})
    out = lab.l2vpn("hub", "-c", str(path), ns=lab.ns("hub"), timeout_s=30)
    assert out.returncode == 1, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("l2vpn: ")]
    assert errors == [f"l2vpn: cannot serve metrics on 127.0.0.1:{lab.port}: port already "
                      f"in use; stop the other program or set metrics.listen"]
    assert "Traceback" not in out.stderr
