import datetime as dt
import json
import logging
import os
import stat
import subprocess
import sys

import pytest
import yaml
from cryptography import x509
from fakes import call_in_thread

import l2vpn
from l2vpn import cli, edges, hub, pki, spoke
from l2vpn.cli import main, render_status
from l2vpn.edges import REAL
from l2vpn.config import TLSConfig
from l2vpn.eventloop import EventLoop
from l2vpn.management import ManagementServer


@pytest.fixture(autouse=True)
def keep_logging():
    """`hub`/`spoke` set up logging; put the global logging state back afterwards."""
    root = logging.getLogger()
    ours = logging.getLogger("l2vpn")
    saved = (list(root.handlers), root.level, ours.level)
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    ours.setLevel(saved[2])


@pytest.fixture
def ca(pki_dir):
    return pki_dir


def write_config(tmp_path, doc, name="node.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


def hub_doc(ca, tmp_path, **changes):
    doc = {
        "node": "hub",
        "listen": {"address": "127.0.0.1", "port": 7443},
        "tls": {"ca": str(ca / "ca.crt"), "cert": str(ca / "hub.crt"), "key": str(ca / "hub.key")},
        "tap": {"name": "l2vpn-test0"},
        "management": {"socket": str(tmp_path / "hub.sock")},
    }
    doc.update(changes)
    return doc


def spoke_doc(ca, tmp_path, **changes):
    doc = {
        "node": "site-a",
        "hub": {"address": "127.0.0.1"},
        "tls": {"ca": str(ca / "ca.crt"), "cert": str(ca / "site-a.crt"),
                "key": str(ca / "site-a.key")},
        "tap": {"name": "l2vpn-test1"},
        "management": {"socket": str(tmp_path / "site-a.sock")},
    }
    doc.update(changes)
    return doc


def lines(text):
    return [line for line in text.splitlines() if line]


# -- argument parsing ----------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["--help"], ["hub", "--help"], ["spoke", "--help"], ["check", "--help"],
    ["status", "--help"], ["pki", "--help"], ["pki", "init", "--help"],
    ["pki", "issue", "--help"], ["pki", "revoke", "--help"], ["pki", "crl", "--help"],
])
def test_help_of_every_verb_exits_0(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    assert "usage: l2vpn" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["hub"], ["spoke"], ["check"], [], ["pki"],
                                  ["pki", "issue", "DIR", "x"], ["pki", "revoke", "DIR"],
                                  ["pki", "crl"], ["pki", "crl", "DIR", "--days", "ten"],
                                  ["frobnicate"]])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_missing_config_option_is_named(capsys):
    with pytest.raises(SystemExit):
        main(["hub"])
    assert "-c/--config" in capsys.readouterr().err


def test_version_in_a_subprocess():
    done = subprocess.run([sys.executable, "-m", "l2vpn", "--version"], capture_output=True,
                          text=True, timeout=30, cwd=os.path.dirname(os.path.dirname(l2vpn.__file__)))
    assert done.returncode == 0
    assert done.stdout.strip() == f"l2vpn {l2vpn.__version__}"


# -- pki -----------------------------------------------------------------------------


def test_pki_init_and_issue_create_files(tmp_path, capsys):
    d = tmp_path / "ca"
    assert main(["pki", "init", str(d)]) == 0
    assert main(["pki", "issue", str(d), "hub", "--role", "hub"]) == 0
    assert main(["pki", "issue", str(d), "site-a", "--role", "spoke", "--ip", "198.18.0.2",
                 "--dns", "a.example"]) == 0
    for name in ("ca", "hub", "site-a"):
        assert (d / f"{name}.crt").is_file()
        assert stat.S_IMODE(os.stat(d / f"{name}.key").st_mode) == 0o600
    out = capsys.readouterr().out
    assert str(d / "site-a.crt") in out and "spoke" in out
    cert = x509.load_pem_x509_certificate((d / "site-a.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "a.example" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["198.18.0.2"]
    problems = pki.check_tls(TLSConfig(d / "ca.crt", d / "site-a.crt", d / "site-a.key"),
                             "spoke", "site-a")
    assert problems == []


def test_pki_init_twice_is_one_line_exit_2(tmp_path, capsys):
    assert main(["pki", "init", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["pki", "init", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert len(lines(captured.err)) == 1
    assert "already" in captured.err and "Traceback" not in captured.err
    assert captured.out == ""


def test_pki_issue_without_a_ca_is_one_line_exit_2(tmp_path, capsys):
    assert main(["pki", "issue", str(tmp_path), "hub", "--role", "hub"]) == 2
    err = capsys.readouterr().err
    assert len(lines(err)) == 1 and err.startswith("l2vpn: ")


def test_pki_issue_bad_name_exit_2(tmp_path, capsys):
    main(["pki", "init", str(tmp_path)])
    assert main(["pki", "issue", str(tmp_path), "bad name", "--role", "spoke"]) == 2
    assert "bad certificate name" in capsys.readouterr().err


HUB_HINT = ("put it where the hub's tls.crl points; a running hub picks it up within 1 s "
            "(or send it SIGHUP)")


def test_pki_crl_writes_the_crl(fresh_ca, capsys):
    assert main(["pki", "crl", str(fresh_ca)]) == 0
    crl = fresh_ca / "crl.pem"
    out = capsys.readouterr().out.splitlines()
    assert out == [f"CRL {crl} lists 0 revoked certificates", HUB_HINT]
    assert main(["pki", "crl", str(fresh_ca), "--days", "30"]) == 0
    loaded = pki.load_crl(crl, fresh_ca / "ca.crt")
    assert loaded.next_update - loaded.last_update < dt.timedelta(days=31)


def test_pki_revoke_prints_the_serial_and_the_count(fresh_ca, capsys):
    serials = [x509.load_pem_x509_certificate((fresh_ca / f"{n}.crt").read_bytes()).serial_number
               for n in ("site-a", "site-b")]
    crl = fresh_ca / "crl.pem"
    assert main(["pki", "revoke", str(fresh_ca), "site-a"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"revoked site-a (serial {serials[0]:#x}); {crl} lists 1 revoked certificate",
        HUB_HINT,
        f"moved to {fresh_ca / 'revoked'}: site-a-{serials[0]:x}.crt, site-a-{serials[0]:x}.key",
    ]
    (fresh_ca / "site-b.key").unlink()
    assert main(["pki", "revoke", str(fresh_ca), "site-b", "--days", "400"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"revoked site-b (serial {serials[1]:#x}); {crl} lists 2 revoked certificates"
    assert out[2] == f"moved to {fresh_ca / 'revoked'}: site-b-{serials[1]:x}.crt"
    assert pki.load_crl(crl, fresh_ca / "ca.crt").serials == set(serials)
    assert main(["pki", "crl", str(fresh_ca)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"CRL {crl} lists 2 revoked certificates"


@pytest.mark.parametrize("argv, needle", [
    (["site-z"], "site-z.crt does not exist"),
    (["bad name"], "bad certificate name 'bad name'"),
    (["ca"], "ca.crt is a CA certificate"),
    (["site-a", "--days", "0"], "days must be a whole number from 1 to"),
])
def test_pki_revoke_errors_are_one_line_exit_2(fresh_ca, capsys, argv, needle):
    assert main(["pki", "revoke", str(fresh_ca), *argv]) == 2
    captured = capsys.readouterr()
    err = lines(captured.err)
    assert len(err) == 1 and err[0].startswith("l2vpn: ") and needle in err[0]
    assert "Traceback" not in captured.err and captured.out == ""
    assert (fresh_ca / "site-a.crt").exists() and not (fresh_ca / "crl.pem").exists()


def test_pki_revoke_twice_says_it_was_revoked(fresh_ca, capsys):
    assert main(["pki", "revoke", str(fresh_ca), "site-a"]) == 0
    capsys.readouterr()
    assert main(["pki", "revoke", str(fresh_ca), "site-a"]) == 2
    err = lines(capsys.readouterr().err)
    assert len(err) == 1 and "site-a was already revoked" in err[0]


def test_pki_crl_without_a_ca_or_with_a_foreign_crl_exit_2(fresh_ca, tmp_path, capsys):
    assert main(["pki", "crl", str(tmp_path / "none")]) == 2
    assert lines(capsys.readouterr().err) == [
        f"l2vpn: no CA in {tmp_path / 'none'}: run `l2vpn pki init {tmp_path / 'none'}` first"]
    other = tmp_path / "other"
    pki.init_ca(other)
    (fresh_ca / "crl.pem").write_bytes(pki.make_crl(other).read_bytes())
    assert main(["pki", "crl", str(fresh_ca)]) == 2
    err = lines(capsys.readouterr().err)
    assert len(err) == 1
    assert err[0].startswith(f"l2vpn: {fresh_ca / 'crl.pem'}: not signed by the CA")


def test_check_reports_a_revoked_certificate(fresh_ca, tmp_path, capsys):
    kept = tmp_path / "kept"
    kept.mkdir()
    for suffix in (".crt", ".key"):
        (kept / f"hub{suffix}").write_bytes((fresh_ca / f"hub{suffix}").read_bytes())
    (kept / "hub.key").chmod(0o600)
    main(["pki", "revoke", str(fresh_ca), "hub"])
    doc = hub_doc(fresh_ca, tmp_path)
    doc["tls"].update(cert=str(kept / "hub.crt"), key=str(kept / "hub.key"),
                      crl=str(fresh_ca / "crl.pem"))
    path = write_config(tmp_path, doc)
    capsys.readouterr()
    assert main(["check", "-c", str(path)]) == 2
    out = lines(capsys.readouterr().out)
    assert len(out) == 1
    assert out[0].startswith(f"{path}: tls.cert: {kept / 'hub.crt'}: certificate 'hub'")
    assert f"is revoked by {fresh_ca / 'crl.pem'}" in out[0]


# -- check ---------------------------------------------------------------------------


def test_check_good_hub_config(ca, tmp_path, capsys):
    path = write_config(tmp_path, hub_doc(ca, tmp_path))
    assert main(["check", "-c", str(path)]) == 0
    assert capsys.readouterr().out.strip() == "OK (hub hub)"


def test_check_detects_a_spoke_config(ca, tmp_path, capsys):
    path = write_config(tmp_path, spoke_doc(ca, tmp_path))
    assert main(["check", "-c", str(path)]) == 0
    assert capsys.readouterr().out.strip() == "OK (spoke site-a)"


def test_check_with_explicit_role(ca, tmp_path, capsys):
    path = write_config(tmp_path, spoke_doc(ca, tmp_path))
    assert main(["check", "-c", str(path), "--role", "spoke"]) == 0
    assert main(["check", "-c", str(path), "--role", "hub"]) == 2


def test_check_wrong_key(ca, tmp_path, capsys):
    doc = hub_doc(ca, tmp_path)
    doc["tls"]["key"] = str(ca / "site-a.key")           # another node's key
    path = write_config(tmp_path, doc)
    assert main(["check", "-c", str(path)]) == 2
    out = lines(capsys.readouterr().out)
    assert out and all(line.startswith(f"{path}: tls") for line in out)
    assert any("site-a.key does not match" in line for line in out)
    assert not any(line.startswith("OK") for line in out)


def test_check_spoke_whose_certificate_names_another_node(ca, tmp_path, capsys):
    path = write_config(tmp_path, spoke_doc(ca, tmp_path, node="site-b"))
    assert main(["check", "-c", str(path)]) == 2
    assert "common name is 'site-a' but node is 'site-b'" in capsys.readouterr().out


def test_check_config_problems_one_line_each(ca, tmp_path, capsys):
    doc = hub_doc(ca, tmp_path, colour="blue")
    doc["listen"]["port"] = 70000
    doc["tap"]["mtu_bytes"] = 1500
    path = write_config(tmp_path, doc)
    assert main(["check", "-c", str(path)]) == 2
    out = lines(capsys.readouterr().out)
    assert len(out) == 3
    assert all(line.startswith(f"{path}: ") for line in out)
    assert any("colour: unknown key" in line for line in out)
    assert any("listen.port: expected an integer 1-65535, got 70000" in line for line in out)
    assert any("tap.mtu_bytes: unknown key" in line for line in out)


def test_check_missing_file(tmp_path, capsys):
    assert main(["check", "-c", str(tmp_path / "nope.yaml")]) == 2
    out = lines(capsys.readouterr().out)
    assert len(out) == 1 and "cannot read" in out[0]


# -- hub / spoke ---------------------------------------------------------------------


class MustNotStart:
    def __init__(self, *a, **kw):
        raise AssertionError("a node was constructed despite a config error")


@pytest.mark.parametrize("verb", ["hub", "spoke"])
def test_node_with_a_config_error_exits_2_without_starting(verb, ca, tmp_path, capsys,
                                                          monkeypatch):
    monkeypatch.setattr(hub, "Hub", MustNotStart)
    monkeypatch.setattr(spoke, "Spoke", MustNotStart)
    doc = hub_doc(ca, tmp_path) if verb == "hub" else spoke_doc(ca, tmp_path)
    doc["keepalive"] = {"interval_s": 10, "timeout_s": 5}
    path = write_config(tmp_path, doc)
    assert main([verb, "-c", str(path)]) == 2
    captured = capsys.readouterr()
    err = lines(captured.err)
    assert err == [f"{path}: keepalive.timeout_s: expected more than interval_s (10), got 5"]
    assert "Traceback" not in captured.err and captured.out == ""
    assert not os.path.exists(tmp_path / f"{doc['node']}.sock")


def test_hub_given_a_spoke_config_is_a_config_error(ca, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(hub, "Hub", MustNotStart)
    path = write_config(tmp_path, spoke_doc(ca, tmp_path))
    assert main(["hub", "-c", str(path)]) == 2
    assert "hub belongs in a spoke config" in capsys.readouterr().err


@pytest.mark.parametrize("role", ["hub", "spoke"])
def test_run_starts_the_role_the_config_describes(role, ca, tmp_path, monkeypatch):
    started = []

    class Recorder:
        def __init__(self, cfg, edges, notifier=None):
            started.append((type(self).__name__, cfg.node, notifier, edges))

        def start(self):
            pass

        def run(self):
            pass

    monkeypatch.setattr(hub, "Hub", type("Hub", (Recorder,), {}))
    monkeypatch.setattr(spoke, "Spoke", type("Spoke", (Recorder,), {}))
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    doc = hub_doc(ca, tmp_path) if role == "hub" else spoke_doc(ca, tmp_path)
    assert main(["run", "-c", str(write_config(tmp_path, doc))]) == 0
    assert started == [(role.title(), doc["node"], None, REAL)]   # the real edges


def refuse(*a, **kw):
    raise AssertionError("a device or socket was opened despite a TLS problem")


@pytest.mark.parametrize("verb", ["hub", "spoke"])
def test_node_with_a_key_that_does_not_match_exits_2_naming_tls_key(verb, ca, tmp_path, capsys,
                                                                    monkeypatch):
    monkeypatch.setattr(edges, "REAL", edges.Edges(tap=refuse, listen=refuse, connect=refuse,
                                                   management=refuse))
    doc = hub_doc(ca, tmp_path) if verb == "hub" else spoke_doc(ca, tmp_path)
    doc["tls"]["key"] = str(ca / ("site-a.key" if verb == "hub" else "hub.key"))
    path = write_config(tmp_path, doc)
    assert main([verb, "-c", str(path)]) == 2
    err = lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(f"{path}: tls.key: ")
    assert "does not match" in err[0]
    assert not os.path.exists(doc["management"]["socket"])


@pytest.mark.parametrize("verb", ["hub", "spoke"])
def test_node_with_a_key_open_to_others_exits_2_naming_tls_key(verb, ca, tmp_path, capsys,
                                                               monkeypatch):
    monkeypatch.setattr(edges, "REAL", edges.Edges(tap=refuse, listen=refuse, connect=refuse,
                                                   management=refuse))
    doc = hub_doc(ca, tmp_path) if verb == "hub" else spoke_doc(ca, tmp_path)
    key = tmp_path / "exposed.key"
    key.write_bytes(open(doc["tls"]["key"], "rb").read())
    key.chmod(0o644)
    doc["tls"]["key"] = str(key)
    path = write_config(tmp_path, doc)
    assert main([verb, "-c", str(path)]) == 2
    err = lines(capsys.readouterr().err)
    assert err == [f"{path}: tls.key: {key}: private key is open to group or others (mode 0644); "
                   f"refusing to use it: chmod 600 {key}"]
    assert not os.path.exists(doc["management"]["socket"])


# -- status --------------------------------------------------------------------------


def test_status_on_a_missing_socket(capsys):
    assert main(["status", "-s", "/nonexistent.sock"]) == 1
    captured = capsys.readouterr()
    err = lines(captured.err)
    assert len(err) == 1 and err[0].startswith("l2vpn: ") and "not found" in err[0]
    assert captured.out == ""


HUB_STATUS = {
    "node": "hub", "role": "hub", "uptime_s": 3725.2, "listen": "0.0.0.0:7443",
    "tap": {"name": "l2vpn0", "mac": "02:00:00:00:00:01", "mtu": 1500, "frames_in": 5,
            "frames_out": 6, "bytes_in": 500, "bytes_out": 600, "drops": 0},
    "sessions": [
        {"id": 1, "node": "site-a", "cn": "site-a", "remote": "198.18.0.2:40000", "state": "up",
         "uptime_s": 61.0, "frames_in": 10, "frames_out": 12, "bytes_in": 2048,
         "bytes_out": 5 * 1024 * 1024, "drops": 3, "buffered_b": 0, "caps": 0},
        {"id": 7, "node": "site-b", "cn": "site-b", "remote": "[2001:db8::2]:40001", "state": "up",
         "uptime_s": 5.0, "frames_in": 0, "frames_out": 0, "bytes_in": 0, "bytes_out": 0,
         "drops": 0, "buffered_b": 0, "caps": 0},
    ],
    "pending": 0,
    "macs": [{"mac": "02:00:00:00:0a:01", "vlan": None, "port": "site-a", "age_s": 1.25,
              "ips": ["198.19.0.10", "fe80::a"]},
             {"mac": "02:00:00:00:0b:01", "vlan": 20, "port": "site-b", "age_s": 0.0,
              "ips": []}],
    "switch": {"entries": 2, "aging_s": 300.0, "counters": {}},
}

SPOKE_STATUS = {
    "node": "site-a", "role": "spoke", "uptime_s": 12,
    "sessions": [],
    "hub": {"address": "198.18.0.1:7443", "state": "backoff", "next_attempt_s": 3.2,
            "last_error": "cannot connect to 198.18.0.1:7443: Connection refused"},
}


def test_render_hub_status():
    text = render_status(HUB_STATUS)
    assert text.splitlines()[0] == "hub hub, up 1h02m"
    assert "sessions (2)" in text and "mac table (2)" in text
    for needle in ("site-a", "198.18.0.2:40000", "[2001:db8::2]:40001", "10/12",
                   "2.0KiB/5.0MiB", "02:00:00:00:0a:01", "02:00:00:00:0b:01", "1.2s",
                   "tap l2vpn0 02:00:00:00:00:01 mtu 1500"):
        assert needle in text, needle
    row = next(line for line in text.splitlines() if line.startswith("02:00:00:00:0a:01"))
    assert row.split() == ["02:00:00:00:0a:01", "site-a", "-", "1.2s", "198.19.0.10",
                           "fe80::a"]
    row = next(line for line in text.splitlines() if line.startswith("02:00:00:00:0b:01"))
    assert row.split() == ["02:00:00:00:0b:01", "site-b", "20", "0.0s"]


def test_render_spoke_status():
    text = render_status(SPOKE_STATUS)
    assert text.splitlines()[0] == "spoke site-a, up 12s"
    assert ("hub 198.18.0.1:7443: backoff, last error: cannot connect to 198.18.0.1:7443: "
            "Connection refused") in text
    assert "sessions (0)" in text and "mac table" not in text


def test_render_hub_status_says_what_protection_did():
    status = json.loads(json.dumps(HUB_STATUS))
    status["tap"]["switch"] = {"macs": 1, "blocked": False,
                               "drops": {"runt": 0, "group_source": 2}}
    a, b = status["sessions"]
    a["switch"] = {"macs": 1, "blocked": False,
                   "drops": {"port_limit": 50, "oversize": 3, "runt": 0}}
    b["switch"] = {"macs": 0, "blocked": True, "drops": {"blocked": 7}}
    a["flood_limits"], b["flood_limits"] = True, False
    status["switch"]["blocked"] = [{"port": "site-b", "loop_with": "site-a", "since_s": 4.2}]
    got = render_status(status).splitlines()
    assert "blocked: site-b (bridging loop with site-a, for 4s)" in got
    assert "switch drops from hub: 2 group_source" in got
    assert "switch drops from site-a: 50 port_limit, 3 oversize" in got
    assert "switch drops from site-b: 7 blocked" in got
    assert "not limiting floods at their end: site-b" in got
    assert "switch drops" not in render_status(HUB_STATUS)      # nothing to say: silent


def test_render_spoke_status_shows_the_hubs_flood_limits():
    status = dict(SPOKE_STATUS, flood_limits={"broadcast_pps": 1000, "multicast_pps": 0},
                  flood_drops={"storm_broadcast": 12, "storm_multicast": 0})
    assert ("flood limits from the hub: 1000 broadcasts/s, any multicasts/s; dropped here "
            "12 broadcasts, 0 multicasts") in render_status(status).splitlines()
    assert "flood limits" not in render_status(dict(SPOKE_STATUS, flood_limits=None))


def test_render_error_reply():
    assert render_status({"error": "unknown request 'x'"}) == "error: unknown request 'x'"


def test_status_against_a_live_socket(tmp_path, capsys):
    loop = EventLoop()
    path = tmp_path / "hub.sock"
    srv = ManagementServer(loop, path, lambda command: HUB_STATUS)
    try:
        assert call_in_thread(loop, lambda: main(["status", "-s", str(path)])) == 0
        assert "sessions (2)" in capsys.readouterr().out
        assert call_in_thread(loop, lambda: main(["status", "-s", str(path), "--json"])) == 0
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed == HUB_STATUS
        assert [x["id"] for x in printed["sessions"]] == [1, 7]
    finally:
        srv.close()
        loop.close()


def test_status_takes_the_socket_from_a_config(ca, tmp_path, capsys):
    loop = EventLoop()
    path = write_config(tmp_path, spoke_doc(ca, tmp_path))
    srv = ManagementServer(loop, tmp_path / "site-a.sock", lambda command: SPOKE_STATUS)
    try:
        assert call_in_thread(loop, lambda: main(["status", "-c", str(path)])) == 0
        assert "spoke site-a" in capsys.readouterr().out
    finally:
        srv.close()
        loop.close()


def test_status_error_reply_exits_1(tmp_path, capsys):
    loop = EventLoop()
    path = tmp_path / "n.sock"
    srv = ManagementServer(loop, path, lambda command: {"error": "boom"})
    try:
        assert call_in_thread(loop, lambda: main(["status", "-s", str(path)])) == 1
        assert capsys.readouterr().out.strip() == "error: boom"
    finally:
        srv.close()
        loop.close()


def test_duration_and_size_formats():
    assert [cli._duration(s) for s in (0, 59.9, 60, 3599, 3600, 90061)] == \
        ["0s", "59s", "1m00s", "59m59s", "1h00m", "25h01m"]
    assert [cli._size(n) for n in (0, 1023, 1024, 1536, 1024 ** 3, 5 * 1024 ** 4)] == \
        ["0B", "1023B", "1.0KiB", "1.5KiB", "1.0GiB", "5120.0GiB"]


# -- macs: where a host is ----------------------------------------------------------------


def macs_of(tmp_path, argv, status=HUB_STATUS):
    loop = EventLoop()
    path = tmp_path / "hub.sock"
    srv = ManagementServer(loop, path, lambda command: status)
    try:
        return call_in_thread(loop, lambda: main(["macs", "-s", str(path), *argv]))
    finally:
        srv.close()
        loop.close()


def test_status_text_shows_the_ips_beside_each_mac():
    text = render_status(HUB_STATUS)
    row = next(line for line in text.splitlines() if line.startswith("02:00:00:00:0a:01"))
    assert row.split()[-2:] == ["198.19.0.10", "fe80::a"]


def test_macs_finds_the_port_an_address_is_behind(tmp_path, capsys):
    assert macs_of(tmp_path, ["--ip", "198.19.0.10"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["MAC", "PORT", "VLAN", "AGE", "IPS"]
    assert out[1].split()[:2] == ["02:00:00:00:0a:01", "site-a"] and len(out) == 2
    assert macs_of(tmp_path, ["--ip", "FE80::A", "--json"]) == 0
    assert [m["port"] for m in json.loads(capsys.readouterr().out)] == ["site-a"]


def test_macs_filters_by_port_and_mac_and_says_when_nothing_matched(tmp_path, capsys):
    assert macs_of(tmp_path, ["--port", "site-b", "--json"]) == 0
    assert [m["mac"] for m in json.loads(capsys.readouterr().out)] == ["02:00:00:00:0b:01"]
    assert macs_of(tmp_path, ["--mac", "02-00-00-00-0A-01", "--json"]) == 0
    assert [m["port"] for m in json.loads(capsys.readouterr().out)] == ["site-a"]
    assert macs_of(tmp_path, ["--vlan", "20", "--json"]) == 0
    assert [m["mac"] for m in json.loads(capsys.readouterr().out)] == ["02:00:00:00:0b:01"]
    assert macs_of(tmp_path, ["--vlan", "30"]) == 1
    assert macs_of(tmp_path, ["--ip", "198.19.0.99"]) == 1
    assert capsys.readouterr().out == ""


def test_macs_refuses_bad_arguments_and_a_spoke(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["macs", "--ip", "not-an-ip"])
    assert exc.value.code == 2 and "not an IP address" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["macs", "--vlan", "4095"])
    assert exc.value.code == 2 and "a VLAN id 1-4094" in capsys.readouterr().err
    assert macs_of(tmp_path, [], status=SPOKE_STATUS) == 1
    assert "is a spoke" in capsys.readouterr().err


def test_a_big_mac_table_is_summarised_unless_asked_for():
    status = json.loads(json.dumps(HUB_STATUS))
    status["macs"] = [{"mac": f"02:00:00:00:01:{i:02x}", "port": "site-a" if i % 3 else "hub",
                       "age_s": 1.0, "ips": []} for i in range(120)]
    short = render_status(status).splitlines()
    assert "mac table (120)" in short
    assert "  80 behind site-a, 40 behind hub" in short or \
        "  40 behind hub, 80 behind site-a" in short
    assert not any(line.startswith("02:00:00:00:01:") for line in short)
    full = render_status(status, list_macs=True).splitlines()
    assert sum(line.startswith("02:00:00:00:01:") for line in full) == 120


def test_status_macs_flag_reaches_the_renderer(tmp_path, capsys):
    status = json.loads(json.dumps(HUB_STATUS))
    status["macs"] = [{"mac": f"02:00:00:00:01:{i:02x}", "port": "site-a", "age_s": 1.0,
                       "ips": []} for i in range(60)]
    loop = EventLoop()
    path = tmp_path / "hub.sock"
    srv = ManagementServer(loop, path, lambda command: status)
    try:
        for flags, listed in (([], 0), (["--macs"], 60)):
            assert call_in_thread(loop, lambda: main(["status", "-s", str(path), *flags])) == 0
            out = capsys.readouterr().out.splitlines()
            assert sum(line.startswith("02:00:00:00:01:") for line in out) == listed
    finally:
        srv.close()
        loop.close()
