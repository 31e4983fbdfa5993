"""Reloading a running hub's and spoke's config, in one process without root: real YAML
files, real TLS, fakes.FakeNetwork for TAPs and connections."""

import logging

import pytest
import yaml
from fakes import FakeNetwork, run_until

from l2vpn import config, pki
from l2vpn.cli import main
from l2vpn.eventloop import EventLoop
from l2vpn.hub import Hub
from l2vpn.spoke import Spoke


class Site:
    """A hub and two spokes started from YAML files the test edits and reloads."""

    def __init__(self, tmp_path, ca):
        self.tmp, self.ca = tmp_path, ca
        self.loop = EventLoop()
        self.net = FakeNetwork()
        self.docs = {"hub": {
            "node": "hub", "listen": {"address": "198.18.0.1", "port": 7443},
            "tls": self.tls("hub"), "tap": {"name": "hub0"},
            "management": {"socket": str(tmp_path / "hub.sock")}}}
        for name in ("site-a", "site-b"):
            self.docs[name] = {
                "node": name, "hub": {"address": "198.18.0.1", "port": 7443},
                "tls": self.tls(name), "tap": {"name": f"{name}0"},
                "management": {"socket": str(tmp_path / f"{name}.sock")},
                "reconnect": {"initial_s": 0.05, "max_s": 0.2}}
        self.nodes = {}
        for name in self.docs:
            path = self.write(name)
            role = "hub" if name == "hub" else "spoke"
            cls = Hub if role == "hub" else Spoke
            self.nodes[name] = cls(config.load(path, role), self.net.edges(), loop=self.loop)
        for node in self.nodes.values():
            node.start()
        self.wait_up()

    def tls(self, name):
        return {"ca": str(self.ca / "ca.crt"), "cert": str(self.ca / f"{name}.crt"),
                "key": str(self.ca / f"{name}.key")}

    def write(self, name):
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(self.docs[name]))
        return path

    @property
    def hub(self):
        return self.nodes["hub"]

    def ids(self) -> dict:
        return {cn: s.id for cn, s in self.hub.sessions.items()}

    def wait_up(self, names=("site-a", "site-b")):
        run_until(self.loop, lambda: set(self.hub.sessions) >= set(names) and
                  all(self.nodes[n].ports() for n in names), timeout_s=10,
                  what=f"{', '.join(names)} up")

    def close(self):
        for node in reversed(list(self.nodes.values())):
            node.close()
        self.loop.close()


@pytest.fixture
def site(tmp_path, fresh_ca):
    s = Site(tmp_path, fresh_ca)
    yield s
    s.close()


def test_a_bad_config_changes_nothing_and_says_why(site, caplog):
    before, cfg = site.ids(), site.hub.cfg
    site.docs["hub"]["switch"] = {"aging_s": -1, "storm": {"broadcast_pps": "many"}}
    site.write("hub")
    with caplog.at_level(logging.ERROR, logger="l2vpn"):
        out = site.hub.reload("test")
    assert out["ok"] is False and len(out["problems"]) == 2
    assert all(p.startswith(f"{cfg.path}: switch.") for p in out["problems"])
    assert site.hub.cfg is cfg and site.ids() == before
    assert "keeping the previous config" in caplog.text
    assert "l2vpn_config_last_reload_successful 0.0" in site.hub.metrics_text().decode()


def test_a_key_that_does_not_match_its_certificate_is_refused(site):
    site.docs["hub"]["tls"]["key"] = str(site.ca / "site-a.key")
    site.write("hub")
    out = site.hub.reload("test")
    assert out["ok"] is False
    assert out["problems"][0].startswith(f"{site.hub.cfg.path}: tls.key: ")


def test_switch_settings_apply_live_and_sessions_stay(site):
    before = site.ids()
    site.docs["hub"]["switch"] = {"max_macs_per_port": 3, "aging_s": 60,
                                  "storm": {"broadcast_pps": 7}, "loop_detection": False}
    site.write("hub")
    out = site.hub.reload("test")
    assert out["ok"], out
    assert set(out["changed"]) == {"switch.max_macs_per_port", "switch.aging_s",
                                   "switch.storm.broadcast_pps", "switch.loop_detection"}
    assert out["needs_restart"] == []
    sw = site.hub.switch
    assert sw.max_macs_per_port == 3 and sw.aging_s == 60 and sw.intercept is None
    assert site.hub.bridge.loop_detector is None
    assert site.ids() == before                     # nobody was dropped
    assert "l2vpn_config_last_reload_successful 1.0" in site.hub.metrics_text().decode()


def test_restart_only_keys_are_reported_and_kept(site):
    site.docs["hub"]["listen"]["port"] = 7444
    site.docs["hub"]["tap"]["mtu"] = 1400
    site.docs["hub"]["log"] = {"level": "warning"}
    site.write("hub")
    out = site.hub.reload("test")
    assert out["ok"] and out["changed"] == ["log.level"]
    assert set(out["needs_restart"]) == {"listen.port", "tap.mtu"}
    assert site.hub.cfg.listen.port == 7443 and site.hub.cfg.tap.mtu == 1500
    assert logging.getLogger("l2vpn").level == logging.WARNING
    logging.getLogger("l2vpn").setLevel(logging.INFO)


def test_admit_listed_ends_only_the_unlisted_session(site):
    before = site.ids()
    site.docs["hub"]["admit"] = "listed"
    site.docs["hub"]["ports"] = {"site-a": {"max_macs": 10}}
    site.write("hub")
    out = site.hub.reload("test")
    assert out["ok"] and set(out["changed"]) == {"admit", "ports.site-a"}
    assert list(site.hub.sessions) == ["site-a"] and site.ids()["site-a"] == before["site-a"]
    run_until(site.loop, lambda: site.hub.admission.handshake_failures["not_listed"] >= 1,
              timeout_s=10, what="site-b refused on reconnecting")
    assert "site-b" not in site.hub.sessions
    assert site.hub.switch.port_info(site.hub.sessions["site-a"])["macs"] == 0
    site.docs["hub"]["ports"]["site-b"] = {}                      # listed: it comes back
    site.write("hub")
    assert site.hub.reload("test")["ok"]
    site.wait_up()
    assert site.ids()["site-a"] == before["site-a"]


def test_a_crl_given_by_reload_ends_the_revoked_session(site):
    before = site.ids()
    pki.revoke(site.ca, "site-b")
    site.docs["hub"]["tls"]["crl"] = str(site.ca / "crl.pem")
    site.write("hub")
    out = site.hub.reload("test")
    assert out["ok"] and "tls.crl" in out["changed"]
    assert list(site.hub.sessions) == ["site-a"] and site.ids()["site-a"] == before["site-a"]


def test_a_spoke_reconnects_when_its_hub_settings_change(site):
    spoke = site.nodes["site-a"]
    old = spoke.session
    site.docs["site-a"]["hub"]["port"] = 7445                      # nobody listens there
    site.write("site-a")
    out = spoke.reload("test")
    assert out["ok"] and out["changed"] == ["hub.port"]
    assert old.state == "closed"
    run_until(site.loop, lambda: spoke.last_error and "7445" in spoke.last_error,
              what="the spoke trying the new port")
    site.docs["site-a"]["hub"]["port"] = 7443
    site.write("site-a")
    assert spoke.reload("test")["ok"]
    site.wait_up()


def test_l2vpn_reload_over_the_management_socket(site, capsys):
    from fakes import call_in_thread
    site.docs["hub"]["keepalive"] = {"interval_s": 2, "timeout_s": 9}
    site.docs["hub"]["node"] = "hub2"
    site.write("hub")
    sock = str(site.hub.cfg.management.socket)
    code = call_in_thread(site.loop, lambda: main(["reload", "-s", sock, "--json"]))
    assert code == 0
    assert yaml.safe_load(capsys.readouterr().out) == {
        "changed": ["keepalive.interval_s", "keepalive.timeout_s"], "needs_restart": ["node"]}
    site.docs["hub"]["keepalive"] = {"interval_s": 20, "timeout_s": 9}
    site.write("hub")
    code = call_in_thread(site.loop, lambda: main(["reload", "-s", sock]))
    err = capsys.readouterr().err
    assert code == 2 and "keepalive.timeout_s" in err and "keeps its running config" in err


def test_a_new_ca_ends_the_sessions_it_does_not_sign_and_only_those(site, tmp_path):
    other = tmp_path / "other-ca"
    pki.init_ca(other)
    pki.issue(other, "hub", "hub")
    bundle = tmp_path / "both.crt"        # old CA and new: everyone stays
    bundle.write_bytes((site.ca / "ca.crt").read_bytes() + (other / "ca.crt").read_bytes())
    before = site.ids()
    site.docs["hub"]["tls"]["ca"] = str(bundle)
    site.write("hub")
    out = site.hub.reload("test")
    assert out["ok"] and out["changed"] == ["tls.ca"] and site.ids() == before
    site.docs["hub"]["tls"] = {"ca": str(other / "ca.crt"), "cert": str(other / "hub.crt"),
                               "key": str(other / "hub.key")}
    site.write("hub")
    out = site.hub.reload("test")
    assert out["ok"] and set(out["changed"]) == {"tls.ca", "tls.cert", "tls.key"}
    assert site.hub.sessions == {}        # both spokes' certificates are the old CA's


def test_after_a_privilege_drop_an_unreadable_key_keeps_the_identity_loaded_at_start(
        site, monkeypatch, tmp_path):
    from l2vpn import reload as config_reload
    hub = site.hub
    context = hub.current_context()
    hub.identity = object()                       # as if `user:` had dropped root
    key = str(site.ca / "hub.key")
    real_access = config_reload.os.access
    monkeypatch.setattr(config_reload.os, "access",
                        lambda path, mode: False if str(path) == key else real_access(path, mode))
    copy = tmp_path / "hub-copy.crt"
    copy.write_bytes((site.ca / "hub.crt").read_bytes())
    site.docs["hub"]["tls"]["cert"] = str(copy)   # a change that needs the key to apply
    site.docs["hub"]["switch"] = {"aging_s": 30}
    site.write("hub")
    out = hub.reload("test")
    assert out["ok"], out
    assert out["changed"] == ["switch.aging_s"] and out["needs_restart"] == ["tls.cert"]
    assert hub.current_context() is context and hub.cfg.tls.cert == site.ca / "hub.crt"
    assert hub.switch.aging_s == 30
    hub.identity = None
