import copy
import dataclasses
import ipaddress
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import yaml

from l2vpn import config
from l2vpn.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

HUB = {"node": "hub", "tls": {"ca": "ca.crt", "cert": "hub.crt", "key": "hub.key"}}
SPOKE = {
    "node": "site-a",
    "hub": {"address": "198.18.0.1"},
    "tls": {"ca": "ca.crt", "cert": "site-a.crt", "key": "site-a.key"},
    "tap": {"name": "l2vpn0"},
}


def write(tmp_path, doc, name="node.yaml"):
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return path


def with_changes(base, **sections):
    """A copy of `base` with sections replaced (None removes one)."""
    doc = copy.deepcopy(base)
    for name, value in sections.items():
        if value is None:
            doc.pop(name, None)
        else:
            doc[name] = value
    return doc


def problems(path, role):
    with pytest.raises(ConfigError) as info:
        config.load(path, role)
    return info.value.problems


# --- happy paths


def test_example_hub_config_loads():
    cfg = config.load_hub(CONFIGS / "hub.yaml")
    assert cfg.node == "hub"
    assert cfg.listen == config.ListenConfig("198.18.0.1", 7443)
    assert cfg.tls.ca == CONFIGS / "ca.crt"
    assert cfg.tap.address == ipaddress.ip_interface("198.19.0.1/24")
    assert cfg.tap.bridge == "br-lan"
    assert cfg.switch == config.SwitchConfig(
        300.0, 65536, dhcp_guard=config.GuardConfig(("site-a",)),
        ra_guard=config.GuardConfig(("site-a",)))
    assert (cfg.user, cfg.group, cfg.tls.crl) == ("l2vpn", "l2vpn", CONFIGS / "crl.pem")


@pytest.mark.parametrize("site, ip", [("a", "198.19.0.2/24"), ("b", "198.19.0.3/24")])
def test_example_spoke_configs_load(site, ip):
    cfg = config.load_spoke(CONFIGS / f"spoke-site-{site}.yaml")
    assert cfg.node == f"site-{site}"
    assert cfg.hub == config.HubEndpoint("198.18.0.1", 7443, "hub")
    assert cfg.tls.cert == CONFIGS / f"site-{site}.crt"
    assert cfg.tap.address == ipaddress.ip_interface(ip)
    assert cfg.reconnect == config.ReconnectConfig(1.0, 30.0)


def test_hub_defaults(tmp_path):
    cfg = config.load_hub(write(tmp_path, HUB))
    assert cfg.listen == config.ListenConfig("0.0.0.0", 7443)
    assert cfg.tap is None
    assert cfg.switch == config.SwitchConfig(aging_s=300.0, max_entries=65536)
    assert cfg.management.socket == Path("/run/l2vpn/hub.sock")
    assert cfg.keepalive == config.KeepaliveConfig(interval_s=5.0, timeout_s=20.0)


def test_spoke_defaults(tmp_path):
    cfg = config.load_spoke(write(tmp_path, SPOKE))
    assert cfg.hub == config.HubEndpoint("198.18.0.1", 7443, None)
    assert cfg.tap == config.TapConfig(name="l2vpn0", mtu=1500, address=None, bridge=None, mac=None)
    assert cfg.management.socket == Path("/run/l2vpn/site-a.sock")
    assert cfg.reconnect == config.ReconnectConfig(initial_s=1.0, max_s=30.0)


def test_load_dispatches_on_role(tmp_path):
    assert isinstance(config.load(write(tmp_path, HUB), "hub"), config.HubConfig)
    assert isinstance(config.load(write(tmp_path, SPOKE), "spoke"), config.SpokeConfig)
    with pytest.raises(ValueError):
        config.load(write(tmp_path, HUB), "switch")


def test_relative_paths_resolve_against_config_folder(tmp_path, monkeypatch):
    folder = tmp_path / "etc" / "l2vpn"
    folder.mkdir(parents=True)
    doc = with_changes(HUB, tls={"ca": "pki/ca.crt", "cert": "/abs/hub.crt", "key": "hub.key"},
                       management={"socket": "run/hub.sock"})
    path = write(folder, doc)
    monkeypatch.chdir(tmp_path)
    cfg = config.load_hub(Path("etc/l2vpn/node.yaml"))
    assert cfg.tls.ca == folder / "pki" / "ca.crt"
    assert cfg.tls.cert == Path("/abs/hub.crt")
    assert cfg.tls.key == folder / "hub.key"
    assert cfg.management.socket == folder / "run" / "hub.sock"
    assert cfg.path == Path("etc/l2vpn/node.yaml") and path.exists()


def test_optional_values_parse(tmp_path):
    doc = with_changes(
        SPOKE,
        hub={"address": "hub.example.net", "port": 8443, "server_name": "hub"},
        tap={"name": "l2vpn0", "mtu": 9000, "address": "fd00::2/64", "bridge": "br-lan", "mac": "02:00:5E:00:00:02"},
        keepalive={"interval_s": 2.5, "timeout_s": 30},
        reconnect={"initial_s": 0.5, "max_s": 0.5},
    )
    cfg = config.load_spoke(write(tmp_path, doc))
    assert cfg.hub == config.HubEndpoint("hub.example.net", 8443, "hub")
    assert cfg.tap.mac == bytes.fromhex("02005e000002")
    assert cfg.tap.address == ipaddress.IPv6Interface("fd00::2/64")
    assert cfg.tap.mtu == 9000
    assert cfg.keepalive == config.KeepaliveConfig(2.5, 30.0)
    assert cfg.reconnect == config.ReconnectConfig(0.5, 0.5)


def test_ipv6_listen_address_and_empty_optional_section(tmp_path):
    cfg = config.load_hub(write(tmp_path, with_changes(HUB, listen={"address": "::"}, switch={})))
    assert cfg.listen == config.ListenConfig("::", 7443)
    assert cfg.switch == config.SwitchConfig()


def test_configs_are_frozen(tmp_path):
    cfg = config.load_hub(write(tmp_path, HUB))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.node = "other"


# --- one problem of each kind: (role, doc, expected line after "FILE: ")

ERRORS = [
    ("hub", with_changes(HUB, tap={"nmae": "x", "name": "t0"}),
     "tap.nmae: unknown key (expected one of: name, mtu, address, bridge, mac, offload)"),
    ("hub", with_changes(HUB, colour="blue"),
     "colour: unknown key in a hub config (expected one of: node, user, group, listen, tls, tap, switch, management, keepalive, metrics)"),
    ("hub", with_changes(HUB, reconnect={"initial_s": 1}),
     "reconnect: unknown key in a hub config (expected one of: node, user, group, listen, tls, tap, switch, management, "
     "keepalive, metrics); reconnect belongs in a spoke config"),
    ("hub", with_changes(HUB, listen={"port": "abc"}), "listen.port: expected an integer 1-65535, got 'abc'"),
    ("hub", with_changes(HUB, listen={"port": True}), "listen.port: expected an integer 1-65535, got true"),
    ("hub", with_changes(HUB, listen={"port": 0}), "listen.port: expected an integer 1-65535, got 0"),
    ("hub", with_changes(HUB, listen={"port": 65536}), "listen.port: expected an integer 1-65535, got 65536"),
    ("hub", with_changes(HUB, listen={"port": 7443.0}), "listen.port: expected an integer 1-65535, got 7443.0"),
    ("hub", with_changes(HUB, listen={"port": None}), "listen.port: expected an integer 1-65535, got nothing"),
    ("hub", with_changes(HUB, listen={"address": "198.18.0.256"}),
     "listen.address: expected an IPv4 or IPv6 address like 0.0.0.0 or '::', got '198.18.0.256'"),
    ("hub", with_changes(HUB, listen={"address": "localhost"}),
     "listen.address: expected an IPv4 or IPv6 address like 0.0.0.0 or '::', got 'localhost'"),
    ("hub", with_changes(HUB, tls={"ca": "ca.crt", "key": "hub.key"}), "tls.cert: required key is missing"),
    ("hub", with_changes(HUB, tls=None),
     "tls: required section is missing (expected a mapping with keys: ca, cert, key, crl)"),
    ("hub", with_changes(HUB, tls="ca.crt"), "tls: expected a mapping with keys: ca, cert, key, crl, got 'ca.crt'"),
    ("hub", with_changes(HUB, tls={"ca": 5, "cert": "c", "key": "k"}), "tls.ca: expected a file path, got 5"),
    ("hub", with_changes(HUB, node="-hub"),
     "node: expected a name of 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, got '-hub'"),
    ("hub", with_changes(HUB, node=None), "node: required key is missing"),
    ("hub", with_changes(HUB, tap={"name": "l2vpn0", "mtu": 500}), "tap.mtu: expected an integer 576-65535, got 500"),
    ("hub", with_changes(HUB, tap={"name": "a-very-long-name0"}),
     "tap.name: expected an interface name of 1-15 characters without '/', ':' or spaces, got 'a-very-long-name0'"),
    ("hub", with_changes(HUB, tap={"name": "tap:0"}),
     "tap.name: expected an interface name of 1-15 characters without '/', ':' or spaces, got 'tap:0'"),
    ("hub", with_changes(HUB, tap={"mtu": 1500}), "tap.name: required key is missing"),
    ("hub", with_changes(HUB, tap={"name": "t0", "address": "198.19.0.1"}),
     "tap.address: expected an address with prefix length like 198.19.0.2/24, got '198.19.0.1'"),
    ("hub", with_changes(HUB, tap={"name": "t0", "address": "198.19.0.1/33"}),
     "tap.address: expected an address with prefix length like 198.19.0.2/24, got '198.19.0.1/33'"),
    ("hub", with_changes(HUB, tap={"name": "t0", "mac": "01:00:5e:00:00:01"}),
     "tap.mac: expected a quoted unicast MAC like \"02:00:00:00:00:01\" (not multicast, broadcast or all zeros), "
     "got '01:00:5e:00:00:01'"),
    ("hub", with_changes(HUB, tap={"name": "t0", "mac": "02:00:00:00:01"}),
     "tap.mac: expected a quoted unicast MAC like \"02:00:00:00:00:01\", got '02:00:00:00:01'"),
    ("hub", with_changes(HUB, switch={"aging_s": 0}), "switch.aging_s: expected a number of seconds > 0, got 0"),
    ("hub", with_changes(HUB, switch={"max_entries": 0}), "switch.max_entries: expected an integer >= 1, got 0"),
    ("hub", with_changes(HUB, keepalive={"timeout_s": 45}),
     "keepalive.timeout_s: expected a number of seconds > 0 and <= 30 so a dead peer is noticed within 30 s, got 45"),
    ("hub", with_changes(HUB, keepalive={"interval_s": 10, "timeout_s": 10}),
     "keepalive.timeout_s: expected more than interval_s (10), got 10"),
    ("hub", with_changes(HUB, keepalive={"interval_s": 25}),
     "keepalive.timeout_s: expected more than interval_s (25), got 20 (the default)"),
    ("hub", with_changes(HUB, management={"socket": ""}), "management.socket: expected a file path, got ''"),
    ("spoke", with_changes(SPOKE, hub=None),
     "hub: required section is missing (expected a mapping with keys: address, port, server_name, offload, flood_limits)"),
    ("spoke", with_changes(SPOKE, tap=None),
     "tap: required section is missing (expected a mapping with keys: name, mtu, address, bridge, mac, offload)"),
    ("spoke", with_changes(SPOKE, hub={"port": 7443}), "hub.address: required key is missing"),
    ("spoke", with_changes(SPOKE, tap={"name": "l2vpn0", "offload": "yes"}), "tap.offload: expected true or false, got 'yes'"),
    ("hub", with_changes(HUB, listen={"offload": 1}), "listen.offload: expected true or false, got 1"),
    ("spoke", with_changes(SPOKE, hub={"address": "198.18.0.999"}),
     "hub.address: expected an IP address or DNS name like 198.18.0.1 or hub.example.net, got '198.18.0.999'"),
    ("spoke", with_changes(SPOKE, hub={"address": "hub_1.example"}),
     "hub.address: expected an IP address or DNS name like 198.18.0.1 or hub.example.net, got 'hub_1.example'"),
    ("spoke", with_changes(SPOKE, listen={"port": 1}),
     "listen: unknown key in a spoke config (expected one of: node, user, group, hub, tls, tap, management, keepalive, "
     "reconnect, metrics); listen belongs in a hub config"),
    ("spoke", with_changes(SPOKE, reconnect={"initial_s": 0}),
     "reconnect.initial_s: expected a number of seconds > 0, got 0"),
    ("spoke", with_changes(SPOKE, reconnect={"initial_s": 10, "max_s": 5}),
     "reconnect.max_s: expected at least initial_s (10), got 5"),
]


@pytest.mark.parametrize("role, doc, expected", ERRORS, ids=[e[2].split(":")[0] + str(i) for i, e in enumerate(ERRORS)])
def test_each_problem_is_one_line_naming_file_and_key(tmp_path, role, doc, expected):
    path = write(tmp_path, doc)
    assert problems(path, role) == [f"{path}: {expected}"]


def test_all_problems_are_reported_together(tmp_path):
    doc = with_changes(
        SPOKE,
        node="bad name",
        hub={"address": "198.18.0.1", "port": "7443"},
        tap={"name": "l2vpn0", "mtu": True, "colour": "red"},
        extra=1,
    )
    path = write(tmp_path, doc)
    found = problems(path, "spoke")
    assert len(found) == 5
    assert all(line.startswith(f"{path}: ") and "\n" not in line for line in found)
    keys = sorted(line.split(": ")[1] for line in found)
    assert keys == ["extra", "hub.port", "node", "tap.colour", "tap.mtu"]


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, "node: hub\ntls:\n  ca: ca.crt\n  cert: [hub.crt\n  key: hub.key\n")
    (line,) = problems(path, "hub")
    assert line.startswith(f"{path}: line ")
    assert "invalid YAML" in line and "\n" not in line


def test_yaml_error_line_number_is_the_bad_line(tmp_path):
    path = write(tmp_path, "node: hub\nlisten:\n  port: 7443\n   address: 0.0.0.0\n")
    (line,) = problems(path, "hub")
    assert line.startswith(f"{path}: line 4, column ")


def test_duplicate_key_is_refused_with_its_line(tmp_path):
    path = write(tmp_path, "node: hub\nnode: other\n")
    assert problems(path, "hub") == [
        f"{path}: line 2, column 1: invalid YAML: duplicate key 'node' (each key may appear once)"
    ]


@pytest.mark.parametrize("text, found", [("- node: hub\n", "a list"), ("", "an empty file"), ("hub\n", "'hub'")])
def test_top_level_must_be_a_mapping(tmp_path, text, found):
    path = write(tmp_path, text)
    assert problems(path, "hub") == [
        f"{path}: expected a mapping of settings (node: ..., tls: ...) at the top level, got {found}"
    ]


def test_unreadable_file_is_one_line(tmp_path):
    path = tmp_path / "missing.yaml"
    assert problems(path, "hub") == [
        f"{path}: cannot read: No such file or directory (check the path and permissions)"
    ]


def test_directory_instead_of_file_is_one_line(tmp_path):
    (line,) = problems(tmp_path, "hub")
    assert line.startswith(f"{tmp_path}: cannot read: ")


def test_schema_rows_cover_every_dataclass_field():
    for section in config.SECTIONS:
        fields = {f.name for f in dataclasses.fields(section.make)}
        assert fields == {k.name for k in section.keys}, section.name
    for role, cls in (("hub", config.HubConfig), ("spoke", config.SpokeConfig)):
        rows = {k.name for k in config.TOP_KEYS} | {s.name for s in config.SECTIONS if role in s.roles}
        assert {f.name for f in dataclasses.fields(cls)} == rows | {"path"}


YAML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(role=st.sampled_from(["hub", "spoke"]), section=st.sampled_from([s.name for s in config.SECTIONS]),
       key=st.sampled_from(["address", "port", "name", "mtu", "mac", "ca", "aging_s", "timeout_s", "max_s"])
       | st.text(max_size=5),
       value=YAML_VALUES)
def test_any_value_gives_a_config_or_one_line_problems(tmp_path, role, section, key, value):
    base = SPOKE if role == "spoke" else HUB
    doc = copy.deepcopy(base)
    doc.setdefault(section, {})
    if isinstance(doc[section], dict):
        doc[section][key] = value
    path = write(tmp_path, doc)
    try:
        cfg = config.load(path, role)
    except ConfigError as exc:
        assert exc.problems and all(p.startswith(f"{path}: ") and "\n" not in p for p in exc.problems)
    else:
        assert isinstance(cfg, config.HubConfig if role == "hub" else config.SpokeConfig)


def test_offloads_are_on_unless_turned_off(tmp_path):
    on = config.load_spoke(write(tmp_path, SPOKE))
    assert on.tap.offload is True and on.hub.offload is True
    off = config.load_spoke(write(tmp_path, with_changes(
        SPOKE, tap={**SPOKE["tap"], "offload": False}, hub={**SPOKE["hub"], "offload": False})))
    assert off.tap.offload is False and off.hub.offload is False
    hub = config.load_hub(write(tmp_path, with_changes(HUB, listen={"offload": False})))
    assert hub.listen.offload is False


def test_spoke_flood_limits_are_on_unless_turned_off(tmp_path):
    assert config.load_spoke(write(tmp_path, SPOKE)).hub.flood_limits is True
    off = config.load_spoke(write(tmp_path, with_changes(
        SPOKE, hub={**SPOKE["hub"], "flood_limits": False})))
    assert off.hub.flood_limits is False
    path = write(tmp_path, with_changes(SPOKE, hub={**SPOKE["hub"], "flood_limits": "no"}))
    assert problems(path, "spoke") == [
        f"{path}: hub.flood_limits: expected true or false, got 'no'"]


# --- port security, CRL and privilege keys


def test_new_keys_default(tmp_path):
    cfg = config.load_hub(write(tmp_path, HUB))
    sw = cfg.switch
    assert sw.max_macs_per_port == 1024
    assert sw.mac_move_holddown_s == 5.0
    assert sw.storm == config.StormConfig() == config.StormConfig(1000, 2000, 2000)
    assert sw.loop_detection is True
    assert sw.dhcp_guard is None and sw.ra_guard is None
    assert cfg.tls.crl is None
    assert (cfg.user, cfg.group) == (None, None)
    spoke = config.load_spoke(write(tmp_path, SPOKE))
    assert (spoke.user, spoke.group, spoke.tls.crl) == (None, None, None)


def test_new_switch_keys_parse(tmp_path):
    doc = with_changes(HUB, switch={
        "max_macs_per_port": 3, "mac_move_holddown_s": 0, "loop_detection": False,
        "storm": {"broadcast_pps": 0, "unknown_unicast_pps": 7},
        "dhcp_guard": {"trusted": ["hub", "site-a"]}, "ra_guard": {"trusted": []}})
    sw = config.load_hub(write(tmp_path, doc)).switch
    assert sw.max_macs_per_port == 3
    assert sw.mac_move_holddown_s == 0.0 and isinstance(sw.mac_move_holddown_s, float)
    assert sw.loop_detection is False
    assert sw.storm == config.StormConfig(broadcast_pps=0, multicast_pps=2000,
                                          unknown_unicast_pps=7)
    assert sw.dhcp_guard == config.GuardConfig(("hub", "site-a"))
    assert sw.ra_guard == config.GuardConfig(())


@pytest.mark.parametrize("value", [{}, None, {"trusted": []}], ids=["empty", "null", "no-one"])
def test_an_empty_guard_is_on_with_no_trusted_ports(tmp_path, value):
    doc = with_changes(HUB, switch={"dhcp_guard": value})
    sw = config.load_hub(write(tmp_path, doc)).switch
    assert sw.dhcp_guard == config.GuardConfig(()) and sw.ra_guard is None


@pytest.mark.parametrize("value", [None, {}], ids=["null", "empty"])
def test_an_empty_storm_section_keeps_the_defaults(tmp_path, value):
    doc = with_changes(HUB, switch={"storm": value})
    assert config.load_hub(write(tmp_path, doc)).switch.storm == config.StormConfig()


def test_crl_user_and_group_parse(tmp_path):
    doc = with_changes(HUB, tls={**HUB["tls"], "crl": "pki/crl.pem"}, user="l2vpn", group=0)
    cfg = config.load_hub(write(tmp_path, doc))
    assert cfg.tls.crl == tmp_path / "pki" / "crl.pem"
    assert (cfg.user, cfg.group) == ("l2vpn", "0")
    spoke = config.load_spoke(write(tmp_path, with_changes(SPOKE, user=1000)))
    assert (spoke.user, spoke.group) == ("1000", None)


def switch_with(**keys):
    return with_changes(HUB, switch=keys)


NEW_KEY_ERRORS = [
    (switch_with(max_macs_per_port=0), "switch.max_macs_per_port: expected an integer >= 1, got 0"),
    (switch_with(max_macs_per_port=2.5),
     "switch.max_macs_per_port: expected an integer >= 1, got 2.5"),
    (switch_with(max_macs_per_port=True),
     "switch.max_macs_per_port: expected an integer >= 1, got true"),
    (switch_with(mac_move_holddown_s=-1),
     "switch.mac_move_holddown_s: expected a number of seconds >= 0, got -1"),
    (switch_with(mac_move_holddown_s=".inf"),
     "switch.mac_move_holddown_s: expected a number of seconds >= 0, got '.inf'"),
    (switch_with(mac_move_holddown_s=float("inf")),
     "switch.mac_move_holddown_s: expected a number of seconds >= 0, got inf"),
    (switch_with(mac_move_holddown_s=False),
     "switch.mac_move_holddown_s: expected a number of seconds >= 0, got false"),
    (switch_with(loop_detection="yes"), "switch.loop_detection: expected true or false, got 'yes'"),
    (switch_with(loop_detection=None), "switch.loop_detection: expected true or false, got nothing"),
    (switch_with(storm={"broadcast_pps": -1}),
     "switch.storm.broadcast_pps: expected an integer >= 0, got -1"),
    (switch_with(storm={"multicast_pps": 1.5}),
     "switch.storm.multicast_pps: expected an integer >= 0, got 1.5"),
    (switch_with(storm={"unknown_unicast_pps": "lots"}),
     "switch.storm.unknown_unicast_pps: expected an integer >= 0, got 'lots'"),
    (switch_with(storm={"bogus": 1}),
     "switch.storm.bogus: expected one of: broadcast_pps, multicast_pps, unknown_unicast_pps, "
     "got an unknown key"),
    (switch_with(storm=1000),
     "switch.storm: expected a mapping with keys: broadcast_pps, multicast_pps, "
     "unknown_unicast_pps, got 1000"),
    (switch_with(dhcp_guard={"trusted": "site-a"}),
     "switch.dhcp_guard.trusted: expected a list of node names like [site-a, hub] (the hub's "
     "own TAP is hub), got 'site-a'"),
    (switch_with(dhcp_guard={"trusted": ["site-a", "bad name"]}),
     "switch.dhcp_guard.trusted: expected a list of node names like [site-a, hub] (the hub's "
     "own TAP is hub), got 'bad name'"),
    (switch_with(ra_guard={"trusted": ["hub", 5]}),
     "switch.ra_guard.trusted: expected a list of node names like [site-a, hub] (the hub's own "
     "TAP is hub), got 5"),
    (switch_with(ra_guard={"trusted": ["hub", "hub"]}),
     "switch.ra_guard.trusted: expected a list of node names like [site-a, hub] (the hub's own "
     "TAP is hub) without repeats, got a list"),
    (switch_with(ra_guard={"trusted": None}),
     "switch.ra_guard.trusted: expected a list of node names like [site-a, hub] (the hub's own "
     "TAP is hub), got nothing"),
    (switch_with(dhcp_guard={"trusted": [], "untrusted": ["x"]}),
     "switch.dhcp_guard.untrusted: expected one of: trusted, got an unknown key"),
    (switch_with(dhcp_guard=True),
     "switch.dhcp_guard: expected a mapping with keys: trusted, got true"),
    (switch_with(ra_guard=["site-a"]), "switch.ra_guard: expected a mapping with keys: trusted, got a list"),
    (with_changes(HUB, tls={**HUB["tls"], "crl": ""}), "tls.crl: expected a file path, got ''"),
    (with_changes(HUB, tls={**HUB["tls"], "crl": 5}), "tls.crl: expected a file path, got 5"),
    (with_changes(HUB, user="bad name"),
     "user: expected a user or group name like l2vpn, or a numeric id, got 'bad name'"),
    (with_changes(HUB, user=-1),
     "user: expected a user or group name like l2vpn, or a numeric id, got -1"),
    (with_changes(HUB, user=True),
     "user: expected a user or group name like l2vpn, or a numeric id, got true"),
    (with_changes(HUB, user="l2vpn", group=["a"]),
     "group: expected a user or group name like l2vpn, or a numeric id, got a list"),
    (with_changes(HUB, group="l2vpn"),
     "group: needs user: too (group alone would leave the process root)"),
]


@pytest.mark.parametrize("doc, expected", NEW_KEY_ERRORS,
                         ids=[e[1].split(":")[0] + str(i) for i, e in enumerate(NEW_KEY_ERRORS)])
def test_each_new_key_problem_is_one_line_naming_the_dotted_key(tmp_path, doc, expected):
    path = write(tmp_path, doc)
    assert problems(path, "hub") == [f"{path}: {expected}"]


def test_a_nested_unknown_key_that_is_not_a_word_is_quoted(tmp_path):
    path = write(tmp_path, "node: hub\ntls: {ca: a, cert: b, key: c}\nswitch:\n  storm: {5: 1}\n")
    (line,) = problems(path, "hub")
    assert line.startswith(f"{path}: switch.storm.5: expected one of: ")
    path = write(tmp_path, switch_with(storm={"two words": 1}))
    (line,) = problems(path, "hub")
    assert line.startswith(f"{path}: switch.storm.'two words': expected one of: ")


def test_new_switch_problems_are_reported_together(tmp_path):
    doc = switch_with(max_macs_per_port=0, storm={"broadcast_pps": -1},
                      dhcp_guard={"trusted": 1}, loop_detection=1)
    path = write(tmp_path, doc)
    keys = sorted(line.split(": ")[1] for line in problems(path, "hub"))
    assert keys == ["switch.dhcp_guard.trusted", "switch.loop_detection",
                    "switch.max_macs_per_port", "switch.storm.broadcast_pps"]


@pytest.mark.parametrize("key, value", [("max_macs_per_port", 5), ("storm", {"broadcast_pps": 1}),
                                        ("dhcp_guard", {"trusted": ["hub"]}),
                                        ("loop_detection", False)])
def test_switch_keys_are_refused_in_a_spoke_config(tmp_path, key, value):
    path = write(tmp_path, with_changes(SPOKE, switch={key: value}))
    assert problems(path, "spoke") == [
        f"{path}: switch: unknown key in a spoke config (expected one of: node, user, group, hub, "
        "tls, tap, management, keepalive, reconnect, metrics); switch belongs in a hub config"]


def test_a_bad_user_with_a_group_is_one_problem(tmp_path):
    path = write(tmp_path, with_changes(HUB, user="bad name", group="l2vpn"))
    assert problems(path, "hub") == [
        f"{path}: user: expected a user or group name like l2vpn, or a numeric id, "
        "got 'bad name'"]


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["max_macs_per_port", "mac_move_holddown_s", "loop_detection",
                            "storm", "dhcp_guard", "ra_guard"]),
       inner=st.sampled_from(["broadcast_pps", "multicast_pps", "unknown_unicast_pps",
                              "trusted"]) | st.text(max_size=5),
       value=YAML_VALUES, nest=st.booleans())
def test_any_new_switch_value_gives_a_config_or_one_dotted_line(tmp_path, key, inner, value, nest):
    doc = switch_with(**{key: {inner: value} if nest else value})
    path = write(tmp_path, doc)
    try:
        cfg = config.load_hub(path)
    except ConfigError as exc:
        (line,) = exc.problems
        assert line.startswith(f"{path}: switch.{key}") and "\n" not in line
    else:
        assert isinstance(cfg.switch, config.SwitchConfig)
