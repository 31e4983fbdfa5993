"""Reload on a real hub and spokes: ten reloads under a ping flood and a TCP stream lose
no ping and reset no connection; `admit: listed` refuses an unlisted spoke, and a reload
that lists it lets it in; a bad config is refused with exit 2 and changes nothing."""

import json
import re
import subprocess
import time

PINGS = 1500
PING_INTERVAL_S = 0.005     # ~7.5 s of pings: the reloads happen inside that window


def reload(lab, *args):
    return lab.l2vpn("reload", "-s", str(lab.nodes["hub"].socket), *args)


def session_ids(lab) -> dict:
    return {cn: s["id"] for cn, s in lab.sessions("hub").items()}


def in_ns(lab, name, argv):
    return subprocess.Popen(["ip", "netns", "exec", lab.ns(name), *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_ten_reloads_under_a_ping_flood_and_a_tcp_stream_lose_nothing(make_lab):
    lab = make_lab(spokes=["site-a", "site-b"])
    lab.wait_ping(lab.ns("site-a"), lab.ip("site-b"))
    before = session_ids(lab)
    server = in_ns(lab, "site-b", ["iperf3", "-s", "-1", "-B", lab.ip("site-b")])
    lab.wait_until(lambda: lab.exec(lab.ns("site-b"), ["ss", "-ltn"]).stdout.count(":5201"),
                   10, what="iperf3 listening in site-b")
    stream = in_ns(lab, "site-a", ["iperf3", "-c", lab.ip("site-b"), "-t", "8", "-J"])
    pings = in_ns(lab, "site-a", ["ping", "-q", "-i", str(PING_INTERVAL_S), "-c", str(PINGS),
                                  lab.ip("site-b")])
    try:
        for i in range(10):
            rate = 1001 + i                                      # a change each time
            lab.update_config("hub", {"switch": {"storm": {"broadcast_pps": rate}},
                                      "log": {"level": "debug" if i % 2 else "info"}})
            out = reload(lab, "--json")
            assert out.returncode == 0, out.stderr
            assert "switch.storm.broadcast_pps" in json.loads(out.stdout)["changed"]
            time.sleep(0.5)     # pacing: spread the reloads over the traffic, not a wait
        ping_out, _ = pings.communicate(timeout=60)
        stream_out, stream_err = stream.communicate(timeout=60)
    finally:
        for p in (pings, stream, server):
            if p.poll() is None:
                p.kill()
                p.wait()
    sent, got = map(int, re.search(r"(\d+) packets transmitted, (\d+) received",
                                   ping_out).groups())
    assert sent == PINGS and got == PINGS, ping_out             # no ping lost
    result = json.loads(stream_out)
    assert "error" not in result, result.get("error")           # no reset, no stall out
    assert result["end"]["sum_received"]["bytes"] > 10_000_000
    assert session_ids(lab) == before                           # no session was redone
    st = lab.status("hub")
    assert st["switch"]["storm"]["broadcast_pps"] == 1010
    assert "reload (l2vpn reload): applied switch.storm.broadcast_pps" in lab.log("hub")


def test_admit_listed_refuses_an_unlisted_spoke_until_a_reload_lists_it(make_lab):
    lab = make_lab(spokes=["site-a", "site-b"], start=False)
    lab.update_config("hub", {"admit": "listed", "ports": {"site-a": {}}})
    lab.update_config("site-b", {"reconnect": {"initial_s": 0.2, "max_s": 0.5}})
    lab.start_all()
    lab.wait_sessions(spokes=["site-a"])

    def refused():
        text = lab.l2vpn("metrics", "-s", str(lab.nodes["hub"].socket)).stdout
        return 'l2vpn_handshake_failures_total{reason="not_listed"} ' in text and \
            not re.search(r'reason="not_listed"} 0\.0', text)
    lab.wait_until(refused, 15, what="site-b refused as not listed", alive=["hub"])
    assert set(lab.sessions("hub")) == {"site-a"}
    assert "site-b is not listed under ports (admit: listed)" in lab.log("hub")

    lab.update_config("hub", {"ports": {"site-b": {"max_macs": 16}}})
    out = reload(lab, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"changed": ["ports.site-b"], "needs_restart": []}
    lab.wait_sessions(spokes=["site-a", "site-b"])
    lab.wait_ping(lab.ns("site-a"), lab.ip("site-b"))


def test_a_bad_config_is_refused_and_nothing_changes(make_lab):
    lab = make_lab(spokes=["site-a"])
    before = session_ids(lab)
    lab.update_config("hub", {"switch": {"max_macs_per_port": 0}, "listen": {"port": 7999}})
    out = reload(lab)
    assert out.returncode == 2
    assert "switch.max_macs_per_port" in out.stderr and "keeps its running config" in out.stderr
    assert session_ids(lab) == before
    metrics = lab.l2vpn("metrics", "-s", str(lab.nodes["hub"].socket)).stdout
    assert "l2vpn_config_last_reload_successful 0.0" in metrics
    lab.update_config("hub", {"switch": {"max_macs_per_port": 64}})
    out = reload(lab, "--json")
    assert out.returncode == 0
    assert json.loads(out.stdout) == {"changed": ["switch.max_macs_per_port"],
                                      "needs_restart": ["listen.port"]}
    assert lab.status("hub")["switch"]["max_macs_per_port"] == 64
