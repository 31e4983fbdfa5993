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
from l2vpn.vlan import ACCESS, TRUNK, VlanPolicy

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
     "colour: unknown key in a hub config (expected one of: node, user, group, admit, listen, tls, "
     "tap, switch, ports, management, keepalive, metrics, log)"),
    ("hub", with_changes(HUB, reconnect={"initial_s": 1}),
     "reconnect: unknown key in a hub config (expected one of: node, user, group, admit, listen, tls, tap, switch, ports, "
     "management, keepalive, metrics, log); reconnect belongs in a spoke config"),
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
     "reconnect, metrics, log); listen belongs in a hub config"),
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
        rows = ({k.name for k in config.TOP_KEYS if role in k.roles}
                | {s.name for s in config.SECTIONS if role in s.roles})
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
        "tls, tap, management, keepalive, reconnect, metrics, log); switch belongs in a hub config"]


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


# --- log, admit and ports (issue 12)


def hub_with(**top):
    return with_changes(HUB, **top)


def test_log_admit_and_ports_default(tmp_path):
    hub = config.load_hub(write(tmp_path, HUB))
    assert hub.log == config.LogConfig(level="info")
    assert (hub.admit, hub.ports) == ("any", {})
    assert config.load_spoke(write(tmp_path, SPOKE)).log == config.LogConfig("info")


@pytest.mark.parametrize("level", config.LOG_LEVELS)
@pytest.mark.parametrize("role, base", [("hub", HUB), ("spoke", SPOKE)])
def test_log_level_parses_for_both_roles(tmp_path, role, base, level):
    cfg = config.load(write(tmp_path, with_changes(base, log={"level": level})), role)
    assert cfg.log.level == level


@pytest.mark.parametrize("value", [None, {}], ids=["null", "empty"])
def test_an_empty_log_section_is_info(tmp_path, value):
    assert config.load_hub(write(tmp_path, hub_with(log=value))).log.level == "info"


def test_constructors_without_the_new_fields_still_work(tmp_path):
    loaded = config.load_hub(write(tmp_path, with_changes(HUB, management={"socket": "/run/h.sock"})))
    built = config.HubConfig(
        path=loaded.path, node="hub", listen=config.ListenConfig(), tls=loaded.tls, tap=None,
        switch=config.SwitchConfig(), management=config.ManagementConfig(Path("/run/h.sock")),
        keepalive=config.KeepaliveConfig())
    assert built == loaded
    assert built.ports == {} and built.ports is not config.HubConfig.__dataclass_fields__["ports"].default


def test_ports_parse(tmp_path):
    doc = hub_with(
        admit="listed",
        switch={"max_macs_per_port": 50, "storm": {"broadcast_pps": 300}},
        ports={
            "site-a": {"vlan": {"mode": "access", "vid": 10}, "max_macs": 4},
            "site-b": {"vlan": {"mode": "trunk", "allowed": [10, 20, "100-102"], "native": 20},
                       "storm": {"multicast_pps": 5}},
            "site-c": None,
            "hub": {"vlan": {"mode": "trunk", "allowed": ["1-4094"]}},
        })
    cfg = config.load_hub(write(tmp_path, doc))
    assert cfg.admit == "listed"
    assert sorted(cfg.ports) == ["hub", "site-a", "site-b", "site-c"]
    assert cfg.ports["site-a"] == config.PortConfig(vlan=VlanPolicy(ACCESS, vid=10), max_macs=4)
    assert cfg.ports["site-b"] == config.PortConfig(
        vlan=VlanPolicy(TRUNK, allowed=frozenset({10, 20, 100, 101, 102}), native=20),
        storm=config.StormConfig(broadcast_pps=300, multicast_pps=5, unknown_unicast_pps=2000))
    assert cfg.ports["site-c"] == config.PortConfig()
    assert cfg.ports["hub"].vlan.allowed == frozenset(range(1, 4095))


@pytest.mark.parametrize("storm, expected", [
    (None, config.StormConfig(300, 2000, 2000)),
    ({}, config.StormConfig(300, 2000, 2000)),
    ({"unknown_unicast_pps": 0}, config.StormConfig(300, 2000, 0)),
    ({"broadcast_pps": 1, "multicast_pps": 2, "unknown_unicast_pps": 3}, config.StormConfig(1, 2, 3)),
], ids=["null", "empty", "one", "all"])
def test_a_port_storm_takes_the_switch_storm_for_the_keys_it_leaves_out(tmp_path, storm, expected):
    doc = hub_with(switch={"storm": {"broadcast_pps": 300}}, ports={"site-a": {"storm": storm}})
    assert config.load_hub(write(tmp_path, doc)).ports["site-a"].storm == expected


def test_port_settings_fill_in_the_switch_ones(tmp_path):
    doc = hub_with(switch={"max_macs_per_port": 50, "storm": {"broadcast_pps": 300}},
                   ports={"site-a": {"max_macs": 4, "vlan": {"mode": "access", "vid": 7}},
                          "site-b": {"storm": {"multicast_pps": 9}}})
    cfg = config.load_hub(write(tmp_path, doc))
    switch_storm = config.StormConfig(300, 2000, 2000)
    assert cfg.port_settings("site-a") == config.PortConfig(VlanPolicy(ACCESS, vid=7), 4, switch_storm)
    assert cfg.port_settings("site-b") == config.PortConfig(None, 50, config.StormConfig(300, 9, 2000))
    assert cfg.port_settings("unlisted") == config.PortConfig(None, 50, switch_storm)


def test_the_commented_hub_examples_load_when_uncommented(tmp_path):
    lines, block = [], False
    for line in (CONFIGS / "hub.yaml").read_text().splitlines():
        block = line.startswith(("# admit:", "# ports:", "# log:")) or (block and line.startswith("#   "))
        lines.append(line[2:] if block and not line[2:].lstrip().startswith("#") else line)
    cfg = config.load_hub(write(tmp_path, "\n".join(lines)))
    assert (cfg.admit, cfg.log.level, sorted(cfg.ports)) == ("listed", "info", ["site-a", "site-b", "site-c"])
    assert cfg.ports["site-b"].vlan == VlanPolicy(TRUNK, allowed=frozenset({10, 20, *range(100, 200)}), native=20)


def test_admit_listed_with_a_listed_spoke_loads(tmp_path):
    cfg = config.load_hub(write(tmp_path, hub_with(admit="listed", ports={"site-a": {}})))
    assert cfg.admit == "listed" and cfg.ports == {"site-a": config.PortConfig()}


def ports_with(**entries):
    return hub_with(ports=entries)


def vlan(**policy):
    return {"vlan": policy}


LISTED_NONE = ("admit: listed refuses every spoke unless ports: lists them (one entry per spoke, "
               "like ports: {site-a: {}}), or use admit: any")
VIDS = 'a non-empty list of VLAN ids 1-4094 and "a-b" ranges'

PORT_ERRORS = [
    (hub_with(admit="all"), "admit: expected any or listed, got 'all'"),
    (hub_with(admit=True), "admit: expected any or listed, got true"),
    (hub_with(admit="listed"), LISTED_NONE),
    (hub_with(admit="listed", ports=None), LISTED_NONE),
    (hub_with(admit="listed", ports={"hub": {}}), LISTED_NONE),
    (hub_with(admit="listed", ports=["site-a"]),
     "ports: expected a mapping of port names (a spoke's node name, or hub for the hub's own TAP) "
     "to mappings with keys: vlan, max_macs, storm, got a list"),
    (hub_with(log={"level": "INFO"}), "log.level: expected one of: debug, info, warning, error, got 'INFO'"),
    (hub_with(log={"level": None}), "log.level: expected one of: debug, info, warning, error, got nothing"),
    (hub_with(log={"colour": "red"}), "log.colour: unknown key (expected one of: level)"),
    (hub_with(log="debug"), "log: expected a mapping with keys: level, got 'debug'"),
    (ports_with(**{"bad name": {}}),
     "ports.'bad name': expected a name of 1-64 letters, digits, '.', '_' or '-', starting with a "
     "letter or digit, got 'bad name'"),
    (ports_with(**{"-x": {}}),
     "ports.-x: expected a name of 1-64 letters, digits, '.', '_' or '-', starting with a letter "
     "or digit, got '-x'"),
    (ports_with(**{"site-a": 5}), "ports.site-a: expected a mapping with keys: vlan, max_macs, storm, got 5"),
    (ports_with(**{"site-a": {"vlna": 1}}),
     "ports.site-a.vlna: unknown key (expected one of: vlan, max_macs, storm)"),
    (ports_with(**{"site-a": {"max_macs": 0}}), "ports.site-a.max_macs: expected an integer >= 1, got 0"),
    (ports_with(**{"site-a": {"max_macs": True}}), "ports.site-a.max_macs: expected an integer >= 1, got true"),
    (ports_with(**{"site-a": {"max_macs": None}}), "ports.site-a.max_macs: expected an integer >= 1, got nothing"),
    (ports_with(**{"site-a": {"storm": {"broadcast_pps": -1}}}),
     "ports.site-a.storm.broadcast_pps: expected an integer >= 0, got -1"),
    (ports_with(**{"site-a": {"storm": {"bogus": 1}}}),
     "ports.site-a.storm.bogus: expected one of: broadcast_pps, multicast_pps, unknown_unicast_pps, "
     "got an unknown key"),
    (ports_with(**{"site-a": {"storm": 100}}),
     "ports.site-a.storm: expected a mapping with keys: broadcast_pps, multicast_pps, "
     "unknown_unicast_pps, got 100"),
    (ports_with(**{"site-b": vlan(mode="trunk", allowed=[])}),
     f"ports.site-b.vlan.allowed: expected {VIDS}, got a list"),
    (ports_with(**{"site-b": vlan(mode="trunk")}),
     f"ports.site-b.vlan.allowed: expected {VIDS} (mode: trunk needs it), got nothing"),
    (ports_with(**{"site-b": vlan(mode="trunk", allowed=None)}),
     f"ports.site-b.vlan.allowed: expected {VIDS}, got nothing"),
    (ports_with(**{"site-b": vlan(mode="trunk", allowed="10")}),
     f"ports.site-b.vlan.allowed: expected {VIDS}, got '10'"),
    (ports_with(**{"site-b": vlan(mode="trunk", allowed=[10, 5000])}),
     "ports.site-b.vlan.allowed: expected VLAN ids 1-4094 and \"a-b\" ranges with a <= b, not 5000, got a list"),
    (ports_with(**{"site-b": vlan(mode="trunk", allowed=["20-10"])}),
     "ports.site-b.vlan.allowed: expected VLAN ids 1-4094 and \"a-b\" ranges with a <= b, not '20-10', got a list"),
    (ports_with(**{"site-b": vlan(mode="trunk", allowed=[True])}),
     "ports.site-b.vlan.allowed: expected VLAN ids 1-4094 and \"a-b\" ranges, not True, got a list"),
    (ports_with(**{"site-b": vlan(mode="trunk", allowed=[10], native=0)}),
     "ports.site-b.vlan.native: expected a VLAN id 1-4094, got 0"),
    (ports_with(**{"site-b": vlan(mode="trunk", allowed=[10], native="10")}),
     "ports.site-b.vlan.native: expected a VLAN id 1-4094, got '10'"),
    (ports_with(**{"site-b": vlan(mode="trunk", allowed=[10], vid=10)}),
     "ports.site-b.vlan.vid: expected to be left out with mode: trunk (vid is for mode: access; a "
     "trunk's untagged VLAN is native), got 10"),
    (ports_with(**{"site-a": vlan(mode="access")}),
     "ports.site-a.vlan.vid: expected a VLAN id 1-4094 (mode: access needs it), got nothing"),
    (ports_with(**{"site-a": vlan(mode="access", vid=4095)}),
     "ports.site-a.vlan.vid: expected a VLAN id 1-4094, got 4095"),
    (ports_with(**{"site-a": vlan(mode="access", vid=10, allowed=[10])}),
     "ports.site-a.vlan.allowed: expected to be left out with mode: access (allowed and native are "
     "for mode: trunk), got a list"),
    (ports_with(**{"site-a": vlan(mode="access", vid=10, native=10)}),
     "ports.site-a.vlan.native: expected to be left out with mode: access (allowed and native are "
     "for mode: trunk), got 10"),
    (ports_with(**{"site-a": vlan(mode="hybrid", vid=10)}),
     "ports.site-a.vlan.mode: expected access or trunk, got 'hybrid'"),
    (ports_with(**{"site-a": vlan(vid=10)}), "ports.site-a.vlan.mode: expected access or trunk, got nothing"),
    (ports_with(**{"site-a": {"vlan": None}}), "ports.site-a.vlan.mode: expected access or trunk, got nothing"),
    (ports_with(**{"site-a": vlan(mode="access", vid=10, tag=5)}),
     "ports.site-a.vlan.tag: expected one of: mode, vid, allowed, native, got an unknown key"),
    (ports_with(**{"site-a": {"vlan": 10}}),
     "ports.site-a.vlan: expected a mapping with keys: mode, vid, allowed, native, got 10"),
]


@pytest.mark.parametrize("doc, expected", PORT_ERRORS,
                         ids=[e[1].split(":")[0] + str(i) for i, e in enumerate(PORT_ERRORS)])
def test_each_log_admit_or_ports_problem_is_one_line(tmp_path, doc, expected):
    path = write(tmp_path, doc)
    assert problems(path, "hub") == [f"{path}: {expected}"]


def test_a_ports_entry_named_by_a_number_is_refused(tmp_path):
    path = write(tmp_path, "node: hub\ntls: {ca: a, cert: b, key: c}\nports:\n  5: {}\n")
    (line,) = problems(path, "hub")
    assert line.startswith(f"{path}: ports.5: expected a name of ") and line.endswith(", got 5")


def test_port_problems_are_reported_together(tmp_path):
    doc = hub_with(admit="listed", log={"level": "loud"}, ports={
        "site-a": {"max_macs": 0, "vlan": {"mode": "access"}, "colour": 1},
        "site-b": {"vlan": {"mode": "trunk", "allowed": []}, "storm": {"broadcast_pps": "x"}},
        "bad name": {},
        "site-c": {"max_macs": 5},
    })
    path = write(tmp_path, doc)
    found = problems(path, "hub")
    assert all(line.startswith(f"{path}: ") and "\n" not in line for line in found)
    assert [line.split(": ")[1] for line in found] == [   # the file's order (sorted by the dump)
        "ports.'bad name'", "ports.site-a.colour", "ports.site-a.vlan.vid", "ports.site-a.max_macs",
        "ports.site-b.vlan.allowed", "ports.site-b.storm.broadcast_pps", "log.level"]


@pytest.mark.parametrize("key, value", [("admit", "any"), ("ports", {"site-a": {}})])
def test_admit_and_ports_are_refused_in_a_spoke_config(tmp_path, key, value):
    path = write(tmp_path, with_changes(SPOKE, **{key: value}))
    assert problems(path, "spoke") == [
        f"{path}: {key}: unknown key in a spoke config (expected one of: node, user, group, hub, "
        f"tls, tap, management, keepalive, reconnect, metrics, log); {key} belongs in a hub config"]


def test_check_reports_the_new_problems_one_line_each(tmp_path, capsys):
    from l2vpn.cli import main
    path = write(tmp_path, hub_with(admit="listed", log={"level": "loud"}))
    assert main(["check", "-c", str(path)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{path}: {LISTED_NONE}",
                   f"{path}: log.level: expected one of: debug, info, warning, error, got 'loud'"]


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["site-a", "hub"]) | st.text(max_size=5),
       key=st.sampled_from(["vlan", "max_macs", "storm"]) | st.text(max_size=5),
       inner=st.sampled_from(["mode", "vid", "allowed", "native", "broadcast_pps"]) | st.text(max_size=5),
       value=YAML_VALUES, nest=st.booleans())
def test_any_port_value_gives_a_config_or_one_dotted_line(tmp_path, name, key, inner, value, nest):
    path = write(tmp_path, ports_with(**{name: {key: {inner: value} if nest else value}}))
    try:
        cfg = config.load_hub(path)
    except ConfigError as exc:
        (line,) = exc.problems
        assert line.startswith(f"{path}: ports.") and "\n" not in line
    else:
        assert all(isinstance(p, config.PortConfig) for p in cfg.ports.values())


# --- reloading: diff and merge_live


def hub_cfg(tmp_path, name="old.yaml", **top):
    return config.load_hub(write(tmp_path, hub_with(**top), name))


def spoke_cfg(tmp_path, name="old.yaml", **top):
    return config.load_spoke(write(tmp_path, with_changes(SPOKE, **top), name))


def test_reload_table_names_every_top_level_key():
    rows = {k.name for k in config.TOP_KEYS} | {s.name for s in config.SECTIONS}
    assert set(config.RELOAD) == rows
    assert set(config.RELOAD.values()) == {config.LIVE, config.RESTART}


def test_the_same_config_has_no_changes(tmp_path):
    old = hub_cfg(tmp_path, ports={"site-a": {"vlan": {"mode": "access", "vid": 3}}})
    new = hub_cfg(tmp_path, "new.yaml", ports={"site-a": {"vlan": {"mode": "access", "vid": 3}}})
    assert config.diff(old, new) == config.ConfigDiff(changed=[], needs_restart=[])


PORTS = {"site-a": {"vlan": {"mode": "access", "vid": 10}, "storm": {"multicast_pps": 5}},
         "site-b": {}}
HUB_LIVE_CHANGES = [
    ({"switch": {"storm": {"broadcast_pps": 1}}},   # site-a's storm is filled in from it
     ["switch.storm.broadcast_pps", "ports.site-a.storm.broadcast_pps"]),
    ({"switch": {"storm": {"multicast_pps": 1}}}, ["switch.storm.multicast_pps"]),  # site-a's own
    ({"switch": {"aging_s": 60, "loop_detection": False}}, ["switch.aging_s", "switch.loop_detection"]),
    ({"switch": {"dhcp_guard": {"trusted": ["hub"]}}}, ["switch.dhcp_guard"]),
    ({"tls": {**HUB["tls"], "crl": "crl.pem"}}, ["tls.crl"]),
    ({"tls": {"ca": "ca2.crt", "cert": "hub2.crt", "key": "hub2.key"}}, ["tls.ca", "tls.cert", "tls.key"]),
    ({"ports": {**PORTS, "site-a": {}}}, ["ports.site-a.vlan", "ports.site-a.storm"]),
    ({"ports": {**PORTS, "site-c": {}}}, ["ports.site-c"]),
    ({"ports": {"site-b": {}}}, ["ports.site-a"]),
    ({"ports": {**PORTS, "site-a": {"vlan": {"mode": "access", "vid": 11}, "storm": {"multicast_pps": 5}}}},
     ["ports.site-a.vlan"]),
    ({"ports": {**PORTS, "site-a": {"vlan": {"mode": "access", "vid": 10}}}}, ["ports.site-a.storm"]),
    ({"ports": {**PORTS, "site-a": {"vlan": {"mode": "access", "vid": 10}, "storm": {"multicast_pps": 6}}}},
     ["ports.site-a.storm.multicast_pps"]),
    ({"ports": {**PORTS, "site-b": {"max_macs": 3}}}, ["ports.site-b.max_macs"]),
    ({"admit": "listed"}, ["admit"]),
    ({"keepalive": {"interval_s": 1, "timeout_s": 3}}, ["keepalive.interval_s", "keepalive.timeout_s"]),
    ({"metrics": {"listen": "127.0.0.1:9477"}}, ["metrics.listen"]),
    ({"log": {"level": "debug"}}, ["log.level"]),
]


@pytest.mark.parametrize("changes, changed", HUB_LIVE_CHANGES, ids=[c[1][0] for c in HUB_LIVE_CHANGES])
def test_hub_changes_applied_live(tmp_path, changes, changed):
    old = hub_cfg(tmp_path, ports=PORTS)
    new = hub_cfg(tmp_path, "new.yaml", **{"ports": PORTS, **changes})
    assert config.diff(old, new) == config.ConfigDiff(changed=changed, needs_restart=[])
    assert config.merge_live(old, new) == new


HUB_RESTART_CHANGES = [
    ({"listen": {"port": 8443}}, ["listen.port"]),
    ({"listen": {"address": "::", "offload": False}}, ["listen.address", "listen.offload"]),
    ({"tap": {"name": "l2hub0"}}, ["tap"]),
    ({"user": "l2vpn"}, ["user"]),
    ({"user": "l2vpn", "group": "l2vpn"}, ["user", "group"]),
    ({"management": {"socket": "/run/other.sock"}}, ["management.socket"]),
    ({"node": "hub-2"}, ["node", "management.socket"]),   # its default socket is named after it
]


@pytest.mark.parametrize("changes, restart", HUB_RESTART_CHANGES, ids=[c[1][0] for c in HUB_RESTART_CHANGES])
def test_hub_changes_that_need_a_restart(tmp_path, changes, restart):
    old = hub_cfg(tmp_path)
    new = hub_cfg(tmp_path, "new.yaml", **changes)
    assert config.diff(old, new) == config.ConfigDiff(changed=[], needs_restart=restart)
    assert config.merge_live(old, new) == dataclasses.replace(old, path=new.path)


def test_spoke_changes_split_live_and_restart(tmp_path):
    old = spoke_cfg(tmp_path)
    new = spoke_cfg(tmp_path, "new.yaml",
                    hub={"address": "hub.example.net", "port": 8443, "flood_limits": False},
                    tap={"name": "l2vpn1", "mtu": 1400},
                    reconnect={"initial_s": 2}, log={"level": "warning"},
                    tls={**SPOKE["tls"], "crl": "crl.pem"}, user="l2vpn")
    assert config.diff(old, new) == config.ConfigDiff(
        changed=["hub.address", "hub.port", "hub.flood_limits", "tls.crl", "reconnect.initial_s",
                 "log.level"],
        needs_restart=["tap.name", "tap.mtu", "user"])
    merged = config.merge_live(old, new)
    assert merged.hub == new.hub and merged.reconnect == new.reconnect and merged.log == new.log
    assert merged.tls == new.tls
    assert merged.tap == old.tap and merged.user is None


def test_a_port_vlan_policy_changes_as_one_key(tmp_path):
    old = hub_cfg(tmp_path, ports={"site-a": {"vlan": {"mode": "access", "vid": 10}}})
    new = hub_cfg(tmp_path, "new.yaml",
                  ports={"site-a": {"vlan": {"mode": "trunk", "allowed": [10, 20], "native": 10}}})
    assert config.diff(old, new).changed == ["ports.site-a.vlan"]


def test_a_metrics_endpoint_changes_as_one_key(tmp_path):
    old = hub_cfg(tmp_path, metrics={"listen": "127.0.0.1:9477"})
    new = hub_cfg(tmp_path, "new.yaml", metrics={"listen": "[::1]:9477"})
    assert config.diff(old, new).changed == ["metrics.listen"]


def test_a_mixed_reload_keeps_the_old_restart_values(tmp_path):
    old = hub_cfg(tmp_path, ports=PORTS)
    new = hub_cfg(tmp_path, "new.yaml", listen={"port": 8443}, tap={"name": "l2hub0"},
                  node="hub-2", admit="listed", ports={"site-b": {"max_macs": 2}},
                  switch={"max_entries": 10}, log={"level": "error"})
    d = config.diff(old, new)
    assert d.changed == ["switch.max_entries", "admit", "ports.site-a", "ports.site-b.max_macs",
                         "log.level"]
    assert d.needs_restart == ["node", "listen.port", "tap", "management.socket"]
    merged = config.merge_live(old, new)
    assert (merged.node, merged.listen, merged.tap, merged.management) == \
        (old.node, old.listen, old.tap, old.management)
    assert (merged.admit, merged.ports, merged.switch, merged.log) == \
        (new.admit, new.ports, new.switch, new.log)
    assert config.diff(old, merged) == config.ConfigDiff(d.changed, [])
    assert config.diff(merged, new) == config.ConfigDiff([], d.needs_restart)


def test_diff_and_merge_refuse_configs_of_two_roles(tmp_path):
    hub, spoke = hub_cfg(tmp_path), spoke_cfg(tmp_path, "spoke.yaml")
    for f in (config.diff, config.merge_live):
        with pytest.raises(ValueError, match="two hub or two spoke configs"):
            f(hub, spoke)


HUB_EDITS = {
    "listen": {"port": 8443}, "tap": {"name": "l2hub0"}, "user": "l2vpn", "node": "hub-2",
    "management": {"socket": "/run/x.sock"}, "admit": "listed",
    "ports": {"site-a": {"max_macs": 2, "storm": {"broadcast_pps": 1}}},
    "switch": {"storm": {"multicast_pps": 3}, "aging_s": 5}, "log": {"level": "debug"},
    "keepalive": {"interval_s": 1}, "metrics": {"listen": "127.0.0.1:1"},
    "tls": {"ca": "x.crt", "cert": "hub.crt", "key": "hub.key"},
}


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(before=st.sets(st.sampled_from(sorted(HUB_EDITS))), after=st.sets(st.sampled_from(sorted(HUB_EDITS))))
def test_merge_live_takes_exactly_the_live_changes(tmp_path, before, after):
    def load(edits, name):
        doc = hub_with(**{k: HUB_EDITS[k] for k in edits})
        if "admit" in edits and "ports" not in edits:
            doc["ports"] = {"site-b": {}}
        return config.load_hub(write(tmp_path, doc, name))
    old, new = load(before, "old.yaml"), load(after, "new.yaml")
    d = config.diff(old, new)
    assert not set(d.changed) & set(d.needs_restart)
    assert all(config.RELOAD[k.split(".")[0]] == config.LIVE for k in d.changed)
    assert all(config.RELOAD[k.split(".")[0]] == config.RESTART for k in d.needs_restart)
    merged = config.merge_live(old, new)
    assert config.diff(old, merged) == config.ConfigDiff(d.changed, [])
    assert config.diff(merged, new) == config.ConfigDiff([], d.needs_restart)
